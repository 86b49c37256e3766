//! The daemon's mirrors against the table, as a model test: random requests of one client —
//! grants (held or not, one protocol or both), releases — with the store failing at random
//! points (from the n-th write on, and healing), then a clean restart on the same database.
//! The restarted daemon must hold exactly the reservations the client was told it holds:
//! none lost (a grant answered "ok" is in the journal) and none brought back (a refused grant
//! left nothing; a release the journal missed is not resurrected). Ports 18500-18599.

mod model;

use std::collections::BTreeSet;

use berth::{Client, Protocol, Token};
use berth_testkit::TestDaemon;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        count: u16,
        held: bool,
    },
    AcquireBoth {
        count: u16,
    },
    Release(usize),
    /// The store fails from the n-th write on.
    FailAfter(u32),
    Heal,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u16..4, any::<bool>()).prop_map(|(count, held)| Op::Acquire { count, held }),
        1 => (1u16..3).prop_map(|count| Op::AcquireBoth { count }),
        3 => (0usize..8).prop_map(Op::Release),
        1 => (0u32..3).prop_map(Op::FailAfter),
        1 => Just(Op::Heal),
    ]
}

/// Runs `ops`, restarts, and returns (tokens the client holds, tokens the new daemon lists).
async fn run(ops: Vec<Op>) -> (BTreeSet<Token>, BTreeSet<Token>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let daemon = TestDaemon::with_db(&db, 18500, 18599, |_| {});
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let mut held = Vec::new();
    for op in ops {
        match op {
            Op::Acquire { count, held: hold } => {
                let got = if hold {
                    client.acquire(Protocol::Tcp, 0, count).await
                } else {
                    client.acquire_unheld(Protocol::Udp, 0, count).await
                };
                if let Ok(r) = got {
                    held.push(r);
                }
            }
            Op::AcquireBoth { count } => {
                if let Ok((tcp, udp)) = client.acquire_same_ports(0, count).await {
                    held.push(tcp);
                    held.push(udp);
                }
            }
            Op::Release(i) => {
                if !held.is_empty() {
                    let r = held.remove(i % held.len());
                    // A release cannot be refused, failing store or not.
                    r.release().await.unwrap();
                }
            }
            Op::FailAfter(n) => daemon.fail_store_after(n),
            Op::Heal => daemon.fail_store(false),
        }
    }
    daemon.fail_store(false);
    let expected: BTreeSet<Token> = held.iter().map(berth::Reservation::token).collect();
    // The handles must not release anything while the daemon restarts.
    std::mem::forget(held);
    daemon.shutdown().await;
    let daemon = TestDaemon::with_db(&db, 18500, 18599, |_| {});
    let admin = Client::connect_to(&daemon.socket).await.unwrap();
    let listed = crate::common::tokens(&admin).await.into_iter().collect();
    drop(client);
    daemon.shutdown().await;
    (expected, listed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_journal_holds_exactly_what_the_client_was_told(
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (expected, listed) = rt.block_on(run(ops));
        prop_assert_eq!(expected, listed);
    }
}

/// Every mirror — the kernel's list, the hold sockets, the journal — equals the table after
/// random grants, releases, store and kernel faults, another tool's writes of the list and a
/// restart; and every write made to the list was whole and kept every live entry (see `model`).
#[test]
fn every_mirror_equals_the_table_through_faults_and_other_writers() {
    on_private_netns_thread(model::every_mirror_equals_the_table);
}

/// Kernel sync failing and healing, as a kernel refusing writes would: a grant whose listing
/// fails is undone everywhere (also in kernel sync's own count, which took it before the write
/// failed), and a release whose write failed is repaired once writes work again — the list
/// ends exactly the table's ports.
#[test]
fn the_kernel_list_equals_the_table_after_its_writes_fail() {
    in_private_netns(kernel_faults);
}

/// Another tool's rewrite of the list takes the ports listed ahead out: a grant there is
/// answered only once its port is listed again (the daemon reads the list before answering —
/// here on every grant, its trust in a list it saw set to zero — and writes it back first).
#[test]
fn a_grant_in_the_stripe_after_a_rewrite_is_listed_before_its_answer() {
    in_private_netns(rewrite_under_the_stripe);
}

/// A daemon told to serve a portserver endpoint whose address another process holds refuses
/// to start — having written nothing to the kernel's list (not even the ports it would list
/// ahead of grants) and created no database.
#[test]
fn a_daemon_refused_for_its_portserver_address_changes_nothing() {
    in_private_netns(portserver_address_held);
}

async fn portserver_address_held() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("berth-test-held-{}", std::process::id());
    // Held first, in this (the daemon's) network namespace: abstract names are per namespace.
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let squatter = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (socket, db) = (dir.path().join("s.sock"), dir.path().join("berth.db"));
    let (listener, _guard) = berth_daemon::bind_socket(&socket).unwrap();
    let mut config = berth_daemon::Config::new(
        socket,
        db.clone(),
        berth_core::Pool::new(18800, 18899).unwrap(),
    );
    config.authority = None;
    config.configured_reserved_ports = Vec::new();
    config.kernel_sync = berth_daemon::KernelSync::On;
    config.listed_ahead = 8;
    config.portserver = Some(berth_daemon::portserver::Endpoint::new(
        berth_daemon::portserver::Address::Abstract(name.clone()),
    ));
    let refused = berth_daemon::run(listener, config, std::future::pending())
        .await
        .expect_err("the address is held");
    assert_eq!(refused.kind(), std::io::ErrorKind::AddrInUse);
    let me = std::process::id();
    assert!(
        refused.to_string().contains(&format!("pid {me} ")),
        "{refused}"
    );
    assert!(listed().is_empty(), "listed {:?}", listed());
    assert!(!db.exists(), "a database was created");
    drop(squatter);
}

