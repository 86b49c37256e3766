//! The portserver endpoint, in process and with raw bytes: what a portpicker client sends, and
//! everything a hostile or broken one might. Every wait has a deadline; nothing sleeps.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;
use std::time::Duration;

use berth_core::{Kind, Protocol};
use berth_daemon::portserver::{Address, Endpoint};
use berth_protocol::{Request, ReservationInfo, Response};
use berth_testkit::raw::{frame, raw_frame, responses, shaken_hands};
use berth_testkit::{eventually, TestDaemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A name of this test's own, so that tests running side by side never share an endpoint.
fn unique(test: &str) -> String {
    format!("berth-test-ps-{}-{test}", std::process::id())
}

async fn daemon(lo: u16, hi: u16, name: &str, adjust: impl FnOnce(&mut Endpoint)) -> TestDaemon {
    let d = TestDaemon::with_config(lo, hi, |config| {
        let mut endpoint = Endpoint::new(Address::Abstract(name.to_owned()));
        adjust(&mut endpoint);
        config.portserver = Some(endpoint);
    });
    ready(&d).await;
    d
}

/// Waits until `d` answers on its main socket: its endpoint is bound before that.
async fn ready(d: &TestDaemon) {
    drop(shaken_hands(&d.socket, "portserver-test").await);
}

async fn connect(name: &str) -> UnixStream {
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let std = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    std.set_nonblocking(true).unwrap();
    UnixStream::from_std(std).unwrap()
}

/// Sends `request` and returns everything the daemon wrote before closing (empty: refused).
async fn ask(name: &str, request: &[u8]) -> String {
    let mut stream = connect(name).await;
    // The daemon may close before taking every byte of an over-long request.
    let _ = stream.write_all(request).await;
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut UnixStream) -> String {
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut reply))
        .await
        .expect("the daemon closes the connection");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    String::from_utf8(reply).unwrap()
}

async fn port_for(name: &str, pid: u32) -> u16 {
    let reply = ask(name, format!("{pid}\n").as_bytes()).await;
    let port = reply.strip_suffix('\n').and_then(|p| p.parse().ok());
    port.unwrap_or_else(|| panic!("a port for pid {pid}, got {reply:?}"))
}

/// `request`'s answer on the daemon's main socket.
async fn ask_daemon(daemon: &TestDaemon, request: Request) -> Option<Response> {
    let mut stream = shaken_hands(&daemon.socket, "portserver-test").await;
    stream.write_all(&frame(request)).await.unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).await.unwrap();
    responses(&raw_frame(&payload)).pop()
}

async fn list(daemon: &TestDaemon) -> Vec<ReservationInfo> {
    match ask_daemon(daemon, Request::List).await {
        Some(Response::List(rows)) => rows,
        other => panic!("a list, got {other:?}"),
    }
}

