//! What a client sees when the daemon's database fails (`TestDaemon::fail_store`, as a failing
//! disk would): a change the journal cannot record is undone and refused with `unavailable`,
//! leaving nothing behind; a release, which cannot be refused, still releases.

use berth::{Allow, Client, ErrorKind, Protocol};
use berth_protocol::{Request, Response};
use berth_testkit::raw::{frame, raw_frame, responses, shaken_hands};
use berth_testkit::TestDaemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn an_acquire_the_journal_cannot_record_is_refused_and_leaves_nothing_reserved() {
    let daemon = TestDaemon::start(18000, 18099);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    daemon.fail_store(true);
    for (start, count) in [(18050, 5), (0, 3)] {
        let err = client
            .acquire(Protocol::Tcp, start, count)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(!err.message().is_empty());
    }
    assert_eq!(client.list().await.unwrap(), Vec::new());
    let status = client.status().await.unwrap();
    assert_eq!((status.reservations, status.tcp_ports), (0, 0));

    // The disk works again: the very block refused is free.
    daemon.fail_store(false);
    let r = client.acquire(Protocol::Tcp, 18050, 5).await.unwrap();
    assert_eq!((r.start(), r.count()), (18050, 5));
    let list = client.list().await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].token, r.token());
}

#[tokio::test]
async fn a_release_the_journal_cannot_record_still_releases() {
    let daemon = TestDaemon::start(18000, 18099);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let r = client.acquire(Protocol::Udp, 18060, 2).await.unwrap();
    let kept = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();
    daemon.fail_store(true);
    r.release().await.unwrap();
    let list = client.list().await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].token, kept.token());

    // And so does the end of a session.
    daemon.fail_store(false);
    let mut other = shaken_hands(&daemon.socket, "rollback").await;
    let acquire = Request::Acquire {
        protocol: Protocol::Tcp,
        start: 18070,
        count: 3,
    };
    other.write_all(&frame(acquire)).await.unwrap();
    let mut len = [0u8; 4];
    other.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    other.read_exact(&mut payload).await.unwrap();
    let replies = responses(&raw_frame(&payload));
    let [Response::Acquired(theirs)] = &replies[..] else {
        panic!("{replies:?}")
    };
    let token = theirs.token;
    daemon.fail_store(true);
    drop(other);
    let gone = berth_testkit::eventually(10_000, || async {
        client
            .list()
            .await
            .unwrap()
            .iter()
            .all(|x| x.token != token)
    })
    .await;
    assert!(gone, "{:?}", client.list().await.unwrap());
}

// As an administrator (root, as the tests run in CI).
#[tokio::test]
async fn persistent_changes_the_store_cannot_make_durable_are_refused_and_undone() {
    let daemon = TestDaemon::start(18000, 18099);
    let admin = Client::connect_to(&daemon.socket).await.unwrap();
    let nobody = Allow::default();

    daemon.fail_store(true);
    let err = admin
        .create_persistent(Protocol::Tcp, 27100, 4, &nobody)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(admin.list().await.unwrap(), Vec::new());
    let err = admin
        .lookup_persistent(Protocol::Tcp, 27100, 4)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    daemon.fail_store(false);
    let created = admin
        .create_persistent(Protocol::Tcp, 27100, 4, &nobody)
        .await
        .unwrap();

    daemon.fail_store(true);
    let err = admin
        .delete_persistent(Protocol::Tcp, 27100, 4)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let list = admin.list_persistent().await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].token, created.token);
    assert_eq!(
        admin
            .lookup_persistent(Protocol::Tcp, 27100, 4)
            .await
            .unwrap(),
        created.token
    );
    // Still reserved: a runtime acquire of its ports is a conflict.
    let err = admin.acquire(Protocol::Tcp, 27101, 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");

    daemon.fail_store(false);
    admin
        .delete_persistent(Protocol::Tcp, 27100, 4)
        .await
        .unwrap();
    assert_eq!(admin.list().await.unwrap(), Vec::new());
}

/// The same ports in TCP and UDP stand or fall together: their two journal records are one
/// write, and when it fails both halves are undone — nothing is left reserved for a request
/// that was refused. A write before it (another client's grant) is kept.
#[tokio::test]
async fn a_pair_whose_journal_write_fails_is_undone_whole() {
    let daemon = TestDaemon::start(18300, 18399);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    daemon.fail_store_after(1);
    let first = client.acquire_same_ports(0, 1).await.unwrap();
    let err = client.acquire_same_ports(0, 2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    daemon.fail_store(false);
    let tokens = crate::common::tokens(&client).await;
    assert_eq!(tokens.len(), 2, "only the first pair: {tokens:?}");
    let status = client.status().await.unwrap();
    assert_eq!((status.tcp_ports, status.udp_ports), (1, 1));
    drop(first);
}

/// A release whose journal removal failed (the disk failed, then works again) is brought in
/// step before the daemon stops: the next daemon on the same database does not bring the
/// reservation back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_the_journal_missed_does_not_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let daemon = TestDaemon::with_db(&db, 18200, 18299, |_| {});
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let released = client.acquire(Protocol::Tcp, 18210, 2).await.unwrap();
    let kept = client.acquire(Protocol::Tcp, 18220, 1).await.unwrap();
    let kept_token = kept.token();
    daemon.fail_store(true);
    released.release().await.unwrap();
    daemon.fail_store(false);
    // The client is dropped first: the daemon's stop does not wait for it; the session's end
    // releases `kept` unless the restart keeps it for this process.
    std::mem::forget(kept);
    daemon.shutdown().await;

    let daemon = TestDaemon::with_db(&db, 18200, 18299, |_| {});
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let tokens = crate::common::tokens(&client).await;
    assert_eq!(
        tokens,
        vec![kept_token],
        "only the reservation still held comes back"
    );
}
