//! Runtime reservations belong to the process, not to the connection: when the owner exits,
//! they go, even while a forked child still holds the inherited connection open.

use std::io::Write;
use std::process::{Command, Stdio};

use berth::Client;
use berth_testkit::deadline::{lines_of, next_line, wait_within, DEADLINE};
use berth_testkit::needs::{self, PYTHON3};
use berth_testkit::raw::PY_PRELUDE;
use berth_testkit::{eventually, TestDaemon};

/// An owner that speaks the protocol by hand, acquires a block, forks a child that keeps the
/// connection (and blocks on stdin), and exits.
const OWNER: &str = r#"
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
hello(conn, b"fork-test")
conn.sendall(frame(bytes([1, 0]) + varint(int(sys.argv[2])) + varint(3)))  # Acquire tcp P+3
assert answer(conn)[0] == 2, "not acquired"
# One write(2) per line: parent and child share the pipe, and a line must not interleave.
if os.fork() == 0:
    os.write(1, b"child %d\n" % os.getpid())
    sys.stdin.readline()   # keep the inherited connection open until told
    os._exit(0)
os.write(1, b"parent done\n")
"#;

// Blocking reads of the owner's output below: the daemon needs worker threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_child_does_not_keep_a_dead_owners_reservations() {
    if !needs::python3() {
        return;
    }
    let daemon = TestDaemon::start(15600, 15699);
    let watcher = Client::connect_to(&daemon.socket).await.unwrap();
    let mut owner = Command::new(PYTHON3)
        .arg("-c")
        .arg(format!("{PY_PRELUDE}{OWNER}"))
        .arg(&daemon.socket)
        .arg("25000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Held here: `wait` would close it, and the child must keep running.
    let mut stdin = owner.stdin.take().unwrap();
    let lines = lines_of(owner.stdout.take().unwrap());
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(next_line(&lines, DEADLINE, "the owner or its child"));
    }
    assert!(seen.iter().any(|l| l == "parent done"), "{seen:?}");
    assert!(wait_within(&mut owner, DEADLINE, "the owner").success());

    // The owner is gone; its child still holds the connection open.
    let released = eventually(5000, || async {
        watcher
            .list()
            .await
            .unwrap()
            .iter()
            .all(|r| r.range.start() != 25000)
    })
    .await;
    // The child is still alive, holding the connection.
    let child_pid: i32 = seen
        .iter()
        .find_map(|l| l.strip_prefix("child "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{child_pid}")).exists());
    // Let the child go (it shares the stdin pipe).
    let _ = stdin.write_all(b"\n");
    drop(stdin);
    assert!(released, "the dead owner's block is still reserved");
    // And it can be reserved again.
    let _again = watcher
        .acquire(berth::Protocol::Tcp, 25000, 3)
        .await
        .unwrap();
}
