//! The report: one Markdown table row per measurement, then the ratios the performance targets are stated in.

use crate::args::Args;
use crate::load::{Kind, Measured, Plan, Sizes};

/// One measurement's figures.
struct Row {
    kind: Kind,
    clients: u32,
    live: u32,
    requests: usize,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    mean_us: f64,
    per_sec: f64,
    cpu_us: f64,
}

/// All figures of a run.
pub struct Report {
    header: String,
    rows: Vec<Row>,
}

impl Report {
    /// A report on a run with `args`.
    pub fn new(args: &Args, sizes: &Sizes, daemon_pid: u32, echo_pid: u32) -> Report {
        let pin = |cpu: Option<usize>| cpu.map_or("unpinned".to_owned(), |c| format!("CPU {c}"));
        let header = format!(
            "kernel sync {}; clients {}, daemon and echo server {}; daemon pid {daemon_pid}, echo pid {echo_pid}\n\
             frame payloads: acquire {} B → {} B, release {} B → {} B (plus 4-byte length prefixes)\n\
             requests per measurement ≤ {}, ≤ {} s each, warm-up {} per client",
            args.common.kernel_sync.as_str(),
            pin(args.common.client_cpu),
            pin(args.common.server_cpu),
            sizes.acquire,
            sizes.acquired,
            sizes.release,
            sizes.released,
            args.requests,
            args.max_secs,
            args.warmup,
        );
        Report {
            header,
            rows: Vec::new(),
        }
    }

    /// Adds a measurement.
    pub fn add(&mut self, plan: Plan, live: u32, m: Measured) {
        let n = m.latencies.len();
        let at = |q: usize| m.latencies[((n - 1) * q) / 100] as f64 / 1000.0;
        let sum: u64 = m.latencies.iter().sum();
        self.rows.push(Row {
            kind: plan.kind,
            clients: plan.clients,
            live,
            requests: n,
            p50_us: at(50),
            p99_us: at(99),
            max_us: m.latencies[n - 1] as f64 / 1000.0,
            mean_us: sum as f64 / n as f64 / 1000.0,
            per_sec: n as f64 / m.wall.as_secs_f64(),
            cpu_us: m.server_cpu_us as f64 / n as f64,
        });
    }

    /// Prints the table and the ratios on stdout.
    pub fn print(&self) {
        println!("{}\n", self.header);
        println!("| request | clients | live | n | p50 µs | p99 µs | max µs | mean µs | req/s | server CPU µs/req |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} |",
                r.kind.name(),
                r.clients,
                r.live,
                r.requests,
                r.p50_us,
                r.p99_us,
                r.max_us,
                r.mean_us,
                r.per_sec,
                r.cpu_us
            );
        }
        println!();
        let mut levels: Vec<(u32, u32)> = self.rows.iter().map(|r| (r.clients, r.live)).collect();
        levels.dedup();
        for (clients, live) in levels {
            let find = |kind| {
                self.rows
                    .iter()
                    .find(|r| r.kind == kind && r.clients == clients && r.live == live)
            };
            let ratio = |a: Option<&Row>, b: Option<&Row>, what: &str| {
                if let (Some(a), Some(b)) = (a, b) {
                    // /proc/<pid>/stat counts clock ticks (10 ms at 100 Hz): too few requests
                    // may show no CPU time at all.
                    let cpu = if b.cpu_us > 0.0 {
                        format!("{:.2}×", a.cpu_us / b.cpu_us)
                    } else {
                        "n/a (below clock-tick resolution: measure more requests)".to_owned()
                    };
                    println!(
                        "{clients} client(s), {live} live: {} / {}{what}: p50 {:.2}×, mean {:.2}×, server CPU {cpu}",
                        a.kind.name(),
                        b.kind.name(),
                        a.p50_us / b.p50_us,
                        a.mean_us / b.mean_us,
                    );
                }
            };
            let (held, unheld, echo) = (find(Kind::Held), find(Kind::Unheld), find(Kind::Echo));
            // BENCHMARKS.md's targets: held within 1.5× of the echo pair, unheld (the `berth run` path) within
            // 2×, and the daemon's CPU within 2× of the echo server's for both.
            ratio(held, echo, " (target ≤ 1.5×, CPU ≤ 2×)");
            ratio(unheld, echo, " (target ≤ 2×, CPU ≤ 2×)");
            ratio(held, unheld, " (target ≤ 2×)");
            // For reference: what the system calls a held pair must make cost alone, and how
            // close the daemon comes to that.
            let floor = find(Kind::Floor);
            ratio(floor, echo, " (reference: the calls alone, no target)");
            ratio(held, floor, " (reference, no target)");
        }
        let base = self
            .rows
            .iter()
            .filter(|r| r.clients == 1)
            .map(|r| r.live)
            .min();
        let top = self
            .rows
            .iter()
            .filter(|r| r.clients == 1)
            .map(|r| r.live)
            .max();
        if let (Some(base), Some(top)) = (base, top) {
            if top > base {
                for kind in [Kind::Held, Kind::Unheld] {
                    let at = |live| {
                        self.rows
                            .iter()
                            .find(|r| r.kind == kind && r.clients == 1 && r.live == live)
                    };
                    if let (Some(hi), Some(lo)) = (at(top), at(base)) {
                        println!(
                            "{}, 1 client: {top} live / {base} live: p50 {:.2}×, mean {:.2}× (target ≤ 2×)",
                            kind.name(),
                            hi.p50_us / lo.p50_us,
                            hi.mean_us / lo.mean_us
                        );
                    }
                }
            }
        }
    }
}