async fn status(daemon: &TestDaemon) -> berth_protocol::StatusInfo {
    match ask_daemon(daemon, Request::Status).await {
        Some(Response::Status(info)) => info,
        other => panic!("a status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_one_number_reserved_in_tcp_and_udp_for_the_process() {
    let name = unique("serve");
    let d = daemon(13100, 13199, &name, |_| {}).await;
    let me = std::process::id();
    let port = port_for(&name, me).await;
    assert!((13100..=13199).contains(&port), "{port}");
    let rows = list(&d).await;
    let mut seen: Vec<_> = rows
        .iter()
        .map(|r| {
            let owner = r.owner.as_ref().expect("an owner");
            assert_eq!(owner.pid, me);
            assert_eq!((r.kind, r.held, r.range.count()), (Kind::Runtime, false, 1));
            (r.protocol, r.range.start())
        })
        .collect();
    seen.sort();
    assert_eq!(seen, vec![(Protocol::Tcp, port), (Protocol::Udp, port)]);
    // Not held: the client binds the number itself, in both protocols.
    let _tcp = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let _udp = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    // The next answer is another number.
    assert_ne!(port_for(&name, me).await, port);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_of_the_same_user_may_be_named_and_its_port_returns_when_it_exits() {
    let name = unique("named");
    let d = daemon(13200, 13299, &name, |_| {}).await;
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = child.id();
    let port = port_for(&name, pid).await;
    let rows = list(&d).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| r.owner.as_ref().map(|o| o.pid) == Some(pid) && r.range.start() == port));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        eventually(10_000, || async { list(&d).await.is_empty() }).await,
        "the port of pid {pid} comes back once it exits"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_close_without_a_reply_and_others_are_still_served() {
    let name = unique("refuse");
    let d = daemon(13300, 13399, &name, |_| {}).await;
    let long = "1".repeat(64);
    for bad in [
        &b"1\n"[..],
        b"0\n",
        b"-4\n",
        b"99999999\n", // beyond any pid_max: no such process
        b"hello\n",
        b"\n",
        b"\xff\xfe\n",
        long.as_bytes(),
    ] {
        assert_eq!(
            ask(&name, bad).await,
            "",
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // A client that connects and leaves at once costs nothing either.
    for _ in 0..100 {
        drop(connect(&name).await);
    }
    assert!(list(&d).await.is_empty());
    port_for(&name, std::process::id()).await;
    d.shutdown().await;
}

/// A request in pieces, the last one sent only after a round trip on the main socket (most
/// requests are there when the connection is accepted and are answered without waiting; this
/// one is waited for), is answered like a whole one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_arrives_in_pieces_is_answered() {
    let name = unique("pieces");
    let d = daemon(13600, 13699, &name, |_| {}).await;
    let me = std::process::id().to_string();
    let (head, tail) = me.split_at(me.len() / 2);
    let mut stream = connect(&name).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    assert!(
        list(&d).await.is_empty(),
        "nothing granted for half a request"
    );
    stream
        .write_all(format!("{tail}\n").as_bytes())
        .await
        .unwrap();
    let reply = read_to_close(&mut stream).await;
    let port: u16 = reply
        .trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("{reply:?}"));
    assert!((13600..=13699).contains(&port), "{port}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_are_dropped_at_their_deadline_and_cannot_starve_the_endpoint() {
    let name = unique("silent");
    let d = daemon(13400, 13449, &name, |e| {
        e.max_connections = 2;
        e.io_timeout = Duration::from_millis(300);
    })
    .await;
    // Two silent peers take every place; they are dropped at their deadline (closed without a
    // reply), and then the endpoint serves again.
    let mut silent = [connect(&name).await, connect(&name).await];
    for s in &mut silent {
        assert_eq!(read_to_close(s).await, "");
    }
    port_for(&name, std::process::id()).await;
    d.shutdown().await;
}

/// A stop closes the connections that have sent no request (nothing is reserved for them)
/// rather than waiting out their deadline: silent clients — another user's, say — never delay
/// the daemon's stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_silent_connections_at_once() {
    let name = unique("stop-silent");
    let d = daemon(13700, 13719, &name, |e| {
        // Far beyond the deadline below: a stop that waited for it would miss that.
        e.io_timeout = Duration::from_secs(600);
    })
    .await;
    let mut silent = [connect(&name).await, connect(&name).await];
    // Answered while the silent ones wait: they are taken in (not queued behind).
    port_for(&name, std::process::id()).await;
    tokio::time::timeout(Duration::from_secs(60), d.shutdown())
        .await
        .expect("the daemon stops without waiting for silent connections");
    for s in &mut silent {
        assert_eq!(read_to_close(s).await, "", "closed without a reply");
    }
}

/// As on the main socket, a sixteenth of the endpoint's places is kept for administrators:
/// other users filling every place they may take never lock root out of the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_keep_places_when_other_users_fill_the_endpoint() {
    if !berth_testkit::needs::other_users_available() {
        berth_testkit::needs::skip(
            berth_testkit::needs::Need::Users,
            "needs root, to connect from threads running as other users",
        );
        return;
    }
    let name = unique("admin-places");
    // 32 places, 2 kept for administrators: users together may have 30.
    let d = daemon(13720, 13739, &name, |e| {
        e.max_connections = 32;
        e.io_timeout = Duration::from_secs(600);
    })
    .await;
    // 31 silent connections of four users (10, 10, 10 and 1): exactly one finds no place.
    let mut silent = Vec::new();
    for (uid, count) in [(10_021, 10), (10_022, 10), (10_023, 10), (10_024, 1)] {
        let name = name.clone();
        silent.extend(
            std::thread::spawn(move || {
                rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid))
                    .expect("setuid on this thread (root)");
                let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
                (0..count)
                    .map(|_| std::os::unix::net::UnixStream::connect_addr(&addr).unwrap())
                    .collect::<Vec<_>>()
            })
            .join()
            .unwrap(),
        );
    }
    let closed = |conns: &[std::os::unix::net::UnixStream]| {
        conns
            .iter()
            .filter(|c| {
                c.set_nonblocking(true).unwrap();
                let mut byte = [0u8; 1];
                match std::io::Read::read(&mut &**c, &mut byte) {
                    Ok(0) => true,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    Ok(_) => panic!("a silent connection was answered"),
                }
            })
            .count()
    };
    assert!(
        eventually(10_000, || std::future::ready(closed(&silent) == 1)).await,
        "{} of 31 users' connections refused, with 30 places for them",
        closed(&silent)
    );
    // Root is served from the places kept.
    port_for(&name, std::process::id()).await;
    assert_eq!(closed(&silent), 1);
    drop(silent);
    d.shutdown().await;
}

