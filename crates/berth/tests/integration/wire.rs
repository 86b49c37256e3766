//! The protocol with raw bytes: malformed, oversized, unknown and out-of-order frames get an
//! error reply and a closed connection, while the daemon and other clients carry on.

use crate::common;

use berth::{Client, ErrorKind, Protocol};
use berth_protocol::{FrameCodec, Hello, Request, Response, MAGIC, PROTOCOL_VERSION};
use berth_testkit::raw::{assert_error, frame, raw_frame, read_until_closed, shaken_hands};
use berth_testkit::TestDaemon;
use bytes::BytesMut;
use common::{bystander, bystander_is_fine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Encoder;

#[tokio::test]
async fn a_malformed_frame_gets_an_error_and_a_close() {
    let daemon = TestDaemon::start(13000, 13099);
    let (client, held) = bystander(&daemon).await;
    let mut stream = shaken_hands(&daemon.socket, "raw").await;
    stream
        .write_all(&raw_frame(&[0xff, 0xff, 0xff]))
        .await
        .unwrap();
    let replies = read_until_closed(&mut stream).await;
    assert_error(&replies, ErrorKind::InvalidArgument, "malformed");
    bystander_is_fine(&client, &held).await;
}

#[tokio::test]
async fn an_unknown_request_gets_an_error_and_a_close() {
    let daemon = TestDaemon::start(13100, 13199);
    let (client, held) = bystander(&daemon).await;
    let mut stream = shaken_hands(&daemon.socket, "raw").await;
    stream.write_all(&raw_frame(&[200, 0])).await.unwrap();
    let replies = read_until_closed(&mut stream).await;
    assert_error(&replies, ErrorKind::InvalidArgument, "unknown");
    bystander_is_fine(&client, &held).await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused_from_its_header() {
    let daemon = TestDaemon::start(13200, 13299);
    let (client, held) = bystander(&daemon).await;
    let mut stream = shaken_hands(&daemon.socket, "raw").await;
    // Announce 1 GiB and send only the header: the daemon must not wait for the body.
    stream.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    let replies = read_until_closed(&mut stream).await;
    assert_error(&replies, ErrorKind::InvalidArgument, "exceeds the limit");
    bystander_is_fine(&client, &held).await;
}

#[tokio::test]
async fn a_request_before_the_hello_is_incompatible() {
    let daemon = TestDaemon::start(13300, 13399);
    let mut stream = UnixStream::connect(&daemon.socket).await.unwrap();
    stream.write_all(&frame(Request::List)).await.unwrap();
    let replies = read_until_closed(&mut stream).await;
    assert_error(&replies, ErrorKind::Incompatible, "Hello");
}

#[tokio::test]
async fn a_client_from_the_future_is_incompatible() {
    let daemon = TestDaemon::start(13400, 13499);
    let mut stream = UnixStream::connect(&daemon.socket).await.unwrap();
    let hello = Hello {
        magic: MAGIC,
        min_version: PROTOCOL_VERSION + 1,
        max_version: PROTOCOL_VERSION + 9,
        client: "future".into(),
    };
    stream
        .write_all(&frame(Request::Hello(hello)))
        .await
        .unwrap();
    let replies = read_until_closed(&mut stream).await;
    assert_error(&replies, ErrorKind::Incompatible, "upgrade");
    assert_eq!(ErrorKind::Incompatible.errno(), 71);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let daemon = TestDaemon::start(13500, 13599);
    let mut stream = shaken_hands(&daemon.socket, "raw").await;
    let mut bytes = Vec::new();
    bytes.extend(frame(Request::Acquire {
        protocol: Protocol::Udp,
        start: 23000,
        count: 2,
    }));
    bytes.extend(frame(Request::Acquire {
        protocol: Protocol::Udp,
        start: 23001,
        count: 1,
    }));
    bytes.extend(frame(Request::Status));
    stream.write_all(&bytes).await.unwrap();
    stream.shutdown().await.unwrap(); // end of requests; the daemon answers, then closes
    let replies = read_until_closed(&mut stream).await;
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert!(matches!(&replies[0], Response::Acquired(r) if r.range.start() == 23000));
    assert!(matches!(&replies[1], Response::Error(e) if e.kind == ErrorKind::Conflict));
    assert!(matches!(&replies[2], Response::Status(s) if s.reservations == 1));
}

#[tokio::test]
async fn a_daemon_speaking_another_version_is_refused_by_the_client() {
    // A fake daemon that answers every hello with a version this client does not know.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).await.unwrap();
        let mut out = BytesMut::new();
        FrameCodec::<Request, Response>::daemon()
            .encode(
                Response::Welcome(berth_protocol::Welcome {
                    version: PROTOCOL_VERSION + 7,
                    daemon_version: "9.9.9".into(),
                    daemon_pid: 1,
                }),
                &mut out,
            )
            .unwrap();
        s.write_all(&out).await.unwrap();
    });
    let err = Client::connect_to(&path).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible);
    assert!(err.to_string().contains("does not speak"), "{err}");
}
