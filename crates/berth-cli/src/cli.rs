//! The command line.

use std::ffi::OsString;
use std::path::PathBuf;

use berth_core::Pool;
use clap::{Args, Parser, Subcommand};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Reserve TCP/UDP ports on this host, run programs on them, and see who holds which port",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the berth daemon in the foreground.
    Daemon(DaemonArgs),
    /// Reserve ports, run a command with them in its environment, release them when it exits.
    Run(RunArgs),
    /// List live reservations.
    List(JsonArg),
    /// Release a reservation by its token.
    Release(ReleaseArgs),
    /// Show the daemon's status: uptime, reservations, ports, clients, use per user.
    Status(StatusArgs),
    /// Create, delete, look up and list persistent reservations.
    #[command(subcommand)]
    Persistent(PersistentCommand),
    /// Explain a port: reserved (by whom, held, bound), bound by a process, in the pool or
    /// the ephemeral range, or free.
    Why(WhyArgs),
    /// Print the ports of a named reservation (`berth run --name`), or exit not-found.
    Port(PortArgs),
    /// Wait until a named reservation exists (with --bound: until its port is bound), then
    /// print its ports.
    Wait(WaitArgs),
    /// List your remembered names: the block each was last given, and whether it is live.
    Names(JsonArg),
    /// Forget one of your names: its block becomes an ordinary port again.
    Forget(ForgetArgs),
    /// Name a port that one of your processes has bound already (found through the kernel):
    /// it is reserved for that process while it runs, and `berth port NAME` finds it.
    Publish(PublishArgs),
    /// Enforce mode: reserve ports for an existing cgroup, or switch enforcement off or on
    /// (administrators).
    #[command(subcommand)]
    Enforce(EnforceCommand),
    /// Stop the daemon gracefully (its owner or an administrator) and wait until it is gone.
    Stop {
        /// Also take out of `ip_local_reserved_ports` the entries of reservations whose owners
        /// still run (a plain stop leaves them listed for the next daemon), as before an
        /// uninstall.
        #[arg(long)]
        restore: bool,
    },
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Write man pages for berth and each of its commands into a directory.
    Manpages(ManpagesArgs),
    /// The keeper of `berth run --daemonizes` (started by it, not by people).
    #[command(hide = true)]
    Keep(KeepArgs),
}

