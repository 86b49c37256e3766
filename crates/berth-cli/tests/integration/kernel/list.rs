//! The kernel's list as other tools change it, and across restarts: stale read-modify-writes,
//! an administrator's configured entries, values longer than one kernel write, and a clean
//! stop under live owners (docs/kernel.md). Same namespaces and helpers as the parent module.

use super::*;

/// A tool that adds its own entry the usual way — read the list, add, write it all back — in
/// a loop until `flag` exists, racing the daemon's grants and releases.
const READ_MODIFY_WRITE: &str = r#"
import os, sys
P = "/proc/sys/net/ipv4/ip_local_reserved_ports"
flag, mine = sys.argv[1], sys.argv[2]
n = 0
while not os.path.exists(flag):
    fd = os.open(P, os.O_RDONLY)
    cur = os.read(fd, 1 << 20).decode().strip()
    os.close(fd)
    new = (cur + "," if cur else "") + mine
    fd = os.open(P, os.O_WRONLY)
    os.write(fd, (new + "\n").encode())
    os.close(fd)
    n += 1
print("rewrites", n)
"#;

/// A stale write-back of ports the daemon released (another tool's read-modify-write racing
/// it) is taken out again: when the racing stops, the list holds the tool's entry and none of
/// the daemon's ports. (Whether a write-back races a release in a given run is up to the
/// scheduler; `a_stale_write_back_of_released_ports_is_taken_out_again` makes one on purpose.)
#[test]
fn a_read_modify_write_racing_grants_and_releases_leaks_no_port() {
    if !needs::python3() {
        return;
    }
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    let mut daemon = Daemon::start(
        &ns,
        dir.path(),
        &["--kernel-sync", "on", "--pool", "40000-40199"],
        None,
    );
    let script = dir.path().join("rmw.py");
    std::fs::write(&script, READ_MODIFY_WRITE).expect("write the script");
    let flag = dir.path().join("stop");
    let mut writer = ns
        .command(needs::PYTHON3)
        .arg(&script)
        .arg(&flag)
        .arg("3000")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the read-modify-write loop");
    for _ in 0..30 {
        ok(&mut ns.berth(&daemon.socket, &["run", "--tcp", "3", "--", "true"]));
    }
    std::fs::write(&flag, "").expect("tell the writer to stop");
    let status = wait(&mut writer, "the read-modify-write loop");
    assert!(status.success(), "the loop failed: {status}");
    ns.wait_reserved(&ports("3000"), "once the racing stopped");
    let status = daemon.status(&ns);
    assert_eq!(status["kernel_list"]["foreign"], 1, "{status}");
    daemon.stop();
    assert_eq!(ns.reserved(), ports("3000"), "after a clean stop");
}

/// The stale write-back itself, made on purpose rather than raced for: another tool reads the
/// list while a run holds its ports, the run ends and the daemon takes them out, then the tool
/// writes back what it read with its own entry added. The daemon knows those ports for an
/// echo of its own entries and takes them out again, counting the repair; the tool's entries
/// stay, through a clean stop too.
#[test]
fn a_stale_write_back_of_released_ports_is_taken_out_again() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    let args = ["--kernel-sync", "on", "--pool", "40000-40199"];
    let mut daemon = Daemon::start(&ns, dir.path(), &args, None);
    let sock = daemon.socket.clone();
    ns.set_reserved("3000");
    let held = Held::start(&ns, &sock, "--tcp", 3);
    // The tool's read.
    let stale = ns.reserved();
    assert_eq!(stale, union(&[&ports("3000"), &held.ports]));
    held.finish();
    ns.wait_reserved(&ports("3000"), "after the run ended");
    // The tool's write: what it read, and its own entry.
    let mut written: Vec<String> = stale.iter().map(u16::to_string).collect();
    written.push("3001".into());
    ns.set_reserved(&written.join(","));
    ns.wait_reserved(&ports("3000-3001"), "after the stale write-back");
    let status = daemon.status(&ns);
    assert_eq!(status["kernel_list"]["foreign"], 2, "{status}");
    assert!(
        status["kernel_list"]["repaired"].as_u64() >= Some(3),
        "the three echoes counted as repairs: {status}"
    );
    daemon.stop();
    assert_eq!(ns.reserved(), ports("3000-3001"), "after a clean stop");
}

