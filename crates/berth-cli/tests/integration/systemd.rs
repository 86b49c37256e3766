//! `berth daemon` under systemd: socket activation (`LISTEN_FDS`, `LISTEN_PID`) and `sd_notify`
//! (`NOTIFY_SOCKET`), done the way systemd does them — the test is the service manager.

use crate::support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use support::{isolate, Berth, BERTH, DEADLINE};

/// A daemon this test started, killed and reaped when dropped — also when the test fails
/// half-way, so that no daemon outlives its test.
struct Started(Option<Child>);

impl Started {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Hands the child over, to wait for its own exit.
    fn take(mut self) -> Child {
        self.0.take().expect("a child")
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

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

/// `berth daemon` as systemd starts it: `sockets` as descriptors 3, 4, …, `LISTEN_FDS`,
/// `LISTEN_PID` = the daemon's pid (an `exec` from a shell keeps its pid), `NOTIFY_SOCKET`; its
/// wildcard pool `pool`, its stderr appended to `daemon.log` in `dir`.
fn spawn_activated(
    sockets: &[&UnixListener],
    pool: &str,
    notify: &std::path::Path,
    dir: &std::path::Path,
    unused_socket: &std::path::Path,
) -> Started {
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
    .args(["--pool", pool]);
    isolate(&mut cmd, unused_socket);
    cmd.env("LISTEN_FDS", sockets.len().to_string())
        .env("NOTIFY_SOCKET", notify)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("BERTH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // Copies out of the way of descriptors 3, 4, …, which the child's dup2 writes; kept
    // until the spawn has returned.
    let high: Vec<_> = sockets
        .iter()
        .map(|s| rustix::io::fcntl_dupfd_cloexec(s, 100).unwrap())
        .collect();
    for (number, fd) in (3..).zip(&high) {
        berth_os::exec::inherit_at(&mut cmd, fd.as_raw_fd(), number);
    }
    Started(Some(cmd.spawn().expect("spawn berth daemon")))
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

    let daemon = spawn_activated(
        &[&listener],
        "20940-20949",
        &notify_path,
        dir.path(),
        &unused,
    );
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
    let mut child = daemon.take();
    std::thread::spawn(move || exited.send(child.wait()));
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
    let again = spawn_activated(
        &[&listener],
        "20940-20949",
        &notify_path,
        dir.path(),
        &unused,
    );
    notified_until(&notify, "READY=1", &log);
    Berth::new(&socket)
        .args(["list", "--json"])
        .output()
        .code(0);
    drop(again);
}

/// `berth.socket` also binds portpicker's address at boot and passes it with the main socket:
/// the daemon serves the portserver endpoint on the passed socket, and names in its log a
/// passed socket it cannot use (here a second socket file) instead of refusing to start.
#[test]
fn the_portserver_address_systemd_binds_is_served_and_an_extra_socket_is_named() {
    use std::io::{Read, Write};
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("berth.sock");
    let extra_path = dir.path().join("extra.sock");
    let main = UnixListener::bind(&socket).unwrap();
    let name = format!("berth-test-portserver-{}", std::process::id());
    let portserver =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let extra = UnixListener::bind(&extra_path).unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = dir.path().join("daemon.log");
    let unused = dir.path().join("not-this.sock");
    let daemon = spawn_activated(
        &[&main, &portserver, &extra],
        "20930-20939",
        &notify_path,
        dir.path(),
        &unused,
    );
    notified_until(&notify, "READY=1", &log);

    // A portpicker request on the passed abstract socket: a port of the pool.
    let mut conn =
        UnixStream::connect_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    conn.write_all(format!("{}\n", std::process::id()).as_bytes())
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let port: u16 = answer.trim().parse().unwrap_or_else(|_| {
        panic!(
            "not a port: {answer:?}; the daemon's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!((20930..=20939).contains(&port), "{port}");
    // The main socket serves too.
    Berth::new(&socket).args(["status"]).output().code(0);

    drop(daemon);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("descriptor 5") && text.contains("is not used"),
        "the unused socket is not named:\n{text}"
    );
    assert!(!unused.exists(), "the daemon bound --socket as well");
}