/// `berth keep` (internal): starts the command as a child subreaper, reports the command's pid
/// and then its exit on the descriptor `status_fd`, and lives until its last descendant exits.
#[derive(Debug, Args)]
pub struct KeepArgs {
    /// The inherited descriptor the reports go to.
    #[arg(long, value_name = "FD")]
    pub status_fd: i32,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `berth persistent …`.
#[derive(Debug, Subcommand)]
pub enum PersistentCommand {
    /// Create a persistent reservation (administrators); prints its token.
    Add(PersistentAddArgs),
    /// Delete the persistent reservation of exactly this range (administrators).
    Delete(PersistentRangeArgs),
    /// Print the token of the persistent reservation of exactly this range.
    Lookup(PersistentRangeArgs),
    /// List persistent reservations.
    List(PersistentListArgs),
}

/// `berth enforce …`.
#[derive(Debug, Subcommand)]
pub enum EnforceCommand {
    /// Reserve ports for an existing cgroup (a service's, a container's; administrators): the
    /// kernel keeps them for its processes until it has none left. Prints the reservations.
    Reserve(EnforceReserveArgs),
    /// Switch enforce mode off at once: its programs are detached; cgroup-owned reservations
    /// stay, kept by ip_local_reserved_ports only; --enforce is refused until `berth enforce
    /// on` or a restart (administrators).
    Off,
    /// Switch enforce mode on again (administrators).
    On,
}

/// `berth enforce reserve`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("ports").required(true).multiple(true).args(["tcp", "udp"]))]
pub struct EnforceReserveArgs {
    /// The cgroup, by its path below the cgroup v2 hierarchy's root, as /proc/PID/cgroup
    /// shows it (e.g. /system.slice/nginx.service).
    #[arg(long, value_name = "PATH")]
    pub cgroup: String,
    /// Reserve N TCP ports.
    #[arg(long, value_name = "N")]
    pub tcp: Option<u16>,
    /// Reserve M UDP ports.
    #[arg(long, value_name = "M")]
    pub udp: Option<u16>,
    /// Reserve the blocks starting at port P instead of any free block.
    #[arg(long, value_name = "P")]
    pub start: Option<u16>,
    /// Say what the ports are for (shown with the owner).
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Print the reservations as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--tcp` or `--udp`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ProtocolChoice {
    /// TCP ports.
    #[arg(long)]
    pub tcp: bool,
    /// UDP ports.
    #[arg(long)]
    pub udp: bool,
}

impl ProtocolChoice {
    /// The protocol chosen.
    pub fn protocol(&self) -> berth::Protocol {
        if self.udp {
            berth::Protocol::Udp
        } else {
            berth::Protocol::Tcp
        }
    }
}

/// `--tcp`, `--udp`, or neither (both).
#[derive(Debug, Args)]
#[group(required = false, multiple = false)]
pub struct ProtocolFilter {
    /// TCP only.
    #[arg(long)]
    pub tcp: bool,
    /// UDP only.
    #[arg(long)]
    pub udp: bool,
}

impl ProtocolFilter {
    /// The protocols chosen: the one given, or both (TCP first).
    pub fn protocols(&self) -> Vec<berth::Protocol> {
        match (self.tcp, self.udp) {
            (true, _) => vec![berth::Protocol::Tcp],
            (_, true) => vec![berth::Protocol::Udp],
            _ => vec![berth::Protocol::Tcp, berth::Protocol::Udp],
        }
    }
}

/// A protocol and an exact range.
#[derive(Debug, Args)]
pub struct PersistentRangeArgs {
    /// Which port space.
    #[command(flatten)]
    pub protocol: ProtocolChoice,
    /// First port.
    #[arg(long, value_name = "P")]
    pub start: u16,
    /// Number of ports (as for `add`, 1 when not given).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub count: u16,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `berth persistent add`.
#[derive(Debug, Args)]
pub struct PersistentAddArgs {
    /// Which port space.
    #[command(flatten)]
    pub protocol: ProtocolChoice,
    /// First port (without it, `--name` must be a service of /etc/services: its port).
    #[arg(long, value_name = "P", required_unless_present = "name")]
    pub start: Option<u16>,
    /// Number of ports.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub count: u16,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// A user (name or uid) who may bind sockets from it; repeatable.
    #[arg(long = "allow-user", value_name = "USER")]
    pub allow_users: Vec<String>,
    /// A group (name or gid) whose members may bind sockets from it; repeatable.
    #[arg(long = "allow-group", value_name = "GROUP")]
    pub allow_groups: Vec<String>,
    /// Say what the ports are for (shown to everyone by `berth list` and `berth why`); at most
    /// 128 bytes, one line.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// A host-wide name (e.g. ipp), by which anyone finds its ports (`berth port NAME`).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// `berth port`.
#[derive(Debug, Args)]
pub struct PortArgs {
    /// The name: yours, else a persistent reservation's; USER:NAME for another user's.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The UDP ports (default: TCP's, or UDP's when the name has only UDP ports).
    #[arg(long)]
    pub udp: bool,
    /// Print the reservations as JSON (owner, token, state).
    #[arg(long)]
    pub json: bool,
}

/// `berth wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The name: yours, else a persistent reservation's; USER:NAME for another user's.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Wait until a socket is bound to its ports too.
    #[arg(long)]
    pub bound: bool,
    /// Give up after SECS seconds (at most 3600), with not-found (exit 15).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub timeout: u32,
    /// The UDP ports (as `berth port --udp`).
    #[arg(long)]
    pub udp: bool,
    /// Print the reservations as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `berth publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The name to give it.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The bound TCP port.
    #[arg(
        long,
        value_name = "PORT",
        conflicts_with = "udp",
        required_unless_present = "udp"
    )]
    pub tcp: Option<u16>,
    /// The bound UDP port.
    #[arg(long, value_name = "PORT")]
    pub udp: Option<u16>,
    /// Print the reservation as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `berth forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The name.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `berth persistent list`.
