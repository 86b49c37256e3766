//! Runtime reservations across a daemon restart (docs/persistent.md, docs/decisions.md): a
//! daemon is SIGKILLed (or stopped with SIGTERM) and a new one started on the same socket and
//! database.
//!
//! `berth run` hands its reservations to the command it starts (docs/cli.md): they are bound to
//! that process, so a restarted daemon gives them back to it at once — same token, ports and
//! owner, no re-claim — keeps them past the grace period, and frees them when the command
//! ends; those of commands that ended while the daemon was down are freed at start-up. A
//! client-library session's reservation is held for its owner to re-claim, and freed at the
//! end of the grace period when nobody does: [`Unclaimed`] holds one that is never re-claimed,
//! which also shows, through the CLI, when the grace period is over.
//!
//! Tests run in parallel, so each uses its own daemon, its own pool and its own ports, all in
//! 22000-22999 (below the host's ephemeral range, apart from the other test files):
//!
//! | test | pool | specific ports |
//! |---|---|---|
//! | `held_reservations_survive_a_crash_of_the_daemon` | 22000-22099 | 22500-22504, 22600-22601, 22650 |
//! | `an_ended_command_is_freed_at_start_up_an_unclaimed_block_after_the_grace_period` | 22100-22109 | 22700-22703, 22750-22751 |
//! | `the_rust_client_reclaims_across_a_restart` | 22200-22209 | — |
//! | `held_reservations_survive_a_clean_restart` | 22300-22309 | 22800-22801, 22850 |
//! | `a_run_whose_ports_are_lost_says_so_and_stops_its_command` | 22400-22409 | — |

use crate::support;

use std::time::{Duration, Instant};

use berth::{Options, Protocol};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;
use support::{is_gone, poll_until, ports, row_at, run_sh, Daemon, Proc};

/// What a runtime reservation looked like before the restart.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    token: String,
    start: u16,
    count: u16,
    pid: u32,
}

