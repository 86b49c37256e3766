//! Abuse of a real `berth daemon` process, and what it must not do to anybody else: while each
//! abuse goes on, a well-behaved client of another user is served (acquire, associate, hand
//! over, status — a `berth run --listen` as nobody), and root's library client keeps its
//! reservation and is served too (acquire, associate, release, status); afterwards the daemon's
//! descriptors (`/proc/PID/fd`) come back to what they were before, and its resident memory
//! (`VmRSS`) within a margin of it (see [`RSS_MARGIN_KIB`]).
//!
//! The abusers are this process: connections of other users are opened on threads that
//! dropped to that user (`setuid` on Linux changes only the calling thread's credentials, and
//! the daemon takes a connection's user from the connecting thread's, with `SO_PEERCRED`).
//! Both take root ([`needs::users`]): each test says it is skipped otherwise.
//! Other abuse covered elsewhere, on paused time: connections stalled mid-frame closed by the
//! idle timeout, a client that does not read closed by the write timeout
//! (`crates/berth-daemon/tests/integration/timeouts.rs`); descriptors whose close blocks
//! (`crates/berth/tests/hostile.rs`).
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

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_protocol::{
    DaemonLimit, ErrorDetail, ErrorKind, Hello, Protocol, Request, ReservationInfo, Response,
};
use berth_testkit::namespaces::Namespaces;
use berth_testkit::needs::{self, AS_NOBODY as NOBODY};
use berth_testkit::raw::{frame, raw_frame, responses, send_with_fds};
use support::{Berth, Daemon, DEADLINE};

/// How far above its baseline the daemon's resident memory may be after each round of abuse.
/// The allocator keeps what was freed for reuse — 7–11 MiB after a round of 3,200 connections
/// (measured) — until the daemon gives its free pages back, a few seconds after a wave of
/// connections is over; then it is within about 2 MiB of its baseline (measured; a session's
/// buffers shrink when it goes idle and are freed with it). A leak of what a connection costs
/// (several KiB) over the three rounds' thousands of connections exceeds this, and so does a
/// daemon that keeps its free memory.
const RSS_MARGIN_KIB: u64 = 4 * 1024;

/// How many times [`rounds`] repeats an abuse.
const ROUNDS: usize = 3;

/// How many descriptors above its baseline the daemon may keep (a thread or a file opened
/// lazily on first use).
const FD_MARGIN: usize = 4;

/// A daemon whose configuration file says `config`, its directory open to other users.
fn daemon(pool: &str, config: &str) -> (Daemon, tempfile::TempDir) {
    daemon_with(pool, config, &[])
}

/// [`daemon`] with more command-line arguments.
fn daemon_with(pool: &str, config: &str, extra: &[&str]) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, config).unwrap();
    let mut args = vec!["--config", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let d = Daemon::start_with(pool, &args);
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    (d, dir)
}

/// The daemon's open descriptors and resident memory (KiB).
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    (fds, rss)
}

/// Waits, with a deadline, until the daemon has at most `fds` (+ [`FD_MARGIN`]) descriptors
/// open and at most `rss` KiB resident.
fn back_to(d: &Daemon, fds: usize, rss: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = usage(d.pid());
        if now.0 <= fds + FD_MARGIN && now.1 <= rss {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon's descriptors and resident memory did not come back: {} descriptors, {} KiB; expected at most {} and {rss} KiB",
            now.0,
            now.1,
            fds + FD_MARGIN
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `abuse` [`ROUNDS`] times (it is given the daemon's baseline descriptor count); after
/// each round the daemon's descriptors must come back to the baseline taken before the first,
/// and its resident memory within [`RSS_MARGIN_KIB`] of it.
fn rounds(d: &Daemon, mut abuse: impl FnMut(usize)) {
    let (fds, rss) = warmed_up(d);
    for _ in 0..ROUNDS {
        abuse(fds);
        back_to(d, fds, rss + RSS_MARGIN_KIB);
    }
}

/// Runs `body` on a thread whose user is `uid` (only that thread's credentials change).
fn as_user<T: Send + 'static>(uid: u32, body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid))
            .expect("setuid on this thread (the tests run as root)");
        body()
    })
    .join()
    .unwrap()
}

/// One response on a blocking connection; panics if none comes within [`DEADLINE`].
fn read_one(conn: &mut UnixStream) -> Response {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)
        .unwrap_or_else(|e| panic!("no answer within {DEADLINE:?}: {e}"));
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut payload).unwrap();
    responses(&raw_frame(&payload)).remove(0)
}

