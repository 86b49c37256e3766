//! an acknowledged persistent create or delete survives `kill -9` at any instant.
//!
//! What this checks, and what it does not. A child process (this test binary, re-run in
//! "child mode") executes a fixed program of store writes — persistent creates and deletes,
//! and journal inserts and removes — and prints one line after each call returns ("acked
//! <token>" after a create). The parent reads a random-ish number of acks, kills the child
//! with SIGKILL (by pid; `Child::kill`), reads whatever else the child managed to print, and
//! reopens the database. After k acknowledged steps the database must hold exactly the state
//! after step k, or after step k + 1 (the step in flight when the signal landed may or may not
//! have committed): every acknowledged write is there, and nothing that was not requested
//! exists. Eight rounds run on the same file, so recovery after a crash is crashed again.
//!
//! Persistent rows live in the SQLite database; journal rows in the runtime journal file beside
//! it. It covers process death, which leaves the operating system's page cache intact. It does
//! not cover power loss (that is what `synchronous = FULL` on persistent commits is for, and
//! the store's unit tests check only that the setting is in force), nor the daemon: a
//! daemon-level crash test is separate.

// clippy's test allowances cover `#[test]` functions, not the helpers.
use crate::common;

use std::collections::BTreeMap;
use std::env;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_core::{PortRange, Protocol};
use berth_store::{
    runtime_journal_path, JournalOp, JournalRow, PersistentRow, RuntimeJournal, Store,
};
use common::{journaled, token};

/// Set (to the database path) in the child; selects child mode.
const CHILD_DB: &str = "BERTH_STORE_CRASH_CHILD_DB";
/// The round number, which seeds the child's tokens.
const CHILD_ROUND: &str = "BERTH_STORE_CRASH_CHILD_ROUND";
const ROUNDS: u64 = 8;
/// How long the child may go without printing a line: generous, for a busy machine.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

/// One store call of the child's program.
#[derive(Debug, Clone)]
enum Step {
    Create(PersistentRow),
    Delete(u64),
    Journal(JournalRow),
    Unjournal(u64),
}

impl Step {
    /// The line the child prints once the call has returned.
    fn ack(&self) -> String {
        match self {
            Step::Create(row) => format!("acked {}", row.token.get()),
            Step::Delete(t) => format!("deleted {t}"),
            Step::Journal(row) => format!("journaled {}", row.token.get()),
            Step::Unjournal(t) => format!("unjournaled {t}"),
        }
    }
}

/// splitmix64: a fixed, well-spread sequence; about half the tokens are >= 2^63.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

fn persistent_token(round: u64, i: u64) -> u64 {
    mix(round << 32 | i)
}

fn journal_token(round: u64, i: u64) -> u64 {
    mix(round << 32 | 1 << 31 | i)
}

/// The child's program for `round`: per iteration i a create and a journal insert; every
/// fifth iteration also deletes (and unjournals) what iteration i - 2 made.
fn program(round: u64) -> impl Iterator<Item = Step> {
    (0..100_000u64).flat_map(move |i| {
        let protocol = if i % 2 == 0 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let start = u16::try_from(1 + (i * 7919) % 60_000).unwrap();
        let count = u16::try_from(1 + i % 4).unwrap();
        let create = Step::Create(PersistentRow {
            token: token(persistent_token(round, i)),
            protocol,
            range: PortRange::new(start, count).unwrap(),
            allow_users: vec![u32::try_from(i).unwrap()],
            allow_groups: vec![u32::try_from(round).unwrap()],
            created_at_ms: i,
            created_by_uid: 0,
            label: None,
            name: None,
        });
        let mut jrow = journaled(journal_token(round, i), start, count);
        jrow.acquired_at_ms = round * 1_000_000 + i;
        let mut steps = vec![create, Step::Journal(jrow)];
        if i % 5 == 4 {
            steps.push(Step::Delete(persistent_token(round, i - 2)));
            steps.push(Step::Unjournal(journal_token(round, i - 2)));
        }
        steps
    })
}

/// The store's contents, by token.
type State = (BTreeMap<u64, PersistentRow>, BTreeMap<u64, JournalRow>);

