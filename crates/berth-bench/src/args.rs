//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::load::Kind;

/// Measures berth's acquire+release over the real socket against echo baselines, in one run.
#[derive(Debug, Parser)]
#[command(name = "berth-bench", args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Internal modes (the echo server child).
    #[command(subcommand)]
    pub mode: Option<Mode>,
    /// The `berth` binary to start the daemon from (use a --release build for figures).
    #[arg(long, value_name = "PATH", env = "BERTH_BIN")]
    pub berth_bin: Option<PathBuf>,
    /// The daemon's --kernel-sync. `on` writes net.ipv4.ip_local_reserved_ports: run it only
    /// as root inside a private network namespace (`unshare -n`), never on the host.
    #[arg(long, value_name = "MODE", default_value = "off")]
    pub kernel_sync: Sync,
    /// The daemon's authority beacon name [default: berth-bench-<pid>], so the benchmark's
    /// daemon never coordinates with (or is refused by) another daemon in this namespace.
    #[arg(long, value_name = "NAME")]
    pub authority: Option<String>,
    /// The daemon's wildcard pool (large enough for --scale).
    #[arg(long, value_name = "LO-HI", default_value = "20000-60999")]
    pub pool: String,
    /// The second concurrency level (the first is 1 client). Each client is a thread with its
    /// own connection and a current-thread tokio runtime.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub clients: u32,
    /// Requests measured per measurement (all clients together); an acquire+release pair, or
    /// its two echo round trips, is one request.
    #[arg(long, value_name = "R", default_value_t = 20_000)]
    pub requests: u64,
    /// Unmeasured requests per client before each measurement.
    #[arg(long, value_name = "W", default_value_t = 500)]
    pub warmup: u64,
    /// Upper bound on each measurement's duration, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub max_secs: f64,
    /// Live reservations (unheld, one port each, from another client) during the main
    /// measurements.
    #[arg(long, value_name = "L", default_value_t = 10)]
    pub live: u32,
    /// After the main measurements, grow the live reservations to each of these counts in turn
    /// and measure held and unheld acquire+release with 1 client (e.g. `--scale 30000`).
    #[arg(long, value_name = "L,…", value_delimiter = ',')]
    pub scale: Vec<u32>,
    /// Measure only these (default: all).
    #[arg(long, value_name = "KIND,…", value_delimiter = ',')]
    pub only: Vec<Kind>,
    /// Pin this process (all client threads) to this CPU (sched_setaffinity).
    #[arg(long, value_name = "CPU")]
    pub client_cpu: Option<usize>,
    /// Pin the daemon and the echo server to this CPU (`taskset -c`); may equal --client-cpu.
    #[arg(long, value_name = "CPU")]
    pub server_cpu: Option<usize>,
}

impl Args {
    /// Whether `kind` is to be measured.
    pub fn wants(&self, kind: Kind) -> bool {
        self.only.is_empty() || self.only.contains(&kind)
    }
}

/// The daemon's kernel sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sync {
    /// The daemon leaves ip_local_reserved_ports alone.
    Off,
    /// The daemon keeps ip_local_reserved_ports (root, private network namespace only).
    On,
}

impl Sync {
    /// The daemon's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Sync::Off => "off",
            Sync::On => "on",
        }
    }
}

/// Internal modes.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Serve echo requests (started by the benchmark itself; prints "ready").
    #[command(hide = true)]
    EchoServer(EchoArgs),
}

/// The echo server's sockets.
#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// Persistent connections: length-prefixed frames, each answered with a frame of the
    /// length its first four payload bytes ask for.
    #[arg(long)]
    pub socket: PathBuf,
    /// One request per connection: a line in, a line out, close (the portpicker shape).
    #[arg(long)]
    pub connect_socket: PathBuf,
}
