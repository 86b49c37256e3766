//! `berth run --listen`: the command gets its ports as sockets already bound, the systemd way,
//! and a real socket-activated server (a python3 script) serves on them.
//!
//! Each test runs its own daemon (kernel sync off, an authority beacon of its own) on its own
//! pool of this file's range, 24600-24699. Every wait has a deadline; nothing sleeps.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use berth_testkit::deadline::{lines_of, output_within, wait_within};
use berth_testkit::needs;
use tempfile::TempDir;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// How long anything may take before a test gives up: generous, for a busy 2-core machine.
const DEADLINE: Duration = Duration::from_secs(10);

/// A socket-activated server, as systemd starts them: it checks what `sd_listen_fds(3)`
/// checks (and that nothing else was inherited), says which ports it got, answers one TCP
/// connection and one UDP datagram, and exits.
const SERVER: &str = r#"
import os, socket, sys
n = int(os.environ["LISTEN_FDS"])
assert os.environ["LISTEN_PID"] == str(os.getpid()), (os.environ["LISTEN_PID"], os.getpid())
tcp = [int(p) for p in os.environ.get("BERTH_TCP_PORTS", "").split(",") if p]
udp = [int(p) for p in os.environ.get("BERTH_UDP_PORTS", "").split(",") if p]
assert n == len(tcp) + len(udp), (n, tcp, udp)
names = ["tcp-%d" % p for p in tcp] + ["udp-%d" % p for p in udp]
assert os.environ["LISTEN_FDNAMES"] == ":".join(names), os.environ["LISTEN_FDNAMES"]
assert os.environ["PORT"] == str(tcp[0])
# Nothing but 0, 1, 2 and the sockets (the listing's own descriptor is closed by now).
extra = []
for f in os.listdir("/proc/self/fd"):
    fd = int(f)
    if fd < 3 + n:
        continue
    try:
        os.fstat(fd)
    except OSError:
        continue
    extra.append((fd, os.readlink("/proc/self/fd/%d" % fd)))
assert not extra, extra
socks = []
for i, port in enumerate(tcp + udp):
    assert os.get_inheritable(3 + i), "fd %d is close-on-exec" % (3 + i)
    s = socket.socket(fileno=3 + i)
    assert s.getsockname()[1] == port, (s.getsockname(), port)
    if i < len(tcp):
        assert s.type == socket.SOCK_STREAM
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    else:
        assert s.type == socket.SOCK_DGRAM
    socks.append(s)
print("ready %d %s" % (os.getpid(), s.getsockname()[0]), flush=True)
conn, _ = socks[0].accept()
data = conn.recv(100)
conn.sendall(b"tcp " + data)
# The client closes first, so no TIME_WAIT is left on the server's port.
while conn.recv(100):
    pass
conn.close()
if udp:
    data, peer = socks[len(tcp)].recvfrom(100)
    socks[len(tcp)].sendto(b"udp " + data, peer)
print("done", flush=True)
"#;

/// The system's `python3`, or `None` (the skip reported) without one.
fn python() -> Option<&'static str> {
    needs::python3().then_some(needs::PYTHON3)
}

/// A `berth daemon` of this test, killed and reaped on drop.
struct Daemon {
    child: Child,
    dir: TempDir,
}

