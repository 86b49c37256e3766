//! Hostile clients on raw sockets: descriptors whose close blocks, descriptors sent with the
//! wrong frame, and a second process splicing its bytes into the owner's requests on a shared
//! connection. The daemon answers each with an error and a closed connection, and nobody else
//! waits.
//!
//! A test binary of its own, apart from `tests/integration/`: its tests make `close(2)` block
//! (`SO_LINGER` sockets with unsent data). A process that another test forks or spawns
//! meanwhile inherits copies of them, and the copy's close — at its `exec`, or when it exits —
//! then waits out the linger time, holding up whoever waits for that process (`Command::spawn`
//! itself waits for the `exec`).

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "integration/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::{Client, ErrorKind, Protocol};
use berth_protocol::{Hello, Request, Response};
use berth_testkit::deadline::{all_lines, lines_of, next_line, wait_within};
use berth_testkit::needs::{self, PYTHON3};
use berth_testkit::raw::{
    assert_error, frame, lingering_socket, read_until_closed, responses, send_with_fds,
    shaken_hands, PY_PRELUDE,
};
use berth_testkit::TestDaemon;
use common::{bystander, bystander_is_fine};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a close of the hostile sockets below blocks, at most (or until the test drops the
/// peer, which resets the connection).
const LINGER: Duration = Duration::from_secs(120);

/// How long anything the daemon is asked may take: generous for a busy machine, and far
/// shorter than [`LINGER`]. A daemon that waited for a hostile close answers late and fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// A daemon serves a new client: connects, shakes hands and asks for the status, on a
/// blocking socket of its own (off the runtime: with one runtime thread, a daemon that blocked
/// it would stall the test too, and a timer on it could not fire). Panics unless every answer
/// comes within [`DEADLINE`].
async fn served_within_deadline(socket: &Path) {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        conn.write_all(&frame(Request::Hello(Hello::current("hostile-probe"))))
            .unwrap();
        let welcome = read_reply(&mut conn);
        assert!(matches!(welcome, Response::Welcome(_)), "{welcome:?}");
        conn.write_all(&frame(Request::Status)).unwrap();
        let status = read_reply(&mut conn);
        assert!(matches!(status, Response::Status(_)), "{status:?}");
    })
    .await
    .unwrap();
}

/// Lets go of the test's own copy of a lingering socket just sent to the daemon, on a thread of
/// its own: the daemon is meant to hold the last copy, but should it have closed its copy
/// already (this thread was preempted between the send and the close), ours is the last, and
/// its close waits for the linger time — which must hold up neither the test nor its runtime.
/// Join it once the socket's peer is gone (the close then returns at once).
fn let_go(socket: OwnedFd) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || drop(socket))
}

/// One response from a blocking connection whose read timeout is [`DEADLINE`].
fn read_reply(conn: &mut std::os::unix::net::UnixStream) -> Response {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).unwrap_or_else(|e| {
        panic!(
            "no answer within {DEADLINE:?} ({e}): the daemon waited for a client's socket to close"
        )
    });
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut payload).unwrap();
    postcard::from_bytes(&payload).unwrap()
}

// One runtime thread, which the daemon shares with the test: a close that blocked on it would
// block everything for LINGER. The hostile client's side runs on a blocking thread, whose
// reads give up after DEADLINE.
#[tokio::test]
async fn a_socket_whose_close_blocks_does_not_stall_the_daemon() {
    let daemon = TestDaemon::start(15000, 15099);
    let (client, held) = bystander(&daemon).await;
    let stream = shaken_hands(&daemon.socket, "hostile").await;
    let (socket, peer) = lingering_socket(LINGER);
    let token = held.token().get();
    let replies = tokio::task::spawn_blocking(move || {
        let mut conn = stream.into_std().unwrap();
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        // Refused (a connected socket is bound), after which the daemon drops the only copy
        // left, whose close blocks until LINGER passes or `peer` goes.
        let associate = Request::Associate {
            token,
            address: None,
        };
        // The socket goes with the frame's first bytes, the rest once this copy is closed: the
        // daemon cannot act on part of a frame, so its copy is the last one, whenever it closes
        // it.
        let associate = frame(associate);
        send_with_fds(&conn, &associate[..2], &[socket.as_fd()]);
        drop(socket);
        conn.write_all(&associate[2..]).unwrap();
        let refused = read_reply(&mut conn);
        // The session goes on.
        conn.write_all(&frame(Request::Status)).unwrap();
        let status = read_reply(&mut conn);
        [refused, status]
    })
    .await
    .unwrap();
    assert!(matches!(replies[0], Response::Error(_)), "{replies:?}");
    assert!(matches!(replies[1], Response::Status(_)), "{replies:?}");
    // And so does everyone else's, while that close still waits.
    served_within_deadline(&daemon.socket).await;
    bystander_is_fine(&client, &held).await;
    drop(peer);
}

