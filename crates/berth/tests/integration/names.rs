//! Names through the library: a name gets its block again (across releases and a restart)
//! while other picks pass that block by; it moves, saying so, when something else took it; one
//! live reservation per name, user and protocol; looking a name up and waiting for it (for a
//! bound port too); the user's list of names, and forgetting one.

use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsFd;
use std::time::Duration;

use berth::{AcquireOptions, Client, Error, Protocol};
use berth_testkit::TestDaemon;

fn named(name: &str) -> AcquireOptions {
    AcquireOptions::default().name(name)
}

#[tokio::test]
async fn a_name_gets_its_block_again_and_moves_when_it_was_taken() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let no_cool_down = |c: &mut berth_daemon::Config| c.reuse_cool_down = Duration::ZERO;
    let first = TestDaemon::with_db(&db, 12800, 12802, no_cool_down);
    let client = Client::connect_to(&first.socket).await.unwrap();
    let web = client
        .acquire_with(Protocol::Tcp, 0, 1, &named("shop/web"))
        .await
        .unwrap();
    assert_eq!(
        (web.start(), web.name(), web.moved_from()),
        (12800, Some("shop/web"), None)
    );
    web.release().await.unwrap();

    // Other picks pass the remembered block by while other ports fit.
    let a = client.acquire_unheld(Protocol::Tcp, 0, 1).await.unwrap();
    let b = client.acquire_unheld(Protocol::Tcp, 0, 1).await.unwrap();
    assert_eq!((a.start(), b.start()), (12801, 12802));
    a.release().await.unwrap();
    let c = client.acquire_unheld(Protocol::Tcp, 0, 1).await.unwrap();
    assert_eq!(c.start(), 12801, "the cursor's next port was the name's");
    drop((b, c));

    // The name's block again, after a release.
    let again = client
        .acquire_with(Protocol::Tcp, 0, 1, &named("shop/web"))
        .await
        .unwrap();
    assert_eq!(again.start(), 12800);
    again.release().await.unwrap();
    drop(client);
    first.shutdown().await;

    // And after a restart: the memory is in the database.
    let second = TestDaemon::with_db(&db, 12800, 12802, no_cool_down);
    let client = Client::connect_to(&second.socket).await.unwrap();
    let names = client.names().await.unwrap();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(
        (
            names[0].name.as_str(),
            names[0].range.start(),
            names[0].live
        ),
        ("shop/web", 12800, false)
    );
    let back = client
        .acquire_with(Protocol::Tcp, 0, 1, &named("shop/web"))
        .await
        .unwrap();
    assert_eq!(back.start(), 12800);
    assert!(client.names().await.unwrap()[0].live);
    back.release().await.unwrap();

    // Something else took it meanwhile: the name moves, and says from where.
    let squatter = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 12800)).unwrap();
    let moved = client
        .acquire_with(Protocol::Tcp, 0, 1, &named("shop/web"))
        .await
        .unwrap();
    assert_ne!(moved.start(), 12800);
    assert_eq!(moved.moved_from().map(|r| r.start()), Some(12800));
    assert_eq!(client.names().await.unwrap()[0].range, moved.range());
    drop(squatter);

    // Forgotten: nothing remembered any more.
    let gone = client.forget_name("shop/web").await.unwrap();
    assert_eq!(gone.len(), 1);
    assert!(client.names().await.unwrap().is_empty());
    let err = client.forget_name("shop/web").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    drop(moved);
    second.shutdown().await;
}