impl Daemon {
    /// Starts one on `pool` and waits for its "ready".
    fn start(pool: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let log = std::fs::File::create(dir.path().join("daemon.log")).expect("create the log");
        let mut cmd = Command::new(BERTH);
        isolate(&mut cmd, dir.path());
        let mut child = cmd
            .arg("daemon")
            .arg("--socket")
            .arg(dir.path().join("b.sock"))
            .arg("--db")
            .arg(dir.path().join("berth.db"))
            .args(["--pool", pool, "--ready-stdout"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn berth daemon");
        let lines = lines_of(child.stdout.take().expect("piped stdout"));
        let d = Daemon { child, dir };
        match lines.recv_timeout(DEADLINE) {
            Ok(line) if line == "ready\n" => d,
            other => panic!("no ready ({other:?}); log:\n{}", d.log()),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("b.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `berth ARGS…` aimed at this daemon, never starting another.
    fn berth(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BERTH);
        cmd.args(args)
            .env("BERTH_SOCKET", self.socket())
            .env("BERTH_NO_AUTOSTART", "1")
            .env_remove("BERTH_LOG");
        isolate(&mut cmd, self.dir.path());
        cmd
    }

    /// Every live reservation, from the client library.
    fn list(&self) -> Vec<berth::ReservationInfo> {
        berth::blocking::Client::connect_to(self.socket())
            .and_then(|c| c.list())
            .expect("list the reservations")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps a daemon off the host's `ip_local_reserved_ports` and off the host's authority
/// beacon.
fn isolate(cmd: &mut Command, dir: &Path) {
    let tag = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    cmd.env("BERTH_KERNEL_SYNC", "off").env(
        "BERTH_AUTHORITY",
        format!("berth-test-listen-{}", tag.unwrap_or_default()),
    );
}

/// A running `berth run`, its stdout read line by line, stderr kept.
struct Run {
    child: Child,
    lines: Receiver<String>,
    stderr: Receiver<String>,
}

impl Run {
    fn spawn(mut cmd: Command) -> Run {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth run");
        let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
        let lines = lines_of(stdout);
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            let _ = tx.send(text);
        });
        Run {
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line, within the deadline.
    fn line(&mut self) -> String {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("no line from the command ({e}); stderr:\n{}", self.stderr())
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.recv_timeout(DEADLINE).unwrap_or_default()
    }

    /// Its exit code, within the deadline.
    fn code(mut self) -> (i32, String) {
        let status = wait_within(&mut self.child, DEADLINE, "berth run");
        (status.code().unwrap_or(-1), self.stderr())
    }
}

/// Whether this host has IPv6 (then the sockets are dual-stack `[::]`).
fn has_ipv6() -> bool {
    std::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).is_ok()
}

/// Tries to bind `port` the way another program would, with `SO_REUSEADDR` (which std's
/// `TcpListener::bind` sets too); returns the error, or `None` when the bind succeeded.
fn foreign_bind(tcp: bool, ip: IpAddr, port: u16) -> Option<std::io::Error> {
    use rustix::net::{AddressFamily, SocketType};
    let family = if ip.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let ty = if tcp {
        SocketType::STREAM
    } else {
        SocketType::DGRAM
    };
    let socket = rustix::net::socket(family, ty, None).expect("create a socket");
    rustix::net::sockopt::set_socket_reuseaddr(&socket, true).expect("SO_REUSEADDR");
    rustix::net::bind(&socket, &SocketAddr::new(ip, port))
        .err()
        .map(std::io::Error::from)
}

#[test]
fn a_socket_activated_server_serves_on_the_passed_sockets() {
    let Some(py) = python() else {
        return;
    };
    let d = Daemon::start("24600-24619");
    let mut cmd = d.berth(&["run", "--listen", "--tcp", "2", "--udp", "1", "--"]);
    cmd.args([py, "-c", SERVER]);
    let mut run = Run::spawn(cmd);
    let ready = run.line();
    let words: Vec<&str> = ready.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"ready"), "{ready}");
    let pid: u32 = words[1].parse().expect("a pid");

    let list = d.list();
    assert_eq!(list.len(), 2, "{list:?}");
    for r in &list {
        assert!(r.held, "a --listen reservation is held: {r:?}");
        let owner = r.owner.as_ref().expect("an owner");
        assert_eq!(owner.pid, pid, "handed to the command itself: {r:?}");
        assert!(
            owner.command.starts_with("python"),
            "handed over once the command runs, not berth's exec step: {r:?}"
        );
    }
    let tcp = list
        .iter()
        .find(|r| r.protocol == berth::Protocol::Tcp)
        .expect("tcp");
    let udp = list
        .iter()
        .find(|r| r.protocol == berth::Protocol::Udp)
        .expect("udp");
    let (tcp_port, udp_port) = (tcp.range.start(), udp.range.start());

    // Bound before the command started: nobody else can bind them, with any address.
    let mut addresses = vec![
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    ];
    if has_ipv6() {
        assert_eq!(
            words.get(2),
            Some(&"::"),
            "dual-stack where the host has IPv6"
        );
        addresses.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
    for ip in &addresses {
        for port in [tcp_port, tcp_port + 1] {
            let e =
                foreign_bind(true, *ip, port).unwrap_or_else(|| panic!("bound tcp {ip} {port}"));
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::AddrInUse,
                "tcp {ip} {port}: {e}"
            );
        }
        let e = foreign_bind(false, *ip, udp_port)
            .unwrap_or_else(|| panic!("bound udp {ip} {udp_port}"));
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::AddrInUse,
            "udp {ip} {udp_port}: {e}"
        );
    }

    let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, tcp_port)).expect("connect");
    conn.set_read_timeout(Some(DEADLINE)).expect("timeout");
    conn.write_all(b"ping").expect("send");
    let mut reply = [0u8; 8];
    conn.read_exact(&mut reply).expect("the server's answer");
    assert_eq!(&reply, b"tcp ping");
    drop(conn);

    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp client");
    client.set_read_timeout(Some(DEADLINE)).expect("timeout");
    client
        .send_to(b"hello", (Ipv4Addr::LOCALHOST, udp_port))
        .expect("send a datagram");
    let mut buf = [0u8; 32];
    let (n, _) = client.recv_from(&mut buf).expect("the server's datagram");
    assert_eq!(&buf[..n], b"udp hello");

    assert_eq!(run.line(), "done\n");
    let (code, stderr) = run.code();
    assert_eq!(code, 0, "stderr:\n{stderr}");

