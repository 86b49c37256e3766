//! One authority per network namespace, from the client's side: a client whose environment
//! points nowhere (another XDG_RUNTIME_DIR, no BERTH_SOCKET — cron, su, sudo -u) still finds
//! the daemon serving its namespace through the authority beacon, and a second daemon refuses
//! to start, naming the first.

use crate::support;

use std::process::Command;

use berth_testkit::deadline::output_within;
use support::{isolate, Daemon, BERTH, DEADLINE};

#[test]
fn a_client_with_no_socket_in_its_environment_finds_the_daemon_of_its_namespace() {
    let d = Daemon::start("21800-21809");
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BERTH);
    // The daemon's own beacon name (isolate derives it from the socket), and nothing else.
    isolate(&mut cmd, d.socket());
    let out = output_within(
        cmd.env_remove("BERTH_SOCKET")
            .env("XDG_RUNTIME_DIR", elsewhere.path())
            .env("BERTH_NO_AUTOSTART", "1")
            .args(["status", "--json"]),
        DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&d.socket().display().to_string()),
        "found another daemon: {stdout}"
    );
}

#[test]
fn a_second_daemon_in_the_namespace_refuses_to_start_and_names_the_first() {
    let d = Daemon::start("21810-21819");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BERTH);
    isolate(&mut cmd, d.socket());
    // Bounded: a second daemon that did not refuse would serve until killed.
    let out = output_within(
        cmd.args(["daemon", "--pool", "21820-21829", "--socket"])
            .arg(dir.path().join("second.sock"))
            .arg("--db")
            .arg(dir.path().join("second.db")),
        DEADLINE,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already serves this network namespace")
            && stderr.contains(&d.socket().display().to_string()),
        "{stderr}"
    );
    assert!(
        !dir.path().join("second.sock").exists(),
        "the refused daemon left its socket"
    );
}

/// Root's daemon is never locked out of its namespace by an ordinary user: a per-user daemon
/// that started first is asked to stop and root's serves; while root's serves, a per-user
/// daemon refuses to start and names it; a squatter on the beacon does not keep root's daemon
/// from serving, and loses the beacon to it once gone. Runs in a private network namespace (the default
/// authority name is per namespace).
#[test]
fn the_system_daemon_displaces_a_per_user_daemon_and_others_defer_to_it() {
    // A second user, and a network namespace made as root.
    if !berth_testkit::needs::users() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("user")).unwrap();
    Command::new("chown")
        .arg("65534:65534")
        .arg(d.join("user"))
        .status()
        .unwrap();
    Command::new("chmod").arg("755").arg(d).status().unwrap();
    // Waits are polls with a deadline (20 s), never a fixed sleep.
    let script = r#"
set -u
ip link set lo up
D=$1; B=$2
ready() { for _ in $(seq 400); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.05; done; return 1; }
gone() { for _ in $(seq 400); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done; return 1; }
NOBODY="setpriv --reuid=65534 --regid=65534 --clear-groups"
$NOBODY "$B" daemon --socket "$D/user/u.sock" --db "$D/user/u.db" --kernel-sync off --ready-stdout >"$D/user/ready" 2>"$D/user/log" &
U=$!
ready "$D/user/ready" || { echo "user daemon not ready"; cat "$D/user/log"; exit 1; }
# Root's client, finding the user's daemon by its beacon, is told to start the system daemon
# (not to ask an administrator: it is one).
# (A host's system socket, shared by every namespace, would be found first.)
if [ -e /run/berth/berth.sock ]; then
    echo "a system socket exists: root's search was not tried"
else
    env -u BERTH_SOCKET BERTH_NO_AUTOSTART=1 "$B" status >/dev/null 2>"$D/root-told"
    grep -q "start the system daemon" "$D/root-told" && echo "root told to start the system daemon"
    cat "$D/root-told"
fi
"$B" daemon --socket "$D/r.sock" --db "$D/r.db" --kernel-sync off --ready-stdout >"$D/r.ready" 2>"$D/r.log" &
R=$!
ready "$D/r.ready" || { echo "root daemon not ready"; cat "$D/r.log"; kill $U; exit 1; }
gone $U || { echo "the user's daemon is still running"; kill $U $R; exit 1; }
BERTH_SOCKET="$D/r.sock" BERTH_NO_AUTOSTART=1 "$B" status >/dev/null || { echo "root's daemon does not answer"; kill $R; exit 1; }
echo "displaced"
$NOBODY "$B" daemon --socket "$D/user/u2.sock" --db "$D/user/u2.db" --kernel-sync off --ready-stdout >"$D/user/ready2" 2>"$D/user/log2"
echo "second user daemon exit $?"
cat "$D/user/log2"
kill $R
gone $R
# A squatter (nobody, not berth) holds the beacon: root's daemon serves all the same, and takes
# the beacon once the squatter is gone.
mkfifo -m 666 "$D/fifo"
$NOBODY /usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind("\0berth-authority"); s.listen(8)
print("squatting", flush=True); sys.stdin.readline()' <"$D/fifo" >"$D/squat" &
S=$!
exec 9>"$D/fifo"
for _ in $(seq 400); do grep -q squatting "$D/squat" 2>/dev/null && break; sleep 0.05; done
"$B" daemon --socket "$D/r2.sock" --db "$D/r2.db" --kernel-sync off --ready-stdout >"$D/r2.ready" 2>"$D/r2.log" 9>&- &
R=$!
ready "$D/r2.ready" || { echo "root daemon not ready beside a squatter"; cat "$D/r2.log"; kill $S; exit 1; }
BERTH_SOCKET="$D/r2.sock" BERTH_NO_AUTOSTART=1 "$B" status >/dev/null && echo "served beside a squatter"
exec 9>&-
gone $S
for _ in $(seq 200); do grep -q "is this daemon's again" "$D/r2.log" && break; sleep 0.05; done
grep -q "is this daemon's again" "$D/r2.log" && echo "beacon taken back"
kill $R
gone $R
"#;
    let out = Command::new("unshare")
        .args(["-n", "bash", "-c", script, "berth-authority-test"])
        .arg(d)
        .arg(BERTH)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("displaced"), "{stdout}");
    assert!(
        stdout.contains("root told to start the system daemon")
            || stdout.contains("a system socket exists"),
        "{stdout}"
    );
    assert!(stdout.contains("second user daemon exit 1"), "{stdout}");
    // Named by its system lock or by its beacon, whichever the refused daemon meets first —
    // with the socket it serves on, not the default one.
    assert!(
        stdout.contains("the system berth daemon (pid") || stdout.contains("(uid 0), socket"),
        "the refusal names the system daemon: {stdout}"
    );
    let root_socket = d.join("r.sock");
    assert!(
        stdout.contains(&root_socket.display().to_string()),
        "the refusal names the socket {}: {stdout}",
        root_socket.display()
    );
    assert!(stdout.contains("served beside a squatter"), "{stdout}");
    assert!(stdout.contains("beacon taken back"), "{stdout}");
    let root_log = std::fs::read_to_string(d.join("r.log")).unwrap();
    assert!(root_log.contains("asked to stop"), "{root_log}");
}