/// An entry an administrator's sysctl file lists stays the administrator's, even when the
/// daemon listed it first for a reservation: `sysctl -p` rewrites the list to the file's value
/// (the daemon puts its other entries back), and the reservation's end leaves it listed.
#[test]
fn a_configured_entry_survives_sysctl_p_and_the_reservation_over_it() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    let sysctl = dir.path().join("60-admin.conf");
    std::fs::write(&sysctl, "net.ipv4.ip_local_reserved_ports = 40010\n").expect("write");
    std::fs::write(
        dir.path().join("berth.toml"),
        format!(
            "reserved_ports_config = [{:?}]\n",
            sysctl.display().to_string()
        ),
    )
    .expect("write the configuration");
    let mut daemon = Daemon::start(
        &ns,
        dir.path(),
        &["--kernel-sync", "on", "--pool", "40000-40099"],
        None,
    );
    let sock = daemon.socket.clone();
    let range = ["--tcp", "--start", "40010", "--count", "2"];
    ok(&mut ns.berth(&sock, &[&["persistent", "add"][..], &range].concat()));
    assert_eq!(ns.reserved(), ports("40010-40011"));
    // `sysctl -p /etc/sysctl.d/60-admin.conf`: the list becomes the file's value.
    ns.set_reserved("40010");
    ns.wait_reserved(&ports("40010-40011"), "after sysctl -p");
    let status = daemon.status(&ns);
    assert_eq!(status["kernel_list"]["foreign"], 1, "{status}");
    assert!(
        status["kernel_list"]["repaired"].as_u64() >= Some(1),
        "{status}"
    );
    ok(&mut ns.berth(&sock, &[&["persistent", "delete"][..], &range].concat()));
    ns.wait_reserved(&ports("40010"), "after the delete");
    daemon.stop();
    assert_eq!(ns.reserved(), ports("40010"), "after a clean stop");
}

/// A clean stop while `berth run` commands still run leaves their ports listed, so that no
/// `connect()` takes them before the next daemon, which keeps them; `berth stop --restore`
/// takes every entry of the daemon's out.
#[test]
fn a_clean_stop_keeps_live_owners_entries_and_restore_takes_them_out() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
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
    ns.set_reserved("2000");
    let persistent = [
        "persistent",
        "add",
        "--udp",
        "--start",
        "40050",
        "--count",
        "1",
    ];
    ok(&mut ns.berth(&sock, &persistent));
    let held = Held::start(&ns, &sock, "--tcp", 3);
    let live = union(&[&ports("2000,40050"), &held.ports]);
    assert_eq!(ns.reserved(), live);
    daemon.stop();
    // The run's entries stay; the persistent reservation's go until the next daemon.
    assert_eq!(
        ns.reserved(),
        union(&[&ports("2000"), &held.ports]),
        "after a clean stop with a live owner; log:\n{}",
        daemon.log()
    );
    let first_log = daemon.log();
    let mut daemon = Daemon::start(&ns, dir.path(), &args, None);
    assert_eq!(ns.reserved(), live, "at ready after the restart");
    // The writes themselves: every replacing one fits one kernel write, and once the run's
    // ports were listed no write of either daemon took them out while the run lived.
    let restarted_log = daemon.log();
    let writes = kernel_writes(&restarted_log);
    assert!(!writes.is_empty(), "no write logged:\n{restarted_log}");
    let mut list = Ports::new();
    let mut listed_since = None;
    for (i, write) in writes.iter().enumerate() {
        match write {
            KernelWrite::Add(added) => list.extend(added),
            KernelWrite::Replace { bytes, value } => {
                assert!(*bytes <= 4095, "a replacing write of {bytes} bytes");
                list = value.clone();
            }
        }
        if list.is_superset(&held.ports) {
            listed_since.get_or_insert(i);
        } else if let Some(since) = listed_since {
            panic!("write {i} unlisted the run's ports (listed since write {since}): {write:?}");
        }
    }
    assert!(
        restarted_log.len() > first_log.len(),
        "the second daemon logged its writes too"
    );
    held.finish();
    ns.wait_reserved(&ports("2000,40050"), "after the run ended");

    // --restore: a live owner's entries go too.
    let held = Held::start(&ns, &sock, "--udp", 2);
    assert!(ns.reserved().is_superset(&held.ports));
    ok(&mut ns.berth(&sock, &["stop", "--restore"]));
    let status = wait(&mut daemon.child, "the daemon after berth stop --restore");
    assert!(status.success(), "{status}; log:\n{}", daemon.log());
    assert_eq!(ns.reserved(), ports("2000"), "after berth stop --restore");
    drop(held);
}

