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
    /// The daemon and where everything runs.
    #[command(flatten)]
    pub common: Common,
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
}

impl Args {
    /// Whether `kind` is to be measured.
    pub fn wants(&self, kind: Kind) -> bool {
        self.only.is_empty() || self.only.contains(&kind)
    }
}

/// What every mode shares: the daemon to start, and pinning.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
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
    /// The daemon's --listed-ahead: ports of the pool kept in the kernel's list ahead of
    /// grants with kernel sync on [default: the daemon's, 128]; 0 measures every unheld grant
    /// with its write of the list.
    #[arg(long, value_name = "N")]
    pub listed_ahead: Option<u16>,
    /// The daemon's reuse cool-down in seconds (`reuse_cool_down_s`) [default: the daemon's,
    /// 60]; 0 measures the cost of a request alone. At tens of thousands of grants a second
    /// every port of the pool cools at once, which no real workload does.
    #[arg(long, value_name = "SECS")]
    pub reuse_cool_down: Option<u64>,
    /// Pin this process (all client threads) to this CPU (sched_setaffinity).
    #[arg(long, value_name = "CPU")]
    pub client_cpu: Option<usize>,
    /// Pin the daemon and the echo server to this CPU (`taskset -c`); may equal --client-cpu.
    #[arg(long, value_name = "CPU")]
    pub server_cpu: Option<usize>,
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

/// The other measurements (each its own run), and the internal echo server.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// The portpicker protocol: berth's --portserver endpoint vs Google's portserver.py vs a
    /// connect-per-request echo, through a raw client and through the real Python client.
    Portserver(PortserverArgs),
    /// Many clients: the daemon's resident memory with 1,000 clients holding 10,000
    /// reservations and after cycles of clients coming and going, and request latency at a
    /// paced offered load.
    Scale(ScaleArgs),
    /// Re-claim after a restart: the time from a daemon restart until every client's runtime
    /// reservations are back.
    Reclaim(ReclaimArgs),
    /// Enforce mode's cost: acquire+release (held, unheld) and associate with the programs
    /// detached and attached, in alternating phases, the daemon and the clients inside the
    /// policed subtree. Root, cgroup v2; run it in a private network namespace.
    Enforce(EnforceArgs),
    /// Serve echo requests (started by the benchmark itself; prints "ready").
    #[command(hide = true)]
    EchoServer(EchoArgs),
    /// Serve portpicker requests with only the system calls an answer must make (started by
    /// the benchmark itself; prints "ready").
    #[command(hide = true)]
    FloorServer(FloorArgs),
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
    /// The session floor: persistent connections whose requests are answered with the system
    /// calls a held acquire and its release must make, and nothing else.
    #[arg(long)]
    pub floor_socket: PathBuf,
    /// The append-only file each of the session floor's answers writes one record to.
    #[arg(long)]
    pub floor_journal: PathBuf,
    /// The ports the session floor's holds cycle through.
    #[arg(long, value_name = "LO-HI")]
    pub floor_pool: String,
}

/// The floor server's socket, journal and pool.
#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    /// One request per connection: `"<pid>\n"` in, `"<port>\n"` out, close.
    #[arg(long)]
    pub socket: PathBuf,
    /// The append-only file each answer writes one record to.
    #[arg(long)]
    pub journal: PathBuf,
    /// The ports whose test binds it cycles through.
    #[arg(long, value_name = "LO-HI")]
    pub pool: String,
}

/// `berth-bench portserver`.
#[derive(Debug, clap::Args)]
pub struct PortserverArgs {
    #[command(flatten)]
    pub common: Common,
    /// The second concurrency level of the raw client (the first is 1).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub clients: u32,
    /// Requests per measurement (all clients together). Every raw answer lasts until this
    /// process exits, so all measurements together must stay under half of the pool.
    #[arg(long, value_name = "R", default_value_t = 5_000)]
    pub requests: u64,
    /// Unmeasured requests per client before each measurement.
    #[arg(long, value_name = "W", default_value_t = 100)]
    pub warmup: u64,
    /// Upper bound on each raw measurement's duration, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub max_secs: f64,
    /// Picks per Python client run (at most --requests).
    #[arg(long, value_name = "P", default_value_t = 2_000)]
    pub python_requests: u64,
    /// The Python interpreter (with the `portpicker` package).
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: PathBuf,
    /// Google's portserver.py [default: the one installed with portpicker].
    #[arg(long, value_name = "PATH")]
    pub portserver_py: Option<PathBuf>,
    /// Skip the Python client.
    #[arg(long)]
    pub no_python: bool,
}

/// `berth-bench scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients (connections), all on one thread of this process.
    #[arg(long, value_name = "N", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Reservations held by all clients together (unheld, one port each, spread evenly).
    #[arg(long, value_name = "R", default_value_t = 10_000)]
    pub reservations: u32,
    /// Offered load of the paced measurement, requests per second (a request is one acquire
    /// or one release; the clients take turns, round robin).
    #[arg(long, value_name = "RPS", default_value_t = 10_000.0)]
    pub rate: f64,
    /// Duration of the paced measurement, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub secs: f64,
    /// Cycles of `--clients` clients connecting, acquiring `--reservations` and leaving.
    #[arg(long, value_name = "C", default_value_t = 10)]
    pub cycles: u32,
    /// The memory is read again once the clients have been quiet this long, seconds: when
    /// 1,000 clients hold 10,000 reservations, and after the last cycle (a daemon gives back
    /// what busy sessions and a wave of connections used once they are over). 0: not read.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub settle_secs: f64,
}

/// `berth-bench reclaim`.
#[derive(Debug, clap::Args)]
pub struct ReclaimArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients (connections), all on one thread of this process.
    #[arg(long, value_name = "N", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Runtime reservations held by all clients together (held, one TCP port each, spread
    /// evenly).
    #[arg(long, value_name = "R", default_value_t = 1_000)]
    pub reservations: u32,
    /// Restarts measured in a row.
    #[arg(long, value_name = "K", default_value_t = 3)]
    pub restarts: u32,
    /// Stop the daemon with SIGKILL (a crash) instead of SIGTERM (a clean stop).
    #[arg(long)]
    pub crash: bool,
    /// Upper bound on one re-claim, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub max_secs: f64,
}

/// `berth-bench enforce`.
#[derive(Debug, clap::Args)]
pub struct EnforceArgs {
    #[command(flatten)]
    pub common: Common,
    /// A cgroup v2 directory to create (it must not exist: never the hierarchy's root or
    /// anyone else's cgroup) and remove at the end: the programs are attached there, and the
    /// daemon (`daemon/`), the load generator (`clients/`) and the cgroup that owns the one
    /// enforced reservation (`holder/`, a `sleep`) live below it.
    #[arg(long, value_name = "DIR")]
    pub subtree: PathBuf,
    /// Rounds of one phase detached, then one attached.
    #[arg(long, value_name = "K", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Requests per measurement.
    #[arg(long, value_name = "R", default_value_t = 20_000)]
    pub requests: u64,
    /// Unmeasured requests before each measurement.
    #[arg(long, value_name = "W", default_value_t = 500)]
    pub warmup: u64,
    /// Upper bound on each measurement's duration, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub max_secs: f64,
}
