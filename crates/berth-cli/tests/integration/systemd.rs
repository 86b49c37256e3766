//! `berth daemon` under systemd: socket activation (`LISTEN_FDS`, `LISTEN_PID`) and `sd_notify`
//! (`NOTIFY_SOCKET`), done the way systemd does them — the test is the service manager.

use crate::support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use support::{isolate, Berth, BERTH, DEADLINE};

/// The messages a notify socket receives until one contains `wanted`; panics at the deadline.
fn notified_until(notify: &UnixDatagram, wanted: &str, log: &std::path::Path) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {wanted:?} on NOTIFY_SOCKET within {DEADLINE:?} (got {seen:?}); the daemon's log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        notify.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = notify.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = message.lines().any(|l| l == wanted);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
}

/// `berth daemon` as systemd starts it: `listener` as descriptor 3, `LISTEN_FDS=1`,
/// `LISTEN_PID` = the daemon's pid (an `exec` from a shell keeps its pid), `NOTIFY_SOCKET`.
fn spawn_activated(
    listener: &UnixListener,
    notify: &std::path::Path,
    dir: &std::path::Path,
    unused_socket: &std::path::Path,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "export LISTEN_PID=$$; exec \"$0\" \"$@\"",
        BERTH,
        "daemon",
    ])
    .arg("--socket")
    .arg(unused_socket)
    .arg("--db")
    .arg(dir.join("berth.db"))
    .args(["--pool", "20940-20949"]);
    isolate(&mut cmd, unused_socket);
    cmd.env("LISTEN_FDS", "1")
        .env("NOTIFY_SOCKET", notify)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("BERTH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // The socket at descriptor 3, as systemd places it.
    berth_os::exec::inherit_at(&mut cmd, listener.as_raw_fd(), 3);
    cmd.spawn().expect("spawn berth daemon")
}

#[test]
fn a_socket_activated_daemon_notifies_serves_and_leaves_the_socket_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("berth.sock");
    let unused = dir.path().join("not-this.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let inode = std::fs::metadata(&socket).unwrap().ino();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = dir.path().join("daemon.log");

    let mut daemon = spawn_activated(&listener, &notify_path, dir.path(), &unused);
    let ready = notified_until(&notify, "READY=1", &log);
    assert!(
        ready.concat().contains("STATUS=serving 0 reservations"),
        "{ready:?}"
    );

    // Clients reach it through the passed socket; --socket was not bound.
    Berth::new(&socket)
        .args(["run", "--tcp", "1", "--", "true"])
        .output()
        .code(0);
    let status = Berth::new(&socket)
        .args(["status", "--json"])
        .output()
        .code(0);
    assert_eq!(
        status.json()["socket"],
        socket.display().to_string(),
        "{}",
        status.stdout
    );
    assert!(!unused.exists(), "the daemon bound --socket as well");

    // SIGTERM: STOPPING=1, a clean exit, and the socket file is still systemd's.
    let pid = rustix::process::Pid::from_raw(i32::try_from(daemon.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    notified_until(&notify, "STOPPING=1", &log);
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || exited.send(daemon.wait()));
    let exit = exit
        .recv_timeout(DEADLINE)
        .expect("the daemon exits within the deadline after SIGTERM")
        .unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        std::fs::metadata(&socket).map(|m| m.ino()).ok(),
        Some(inode),
        "the daemon removed or replaced the socket systemd passed"
    );
    // Still listening (systemd's descriptor, here ours): the next client queues for the next
    // daemon instead of being refused.
    UnixStream::connect(&socket).expect("connect to the socket after the daemon stopped");

    // systemd starts the next daemon on the same socket: it serves again.
    let mut again = spawn_activated(&listener, &notify_path, dir.path(), &unused);
    notified_until(&notify, "READY=1", &log);
    Berth::new(&socket)
        .args(["list", "--json"])
        .output()
        .code(0);
    let _ = again.kill();
    let _ = again.wait();
}
