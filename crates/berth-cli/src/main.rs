//! `berth`: reserve TCP/UDP ports, run programs on them, and see who holds what.
//!
//! # Layout
//! - `cli`: the command line (clap).
//! - `exit`: exit codes, in one place.
//! - `connect`: finding the daemon, and starting one on demand.
//! - `cmd`: one module per subcommand.
//! - `output`: JSON and table rendering; `metrics`: the OpenMetrics view of `berth status`.

#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod connect;
mod exit;
mod metrics;
mod output;
mod services;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The last step of `berth run --listen` before its command; not a command of the CLI.
    if let Some(code) = cmd::listen::step() {
        return code;
    }
    let cli = cli::Cli::parse();
    init_logging(&cli);
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("berth: {failure}");
            failure.exit_code()
        }
    }
}

/// Logs go to stderr. The level is `info` for the daemon and `warn` otherwise; `BERTH_LOG`
/// (e.g. `debug` or `berth_daemon=debug,info`) overrides it.
fn init_logging(cli: &cli::Cli) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;

    // The client library logs a lost reservation (target `berth::loss`); `berth run` says it
    // in its own words, so the log line would only repeat it.
    let default = if matches!(cli.command, cli::Command::Daemon(_)) {
        "info"
    } else {
        "warn,berth::loss=off"
    };
    let spec = std::env::var("BERTH_LOG").unwrap_or_else(|_| default.to_owned());
    let targets: Targets = spec.parse().unwrap_or_else(|e| {
        eprintln!("berth: ignoring BERTH_LOG={spec:?} ({e}); using {default}");
        default.parse().unwrap_or_default()
    });
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .with(targets)
        .try_init();
}
