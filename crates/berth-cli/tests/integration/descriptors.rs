//! A daemon out of file descriptors blames no client and costs none its reservations.
//!
//! The daemon runs with a hard `RLIMIT_NOFILE` of [`LIMIT`] (set before it starts, so it cannot
//! raise it). A client holds a reservation; then idle connections fill the daemon's
//! descriptors until a new one is answered "busy" for want of them. The client's associate is
//! still served from the room the daemon keeps (bound, or "unavailable" saying the daemon is out
//! of descriptors; never "too many descriptors", never a closed connection), and the client
//! keeps its connection and its reservation. Once the idle connections go, the same associate binds, and the daemon is back
//! to the descriptors it had before any client.

use crate::support;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use berth_core::ErrorKind;
use berth_protocol::{DaemonLimit, ErrorDetail, Hello, Protocol, Request, Response};
use berth_testkit::raw::{frame, responses, send_with_fds};
use support::{Daemon, DEADLINE};

/// The daemon's descriptor limit, soft and hard.
const LIMIT: u64 = 128;

/// The descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Sends `request` (with `fd` attached, if any) and reads one answer, within [`DEADLINE`];
/// `None` when the daemon closed the connection.
fn ask(conn: &mut UnixStream, request: Request, fd: Option<&OwnedFd>) -> Option<Response> {
    let bytes = frame(request);
    match fd {
        Some(fd) => send_with_fds(&*conn, &bytes, &[fd.as_fd()]),
        // A refused connection is answered at once and closed: the answer is there to read
        // even when the request can no longer be written.
        None => match conn.write_all(&bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => panic!("writing a request: {e}"),
        },
    }
    reply(conn)
}

/// One answer, within [`DEADLINE`]; `None` when the daemon closed the connection.
fn reply(conn: &mut UnixStream) -> Option<Response> {
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut len = [0u8; 4];
    match conn.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            panic!("no answer within {DEADLINE:?}")
        }
        Err(_) => return None,
    }
    let mut bytes = len.to_vec();
    bytes.resize(4 + u32::from_be_bytes(len) as usize, 0);
    conn.read_exact(&mut bytes[4..]).ok()?;
    responses(&bytes).pop()
}

/// A new connection and the answer to its hello.
fn hello(daemon: &Daemon, name: &str) -> (UnixStream, Option<Response>) {
    let mut conn = UnixStream::connect(daemon.socket()).unwrap();
    let answer = ask(&mut conn, Request::Hello(Hello::current(name)), None);
    (conn, answer)
}

/// Asserts that `answer` is the daemon's "busy: out of file descriptors".
#[track_caller]
fn assert_out_of_files(answer: &Option<Response>, kind: ErrorKind) {
    let Some(Response::Error(e)) = answer else {
        panic!("not an error: {answer:?}")
    };
    assert_eq!(e.kind, kind, "{}", e.message);
    assert!(
        e.message.contains("out of file descriptors") && e.message.contains(" of 128"),
        "{}",
        e.message
    );
    assert!(
        matches!(&e.detail, ErrorDetail::Busy(b) if b.limit == DaemonLimit::OpenFiles && b.max == LIMIT),
        "{:?}",
        e.detail
    );
}

/// A new, unbound TCP socket.
fn tcp_socket() -> OwnedFd {
    rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap()
}

/// The port `socket` is bound to (0: none).
fn local_port(socket: &OwnedFd) -> u16 {
    let addr = rustix::net::getsockname(socket).unwrap();
    std::net::SocketAddr::try_from(addr).map_or(0, |a| a.port())
}