fn apply(state: &mut State, step: &Step) {
    match step {
        Step::Create(row) => {
            state.0.insert(row.token.get(), row.clone());
        }
        Step::Delete(t) => {
            state.0.remove(t);
        }
        Step::Journal(row) => {
            state.1.insert(row.token.get(), row.clone());
        }
        Step::Unjournal(t) => {
            state.1.remove(t);
        }
    }
}

/// The boot the tests claim to run in.
const BOOT: &str = "crash-test-boot";

fn load(path: &Path) -> State {
    let (persistent, legacy) = Store::open(path).unwrap().load().unwrap();
    assert!(
        legacy.is_empty(),
        "nothing writes the database's old journal table"
    );
    let (_, loaded) = RuntimeJournal::open(&runtime_journal_path(path), BOOT).unwrap();
    (
        persistent.into_iter().map(|r| (r.token.get(), r)).collect(),
        loaded
            .rows
            .into_iter()
            .map(|r| (r.token.get(), r))
            .collect(),
    )
}

/// Child mode: runs the program until killed. Does nothing in a normal test run.
#[test]
fn crash_child() {
    let Some(path) = env::var_os(CHILD_DB) else {
        return;
    };
    let round: u64 = env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let mut store = Store::open(Path::new(&path)).unwrap();
    let (mut journal, _) =
        RuntimeJournal::open(&runtime_journal_path(Path::new(&path)), BOOT).unwrap();
    for step in program(round) {
        match &step {
            Step::Create(row) => store.create_persistent(row).unwrap(),
            Step::Delete(t) => assert!(store.delete_persistent(token(*t)).unwrap()),
            Step::Journal(row) => journal.apply(&JournalOp::Insert(row.clone())).unwrap(),
            Step::Unjournal(t) => journal.apply(&JournalOp::Remove(token(*t))).unwrap(),
        }
        // stdout is line-buffered: the line is in the pipe when println returns.
        println!("{}", step.ack());
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    let exe = env::current_exe().unwrap();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mut state: State = Default::default();
    for round in 1..=ROUNDS {
        let kill_after = 5 + u64::from(nanos / 7 + u32::try_from(round).unwrap() * 13) % 40;
        let mut child = Command::new(&exe)
            .args(["--exact", "crash::crash_child", "--nocapture"])
            .env(CHILD_DB, &path)
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Read on a thread of its own so that a child that stops answering fails the round
        // (killed at the deadline) instead of hanging the suite.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut line = String::new();
            match out.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if tx.send(line).is_err() => break,
                Ok(_) => {}
            }
        });
        let mut steps = program(round);
        let mut done = 0usize;
        let mut creates = 0u64;
        let mut killed = false;
        loop {
            let line = match lines.recv_timeout(CHILD_DEADLINE) {
                Ok(line) => line,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("round {round}: the child said nothing for {CHILD_DEADLINE:?}");
                }
            };
            // A line cut short by the kill was never acknowledged.
            let Some(text) = line.strip_suffix('\n') else {
                break;
            };
            let Some(word) = ["acked ", "deleted ", "unjournaled ", "journaled "]
                .iter()
                .find_map(|w| text.find(w))
            else {
                continue; // the test harness's own output
            };
            let step = steps.next().unwrap();
            assert_eq!(&text[word..], step.ack(), "round {round}, step {done}");
            apply(&mut state, &step);
            done += 1;
            if matches!(step, Step::Create(_)) {
                creates += 1;
                if creates == kill_after && !killed {
                    child.kill().unwrap(); // SIGKILL to the child's pid
                    killed = true;
                }
            }
        }
        let status = child.wait().unwrap();
        assert!(killed, "the child stopped by itself: {status}");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );

        let found = load(&path);
        let mut with_next = state.clone();
        apply(&mut with_next, &steps.next().unwrap());
        assert!(
            found == state || found == with_next,
            "round {round}: after {done} acknowledged steps the store holds neither their \
             result nor that plus the step in flight:\n found {} persistent, {} journaled\n \
             want {} / {} (or {} / {})",
            found.0.len(),
            found.1.len(),
            state.0.len(),
            state.1.len(),
            with_next.0.len(),
            with_next.1.len()
        );
        eprintln!(
            "round {round}: killed after {done} acknowledged steps; in-flight step {}",
            if found == state && found != with_next {
                "not committed"
            } else if found == with_next && found != state {
                "committed"
            } else {
                "a no-op"
            }
        );
        state = found;
    }
    assert!(!state.0.is_empty());
}
