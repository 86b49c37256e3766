//! Runtime reservations across a daemon restart (docs/persistent.md): a daemon is
//! SIGKILLed (or stopped with SIGTERM) and a new one started on the same socket and database;
//! reservations whose owner still runs are held for it to re-claim, those of owners that are
//! gone are freed at once, and those not re-claimed within the grace period are freed then.
//!
//! A held reservation is listed with its journaled owner before it is re-claimed too, so the
//! re-claim itself is seen in the daemon's log ("… re-claimed by pid N").
//!
//! Tests run in parallel, so each uses its own daemon, its own pool and its own ports, all in
//! 22000-22999 (below the host's ephemeral range, apart from the other test files):
//!
//! | test | pool | specific ports |
//! |---|---|---|
//! | `held_reservations_survive_a_crash_of_the_daemon` | 22000-22099 | 22500-22504, 22600-22601 |
//! | `a_reservation_not_reclaimed_is_freed_after_the_grace_period` | 22100-22109 | 22700-22703 |
//! | `the_rust_client_reclaims_across_a_restart` | 22200-22209 | — |
//! | `held_reservations_survive_a_clean_restart` | 22300-22309 | 22800-22801 |
//! | `a_run_whose_ports_are_lost_says_so_and_stops_its_command` | 22400-22409 | — |

#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "a test: stopping loudly on a broken expectation is the point"
)]

mod support;

use std::time::{Duration, Instant};

use berth::Protocol;
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;
use support::{poll_until, ports, row_at, run_sh, Daemon};

/// What a runtime reservation looked like before the restart.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    token: String,
    start: u16,
    count: u16,
    pid: u32,
}

impl Held {
    /// The TCP row of `list` starting at `start`, owned by `pid`.
    #[track_caller]
    fn from_list(list: &[Value], start: u16, pid: u32) -> Held {
        let row = row_at(list, start).unwrap_or_else(|| panic!("no row at {start}: {list:?}"));
        assert_eq!(row["kind"], "runtime", "{row}");
        assert_eq!(row["protocol"], "tcp", "{row}");
        assert_eq!(row["owner"]["pid"], pid, "{row}");
        Held {
            token: row["token"].as_str().expect("a token").to_owned(),
            start,
            count: u16::try_from(row["count"].as_u64().expect("a count")).expect("a count"),
            pid,
        }
    }

    /// Whether `list` shows it exactly as it was: same token, ports and owner.
    fn listed_in(&self, list: &[Value]) -> bool {
        list.iter().any(|r| {
            r["token"] == self.token.as_str()
                && r["kind"] == "runtime"
                && r["start"] == self.start
                && r["count"] == self.count
                && r["owner"]["pid"] == self.pid
        })
    }
}

/// How many times the daemons' log says `pid` re-claimed `token` (not that it did not).
fn reclaims(d: &Daemon, token: &str, pid: u32) -> usize {
    let claim = format!("re-claimed by pid {pid}");
    d.log()
        .lines()
        .filter(|l| l.contains(token) && l.contains(&claim) && !l.contains("not re-claimed"))
        .count()
}

/// Whether the daemons' log says `pid` re-claimed `token`.
fn reclaimed(d: &Daemon, token: &str, pid: u32) -> bool {
    reclaims(d, token, pid) > 0
}

/// A raw pid for signals.
fn pid_of(pid: u32) -> Pid {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .expect("a valid pid")
}

/// Whether every thread of process `pid` is stopped (state `T`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // `pid (comm) S …`: the state follows the last ')'.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}

