//! A daemon that runs as an ordinary user (the per-user instance) serves associate too: the
//! network-namespace check must not need privileges the daemon lacks.
//!
//! Run as root, the daemon runs as nobody (`setpriv`) and root's client must be told to trust
//! it; run as an ordinary user, the daemon is that user's own.

use crate::support;

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

use berth::Protocol;
use berth_testkit::needs::{self, Need, AS_NOBODY, NOBODY};
use support::{lines_of, BERTH, DEADLINE};

/// The daemon, stopped and reaped by pid when the test ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_daemon_running_as_an_ordinary_user_binds_sockets_for_its_clients() {
    // Root runs the daemon as nobody; an ordinary user runs it as itself.
    let as_nobody = needs::other_users_available();
    let mut program: Vec<&str> = if as_nobody {
        AS_NOBODY.to_vec()
    } else {
        Vec::new()
    };
    program.push(BERTH);
    let dir = tempfile::tempdir().unwrap();
    if as_nobody {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("b.sock");
    let mut child = Command::new(program[0])
        .args(&program[1..])
        .arg("daemon")
        .arg("--socket")
        .arg(&socket)
        .arg("--db")
        .arg(dir.path().join("berth.db"))
        .args(["--pool", "46000-46099", "--ready-stdout"])
        .env_remove("BERTH_LOG")
        // Off the host's reserved-ports list, and a beacon of its own beside the other tests' daemons.
        .env("BERTH_KERNEL_SYNC", "off")
        .env(
            "BERTH_AUTHORITY",
            format!("berth-test-{}-{}", std::process::id(), line!()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let daemon = Daemon(child);
    let line = lines_of(stdout)
        .recv_timeout(DEADLINE)
        .expect("the daemon said nothing in time");
    assert_eq!(line.trim(), "ready", "the daemon did not start");

    let client = if as_nobody {
        // Root trusts a daemon of another user only when told to (`SO_PEERCRED` is checked).
        let refused = berth::blocking::Client::connect_to(&socket).unwrap_err();
        assert_eq!(
            refused.kind(),
            berth::ErrorKind::PermissionDenied,
            "{refused}"
        );
        assert!(refused.to_string().contains("uid 65534"), "{refused}");
        let options = berth::Options::default().trust_daemon_uid(NOBODY);
        berth::blocking::Client::connect_to_with(&socket, options).unwrap()
    } else {
        needs::skip(
            Need::Users,
            "part: root refuses another user's daemon unless told to trust it (needs root)",
        );
        berth::blocking::Client::connect_to(&socket).unwrap()
    };
    let block = client.acquire(Protocol::Tcp, 0, 2).unwrap();
    let listener = block
        .tcp_listener(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .unwrap_or_else(|e| panic!("associate through an unprivileged daemon failed: {e}"));
    let port = listener.local_addr().unwrap().port();
    assert!(block.range().contains(port), "port {port}");
    let udp = client.acquire(Protocol::Udp, 0, 1).unwrap();
    let socket = udp.udp_socket(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    assert_eq!(socket.local_addr().unwrap().port(), udp.start());
    drop(daemon);
}
