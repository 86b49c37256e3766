//! `berth persistent add|delete|lookup|list`.

use crate::output::{out, outln};
use std::process::ExitCode;

use anyhow::Context;
use berth::{Allow, Protocol, ReservationInfo};
use berth_daemon::accounts;

use crate::cli::{PersistentAddArgs, PersistentCommand, PersistentListArgs, PersistentRangeArgs};
use crate::connect;
use crate::exit::Failure;
use crate::output::{self, ReservationJson};

/// Runs one `persistent` subcommand.
pub async fn run(cmd: PersistentCommand) -> Result<ExitCode, Failure> {
    match cmd {
        PersistentCommand::Add(args) => add(args).await,
        PersistentCommand::Delete(args) => delete(args).await,
        PersistentCommand::Lookup(args) => lookup(args).await,
        PersistentCommand::List(args) => list(args).await,
    }
}

/// `--start 0` is no port: said here, in the command's own terms, before asking anybody.
fn check_range(start: u16) -> Result<(), Failure> {
    if start == 0 {
        return Err(berth::Error::InvalidArgument(
            "--start 0 is not a port: a persistent reservation covers exactly the ports given; use --start P with P from 1 to 65535".into(),
        )
        .into());
    }
    Ok(())
}

async fn add(args: PersistentAddArgs) -> Result<ExitCode, Failure> {
    let protocol = args.protocol.protocol();
    // No start: the port /etc/services gives the name (an administrator's `--name ipp`).
    let start = match (args.start, args.name.as_deref()) {
        (Some(start), _) => start,
        (None, Some(name)) => {
            // A text that is no name is said so first, cut short, and not echoed back whole.
            berth_core::Name::parse(name)
                .map_err(|e| berth::Error::InvalidArgument(e.to_string()))?;
            crate::services::port_of(name, protocol).ok_or_else(|| {
                berth::Error::InvalidArgument(format!(
                    "{name} is not a {protocol} service of /etc/services; give its ports with --start P [--count N]"
                ))
            })?
        }
        (None, None) => {
            return Err(berth::Error::InvalidArgument(
                "give the ports with --start P [--count N], or --name SERVICE for a service of /etc/services".into(),
            )
            .into())
        }
    };
    check_range(start)?;
    let allow = Allow {
        users: resolve(&args.allow_users, "user", accounts::user_id)?,
        groups: resolve(&args.allow_groups, "group", accounts::group_id)?,
    };
    // A daemon is started on demand: the reservation lives in its database.
    let client = connect::or_start(connect::Lifetime::OneShot).await?;
    let info = client
        .create_persistent_named(
            protocol,
            (start, args.count),
            &allow,
            (
                args.label.as_deref().unwrap_or_default(),
                args.name.as_deref().unwrap_or_default(),
            ),
        )
        .await?;
    print_token_or_json(&info, args.json)
}

async fn delete(args: PersistentRangeArgs) -> Result<ExitCode, Failure> {
    check_range(args.start)?;
    let client = connect::or_start(connect::Lifetime::OneShot).await?;
    let info = client
        .delete_persistent(args.protocol.protocol(), args.start, args.count)
        .await?;
    if args.json {
        print_json(&ReservationJson::from(&info))?;
    } else {
        eprintln!(
            "deleted persistent {} {} ({})",
            info.protocol,
            berth_core::describe(info.range),
            info.token
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn lookup(args: PersistentRangeArgs) -> Result<ExitCode, Failure> {
    check_range(args.start)?;
    let client = connect::existing().await?;
    let token = client
        .lookup_persistent(args.protocol.protocol(), args.start, args.count)
        .await?;
    if args.json {
        print_json(&serde_json::json!({ "token": token.to_string() }))?;
    } else {
        outln!("{token}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: PersistentListArgs) -> Result<ExitCode, Failure> {
    let client = connect::existing().await?;
    let mut list = client.list_persistent().await?;
    let only = match (args.tcp, args.udp) {
        (true, _) => Some(Protocol::Tcp),
        (_, true) => Some(Protocol::Udp),
        _ => None,
    };
    list.retain(|r| only.is_none_or(|p| r.protocol == p));
    if args.json {
        let rows: Vec<ReservationJson> = list.iter().map(ReservationJson::from).collect();
        print_json(&rows)?;
    } else {
        out!("{}", output::table(&list));
        // Who may use each, by name where the host knows one.
        for r in list
            .iter()
            .filter(|r| !r.allow_users.is_empty() || !r.allow_groups.is_empty())
        {
            outln!(
                "{} {} may be used by {}",
                r.protocol,
                r.range,
                allowed_text(r)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "users www-data, 1001; group web": a persistent reservation's allow list for people.
fn allowed_text(r: &ReservationInfo) -> String {
    let named = |ids: &[u32], name: fn(u32) -> Option<String>| {
        ids.iter()
            .map(|&id| name(id).unwrap_or_else(|| id.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !r.allow_users.is_empty() {
        parts.push(format!(
            "user{} {}",
            if r.allow_users.len() == 1 { "" } else { "s" },
            named(&r.allow_users, accounts::user_name)
        ));
    }
    if !r.allow_groups.is_empty() {
        parts.push(format!(
            "group{} {}",
            if r.allow_groups.len() == 1 { "" } else { "s" },
            named(&r.allow_groups, accounts::group_name)
        ));
    }
    parts.push("administrators".into());
    parts.join("; ")
}

/// `add` prints the token alone (`docs/cli.md`: other tools rely on it), or the reservation as JSON.
fn print_token_or_json(info: &ReservationInfo, json: bool) -> Result<ExitCode, Failure> {
    if json {
        print_json(&ReservationJson::from(info))?;
    } else {
        outln!("{}", info.token);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).context("cannot render JSON")?
    );
    Ok(())
}

/// Names or numeric ids to ids.
fn resolve(
    names: &[String],
    what: &str,
    lookup: fn(&str) -> Option<u32>,
) -> Result<Vec<u32>, Failure> {
    names
        .iter()
        .map(|name| {
            name.parse::<u32>()
                .ok()
                .or_else(|| lookup(name))
                .ok_or_else(|| {
                    Failure::Berth(berth::Error::InvalidArgument(format!(
                        "no {what} named {name:?} on this host; give a name from /etc/{} or a numeric id",
                        if what == "user" { "passwd" } else { "group" }
                    )))
                })
        })
        .collect()
}
