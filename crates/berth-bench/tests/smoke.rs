//! The load generator runs end to end with tiny counts against the debug `berth` binary and
//! reports sane figures (no timing assertions: figures belong in BENCHMARKS.md).

#![forbid(unsafe_code)]
#![expect(
    clippy::expect_used,
    reason = "a test: set-up failures should stop it loudly"
)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use berth_testkit::deadline::{output_within, wait_within};
use berth_testkit::needs::{self, Need};

const BENCH: &str = env!("CARGO_BIN_EXE_berth-bench");

/// How long one `berth-bench` run may take: its own measurements stop after `--max-secs`.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// `berth-bench ARGS… --berth-bin BERTH`, to its end, with a deadline.
fn bench(args: &[&str]) -> Output {
    output_within(
        Command::new(BENCH)
            .args(args)
            .arg("--berth-bin")
            .arg(berth_bin())
            .env_remove("BERTH_SOCKET"),
        RUN_LIMIT,
    )
}

/// `$BERTH_BIN`, else the `berth` built next to this package's binary (`cargo test
/// --workspace` builds it; otherwise it is built here).
fn berth_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BERTH_BIN") {
        return bin.into();
    }
    let beside = PathBuf::from(BENCH).with_file_name("berth");
    if !beside.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo)
            .args(["build", "-p", "berth-cli", "--bin", "berth"])
            .spawn()
            .expect("run cargo build -p berth-cli");
        let status = wait_within(&mut build, RUN_LIMIT, "cargo build -p berth-cli");
        assert!(status.success(), "cargo build -p berth-cli failed");
    }
    beside
}