#[tokio::test]
async fn a_name_has_one_live_reservation_per_user_and_protocol() {
    let daemon = TestDaemon::start(12850, 12859);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let db = client
        .acquire_with(Protocol::Tcp, 0, 1, &named("ci/db"))
        .await
        .unwrap();
    let err = client
        .acquire_with(Protocol::Tcp, 0, 1, &named("ci/db"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Conflict(m) if m.contains("ci/db") && m.contains(&db.token().to_string())),
        "{err:?}"
    );
    // UDP is another name space; a bad name is an invalid argument.
    let udp_db = client
        .acquire_with(Protocol::Udp, 0, 1, &named("ci/db"))
        .await
        .unwrap();
    assert_eq!(udp_db.name(), Some("ci/db"));
    let err = client
        .acquire_with(Protocol::Tcp, 0, 1, &named("CI/DB"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("e.g. shop/web")),
        "{err:?}"
    );
    // Both protocols at once, for a new name.
    let (tcp, udp) = client
        .acquire_same_ports_with(0, 1, &named("dns"))
        .await
        .unwrap();
    assert_eq!((tcp.name(), udp.name()), (Some("dns"), Some("dns")));
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_name_is_looked_up_and_waited_for() {
    let daemon = TestDaemon::start(12860, 12869);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let err = client.lookup_name(None, "api").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = client
        .wait_name(None, "api", false, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("after waiting")),
        "{err:?}"
    );

    // A waiter on its own connection is answered once the name exists.
    let waiter = Client::connect_to(&daemon.socket).await.unwrap();
    let wait = tokio::spawn(async move {
        waiter
            .wait_name(None, "api", false, Duration::from_secs(30))
            .await
    });
    let api = client
        .acquire_with(Protocol::Tcp, 0, 1, &named("api"))
        .await
        .unwrap();
    let found = wait.await.unwrap().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].token, found[0].name.as_deref()),
        (api.token(), Some("api"))
    );
    let me = rustix::process::getuid().as_raw();
    let by_uid = client.lookup_name(Some(me), "api").await.unwrap();
    assert_eq!(by_uid[0].token, api.token());

    // --bound: answered once a socket is bound to its port, not before.
    let waiter = Client::connect_to(&daemon.socket).await.unwrap();
    let err = waiter
        .wait_name(None, "api", true, Duration::from_millis(150))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("no socket was bound")),
        "{err:?}"
    );
    let wait = tokio::spawn(async move {
        waiter
            .wait_name(None, "api", true, Duration::from_secs(30))
            .await
    });
    let listener = api.tcp_listener(Ipv4Addr::LOCALHOST.into()).await.unwrap();
    let found = wait.await.unwrap().unwrap();
    assert_eq!(found[0].token, api.token());
    drop(listener);
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_port_bound_by_other_means_is_published_under_a_name() {
    let daemon = TestDaemon::start(12870, 12879);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    // Nothing bound there: nothing to publish.
    let err = client
        .publish("dev/api", Protocol::Tcp, 12890)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("no socket is bound")),
        "{err:?}"
    );
    // A server that bound a port of its own choosing publishes it: reserved for this
    // process, found by name.
    let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 12890)).unwrap();
    let published = client
        .publish_socket("dev/api", server.as_fd())
        .await
        .unwrap();
    assert_eq!(
        (published.range.start(), published.name.as_deref()),
        (12890, Some("dev/api"))
    );
    assert_eq!(published.owner.map(|o| o.pid), Some(std::process::id()));
    let found = client.lookup_name(None, "dev/api").await.unwrap();
    assert_eq!(found[0].token, published.token);
    // Bound by its owner: a wait for it bound is answered at once.
    let bound = client
        .wait_name(None, "dev/api", true, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(bound[0].token, published.token);
    // Reserved now: publishing it again, or reserving it, is a conflict.
    let err = client
        .publish("dev/other", Protocol::Tcp, 12890)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Conflict(m) if m.contains("reserved already")),
        "{err:?}"
    );
    let err = client
        .acquire_unheld(Protocol::Tcp, 12890, 1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    // A socket that is no IP socket, or not bound, is refused before asking.
    let unbound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let err = client
        .publish_socket("dev/x", unbound.as_fd())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    drop(server);
    daemon.shutdown().await;
}
