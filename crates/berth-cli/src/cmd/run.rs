//! `berth run --tcp N [--udp M] [--start P] -- CMD ARGS…`: reserve, run, forward signals,
//! release, and exit with the command's status.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use anyhow::Context;
use berth::{Client, Protocol, Reservation};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::RunArgs;
use crate::connect;
use crate::exit::{self, Failure};
use crate::output::ReservationJson;

/// Signals passed on to the command. SIGINT is passed on only when it did not come from the
/// terminal, which already sent it to the command (same process group).
const FORWARDED: [(SignalKind, i32); 6] = [
    (SignalKind::terminate(), 15),
    (SignalKind::interrupt(), 2),
    (SignalKind::hangup(), 1),
    (SignalKind::quit(), 3),
    (SignalKind::user_defined1(), 10),
    (SignalKind::user_defined2(), 12),
];

/// Runs the command on freshly reserved ports.
pub async fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let client = connect::or_start(connect::Lifetime::Holding).await?;
    let start = args.start.unwrap_or(0);
    let tcp = reserve(&client, Protocol::Tcp, start, args.tcp).await?;
    let udp = reserve(&client, Protocol::Udp, start, args.udp).await?;

    let Some((program, rest)) = args.command.split_first() else {
        return Err(anyhow::anyhow!("no command given after --").into());
    };
    let mut command = tokio::process::Command::new(program);
    command.args(rest);
    if let Some(r) = &tcp {
        command.env("BERTH_TCP_PORTS", port_list(r));
        command.env("PORT", r.start().to_string());
    }
    if let Some(r) = &udp {
        command.env("BERTH_UDP_PORTS", port_list(r));
    }
    if args.json {
        let rows: Vec<ReservationJson> = tcp
            .iter()
            .chain(udp.iter())
            .map(|r| ReservationJson::from(r.info()))
            .collect();
        eprintln!(
            "{}",
            serde_json::to_string(&rows).context("cannot render JSON")?
        );
    }

    // Handlers first: a signal that arrives while the command starts is then forwarded (or
    // at least does not kill us with the ports' owner still running).
    let signals = install_signal_handlers()?;
    let mut child = command.spawn().map_err(|e| {
        let name = program.to_string_lossy();
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            exit::COMMAND_NOT_FOUND
        } else {
            exit::CANNOT_EXECUTE
        };
        Failure::Spawn {
            code,
            message: format!("cannot run {name:?}: {e}"),
        }
    })?;
    if let Some(pid) = child.id() {
        forward_signals(signals, pid);
    }
    let status = child
        .wait()
        .await
        .context("waiting for the command failed")?;

    // Release before exiting so that the ports are free when our parent sees the status.
    for r in tcp.into_iter().chain(udp) {
        if let Err(e) = r.release().await {
            tracing::warn!("releasing after the command exited: {e}");
        }
    }
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(exit::FAILURE),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(exit::FAILURE),
        (None, None) => exit::FAILURE,
    };
    Ok(ExitCode::from(code))
}

async fn reserve(
    client: &Client,
    protocol: Protocol,
    start: u16,
    count: Option<u16>,
) -> Result<Option<Reservation>, Failure> {
    match count {
        Some(n) => Ok(Some(client.acquire(protocol, start, n).await?)),
        None => Ok(None),
    }
}

/// `a,b,c`.
fn port_list(r: &Reservation) -> String {
    r.ports()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Handlers for the signals in [`FORWARDED`], installed before the command starts.
fn install_signal_handlers() -> Result<Vec<(tokio::signal::unix::Signal, i32)>, Failure> {
    FORWARDED
        .iter()
        .map(|&(kind, number)| {
            signal(kind)
                .map(|stream| (stream, number))
                .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}").into())
        })
        .collect()
}

/// Passes the signals on to process `pid` for as long as this command runs.
fn forward_signals(signals: Vec<(tokio::signal::unix::Signal, i32)>, pid: u32) {
    let Some(target) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    for (mut stream, number) in signals {
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if number == 2 && terminal_sent_it() {
                    continue;
                }
                if let Some(sig) = rustix::process::Signal::from_named_raw(number) {
                    let _ = rustix::process::kill_process(target, sig);
                }
            }
        });
    }
}

/// Whether a SIGINT came from the terminal: stdin is a terminal whose foreground process group
/// is ours, so the command (in our group) received it too.
fn terminal_sent_it() -> bool {
    match rustix::termios::tcgetpgrp(std::io::stdin()) {
        Ok(fg) => fg == rustix::process::getpgrp(),
        Err(_) => false,
    }
}