#[tokio::test]
async fn descriptors_left_unread_when_a_connection_ends_do_not_stall_the_daemon() {
    let daemon = TestDaemon::start(15100, 15199);
    let (client, held) = bystander(&daemon).await;
    let mut stream = shaken_hands(&daemon.socket, "hostile").await;
    let (socket, peer) = lingering_socket(LINGER);
    // An oversized frame's header, padded to fill a read, then a message with the socket: the
    // daemon closes the connection before reading it, and so drops the socket in flight.
    let mut oversized = (1u32 << 30).to_be_bytes().to_vec();
    oversized.resize(16 * 1024, 0);
    send_with_fds(&stream, &oversized, &[]);
    send_with_fds(&stream, b"x", &[socket.as_fd()]);
    let ours = let_go(socket);
    let replies = read_until_closed(&mut stream).await;
    assert_error(&replies, ErrorKind::InvalidArgument, "exceeds the limit");
    // The session dropped its connection, in-flight socket and all, in the same step as the
    // end of stream we saw: had that close blocked the runtime, nobody would be served now.
    served_within_deadline(&daemon.socket).await;
    // The daemon's copy of the connection is closed (not just shut down for writing): our
    // writes fail once it is.
    let closed = tokio::task::spawn_blocking(move || {
        let conn = stream.into_std().unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            match (&conn).write(b"x") {
                Err(e) => break e,
                Ok(_) if Instant::now() > deadline => {
                    panic!("the daemon's end of the connection is still open after {DEADLINE:?}")
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(
            closed.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{closed}"
    );
    served_within_deadline(&daemon.socket).await;
    bystander_is_fine(&client, &held).await;
    drop(peer);
    ours.join().unwrap();
}

#[tokio::test]
async fn descriptors_with_a_request_other_than_associate_close_the_connection() {
    let daemon = TestDaemon::start(15200, 15299);
    let (client, held) = bystander(&daemon).await;
    let mut stream = shaken_hands(&daemon.socket, "hostile").await;
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    send_with_fds(&stream, &frame(Request::Status), &[socket.as_fd()]);
    let replies = read_until_closed(&mut stream).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_error(&replies, ErrorKind::InvalidArgument, "not an associate");
    bystander_is_fine(&client, &held).await;
}

/// The owner's connection, shaken hands, with a reservation; blocking, to share with a child.
async fn owner_with_reservation(daemon: &TestDaemon) -> (std::os::unix::net::UnixStream, u64) {
    let mut stream = shaken_hands(&daemon.socket, "hostile").await;
    stream
        .write_all(&frame(Request::Acquire {
            protocol: Protocol::Tcp,
            start: 0,
            count: 1,
        }))
        .await
        .unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).await.unwrap();
    let Response::Acquired(info) = postcard::from_bytes(&payload).unwrap() else {
        panic!("acquire failed")
    };
    let conn = stream.into_std().unwrap();
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The child inherits it.
    rustix::io::fcntl_setfd(&conn, rustix::io::FdFlags::empty()).unwrap();
    (conn, info.token.get())
}

/// A python3 child (same user, another process) given the connection, running `body` after a
/// prelude that defines `conn`, `token`, `varint` and `frame`.
fn child(conn: &impl AsRawFd, token: u64, body: &str) -> std::process::Child {
    let prelude = format!(
        "{PY_PRELUDE}\nfd, token = int(sys.argv[1]), int(sys.argv[2])\nconn = socket.socket(fileno=fd)\n"
    );
    Command::new(PYTHON3)
        .arg("-c")
        .arg(format!("{prelude}{body}"))
        .arg(conn.as_raw_fd().to_string())
        .arg(token.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

// Blocking I/O below: the daemon needs worker threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cannot_slip_its_socket_to_the_owners_next_associate() {
    if !needs::python3() {
        return;
    }
    let daemon = TestDaemon::start(15300, 15399);
    let (mut conn, token) = owner_with_reservation(&daemon).await;
    // The child sends a List with its own socket attached, reads the answer and the end of the
    // connection, and says whether its socket got bound.
    let mut child = child(
        &conn,
        token,
        r#"
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
socket.send_fds(conn, [frame(bytes([3]))], [s.fileno()])   # List
n = struct.unpack(">I", conn.recv(4, socket.MSG_WAITALL))[0]
print(conn.recv(n, socket.MSG_WAITALL).hex())
print("eof" if conn.recv(1) == b"" else "open")
print(s.getsockname()[1], flush=True)
"#,
    );
    let out = lines_of(child.stdout.take().unwrap());
    let lines = all_lines(&out, DEADLINE, "the child");
    assert!(wait_within(&mut child, DEADLINE, "the child").success());
    assert_eq!(lines.len(), 3, "{lines:?}");
    let reply: Response = berth_testkit::raw::response_from_hex(&lines[0]);
    assert_error(&[reply], ErrorKind::InvalidArgument, "not an associate");
    assert_eq!(lines[1], "eof");
    assert_eq!(lines[2], "0", "the child's socket was bound");

    // The owner's connection is closed too: its next associate cannot pick anything up.
    let _ = conn.write_all(&frame(Request::Associate {
        token,
        address: None,
    }));
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", responses(&rest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cannot_have_the_owner_complete_its_frame() {
    if !needs::python3() {
        return;
    }
    let daemon = TestDaemon::start(15400, 15499);
    let (mut conn, token) = owner_with_reservation(&daemon).await;
    // The child sends all of an associate of the owner's token but its last byte, with its own
    // socket, and waits; the owner's next frame (a status) starts with the missing byte.
    let mut child = child(
        &conn,
        token,
        r#"
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
whole = frame(bytes([5]) + varint(token) + bytes([0]))   # Associate { token, address: None }
assert whole[-1] == 0
socket.send_fds(conn, [whole[:-1]], [s.fileno()])
print("sent", flush=True)
sys.stdin.readline()
print(s.getsockname()[1], flush=True)
"#,
    );
    let stdout = lines_of(child.stdout.take().unwrap());
    assert_eq!(next_line(&stdout, DEADLINE, "the child"), "sent");

    let status = frame(Request::Status);
    assert_eq!(status[0], 0);
    conn.write_all(&status).unwrap();
    let mut bytes = Vec::new();
    conn.read_to_end(&mut bytes)
        .expect("the daemon should close the connection");
    let replies = responses(&bytes);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_error(&replies, ErrorKind::InvalidArgument, "shared connection");

    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let line = next_line(&stdout, DEADLINE, "the child");
    assert!(wait_within(&mut child, DEADLINE, "the child").success());
    assert_eq!(
        line, "0",
        "the owner's reservation bound the child's socket"
    );
}

/// The daemon closes the sockets it receives on threads of its own, and reads the request that
/// follows an associate only once its copy is closed: a socket closed after its answer frees
/// its port for the next bind, every time.
#[tokio::test]
async fn a_socket_closed_after_its_answer_frees_its_port_for_the_next_bind() {
    let daemon = TestDaemon::start(15500, 15599);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let r = client.acquire(Protocol::Udp, 0, 1).await.unwrap();
    for _ in 0..200 {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        assert_eq!(r.bind(&socket, None).await.unwrap(), r.start());
        drop(socket);
    }
}
