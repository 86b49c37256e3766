//! Per-user quotas: a user at its quota is refused with quota-exceeded naming the limit and
//! its use, other users are not affected, and administrators are exempt. The test runs as root
//! (an administrator); a second process running as nobody speaks the protocol by hand. As an
//! ordinary user it is reported skipped (`berth_testkit::needs`).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use berth::{Client, Protocol};
use berth_core::Quota;
use berth_protocol::{ErrorDetail, ErrorKind, QuotaInfo, QuotaWhat, Response};
use berth_testkit::deadline::{output_within, DEADLINE};
use berth_testkit::needs::{self, AS_NOBODY, PYTHON3};
use berth_testkit::raw::{response_from_hex, PY_PRELUDE};
use berth_testkit::TestDaemon;

/// As nobody: one connection, `Acquire { tcp, 0, count }` for each count given, the answers'
/// payloads printed as hex, one per line.
const ACQUIRE_AS_NOBODY: &str = r#"
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
hello(conn, b"quota-test")
for count in sys.argv[2:]:
    conn.sendall(frame(bytes([1, 0, 0]) + varint(int(count))))
    print(answer(conn).hex())
conn.sendall(frame(bytes([4])))  # Status
print(answer(conn).hex())
"#;

fn acquire_as_nobody(socket: &std::path::Path, counts: &[u16]) -> Vec<Response> {
    let out = output_within(
        Command::new(AS_NOBODY[0])
            .args(&AS_NOBODY[1..])
            .args([PYTHON3, "-c"])
            .arg(format!("{PY_PRELUDE}{ACQUIRE_AS_NOBODY}"))
            .arg(socket)
            .args(counts.iter().map(u16::to_string)),
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(response_from_hex)
        .collect()
}

// Blocking child processes below: the daemon needs worker threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_at_its_quota_is_refused_and_administrators_are_exempt() {
    if !needs::users() || !needs::python3() {
        return;
    }
    let daemon = TestDaemon::with_config(17200, 17299, |c| {
        c.quota = Quota {
            max_reservations: 2,
            max_ports: 3,
            max_held_ports: 3,
        };
    });
    let dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    // 2 ports, then 2 more would make 4 > 3 ports; 1 more fits (3 ports, 2 reservations);
    // a third reservation is over the reservation quota. The last answer is the status.
    let answers = acquire_as_nobody(&daemon.socket, &[2, 2, 1, 1]);
    let Response::Status(status) = &answers[4] else {
        panic!("no status: {answers:?}")
    };
    assert_eq!(
        status.quota,
        Some(QuotaInfo {
            max_reservations: 2,
            max_ports: 3,
            max_held_ports: 3
        }),
        "{status:?}"
    );
    assert_eq!(
        (status.usage.reservations, status.usage.ports),
        (2, 3),
        "{status:?}"
    );
    assert!(matches!(answers[0], Response::Acquired(_)), "{answers:?}");
    let Response::Error(ports) = &answers[1] else {
        panic!("4 ports granted over a quota of 3: {answers:?}");
    };
    assert_eq!(ports.kind, ErrorKind::QuotaExceeded);
    assert!(ports.message.contains("quota of 3"), "{}", ports.message);
    assert!(
        ports.message.contains("max_ports = 3") && ports.message.contains("[quota]"),
        "the refusal names the setting: {}",
        ports.message
    );
    let ErrorDetail::Quota(q) = &ports.detail else {
        panic!("no quota detail: {ports:?}");
    };
    assert_eq!(
        (q.what, q.limit, q.used, q.asked),
        (QuotaWhat::Ports, 3, 2, 2)
    );
    assert!(matches!(answers[2], Response::Acquired(_)), "{answers:?}");
    let Response::Error(count) = &answers[3] else {
        panic!("a third reservation granted over a quota of 2: {answers:?}");
    };
    let ErrorDetail::Quota(q) = &count.detail else {
        panic!("no quota detail: {count:?}");
    };
    assert_eq!((q.what, q.limit, q.used), (QuotaWhat::Reservations, 2, 2));

    // The python client has exited: once the daemon has seen its connection close, its
    // reservations are gone and the quota is free again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let again = acquire_as_nobody(&daemon.socket, &[3]);
        if matches!(again[0], Response::Acquired(_)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "quota still used: {again:?}"
        );
    }

    // Root administers the daemon: no quota (3 reservations of 2 ports each).
    let admin = Client::connect_to(&daemon.socket).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(admin.acquire(Protocol::Tcp, 0, 2).await.unwrap());
    }
    assert_eq!(held.iter().map(|r| r.count()).sum::<u16>(), 6);
    let status = admin.status().await.unwrap();
    assert_eq!(status.quota, None, "administrators have no quota");
    assert_eq!((status.usage.reservations, status.usage.ports), (3, 6));
    // An administrator sees every user's use.
    assert!(
        status
            .users
            .iter()
            .any(|u| u.uid == 0 && u.usage.ports == 6),
        "{:?}",
        status.users
    );
}
