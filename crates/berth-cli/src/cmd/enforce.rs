//! `berth enforce reserve --cgroup PATH`, `berth enforce off`, `berth enforce on`: enforce
//! mode for administrators (docs/kernel.md, "Enforce mode").

use std::process::ExitCode;

use anyhow::Context;
use berth::{AcquireOptions, Enforce, Protocol};

use crate::cli::{EnforceCommand, EnforceReserveArgs};
use crate::connect;
use crate::exit::Failure;
use crate::output::{outln, ReservationJson};

/// Runs one `berth enforce` command.
pub async fn run(cmd: EnforceCommand) -> Result<ExitCode, Failure> {
    match cmd {
        EnforceCommand::Reserve(args) => reserve(args).await,
        EnforceCommand::Off => switch(false).await,
        EnforceCommand::On => switch(true).await,
    }
}

async fn reserve(args: EnforceReserveArgs) -> Result<ExitCode, Failure> {
    let client = connect::existing().await?;
    let options = AcquireOptions {
        label: args.label.clone().unwrap_or_default(),
        ..AcquireOptions::default()
    }
    .enforce(Enforce::Cgroup(args.cgroup.clone()));
    let start = args.start.unwrap_or(0);
    let mut handles = Vec::new();
    for (protocol, count) in [(Protocol::Tcp, args.tcp), (Protocol::Udp, args.udp)] {
        let Some(count) = count else { continue };
        match client.acquire_with(protocol, start, count, &options).await {
            // The cgroup owns it: dropping the handle leaves it reserved.
            Ok(r) => handles.push(r),
            Err(e) => {
                // Both or neither: the first block is given back.
                for r in handles {
                    let _ = r.release().await;
                }
                return Err(e.into());
            }
        }
    }
    let reserved: Vec<berth::ReservationInfo> = handles.iter().map(|r| r.info().clone()).collect();
    if args.json {
        let rows: Vec<ReservationJson> = reserved.iter().map(ReservationJson::from).collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).context("cannot render JSON")?
        );
    } else {
        for r in &reserved {
            outln!(
                "{} {} {} for the cgroup {}",
                r.token,
                r.protocol,
                r.range,
                r.cgroup.as_deref().unwrap_or(&args.cgroup)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn switch(on: bool) -> Result<ExitCode, Failure> {
    let client = connect::existing().await?;
    let status = client.set_enforce(on).await?;
    match (on, status.enforce_unavailable_because.as_str()) {
        (false, _) => outln!(
            "enforce mode off: programs detached; --enforce is refused until `berth enforce on`"
        ),
        (true, "") => outln!(
            "enforce mode on{}",
            status
                .enforce_attached_at
                .map(|at| format!(": programs attached at {at}"))
                .unwrap_or_default()
        ),
        (true, why) => outln!("enforce mode switched on, but unavailable: {why}"),
    }
    Ok(ExitCode::SUCCESS)
}
