//! A client in another network namespace is refused what grants or uses ports, and still
//! served what only reads.

use std::os::unix::fs::MetadataExt;

use berth_core::ErrorKind;
use berth_protocol::{ErrorDetail, NamespacesDetail, Response};

use berth_testkit::needs;
use berth_testkit::raw::assert_error;
use berth_testkit::TestDaemon;

/// Connect, hello, then `Acquire { tcp, any, 1 }`, `Status`, `List`, printing each answer.
const ACQUIRE_FROM_ELSEWHERE: &str = r#"
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
hello(conn, b"foreign-netns")
for payload in (bytes([1, 0]) + varint(0) + varint(1), bytes([4]), bytes([3])):
    conn.sendall(frame(payload))
    print(answer(conn).hex())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_network_namespace_gets_no_ports() {
    let Some(ns) = needs::namespaces() else {
        return;
    };
    if !needs::python3() {
        return;
    }
    let daemon = TestDaemon::start(17120, 17129);
    let socket = daemon.socket.to_str().unwrap().to_owned();
    let answers = tokio::task::spawn_blocking(move || {
        super::python_client(&ns.unshare(&["--net"]), ACQUIRE_FROM_ELSEWHERE, &[&socket])
    })
    .await
    .unwrap();
    let [acquire, status, list] = answers.as_slice() else {
        panic!("three answers expected: {answers:?}");
    };
    let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_error(
        std::slice::from_ref(acquire),
        ErrorKind::NotSupported,
        &format!("serves network namespace net:[{ours}]"),
    );
    let Response::Error(e) = acquire else {
        unreachable!()
    };
    let ErrorDetail::Namespaces(NamespacesDetail {
        daemon_netns,
        peer_netns,
    }) = e.detail
    else {
        panic!("no namespaces in {e:?}");
    };
    assert_eq!(daemon_netns, ours);
    assert_ne!(peer_netns, ours);
    // Root may read any process's namespace; an ordinary user, its own processes'.
    assert_ne!(peer_netns, 0, "the daemon can read the client's namespace");
    assert!(
        e.message.contains(&format!("net:[{peer_netns}]")),
        "{}",
        e.message
    );
    assert!(matches!(status, Response::Status(_)), "{status:?}");
    assert_eq!(list, &Response::List(vec![]), "and nothing was reserved");
    daemon.shutdown().await;
}
