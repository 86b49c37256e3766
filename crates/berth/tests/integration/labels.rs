//! Labels and bounded wildcards through the library: a label is shown wherever the owner is
//! and kept across a daemon restart; `within` bounds are searched in place of the pool, for
//! one protocol and for both, and their refusals say what is wrong in words and in numbers.

use berth::{AcquireOptions, Client, Error, Protocol};
use berth_protocol::{ErrorDetail, FrameCodec, Request, Response};
use berth_testkit::raw::{frame, shaken_hands};
use berth_testkit::TestDaemon;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

#[tokio::test]
async fn a_label_is_listed_explained_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let first = TestDaemon::with_db(&db, 12200, 12209, |_| {});
    let client = Client::connect_to(&first.socket).await.unwrap();
    let options = AcquireOptions::default().label("tests::login");
    let block = client
        .acquire_with(Protocol::Tcp, 0, 2, &options)
        .await
        .unwrap();
    assert_eq!(block.label(), Some("tests::login"));
    let listed = client.list().await.unwrap();
    let row = listed.iter().find(|r| r.token == block.token()).unwrap();
    assert_eq!(row.label.as_deref(), Some("tests::login"));
    let why = client.why(Protocol::Tcp, block.start()).await.unwrap();
    assert_eq!(
        why.reservation.and_then(|r| r.label).as_deref(),
        Some("tests::login")
    );
    // An unlabelled one has none.
    let plain = client.acquire_unheld(Protocol::Udp, 0, 1).await.unwrap();
    assert_eq!(plain.label(), None);
    first.shutdown().await;

    // The next daemon restores it from the journal, label and all.
    let second = TestDaemon::with_db(&db, 12200, 12209, |_| {});
    let watcher = Client::connect_to(&second.socket).await.unwrap();
    let listed = watcher.list().await.unwrap();
    let row = listed.iter().find(|r| r.token == block.token());
    assert_eq!(
        row.and_then(|r| r.label.as_deref()),
        Some("tests::login"),
        "{listed:?}"
    );
    drop((block, plain, client));
    second.shutdown().await;
}

#[tokio::test]
async fn bounded_wildcards_take_blocks_inside_their_bounds_only() {
    let daemon = TestDaemon::start(12300, 12309);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let within = AcquireOptions::held().within(12500, 12503);
    let a = client
        .acquire_with(Protocol::Tcp, 0, 2, &within)
        .await
        .unwrap();
    let b = client
        .acquire_with(Protocol::Tcp, 0, 2, &within)
        .await
        .unwrap();
    assert_eq!((a.start(), b.start()), (12500, 12502));
    let full = client
        .acquire_with(Protocol::Tcp, 0, 1, &within)
        .await
        .unwrap_err();
    assert!(
        matches!(&full, Error::PoolExhausted(m) if m.contains("within 12500-12503")),
        "{full:?}"
    );
    // The pool is untouched: its first block is still free.
    let pooled = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();
    assert_eq!(pooled.start(), 12300);

    // Both protocols at once, inside the bounds, skipping a number taken in either.
    let udp = client
        .acquire_with(
            Protocol::Udp,
            0,
            1,
            &AcquireOptions::default().within(12600, 12609),
        )
        .await
        .unwrap();
    assert_eq!(udp.start(), 12600);
    let (tcp2, udp2) = client
        .acquire_same_ports_with(0, 1, &AcquireOptions::default().within(12600, 12609))
        .await
        .unwrap();
    assert_eq!((tcp2.start(), udp2.start()), (12601, 12601));
    daemon.shutdown().await;
}

#[tokio::test]
async fn bad_bounds_and_labels_are_invalid_arguments() {
    let daemon = TestDaemon::start(12310, 12319);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let cases = [
        (
            0,
            AcquireOptions::default().within(12400, 12300),
            "ends before it starts",
        ),
        (
            12400,
            AcquireOptions::default().within(12400, 12410),
            "cannot be combined",
        ),
        (
            0,
            AcquireOptions::default().within(12400, 12400),
            "do not fit",
        ),
        (
            0,
            AcquireOptions::default().label("a\tb"),
            "control characters",
        ),
        (
            0,
            AcquireOptions::default().label("job\u{feff}"),
            "invisible characters",
        ),
        (
            0,
            AcquireOptions::default().label("é".repeat(65)),
            "at most 128 bytes",
        ),
        // Over what the daemon reads in one request: refused before it is sent, and the
        // connection serves the next request (below).
        (
            0,
            AcquireOptions::default().label("x".repeat(70_000)),
            "over the 65536 bytes the berth daemon reads in one request",
        ),
    ];
    for (start, options, says) in cases {
        let err = client
            .acquire_with(Protocol::Tcp, start, 2, &options)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains(says)),
            "{options:?}: {err:?}"
        );
    }
    assert!(client.list().await.unwrap().is_empty());
    daemon.shutdown().await;
}

#[tokio::test]
async fn full_bounds_are_named_in_the_refusals_detail() {
    let daemon = TestDaemon::start(12320, 12329);
    let mut stream = shaken_hands(&daemon.socket, "raw").await;
    let ask = |start: u16| Request::AcquireWith {
        protocol: Protocol::Tcp,
        start,
        count: 2,
        options: AcquireOptions::default().within(12700, 12701),
    };
    let mut answers = Vec::new();
    let (mut codec, mut buf) = (FrameCodec::<Response, Request>::client(), BytesMut::new());
    for request in [ask(0), ask(0)] {
        stream.write_all(&frame(request)).await.unwrap();
        let answer = loop {
            if let Some(response) = codec.decode(&mut buf).unwrap() {
                break response;
            }
            assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
        };
        answers.push(answer);
    }
    assert!(matches!(answers[0], Response::Acquired(_)), "{answers:?}");
    let Response::Error(e) = &answers[1] else {
        panic!("granted twice: {answers:?}");
    };
    let ErrorDetail::Pool(pool) = &e.detail else {
        panic!("no pool detail: {e:?}");
    };
    assert_eq!(pool.within, Some((12700, 12701)));
    assert!(!pool.fragmented);
    daemon.shutdown().await;
}