impl Held {
    /// The TCP reservation starting at `start` that `run` (a `berth run`) handed to the command
    /// it started, once the daemon lists it as that command's.
    #[track_caller]
    fn handed_over(d: &Daemon, start: u16, run: &Proc) -> Held {
        let command = run.command_pid();
        assert_ne!(command, run.pid(), "berth run is not its own command");
        let row = d.owned_by(start, command);
        assert_eq!(row["kind"], "runtime", "{row}");
        assert_eq!(row["protocol"], "tcp", "{row}");
        assert_eq!(row["owner"]["command"], "sh", "{row}");
        Held {
            token: row["token"].as_str().expect("a token").to_owned(),
            start,
            count: u16::try_from(row["count"].as_u64().expect("a count")).expect("a count"),
            pid: command,
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

/// A block this test process holds through the client library, on a client that gives up at
/// once when its daemon goes away (a reconnection window of zero): it is never re-claimed, so
/// a restarted daemon holds it for this (live) process until the grace period ends, then
/// frees it ("not re-claimed after the restart") — the end of the grace period, seen through
/// the CLI.
struct Unclaimed {
    // Before the client: dropped first.
    reservation: berth::blocking::Reservation,
    _client: berth::blocking::Client,
    token: String,
    start: u16,
}

impl Unclaimed {
    /// Acquires `start..start+count-1` (TCP) from `d`.
    fn hold(d: &Daemon, start: u16, count: u16) -> Unclaimed {
        let client = berth::blocking::Client::connect_to_with(
            d.socket(),
            Options::default().reconnect_window(Duration::ZERO),
        )
        .expect("connect");
        let reservation = client
            .acquire(Protocol::Tcp, start, count)
            .expect("acquire");
        Unclaimed {
            token: reservation.token().to_string(),
            start,
            reservation,
            _client: client,
        }
    }

    /// Waits until the client has given the block up (its daemon is gone): it will not
    /// re-claim it from the next one.
    fn wait_given_up(&self) {
        poll_until("the library client gave its block up", || {
            self.reservation.is_lost().then_some(())
        });
    }

    /// Whether `list` shows it, held for this process.
    fn listed_in(&self, list: &[Value]) -> bool {
        list.iter().any(|r| {
            r["token"] == self.token.as_str()
                && r["start"] == self.start
                && r["owner"]["pid"] == std::process::id()
        })
    }

    /// Waits, for at most `within`, until the restarted daemon has freed it because nobody
    /// re-claimed it: the grace period is over.
    #[track_caller]
    fn wait_freed(&self, d: &Daemon, within: Duration) {
        let deadline = Instant::now() + within;
        while row_at(&d.list(), self.start).is_some() {
            assert!(
                Instant::now() < deadline,
                "the unclaimed block {} is still held {within:?} after the restart; log:\n{}",
                self.token,
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            d.log()
                .lines()
                .any(|l| l.contains(&self.token) && l.contains("not re-claimed")),
            "{}",
            d.log()
        );
    }
}

/// The daemons' log lines saying that someone re-claimed `token` (not that nobody did).
fn reclaim_lines(d: &Daemon, token: &str) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| {
            l.contains(token) && l.contains("re-claimed by pid") && !l.contains("not re-claimed")
        })
        .map(str::to_owned)
        .collect()
}

/// How many times the daemons' log says `pid` re-claimed `token`.
fn reclaims(d: &Daemon, token: &str, pid: u32) -> usize {
    let claim = format!("re-claimed by pid {pid}");
    reclaim_lines(d, token)
        .iter()
        .filter(|l| l.contains(&claim))
        .count()
}

/// A raw pid for signals.
fn pid_of(pid: u32) -> Pid {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .expect("a valid pid")
}

#[test]
fn held_reservations_survive_a_crash_of_the_daemon() {
    // A grace period of a second: the test waits for its end.
    let mut d = Daemon::start_with("22000-22099", &["--grace", "1"]);
    // A specific block and a wildcard one, whose commands keep running across the restart...
    let mut specific = run_sh(
        &d,
        &["--tcp", "5", "--start", "22500"],
        "echo ready; read x",
    )
    .spawn();
    let mut wildcard = run_sh(&d, &["--tcp", "3"], "echo $BERTH_TCP_PORTS; read x").spawn();
    // ...and one whose command is killed while the daemon is down.
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

    let a = Held::handed_over(&d, 22500, &specific);
    let b = Held::handed_over(&d, wildcard_ports[0], &wildcard);
    let c = Held::handed_over(&d, 22600, &doomed);
    assert_eq!((a.count, b.count, c.count), (5, 3, 2));
    let unclaimed = Unclaimed::hold(&d, 22650, 1);
    let before = d.list();
    assert_eq!(before.len(), 4, "{before:?}");

    d.kill9();
    unclaimed.wait_given_up();
    kill_process(pid_of(c.pid), Signal::KILL).expect("SIGKILL the doomed command");
    // Its `berth run` reaps it: it is gone (not even a zombie) before the new daemon looks.
    poll_until("the doomed command is gone", || {
        is_gone(c.pid).then_some(())
    });
    d.restart();

    // What carried them over: the runtime journal in the socket's directory (the runtime
    // directory), named after the database; none beside the database.
    let journals: Vec<String> = std::fs::read_dir(d.socket().parent().unwrap())
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".runtime"))
        .collect();
    assert_eq!(journals.len(), 1, "{journals:?}");
    assert!(journals[0].starts_with("berth.db-"), "{journals:?}");

    // Right after the restart, the running commands' blocks are theirs as they were: same
    // tokens, ports and owners, with no re-claim needed...
    let list = d.list();
    assert!(a.listed_in(&list) && b.listed_in(&list), "{list:?}");
    // ...and the dead command's block was freed at start-up.
    assert!(row_at(&list, 22600).is_none(), "{list:?}");
    assert!(
        d.log().contains(
            "holding 3 runtime reservations for their owners; freed 1 whose owners are gone"
        ),
        "{}",
        d.log()
    );
    // The held blocks are nobody else's: not by the same ports, nor by overlapping ones, nor
    // from the pool.
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
    d.berth(["run", "--tcp", "2", "--start", "22600", "--", "true"])
        .output()
        .code(0);
    // The doomed command's `berth run` exits with its status (128 + SIGKILL).
    doomed.wait().code(137);

    // The grace period ends: the block nobody re-claimed is freed; the commands' stay theirs.
    unclaimed.wait_freed(&d, support::DEADLINE);
    let list = d.list();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(a.listed_in(&list) && b.listed_in(&list), "{list:?}");
    d.berth(["run", "--tcp", "1", "--start", "22504", "--", "true"])
        .output()
        .code(12)
        .says(&[&a.token, &format!("pid {} (sh, ", a.pid)]);
    // No re-claim was needed, by the commands or by their `berth run`s.
    for held in [&a, &b, &c] {
        assert_eq!(reclaim_lines(&d, &held.token), Vec::<String>::new());
    }

