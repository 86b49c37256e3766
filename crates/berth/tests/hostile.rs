//! Hostile clients on raw sockets: descriptors whose close blocks, descriptors sent with the
//! wrong frame, and a second process splicing its bytes into the owner's requests on a shared
//! connection. The daemon answers each with an error and a closed connection, and nobody else
//! waits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::{Client, ErrorKind, Protocol};
use berth_daemon::testing::raw::{
    assert_error, frame, lingering_socket, read_until_closed, responses, send_with_fds,
    shaken_hands, PY_PRELUDE,
};
use berth_daemon::testing::TestDaemon;
use berth_protocol::{Request, Response};
use common::{bystander, bystander_is_fine};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a close of the hostile sockets below blocks, at most.
const LINGER: Duration = Duration::from_secs(10);

// One runtime thread, which the daemon shares with the test: a close that blocked on it would
// block everything, and show in the time taken.
#[tokio::test]
async fn a_socket_whose_close_blocks_does_not_stall_the_daemon() {
    let daemon = TestDaemon::start(45000, 45099);
    let (client, held) = bystander(&daemon).await;
    let mut stream = shaken_hands(&daemon.socket, "hostile").await;
    let (socket, _peer) = lingering_socket(LINGER);
    let started = Instant::now();
    // Refused (a connected socket is bound), after which the daemon drops the only copy left.
    let associate = Request::Associate {
        token: held.token().get(),
        address: None,
    };
    send_with_fds(&stream, &frame(associate), &[socket.as_fd()]);
    drop(socket);
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).await.unwrap();
    let reply: Response = postcard::from_bytes(&payload).unwrap();
    assert!(matches!(reply, Response::Error(_)), "{reply:?}");
    // The session goes on, and so does everyone else's.
    stream.write_all(&frame(Request::Status)).await.unwrap();
    stream.shutdown().await.unwrap();
    let replies = read_until_closed(&mut stream).await;
    assert!(matches!(replies[..], [Response::Status(_)]), "{replies:?}");
    bystander_is_fine(&client, &held).await;
    assert!(
        started.elapsed() < LINGER / 2,
        "the daemon waited {:?} for a client's socket to close",
        started.elapsed()
    );
}

#[tokio::test]
async fn descriptors_left_unread_when_a_connection_ends_do_not_stall_the_daemon() {
    let daemon = TestDaemon::start(45100, 45199);
    let (client, held) = bystander(&daemon).await;
    let mut stream = shaken_hands(&daemon.socket, "hostile").await;
    let (socket, _peer) = lingering_socket(LINGER);
    let started = Instant::now();
    // An oversized frame's header, padded to fill a read, then a message with the socket: the
    // daemon closes the connection before reading it, and so drops the socket in flight.
    let mut oversized = (1u32 << 30).to_be_bytes().to_vec();
    oversized.resize(16 * 1024, 0);
    send_with_fds(&stream, &oversized, &[]);
    send_with_fds(&stream, b"x", &[socket.as_fd()]);
    drop(socket);
    let replies = read_until_closed(&mut stream).await;
    assert_error(&replies, ErrorKind::InvalidArgument, "exceeds the limit");
    drop(stream);
    bystander_is_fine(&client, &held).await;
    // The connection is closed after the answer: give it the time to happen, then ask again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    bystander_is_fine(&client, &held).await;
    assert!(
        started.elapsed() < LINGER / 2,
        "the daemon waited {:?} for a client's socket to close",
        started.elapsed()
    );
}

#[tokio::test]
async fn descriptors_with_a_request_other_than_associate_close_the_connection() {
    let daemon = TestDaemon::start(45200, 45299);
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
    Command::new("/usr/bin/python3")
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
    let daemon = TestDaemon::start(45300, 45399);
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
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let reply: Response = berth_daemon::testing::raw::response_from_hex(lines[0]);
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
    let daemon = TestDaemon::start(45400, 45499);
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
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "sent");

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
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        line.trim(),
        "0",
        "the owner's reservation bound the child's socket"
    );
}

/// The daemon closes the sockets it receives on threads of its own, and reads the request that
/// follows an associate only once its copy is closed: a socket closed after its answer frees
/// its port for the next bind, every time.
#[tokio::test]
async fn a_socket_closed_after_its_answer_frees_its_port_for_the_next_bind() {
    let daemon = TestDaemon::start(45500, 45599);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let r = client.acquire(Protocol::Udp, 0, 1).await.unwrap();
    for _ in 0..200 {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        assert_eq!(r.bind(&socket, None).await.unwrap(), r.start());
        drop(socket);
    }
}