fn ask(conn: &mut UnixStream, request: Request) -> Response {
    conn.write_all(&frame(request)).unwrap();
    read_one(conn)
}

/// A connection that said hello and got an answer: the welcome, or the error it is returned
/// with.
fn greet(socket: &Path) -> (UnixStream, Response) {
    let mut conn = UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    // A refused connection is answered at once and closed: the answer is there to read even
    // when the hello can no longer be written.
    match conn.write_all(&frame(Request::Hello(Hello::current("abuser")))) {
        Ok(()) => {}
        Err(e) if e.kind() == IoErrorKind::BrokenPipe => {}
        Err(e) => panic!("writing the hello: {e}"),
    }
    let answer = read_one(&mut conn);
    (conn, answer)
}

fn welcomed(socket: &Path) -> UnixStream {
    let (conn, answer) = greet(socket);
    assert!(matches!(answer, Response::Welcome(_)), "{answer:?}");
    conn
}

/// Root's holder: a library client with a reservation that must survive every abuse.
struct Holder {
    client: berth::blocking::Client,
    held: berth::blocking::Reservation,
}

impl Holder {
    fn new(d: &Daemon) -> Holder {
        let client = berth::blocking::Client::connect_to(d.socket()).unwrap();
        let held = client.acquire(berth::Protocol::Tcp, 0, 1).unwrap();
        Holder { client, held }
    }

