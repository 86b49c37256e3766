//! Refusals carry their numbers as well as their message: programs read the structured
//! detail, never the English.

use berth_core::{Kind, Pool, Protocol};
use berth_protocol::{ErrorDetail, FrameCodec, Request, Response};
use berth_testkit::raw::{frame, shaken_hands};
use berth_testkit::TestDaemon;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Decoder;

/// Sends `request` and returns the one answer.
async fn ask(stream: &mut UnixStream, request: Request) -> Response {
    stream.write_all(&frame(request)).await.unwrap();
    let mut codec = FrameCodec::<Response, Request>::client();
    let mut buf = BytesMut::new();
    loop {
        if let Some(response) = codec.decode(&mut buf).unwrap() {
            return response;
        }
        let n = stream.read_buf(&mut buf).await.unwrap();
        assert!(n > 0, "the daemon closed the connection");
    }
}

fn acquire(start: u16, count: u16) -> Request {
    Request::Acquire {
        protocol: Protocol::Tcp,
        start,
        count,
    }
}

#[tokio::test]
async fn a_conflict_names_the_port_and_the_holder_and_an_empty_pool_its_size() {
    let daemon = TestDaemon::start(13900, 13903);
    let mut first = shaken_hands(&daemon.socket, "first").await;
    let Response::Acquired(held) = ask(&mut first, acquire(13901, 2)).await else {
        panic!("the first acquire failed");
    };

    let mut second = shaken_hands(&daemon.socket, "second").await;
    let Response::Error(conflict) = ask(&mut second, acquire(13900, 3)).await else {
        panic!("an overlapping acquire was granted");
    };
    let ErrorDetail::Ports(ports) = conflict.detail.clone() else {
        panic!("no ports in {conflict:?}");
    };
    assert_eq!(
        (ports.protocol, ports.start, ports.count),
        (Protocol::Tcp, 13900, 3)
    );
    assert_eq!(ports.port, Some(13901));
    let holder = ports.holder.expect("the holder");
    assert_eq!(holder.token, Some(held.token));
    assert_eq!(holder.kind, Some(Kind::Runtime));
    // Same user (the test runs both clients), so the owner is shown.
    assert_eq!(holder.owner.map(|o| o.pid), Some(std::process::id()));

    // 13900 and 13903 are free, but not two in a row: fragmented, not full.
    let Response::Error(exhausted) = ask(&mut second, acquire(0, 2)).await else {
        panic!("a block of 2 was granted from a fragmented pool");
    };
    let ErrorDetail::Pool(pool) = exhausted.detail.clone() else {
        panic!("no pool in {exhausted:?}");
    };
    assert_eq!(pool.pool, Pool::new(13900, 13903).unwrap());
    assert_eq!(pool.count, 2);
    assert!(pool.fragmented, "{exhausted:?}");
    assert!(!pool.privileged_skipped);
    assert!(
        exhausted.message.contains("fragmented"),
        "{}",
        exhausted.message
    );
}
