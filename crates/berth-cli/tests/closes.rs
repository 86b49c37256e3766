//! A user whose sockets' closes block delays only its own closes.
//!
//! The attack: a client (root, this test) sends the daemon many TCP sockets whose last close
//! blocks — `SO_LINGER` on with a long linger time and a send queue that their peers never
//! drain — with associate requests, and closes its own copies, so that the daemon's close is
//! the last. The daemon closes what clients send on threads of its own; this test checks that
//! another user (nobody, a python3 helper speaking the protocol) is not held up by those
//! closes: its socket, closed after its associate, is closed by the daemon at once (the port
//! is free the moment the next answer arrives), while the attacker's closes still block. Then
//! the attacker's peers go, the closes end, and the daemon is back to the descriptors it had
//! before.
//!
//! A test binary of its own, apart from `tests/integration/`: its tests make `close(2)` block
//! (`SO_LINGER` sockets with unsent data). A process that another test forks or spawns
//! meanwhile inherits copies of them, and the copy's close — at its `exec`, or when it exits —
//! then waits out the linger time, holding up whoever waits for that process (`Command::spawn`
//! itself waits for the `exec`).

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "integration/support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_protocol::{Hello, Request, Response};
use berth_testkit::needs::{self, AS_NOBODY, PYTHON3};
use berth_testkit::raw::{
    frame, lingering_socket, response_from_hex, responses, send_with_fds, PY_PRELUDE,
};
use support::{Daemon, DEADLINE};

/// The attacker's sockets: more than the daemon ever had closer threads in all.
const ATTACK: usize = 20;

/// How long a close of one of the attacker's sockets blocks, at most: far longer than the
/// test, which ends the closes by dropping the sockets' peers (a reset).
const LINGER: Duration = Duration::from_secs(3600);

/// The victim, as nobody: acquires one TCP port and prints the answer; reads the token and
/// port from stdin; sends a fresh TCP socket with an associate and prints the answer; closes
/// its socket; asks for the status and says so once answered; then binds the port itself at
/// once and prints whether it could ("free") or not.
const VICTIM: &str = r#"
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
hello(conn, b"victim")
conn.sendall(frame(bytes([1, 0, 0, 1])))  # Acquire { tcp, start 0, count 1 }
print(answer(conn).hex(), flush=True)
token, port = (int(w) for w in sys.stdin.readline().split())
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
socket.send_fds(conn, [frame(bytes([5]) + varint(token) + bytes([0]))], [s.fileno()])
print(answer(conn).hex(), flush=True)
s.close()
conn.sendall(frame(bytes([4])))  # Status
answer(conn)
print("status", flush=True)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    t.bind(("0.0.0.0", port))
    print("free", flush=True)
except OSError as e:
    print("in use: %s" % e, flush=True)
sys.stdin.readline()
"#;

