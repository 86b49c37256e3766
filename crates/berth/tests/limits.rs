//! `--max-connections`: at the limit, a further client waits in the kernel's backlog, unserved,
//! until a connection closes.
//!
//! On paused tokio time, so that "not served" is not a guess about how long to wait: the clock
//! moves only while the runtime has nothing else to do, in steps of a millisecond (a ticker
//! task keeps a timer due every millisecond), so a daemon that would answer does so long
//! before the test's virtual second is over — and one that may not, never does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use berth_daemon::testing::raw::{frame, raw_frame, responses, shaken_hands};
use berth_daemon::testing::TestDaemon;
use berth_protocol::{Hello, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{sleep, timeout};

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
async fn at_the_connection_limit_a_further_client_is_served_once_another_leaves() {
    let ticker = tokio::spawn(async {
        loop {
            sleep(Duration::from_millis(1)).await;
        }
    });
    let daemon = TestDaemon::with_config(48100, 48199, |c| {
        c.max_connections = 2;
        // Far beyond the test's waits: the waiting client is not dropped for its silence.
        c.handshake_timeout = Duration::from_secs(3600);
    });
    let mut first = shaken_hands(&daemon.socket, "first").await;
    let second = shaken_hands(&daemon.socket, "second").await;

    // The connect succeeds (the kernel queues it), the hello waits.
    let mut third = UnixStream::connect(&daemon.socket).await.unwrap();
    third
        .write_all(&frame(Request::Hello(Hello::current("third"))))
        .await
        .unwrap();
    let early = timeout(Duration::from_secs(1), answer(&mut third)).await;
    assert!(early.is_err(), "served beyond the limit: {early:?}");
    // Those at the limit are served meanwhile.
    first.write_all(&frame(Request::Status)).await.unwrap();
    let status = answer(&mut first).await;
    let Response::Status(status) = status else {
        panic!("{status:?}")
    };
    assert_eq!(status.sessions, 2, "{status:?}");

    // One leaves: the third is welcomed.
    drop(second);
    let welcome = timeout(Duration::from_secs(1), answer(&mut third))
        .await
        .expect("not served after a connection closed");
    assert!(matches!(welcome, Response::Welcome(_)), "{welcome:?}");
    third.write_all(&frame(Request::Status)).await.unwrap();
    assert!(matches!(answer(&mut third).await, Response::Status(_)));
    ticker.abort();
}