#[test]
fn a_daemon_out_of_descriptors_blames_no_client_and_releases_nothing() {
    let started = Instant::now();
    let d = Daemon::start_with_nofile("21500-21519", LIMIT, &[("BERTH_LOG", "debug")]);
    let pid = d.pid();
    let baseline = open_fds(pid);

    // The client: a reservation on a connection of its own.
    let (mut client, welcome) = hello(&d, "client");
    assert!(matches!(welcome, Some(Response::Welcome(_))), "{welcome:?}");
    let acquired = ask(
        &mut client,
        Request::Acquire {
            protocol: Protocol::Tcp,
            start: 0,
            count: 1,
        },
        None,
    );
    let Some(Response::Acquired(info)) = acquired else {
        panic!("{acquired:?}")
    };
    let token = info.token.get();

    // Idle connections until the daemon has no descriptor left for another: that one is told
    // so.
    let mut idle = Vec::new();
    let refused = loop {
        assert!(
            idle.len() < 2 * LIMIT as usize,
            "{} idle connections and the daemon never ran out of descriptors",
            idle.len()
        );
        let (conn, answer) = hello(&d, "idle");
        match answer {
            Some(Response::Welcome(_)) => idle.push(conn),
            other => break other,
        }
    };
    if refused.is_none() {
        panic!("a new client got no answer; the daemon's log:\n{}", d.log());
    }
    assert_out_of_files(&refused, ErrorKind::Unavailable);
    // The client's associate, while new connections are refused: the daemon keeps more room
    // free than a read needs when it refuses a new connection, so the sessions it serves are
    // still read. The associate is answered — bound, or, should the room be gone by the time
    // its socket arrives, "out of file descriptors" — never refused as the client's fault,
    // never with a closed connection.
    let associate = Request::Associate {
        token,
        address: None,
    };
    let socket = tcp_socket();
    let answer = ask(&mut client, associate.clone(), Some(&socket));
    match &answer {
        Some(Response::Associated { port }) => assert_eq!(*port, info.range.start()),
        Some(Response::Error(e)) => {
            assert_eq!(e.kind, ErrorKind::Unavailable, "{}", e.message);
            assert!(
                e.message.contains("out of file descriptors")
                    && (e
                        .message
                        .contains("could not take the socket sent with this associate request")
                        || e.message.contains("could not bind the socket")),
                "{}",
                e.message
            );
            assert_eq!(local_port(&socket), 0, "bound after all");
        }
        None => panic!("the connection closed; the daemon's log:\n{}", d.log()),
        other => panic!("{other:?}; the daemon's log:\n{}", d.log()),
    }
    // A socket bound from the block would keep its port; the binding below needs it free.
    drop(socket);
    // Its connection is open and its reservation is still its own.
    let list = ask(&mut client, Request::List, None);
    let Some(Response::List(rows)) = list else {
        panic!("{list:?}")
    };
    assert!(rows.iter().any(|r| r.token.get() == token), "{rows:?}");

    // The idle connections go: the same associate binds.
    drop(idle);
    let deadline = Instant::now() + DEADLINE;
    let port = loop {
        let socket = tcp_socket();
        match ask(&mut client, associate.clone(), Some(&socket)) {
            Some(Response::Associated { port }) => break port,
            // Out of descriptors still: for the socket, or for the daemon's test bind.
            Some(Response::Error(e))
                if e.kind == ErrorKind::Unavailable
                    && e.message.contains("out of file descriptors") => {}
            answer => panic!("{answer:?}"),
        }
        assert!(Instant::now() < deadline, "still out of descriptors");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(port, info.range.start());
    // New clients are served again, once the daemon has closed what the idle clients left
    // (their sessions end as their ends close; the descriptors go on the closer threads).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, welcome) = hello(&d, "after");
        match welcome {
            Some(Response::Welcome(_)) => break,
            busy @ Some(Response::Error(_)) => {
                assert_out_of_files(&busy, ErrorKind::Unavailable);
                assert!(
                    Instant::now() < deadline,
                    "still refused {DEADLINE:?} after the idle clients left: {busy:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Everything closed: the daemon is back to what it had before any client (or fewer: a
    // file its own threads open for a moment — the kernel list's recheck, a journal record —
    // may have been counted then).
    drop(client);
    let deadline = Instant::now() + DEADLINE;
    while open_fds(pid) > baseline {
        assert!(
            Instant::now() < deadline,
            "the daemon has {} descriptors open, more than the {baseline} it had before",
            open_fds(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // It said so once per episode, not once per failed accept or request: a warning when
    // accepting fails, one when it works again; the rest at most once per ten seconds (the
    // interval itself is unit-tested in limits.rs). The bound follows from how long this test
    // ran, so a slow machine cannot make it fail.
    let log = d.log();
    let most_others = 1 + usize::try_from(started.elapsed().as_secs() / 10).unwrap_or(usize::MAX);
    // Lines logged while serving a client carry its span ("client{pid=… uid=…}: ") between
    // the level and the message.
    let warnings = |needle: &str| {
        log.lines()
            .filter(|l| l.contains(" WARN ") && l.contains(needle))
            .count()
    };
    let episodes = warnings("cannot accept connections: the daemon is out of file descriptors");
    let recovered = log
        .lines()
        .filter(|l| l.contains("accepting connections again"))
        .count();
    let others = warnings("the daemon is out of file descriptors") - episodes;
    // Said at least once — as a failed accept's episode (when the refusal came from the spare
    // descriptor) or as a shortage line (when it came from the room check) — and never more
    // often than that.
    assert!(
        episodes <= recovered + 1 && others <= most_others && episodes + others >= 1,
        "{episodes} episodes, {recovered} recoveries, {others} other warnings:\n{log}"
    );
}
