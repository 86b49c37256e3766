//! The load generator runs end to end with tiny counts against the debug `berth` binary and
//! reports sane figures (no timing assertions: figures belong in BENCHMARKS.md).

#![expect(
    clippy::expect_used,
    reason = "a test: set-up failures should stop it loudly"
)]

use std::path::PathBuf;
use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_berth-bench");

/// `$BERTH_BIN`, else the `berth` built next to this package's binary (`cargo test
/// --workspace` builds it; otherwise it is built here).
fn berth_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BERTH_BIN") {
        return bin.into();
    }
    let beside = PathBuf::from(BENCH).with_file_name("berth");
    if !beside.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "berth-cli", "--bin", "berth"])
            .status()
            .expect("run cargo build -p berth-cli");
        assert!(status.success(), "cargo build -p berth-cli failed");
    }
    beside
}

#[test]
fn runs_and_reports_every_measurement() {
    let out = Command::new(BENCH)
        .args(["--requests", "40", "--warmup", "2", "--clients", "2"])
        .args(["--max-secs", "10", "--live", "3", "--scale", "20"])
        .arg("--berth-bin")
        .arg(berth_bin())
        .env_remove("BERTH_SOCKET")
        .output()
        .expect("run berth-bench");
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
    // 4 kinds × 2 concurrency levels, then held and unheld at 20 live.
    assert_eq!(rows.len(), 10, "{stdout}");
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
    assert!(stdout.contains("20 live / 3 live"), "{stdout}");
}
