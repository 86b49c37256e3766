//! `Stop`: administrators stop the daemon gracefully; others are refused.

use std::os::unix::fs::PermissionsExt;

use berth_core::ErrorKind;
use berth_protocol::{Request, Response};
use tokio::io::AsyncWriteExt;

use berth_testkit::needs;
use berth_testkit::raw::{assert_error, frame, read_until_closed, shaken_hands};
use berth_testkit::TestDaemon;

#[tokio::test]
async fn an_administrator_stops_the_daemon() {
    let daemon = TestDaemon::start(17100, 17109);
    // Another client, idle: it is let go when the daemon stops.
    let mut bystander = shaken_hands(&daemon.socket, "bystander").await;
    let mut admin = shaken_hands(&daemon.socket, "stop-test").await;
    admin.write_all(&frame(Request::Stop)).await.unwrap();
    let answers = read_until_closed(&mut admin).await;
    assert_eq!(
        answers,
        vec![Response::Stopping {
            pid: std::process::id()
        }]
    );
    assert_eq!(read_until_closed(&mut bystander).await, vec![]);
    // The daemon's task ends by itself: nothing else asked it to stop.
    daemon.stopped().await;
}

/// As nobody: connect, hello, send `Stop` (variant 10), print the answer.
const STOP_AS_NOBODY: &str = r#"
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
hello(conn, b"nobody-stop")
conn.sendall(frame(bytes([10])))
print(answer(conn).hex())
"#;

// The client is a blocking child process: the daemon needs worker threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anyone_else_is_refused_and_the_daemon_serves_on() {
    if !needs::users() || !needs::python3() {
        return;
    }
    let daemon = TestDaemon::start(17110, 17119);
    let dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = daemon.socket.to_str().unwrap().to_owned();
    let answers = tokio::task::spawn_blocking(move || {
        super::python_client(&needs::AS_NOBODY, STOP_AS_NOBODY, &[&socket])
    })
    .await
    .unwrap();
    assert_error(
        &answers,
        ErrorKind::PermissionDenied,
        "only an administrator",
    );
    assert_error(&answers, ErrorKind::PermissionDenied, "uid 65534");

    let mut admin = shaken_hands(&daemon.socket, "after").await;
    admin.write_all(&frame(Request::Status)).await.unwrap();
    admin.shutdown().await.unwrap();
    let status = read_until_closed(&mut admin).await;
    assert!(
        matches!(status.as_slice(), [Response::Status(_)]),
        "{status:?}"
    );
    daemon.shutdown().await;
}