/// Thousands of `bind(0)` by another program while the daemon grants and releases never get a
/// port of a list longer than one kernel write (the administrator's 1,000 scattered entries):
/// the daemon never replaces the list with a value the kernel takes in several pieces.
const BIND_ZERO: &str = r#"
import os, socket, sys
flag = sys.argv[1]
def parse(text):
    out = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out |= set(range(int(lo), int(hi or lo) + 1))
    return out
admin = parse(sys.argv[2])
n = hits = 0
while not os.path.exists(flag) or n < 2000:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    n += 1
    if port in admin:
        hits += 1
        if hits <= 5:
            print("HIT", port)
print("binds", n, "hits", hits)
"#;

#[test]
fn a_list_longer_than_one_kernel_write_never_lets_bind_zero_in() {
    if !needs::python3() {
        return;
    }
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    ns.sh(&format!("echo '30000 39999' > {EPHEMERAL}"));
    // Every tenth port of the ephemeral range but a block for the daemon's pool: ~5.7 KB.
    let admin: Vec<String> = (30_000u16..40_000)
        .step_by(10)
        .filter(|p| !(35_000..35_200).contains(p))
        .map(|p| p.to_string())
        .collect();
    let admin = admin.join(",");
    ns.set_reserved(&admin);
    assert!(admin.len() > 4096);
    let mut daemon = Daemon::start(
        &ns,
        dir.path(),
        &["--kernel-sync", "on", "--pool", "35000-35199"],
        None,
    );
    let script = dir.path().join("bind0.py");
    std::fs::write(&script, BIND_ZERO).expect("write the script");
    let flag = dir.path().join("stop");
    let mut binder = ns
        .command(needs::PYTHON3)
        .arg(&script)
        .arg(&flag)
        .arg(&admin)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the bind(0) loop");
    for _ in 0..20 {
        ok(&mut ns.berth(&daemon.socket, &["run", "--tcp", "4", "--", "true"]));
    }
    std::fs::write(&flag, "").expect("tell the loop to stop");
    let lines = lines_of(binder.stdout.take().expect("piped stdout"));
    let status = wait(&mut binder, "the bind(0) loop");
    let text = berth_testkit::deadline::all_lines(&lines, DEADLINE, "the loop report").join("\n");
    assert!(status.success(), "{text}");
    assert!(text.contains(" hits 0"), "{text}");
    // Every administrator's entry is still there.
    assert!(ns.reserved().is_superset(&ports(&admin)));
    // And every replacing write the daemon made fit one kernel write (the stop's, below, is
    // the one that may not).
    for write in kernel_writes(&daemon.log()) {
        if let KernelWrite::Replace { bytes, .. } = write {
            assert!(bytes <= 4095, "a replacing write of {bytes} bytes");
        }
    }
    daemon.stop();
    assert_eq!(ns.reserved(), ports(&admin), "after a clean stop");
}

/// One write the daemon made to the kernel's list, from its DEBUG log.
#[derive(Debug)]
enum KernelWrite {
    /// Ports added (a write at an offset above 0).
    Add(Ports),
    /// The whole list replaced by `value`, a text of `bytes` bytes.
    Replace { bytes: usize, value: Ports },
}

