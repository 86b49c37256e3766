//! `berth run --daemonizes`: a command that starts a server in the background and exits (the
//! `pg_ctl start` pattern) keeps its ports while any process it started lives, and `berth run`
//! still exits with the command's own status at once. Any user's daemon serves it (a keeper
//! process holds the ports, not a cgroup).

use crate::support;

use support::{row_at, Daemon};

/// A background process, started by the command, that lives until `done` exists.
fn background_until(done: &std::path::Path) -> String {
    format!(
        "/usr/bin/python3 -c 'import os, time\nwhile not os.path.exists(\"{}\"): time.sleep(0.02)' </dev/null >/dev/null 2>&1 &",
        done.display()
    )
}

#[test]
fn a_daemonizing_command_keeps_its_ports_until_its_last_process_exits() {
    let d = Daemon::start("23500-23509");
    let done = d.dir().join("done");
    let out = d
        .berth([
            "run",
            "--daemonizes",
            "--tcp",
            "2",
            "--",
            "sh",
            "-c",
            &format!("{} echo $PORT; exit 3", background_until(&done)),
        ])
        .output()
        // The command's own status, at once: the background process still runs.
        .code(3);
    let port: u16 = out.stdout.trim().parse().unwrap();
    let list = d.list();
    let row = row_at(&list, port).expect("the block outlives the command");
    // Held for the keeper (a berth process), which lives as long as the background process.
    assert_eq!(row["owner"]["command"], "berth", "{row}");
    assert_eq!(row["count"], 2);
    // The last process started by the command exits: the block is released.
    std::fs::write(&done, "").unwrap();
    support::poll_until("the block is released after the last process", || {
        row_at(&d.list(), port).is_none().then_some(())
    });
}

#[test]
fn a_command_that_leaves_nothing_behind_ends_its_ports_with_it() {
    let d = Daemon::start("23510-23519");
    let out = d
        .berth([
            "run",
            "--daemonizes",
            "--tcp",
            "1",
            "--",
            "sh",
            "-c",
            "echo $PORT",
        ])
        .output()
        .code(0);
    let port: u16 = out.stdout.trim().parse().unwrap();
    support::poll_until("the block is released with the keeper", || {
        row_at(&d.list(), port).is_none().then_some(())
    });
    // A command that cannot start fails as without --daemonizes, and reserves nothing.
    d.berth([
        "run",
        "--daemonizes",
        "--tcp",
        "1",
        "--",
        "/nonexistent/berth-test-command",
    ])
    .output()
    .code(127);
    support::poll_until("nothing stays reserved", || {
        d.list().is_empty().then_some(())
    });
}
