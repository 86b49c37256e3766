//! Provides the enforce-mode BPF object (`bpf/enforce.bpf.c`) when the `enforce` feature is on.
//!
//! With Debian's clang 14 (`$BERTH_CLANG`, else `clang` on the PATH, when it is that version)
//! the object is compiled here, reproducibly (`-fdebug-prefix-map`: no build path in it), and
//! a test (`tests/bpf_object.rs`) checks it is byte for byte the committed
//! `bpf/enforce.bpf.o`. Without that clang the committed object is used, so a fresh machine
//! builds berth with nothing more than Rust. Without either, the crate still builds and
//! enforcement reports that it was built without its programs (cfg `berth_bpf_unbuilt`).

use std::path::PathBuf;
use std::process::Command;

/// The compiler the committed object was built with (the first line of `clang --version`).
const PINNED_CLANG: &str = "Debian clang version 14.0.6";

fn main() {
    println!("cargo:rustc-check-cfg=cfg(berth_bpf_unbuilt)");
    println!("cargo:rerun-if-changed=bpf/enforce.bpf.c");
    println!("cargo:rerun-if-changed=bpf/enforce.bpf.o");
    println!("cargo:rerun-if-env-changed=BERTH_CLANG");
    if std::env::var_os("CARGO_FEATURE_ENFORCE").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("enforce.bpf.o");
    let why_not_compiled = match compile(&out) {
        Ok(()) => {
            println!("cargo:rustc-env=BERTH_BPF_FROM=clang");
            return;
        }
        Err(why) => why,
    };
    match std::fs::copy("bpf/enforce.bpf.o", &out) {
        Ok(_) => {
            println!("cargo:rustc-env=BERTH_BPF_FROM=committed");
            println!(
                "cargo:warning=enforce mode uses the committed BPF object ({why_not_compiled})"
            );
        }
        Err(e) => {
            let why = format!("{why_not_compiled}, and the committed object cannot be read ({e})");
            println!("cargo:warning=enforce mode is built without its BPF programs: {why}; install Debian's clang and libbpf-dev");
            println!("cargo:rustc-cfg=berth_bpf_unbuilt");
            println!("cargo:rustc-env=BERTH_BPF_UNBUILT={why}");
            println!("cargo:rustc-env=BERTH_BPF_FROM=none");
            // An empty object, so that include_bytes! has a file.
            let _ = std::fs::write(&out, b"");
        }
    }
}

/// Compiles the object into `out` with the pinned clang; says why not otherwise.
fn compile(out: &std::path::Path) -> Result<(), String> {
    let chosen = std::env::var_os("BERTH_CLANG");
    let clang = chosen.clone().unwrap_or_else(|| "clang".into());
    let version = Command::new(&clang)
        .arg("--version")
        .output()
        .map_err(|e| format!("clang could not be run ({e})"))?;
    let version = String::from_utf8_lossy(&version.stdout);
    let first = version.lines().next().unwrap_or_default();
    // Another clang would make another object: only the pinned one, or one asked for by name.
    if chosen.is_none() && !first.starts_with(PINNED_CLANG) {
        return Err(format!("clang is {first:?}, not {PINNED_CLANG}"));
    }
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
    let here = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-mcpu=v3"])
        .arg(format!("-fdebug-prefix-map={here}=."))
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", "bpf/enforce.bpf.c", "-o"])
        .arg(out)
        .status()
        .map_err(|e| format!("clang could not be run ({e})"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("clang failed ({status})"))
    }
}