#[test]
fn held_reservations_survive_a_crash_of_the_daemon() {
    let mut d = Daemon::start_with("22000-22099", &["--grace", "10"]);
    // A specific block and a wildcard one, whose owners keep running across the restart...
    let mut specific = run_sh(
        &d,
        &["--tcp", "5", "--start", "22500"],
        "echo ready; read x",
    )
    .spawn();
    let mut wildcard = run_sh(&d, &["--tcp", "3"], "echo $BERTH_TCP_PORTS; read x").spawn();
    // ...and one whose owner dies while the daemon is down.
    let mut doomed = run_sh(
        &d,
        &["--tcp", "2", "--start", "22600"],
        "echo ready; read x",
    )
    .spawn();
    assert_eq!(specific.next_line(), "ready");
    let wildcard_ports = ports(&wildcard.next_line());
    assert_eq!(doomed.next_line(), "ready");
    assert_eq!(wildcard_ports.len(), 3);

    let before = d.list();
    assert_eq!(before.len(), 3, "{before:?}");
    let a = Held::from_list(&before, 22500, specific.pid());
    let b = Held::from_list(&before, wildcard_ports[0], wildcard.pid());
    let c = Held::from_list(&before, 22600, doomed.pid());
    assert_eq!((a.count, b.count, c.count), (5, 3, 2));

    d.kill9();
    assert!(!doomed.kill().success());
    // The orphaned `sh` reads our pipe: closing it lets that child end too.
    doomed.close_stdin();
    d.restart();

    // Right after the restart, the held blocks are nobody else's: not by the same ports, nor
    // by overlapping ones, nor from the pool.
    for (start, count) in [(22500, 5), (22504, 1), (b.start, 3), (b.start + 2, 1)] {
        d.berth([
            "run",
            "--tcp",
            &count.to_string(),
            "--start",
            &start.to_string(),
        ])
        .args(["--", "true"])
        .output()
        .code(12);
    }
    // The pool has 100 ports, 3 of them held: no wildcard block of 98 fits.
    d.berth(["run", "--tcp", "98", "--", "true"])
        .output()
        .code(13);
    // The dead client's block was freed at start-up.
    d.berth(["run", "--tcp", "2", "--start", "22600", "--", "true"])
        .output()
        .code(0);

    // Both owners re-claim theirs: same tokens, ports and pids; the dead one's is gone.
    poll_until("both owners re-claimed their blocks", || {
        let list = d.list();
        (list.len() == 2
            && a.listed_in(&list)
            && b.listed_in(&list)
            && reclaimed(&d, &a.token, a.pid)
            && reclaimed(&d, &b.token, b.pid))
        .then_some(())
    });
    let after = d.list();
    assert!(row_at(&after, 22600).is_none(), "{after:?}");
    assert!(!reclaimed(&d, &c.token, c.pid), "{}", d.log());

    // The commands finish normally; `berth run` releases and exits with their status.
    specific.send_line("done");
    wildcard.send_line("done");
    specific.wait().code(0);
    wildcard.wait().code(0);
    assert_eq!(d.list(), Vec::<Value>::new());
}

#[test]
fn held_reservations_survive_a_clean_restart() {
    let mut d = Daemon::start_with("22300-22309", &["--grace", "10"]);
    let mut holder = run_sh(
        &d,
        &["--tcp", "2", "--start", "22800"],
        "echo ready; read x",
    )
    .spawn();
    assert_eq!(holder.next_line(), "ready");
    let held = Held::from_list(&d.list(), 22800, holder.pid());

    // SIGTERM (systemctl restart): the journal is kept as it is.
    d.stop();
    d.restart();
    d.berth(["run", "--tcp", "1", "--start", "22801", "--", "true"])
        .output()
        .code(12);
    poll_until("the owner re-claimed its block", || {
        let list = d.list();
        (list.len() == 1 && held.listed_in(&list) && reclaimed(&d, &held.token, held.pid))
            .then_some(())
    });
    holder.send_line("done");
    holder.wait().code(0);
    assert_eq!(d.list(), Vec::<Value>::new());
}

