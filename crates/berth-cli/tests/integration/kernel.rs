//! The kernel's reserved-ports list end to end: the real `berth` binary, root there, inside
//! private network namespaces only.
//!
//! Each test makes a network namespace of its own, held open by a process that lives as long as
//! the test ([`Netns`], from `berth_testkit::namespaces`): as root with `unshare
//! --net`; as an ordinary user in a user namespace of its own (`unshare --map-root-user`),
//! where it is root over that network namespace and may write its sysctls. Everything runs in
//! it through `nsenter` (with `--user` too in the second case): the daemon (whose pid is then
//! the daemon's, since nsenter does not fork for these namespaces), its clients (a client in
//! another namespace is refused by design), and every read or write of
//! `net.ipv4.ip_local_reserved_ports` and `ip_local_port_range`. Every shell command run in the
//! namespace first checks that it is in that namespace and not in the host's, so nothing here
//! can change the host's settings; CI also compares the host's list before and after the whole
//! suite (`.ci/run`). Where no namespace can be made, or a test needs user nobody as well
//! (root only), the test says it is skipped (`berth_testkit::needs`).
//!
//! Nothing sleeps to wait: waits are for a line, for a process, or a poll with a deadline.

use crate::support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use berth_testkit::deadline::{output_within, wait_within};
use berth_testkit::namespaces::HeldNetns;
use berth_testkit::needs::{self, Need};
use serde_json::Value;
use support::lines_of;
use tempfile::TempDir;

mod enforce;
mod exposure;
mod list;
mod time_wait;

/// The `berth` binary under test.
const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// How long anything may take before a test gives up: generous, for a busy 2-core machine.
const DEADLINE: Duration = Duration::from_secs(15);

/// The list, inside a namespace.
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The ephemeral range, inside a namespace.
const EPHEMERAL: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// User and group nobody.
const NOBODY: &str = "65534";

/// A set of ports, as the kernel lists them ("1000-1001,2000").
type Ports = BTreeSet<u16>;

/// Parses the kernel's notation ("1000-1001,2000", or empty).
fn ports(text: &str) -> Ports {
    let mut set = Ports::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: u16 = lo.trim().parse().expect("a port number");
        let hi: u16 = hi.trim().parse().expect("a port number");
        set.extend(lo..=hi);
    }
    set
}

/// `a ∪ b ∪ …`.
fn union(sets: &[&Ports]) -> Ports {
    sets.iter().flat_map(|s| s.iter().copied()).collect()
}

/// A private network namespace with loopback up, for one test — or, for a test that needs a
/// daemon that may not write the list, possibly the host's own namespace as an ordinary user
/// ([`Netns::for_an_unprivileged_daemon`]).
struct Netns {
    /// The holder of the private namespace; `None` for the host's.
    held: Option<HeldNetns>,
    /// Its `net:[inode]`.
    id: String,
}

impl Netns {
    /// A new namespace, or `None` (the skip reported) where none can be made.
    fn new() -> Option<Netns> {
        let how = needs::namespaces()?;
        let held = how.hold_net();
        Some(Netns {
            id: held.id().to_owned(),
            held: Some(held),
        })
    }

    /// Where a daemon that may not write the list runs, and as whom: as root, in a new
    /// namespace as nobody; as an ordinary user, as itself in the host's namespace, whose
    /// settings it may not write (the kernel refuses it, whatever berth does).
    fn for_an_unprivileged_daemon() -> Option<(Netns, Option<&'static str>)> {
        if needs::other_users_available() {
            // Nobody in a namespace of root's own (a user namespace maps no other user).
            let ns = Netns::new()?;
            if ns
                .held
                .as_ref()
                .is_some_and(|h| h.how().in_user_namespace())
            {
                needs::skip(
                    Need::Namespaces,
                    "needs a network namespace of root's own, for a daemon run as nobody in it",
                );
                return None;
            }
            return Some((ns, Some(NOBODY)));
        }
        assert!(
            !rustix::process::geteuid().is_root(),
            "root must not run these tests in the host's namespace"
        );
        let id = std::fs::read_link("/proc/self/ns/net")
            .expect("read our network namespace")
            .to_string_lossy()
            .into_owned();
        Some((Netns { held: None, id }, None))
    }

