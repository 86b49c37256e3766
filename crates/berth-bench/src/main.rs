//! `berth-bench`: a load generator for berth (targets and figures: `BENCHMARKS.md`).
//!
//! It starts a real `berth daemon` (the binary named by `--berth-bin` or `$BERTH_BIN`) on a
//! socket in a temporary directory, and a tiny echo server of its own (this binary again, as a
//! child), then measures side by side, in one run:
//! - acquire+release of one port over the real socket with `berth::Client`, held
//!   (`Client::acquire`) and unheld (`Client::acquire_unheld`), with 1 and N concurrent clients;
//! - two echo round trips on a persistent connection with the frame sizes of that pair (the
//!   physical limit of the protocol's shape);
//! - a connect-per-request echo (`"<pid>\n"` in, `"<port>\n"` out: the portpicker shape);
//! - optionally, acquire+release with many live reservations (`--scale`).
//!
//! Four more modes are runs of their own: `portserver` (berth's portpicker endpoint against
//! Google's portserver.py, a *floor* server making only the system calls an answer must make,
//! and the connect-per-request echo, through a raw client and the real Python client), `scale` (1,000 clients: the daemon's memory, latency at a paced load),
//! `reclaim` (the time to re-claim runtime reservations after a restart) and `enforce` (acquire
//! and associate with enforce mode's programs detached and attached, alternately).
//!
//! Every measurement is bounded by a request count and a duration, and reports p50, p99, max,
//! throughput, and the server's CPU time per request (`/proc/<pid>/stat` utime+stime).
//! Clients run one OS thread each, with a current-thread tokio runtime.
//!
//! # Layout
//! - `args`: the command line.
//! - `servers`: starting the daemon and the echo server, pinning, CPU time.
//! - `echo`: the echo server (child mode) and its clients.
//! - `floor`: the portpicker floor server (child mode): only the system calls an answer must
//!   make.
//! - `load`: running a measurement over N client threads; statistics.
//! - `report`: the table and the ratios.
//! - `portserver`, `scale`, `reclaim`, `enforce`: the other modes; `many`: many clients on one thread;
//!   `table`: their figures.

#![forbid(unsafe_code)]

mod args;
mod echo;
mod enforce;
mod floor;
mod load;
mod many;
mod portserver;
mod reclaim;
mod report;
mod scale;
mod servers;
mod table;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use crate::args::{Args, Mode};
use crate::load::{Kind, Plan};
use crate::report::Report;

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.mode {
        Some(Mode::EchoServer(ref echo)) => echo::serve(echo),
        Some(Mode::FloorServer(ref floor)) => floor::serve(floor),
        Some(Mode::Portserver(ref ps)) => portserver::run(ps),
        Some(Mode::Scale(ref scale)) => scale::run(scale),
        Some(Mode::Reclaim(ref reclaim)) => reclaim::run(reclaim),
        Some(Mode::Enforce(ref enforce)) => enforce::run(enforce),
        None => run(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let berth_bin = servers::prepare(&args.common)?;
    let dir = servers::run_dir()?;
    let daemon = servers::Daemon::start(&berth_bin, dir.paths(), &args.common, &[])?;
    let echo = servers::EchoServer::start(dir.runtime(), args.common.server_cpu)?;
    let sizes = load::frame_sizes(&daemon.socket)?;

    let mut report = Report::new(args, &sizes, daemon.pid(), echo.pid());
    let mut levels = vec![1];
    if args.clients > 1 {
        levels.push(args.clients);
    }
    let live = load::Filler::start(&daemon.socket, args.live)?;
    for &clients in &levels {
        for kind in [
            Kind::Echo,
            Kind::Floor,
            Kind::Held,
            Kind::Unheld,
            Kind::ConnectEcho,
        ] {
            if !args.wants(kind) {
                continue;
            }
            let plan = Plan {
                kind,
                clients,
                requests: args.requests,
                warmup: args.warmup,
                max_secs: args.max_secs,
            };
            let server = match kind {
                Kind::Floor => &echo.floor,
                _ if kind.is_echo() => &echo.target,
                _ => &daemon.target,
            };
            let result = load::measure(&plan, server, &sizes)
                .with_context(|| format!("measuring {} with {clients} clients", kind.name()))?;
            report.add(plan, live.count(), result);
        }
    }
    let mut live = live;
    for &level in &args.scale {
        live.grow_to(level)?;
        for kind in [Kind::Held, Kind::Unheld] {
            let plan = Plan {
                kind,
                clients: 1,
                requests: args.requests,
                warmup: args.warmup,
                max_secs: args.max_secs,
            };
            let result = load::measure(&plan, &daemon.target, &sizes)
                .with_context(|| format!("measuring {} at {level} live", kind.name()))?;
            report.add(plan, live.count(), result);
        }
    }
    live.stop();
    report.print();
    daemon.stop()?;
    drop(echo);
    Ok(())
}
