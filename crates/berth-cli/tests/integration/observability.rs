//! What an operator sees: log levels, `berth status --format openmetrics` and the per-user use
//! in `berth status`, and `berth release --force`.

use crate::support;

use std::os::unix::fs::PermissionsExt;

use berth_testkit::needs::{self, AS_NOBODY};
use support::{poll_until, run_sh, Berth, Daemon};

#[test]
fn per_request_log_lines_are_debug_and_carry_pid_and_uid() {
    // The default level (info): a grant and its release leave no line.
    let d = Daemon::start("20950-20954");
    d.berth(["run", "--tcp", "1", "--", "true"])
        .output()
        .code(0);
    d.berth(["list"]).output().code(0);
    let log = d.log();
    assert!(!log.contains("granted"), "{log}");
    assert!(!log.contains("ended:"), "{log}");
    assert!(
        log.contains("serving on"),
        "lifecycle lines stay at info: {log}"
    );
    drop(d);

    // BERTH_LOG=debug: one line per grant, release and denial, with the pid and uid.
    let d = Daemon::start_with_env("20955-20959", &[("BERTH_LOG", "debug")]);
    d.berth(["run", "--tcp", "1", "--", "true"])
        .output()
        .code(0);
    d.berth(["release", "0x0000000000000001"]).output().code(15);
    let uid = rustix::process::getuid().as_raw();
    for wanted in ["granted to pid", "ended: its owner exited", "denied:"] {
        // The release follows the owner's exit, which `berth run` does not wait for.
        let line = poll_until(&format!("a {wanted:?} line in the log"), || {
            d.log()
                .lines()
                .find(|l| l.contains(wanted))
                .map(str::to_owned)
        });
        assert!(line.contains("DEBUG"), "{line}");
        assert!(line.contains(&format!("uid={uid}")), "{line}");
        assert!(line.contains("pid="), "{line}");
    }
}

#[test]
fn status_as_openmetrics_counts_reservations_ports_and_users() {
    let d = Daemon::start("20960-20969");
    let mut holder = run_sh(&d, &["--tcp", "2", "--udp", "1"], "echo ready; read x").spawn();
    assert_eq!(holder.next_line(), "ready");
    let uid = rustix::process::getuid().as_raw();
    let out = d
        .berth(["status", "--format", "openmetrics"])
        .output()
        .code(0);
    let text = out.stdout;
    for line in [
        "berth_reservations{kind=\"runtime\"} 2".to_owned(),
        "berth_reservations{kind=\"persistent\"} 0".to_owned(),
        "berth_reserved_ports{protocol=\"tcp\"} 2".to_owned(),
        "berth_reserved_ports{protocol=\"udp\"} 1".to_owned(),
        "berth_pool_ports 10".to_owned(),
        "berth_kernel_sync 0".to_owned(),
        format!("berth_user_reservations{{uid=\"{uid}\"}} 2"),
        // Port numbers: TCP 20960-20961 and UDP 20960 share 20960, which counts once.
        format!("berth_user_ports{{uid=\"{uid}\"}} 2"),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    for family in [
        "# TYPE berth info",
        "# TYPE berth_uptime_seconds gauge",
        "# TYPE berth_connected_clients gauge",
        "# TYPE berth_open_files_limit gauge",
        "# TYPE berth_held_ports gauge",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    assert!(
        text.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    // The text status shows the use per user; --json and --format json agree.
    let text = d.berth(["status"]).output().code(0).stdout;
    assert!(
        text.contains(&format!("uid {uid}: 2 reservations, 2 ports")),
        "{text}"
    );
    let json = d.berth(["status", "--format", "json"]).output().code(0);
    assert_eq!(json.json()["reservations"], 2);
    d.berth(["status", "--json", "--format", "text"])
        .output()
        .code(2);
    holder.send_line("x");
    holder.wait().code(0);
}

#[test]
fn an_administrator_releases_another_users_reservation_only_with_force() {
    if !needs::users() {
        return;
    }
    let d = Daemon::start("20970-20979");
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut holder = Berth::wrapped_in(d.socket(), AS_NOBODY)
        .args(["run", "--tcp", "1", "--", "sh", "-c", "echo ready; read x"])
        .spawn();
    assert_eq!(holder.next_line(), "ready");
    let list = d.list();
    let token = list[0]["token"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["owner"]["uid"], 65534);

    // Without --force: refused, naming the owner and the way to do it anyway.
    d.berth(["release", &token]).output().code(10).says(&[
        &token,
        "uid 65534",
        "still runs",
        "--force",
    ]);
    assert_eq!(d.list().len(), 1);
    // Administrators see the other user's use.
    let text = d.berth(["status"]).output().code(0).stdout;
    assert!(text.contains("uid 65534: 1 reservation, 1 port"), "{text}");

    let out = d.berth(["release", "--force", &token]).output().code(0);
    assert!(out.stderr.contains(&token), "{}", out.stderr);
    assert!(d.list().is_empty());
    assert!(
        d.log().contains("released by an administrator"),
        "{}",
        d.log()
    );
    holder.send_line("x");
    holder.wait();
}

/// A client sending unreadable frames in a loop does not flood the log: each refusal is a
/// DEBUG line, and at INFO the daemon says it at most once per user every 10 s, with a count.
#[test]
fn a_flood_of_unreadable_frames_is_logged_once() {
    use std::io::{Read, Write};
    let d = Daemon::start("20920-20929");
    for _ in 0..200 {
        let mut conn = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
        // A frame header announcing 4 GiB: refused, answered, closed.
        conn.write_all(&[0xff; 4]).unwrap();
        let mut answer = Vec::new();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let _ = conn.read_to_end(&mut answer);
        assert!(!answer.is_empty(), "every refusal is answered");
    }
    // The daemon is still fine, and its log has one line for the lot (plus none per frame).
    d.berth(["status"]).output().code(0);
    let log = d.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("frames cannot be read"))
        .count();
    assert_eq!(lines, 1, "{log}");
    assert!(
        !log.contains("exceeds the limit"),
        "a line per frame at INFO: {log}"
    );
}