    /// Still holding its reservation, and served: a new block is granted, a socket bound
    /// from it through the daemon, the block released, the status answered.
    fn is_fine(&self) {
        let list = self.client.list().unwrap();
        assert!(
            list.iter().any(|r| r.token == self.held.token()),
            "the holder's reservation is gone: {list:?}"
        );
        assert!(!self.held.is_lost());
        let extra = self.client.acquire(berth::Protocol::Tcp, 0, 1).unwrap();
        let listener = extra.tcp_listener("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(listener.local_addr().unwrap().port(), extra.start());
        drop(listener);
        extra.release().unwrap();
        self.client.status().unwrap();
    }

    /// Binds a socket through its reservation, and releases it.
    fn finish(self) {
        self.is_fine();
        let listener = self
            .held
            .tcp_listener("127.0.0.1".parse().unwrap())
            .unwrap();
        assert_eq!(listener.local_addr().unwrap().port(), self.held.start());
        drop(listener);
        self.held.release().unwrap();
    }
}

/// The well-behaved client of another user (nobody) is served: `berth run --listen` acquires
/// a held port, binds it through the daemon, hands it to its command and releases it when the
/// command ends; `berth status` is answered.
fn nobody_is_served(d: &Daemon) {
    let out = Berth::wrapped_in(d.socket(), NOBODY)
        .args([
            "run",
            "--listen",
            "--tcp",
            "1",
            "--",
            "sh",
            "-c",
            "echo $PORT",
        ])
        .output()
        .code(0);
    let port: u16 = out.stdout.trim().parse().unwrap();
    assert!(port > 0);
    Berth::wrapped_in(d.socket(), NOBODY)
        .args(["status", "--json"])
        .output()
        .code(0);
}

/// The baseline: taken once the daemon has served each kind of client once.
fn warmed_up(d: &Daemon) -> (usize, u64) {
    nobody_is_served(d);
    drop(welcomed(d.socket()));
    usage(d.pid())
}

#[test]
fn a_thousand_idle_connections_of_several_users_are_held_or_told_busy() {
    if !needs::users() {
        return;
    }
    const PER_USER: usize = 250;
    let (d, _config) = daemon(
        "25160-25179",
        &format!("max_connections_per_uid = {PER_USER}\n"),
    );
    let holder = Holder::new(&d);
    rounds(&d, |base_fds| {
        // 1,000 connections that say hello and then nothing, 250 by each of four users.
        let mut idle: Vec<UnixStream> = Vec::new();
        for uid in 10_001..=10_004 {
            let socket = d.socket().to_owned();
            idle.extend(as_user(uid, move || {
                (0..PER_USER).map(|_| welcomed(&socket)).collect::<Vec<_>>()
            }));
        }
        // One more of a user at its limit is told "busy", not left waiting.
        let socket = d.socket().to_owned();
        let (_refused, answer) = as_user(10_001, move || greet(&socket));
        match &answer {
            Response::Error(e) => match &e.detail {
                ErrorDetail::Busy(b) => {
                    assert_eq!(b.limit, DaemonLimit::Connections, "{e:?}");
                    assert_eq!(b.max, PER_USER as u64, "{e:?}");
                    assert_eq!(b.in_use, PER_USER as u64, "{e:?}");
                }
                other => panic!("not busy: {other:?} ({e:?})"),
            },
            other => panic!("not busy: {other:?}"),
        }

        // Everybody else is served meanwhile, and the idle ones are still there.
        nobody_is_served(&d);
        holder.is_fine();
        let status = holder.client.status().unwrap();
        assert!(status.sessions >= 1001, "{status:?}");
        let (fds, _) = usage(d.pid());
        assert!(fds >= base_fds + 1000, "{fds} descriptors");
        drop(idle);
    });
    nobody_is_served(&d);
    holder.finish();
}

/// Users who fill every connection place they may have leave administrators the places kept
/// for them (a sixteenth of `max_connections`): root connects, is served, and is told busy only
/// once the daemon is full.
#[test]
fn administrators_keep_places_when_other_users_fill_the_daemon() {
    if !needs::users() {
        return;
    }
    // 32 places, 2 kept for administrators: users together may have 30.
    let (d, _config) = daemon(
        "25250-25259",
        "max_connections = 32\nmax_connections_per_uid = 10\n",
    );
    let holder = Holder::new(&d);
    let mut idle: Vec<UnixStream> = Vec::new();
    for uid in 10_011..=10_013 {
        let socket = d.socket().to_owned();
        idle.extend(as_user(uid, move || {
            (0..10).map(|_| welcomed(&socket)).collect::<Vec<_>>()
        }));
    }
    // A fourth user finds the users' places taken: busy, naming the limit.
    let socket = d.socket().to_owned();
    let (_refused, answer) = as_user(10_014, move || greet(&socket));
    let Response::Error(e) = &answer else {
        panic!("not busy: {answer:?}")
    };
    let ErrorDetail::Busy(busy) = &e.detail else {
        panic!("not busy: {e:?}")
    };
    assert_eq!(
        (busy.limit, busy.max),
        (DaemonLimit::Connections, 30),
        "{e:?}"
    );
    assert!(e.message.contains("kept for administrators"), "{e:?}");
    // Root still gets in — the holder has one place, a new connection takes the other — and
    // is served; the next one finds the daemon full.
    holder.is_fine();
    let mut root = welcomed(d.socket());
    let status = ask(&mut root, Request::Status);
    assert!(matches!(status, Response::Status(_)), "{status:?}");
    let (_full, answer) = greet(d.socket());
    assert!(
        matches!(&answer, Response::Error(e) if matches!(e.detail, ErrorDetail::Busy(_))),
        "{answer:?}"
    );
    drop(idle);
    holder.finish();
}

#[test]
fn connections_stalled_mid_frame_and_a_client_that_never_reads_stall_nobody() {
    if !needs::users() {
        return;
    }
    let (d, _config) = daemon("25180-25189", "");
    let holder = Holder::new(&d);
    rounds(&d, |_| {
        // 100 connections stalled in the middle of a frame: half a length prefix, or a length
        // and part of a body; before the hello, or after it.
        let whole = frame(Request::Hello(Hello::current(&"x".repeat(40))));
        let socket = d.socket().to_owned();
        let stalled = as_user(10_005, move || {
            (0..100)
                .map(|i| {
                    let mut conn = if i % 2 == 0 {
                        UnixStream::connect(&socket).unwrap()
                    } else {
                        welcomed(&socket)
                    };
                    let part = if i % 4 < 2 { 2 } else { whole.len() - 3 };
                    conn.write_all(&whole[..part]).unwrap();
                    conn
                })
                .collect::<Vec<_>>()
        });

        // A client that floods requests and reads no answer, until the daemon stops reading it
        // (its answers fill the socket; it closes the client after the write timeout).
        let socket = d.socket().to_owned();
        let flooder = as_user(10_006, move || welcomed(&socket));
        flooder.set_nonblocking(true).unwrap();
        let status = frame(Request::Status);
        let mut written = 0usize;
        let mut flooded = false;
        for _ in 0..1_000_000 {
            match (&flooder).write(&status) {
                Ok(n) => written += n,
                Err(e) if e.kind() == IoErrorKind::WouldBlock => {
                    flooded = true;
                    break;
                }
                Err(e) => panic!("flooding: {e}"),
            }
        }
        assert!(
            flooded,
            "the daemon read {written} bytes of requests and never stopped"
        );

        nobody_is_served(&d);
        holder.is_fine();
        drop(stalled);
        drop(flooder);
    });
    nobody_is_served(&d);
    holder.finish();
}

#[test]
fn thousands_of_connections_opened_and_dropped_leave_nothing_behind() {
    if !needs::users() {
        return;
    }
    let (d, _config) = daemon("25190-25199", "");
    let holder = Holder::new(&d);
    rounds(&d, |_| {
        // 4 threads of 800: close at once; after the hello; after a request, unread;
        // mid-frame. Two of them as users of their own.
        let churners: Vec<_> = (0..4u32)
            .map(|t| {
                let socket = d.socket().to_owned();
                std::thread::spawn(move || {
                    if t % 2 == 1 {
                        let uid = rustix::process::Uid::from_raw(10_007 + t);
                        rustix::thread::set_thread_uid(uid).unwrap();
                    }
                    let hello = frame(Request::Hello(Hello::current("churn")));
                    for i in 0..800 {
                        let mut conn = UnixStream::connect(&socket).unwrap();
                        let _ = match i % 4 {
                            0 => Ok(()),
                            1 => conn.write_all(&hello),
                            2 => conn
                                .write_all(&hello)
                                .and_then(|()| conn.write_all(&frame(Request::Status))),
                            _ => conn.write_all(&hello[..hello.len() / 2]),
                        };
                    }
                })
            })
            .collect();
        // Served while the churn goes on.
        nobody_is_served(&d);
        holder.is_fine();
        for c in churners {
            c.join().unwrap();
        }
    });
    nobody_is_served(&d);
    holder.finish();
}

/// Descriptors of every odd kind, sent with an associate; the socket of another network
/// namespace made the way `ns` says.
fn odd_descriptors(dir: &Path, ns: Namespaces) -> Vec<(&'static str, OwnedFd, &'static str)> {
    let (r, w) = rustix::pipe::pipe().unwrap();
    let fifo: PathBuf = dir.join("fifo");
    if !fifo.exists() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }
    let fifo = rustix::fs::open(
        &fifo,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let directory = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let epoll = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).unwrap();
    let (unix, _peer) = UnixStream::pair().unwrap();
    let foreign = ns
        .socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
        )
        .expect("a socket of another network namespace (the test made one before)");
    vec![
        ("a pipe's read end", r, "not a socket"),
        ("a pipe's write end", w, "not a socket"),
        ("a FIFO", fifo, "not a socket"),
        ("a directory", directory, "not a socket"),
        ("an epoll instance", epoll, "not a socket"),
        (
            "a Unix socket",
            OwnedFd::from(unix),
            "not an IPv4 or IPv6 socket",
        ),
        (
            "a socket of another network namespace",
            foreign,
            "network namespace",
        ),
    ]
}

