//! Privileged ports end to end: a daemon that may bind them (root) binds port 80 for the
//! clients its policy allows, and refuses everybody else with permission-denied.
//!
//! The kernel checks the daemon's privileges, not the client's, so this is berth's own check.
//! Each test starts `berth daemon` as root inside a private network namespace (`unshare -n`),
//! then runs this test executable again as user nobody (uid 65534), in the daemon's namespace
//! (`nsenter --net`, `setpriv`), as the helper test [`child_mode_listener_on_port_80`]. The
//! helper asks the daemon for port 80 and a listener on it, and prints one line:
//!
//! - `OK <port>`: the port its listener is bound to;
//! - `ERR <stage> <kind> <message>`: where it failed (`setup`, `connect`, `acquire` or `bind`),
//!   the error kind, and the daemon's message.
//!
//! Port 80 is only ever bound inside the private namespace, never on the host: the daemon's
//! namespace is checked to differ from ours before a client runs, and the helper refuses to
//! go on unless it is in that namespace. It takes root (two users, and a daemon that may bind
//! port 80): as an ordinary user each test says it is skipped (`berth_testkit::needs`).

use crate::support;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use berth::{ErrorKind, Protocol};
use berth_testkit::deadline::wait_within;
use berth_testkit::namespaces::Namespaces;
use berth_testkit::needs::{self, NOBODY};
use support::{all_of, lines_of, BERTH, DEADLINE};
use tempfile::TempDir;

/// Set (to a [`Mode`]) only in the helper's environment.
const CHILD_ENV: &str = "BERTH_PRIV_CHILD";

/// The network namespace (`net:[inode]`) the helper must find itself in.
const NETNS_ENV: &str = "BERTH_PRIV_NETNS";

/// The helper test's name, for `--exact`.
const CHILD_TEST: &str = "privileged::child_mode_listener_on_port_80";

/// The daemon's pool: anything above the privileged ports (its namespace is private).
const POOL: &str = "40000-40099";

/// What the helper asks for.
#[derive(Clone, Copy)]
enum Mode {
    /// `acquire(Tcp, 80, 1)`: port 80 by number.
    Specific,
    /// `acquire(Tcp, 0, 1)` from a pool that holds port 80: the policy applies there too.
    Wildcard,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Specific => "specific",
            Mode::Wildcard => "wildcard",
        }
    }

    fn start(self) -> u16 {
        match self {
            Mode::Specific => 80,
            Mode::Wildcard => 0,
        }
    }
}

/// A `berth daemon` (root) in a network namespace of its own, on `<tempdir>/b.sock`; killed
/// and reaped on drop, by its pid.
struct NsDaemon {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
    /// How its namespace was made, to enter it.
    ns: Namespaces,
}