/// A child process, killed (by its pid) and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The descriptors process `pid` has open: what each links to.
fn open_fds(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

/// The socket inodes process `pid` has open.
fn open_sockets(pid: u32) -> BTreeSet<u64> {
    open_fds(pid)
        .iter()
        .filter_map(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// One response from a blocking connection.
fn read_reply(conn: &mut UnixStream) -> Option<Response> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).ok()?;
    let mut bytes = len.to_vec();
    bytes.resize(4 + u32::from_be_bytes(len) as usize, 0);
    conn.read_exact(&mut bytes[4..]).ok()?;
    responses(&bytes).pop()
}

/// A connection that has shaken hands with the daemon on `socket`.
fn connected(socket: &std::path::Path) -> UnixStream {
    let mut conn = UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    conn.write_all(&frame(Request::Hello(Hello::current("attacker"))))
        .unwrap();
    let welcome = read_reply(&mut conn);
    assert!(matches!(welcome, Some(Response::Welcome(_))), "{welcome:?}");
    conn.set_read_timeout(None).unwrap();
    conn
}

/// Polls `check` until it holds, for at most [`DEADLINE`]; panics with `what` otherwise.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_user_whose_closes_block_delays_only_its_own_closes() {
    // The victim must be another user than the attacker: closes are queued per user.
    if !needs::users() || !needs::python3() {
        return;
    }
    let d = Daemon::start("24000-24019");
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pid = d.pid();
    // Before any client: its socket, database, runtime.
    let baseline = open_fds(pid);

    // The attack: one connection per socket, each sending an associate (refused: the socket
    // is connected) with a socket whose close blocks, its own copy closed while in flight.
    let (answered, answers) = mpsc::channel();
    let mut conns = Vec::new();
    let mut peers = Vec::new();
    let mut inodes = HashMap::new();
    let associate = frame(Request::Associate {
        token: 1,
        address: None,
    });
    // Connected first: once its closes back up, the daemon reads nothing more from this user,
    // hellos included.
    let handshaken: Vec<UnixStream> = (0..ATTACK).map(|_| connected(d.socket())).collect();
    for (i, conn) in handshaken.into_iter().enumerate() {
        let (socket, peer) = lingering_socket(LINGER);
        peers.push(peer);
        inodes.insert(i, rustix::fs::fstat(&socket).unwrap().st_ino);
        // The socket goes with the frame's first bytes; the rest follows once this copy is
        // closed, so the daemon's copy is the last one whatever it does when.
        send_with_fds(&conn, &associate[..2], &[socket.as_fd()]);
        drop(socket);
        (&conn).write_all(&associate[2..]).unwrap();
        let mut reading = conn.try_clone().unwrap();
        let answered = answered.clone();
        std::thread::spawn(move || {
            if let Some(reply) = read_reply(&mut reading) {
                let _ = answered.send((i, reply));
            }
        });
        conns.push(conn);
    }
    drop(answered);

    // The attack takes: a socket whose associate was answered (so the daemon dropped it) is
    // still open in the daemon — its close waits behind closes that block.
    let mut replies = HashMap::new();
    let queued_attacker_socket = |replies: &HashMap<usize, Response>| {
        let open = open_sockets(pid);
        replies.keys().any(|i| open.contains(&inodes[i]))
    };
    eventually(
        "no answered socket of the attacker's is still open in the daemon: the attack did not take",
        || {
            while let Ok((i, reply)) = answers.try_recv() {
                replies.insert(i, reply);
            }
            queued_attacker_socket(&replies)
        },
    );
    for reply in replies.values() {
        assert!(matches!(reply, Response::Error(_)), "{reply:?}");
    }

    // Meanwhile, nobody binds a socket from a reservation and closes it.
    let mut victim = Reaped(
        Command::new(AS_NOBODY[0])
            .args(&AS_NOBODY[1..])
            .args([PYTHON3, "-c"])
            .arg(format!("{PY_PRELUDE}{VICTIM}"))
            .arg(d.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut to_victim = victim.0.stdin.take().unwrap();
    let lines = support::lines_of(victim.0.stdout.take().unwrap());
    let next_line = || {
        lines
            .recv_timeout(DEADLINE)
            .expect("the victim says nothing")
            .trim_end()
            .to_owned()
    };
    let Response::Acquired(info) = response_from_hex(&next_line()) else {
        panic!("the victim's acquire failed")
    };
    writeln!(to_victim, "{} {}", info.token.get(), info.range.start()).unwrap();
    let bound = response_from_hex(&next_line());
    assert_eq!(
        bound,
        Response::Associated {
            port: info.range.start()
        }
    );
    assert_eq!(next_line(), "status");
    // The answer after the associate came once the daemon's copy of the socket was closed:
    // the port is free at once, not after some wait.
    assert_eq!(next_line(), "free");
    // ... while the attacker's closes still block.
    while let Ok((i, reply)) = answers.try_recv() {
        replies.insert(i, reply);
    }
    assert!(
        queued_attacker_socket(&replies),
        "the attacker's closes ended before the victim was served: the test proves nothing"
    );
    writeln!(to_victim).unwrap();
    drop(victim);

    // The attacker's peers go: the connections reset, the closes end, and every associate is
    // answered (those the daemon did not read while the closes backed up too).
    drop(peers);
    eventually(
        "not every associate of the attacker's was answered once its closes ended",
        || {
            while let Ok((i, reply)) = answers.try_recv() {
                replies.insert(i, reply);
            }
            replies.len() == ATTACK
        },
    );
    for conn in &conns {
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
    drop(conns);

    // Every descriptor the attack cost the daemon is closed again.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = open_fds(pid);
        if now.len() == baseline.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon has {} descriptors open, not the {} it had before the attack:\nnow {now:?}\nbefore {baseline:?}",
            now.len(),
            baseline.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // And it serves everyone as before.
    d.berth(["run", "--tcp", "1", "--", "true"])
        .output()
        .code(0);
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
}
