//! Protection off: a daemon without kernel sync never hands out, unannounced, ports any
//! program's `connect()` may be given (docs/kernel.md, "Protection off").

use super::*;

/// The ephemeral range widened over every port (`1024 65535`) while the daemon runs with sync
/// off: the default pool does not move into it, and wildcard requests are refused, saying
/// why; requests by number outside the pool are still served. Narrowed again, the pool is
/// served again. A pool given on the command line that overlaps the range is served, with a
/// warning in `status` and the log.
#[test]
fn a_pool_exposed_to_autobind_is_refused_or_announced() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    let (lo, hi) = ns.ephemeral();
    let mut daemon = Daemon::start(&ns, dir.path(), &["--kernel-sync", "off"], None);
    let status = daemon.status(&ns);
    let pool = status["pool"].as_str().expect("pool").to_owned();
    assert_eq!(status["exposure"], Value::Null, "{status}");

    ns.sh(&format!("echo '1024 65535' > {EPHEMERAL}"));
    let status = support::poll_until("the widened range is seen", || {
        let status = daemon.status(&ns);
        (status["exposure"] != Value::Null).then_some(status)
    });
    assert_eq!(status["pool"], pool.as_str(), "the pool moved: {status}");
    assert_eq!(status["exposure"]["refused"], true, "{status}");
    assert_eq!(status["exposure"]["ephemeral"], "1024-65535", "{status}");
    let out = run(&mut ns.berth(&daemon.socket, &["run", "--tcp", "1", "--", "true"]));
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ephemeral range 1024-65535") && stderr.contains("nothing was reserved"),
        "{stderr}"
    );
    let text = ok(&mut ns.berth(&daemon.socket, &["status"]));
    assert!(text.contains("wildcard requests are refused"), "{text}");
    assert!(daemon.log().contains("wildcard requests are refused"));

    ns.sh(&format!("echo '{lo} {hi}' > {EPHEMERAL}"));
    support::poll_until("the range narrowed again is seen", || {
        (daemon.status(&ns)["exposure"] == Value::Null).then_some(())
    });
    ok(&mut ns.berth(&daemon.socket, &["run", "--tcp", "1", "--", "true"]));
    // One daemon per namespace: this one goes before the next starts.
    daemon.stop();

    // The administrator's own pool, inside the range: served, and announced.
    let dir2 = workdir();
    let inside = format!("{lo}-{}", lo + 99);
    let chosen = Daemon::start(
        &ns,
        dir2.path(),
        &["--kernel-sync", "off", "--pool", &inside],
        None,
    );
    let status = support::poll_until("the exposure is seen", || {
        let status = chosen.status(&ns);
        (status["exposure"] != Value::Null).then_some(status)
    });
    assert_eq!(status["exposure"]["refused"], false, "{status}");
    assert_eq!(status["exposure"]["ports"], inside.as_str(), "{status}");
    ok(&mut ns.berth(&chosen.socket, &["run", "--tcp", "1", "--", "true"]));
    assert!(
        chosen.log().contains("may be given them"),
        "{}",
        chosen.log()
    );
}