    // Ended with the command: released, and free for anyone by the time berth run exits.
    assert!(d.list().is_empty(), "{:?}", d.list());
    for ip in &addresses {
        for port in [tcp_port, tcp_port + 1] {
            assert!(
                foreign_bind(true, *ip, port).is_none(),
                "tcp {ip} {port} still bound"
            );
        }
        assert!(
            foreign_bind(false, *ip, udp_port).is_none(),
            "udp {ip} {udp_port} still bound"
        );
    }
}

#[test]
fn nothing_else_reaches_the_command() {
    let Some(py) = python() else {
        return;
    };
    // berth run itself inherits descriptors 7 and 9 (not close-on-exec) from a shell: plain
    // `berth run` passes them on like any program, `--listen` gives exactly 0-2 and the
    // sockets, as systemd does. The server checks /proc/self/fd.
    let d = Daemon::start("24620-24639");
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        r#"exec 7</dev/null 9</dev/null; exec "$0" "$@""#,
        BERTH,
    ])
    .args(["run", "--listen", "--tcp", "1", "--"])
    .args([py, "-c", SERVER])
    .env("BERTH_SOCKET", d.socket())
    .env("BERTH_NO_AUTOSTART", "1");
    isolate(&mut cmd, d.dir.path());
    let mut run = Run::spawn(cmd);
    let ready = run.line();
    assert!(ready.starts_with("ready "), "{ready}");
    let port = d.list()[0].range.start();
    let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    conn.write_all(b"x").expect("send");
    let mut reply = [0u8; 5];
    conn.set_read_timeout(Some(DEADLINE)).expect("timeout");
    conn.read_exact(&mut reply).expect("answer");
    drop(conn);
    assert_eq!(run.line(), "done\n");
    let (code, stderr) = run.code();
    assert_eq!(code, 0, "stderr:\n{stderr}");
}

#[test]
fn the_address_can_be_chosen() {
    let Some(py) = python() else {
        return;
    };
    let d = Daemon::start("24640-24649");
    let mut cmd = d.berth(&[
        "run",
        "--listen",
        "--listen-address",
        "127.0.0.1",
        "--tcp",
        "1",
        "--",
    ]);
    cmd.args([py, "-c", SERVER]);
    let mut run = Run::spawn(cmd);
    let ready = run.line();
    assert_eq!(
        ready.split_whitespace().nth(2),
        Some("127.0.0.1"),
        "{ready}"
    );
    let port = d.list()[0].range.start();
    let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    conn.write_all(b"x").expect("send");
    let mut reply = [0u8; 5];
    conn.set_read_timeout(Some(DEADLINE)).expect("timeout");
    conn.read_exact(&mut reply).expect("answer");
    drop(conn);
    assert_eq!(run.line(), "done\n");
    assert_eq!(run.code().0, 0);
}

#[test]
fn without_listen_the_ports_are_not_held_and_nothing_is_passed() {
    let Some(py) = python() else {
        return;
    };
    // The command binds $PORT by number: it must be able to, so the port is not held.
    let d = Daemon::start("24650-24659");
    let script = r#"
import os, socket
assert "LISTEN_FDS" not in os.environ and "LISTEN_FDNAMES" not in os.environ
s = socket.socket()
s.bind(("0.0.0.0", int(os.environ["PORT"])))
print("bound", flush=True)
import sys; sys.stdin.read()
"#;
    let mut cmd = d.berth(&["run", "--tcp", "1", "--"]);
    cmd.args([py, "-c", script]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth run");
    let lines = lines_of(child.stdout.take().expect("stdout"));
    let line = lines.recv_timeout(DEADLINE);
    let list = d.list();
    drop(child.stdin.take()); // the script reads stdin to its end
    let status = wait_within(&mut child, DEADLINE, "berth run");
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    assert_eq!(line.as_deref().ok(), Some("bound\n"), "stderr:\n{err}");
    assert_eq!(list.len(), 1);
    assert!(!list[0].held, "plain berth run is not held: {:?}", list[0]);
    assert!(status.success(), "{status}: {err}");
}

#[test]
fn a_command_that_cannot_be_run_exits_127_and_frees_its_ports() {
    let d = Daemon::start("24660-24669");
    let out = output_within(
        &mut d.berth(&[
            "run",
            "--listen",
            "--tcp",
            "1",
            "--",
            "/nonexistent/berth-test-command",
        ]),
        DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "stderr:\n{stderr}");
    assert!(
        stderr.contains("/nonexistent/berth-test-command"),
        "{stderr}"
    );
    assert!(d.list().is_empty(), "{:?}", d.list());
    assert!(foreign_bind(true, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 24660).is_none());
}

#[test]
fn the_exec_step_is_not_a_command_of_its_own() {
    let out = output_within(
        Command::new(BERTH)
            .args([
                "__listen-exec",
                "--fds",
                "9",
                "--exec-fd",
                "10",
                "--",
                "true",
            ])
            .env_remove("LISTEN_FDS"),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("berth run --listen"), "{stderr}");
    let help = output_within(Command::new(BERTH).arg("--help"), DEADLINE);
    assert!(!String::from_utf8_lossy(&help.stdout).contains("__listen-exec"));
}