    /// Whether this is a private namespace of the test's own.
    fn is_private(&self) -> bool {
        self.held.is_some()
    }

    /// `program` in the namespace, as root there (in the host's: as the test's user, with an
    /// authority beacon of its own beside other tests' daemons), with the namespace to check
    /// in the environment.
    fn command(&self, program: &str) -> Command {
        let mut cmd = match &self.held {
            Some(held) => {
                let mut cmd = held.command(program);
                cmd.env_remove("BERTH_AUTHORITY");
                cmd
            }
            None => {
                let mut cmd = Command::new(program);
                cmd.env(
                    "BERTH_AUTHORITY",
                    format!("berth-test-kernel-{}", std::process::id()),
                );
                cmd
            }
        };
        cmd.env("BERTH_TEST_NETNS", &self.id)
            .env_remove("BERTH_KERNEL_SYNC")
            .env_remove("BERTH_LOG")
            .env("BERTH_NO_AUTOSTART", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a shell script in the namespace; it refuses to run anywhere else. Returns its
    /// stdout; panics unless it exits 0.
    fn sh(&self, script: &str) -> String {
        let guard = "[ \"$(readlink /proc/self/ns/net)\" = \"$BERTH_TEST_NETNS\" ] || \
                     { echo 'not in the test namespace: refusing' >&2; exit 99; }";
        let out = run(self
            .command("sh")
            .arg("-c")
            .arg(format!("{guard}\n{script}")));
        assert!(
            out.status.success(),
            "in the namespace, {script:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The namespace's reserved-ports list.
    fn reserved(&self) -> Ports {
        ports(&self.sh(&format!("cat {RESERVED}")))
    }

    /// Replaces the namespace's list, as an administrator would.
    fn set_reserved(&self, value: &str) {
        assert!(
            self.is_private(),
            "only a private namespace's list is written"
        );
        self.sh(&format!("printf '%s\\n' '{value}' > {RESERVED}"));
    }

    /// The namespace's ephemeral range.
    fn ephemeral(&self) -> (u16, u16) {
        let text = self.sh(&format!("cat {EPHEMERAL}"));
        let mut it = text.split_whitespace().map(|p| p.parse::<u16>());
        match (it.next(), it.next()) {
            (Some(Ok(lo)), Some(Ok(hi))) => (lo, hi),
            _ => panic!("unexpected {EPHEMERAL}: {text:?}"),
        }
    }

    /// Polls the list until it equals `want`.
    fn wait_reserved(&self, want: &Ports, what: &str) {
        support::poll_until(&format!("{what}: the list becomes {want:?}"), || {
            (&self.reserved() == want).then_some(())
        });
    }

    /// A `berth` client command in the namespace, aimed at `socket`.
    fn berth(&self, socket: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command(BERTH);
        cmd.args(args).env("BERTH_SOCKET", socket);
        cmd
    }

    /// [`Netns::berth`] run as `uid`, when given (a client talks only to a daemon of root or
    /// its own).
    fn berth_as(&self, uid: Option<&str>, socket: &Path, args: &[&str]) -> Command {
        let Some(uid) = uid else {
            return self.berth(socket, args);
        };
        let mut cmd = self.command("setpriv");
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
            BERTH,
        ])
        .args(args)
        .env("BERTH_SOCKET", socket);
        cmd
    }
}

/// Runs `cmd` to its end, with a deadline.
fn run(cmd: &mut Command) -> Output {
    output_within(cmd, DEADLINE)
}

/// Runs `cmd`, which must exit 0; its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kill -SIG pid`.
fn signal(pid: u32, sig: &str) {
    let out = run(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string()));
    assert!(out.status.success(), "kill -{sig} {pid} failed");
}

/// Waits for `child` to end, with a deadline.
fn wait(child: &mut Child, what: &str) -> ExitStatus {
    wait_within(child, DEADLINE, what)
}

/// A `berth daemon` in a namespace, on `<dir>/b.sock` with `<dir>/berth.db`, started with
/// `args`; killed and reaped on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `berth daemon … args` in `ns` (as `user`, when given, with `setpriv`) and waits
    /// for its "ready"; panics with its log if it does not say it.
    fn start(ns: &Netns, dir: &Path, args: &[&str], user: Option<&str>) -> Daemon {
        let mut child = Daemon::spawn(ns, dir, args, user);
        let log = dir.join("daemon.log");
        let stdout = child.stdout.take().expect("piped stdout");
        match lines_of(stdout).recv_timeout(DEADLINE) {
            Ok(line) if line == "ready\n" => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "berth daemon {args:?} did not say ready within {DEADLINE:?} (got {other:?}); \
                     its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            }
        }
        let daemon = Daemon {
            child,
            socket: dir.join("b.sock"),
            log,
        };
        daemon.check_identity(ns);
        daemon
    }

