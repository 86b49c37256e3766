//! The blocking client, used from plain threads with the daemon on its own runtime.

use berth::{blocking, ErrorKind, Protocol};

#[test]
fn the_blocking_client_acquires_lists_and_releases() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let daemon = rt.block_on(async { berth_testkit::TestDaemon::start(12100, 12199) });

    let client = blocking::Client::connect_to(&daemon.socket).unwrap();
    let r = client.acquire(Protocol::Udp, 0, 4).unwrap();
    assert!(r.start() >= 12100 && r.end() <= 12199);
    assert_eq!(client.list().unwrap().len(), 1);

    let other = blocking::Client::connect_to(&daemon.socket).unwrap();
    let err = other.acquire(Protocol::Udp, r.start(), 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);

    drop(r); // queues the release on this client's connection, without waiting
             // Requests on one connection are answered in order: the release is done before this list.
    assert!(client.list().unwrap().is_empty());
    assert!(other.list().unwrap().is_empty());

    let s = client.acquire(Protocol::Tcp, 22300, 2).unwrap();
    s.release().unwrap();
    assert!(client.list().unwrap().is_empty());
    assert_eq!(client.status().unwrap().reservations, 0);

    rt.block_on(daemon.shutdown());
}