/// `berth status` says where the endpoint answers and how many requests it answered and
/// refused — or, when another process held its address first (an optional endpoint then
/// serves nothing), which process portpicker clients reach instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_endpoint_and_the_process_holding_its_address() {
    let name = unique("status");
    let d = daemon(13740, 13749, &name, |_| {}).await;
    let served = status(&d).await.portserver.expect("an endpoint");
    assert_eq!(served.address, format!("@{name}"));
    assert_eq!(served.not_served_because, "");
    assert_eq!((served.answered, served.refused), (0, 0));
    // Two answers and a refusal (not a pid): counted since start-up.
    let me = std::process::id();
    port_for(&name, me).await;
    port_for(&name, me).await;
    assert_eq!(ask(&name, b"not a pid\n").await, "");
    let counted = status(&d).await.portserver.expect("an endpoint");
    assert_eq!((counted.answered, counted.refused), (2, 1), "{counted:?}");
    d.shutdown().await;

    // Another listener holds the address first (here, this process).
    let taken = unique("status-taken");
    let addr = SocketAddr::from_abstract_name(taken.as_bytes()).unwrap();
    let squatter = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let d = daemon(13740, 13749, &taken, |e| e.optional = true).await;
    let info = status(&d).await.portserver.expect("an endpoint");
    assert_eq!(info.address, format!("@{taken}"));
    assert!(
        info.not_served_because.contains(&format!("pid {me} (uid ")),
        "{info:?}"
    );
    d.shutdown().await;
    drop(squatter);
}

/// With every place taken, one more connection is refused at once (closed without a reply, the
/// protocol's refusal) rather than left waiting — whichever of the connections made together
/// the endpoint's threads admit last. (Rarely, a thread that accepted a connection is
/// preempted before it takes a place while the other thread answers and frees one: then all
/// three are served, never more than two at a time, and the round is tried again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_the_endpoints_places_is_refused_at_once() {
    let name = unique("places");
    let d = daemon(13450, 13499, &name, |e| {
        e.max_connections = 2;
        // Far beyond the test: a connection admitted is never dropped at its deadline here.
        e.io_timeout = Duration::from_secs(120);
    })
    .await;
    let me = format!("{}", std::process::id());
    // Each round takes at most three of the 50 ports, kept while this process runs.
    let mut refused_in_a_round = false;
    for _ in 0..15 {
        // Two peers send all but the request's end, and hold their places while they wait.
        let mut partial = [connect(&name).await, connect(&name).await];
        for p in &mut partial {
            // One the endpoint refused at once may be closed already.
            let _ = p.write_all(me.as_bytes()).await;
        }
        // A third, whole, request.
        let mut replies = vec![ask(&name, format!("{me}\n").as_bytes()).await];
        for mut p in partial {
            // A refused peer's connection is closed already: its end may not be taken.
            let _ = p.write_all(b"\n").await;
            replies.push(read_to_close(&mut p).await);
        }
        for reply in replies.iter().filter(|r| !r.is_empty()) {
            assert!(
                reply
                    .strip_suffix('\n')
                    .is_some_and(|p| p.parse::<u16>().is_ok()),
                "a port, got {reply:?}"
            );
        }
        let refused = replies.iter().filter(|r| r.is_empty()).count();
        assert!(refused <= 1, "two places, three connections: {replies:?}");
        if refused == 1 {
            refused_in_a_round = true;
            break;
        }
    }
    assert!(
        refused_in_a_round,
        "a connection beyond the places was never refused"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_address_is_a_world_connectable_socket_file_removed_at_shutdown() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portserver.sock");
    let at = path.clone();
    let d = TestDaemon::with_config(13500, 13599, move |config| {
        config.portserver = Some(Endpoint::new(Address::Path(at)));
    });
    ready(&d).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666);
    let mut stream = UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(format!("{}\n", std::process::id()).as_bytes())
        .await
        .unwrap();
    let reply = read_to_close(&mut stream).await;
    assert!(
        reply.ends_with('\n') && reply.trim().parse::<u16>().is_ok(),
        "{reply:?}"
    );
    d.shutdown().await;
    assert!(!path.exists(), "the socket file is removed at shutdown");
}

/// A grant the daemon cannot record (its database and runtime journal failing) is refused —
/// closed without a reply — and undone in both protocols: nothing stays reserved for the asker,
/// and the refusal is counted. Once the store works again, the same request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_cannot_be_recorded_is_undone_in_both_protocols() {
    let name = unique("unrecorded");
    let d = daemon(13780, 13789, &name, |_| {}).await;
    let me = std::process::id();
    d.fail_store(true);
    assert_eq!(ask(&name, format!("{me}\n").as_bytes()).await, "");
    assert!(list(&d).await.is_empty(), "{:?}", list(&d).await);
    let counted = status(&d).await.portserver.expect("an endpoint");
    assert_eq!((counted.answered, counted.refused), (0, 1), "{counted:?}");
    d.fail_store(false);
    let port = port_for(&name, me).await;
    let mut seen: Vec<_> = list(&d)
        .await
        .iter()
        .map(|r| (r.protocol, r.range.start()))
        .collect();
    seen.sort();
    assert_eq!(seen, vec![(Protocol::Tcp, port), (Protocol::Udp, port)]);
    d.shutdown().await;
}