#[test]
fn runs_and_reports_every_measurement() {
    let out = bench(&[
        "--requests",
        "40",
        "--warmup",
        "2",
        "--clients",
        "2",
        "--max-secs",
        "10",
        "--live",
        "3",
        "--scale",
        "20",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "berth-bench failed:\n{stdout}\n{stderr}"
    );

    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| request"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    // 5 kinds × 2 concurrency levels, then held and unheld at 20 live.
    assert_eq!(rows.len(), 12, "{stdout}");
    for row in &rows {
        let n: usize = row[3].parse().expect("request count");
        assert!(n > 0 && n <= 40, "{row:?}");
        let num = |i: usize| -> f64 { row[i].parse().expect("a number") };
        let (p50, p99, max, rate) = (num(4), num(5), num(6), num(8));
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{row:?}");
        assert!(rate > 0.0, "{row:?}");
        assert!(num(9) >= 0.0, "{row:?}");
    }
    assert!(rows.iter().any(|r| r[2] == "20"), "{stdout}");
    assert!(stdout.contains("(held) / 2 echo round trips"), "{stdout}");
    assert!(
        stdout.contains("session floor (2 answers' calls) / 2 echo round trips"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(held) / session floor (2 answers' calls)"),
        "{stdout}"
    );
    assert!(stdout.contains("20 live / 3 live"), "{stdout}");
}

/// Runs `berth-bench ARGS…` against the debug `berth`; its stdout, after checking it succeeded.
fn run_mode(args: &[&str]) -> String {
    let out = bench(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "berth-bench {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// The figure rows (`| what | clients | n | p50 | p99 | max | mean | req/s | cpu |`) of a
/// mode's table, checked for sanity.
fn figure_rows(stdout: &str) -> Vec<Vec<String>> {
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .filter(|l| {
            l.starts_with("| ") && !l.starts_with("| request") && l.split('|').count() == 11
        })
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect();
    for row in &rows {
        let num = |i: usize| -> f64 { row[i].parse().expect("a number") };
        assert!(num(2) > 0.0, "{row:?}");
        let (p50, p99, max) = (num(3), num(4), num(5));
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{row:?}");
        assert!(num(7) > 0.0, "{row:?}");
        assert!(row[8] == "–" || num(8) >= 0.0, "{row:?}");
    }
    rows
}

#[test]
fn portserver_mode_measures_berth_the_floor_and_the_echo_and_portserver_py_when_installed() {
    let stdout = run_mode(&[
        "portserver",
        "--requests",
        "20",
        "--warmup",
        "2",
        "--clients",
        "2",
        "--python-requests",
        "10",
        "--max-secs",
        "10",
    ]);
    let rows = figure_rows(&stdout);
    let has = |what: &str, clients: &str| rows.iter().any(|r| r[0] == what && r[1] == clients);
    for clients in ["1", "2"] {
        assert!(
            has("raw client → connect-per-request echo", clients),
            "{stdout}"
        );
        assert!(has("raw client → floor server", clients), "{stdout}");
        assert!(has("raw client → berth --portserver", clients), "{stdout}");
    }
    assert!(stdout.contains("berth / floor throughput"), "{stdout}");
    assert!(stdout.contains("berth / echo throughput"), "{stdout}");
    // portserver.py and the Python client need Python with portpicker (CI installs it); without
    // them the run says what it skipped, and so does this test.
    assert!(
        has("raw client → portserver.py", "1") || stdout.contains("portserver.py not measured"),
        "{stdout}"
    );
    if !has("raw client → portserver.py", "1") {
        needs::skip(
            Need::Portpicker,
            "part: portserver.py and pick_unused_port() were not measured (needs Python's \
             portpicker)",
        );
    } else {
        assert!(
            has("pick_unused_port() → berth --portserver", "1"),
            "{stdout}"
        );
        assert!(has("pick_unused_port() → portserver.py", "1"), "{stdout}");
        assert!(has("pick_unused_port() → floor server", "1"), "{stdout}");
        assert!(
            stdout.contains("berth / portserver.py throughput"),
            "{stdout}"
        );
    }
    assert!(stdout.contains("berth held"), "{stdout}");
}

#[test]
fn scale_mode_reports_latency_and_memory() {
    let stdout = run_mode(&[
        "scale",
        "--clients",
        "5",
        "--reservations",
        "20",
        "--rate",
        "200",
        "--secs",
        "0.2",
        "--cycles",
        "2",
    ]);
    let rows = figure_rows(&stdout);
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(rows.iter().all(|r| r[1] == "5"), "{stdout}");
    for step in [
        "5 clients holding 20 reservations",
        "cycle 2: 5 clients holding 20",
        "cycle 2: all left",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("| {step} |")) && l.contains("MiB")),
            "{step}: {stdout}"
        );
    }
    assert!(stdout.contains("peak resident memory"), "{stdout}");
    assert!(stdout.contains("largest anonymous part"), "{stdout}");
    assert!(stdout.contains("berth / echo p99"), "{stdout}");
}

#[test]
fn reclaim_mode_times_restarts_and_loses_nothing() {
    let stdout = run_mode(&[
        "reclaim",
        "--clients",
        "3",
        "--reservations",
        "6",
        "--restarts",
        "2",
    ]);
    let rows = figure_rows(&stdout);
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows.iter().all(|r| r[1] == "3" && r[2] == "3"), "{stdout}");
    assert!(stdout.contains("restart 2 (new daemon pid "), "{stdout}");
    assert!(stdout.contains("baseline: 3 fresh clients"), "{stdout}");
}

#[test]
fn enforce_mode_measures_each_kind_with_the_programs_off_and_on() {
    // Loading cgroup programs takes real root (not a user namespace's); the run stays in a
    // network namespace of its own, as BENCHMARKS.md runs it.
    match needs::namespaces() {
        None => return,
        Some(ns) if ns.in_user_namespace() => {
            needs::skip(Need::Users, "enforce mode needs real root (BPF, cgroup v2)");
            return;
        }
        Some(_) => {}
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let Some(hierarchy) = info.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2")
            .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
    }) else {
        needs::skip(Need::Kernel, "no cgroup v2 hierarchy is mounted");
        return;
    };
    // The run creates its subtree and removes it at the end.
    let subtree = hierarchy.join(format!("berth-bench-test-{}", std::process::id()));
    let out = output_within(
        Command::new("unshare")
            .args(["--net", "--", BENCH, "enforce", "--subtree"])
            .arg(&subtree)
            .args(["--rounds", "1", "--requests", "40", "--warmup", "2"])
            .args(["--max-secs", "10", "--berth-bin"])
            .arg(berth_bin())
            .env_remove("BERTH_SOCKET"),
        RUN_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "berth-bench enforce failed:\n{stdout}\n{stderr}"
    );
    let rows = figure_rows(&stdout);
    assert_eq!(rows.len(), 8, "{stdout}");
    for phase in ["off 1", "on 1"] {
        for kind in ["(held)", "(unheld)", "associate", "echo"] {
            assert!(
                rows.iter()
                    .any(|r| r[0].starts_with(phase) && r[0].contains(kind)),
                "{phase} {kind}: {stdout}"
            );
        }
    }
    assert!(stdout.contains("medians over 1 round"), "{stdout}");
    assert!(!subtree.exists(), "{} was left behind", subtree.display());
}
