//! Every mirror against the table, as a model test with fault injection, in a private network
//! namespace (root): one client's grants (held or not, one protocol or both) and releases, the
//! database and the kernel's list failing and healing, and another tool writing the list — read,
//! add its own entry, write back; or write back a list it read before the last step (a stale
//! read-modify-write). After each step with nothing failing, every mirror must come to equal
//! the model: the kernel's list exactly the tool's entries and the live reservations' ports,
//! a hold socket on exactly the held ports. Every write kernel sync made is checked as it was
//! made (the daemon's own log of them, not samples of the list): a replacing one fits one
//! kernel write, and none leaves out a reservation live across the step it was made in, or an
//! entry of the tool's. At the end a restart: the new daemon lists exactly the reservations the
//! client holds, and the list still holds their ports.

use std::collections::BTreeSet;

use berth::{Client, Protocol, Reservation, Token};
use berth_testkit::TestDaemon;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

/// The pool; the other tool's entries lie outside it.
const POOL: (u16, u16) = (20_000, 20_039);
const THEIRS: std::ops::Range<u16> = 21_000..21_008;
const LIST: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        count: u16,
        held: bool,
    },
    AcquireBoth {
        count: u16,
    },
    Release(usize),
    /// The store fails from the n-th write on.
    FailStoreAfter(u32),
    HealStore,
    FailKernel,
    HealKernel,
    /// Another tool reads the list, adds its port, writes it back.
    TheirsAdd(u16),
    /// Another tool writes back the list it read before the last step, with its port added.
    TheirsStale(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u16..4, any::<bool>()).prop_map(|(count, held)| Op::Acquire { count, held }),
        1 => (1u16..3).prop_map(|count| Op::AcquireBoth { count }),
        4 => (0usize..8).prop_map(Op::Release),
        1 => (0u32..3).prop_map(Op::FailStoreAfter),
        1 => Just(Op::HealStore),
        1 => Just(Op::FailKernel),
        1 => Just(Op::HealKernel),
        1 => THEIRS.prop_map(Op::TheirsAdd),
        1 => THEIRS.prop_map(Op::TheirsStale),
    ]
}

/// The model: what the client holds and what the other tool listed.
#[derive(Default)]
struct Model {
    held: Vec<Reservation>,
    theirs: BTreeSet<u16>,
    store_failing: bool,
    kernel_failing: bool,
}

impl Model {
    /// Every port the live reservations have.
    fn ports(&self) -> BTreeSet<u16> {
        self.held.iter().flat_map(Reservation::ports).collect()
    }

    /// The ports of `protocol` with a hold socket: those of held reservations.
    fn holds(&self, protocol: Protocol) -> BTreeSet<u16> {
        self.held
            .iter()
            .filter(|r| r.protocol() == protocol && r.info().held)
            .flat_map(Reservation::ports)
            .collect()
    }
}

/// Runs the cases on this thread (in the private namespace), each on a runtime of its own.
pub(super) fn every_mirror_equals_the_table() {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 16,
        max_shrink_iters: 16,
        ..ProptestConfig::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..20), |ops| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn config(c: &mut berth_daemon::Config) {
    c.kernel_sync = berth_daemon::KernelSync::On;
    // Every grant and release writes the list: no ports listed ahead.
    c.listed_ahead = 0;
    c.faults.log_kernel_writes();
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    // Each case starts from an empty list (the last case's clean stop kept its live owner's).
    set_list(&BTreeSet::new());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let daemon = TestDaemon::with_db(&db, POOL.0, POOL.1, config);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let mut model = Model::default();
    let mut read_before = listed();
    for op in ops {
        let (writes_before, live_before) = (daemon.kernel_writes().len(), model.ports());
        let theirs_before = model.theirs.clone();
        let read_now = listed();
        step(&daemon, &client, &mut model, op.clone(), &read_before).await;
        read_before = read_now;
        if !model.store_failing && !model.kernel_failing {
            converged(&model).await?;
        }
        // The writes made during this step (and those it left pending, made by now when
        // nothing fails).
        let stable: BTreeSet<u16> = live_before.intersection(&model.ports()).copied().collect();
        let kept: BTreeSet<u16> = theirs_before.intersection(&model.theirs).copied().collect();
        for write in daemon.kernel_writes().iter().skip(writes_before) {
            if write.replaced {
                prop_assert!(
                    write.bytes <= 4095,
                    "a replacing write of {} bytes",
                    write.bytes
                );
            }
            for port in stable.iter().chain(&kept) {
                prop_assert!(
                    write.list.contains(*port),
                    "after {op:?}: a write left out port {port}, listed across the step: {write:?}"
                );
            }
        }
    }
    daemon.fail_store(false);
    daemon.fail_kernel(false);
    model.store_failing = false;
    model.kernel_failing = false;
    converged(&model).await?;
    // The live reservations' ports were listed by writes of the daemon's, each in the log.
    prop_assert!(
        model.held.is_empty() || !daemon.kernel_writes().is_empty(),
        "no write logged"
    );
    let expected: BTreeSet<Token> = model.held.iter().map(Reservation::token).collect();
    let ports = model.ports();
    // The handles must not release anything while the daemon restarts.
    std::mem::forget(std::mem::take(&mut model.held));
    daemon.shutdown().await;
    // The clean stop kept the live owner's (this process's) entries listed.
    let want = union(&ports, &model.theirs);
    prop_assert_eq!(&listed(), &want, "after the clean stop");
    let daemon = TestDaemon::with_db(&db, POOL.0, POOL.1, config);
    let admin = Client::connect_to(&daemon.socket).await.unwrap();
    let tokens: BTreeSet<Token> = crate::common::tokens(&admin).await.into_iter().collect();
    prop_assert_eq!(&tokens, &expected, "the restarted daemon's reservations");
    prop_assert_eq!(&listed(), &want, "after the restart");
    drop((client, admin));
    daemon.shutdown().await;
    Ok(())
}