    /// Spawns it without waiting.
    fn spawn(ns: &Netns, dir: &Path, args: &[&str], user: Option<&str>) -> Child {
        // Always a configuration of our own: a root daemon would read /etc/berth/berth.toml.
        let config = dir.join("berth.toml");
        if !config.exists() {
            std::fs::write(&config, "").expect("write an empty configuration");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .expect("open the log");
        let mut cmd = match user {
            None => ns.command(BERTH),
            Some(uid) => {
                let mut cmd = ns.command("setpriv");
                cmd.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "--",
                    BERTH,
                ]);
                cmd
            }
        };
        cmd.arg("daemon")
            .arg("--socket")
            .arg(dir.join("b.sock"))
            .arg("--db")
            .arg(dir.join("berth.db"))
            .arg("--config")
            .arg(&config)
            .arg("--ready-stdout");
        // These tests check exact lists: nothing listed ahead of grants, unless a test is
        // about that (`listed_ahead`).
        if !args.iter().any(|a| a.starts_with("--listed-ahead")) {
            cmd.args(["--listed-ahead", "0"]);
        }
        cmd.args(args)
            .env("HOME", dir)
            // Every write to the kernel's list, for the tests that check them.
            .env("BERTH_LOG", "info,berth_daemon::mirror::kernel=debug")
            .env("XDG_RUNTIME_DIR", dir)
            .env("XDG_STATE_HOME", dir)
            .env("XDG_CONFIG_HOME", dir)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn nsenter … berth daemon")
    }

    /// Asserts that the child's pid is the daemon itself, in the test's namespace.
    fn check_identity(&self, ns: &Netns) {
        let pid = self.child.id();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe");
        let berth = std::fs::canonicalize(BERTH).expect("canonicalize the berth binary");
        assert_eq!(exe, berth, "pid {pid} is not the berth daemon");
        let netns = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("read its netns");
        assert_eq!(
            netns.to_string_lossy(),
            ns.id,
            "the daemon is not in the test namespace"
        );
    }

    /// `kill -9`, and reaps it.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        let status = self.child.wait().expect("reap the daemon");
        assert!(!status.success(), "the daemon exited 0 on SIGKILL");
    }

    /// SIGTERM, and waits for a clean exit.
    fn stop(&mut self) {
        signal(self.child.id(), "TERM");
        let status = wait(&mut self.child, "the daemon after SIGTERM");
        assert!(
            status.success(),
            "the daemon did not stop cleanly ({status}); its log:\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `berth status --json`.
    fn status(&self, ns: &Netns) -> Value {
        let text = ok(&mut ns.berth(&self.socket, &["status", "--json"]));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status --json: {e}: {text}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `berth run … -- sh -c 'echo "$$ $PORTS"; exec cat >/dev/null'` that holds its
/// reservation until its stdin is closed.
struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The command's pid: the reservation's owner once `berth run` hands it over.
    owner: u32,
    ports: Ports,
}

impl Held {
    /// `proto` is "--tcp" or "--udp".
    fn start(ns: &Netns, socket: &Path, proto: &str, count: u16) -> Held {
        let var = if proto == "--tcp" {
            "BERTH_TCP_PORTS"
        } else {
            "BERTH_UDP_PORTS"
        };
        let mut child = ns
            .berth(
                socket,
                &[
                    "run",
                    proto,
                    &count.to_string(),
                    "--",
                    "sh",
                    "-c",
                    &format!("echo \"$$ ${var}\"; exec cat >/dev/null"),
                ],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth run");
        let stdin = child.stdin.take();
        let line = lines_of(child.stdout.take().expect("piped stdout"))
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("berth run {proto} {count} printed nothing ({e})"));
        let (pid, list) = line.trim().split_once(' ').expect("\"PID PORTS\"");
        let ports: Ports = list
            .split(',')
            .map(|p| p.parse().expect("a port"))
            .collect();
        assert_eq!(ports.len(), usize::from(count), "berth run gave {list}");
        Held {
            child,
            stdin,
            owner: pid.parse().expect("a pid"),
            ports,
        }
    }

    /// Lets the command end: `berth run` releases and exits 0.
    fn finish(mut self) {
        drop(self.stdin.take());
        let status = wait(&mut self.child, "berth run");
        assert!(status.success(), "berth run ended with {status}");
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory the daemon (maybe nobody) can use.
fn workdir() -> TempDir {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod the temporary directory");
    dir
}

/// An administrator's entries survive everything the daemon does: start, grants, releases, a
/// `kill -9`, a restart that removes exactly the crashed daemon's stale entries, entries added
/// while it runs, and a clean stop that leaves exactly the administrator's.
#[test]
fn administrator_entries_survive_grants_a_crash_a_restart_and_a_clean_stop() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    let admin = ports("1000-1001,2000");
    ns.set_reserved("1000-1001,2000");
    let args = [
        "--kernel-sync",
        "on",
        "--pool",
        "40000-40099",
        "--grace",
        "30",
    ];
    let mut daemon = Daemon::start(&ns, dir.path(), &args, None);
    let sock = daemon.socket.clone();
    // Ready: reconciled, nothing of the daemon's yet.
    assert_eq!(ns.reserved(), admin, "after start-up");
    let status = daemon.status(&ns);
    assert_eq!(status["kernel_sync"], Value::Bool(true), "{status}");
    assert_eq!(status["kernel_sync_off_because"], Value::Null, "{status}");

    // Persistent reservations: in the list when the command returns.
    ok(&mut ns.berth(
        &sock,
        &[
            "persistent",
            "add",
            "--tcp",
            "--start",
            "45000",
            "--count",
            "2",
        ],
    ));
    ok(&mut ns.berth(
        &sock,
        &[
            "persistent",
            "add",
            "--udp",
            "--start",
            "45010",
            "--count",
            "1",
        ],
    ));
    let persistent = ports("45000-45001,45010");
    assert_eq!(ns.reserved(), union(&[&admin, &persistent]));

    // Runtime reservations: in the list once berth run hands them over.
    let a = Held::start(&ns, &sock, "--tcp", 3);
    let b = Held::start(&ns, &sock, "--udp", 2);
    let c = Held::start(&ns, &sock, "--tcp", 1);
    let all = union(&[&admin, &persistent, &a.ports, &b.ports, &c.ports]);
    assert_eq!(ns.reserved(), all, "with three runs");
    // A release removes exactly its own.
    c.finish();
    let before_crash = union(&[&admin, &persistent, &a.ports, &b.ports]);
    ns.wait_reserved(&before_crash, "after one run ended");

    // kill -9: the list stays as it was.
    daemon.kill9();
    assert_eq!(ns.reserved(), before_crash, "after kill -9");
    // While it is down, b's owner (the command berth run handed it to) dies, and berth run
    // with it; a's lives on.
    signal(b.owner, "KILL");
    drop(b);

    // A restart on the same database: b's stale entries go, everyone else's stay — by the
    // time it says ready.
    let mut daemon = Daemon::start(&ns, dir.path(), &args, None);
    let alive = union(&[&admin, &persistent, &a.ports]);
    assert_eq!(
        ns.reserved(),
        alive,
        "at ready after the restart; log:\n{}",
        daemon.log()
    );

    // An administrator adds an entry while the daemon runs (read, merge, write back): the
    // next write keeps it.
    ns.sh(&format!(
        "cur=$(cat {RESERVED}); printf '%s,3000\\n' \"$cur\" > {RESERVED}"
    ));
    let admin = union(&[&admin, &ports("3000")]);
    let d = Held::start(&ns, &sock, "--udp", 1);
    assert_eq!(
        ns.reserved(),
        union(&[&admin, &persistent, &a.ports, &d.ports])
    );
    d.finish();
    a.finish();
    ns.wait_reserved(&union(&[&admin, &persistent]), "after the runs ended");

    // A clean stop leaves exactly the administrator's entries.
    daemon.stop();
    assert_eq!(ns.reserved(), admin, "after a clean stop");
}

/// An administrator's entry that a reservation also covers is still the administrator's: the
/// reservation's release, and the daemon's clean stop, leave it in place.
/// Someone rewrites the whole list (`sysctl --system` does): the daemon puts its entries back
/// within seconds, keeping the newcomer's, and takes only its own out when it stops.
#[test]
fn a_rewrite_of_the_whole_list_is_repaired() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    let args = ["--kernel-sync", "on", "--pool", "40000-40099"];
    let mut daemon = Daemon::start(&ns, dir.path(), &args, None);
    let sock = daemon.socket.clone();
    let add = [
        "persistent",
        "add",
        "--tcp",
        "--start",
        "40010",
        "--count",
        "2",
    ];
    ok(&mut ns.berth(&sock, &add));
    assert_eq!(ns.reserved(), ports("40010-40011"));
    ns.set_reserved("5000");
    ns.wait_reserved(
        &ports("5000,40010-40011"),
        "after someone else rewrote the list",
    );
    daemon.stop();
    assert_eq!(ns.reserved(), ports("5000"), "after a clean stop");
}

#[test]
fn administrator_entries_that_a_reservation_overlaps_survive_it() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    ns.set_reserved("2000");
    let admin = ports("2000");
    let args = ["--kernel-sync", "on", "--pool", "40000-40099"];
    let mut daemon = Daemon::start(&ns, dir.path(), &args, None);
    let sock = daemon.socket.clone();
    let add = [
        "persistent",
        "add",
        "--tcp",
        "--start",
        "2000",
        "--count",
        "2",
    ];
    ok(&mut ns.berth(&sock, &add));
    assert_eq!(ns.reserved(), ports("2000-2001"));
    daemon.stop();
    assert_eq!(ns.reserved(), admin, "after a clean stop");

    let _daemon = Daemon::start(&ns, dir.path(), &args, None);
    assert_eq!(ns.reserved(), ports("2000-2001"), "after the restart");
    let delete = [
        "persistent",
        "delete",
        "--tcp",
        "--start",
        "2000",
        "--count",
        "2",
    ];
    ok(&mut ns.berth(&sock, &delete));
    // Ports leave the list with the writer's next write, a few milliseconds after the answer
    // (only additions are waited for): poll.
    ns.wait_reserved(&admin, "after the delete");
    // A runtime reservation over it, released.
    let run = ["run", "--tcp", "1", "--start", "2000", "--", "true"];
    ok(&mut ns.berth(&sock, &run));
    ns.wait_reserved(&admin, "after berth run --start 2000 ended");
}

/// The script that autobinds: `bind(0)` and `connect()`, TCP and UDP, IPv4 and IPv6, loopback
/// only, `N` times each; prints one line per port it got from the reserved set and a summary.
const AUTOBIND: &str = r#"
import os, socket, sys, threading
n = int(sys.argv[1])
reserved = set()
for var in ("BERTH_TCP_PORTS", "BERTH_UDP_PORTS"):
    reserved |= {int(p) for p in os.environ.get(var, "").split(",") if p}
def parse(text):
    out = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out |= set(range(int(lo), int(hi or lo) + 1))
    return out
listed = parse(open("/proc/sys/net/ipv4/ip_local_reserved_ports").read())
lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
print("listed", reserved <= listed)
print("inrange", all(lo <= p <= hi for p in reserved))
families = [(socket.AF_INET, "127.0.0.1")]
try:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::1", 0))
    s.close()
    families.append((socket.AF_INET6, "::1"))
except OSError:
    pass
TARGET = 5555
def serve(l):
    while True:
        try:
            c, _ = l.accept()
            c.close()
        except OSError:
            return
hits = 0
done = 0
for fam, addr in families:
    lst = socket.socket(fam, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((addr, TARGET))
    lst.listen(512)
    threading.Thread(target=serve, args=(lst,), daemon=True).start()
    for typ, tname in ((socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")):
        for op in ("bind", "connect"):
            for _ in range(n):
                s = socket.socket(fam, typ)
                if op == "bind":
                    s.bind((addr, 0))
                else:
                    if typ == socket.SOCK_STREAM:
                        # RST on close: no TIME_WAIT to exhaust the small range.
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    s.connect((addr, TARGET))
                port = s.getsockname()[1]
                s.close()
                done += 1
                if port in reserved:
                    hits += 1
                    if hits <= 5:
                        print("HIT", tname, op, fam.name, port)
print("families", " ".join(f.name for f, _ in families))
print("reserved", len(reserved))
print("done", done, "hits", hits)
"#;

/// Thousands of autobinds by another process — `bind(0)` and `connect()`, TCP and UDP, IPv4
/// and IPv6 — never get a reserved port, with the reservations inside a small ephemeral range
/// where they would be hit often without the sync (shown by the same run against a daemon with
/// sync off).
#[test]
fn autobind_never_lands_on_a_reserved_port() {
    if !needs::python3() {
        return;
    }
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    // A small ephemeral range: the default pool, half of which is reserved below.
    ns.sh(&format!("echo '40000 40063' > {EPHEMERAL}"));
    let script = dir.path().join("autobind.py");
    std::fs::write(&script, AUTOBIND).expect("write the script");
    let script = script.to_string_lossy().into_owned();
    let runs = |sock: &Path| -> String {
        let out = ok(&mut ns.berth(
            sock,
            &[
                "run",
                "--tcp",
                "20",
                "--udp",
                "12",
                "--",
                needs::PYTHON3,
                &script,
                "500",
            ],
        ));
        assert!(
            out.contains("reserved 2") || out.contains("reserved 3"),
            "{out}"
        );
        out
    };
    let want_v6 = Path::new("/proc/net/if_inet6").exists();

    let mut daemon = Daemon::start(&ns, dir.path(), &["--kernel-sync", "on"], None);
    let status = daemon.status(&ns);
    assert_eq!(
        status["pool"], "40000-40063",
        "the default pool when syncing: {status}"
    );
    let out = runs(&daemon.socket);
    let want = if want_v6 { 4000 } else { 2000 };
    assert!(out.contains(&format!("done {want} hits 0")), "{out}");
    if want_v6 {
        assert!(out.contains("AF_INET6"), "IPv6 was not exercised: {out}");
    }
    // The run's reservations were listed and inside the ephemeral range (so autobind would
    // have hit them without the sync); they are gone from the list once it ended.
    assert!(
        out.contains("listed True") && out.contains("inrange True"),
        "{out}"
    );
    ns.wait_reserved(&Ports::new(), "after the run ended");
    daemon.stop();

    // The same with sync off: the run's ports are not hidden, and autobind does land on them
    // (so the run above could have failed).
    let dir2 = workdir();
    let mut daemon = Daemon::start(
        &ns,
        dir2.path(),
        &["--kernel-sync", "off", "--pool", "40000-40063"],
        None,
    );
    let out = runs(&daemon.socket);
    assert!(out.contains("listed False"), "{out}");
    assert!(
        out.contains("HIT"),
        "without sync, nothing landed on the reserved ports: {out}"
    );
    daemon.stop();
}

/// An acquire is answered only after the write that lists it: the command `berth run` starts
/// finds its port in the list already.
#[test]
fn berth_run_children_find_their_ports_listed() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    let daemon = Daemon::start(
        &ns,
        dir.path(),
        &["--kernel-sync", "on", "--pool", "40000-40999"],
        None,
    );
    for (proto, var) in [("--tcp", "BERTH_TCP_PORTS"), ("--udp", "BERTH_UDP_PORTS")] {
        for _ in 0..10 {
            let cmd = format!("echo \"${var}\"; cat {RESERVED}");
            let out =
                ok(&mut ns.berth(&daemon.socket, &["run", proto, "1", "--", "sh", "-c", &cmd]));
            let mut lines = out.lines();
            let port: u16 = lines
                .next()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or_else(|| panic!("no port in {out:?}"));
            let listed = ports(lines.next().unwrap_or(""));
            assert!(
                listed.contains(&port),
                "{proto} port {port} was not listed when the command started: {listed:?}"
            );
        }
    }
}

/// A daemon that cannot write the list (user nobody in a namespace root owns, or an ordinary
/// user's in the host's) runs with sync off, says so and why in `berth status --json`, serves a
/// default pool outside the ephemeral range, and leaves the list alone.
#[test]
fn an_unprivileged_daemon_runs_with_sync_off_and_a_pool_outside_the_ephemeral_range() {
    let Some((ns, user)) = Netns::for_an_unprivileged_daemon() else {
        return;
    };
    let dir = workdir();
    if ns.is_private() {
        ns.set_reserved("1000");
    }
    let before = ns.reserved();
    let daemon = Daemon::start(&ns, dir.path(), &[], user);
    let text = ok(&mut ns.berth_as(user, &daemon.socket, &["status", "--json"]));
    let status: Value = serde_json::from_str(&text).expect("status --json is JSON");
    assert_eq!(status["kernel_sync"], Value::Bool(false), "{status}");
    let why = status["kernel_sync_off_because"].as_str().unwrap_or("");
    assert!(
        why.contains("may not write") && why.contains("ip_local_reserved_ports"),
        "status does not say why sync is off: {status}"
    );
    let pool = status["pool"].as_str().expect("pool is a string");
    let (lo, hi) = pool.split_once('-').expect("pool is LO-HI");
    let (lo, hi): (u16, u16) = (lo.parse().expect("LO"), hi.parse().expect("HI"));
    let (eph_lo, eph_hi) = ns.ephemeral();
    assert!(
        hi < eph_lo || lo > eph_hi,
        "the default pool {pool} overlaps the ephemeral range {eph_lo}-{eph_hi}"
    );
    let out = ok(&mut ns.berth_as(
        user,
        &daemon.socket,
        &[
            "run",
            "--tcp",
            "2",
            "--",
            "sh",
            "-c",
            &format!("cat {RESERVED}"),
        ],
    ));
    // The host's list may change meanwhile for reasons of its own; a private one may not.
    if ns.is_private() {
        assert_eq!(ports(&out), before, "the list changed");
    }
}

/// `--kernel-sync off` on a daemon that could write the list: status says it was switched off,
/// and the list is left alone.
#[test]
fn sync_switched_off_leaves_the_list_alone() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    let daemon = Daemon::start(
        &ns,
        dir.path(),
        &["--kernel-sync", "off", "--pool", "40000-40099"],
        None,
    );
    let status = daemon.status(&ns);
    assert_eq!(status["kernel_sync"], Value::Bool(false), "{status}");
    let why = status["kernel_sync_off_because"].as_str().unwrap_or("");
    assert!(why.contains("switched off"), "{status}");
    let out = ok(&mut ns.berth(
        &daemon.socket,
        &[
            "run",
            "--tcp",
            "2",
            "--",
            "sh",
            "-c",
            &format!("cat {RESERVED}"),
        ],
    ));
    assert_eq!(ports(&out), Ports::new(), "the list changed");
}

/// `--kernel-sync on` where the list cannot be written: the daemon refuses to start, and says
/// why.
#[test]
fn sync_on_without_the_right_to_write_refuses_to_start() {
    let Some((ns, user)) = Netns::for_an_unprivileged_daemon() else {
        return;
    };
    let dir = workdir();
    let mut child = Daemon::spawn(&ns, dir.path(), &["--kernel-sync", "on"], user);
    let status = wait(&mut child, "berth daemon --kernel-sync on, unprivileged");
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(!status.success(), "it started; log:\n{log}");
    assert!(
        log.contains("kernel sync was asked for")
            && log.contains("may not write /proc/sys/net/ipv4/ip_local_reserved_ports"),
        "the message does not say why: {log}"
    );
    assert!(
        !dir.path().join("b.sock").exists(),
        "it left a socket behind"
    );
}

/// The default pool follows the kernel's ephemeral range when an administrator changes it,
/// with sync on (the range itself) and off (outside it).
#[test]
fn the_default_pool_follows_a_changed_ephemeral_range() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    let daemon = Daemon::start(&ns, dir.path(), &["--kernel-sync", "on"], None);
    let pool_of = |d: &Daemon| -> String {
        d.status(&ns)["pool"]
            .as_str()
            .expect("pool is a string")
            .to_owned()
    };
    let (lo, hi) = ns.ephemeral();
    assert_eq!(pool_of(&daemon), format!("{lo}-{hi}"));
    ns.sh("echo '40000 40099' > /proc/sys/net/ipv4/ip_local_port_range");
    support::poll_until("the pool follows the changed ephemeral range", || {
        (pool_of(&daemon) == "40000-40099").then_some(())
    });
    let out = ok(&mut ns.berth(
        &daemon.socket,
        &["run", "--tcp", "1", "--", "sh", "-c", "echo $PORT"],
    ));
    let port: u16 = out.trim().parse().expect("a port");
    assert!((40000..=40099).contains(&port), "granted {port}");
}

/// Ports an administrator listed in `ip_local_reserved_ports` are theirs: wildcard blocks skip
/// them.
#[test]
fn wildcard_blocks_skip_ports_an_administrator_listed() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    ns.sh("echo '40000 40063' > /proc/sys/net/ipv4/ip_local_port_range");
    ns.set_reserved("40000-40002");
    let daemon = Daemon::start(&ns, dir.path(), &["--kernel-sync", "on"], None);
    let out = ok(&mut ns.berth(
        &daemon.socket,
        &[
            "run",
            "--tcp",
            "2",
            "--",
            "sh",
            "-c",
            "echo $BERTH_TCP_PORTS",
        ],
    ));
    assert_eq!(
        out.trim(),
        "40003,40004",
        "an administrator's entries were handed out"
    );
}