impl NsDaemon {
    /// Starts `unshare --net -- berth daemon --config <config> --pool <pool>` and waits for its
    /// "ready"; `None` (the skip reported) unless this test may run a client as nobody and
    /// make a network namespace.
    fn start(config: &str, pool: &str) -> Option<NsDaemon> {
        if !needs::users() {
            return None;
        }
        let ns = needs::namespaces()?;
        if ns.in_user_namespace() {
            // Nobody is not mapped in a user namespace, and port 80 is bound by real root.
            needs::skip(
                needs::Need::Namespaces,
                "needs a network namespace of root's own, for a root daemon and a client as nobody",
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("create a temporary directory");
        // Nobody must reach the socket (mode 0666) through its directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 the temporary directory");
        let socket = dir.path().join("b.sock");
        // Always a file of our own: a root daemon without --config would read
        // /etc/berth/berth.toml, if the host has one.
        let config_path = dir.path().join("berth.toml");
        std::fs::write(&config_path, config).expect("write the configuration");
        let log = std::fs::File::create(dir.path().join("daemon.log")).expect("create the log");
        // `unshare` without --fork execs the daemon: the pid we get is the daemon's.
        let unshare = ns.unshare(&["--net"]);
        let mut child = Command::new(&unshare[0])
            .args(&unshare[1..])
            .args([BERTH, "daemon", "--socket"])
            .arg(&socket)
            .args(["--pool", pool, "--config"])
            .arg(&config_path)
            .arg("--db")
            .arg(dir.path().join("berth.db"))
            .arg("--ready-stdout")
            .env_remove("BERTH_LOG")
            .env_remove(CHILD_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn unshare -n -- berth daemon (needs util-linux)");
        let stdout = child.stdout.take().expect("piped stdout");
        let daemon = NsDaemon {
            child,
            dir,
            socket,
            ns,
        };
        match lines_of(stdout).recv_timeout(DEADLINE) {
            Ok(line) if line == "ready\n" => {}
            other => panic!(
                "unshare -n -- berth daemon --pool {pool} did not say ready within {DEADLINE:?} \
                 (got {other:?}; unshare needs root); its log:\n{}",
                daemon.log()
            ),
        }
        daemon.check_identity();
        Some(daemon)
    }

    /// Asserts that our child's pid is the daemon itself and that it runs in a network
    /// namespace that is not ours: nothing may bind port 80 on the host.
    fn check_identity(&self) {
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid()))
            .expect("read the daemon's /proc/PID/exe");
        let berth = std::fs::canonicalize(BERTH).expect("canonicalize the berth binary");
        assert_eq!(
            exe,
            berth,
            "pid {} is not the berth daemon (did unshare fork?)",
            self.pid()
        );
        let ours = std::fs::read_link("/proc/self/ns/net").expect("read our network namespace");
        assert_ne!(
            self.netns(),
            ours.to_string_lossy(),
            "the daemon runs in the host's network namespace"
        );
    }

    /// Its pid (unshare's, which exec'd the daemon).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its network namespace, as `net:[inode]`.
    fn netns(&self) -> String {
        std::fs::read_link(format!("/proc/{}/ns/net", self.pid()))
            .expect("read the daemon's network namespace")
            .to_string_lossy()
            .into_owned()
    }

    /// What it logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs the helper test as nobody in the daemon's network namespace; returns its `OK …` or
    /// `ERR …` line.
    fn run_child(&self, mode: Mode) -> String {
        let exe = executable_for_nobody(self.dir.path());
        let nsenter = self.ns.enter_net(self.pid());
        let mut child = Command::new(&nsenter[0])
            .args(&nsenter[1..])
            .args(needs::AS_NOBODY)
            .arg(&exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env("BERTH_SOCKET", &self.socket)
            .env(CHILD_ENV, mode.as_str())
            .env(NETNS_ENV, self.netns())
            .env_remove("BERTH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nsenter … setpriv … (util-linux)");
        let stdout = all_of(child.stdout.take().expect("piped stdout"));
        let stderr = all_of(child.stderr.take().expect("piped stderr"));
        let status = wait_within(&mut child, DEADLINE, "the helper run as nobody");
        let stdout = stdout.recv_timeout(DEADLINE).unwrap_or_default();
        let stderr = stderr.recv_timeout(DEADLINE).unwrap_or_default();
        assert!(
            status.success(),
            "the helper ({}) failed: {status}\nstdout: {stdout}\nstderr: {stderr}\ndaemon log:\n{}",
            exe.display(),
            self.log()
        );
        let mut results = stdout
            .lines()
            .filter(|l| l.starts_with("OK ") || l.starts_with("ERR "));
        let line = results.next().unwrap_or_else(|| {
            panic!("the helper printed no OK/ERR line\nstdout: {stdout}\nstderr: {stderr}")
        });
        assert!(
            results.next().is_none(),
            "the helper printed more than one result: {stdout}"
        );
        line.to_owned()
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        // Our own child, by its pid; then reap it. Its namespace goes with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This test executable, or a copy in `dir` (mode 0755) when nobody could not run it where it
/// is.
fn executable_for_nobody(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().expect("find this test executable");
    let mode = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.permissions().mode());
    let readable =
        mode(&exe) & 0o005 == 0o005 && exe.ancestors().skip(1).all(|d| mode(d) & 0o001 == 0o001);
    if readable {
        return exe;
    }
    let copy = dir.join("privileged-child");
    std::fs::copy(&exe, &copy).expect("copy this test executable");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
        .expect("chmod 0755 the copy");
    copy
}

/// Asserts an `ERR` line is a permission-denied about privileged port 80 for uid 65534;
/// returns its stage.
#[track_caller]
fn assert_refused(line: &str) -> String {
    let mut parts = line.splitn(4, ' ');
    let (Some("ERR"), Some(stage), Some(kind), Some(message)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("nobody was not refused: {line:?}");
    };
    assert_eq!(kind, ErrorKind::PermissionDenied.as_str(), "{line}");
    for needle in ["privileged", "port 80", "uid 65534"] {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    stage.to_owned()
}

/// The helper: does nothing unless [`CHILD_ENV`] is set, as it is only for the tests below,
/// which run it as nobody in a daemon's network namespace.
#[test]
fn child_mode_listener_on_port_80() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mode = match mode.as_str() {
        "specific" => Mode::Specific,
        "wildcard" => Mode::Wildcard,
        other => panic!("{CHILD_ENV}={other:?} is no mode"),
    };
    // The leading newline keeps the line apart from libtest's "test … ... ".
    println!("\n{}", child_result(mode));
}

/// The helper's one line.
fn child_result(mode: Mode) -> String {
    let (uid, euid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::geteuid().as_raw(),
    );
    if (uid, euid) != (NOBODY, NOBODY) {
        return format!("ERR setup not-nobody uid {uid}, euid {euid}");
    }
    let here = std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expected = std::env::var(NETNS_ENV).unwrap_or_default();
    if expected.is_empty() || here != expected {
        return format!("ERR setup wrong-netns in {here:?}, expected {expected:?}");
    }
    let client = match berth::blocking::Client::connect() {
        Ok(c) => c,
        Err(e) => return format!("ERR connect {} {e}", e.kind().as_str()),
    };
    let reservation = match client.acquire(Protocol::Tcp, mode.start(), 1) {
        Ok(r) => r,
        Err(e) => return format!("ERR acquire {} {e}", e.kind().as_str()),
    };
    let listener = match reservation.tcp_listener(Ipv4Addr::UNSPECIFIED.into()) {
        Ok(l) => l,
        Err(e) => return format!("ERR bind {} {e}", e.kind().as_str()),
    };
    match listener.local_addr() {
        Ok(addr) => format!("OK {}", addr.port()),
        Err(e) => format!("ERR setup local-addr {e}"),
    }
}

#[test]
fn nobody_allowed_by_name_gets_a_listener_on_port_80() {
    let Some(d) = NsDaemon::start("[privileged]\nallow_users = [\"nobody\"]\n", POOL) else {
        return;
    };
    assert_eq!(d.run_child(Mode::Specific), "OK 80", "log:\n{}", d.log());
}

#[test]
fn nobody_allowed_by_group_gets_a_listener_on_port_80() {
    // setpriv --regid=65534 --clear-groups: the primary group only.
    let Some(d) = NsDaemon::start(&format!("[privileged]\nallow_groups = [{NOBODY}]\n"), POOL)
    else {
        return;
    };
    assert_eq!(d.run_child(Mode::Specific), "OK 80", "log:\n{}", d.log());
}

#[test]
fn nobody_is_refused_port_80_by_default_at_acquire() {
    // An empty configuration: root only.
    let Some(d) = NsDaemon::start("", POOL) else {
        return;
    };
    let line = d.run_child(Mode::Specific);
    assert_eq!(assert_refused(&line), "acquire", "{line}");
}

#[test]
fn a_privileged_pool_is_exhausted_for_nobody_by_default() {
    // The wildcard pool is port 80 alone: a wildcard search skips ports the asker may not
    // use, so nobody finds the pool empty rather than holding a port it cannot bind.
    let Some(d) = NsDaemon::start("", "80-80") else {
        return;
    };
    let line = d.run_child(Mode::Wildcard);
    assert!(
        line.starts_with("ERR acquire pool-exhausted "),
        "{line}\nlog:\n{}",
        d.log()
    );
}

#[test]
fn a_privileged_pool_serves_allowed_users() {
    let Some(d) = NsDaemon::start("[privileged]\nallow_users = [\"nobody\"]\n", "80-80") else {
        return;
    };
    assert_eq!(d.run_child(Mode::Wildcard), "OK 80", "log:\n{}", d.log());
}

/// The policy follows the kernel's facts when a request needs them: the boundary
/// (`ip_unprivileged_port_start`) as it is now, and `CAP_NET_BIND_SERVICE` of the asking
/// process — counted only in the daemon's own user namespace (after `unshare -Ur`, `CapEff`
/// shows every capability, which the kernel does not honour over the daemon's network
/// namespace). In a private network namespace; clients as nobody.
#[test]
fn the_boundary_is_read_live_and_a_capability_counts_only_where_the_kernel_honours_it() {
    if !berth_testkit::needs::users() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let client = dir.path().join("ask.py");
    std::fs::write(
        &client,
        format!(
            "{}\nc = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1]); hello(c, b'priv-test')\nc.sendall(frame(bytes([1, 0]) + varint(int(sys.argv[2])) + varint(1)))\nprint('granted' if answer(c)[0] == 2 else 'refused')\n",
            berth_testkit::raw::PY_PRELUDE
        ),
    )
    .unwrap();
    // Waits are polls with a deadline, never a fixed sleep.
    let script = r#"
set -u
ip link set lo up
D=$1; B=$2; PY=$3
NOBODY="setpriv --reuid=65534 --regid=65534 --clear-groups"
"$B" daemon --socket "$D/s.sock" --db "$D/s.db" --kernel-sync off --pool 40000-40099 --authority none --ready-stdout >"$D/ready" 2>"$D/log" &
R=$!
for _ in $(seq 400); do grep -q ready "$D/ready" 2>/dev/null && break; sleep 0.05; done
ask() { $NOBODY /usr/bin/python3 "$PY" "$D/s.sock" "$1"; }
until_says() { for _ in $(seq 200); do [ "$(ask "$1")" = "$2" ] && echo "$2" && return; sleep 0.05; done; echo "never $2"; }
echo "default: $(ask 80)"
sysctl -qw net.ipv4.ip_unprivileged_port_start=0
echo "lowered: $(until_says 80 granted)"
sysctl -qw net.ipv4.ip_unprivileged_port_start=1024
echo "raised: $(until_says 80 refused)"
echo "capability: $($NOBODY --inh-caps=+net_bind_service --ambient-caps=+net_bind_service /usr/bin/python3 "$PY" "$D/s.sock" 443)"
echo "own-userns: $($NOBODY unshare -Ur /usr/bin/python3 "$PY" "$D/s.sock" 443)"
kill $R; wait $R
"#;
    let out = Command::new("unshare")
        .args(["-n", "bash", "-c", script, "berth-privileged-test"])
        .arg(dir.path())
        .arg(support::BERTH)
        .arg(&client)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    for line in [
        "default: refused",
        "lowered: granted",
        "raised: refused",
        "capability: granted",
        "own-userns: refused",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} missing:\n{stdout}\n{log}"
        );
    }
}