#[test]
fn descriptors_of_odd_kinds_sent_with_associate_are_refused_and_closed() {
    if !needs::users() {
        return;
    }
    let Some(ns) = needs::namespaces() else {
        return;
    };
    // Whether a socket of another namespace can be made here, once, before the rounds.
    if ns
        .socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
        )
        .is_none()
    {
        return;
    }
    let (d, config) = daemon("25200-25209", "");
    let holder = Holder::new(&d);
    let mut owner = welcomed(d.socket());
    let Response::Acquired(granted) = ask(
        &mut owner,
        Request::Acquire {
            protocol: Protocol::Tcp,
            start: 0,
            count: 1,
        },
    ) else {
        panic!("acquire failed")
    };
    let associate = frame(Request::Associate {
        token: granted.token.get(),
        address: None,
    });
    rounds(&d, |_| {
        for round in 0..20 {
            for (what, fd, says) in odd_descriptors(config.path(), ns) {
                send_with_fds(&owner, &associate, &[fd.as_fd()]);
                drop(fd);
                match read_one(&mut owner) {
                    Response::Error(e) => {
                        assert_eq!(e.kind, ErrorKind::NotSupported, "{what}: {e:?}");
                        assert!(e.message.contains(says), "{what}: {e:?}");
                    }
                    other => panic!("{what} (round {round}) was not refused: {other:?}"),
                }
            }
        }
        nobody_is_served(&d);
        holder.is_fine();
    });

    // The session that sent them is served on: a TCP socket binds.
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    send_with_fds(&owner, &associate, &[socket.as_fd()]);
    match read_one(&mut owner) {
        Response::Associated { port } => assert_eq!(port, granted.range.start()),
        other => panic!("{other:?}"),
    }
    holder.finish();
}