#[test]
fn a_reservation_not_reclaimed_is_freed_after_the_grace_period() {
    // As long as any wait of these tests may take: the commands that look at the held block
    // right after the restart surely run within it (the exact timing of the grace period is
    // tested with paused time in crates/berth-daemon/tests/timeouts.rs).
    const GRACE: Duration = support::DEADLINE;
    let mut d = Daemon::start_with("22100-22109", &["--grace", &GRACE.as_secs().to_string()]);
    let mut holder = run_sh(
        &d,
        &["--tcp", "4", "--start", "22700"],
        "echo ready; read x",
    )
    .spawn();
    assert_eq!(holder.next_line(), "ready");
    let held = Held::from_list(&d.list(), 22700, holder.pid());

    d.kill9();
    // Still alive but unable to re-claim: stopped (every thread, before the new daemon runs).
    kill_process(pid_of(holder.pid()), Signal::STOP).expect("SIGSTOP berth run");
    poll_until("berth run is stopped", || {
        all_threads_stopped(holder.pid()).then_some(())
    });
    d.restart();

    // Held for its owner meanwhile.
    let list = d.list();
    assert!(held.listed_in(&list), "{list:?}");
    d.berth(["run", "--tcp", "1", "--start", "22702", "--", "true"])
        .output()
        .code(12);
    assert!(!d.log().contains("not re-claimed"), "{}", d.log());

    // Nobody re-claims it: freed at the end of the grace period.
    let deadline = Instant::now() + GRACE + support::DEADLINE;
    while row_at(&d.list(), 22700).is_some() {
        assert!(
            Instant::now() < deadline,
            "the block is still held {:?} after the grace period of {GRACE:?}",
            support::DEADLINE
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.log().contains("not re-claimed"), "{}", d.log());
    d.berth(["run", "--tcp", "4", "--start", "22700", "--", "true"])
        .output()
        .code(0);

    // Let it go on: its re-claim is refused, and its command still ends normally.
    kill_process(pid_of(holder.pid()), Signal::CONT).expect("SIGCONT berth run");
    holder.send_line("done");
    holder.wait().code(0);
    assert_eq!(d.list(), Vec::<Value>::new());
    assert!(!reclaimed(&d, &held.token, held.pid), "{}", d.log());
}

#[test]
fn the_rust_client_reclaims_across_a_restart() {
    let mut d = Daemon::start_with("22200-22209", &["--grace", "10"]);
    let client = berth::blocking::Client::connect_to(d.socket()).expect("connect");
    let reservation = client.acquire(Protocol::Tcp, 0, 3).expect("acquire");
    let me = std::process::id();
    let held = Held {
        token: reservation.token().to_string(),
        start: reservation.start(),
        count: 3,
        pid: me,
    };
    assert!(held.listed_in(&d.list()), "{:?}", d.list());

    // Twice: a re-claimed reservation is journaled still, for the next restart.
    for round in 1..=2 {
        d.kill9();
        d.restart();
        poll_until("this process re-claimed its block", || {
            let list = d.list();
            let claims = reclaims(&d, &held.token, me);
            (list.len() == 1 && held.listed_in(&list) && claims == round).then_some(())
        });
        assert!(client.is_open());
    }
    // The original handle still works: it releases the block in the new daemon.
    reservation.release().expect("release after the restart");
    assert_eq!(d.list(), Vec::<Value>::new());
    // And the client serves new requests.
    let again = client.acquire(Protocol::Tcp, 0, 1).expect("acquire again");
    assert_eq!(d.list().len(), 1);
    again.release().expect("release");
}

/// The ports of `berth run` are never lost silently. Where the daemon takes them over for the
/// command (`Request::Transfer`), they outlive the daemon's restart while the command runs;
/// where it cannot, and `berth run` (paused past the grace period) cannot re-claim them,
/// it says so on stderr at once, sends SIGTERM to its command, and exits with 15.
#[test]
fn a_run_whose_ports_are_lost_says_so_and_stops_its_command() {
    let mut d = Daemon::start_with("22400-22409", &["--grace", "0"]);
    let mut run = run_sh(&d, &["--tcp", "2"], "echo $PORT; exec sleep 30").spawn();
    let port = run.next_line().trim().to_owned();
    let owner = d.list()[0]["owner"]["pid"].as_u64().expect("an owner pid");
    let berth_run = Pid::from_raw(i32::try_from(run.pid()).unwrap()).unwrap();
    if owner != u64::from(run.pid()) {
        // Handed to the command: kept across a restart for as long as it runs.
        d.stop();
        d.restart();
        let list = d.list();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["start"].to_string(), port);
        run.kill();
        return;
    }
    kill_process(berth_run, Signal::STOP).unwrap();
    d.stop();
    d.restart();
    // Grace 0: the daemon lets go of it while `berth run` is paused.
    poll_until("the unclaimed reservation is freed", || {
        d.list().is_empty().then_some(())
    });
    kill_process(berth_run, Signal::CONT).unwrap();
    let out = run.wait();
    let out = out.code(15);
    for needle in ["is lost", "did not give it back", "SIGTERM"] {
        assert!(out.stderr.contains(needle), "{needle:?}: {}", out.stderr);
    }
    assert_eq!(out.stderr.matches("is lost").count(), 1, "{}", out.stderr);
}