#[derive(Debug, Args)]
pub struct PersistentListArgs {
    /// Only TCP.
    #[arg(long, conflicts_with = "udp")]
    pub tcp: bool,
    /// Only UDP.
    #[arg(long)]
    pub udp: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `berth daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Socket to listen on [default: /run/berth/berth.sock for root,
    /// $XDG_RUNTIME_DIR/berth/berth.sock for other users]. `BERTH_SOCKET`, the one socket
    /// clients then use, sets it too, so a daemon and its clients agree.
    #[arg(long, value_name = "PATH", env = "BERTH_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Database file [default: /var/lib/berth/berth.db for root,
    /// $XDG_STATE_HOME/berth/berth.db for other users].
    #[arg(long, value_name = "PATH", env = "BERTH_DB")]
    pub db: Option<PathBuf>,
    /// Ports that wildcard requests are served from [default: the kernel's ephemeral range
    /// (net.ipv4.ip_local_port_range) when the daemon keeps ip_local_reserved_ports, else a
    /// range outside it — see docs/kernel.md].
    #[arg(long, value_name = "LO-HI")]
    pub pool: Option<Pool>,
    /// Keep net.ipv4.ip_local_reserved_ports equal to every reservation plus the entries
    /// others wrote: auto (when the daemon may write it), on (refuse to start otherwise), off
    /// [default: auto].
    #[arg(long, value_name = "MODE", env = "BERTH_KERNEL_SYNC")]
    pub kernel_sync: Option<berth_daemon::KernelSync>,
    /// The name of this network namespace's authority beacon (the abstract socket that lets
    /// only one daemon serve a namespace), or "none". Only test suites that run isolated
    /// daemons side by side change it; daemons with different names do not coordinate
    /// [default: berth-authority].
    #[arg(long, value_name = "NAME", env = "BERTH_AUTHORITY")]
    pub authority: Option<String>,
    /// Connections served at once [default: 4096].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// After a restart, seconds to hold the previous daemon's runtime reservations for their
    /// owners to re-claim [default: 10].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub grace: Option<u64>,
    /// Close a connection that sent nothing for SECS seconds and holds no reservation (0:
    /// never); a connection holding a reservation is never closed for silence [default: 300].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub idle_timeout: Option<u64>,
    /// Configuration file [default: /etc/berth/berth.toml for root, when it exists]. Options
    /// given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Answer Google's portpicker protocol on ADDR (@NAME: abstract socket, else a path) so
    /// test suites with PORTSERVER_ADDRESS=ADDR get race-free ports; see docs/portserver.md
    /// [default ADDR: @unittest-portserver; on by default for the system daemon].
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = berth_daemon::portserver::DEFAULT_ADDRESS,
        conflicts_with = "no_portserver"
    )]
    pub portserver: Option<berth_daemon::portserver::Address>,
    /// Serve no portserver endpoint, whatever the configuration file says.
    #[arg(long)]
    pub no_portserver: bool,
    /// Hold no ports, whatever clients ask and the configuration file says: every reservation
    /// is granted unheld, and the daemon keeps no hold sockets (see docs/kernel.md).
    #[arg(long)]
    pub no_hold: bool,
    /// Ports of the pool kept in net.ipv4.ip_local_reserved_ports ahead of grants while the
    /// daemon keeps that list: unheld wildcard blocks come from them first and need no write
    /// of the list (0: none; see docs/kernel.md, "Listed ahead") [default: 128].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub listed_ahead: Option<u16>,
    /// Check the configuration and exit (0 when it is valid).
    #[arg(long)]
    pub check_config: bool,
    /// Print "ready" on stdout once the socket accepts connections, then detach stdout (used
    /// by on-demand start).
    #[arg(long, hide = true)]
    pub ready_stdout: bool,
}

/// `berth run`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("ports").required(true).multiple(true).args(["tcp", "udp"]))]
pub struct RunArgs {
    /// Reserve N TCP ports (exported as BERTH_TCP_PORTS, and PORT = the first).
    // 0 parses: it is invalid-argument (exit 10) like a count of 0 anywhere, said by `run`.
    #[arg(long, value_name = "N")]
    pub tcp: Option<u16>,
    /// Reserve M UDP ports (exported as BERTH_UDP_PORTS).
    #[arg(long, value_name = "M")]
    pub udp: Option<u16>,
    /// Reserve the blocks starting at port P instead of any free block.
    #[arg(long, value_name = "P")]
    pub start: Option<u16>,
    /// Reserve any free blocks inside LO-HI (in the pool or not) instead of blocks from the
    /// pool.
    // A string, judged by `run`: a bad range is invalid-argument (exit 10), not a usage error.
    #[arg(long, value_name = "LO-HI")]
    pub within: Option<String>,
    /// Say what the ports are for (a test, a job): shown by `berth list` and `berth why` with
    /// the owner; at most 128 bytes, one line.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Name the reservations (e.g. shop/web): the same ports as last time while they are
    /// free, and `berth port NAME` finds them.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Print the reservations as JSON on stderr before running the command.
    #[arg(long)]
    pub json: bool,
    /// Reserve the same port numbers in TCP and UDP (needs --tcp N --udp N with the same N):
    /// for a service that listens on both. Both blocks are granted together or not at all.
    #[arg(long, requires_all = ["tcp", "udp"])]
    pub same_ports: bool,
    /// Pass the ports as sockets already bound, the systemd way: descriptors 3, 4, … (TCP
    /// listening, then UDP), LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES (tcp-PORT:…). The ports
    /// are held: nobody else can bind them, before or while the command runs.
    #[arg(long)]
    pub listen: bool,
    /// Enforce the reservations in the kernel: the daemon starts the command in a cgroup of its
    /// own that owns them — its bind(0) draws from them, every other program's bind of them
    /// fails with EADDRINUSE — and they live until the cgroup has no process left, so a
    /// daemonized server keeps them after the launcher exits. Needs a daemon that runs as root
    /// on cgroup v2 (`berth status` says whether it can); the cgroup is made inside the one
    /// berth run runs in, so the command keeps its unit's or session's limits.
    #[arg(long, conflicts_with = "listen")]
    pub enforce: bool,
    /// The command daemonizes (`pg_ctl start`, `redis-server --daemonize yes`): keep the
    /// reservations while any process it started lives, and exit with its own status as soon as
    /// it exits. A keeper process (a child subreaper) starts it and holds the ports; any user's
    /// daemon can. (With a root daemon, --enforce instead both keeps the ports for the
    /// command's processes and keeps every other program off them.)
    #[arg(long, conflicts_with_all = ["listen", "enforce"])]
    pub daemonizes: bool,
    /// The address the --listen sockets are bound to [default: :: (dual-stack) where the host
    /// has IPv6, else 0.0.0.0].
    #[arg(long, value_name = "IP", requires = "listen")]
    pub listen_address: Option<std::net::IpAddr>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `--json` alone.
#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `berth why`.
#[derive(Debug, Args)]
pub struct WhyArgs {
    /// Which port space; both unless one is given.
    #[command(flatten)]
    pub protocol: ProtocolFilter,
    /// The port.
    #[arg(value_name = "PORT")]
    pub port: u16,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `berth release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The reservation's token, as `berth list` prints it (0x…).
    // Checked by the command, not the parser, so that a bad token is an invalid-argument
    // error (exit 10).
    #[arg(value_name = "TOKEN")]
    pub token: String,
    /// Release another user's reservation while its owner still runs (administrators). The
    /// owner loses its ports at once; without --force such a release is refused.
    #[arg(long)]
    pub force: bool,
    /// Print the released reservation as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `berth status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// What to print: text for people, json for programs, openmetrics for a metrics scraper
    /// [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<StatusFormat>,
}

