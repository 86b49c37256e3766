//! `berth list`, `berth status`, `berth release`: one request each, no daemon started.

use std::process::ExitCode;

use anyhow::Context;
use berth::Token;

use crate::cli::{JsonArg, ReleaseArgs};
use crate::connect;
use crate::exit::Failure;
use crate::output::{self, ReservationJson, StatusJson};

/// Prints live reservations.
pub async fn list(args: JsonArg) -> Result<ExitCode, Failure> {
    let client = connect::existing().await?;
    let list = client.list().await?;
    if args.json {
        let rows: Vec<ReservationJson> = list.iter().map(ReservationJson::from).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).context("cannot render JSON")?
        );
    } else {
        print!("{}", output::table(&list));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the daemon's status.
pub async fn status(args: JsonArg) -> Result<ExitCode, Failure> {
    let client = connect::existing().await?;
    let status = StatusJson::from(&client.status().await?);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).context("cannot render JSON")?
        );
    } else {
        println!(
            "berth daemon {} (pid {}) on {}",
            status.version, status.pid, status.socket
        );
        println!("  up {}", output::human_age(status.uptime_s));
        println!("  wildcard pool {}", status.pool);
        println!(
            "  {}: {}, {}",
            plural(status.reservations, "reservation"),
            plural(status.tcp_ports, "tcp port"),
            plural(status.udp_ports, "udp port")
        );
        println!("  {}", plural(status.sessions, "client connection"));
    }
    Ok(ExitCode::SUCCESS)
}

/// Releases a reservation by token.
pub async fn release(args: ReleaseArgs) -> Result<ExitCode, Failure> {
    let token: Token = args
        .token
        .parse()
        .map_err(|e: berth_core::RangeError| berth::Error::InvalidArgument(e.to_string()))?;
    let client = connect::existing().await?;
    let released = client.release(token).await?;
    if args.json {
        let row = ReservationJson::from(&released);
        println!(
            "{}",
            serde_json::to_string_pretty(&row).context("cannot render JSON")?
        );
    } else {
        eprintln!(
            "released {} ports {} ({})",
            released.protocol, released.range, released.token
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `1 reservation`, `2 reservations`.
fn plural(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
