//! The portserver endpoint end to end: the built `berth daemon --portserver @NAME` and Google's
//! own `portpicker` client in Python processes, as a test suite would use it.
//!
//! The tests need a `python3` that can `import portpicker`; without one each says it is
//! skipped (`berth_testkit::needs`; `.ci/run` installs it and sets
//! `BERTH_TEST_REQUIRE`, so CI fails rather than skips). Each test uses an endpoint name of its
//! own, never the default, since tests run side by side.

use crate::support;

use std::io::Write;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::Receiver;

use berth_testkit::deadline::{output_within, wait_within};
use berth_testkit::needs::{self, Need, AS_NOBODY, PYTHON3};
use support::{lines_of, poll_until, Daemon, DEADLINE};

/// Picks a port with portpicker, binds it in TCP and UDP (both must succeed), prints
/// "PID PORT", then waits for a line on stdin before exiting.
const PICK: &str = r#"
import os, socket, sys, portpicker
port = portpicker.pick_unused_port()
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM); t.bind(("127.0.0.1", port))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", port))
print(os.getpid(), port, flush=True)
sys.stdin.readline()
"#;

/// Asks the endpoint at argv[1] for argv[2] (a pid, or "self" for its own) with raw bytes and
/// prints the reply's repr: `''` when refused.
const RAW: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("\0" + sys.argv[1][1:])
pid = str(os.getpid()) if sys.argv[2] == "self" else sys.argv[2]
s.sendall(pid.encode() + b"\n")
try:
    reply = s.recv(64).decode()
except ConnectionResetError:  # closed with part of an over-long request unread
    reply = ""
print(repr(reply), flush=True)
"#;

fn name(test: &str) -> String {
    format!("@berth-test-ps-{}-{test}", std::process::id())
}

/// A python child running `script`, its stdout read line by line.
struct Py {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Py {
    fn spawn(mut cmd: Command) -> Py {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        Py {
            stdin: child.stdin.take(),
            lines: lines_of(stdout),
            child,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("no line from python within {DEADLINE:?}: {e:?}"))
            .trim_end()
            .to_owned()
    }

    /// "PID PORT" as printed by [`PICK`].
    fn picked(&self) -> (u32, u16) {
        let line = self.line();
        let mut words = line.split_whitespace().map(|w| w.parse::<u32>().unwrap());
        let (pid, port) = (words.next().unwrap(), words.next().unwrap());
        (pid, u16::try_from(port).unwrap())
    }

    fn finish(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        let status = wait_within(&mut self.child, DEADLINE, "the portpicker client");
        assert!(status.success(), "python exited with {status}");
    }
}

fn daemon(pool: &str, address: &str) -> Daemon {
    Daemon::start_with(pool, &["--portserver", address])
}

/// Waits until nothing is listed.
fn all_released(d: &Daemon) {
    poll_until("every portserver reservation released", || {
        d.list().is_empty().then_some(())
    });
}

#[test]
fn twenty_parallel_portpicker_clients_get_distinct_ports_free_in_tcp_and_udp() {
    let Some(py) = needs::portpicker() else {
        return;
    };
    let address = name("parallel");
    let d = daemon("44000-44099", &address);
    let clients: Vec<Py> = (0..20)
        .map(|_| {
            let mut cmd = Command::new(py);
            cmd.args(["-c", PICK]).env("PORTSERVER_ADDRESS", &address);
            Py::spawn(cmd)
        })
        .collect();
    let picked: Vec<(u32, u16)> = clients.iter().map(Py::picked).collect();
    let mut ports: Vec<u16> = picked.iter().map(|&(_, p)| p).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 20, "distinct ports: {picked:?}");
    // Every port came from berth (not portpicker's own fallback), in both protocols, owned by
    // the process that asked.
    let list = d.list();
    assert_eq!(list.len(), 40, "{list:?}");
    for (pid, port) in &picked {
        for proto in ["tcp", "udp"] {
            let row = list
                .iter()
                .find(|r| r["protocol"] == proto && r["start"] == *port)
                .unwrap_or_else(|| panic!("{proto} {port} listed: {list:?}"));
            assert_eq!(row["owner"]["pid"], *pid);
            assert_eq!(row["kind"], "runtime");
            assert_eq!(row["count"], 1);
        }
    }
    for c in clients {
        c.finish();
    }
    all_released(&d);
}