/// The formats of `berth status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    /// Lines for people.
    Text,
    /// `berth status --json`.
    Json,
    /// The OpenMetrics text exposition (docs/operations.md lists the metrics).
    Openmetrics,
}

/// `berth manpages`.
#[derive(Debug, Args)]
pub struct ManpagesArgs {
    /// The directory to write berth.1, berth-daemon.1, … into (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `berth completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_every_command() {
        let help = Cli::command().render_help().to_string();
        // `keep` is berth's own (started by `berth run --daemonizes`), hidden from people.
        for sub in Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            assert!(
                help.contains(sub.get_name()),
                "{} missing: {help}",
                sub.get_name()
            );
        }
        let mut release = Cli::command();
        let release = release.find_subcommand_mut("release").unwrap();
        let text = release.render_help().to_string();
        assert!(!text.contains("parser"), "{text}");
    }

    #[test]
    fn run_needs_ports_and_a_command() {
        assert!(Cli::try_parse_from(["berth", "run", "--", "true"]).is_err());
        assert!(Cli::try_parse_from(["berth", "run", "--tcp", "1"]).is_err());
        // 0 parses, and `run` refuses it as invalid-argument (exit 10).
        assert!(Cli::try_parse_from(["berth", "run", "--tcp", "0", "--", "true"]).is_ok());
        assert!(Cli::try_parse_from(["berth", "run", "--tcp", "65536", "--", "true"]).is_err());
        let cli = Cli::try_parse_from([
            "berth", "run", "--tcp", "2", "--udp", "1", "--", "sh", "-c", "x",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!((run.tcp, run.udp, run.start), (Some(2), Some(1), None));
        assert_eq!(run.command.len(), 3);
    }

    #[test]
    fn run_listen_takes_an_address_only_with_listen() {
        let args = [
            "berth",
            "run",
            "--listen-address",
            "::1",
            "--tcp",
            "1",
            "--",
            "x",
        ];
        assert!(Cli::try_parse_from(args).is_err());
        let cli = Cli::try_parse_from([
            "berth",
            "run",
            "--listen",
            "--listen-address",
            "127.0.0.1",
            "--tcp",
            "1",
            "--",
            "x",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(run.listen);
        assert_eq!(run.listen_address, Some([127, 0, 0, 1].into()));
    }
}
