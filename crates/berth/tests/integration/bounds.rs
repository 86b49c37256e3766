//! No client call waits without a bound or a message: a daemon that accepts and never answers
//! the handshake (at its connection limit, or stuck) is reported within
//! [`berth::Options::connect_timeout`], with what to do. Tested on a paused clock.

use std::time::Duration;

use berth::{Client, ErrorKind, Options};

#[tokio::test(start_paused = true)]
async fn a_daemon_that_never_answers_the_handshake_is_reported_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    // Bound and listening, never accepting: connections wait in the kernel's accept queue.
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let options = Options::default().connect_timeout(Duration::from_secs(3));
    let started = tokio::time::Instant::now();
    let err = Client::connect_to_with(&path, options).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let message = err.to_string();
    for needle in [&path.display().to_string(), "3s", "connection limit"] {
        assert!(message.contains(needle), "{needle:?}: {message}");
    }
    // On the paused clock: the bound, not a wall-clock measurement.
    let waited = tokio::time::Instant::now() - started;
    assert_eq!(waited, Duration::from_secs(3));
}