    // The commands finish normally; their blocks end with them.
    specific.send_line("done");
    wildcard.send_line("done");
    specific.wait().code(0);
    wildcard.wait().code(0);
    assert_eq!(d.list(), Vec::<Value>::new());
}

#[test]
fn held_reservations_survive_a_clean_restart() {
    // A grace period of a second: the test waits for its end.
    let mut d = Daemon::start_with("22300-22309", &["--grace", "1"]);
    let mut holder = run_sh(
        &d,
        &["--tcp", "2", "--start", "22800"],
        "echo ready; read x",
    )
    .spawn();
    assert_eq!(holder.next_line(), "ready");
    let held = Held::handed_over(&d, 22800, &holder);
    let unclaimed = Unclaimed::hold(&d, 22850, 1);

    // SIGTERM (systemctl restart): the journal is kept as it is.
    d.stop();
    unclaimed.wait_given_up();
    d.restart();
    // Right after the restart the command's block is its own, as it was, with no re-claim.
    let list = d.list();
    assert!(held.listed_in(&list), "{list:?}");
    d.berth(["run", "--tcp", "1", "--start", "22801", "--", "true"])
        .output()
        .code(12)
        .says(&[&held.token, &format!("pid {} (sh, ", held.pid)]);

    // Still after the grace period.
    unclaimed.wait_freed(&d, support::DEADLINE);
    let list = d.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(held.listed_in(&list), "{list:?}");
    d.berth(["run", "--tcp", "1", "--start", "22800", "--", "true"])
        .output()
        .code(12);
    assert_eq!(reclaim_lines(&d, &held.token), Vec::<String>::new());

    // It ends with the command.
    holder.send_line("done");
    holder.wait().code(0);
    assert_eq!(d.list(), Vec::<Value>::new());
}

#[test]
fn an_ended_command_is_freed_at_start_up_an_unclaimed_block_after_the_grace_period() {
    // As long as any wait of these tests may take: the commands that look at the held block
    // right after the restart surely run within it (the exact timing of the grace period is
    // tested with paused time in crates/berth-daemon/tests/integration/timeouts.rs).
    const GRACE: Duration = support::DEADLINE;
    let mut d = Daemon::start_with("22100-22109", &["--grace", &GRACE.as_secs().to_string()]);
    let mut run = run_sh(
        &d,
        &["--tcp", "4", "--start", "22700"],
        "echo ready; read x; exit 3",
    )
    .spawn();
    assert_eq!(run.next_line(), "ready");
    let held = Held::handed_over(&d, 22700, &run);
    let unclaimed = Unclaimed::hold(&d, 22750, 2);

    d.kill9();
    unclaimed.wait_given_up();
    // The command ends while the daemon is down; its `berth run` reaps it.
    run.send_line("done");
    poll_until("the command is gone", || is_gone(held.pid).then_some(()));
    d.restart();

    // Its block was freed at start-up, not held for the grace period.
    let list = d.list();
    assert!(row_at(&list, 22700).is_none(), "{list:?}");
    assert!(
        d.log().contains(
            "holding 1 runtime reservations for their owners; freed 1 whose owners are gone"
        ),
        "{}",
        d.log()
    );
    d.berth(["run", "--tcp", "4", "--start", "22700", "--", "true"])
        .output()
        .code(0);
    // `berth run` exits with the command's status once it sees the block gone.
    run.wait().code(3);

    // The block nobody re-claims is held for its owner meanwhile...
    let list = d.list();
    assert!(unclaimed.listed_in(&list), "{list:?}");
    d.berth(["run", "--tcp", "1", "--start", "22751", "--", "true"])
        .output()
        .code(12)
        .says(&[&unclaimed.token, &format!("pid {} (", std::process::id())]);
    assert!(!d.log().contains("not re-claimed"), "{}", d.log());

    // ...and freed at the end of the grace period.
    unclaimed.wait_freed(&d, GRACE + support::DEADLINE);
    d.berth(["run", "--tcp", "2", "--start", "22750", "--", "true"])
        .output()
        .code(0);
    assert_eq!(d.list(), Vec::<Value>::new());
    assert_eq!(reclaim_lines(&d, &held.token), Vec::<String>::new());
    assert_eq!(reclaim_lines(&d, &unclaimed.token), Vec::<String>::new());
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