#[test]
fn refusals_close_without_a_reply_and_the_next_client_is_served() {
    let Some(py) = needs::portpicker() else {
        return;
    };
    let address = name("refuse");
    let d = daemon("44100-44199", &address);
    let raw = |pid: &str| {
        let out = output_within(
            Command::new(PYTHON3).args(["-c", RAW, &address, pid]),
            DEADLINE,
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    for refused in ["1", "0", "99999999", "garbage", &"7".repeat(40)] {
        assert_eq!(raw(refused), "''", "{refused}");
    }
    // Another user's process, named by nobody: refused. Nobody's own pid: served.
    let nobody = |pid: &str| {
        let out = output_within(
            Command::new(AS_NOBODY[0])
                .args(&AS_NOBODY[1..])
                .args([PYTHON3, "-c", RAW, &address, pid]),
            DEADLINE,
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    if needs::other_users_available() {
        assert_eq!(nobody(&d.pid().to_string()), "''");
        let reply = nobody("self");
        assert!(
            reply.ends_with("\\n'"),
            "nobody is served its own pid: {reply}"
        );
    } else {
        needs::skip(
            Need::Users,
            "part: another user's process named by nobody is refused (needs root)",
        );
    }
    // Served after all that, through portpicker itself.
    let mut cmd = Command::new(py);
    cmd.args(["-c", PICK]).env("PORTSERVER_ADDRESS", &address);
    let client = Py::spawn(cmd);
    let (pid, port) = client.picked();
    d.owned_by(port, pid);
    client.finish();
    all_released(&d);
}

/// `program` started in a new pid namespace (its init, with `/proc` of its own), as a
/// portpicker client of `address`.
fn in_new_pid_namespace(
    ns: berth_testkit::namespaces::Namespaces,
    program: &[&str],
    address: &str,
) -> Py {
    let unshare = ns.unshare(&["--pid", "--fork", "--mount-proc"]);
    let mut cmd = Command::new(&unshare[0]);
    cmd.args(&unshare[1..])
        .args(program)
        .env("PORTSERVER_ADDRESS", address);
    Py::spawn(cmd)
}

/// The pid, as the daemon sees it, of the owner of the reservation starting at `port` (polled
/// until listed), and its row.
fn owner_of(d: &Daemon, port: u16) -> (u32, serde_json::Value) {
    let row = poll_until("the port listed", || {
        d.list().into_iter().find(|r| r["start"] == port)
    });
    let owner = u32::try_from(row["owner"]["pid"].as_u64().unwrap()).unwrap();
    (owner, row)
}

/// A process that is init (pid 1) of its own pid namespace names itself as 1, which in the
/// daemon's namespace would be init: it is served as itself too, like any peer of another
/// pid namespace.
#[test]
fn the_init_of_a_child_pid_namespace_is_served_as_itself() {
    let Some(py) = needs::portpicker() else {
        return;
    };
    let Some(ns) = needs::namespaces() else {
        return;
    };
    let address = name("pidns-init");
    let d = daemon("44300-44399", &address);
    let client = in_new_pid_namespace(ns, &[py, "-c", PICK], &address);
    let (inner_pid, port) = client.picked();
    assert_eq!(inner_pid, 1, "python is its namespace's init");
    let (owner, row) = owner_of(&d, port);
    assert_ne!(owner, 1, "owned by the peer as the daemon sees it: {row}");
    client.finish();
    all_released(&d);
}

#[test]
fn a_process_in_a_child_pid_namespace_is_served_as_itself_and_released_when_it_exits() {
    let Some(py) = needs::portpicker() else {
        return;
    };
    let Some(ns) = needs::namespaces() else {
        return;
    };
    let address = name("pidns");
    let d = daemon("44200-44299", &address);
    // `sh` is the namespace's init (pid 1); python is pid 2 there, a number that names some
    // unrelated process (or none) in the daemon's namespace.
    let script = format!("{py} -c '{}'; true", PICK.replace('\'', "\""));
    let client = in_new_pid_namespace(ns, &["sh", "-c", &script], &address);
    let (inner_pid, port) = client.picked();
    let (owner, row) = owner_of(&d, port);
    assert_ne!(
        owner, inner_pid,
        "owned by the peer as the daemon sees it: {row}"
    );
    // The owner is the python process itself: its innermost pid is the one it printed.
    let status = std::fs::read_to_string(format!("/proc/{owner}/status")).unwrap();
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last().map(str::to_owned));
    assert_eq!(nspid, Some(inner_pid.to_string()), "{status}");
    client.finish();
    all_released(&d);
}
