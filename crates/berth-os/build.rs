//! Builds the enforce-mode BPF object (`bpf/enforce.bpf.c`) when the `enforce` feature is on,
//! with clang (`$BERTH_CLANG`, else `clang` on the PATH: Debian's `clang` package). Without
//! clang the crate still builds; enforcement then reports that it was built without its
//! programs (cfg `berth_bpf_unbuilt`), rather than failing the whole build.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(berth_bpf_unbuilt)");
    println!("cargo:rerun-if-changed=bpf/enforce.bpf.c");
    println!("cargo:rerun-if-env-changed=BERTH_CLANG");
    if std::env::var_os("CARGO_FEATURE_ENFORCE").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("enforce.bpf.o");
    let clang = std::env::var_os("BERTH_CLANG").unwrap_or_else(|| "clang".into());
    // Debian keeps <asm/…> per architecture (the target's, for a cross build).
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        other => other,
    };
    let built = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-mcpu=v3"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", "bpf/enforce.bpf.c", "-o"])
        .arg(&out)
        .status();
    match built {
        Ok(status) if status.success() => {}
        outcome => {
            let why = match outcome {
                Ok(status) => format!("clang failed ({status})"),
                Err(e) => format!("clang could not be run ({e})"),
            };
            println!("cargo:warning=enforce mode is built without its BPF programs: {why}; install Debian's clang and libbpf-dev");
            println!("cargo:rustc-cfg=berth_bpf_unbuilt");
            println!("cargo:rustc-env=BERTH_BPF_UNBUILT={why}");
            // An empty object, so that include_bytes! has a file.
            let _ = std::fs::write(&out, b"");
        }
    }
}