/// The writes a daemon's log (`BERTH_LOG` with `berth_daemon::mirror::kernel=debug`) records,
/// in order.
fn kernel_writes(log: &str) -> Vec<KernelWrite> {
    log.lines()
        .filter_map(|line| line.split_once("kernel list write: ").map(|(_, w)| w))
        .map(|write| {
            if let Some(added) = write.strip_prefix("add ") {
                KernelWrite::Add(ports(added))
            } else {
                let rest = write.strip_prefix("replace, ").expect("add or replace");
                let (bytes, value) = rest.split_once(" bytes: ").expect("N bytes: VALUE");
                KernelWrite::Replace {
                    bytes: bytes.parse().expect("a length"),
                    value: ports(value),
                }
            }
        })
        .collect()
}

/// The ports listed ahead of grants: listed once the daemon is ready, unheld wildcard blocks
/// come from them in turn with no write of the list at all, a block that does not fit among
/// them is searched in the whole pool with its write, the stripe moves on once most of it is
/// taken, and it leaves the list at a clean stop.
#[test]
fn ports_listed_ahead_are_granted_and_released_with_no_write() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    // Handed out in turn is what this test looks at: no cool-down to pass released ports by
    // (it has tests of its own).
    std::fs::write(dir.path().join("berth.toml"), "reuse_cool_down_s = 0\n")
        .expect("write the configuration");
    let args = [
        "--kernel-sync",
        "on",
        "--pool",
        "40000-40999",
        "--listed-ahead",
        "8",
    ];
    let mut daemon = Daemon::start(&ns, dir.path(), &args, None);
    let sock = daemon.socket.clone();
    let stripe = ports("40000-40007");
    ns.wait_reserved(&stripe, "once the daemon is ready");
    let writes_at_ready = kernel_writes(&daemon.log()).len();
    let status = daemon.status(&ns);
    assert_eq!(status["kernel_list"]["extras"], 8, "{status}");

    let mut got = Vec::new();
    for _ in 0..12 {
        let out = ok(&mut ns.berth(
            &sock,
            &["run", "--tcp", "1", "--", "sh", "-c", "echo $PORT"],
        ));
        got.push(out.trim().parse::<u16>().expect("a port"));
    }
    // In turn through the stripe, then around again: never the lowest free port each time.
    let expected: Vec<u16> = (0..12).map(|i| 40000 + i % 8).collect();
    assert_eq!(got, expected);
    assert_eq!(ns.reserved(), stripe, "the stripe stays listed");
    let log = daemon.log();
    assert_eq!(
        kernel_writes(&log).len(),
        writes_at_ready,
        "a grant or release in the stripe wrote the list; log:\n{log}"
    );

    // Nine ports do not fit among eight: a block searched in the whole pool, its ports beyond
    // the stripe listed by a write before the command runs.
    let out = ok(&mut ns.berth(
        &sock,
        &[
            "run",
            "--tcp",
            "9",
            "--",
            "sh",
            "-c",
            "echo $BERTH_TCP_PORTS; cat /proc/sys/net/ipv4/ip_local_reserved_ports",
        ],
    ));
    let mut lines = out.lines();
    let block = ports(lines.next().expect("the ports"));
    let listed = ports(lines.next().expect("the list"));
    assert!(listed.is_superset(&block), "{listed:?} lacks {block:?}");
    assert!(kernel_writes(&daemon.log()).len() > writes_at_ready);
    // The pool's own search starts at its start: the block took the whole stripe, which then
    // moved on to the eight ports past it.
    assert_eq!(block, ports("40000-40008"));
    let expected = ports("40008-40015");
    ns.wait_reserved(&expected, "after the run of nine ended");
    let next = ok(&mut ns.berth(
        &sock,
        &["run", "--tcp", "1", "--", "sh", "-c", "echo $PORT"],
    ));
    let next: u16 = next.trim().parse().expect("a port");
    assert_eq!(Some(&next), expected.iter().next(), "from the moved stripe");

    daemon.stop();
    assert_eq!(ns.reserved(), Ports::new(), "after a clean stop");
}
