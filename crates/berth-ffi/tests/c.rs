//! libberth from C: compiles `examples/c/acquire.c` and `tests/c/test_api.c` with the system
//! C compiler (`$CC`, else `cc`) against the `libberth.so` cargo built for this test, and
//! runs them against an in-process daemon. Without a C compiler each test says it is skipped
//! (`berth_daemon::testing::needs`).
//!
//! Where the library is: cargo builds this package's library with all its crate types
//! (`cdylib`, `staticlib`, `rlib`) before linking the integration tests, into the directory
//! of the test executable (`target/<profile>/deps/`). It copies the cdylib up to
//! `target/<profile>/` only when the library itself is what was asked for (`cargo build`),
//! so the copy there may be missing or stale during `cargo test`; `deps/` is always current.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use berth_daemon::testing::deadline::output_within;
use berth_daemon::testing::needs;
use berth_daemon::testing::TestDaemon;

/// The directory holding the `libberth.so` built for this test run.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("the test executable's directory");
    assert!(
        deps.join("libberth.so").is_file(),
        "{} has no libberth.so; cargo builds it with this crate's tests (crate-type cdylib)",
        deps.display()
    );
    deps.to_path_buf()
}

/// Compiles `source` (relative to the workspace root) into `out_dir`; returns the program, or
/// `None` without a C compiler (the skip reported).
fn compile(source: &str, out_dir: &Path) -> Option<PathBuf> {
    let cc = needs::c_compiler()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let source = root.join(source);
    let program = out_dir.join(source.file_stem().expect("a file name"));
    let lib = lib_dir();
    let output = output_within(
        Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", "-I"])
            .arg(root.join("crates/berth-ffi/include"))
            .arg(&source)
            .arg("-L")
            .arg(&lib)
            .arg("-lberth")
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-o")
            .arg(&program),
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "compiling {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(program)
}

/// Runs `program args` with `BERTH_SOCKET=socket`; kills it if it has not finished within a
/// minute (a hang is a failure, not a reason to stall the suite).
fn run(program: &Path, args: &[&str], socket: &Path) -> Output {
    // cargo's LD_LIBRARY_PATH for tests lists target/<profile>/ too, where a stale copy of
    // libberth.so may sit, and it would win over the rpath: point it at this run's library.
    let out = output_within(
        Command::new(program)
            .args(args)
            .env("LD_LIBRARY_PATH", lib_dir())
            .env("BERTH_SOCKET", socket),
        Duration::from_secs(60),
    );
    // Shown by the test harness on failure, or with `--nocapture`.
    println!("{}", describe(program, args, &out));
    out
}

fn describe(program: &Path, args: &[&str], out: &Output) -> String {
    format!(
        "{} {} exited with {}\nstdout:\n{}\nstderr:\n{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A runtime for the in-process daemon; the C programs run from this (non-async) thread.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_acquire_sample_binds_from_wildcard_and_specific_reservations() {
    const POOL: (u16, u16) = (26100, 26109);
    let rt = runtime();
    let daemon = rt.block_on(async { TestDaemon::start(POOL.0, POOL.1) });
    let dir = tempfile::tempdir().unwrap();
    let Some(acquire) = compile("examples/c/acquire.c", dir.path()) else {
        return;
    };

    // family, type, protocol, start (0 = wildcard), count
    let cases: [(&str, &str, &str, u16, u16); 8] = [
        ("4", "stream", "tcp", 0, 3),
        ("6", "stream", "tcp", 0, 2),
        ("4", "dgram", "udp", 0, 3),
        ("6", "dgram", "udp", 0, 1),
        ("4", "stream", "tcp", 24010, 3),
        ("6", "stream", "tcp", 24020, 2),
        ("4", "dgram", "udp", 24030, 4),
        ("6", "dgram", "udp", 24040, 1),
    ];
    for (family, ty, protocol, start, count) in cases {
        let (start_s, count_s) = (start.to_string(), count.to_string());
        let args = [family, ty, protocol, start_s.as_str(), count_s.as_str()];
        let out = run(&acquire, &args, &daemon.socket);
        let what = describe(&acquire, &args, &out);
        assert!(out.status.success(), "{what}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let port: u16 = stdout
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no `port N` line: {what}"));
        let (lo, hi) = if start == 0 {
            POOL
        } else {
            (start, start + count - 1)
        };
        assert!(
            (lo..=hi).contains(&port),
            "port {port} not in {lo}-{hi}: {what}"
        );
    }

    // A socket type that does not match the protocol: the sample reports the failure.
    let args = ["4", "dgram", "tcp", "0", "1"];
    let out = run(&acquire, &args, &daemon.socket);
    let what = describe(&acquire, &args, &out);
    assert_eq!(out.status.code(), Some(1), "{what}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("berth_associate_port_reservation failed")
            && stderr.contains("Operation not supported"),
        "{what}"
    );

    rt.block_on(daemon.shutdown());
}

#[test]
fn the_c_api_reports_every_error_kind_with_its_errno() {
    const POOL: (u16, u16) = (26200, 26209);
    let rt = runtime();
    let daemon = rt.block_on(async { TestDaemon::start(POOL.0, POOL.1) });
    let dir = tempfile::tempdir().unwrap();
    let Some(test_api) = compile("crates/berth-ffi/tests/c/test_api.c", dir.path()) else {
        return;
    };
    let (lo, hi) = (POOL.0.to_string(), POOL.1.to_string());
    let args = [lo.as_str(), hi.as_str(), "24500"];
    let out = run(&test_api, &args, &daemon.socket);
    assert!(out.status.success(), "{}", describe(&test_api, &args, &out));
    rt.block_on(daemon.shutdown());
}

#[test]
fn without_a_daemon_every_call_fails_with_econnrefused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(test_api) = compile("crates/berth-ffi/tests/c/test_api.c", dir.path()) else {
        return;
    };
    let Some(acquire) = compile("examples/c/acquire.c", dir.path()) else {
        return;
    };
    let nowhere = dir.path().join("no-daemon.sock");

    let out = run(&test_api, &["unavailable"], &nowhere);
    assert!(
        out.status.success(),
        "{}",
        describe(&test_api, &["unavailable"], &out)
    );

    let args = ["4", "stream", "tcp", "0", "1"];
    let out = run(&acquire, &args, &nowhere);
    let what = describe(&acquire, &args, &out);
    assert_eq!(out.status.code(), Some(1), "{what}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "{what}"
    );
}