/// Runs `body` on a thread of this process that entered a private network namespace (so does
/// every thread the daemon starts from it), whose list is its own. Root only: an ordinary
/// user's namespaces are made by a child process, and the daemon here must be a thread of this
/// one (skipped with the reason otherwise).
fn in_private_netns<F: std::future::Future<Output = ()> + 'static>(body: fn() -> F) {
    on_private_netns_thread(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body());
    });
}

/// Runs `body` on a thread of this process that entered a private network namespace (see
/// [`in_private_netns`]); skipped with the reason unless root.
fn on_private_netns_thread(body: impl FnOnce() + Send + 'static) {
    match berth_testkit::namespaces::Namespaces::here() {
        Some(berth_testkit::namespaces::Namespaces::Root) => {}
        _ => {
            berth_testkit::needs::skip(
                berth_testkit::needs::Need::Users,
                "needs root, to put a thread of this process in a private network namespace",
            );
            return;
        }
    }
    std::thread::spawn(move || {
        berth_os::netns::enter_new_on_this_thread().expect("unshare(CLONE_NEWNET), as root");
        // The daemon's threads start from this one and share its namespace; never the host's.
        let ns = |path| std::fs::read_link(path).expect("read a netns link");
        assert_ne!(
            ns("/proc/thread-self/ns/net"),
            ns("/proc/self/ns/net"),
            "this thread is still in the process's (the host's) network namespace"
        );
        body();
    })
    .join()
    .expect("the test's thread");
}

async fn rewrite_under_the_stripe() {
    let daemon = TestDaemon::with_config(18700, 18799, |c| {
        c.kernel_sync = berth_daemon::KernelSync::On;
        c.listed_ahead = 8;
        c.listed_ahead_trust = std::time::Duration::ZERO;
    });
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let stripe: BTreeSet<u16> = (18700..=18707).collect();
    // Listed at start-up (the reconcile's write is made before the daemon serves).
    assert_eq!(listed(), stripe);
    let first = client.acquire_unheld(Protocol::Tcp, 0, 1).await.unwrap();
    assert!(stripe.contains(&first.start()), "{}", first.start());
    // Another tool rewrites the list without berth's entries.
    std::fs::write("/proc/sys/net/ipv4/ip_local_reserved_ports", "\n").unwrap();
    let second = client.acquire_unheld(Protocol::Tcp, 0, 1).await.unwrap();
    assert!(stripe.contains(&second.start()), "{}", second.start());
    let now = listed();
    assert!(
        now.contains(&second.start()) && now.contains(&first.start()),
        "answered with the list {now:?}"
    );
    drop((first, second));
    drop(client);
    daemon.shutdown().await;
}

/// The list, read on this thread (in the private namespace) — in one `read(2)`: the kernel
/// makes the text anew for each read, so a value read in pieces while the daemon writes can be
/// torn (the first piece of one list, the rest of another).
fn listed() -> BTreeSet<u16> {
    use std::io::Read;
    let mut file = std::fs::File::open("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let n = file.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    let set = berth_core::PortSet::parse(&text).unwrap();
    (1..=65535u16).filter(|p| set.contains(*p)).collect()
}

async fn kernel_faults() {
    let daemon = TestDaemon::with_config(18600, 18699, |c| {
        c.kernel_sync = berth_daemon::KernelSync::On;
        // Every grant and release writes (none is inside ports listed ahead).
        c.listed_ahead = 0;
    });
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    assert!(listed().is_empty());

    // A grant whose listing fails is refused and undone.
    daemon.fail_kernel(true);
    let refused = client
        .acquire_unheld(Protocol::Tcp, 0, 3)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), berth::ErrorKind::Unavailable, "{refused}");
    daemon.fail_kernel(false);
    let kept = client.acquire_unheld(Protocol::Tcp, 0, 2).await.unwrap();
    let ports = |r: &berth::Reservation| -> BTreeSet<u16> { r.ports().collect() };
    assert_eq!(listed(), ports(&kept), "only the granted block is listed");

    // A release whose write fails still releases; the list is repaired once writes work.
    let gone = client.acquire_unheld(Protocol::Udp, 0, 2).await.unwrap();
    daemon.fail_kernel(true);
    gone.release().await.unwrap();
    daemon.fail_kernel(false);
    let deadline = std::time::Instant::now() + berth_testkit::deadline::DEADLINE;
    while listed() != ports(&kept) {
        assert!(
            std::time::Instant::now() < deadline,
            "the list stays {:?}, not the table's {:?}",
            listed(),
            ports(&kept)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    kept.release().await.unwrap();
    drop(client);
    daemon.shutdown().await;
    assert!(
        listed().is_empty(),
        "a clean stop with no live owner restores the list"
    );
}
