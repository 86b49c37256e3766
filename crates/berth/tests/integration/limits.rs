//! `--max-connections`: at the limit, a further client is told so — "busy", with the limit —
//! instead of waiting in the kernel's backlog without a word; once a connection closes, a new
//! client is served again.
//!
//! On a frozen paused clock (`berth_testkit::time`): no timer of the daemon's can fire while
//! the test waits, so an answer that arrives was given at once, not when the handshake timeout
//! ran out.

use std::time::Duration;

use berth_protocol::{DaemonLimit, ErrorDetail, ErrorKind, Hello, Request, Response};
use berth_testkit::raw::{frame, raw_frame, responses, shaken_hands};
use berth_testkit::time::{advance, freeze, within_real};
use berth_testkit::TestDaemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Reads one response.
async fn answer(stream: &mut UnixStream) -> Response {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).await.unwrap();
    let mut all = responses(&raw_frame(&payload));
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

#[tokio::test(start_paused = true)]
async fn at_the_connection_limit_a_further_client_is_told_busy_and_served_once_another_leaves() {
    let _frozen = freeze();
    let daemon = TestDaemon::with_config(18100, 18199, |c| {
        c.max_connections = 2;
    });
    let mut first = shaken_hands(&daemon.socket, "first").await;
    let second = shaken_hands(&daemon.socket, "second").await;

    // A third client is answered at once: busy, naming the limit and its use.
    let mut third = UnixStream::connect(&daemon.socket).await.unwrap();
    // Refused at once and closed: the answer is there even if the hello cannot be written.
    let _ = third
        .write_all(&frame(Request::Hello(Hello::current("third"))))
        .await;
    let refusal = within_real("the refusal at the connection limit", answer(&mut third)).await;
    let Response::Error(busy) = refusal else {
        panic!("served beyond the limit: {refusal:?}")
    };
    assert_eq!(busy.kind, ErrorKind::Unavailable);
    assert!(busy.message.contains("max_connections"), "{}", busy.message);
    let ErrorDetail::Busy(detail) = &busy.detail else {
        panic!("no busy detail: {busy:?}")
    };
    assert_eq!(
        (detail.limit, detail.max, detail.in_use),
        (DaemonLimit::Connections, 2, 2)
    );
    // Those at the limit are served meanwhile.
    first.write_all(&frame(Request::Status)).await.unwrap();
    let status = answer(&mut first).await;
    let Response::Status(status) = status else {
        panic!("{status:?}")
    };
    assert_eq!(status.sessions, 2, "{status:?}");

    // One leaves: a new client is welcomed (after the daemon has seen the close).
    drop(second);
    let mut served = false;
    for _ in 0..100 {
        let mut fourth = UnixStream::connect(&daemon.socket).await.unwrap();
        let _ = fourth
            .write_all(&frame(Request::Hello(Hello::current("fourth"))))
            .await;
        if matches!(answer(&mut fourth).await, Response::Welcome(_)) {
            served = true;
            break;
        }
        advance(Duration::from_millis(10)).await;
    }
    assert!(served, "not served after a connection closed");
}