async fn step(
    daemon: &TestDaemon,
    client: &Client,
    model: &mut Model,
    op: Op,
    stale: &BTreeSet<u16>,
) {
    match op {
        Op::Acquire { count, held } => {
            let got = if held {
                client.acquire(Protocol::Tcp, 0, count).await
            } else {
                client.acquire_unheld(Protocol::Udp, 0, count).await
            };
            // Refused only while something fails (or the small pool is full).
            if let Ok(r) = got {
                model.held.push(r);
            }
        }
        Op::AcquireBoth { count } => {
            if let Ok((tcp, udp)) = client.acquire_same_ports(0, count).await {
                model.held.push(tcp);
                model.held.push(udp);
            }
        }
        Op::Release(i) => {
            if !model.held.is_empty() {
                let r = model.held.remove(i % model.held.len());
                // A release cannot be refused, failing store or not.
                r.release().await.unwrap();
            }
        }
        Op::FailStoreAfter(n) => {
            daemon.fail_store_after(n);
            model.store_failing = true;
        }
        Op::HealStore => {
            daemon.fail_store(false);
            model.store_failing = false;
        }
        Op::FailKernel => {
            daemon.fail_kernel(true);
            model.kernel_failing = true;
        }
        Op::HealKernel => {
            daemon.fail_kernel(false);
            model.kernel_failing = false;
        }
        // While something fails the mirrors are not known to be settled, and a write of the
        // daemon's still to come could race the tool's read and write (and drop its entry, as
        // any two read-modify-writers may): the tool writes only after a settled step.
        Op::TheirsAdd(_) | Op::TheirsStale(_) if model.store_failing || model.kernel_failing => {}
        Op::TheirsAdd(port) => {
            let mut list = listed();
            list.insert(port);
            set_list(&list);
            model.theirs.insert(port);
        }
        Op::TheirsStale(port) => {
            let mut list = stale.clone();
            list.insert(port);
            set_list(&list);
            // The tool's entries are what it wrote; berth's ports in it are echoes or its own.
            model.theirs = list
                .iter()
                .copied()
                .filter(|p| THEIRS.contains(p))
                .collect();
        }
    }
}

/// Waits until the list holds exactly the tool's entries and the live reservations' ports,
/// and exactly the held ports have hold sockets.
async fn converged(model: &Model) -> Result<(), TestCaseError> {
    let want = union(&model.ports(), &model.theirs);
    let holds = [Protocol::Tcp, Protocol::Udp].map(|p| (p, model.holds(p)));
    let deadline = std::time::Instant::now() + berth_testkit::deadline::DEADLINE;
    loop {
        let list = listed();
        let held_now = holds.iter().all(|(p, want)| held_ports(*p) == *want);
        if list == want && held_now {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let now: Vec<_> = holds.iter().map(|(p, _)| (p, held_ports(*p))).collect();
            return Err(TestCaseError::fail(format!(
                "mirrors never came to equal the model: list {list:?}, want {want:?}; holds {now:?}, want {holds:?}"
            )));
        }
        // A deadline, polled: the writer reads an idle list again every 2 s.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The pool's ports that a bind without `SO_REUSEADDR` finds in use: those with a hold socket
/// (nothing else binds the pool in this namespace).
fn held_ports(protocol: Protocol) -> BTreeSet<u16> {
    (POOL.0..=POOL.1)
        .filter(|&port| {
            berth_os::hold::bind(protocol, port, berth_os::hold::Cover::all(true))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
        })
        .collect()
}

fn union(a: &BTreeSet<u16>, b: &BTreeSet<u16>) -> BTreeSet<u16> {
    a.union(b).copied().collect()
}

/// The list, read on this thread (in the private namespace).
fn listed() -> BTreeSet<u16> {
    super::listed()
}

/// Writes the list whole, as another tool would (this thread's namespace's).
fn set_list(ports: &BTreeSet<u16>) {
    let text: Vec<String> = ports.iter().map(u16::to_string).collect();
    std::fs::write(LIST, format!("{}\n", text.join(","))).unwrap();
}