#[test]
fn a_user_that_drains_the_pool_to_its_quota_leaves_the_rest_to_others() {
    if !needs::users() {
        return;
    }
    let (d, _config) = daemon(
        "25210-25229",
        "[quota]\nmax_reservations = 6\nmax_ports = 12\n",
    );
    let holder = Holder::new(&d);
    rounds(&d, |_| {
        // One user takes blocks of 2 until the daemon says no.
        let socket = d.socket().to_owned();
        let (greedy, granted, refusal) = as_user(10_011, move || {
            let mut conn = welcomed(&socket);
            let mut granted: Vec<ReservationInfo> = Vec::new();
            loop {
                let answer = ask(
                    &mut conn,
                    Request::Acquire {
                        protocol: Protocol::Tcp,
                        start: 0,
                        count: 2,
                    },
                );
                match answer {
                    Response::Acquired(info) => granted.push(info),
                    other => return (conn, granted, other),
                }
                assert!(granted.len() <= 10, "no quota applied");
            }
        });
        assert_eq!(granted.len(), 6, "{granted:?}");
        match &refusal {
            Response::Error(e) => {
                assert_eq!(e.kind, ErrorKind::QuotaExceeded, "{e:?}");
                assert!(matches!(e.detail, ErrorDetail::Quota(_)), "{e:?}");
            }
            other => panic!("{other:?}"),
        }
        // The rest of the pool is everybody else's.
        nobody_is_served(&d);
        holder.is_fine();
        let list = holder.client.list().unwrap();
        let theirs = list
            .iter()
            .filter(|r| granted.iter().any(|g| g.token == r.token))
            .count();
        assert_eq!(theirs, 6, "{list:?}");

        // The greedy user leaves: its blocks are freed.
        drop(greedy);
        let deadline = Instant::now() + DEADLINE;
        while holder.client.list().unwrap().len() > 1 {
            assert!(Instant::now() < deadline, "the greedy user's blocks stayed");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    holder.finish();
}

#[test]
fn users_together_keep_to_their_share_of_the_ephemeral_range() {
    if !needs::users() {
        return;
    }
    // The last 400 ports of the host's ephemeral range, of which users without administrator
    // rights may hold 1 % of the range together (282 ports of Linux's default range).
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let bounds: Vec<u32> = range
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let (lo, hi) = (bounds[0], bounds[1]);
    let share = (hi - lo + 1) / 100;
    assert!(
        (50..400).contains(&share),
        "an ephemeral range of {range:?}"
    );
    let pool = format!("{}-{hi}", hi - 399);
    let (d, _config) = daemon(&pool, "[quota]\nephemeral_share = 1\n");
    let holder = Holder::new(&d);
    // Three users take blocks of 25 in turn until the daemon says no: together, never more
    // than the share.
    let mut users: Vec<(u32, UnixStream)> = (10_021..10_024)
        .map(|uid| {
            let socket = d.socket().to_owned();
            (uid, as_user(uid, move || welcomed(&socket)))
        })
        .collect();
    let mut granted = 0u32;
    let refusal = 'asking: loop {
        for (_, conn) in &mut users {
            let answer = ask(
                conn,
                Request::Acquire {
                    protocol: Protocol::Tcp,
                    start: 0,
                    count: 25,
                },
            );
            match answer {
                Response::Acquired(_) => granted += 25,
                other => break 'asking other,
            }
            assert!(
                granted <= share,
                "{granted} ports granted over a share of {share}"
            );
        }
    };
    assert_eq!(granted, share / 25 * 25, "the share was not used up");
    let Response::Error(e) = &refusal else {
        panic!("{refusal:?}")
    };
    assert_eq!(e.kind, ErrorKind::QuotaExceeded, "{e:?}");
    assert!(e.message.contains("ephemeral_share = 1"), "{}", e.message);
    let ErrorDetail::Quota(q) = &e.detail else {
        panic!("{e:?}")
    };
    assert_eq!(
        (q.what, q.limit, q.used),
        (berth_protocol::QuotaWhat::EphemeralShare, share, granted)
    );
    // Administrators are not held to it, and status shows it.
    let extra = holder
        .client
        .acquire(berth::Protocol::Tcp, 0, 60)
        .expect("an administrator is not held to the share");
    let status = holder.client.status().unwrap();
    let shown = status.ephemeral_share.expect("the share in status");
    assert_eq!(
        (shown.max_ports, shown.used, shown.percent),
        (share, granted, 1)
    );
    assert!(
        status.users.len() >= 4,
        "every user's use: {:?}",
        status.users
    );
    drop(extra);
    drop(users);
    holder.finish();
}

/// Whether this kernel lets a socket refuse descriptors (`SO_PASSRIGHTS`, Linux 6.16).
fn kernel_refuses_descriptors() -> bool {
    let (a, _b) = UnixStream::pair().unwrap();
    matches!(berth_os::rights::pass_rights(&a, false), Ok(true))
}

#[test]
fn descriptors_sent_to_the_side_doors_never_stall_anyone() {
    if !needs::users() {
        return;
    }
    // The portserver endpoint and the authority beacon take no descriptors: a user who sends
    // sockets whose close blocks (SO_LINGER, unsent data) to either is refused by the kernel
    // (SO_PASSRIGHTS), or — on a kernel that cannot refuse them — has them closed on its own
    // closer threads; either way root and other users are served meanwhile.
    let me = std::process::id();
    let portserver = format!("berth-adv-ps-{me}");
    let beacon = format!("berth-adv-beacon-{me}");
    let (d, _config) = daemon_with(
        "25240-25249",
        "",
        &[
            "--portserver",
            &format!("@{portserver}"),
            "--authority",
            &beacon,
        ],
    );
    let holder = Holder::new(&d);
    let refuses = kernel_refuses_descriptors();
    for door in [portserver, beacon] {
        let kept = as_user(10_031, move || {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(door.as_bytes()).unwrap();
            let mut kept = Vec::new();
            for _ in 0..8 {
                let (lingering, peer) =
                    berth_testkit::raw::lingering_socket(Duration::from_secs(20));
                let conn = UnixStream::connect_addr(&addr).unwrap();
                let fds = [lingering.as_fd()];
                let mut space =
                    [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
                assert!(cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
                let sent = rustix::net::sendmsg(
                    &conn,
                    &[std::io::IoSlice::new(format!("{me}\n").as_bytes())],
                    &mut cmsg,
                    rustix::net::SendFlags::NOSIGNAL,
                );
                if refuses {
                    // Refused; or the daemon had answered and closed already (the beacon).
                    assert!(
                        matches!(sent, Err(rustix::io::Errno::PERM | rustix::io::Errno::PIPE)),
                        "{door}: a descriptor got in ({sent:?})"
                    );
                }
                if sent.is_err() {
                    // Not sent: this copy is the last, and the test's own close must not wait.
                    rustix::net::sockopt::set_socket_linger(&lingering, None).unwrap();
                }
                // If the daemon got it, its copy is now the last one.
                drop(lingering);
                kept.push((conn, peer));
            }
            kept
        });
        holder.is_fine();
        nobody_is_served(&d);
        drop(kept);
    }
    holder.finish();
}

#[test]
fn three_hundred_parallel_berth_runs_of_one_user_are_all_served() {
    // A test runner's worker pool: 300 `berth run` of one user at once, more than the user's
    // 256 connections. Each gives its connection back once its command owns the port, and a
    // client told "busy" at a connection limit tries again: every one is served.
    if !needs::users() {
        return;
    }
    const RUNS: usize = 300;
    let (d, _config) = daemon("25500-25999", "");
    let mut runs: Vec<support::Proc> = (0..RUNS)
        .map(|_| {
            Berth::wrapped_in(d.socket(), NOBODY)
                .args(["run", "--tcp", "1", "--", "sh", "-c", "echo $PORT; read x"])
                .spawn()
        })
        .collect();
    let mut ports: Vec<u16> = runs
        .iter_mut()
        .map(|run| run.next_line().parse().unwrap())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), RUNS, "two commands were given one port");
    // All 300 live at once, each owned by its command, not by a connection.
    let list = d.list();
    assert_eq!(list.len(), RUNS, "{list:?}");
    let status = d.status();
    assert!(
        status["sessions"].as_u64().unwrap() < 256,
        "the runs keep their connections: {status}"
    );
    for mut run in runs {
        run.send_line("x");
        run.wait().code(0);
    }
}
