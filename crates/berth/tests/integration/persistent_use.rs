//! Who may bind sockets from a persistent reservation: administrators and the users and
//! groups it was created for. The test runs as root (an administrator); a second
//! process running as nobody speaks the protocol by hand. As an ordinary user it is reported
//! skipped (`berth_testkit::needs`).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use berth::{Allow, Client, ErrorKind, Protocol};
use berth_protocol::Response;
use berth_testkit::deadline::{output_within, DEADLINE};
use berth_testkit::needs::{self, AS_NOBODY, PYTHON3};
use berth_testkit::raw::{response_from_hex, PY_PRELUDE};
use berth_testkit::TestDaemon;

const NOBODY: u32 = 65534;

/// As nobody: connect, send `Associate { token }` with a fresh TCP socket, print the answer's
/// payload as hex.
const ASSOCIATE_AS_NOBODY: &str = r#"
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
hello(conn, b"nobody-test")
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
socket.send_fds(conn, [frame(bytes([5]) + varint(int(sys.argv[2])) + bytes([0]))], [s.fileno()])
print(answer(conn).hex())
"#;

fn associate_as_nobody(socket: &std::path::Path, token: u64) -> Response {
    let out = output_within(
        Command::new(AS_NOBODY[0])
            .args(&AS_NOBODY[1..])
            .args([PYTHON3, "-c"])
            .arg(format!("{PY_PRELUDE}{ASSOCIATE_AS_NOBODY}"))
            .arg(socket)
            .arg(token.to_string()),
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    response_from_hex(String::from_utf8(out.stdout).unwrap().trim())
}

// Blocking child processes below: the daemon needs worker threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_users_and_groups_bind_from_a_persistent_reservation_and_nobody_else() {
    if !needs::users() || !needs::python3() {
        return;
    }
    let daemon = TestDaemon::start(17000, 17099);
    let dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let admin = Client::connect_to(&daemon.socket).await.unwrap();

    let for_nobody = admin
        .create_persistent(
            Protocol::Tcp,
            27000,
            2,
            &Allow {
                users: vec![NOBODY],
                groups: Vec::new(),
            },
        )
        .await
        .unwrap();
    let for_group = admin
        .create_persistent(
            Protocol::Tcp,
            27010,
            1,
            &Allow {
                users: Vec::new(),
                groups: vec![NOBODY],
            },
        )
        .await
        .unwrap();
    let for_nobody_else = admin
        .create_persistent(Protocol::Tcp, 27020, 1, &Allow::default())
        .await
        .unwrap();

    let daemon_socket = daemon.socket.clone();
    let answers = tokio::task::spawn_blocking(move || {
        [for_nobody.token, for_group.token, for_nobody_else.token]
            .map(|t| associate_as_nobody(&daemon_socket, t.get()))
    })
    .await
    .unwrap();
    match &answers[0] {
        Response::Associated { port } => assert!((27000..=27001).contains(port), "{port}"),
        other => panic!("a named user was refused: {other:?}"),
    }
    match &answers[1] {
        Response::Associated { port } => assert_eq!(*port, 27010),
        other => panic!("a member of a named group was refused: {other:?}"),
    }
    match &answers[2] {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::PermissionDenied, "{}", e.message);
            assert!(e.message.contains("persistent"), "{}", e.message);
        }
        other => panic!("an unnamed user could bind: {other:?}"),
    }

    // The administrator may bind from any of them.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let port = admin
        .associate(
            for_nobody_else.token,
            std::os::fd::AsFd::as_fd(&socket),
            None,
        )
        .await
        .unwrap();
    assert_eq!(port, 27020);
}

#[tokio::test]
async fn use_persistent_finds_exactly_a_persistent_reservation_an_administrator_may_use() {
    let daemon = TestDaemon::start(12900, 12909);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let err = client
        .use_persistent(Protocol::Tcp, 12920, 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    let created = client
        .create_persistent(Protocol::Tcp, 12920, 2, &Allow::default())
        .await
        .unwrap();
    // The daemon's own user is its administrator: allowed, and nothing new is reserved.
    let found = client
        .use_persistent(Protocol::Tcp, 12920, 2)
        .await
        .unwrap();
    assert_eq!(found.token, created.token);
    assert_eq!(client.list().await.unwrap().len(), 1);
    // Not exactly its range: no.
    let err = client
        .use_persistent(Protocol::Tcp, 12920, 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    daemon.shutdown().await;
}
