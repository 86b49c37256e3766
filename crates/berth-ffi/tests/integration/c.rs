//! libberth from C: compiles `examples/c/acquire.c` and `tests/c/test_api.c` with the system
//! C compiler (`$CC`, else `cc`) against the `libberth.so` cargo built for this test, and
//! runs them against a daemon — each twice: built as a user builds them, and with
//! AddressSanitizer and UndefinedBehaviorSanitizer (`support`), where any report fails.
//!
//! Each variant has ports of its own (its daemon's pool, its specific blocks), since the tests
//! of this binary run at once.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use berth_core::Quota;
use berth_testkit::TestDaemon;
use support::{Build, Helper, Program, NOBODY};

/// A runtime for the in-process daemon; the C programs run from this (non-async) thread.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Whether to run the `build` variant (a sanitized one only where the sanitizers work; see
/// `support::sanitizers_available`).
fn wanted(build: Build) -> bool {
    // Without a C compiler the skip is reported (`needs`); so is a missing sanitizer runtime.
    berth_testkit::needs::c_compiler().is_some()
        && (build == Build::Plain || support::sanitizers_available())
}

/// Lets every user reach `dir` (a temporary directory is 0700), for programs run as nobody.
fn open_to_all(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A daemon in this test process that holds no ports itself. Its hold sockets would be this
/// process's descriptors, and every program another test spawns meanwhile holds a copy of them
/// until its `exec`: a port the daemon gave up for an associate could then still be bound by
/// that copy. The C programs here bind through the daemon either way; holding is tested with
/// the Rust client (`crates/berth/tests/integration/hold.rs`).
fn in_process_daemon(lo: u16, hi: u16) -> TestDaemon {
    TestDaemon::with_config(lo, hi, |c| c.hold = false)
}

fn the_acquire_sample(build: Build, pool: (u16, u16), specific: u16) {
    if !wanted(build) {
        return;
    }
    let rt = runtime();
    let daemon = rt.block_on(async { in_process_daemon(pool.0, pool.1) });
    let dir = tempfile::tempdir().unwrap();
    let acquire = Program::compile("examples/c/acquire.c", dir.path(), build);

    // family, type, protocol, start (0 = wildcard), count
    let cases: [(&str, &str, &str, u16, u16); 8] = [
        ("4", "stream", "tcp", 0, 3),
        ("6", "stream", "tcp", 0, 2),
        ("4", "dgram", "udp", 0, 3),
        ("6", "dgram", "udp", 0, 1),
        ("4", "stream", "tcp", specific, 3),
        ("6", "stream", "tcp", specific + 10, 2),
        ("4", "dgram", "udp", specific + 20, 4),
        ("6", "dgram", "udp", specific + 30, 1),
    ];
    for (family, ty, protocol, start, count) in cases {
        let (start_s, count_s) = (start.to_string(), count.to_string());
        let args = [family, ty, protocol, start_s.as_str(), count_s.as_str()];
        let out = acquire.run(&args, &daemon.socket, None);
        let what = support::describe(&acquire.path, &args, &out);
        assert!(out.status.success(), "{what}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let port: u16 = stdout
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no `port N` line: {what}"));
        let (lo, hi) = if start == 0 {
            pool
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
    let out = acquire.run(&args, &daemon.socket, None);
    let what = support::describe(&acquire.path, &args, &out);
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
fn the_acquire_sample_binds_from_wildcard_and_specific_reservations() {
    the_acquire_sample(Build::Plain, (26100, 26109), 24010);
}

#[test]
fn the_acquire_sample_binds_from_reservations_under_asan() {
    the_acquire_sample(Build::Sanitized, (26110, 26119), 24110);
}

/// `test_api`'s full suite, run by root (an administrator), against a daemon with the wildcard
/// pool `pool`; its specific blocks and bounds lie in `port_base..port_base + 31`.
fn the_full_c_suite(build: Build, pool: (u16, u16), port_base: u16) {
    if !wanted(build) {
        return;
    }
    let rt = runtime();
    let daemon = rt.block_on(async { in_process_daemon(pool.0, pool.1) });
    let dir = tempfile::tempdir().unwrap();
    let test_api = Program::compile("crates/berth-ffi/tests/c/test_api.c", dir.path(), build);
    let (lo, hi, base) = (
        pool.0.to_string(),
        pool.1.to_string(),
        port_base.to_string(),
    );
    let args = [lo.as_str(), hi.as_str(), base.as_str()];
    let out = test_api.run(&args, &daemon.socket, None);
    assert!(
        out.status.success(),
        "{}",
        support::describe(&test_api.path, &args, &out)
    );
    rt.block_on(daemon.shutdown());
}

#[test]
fn the_c_api_reports_every_error_kind_with_its_errno() {
    the_full_c_suite(Build::Plain, (26200, 26209), 24500);
}

#[test]
fn the_c_api_reports_every_error_kind_with_its_errno_under_asan() {
    the_full_c_suite(Build::Sanitized, (26210, 26219), 24700);
}

/// `test_api not-admin`, run as nobody against a daemon run by root with a quota of 2
/// reservations and 3 ports per user: permission-denied and quota-exceeded, and a forked
/// child that may not release its parent's reservation.
fn as_a_user_who_is_not_an_administrator(build: Build, pool: (u16, u16), port_base: u16) {
    if !wanted(build) || !berth_testkit::needs::users() {
        return;
    }
    let rt = runtime();
    let daemon = rt.block_on(async {
        TestDaemon::with_config(pool.0, pool.1, |c| {
            c.hold = false;
            c.quota = Quota {
                max_reservations: 2,
                max_ports: 3,
                max_held_ports: 3,
            };
        })
    });
    open_to_all(daemon.socket.parent().unwrap());
    let dir = tempfile::tempdir().unwrap();
    open_to_all(dir.path());
    let test_api = Program::compile("crates/berth-ffi/tests/c/test_api.c", dir.path(), build);
    let base = port_base.to_string();
    let args = ["not-admin", base.as_str()];
    let out = test_api.run(&args, &daemon.socket, Some(NOBODY));
    assert!(
        out.status.success(),
        "{}",
        support::describe(&test_api.path, &args, &out)
    );
    rt.block_on(daemon.shutdown());
}

#[test]
fn a_user_who_is_not_an_administrator_is_refused_and_held_to_its_quota() {
    as_a_user_who_is_not_an_administrator(Build::Plain, (26220, 26229), 24750);
}

#[test]
fn a_user_who_is_not_an_administrator_is_refused_and_held_to_its_quota_under_asan() {
    as_a_user_who_is_not_an_administrator(Build::Sanitized, (26230, 26239), 24760);
}

/// The helper below: a daemon run by the user this binary runs as, serving until its stdin
/// closes. Its pool comes in `BERTH_FFI_HELPER_POOL` (`LO-HI`); it prints its socket after
/// `support::READY`.
const DAEMON_HELPER: &str = "c::helper_daemon_of_the_calling_user";

/// Not a test of its own: `the_daemons_own_user_administers_it` runs this binary again as
/// another user to have a daemon of that user — a per-user daemon, which counts its own user
/// as an administrator — where the in-process daemons of the other tests run as root.
#[test]
#[ignore = "a helper: run by the_daemons_own_user_administers_it as another user"]
fn helper_daemon_of_the_calling_user() {
    let Ok(pool) = std::env::var("BERTH_FFI_HELPER_POOL") else {
        // Run by `--include-ignored` rather than by its test: nothing to serve.
        println!("not started: BERTH_FFI_HELPER_POOL is unset (a helper, not a test)");
        return;
    };
    let (lo, hi) = pool.split_once('-').expect("LO-HI");
    let (lo, hi) = (lo.parse().unwrap(), hi.parse().unwrap());
    let rt = runtime();
    let daemon = rt.block_on(async { in_process_daemon(lo, hi) });
    support::helper_ready_then_wait(&daemon.socket.display().to_string());
    rt.block_on(daemon.shutdown());
}

/// `test_api own-daemon`, run as nobody against a daemon that nobody runs too: the daemon's
/// own user administers it, so it creates persistent reservations, and its forked child may
/// release (though not bind from) the parent's reservation.
fn with_a_daemon_of_its_own_user(build: Build, pool: (u16, u16), port_base: u16) {
    if !wanted(build) || !berth_testkit::needs::users() {
        return;
    }
    let pool_env = format!("{}-{}", pool.0, pool.1);
    let daemon = Helper::start(
        DAEMON_HELPER,
        NOBODY,
        &[("BERTH_FFI_HELPER_POOL", pool_env.as_str())],
    );
    let socket = Path::new(&daemon.ready).to_owned();
    let dir = tempfile::tempdir().unwrap();
    open_to_all(dir.path());
    let test_api = Program::compile("crates/berth-ffi/tests/c/test_api.c", dir.path(), build);
    let base = port_base.to_string();
    let args = ["own-daemon", base.as_str()];
    let out = test_api.run(&args, &socket, Some(NOBODY));
    assert!(
        out.status.success(),
        "{}",
        support::describe(&test_api.path, &args, &out)
    );
    drop(daemon);
}

#[test]
fn the_daemons_own_user_administers_it() {
    with_a_daemon_of_its_own_user(Build::Plain, (26240, 26249), 24800);
}

#[test]
fn the_daemons_own_user_administers_it_under_asan() {
    with_a_daemon_of_its_own_user(Build::Sanitized, (26250, 26259), 24810);
}

fn without_a_daemon(build: Build) {
    if !wanted(build) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let test_api = Program::compile("crates/berth-ffi/tests/c/test_api.c", dir.path(), build);
    let acquire = Program::compile("examples/c/acquire.c", dir.path(), build);
    let nowhere = dir.path().join("no-daemon.sock");

    let out = test_api.run(&["unavailable"], &nowhere, None);
    assert!(
        out.status.success(),
        "{}",
        support::describe(&test_api.path, &["unavailable"], &out)
    );

    let args = ["4", "stream", "tcp", "0", "1"];
    let out = acquire.run(&args, &nowhere, None);
    let what = support::describe(&acquire.path, &args, &out);
    assert_eq!(out.status.code(), Some(1), "{what}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "{what}"
    );
}

#[test]
fn without_a_daemon_every_call_fails_with_econnrefused() {
    without_a_daemon(Build::Plain);
}

#[test]
fn without_a_daemon_every_call_fails_with_econnrefused_under_asan() {
    without_a_daemon(Build::Sanitized);
}
