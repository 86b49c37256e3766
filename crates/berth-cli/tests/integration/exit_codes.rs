//! The exit codes that a real daemon never gives these commands a reason for (docs/cli.md):
//! 11 (not-supported) and 14 (reservation-full) answer only an associate, which no `berth`
//! command sends, and 19 (incompatible) needs a daemon of another protocol version. A fake
//! daemon on a temporary socket gives each answer, and `berth` must still turn it into its
//! code and say what the daemon said.

use crate::support;

use berth_core::ErrorKind;
use berth_testkit::FakeDaemon;
use support::Berth;

#[test]
fn a_daemon_that_refuses_the_hello_as_incompatible_is_exit_19() {
    let fake = FakeDaemon::refusing_hello(
        ErrorKind::Incompatible,
        "client protocol versions 1..=1, daemon 7..=9: upgrade the client",
    );
    for args in [
        &["list"][..],
        &["status"],
        &["run", "--tcp", "1", "--", "true"],
    ] {
        Berth::new(&fake.socket)
            .args(args)
            .output()
            .code(19)
            .says(&["upgrade the client"]);
    }
}

#[test]
fn a_daemon_that_chooses_a_version_this_client_does_not_speak_is_exit_19() {
    let fake = FakeDaemon::choosing_a_newer_version();
    Berth::new(&fake.socket)
        .args(["list"])
        .output()
        .code(19)
        .says(&["protocol version"]);
}

#[test]
fn not_supported_is_exit_11() {
    let fake = FakeDaemon::failing_with(ErrorKind::NotSupported, "sockets of that kind: no");
    Berth::new(&fake.socket)
        .args(["list"])
        .output()
        .code(11)
        .says(&["sockets of that kind: no"]);
}

#[test]
fn reservation_full_is_exit_14_and_run_starts_nothing() {
    let fake = FakeDaemon::failing_with(
        ErrorKind::ReservationFull,
        "every port of reservation 0x1 is bound",
    );
    let marker = tempfile::tempdir().expect("a temporary directory");
    let ran = marker.path().join("ran");
    let out = Berth::new(&fake.socket)
        .args(["run", "--tcp", "2", "--", "touch"])
        .args([&ran])
        .output()
        .code(14)
        .says(&["every port of reservation 0x1 is bound"]);
    assert!(!ran.exists(), "the command ran: {out:?}");
}

/// A daemon in a pid namespace of its own (a container's) cannot name a client of the host:
/// the kernel gives it pid 0. The client is told so, with not-supported (exit 11), never left
/// with a closed connection and "retry".
#[test]
fn a_daemon_that_cannot_identify_the_client_says_so_exit_11() {
    use std::io::BufRead;
    // A pid namespace of the daemon's own, and the daemon as root in it.
    if !berth_testkit::needs::users() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("b.sock");
    let mut daemon = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(support::BERTH)
        .arg("daemon")
        .arg("--socket")
        .arg(&socket)
        .arg("--db")
        .arg(dir.path().join("b.db"))
        .args([
            "--authority",
            "none",
            "--kernel-sync",
            "off",
            "--ready-stdout",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("unshare");
    let stdout = daemon.stdout.take().expect("its stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let ready = rx.recv_timeout(support::DEADLINE);
    let out = ready
        .is_ok_and(|l| l.contains("ready"))
        .then(|| Berth::new(&socket).args(["status"]).output());
    // Our own child, by its pid: unshare takes the daemon with it (--kill-child).
    let _ = daemon.kill();
    let _ = daemon.wait();
    out.expect("the daemon in a pid namespace of its own did not get ready")
        .code(11)
        .says(&["cannot identify your process", "pid namespace"]);
}
