//! A plain figures table for the modes beside the main one (portserver, scale, reclaim):
//! latency percentiles, throughput and the server's CPU time per request.

use std::time::Duration;

/// One measurement's figures.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Requests measured.
    pub n: usize,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Largest, µs.
    pub max_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Requests per second of wall time.
    pub per_sec: f64,
    /// The server's CPU time per request, µs (when a server was measured).
    pub cpu_us: Option<f64>,
}

impl Summary {
    /// Figures of `latencies` (nanoseconds, any order; at least one) over `wall`, with the
    /// server's CPU time `cpu_us` over the same span.
    pub fn of(latencies: &mut [u64], wall: Duration, cpu_us: Option<u64>) -> Summary {
        latencies.sort_unstable();
        let n = latencies.len().max(1);
        let at = |q: usize| latencies.get(((n - 1) * q) / 100).copied().unwrap_or(0) as f64 / 1e3;
        let sum: u64 = latencies.iter().sum();
        Summary {
            n: latencies.len(),
            p50_us: at(50),
            p99_us: at(99),
            max_us: latencies.last().copied().unwrap_or(0) as f64 / 1e3,
            mean_us: sum as f64 / n as f64 / 1e3,
            per_sec: latencies.len() as f64 / wall.as_secs_f64().max(1e-9),
            cpu_us: cpu_us.map(|c| c as f64 / n as f64),
        }
    }
}

/// Rows of `| what | clients | n | p50 | p99 | max | mean | req/s | server CPU µs/req |`.
#[derive(Default)]
pub struct Table {
    rows: Vec<(String, u32, Summary)>,
}

impl Table {
    /// Adds a row.
    pub fn add(&mut self, what: impl Into<String>, clients: u32, s: Summary) {
        self.rows.push((what.into(), clients, s));
    }

    /// The row named `what` with `clients` clients.
    pub fn get(&self, what: &str, clients: u32) -> Option<&Summary> {
        self.rows
            .iter()
            .find(|(w, c, _)| w == what && *c == clients)
            .map(|(_, _, s)| s)
    }

    /// Prints it on stdout.
    pub fn print(&self) {
        println!("| request | clients | n | p50 µs | p99 µs | max µs | mean µs | req/s | server CPU µs/req |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (what, clients, s) in &self.rows {
            let cpu = s.cpu_us.map_or("–".to_owned(), |c| format!("{c:.1}"));
            println!(
                "| {what} | {clients} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {cpu} |",
                s.n, s.p50_us, s.p99_us, s.max_us, s.mean_us, s.per_sec
            );
        }
        println!();
    }
}

/// `a / b` as "1.23×", or "n/a" when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "n/a".to_owned()
    }
}

/// Resident memory of process `pid` from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the peak of `VmRSS`.
    pub hwm: u64,
    /// `RssAnon`: of `rss`, anonymous memory (the heap, stacks).
    pub anon: u64,
    /// `RssFile` + `RssShmem`: of `rss`, mapped files (the binary, SQLite's shared memory).
    pub file: u64,
}

/// Reads process `pid`'s [`Memory`].
pub fn memory_kib(pid: u32) -> anyhow::Result<Memory> {
    use anyhow::Context;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")? + field("RssShmem:")?,
    })
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
