//! One authority per network namespace, from the client's side: a client whose environment
//! points nowhere (another XDG_RUNTIME_DIR, no BERTH_SOCKET — cron, su, sudo -u) still finds
//! the daemon serving its namespace through the authority beacon, and a second daemon refuses
//! to start, naming the first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use berth_daemon::testing::deadline::output_within;
use support::{isolate, Daemon, BERTH, DEADLINE};

#[test]
fn a_client_with_no_socket_in_its_environment_finds_the_daemon_of_its_namespace() {
    let d = Daemon::start("21800-21809");
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BERTH);
    // The daemon's own beacon name (isolate derives it from the socket), and nothing else.
    isolate(&mut cmd, d.socket());
    let out = output_within(
        cmd.env_remove("BERTH_SOCKET")
            .env("XDG_RUNTIME_DIR", elsewhere.path())
            .env("BERTH_NO_AUTOSTART", "1")
            .args(["status", "--json"]),
        DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&d.socket().display().to_string()),
        "found another daemon: {stdout}"
    );
}

#[test]
fn a_second_daemon_in_the_namespace_refuses_to_start_and_names_the_first() {
    let d = Daemon::start("21810-21819");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BERTH);
    isolate(&mut cmd, d.socket());
    // Bounded: a second daemon that did not refuse would serve until killed.
    let out = output_within(
        cmd.args(["daemon", "--pool", "21820-21829", "--socket"])
            .arg(dir.path().join("second.sock"))
            .arg("--db")
            .arg(dir.path().join("second.db")),
        DEADLINE,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already serves this network namespace")
            && stderr.contains(&d.socket().display().to_string()),
        "{stderr}"
    );
    assert!(
        !dir.path().join("second.sock").exists(),
        "the refused daemon left its socket"
    );
}
