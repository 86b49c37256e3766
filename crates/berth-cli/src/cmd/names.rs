//! `berth port`, `berth wait`, `berth names`, `berth forget`: finding named reservations, and
//! a user's memory of names. None starts a daemon: a name lives in a running one.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use berth::{NameInfo, Protocol, ReservationInfo};
use berth_daemon::accounts;
use serde::Serialize;

use crate::cli::{ForgetArgs, JsonArg, PortArgs, PublishArgs, WaitArgs};
use crate::connect;
use crate::exit::Failure;
use crate::output::{self, outln, ReservationJson};

/// Prints a named reservation's ports.
pub async fn port(args: PortArgs) -> Result<ExitCode, Failure> {
    let (user, name) = split_user(&args.name)?;
    let client = connect::existing().await?;
    let found = client.lookup_name(user, name).await?;
    print_found(&found, args.udp, args.json)
}

/// Waits for a named reservation (and, with `--bound`, for a socket on its ports).
pub async fn wait(args: WaitArgs) -> Result<ExitCode, Failure> {
    let (user, name) = split_user(&args.name)?;
    let client = connect::existing().await?;
    let timeout = Duration::from_secs(u64::from(args.timeout));
    let found = client.wait_name(user, name, args.bound, timeout).await?;
    print_found(&found, args.udp, args.json)
}

/// `USER:NAME` → (the user's uid, NAME); `NAME` → (None, NAME). A user is a login name or a
/// numeric uid.
fn split_user(text: &str) -> Result<(Option<u32>, &str), Failure> {
    let Some((user, name)) = text.split_once(':') else {
        return Ok((None, text));
    };
    let uid = user
        .parse::<u32>()
        .ok()
        .or_else(|| accounts::user_id(user))
        .ok_or_else(|| {
            Failure::Berth(berth::Error::InvalidArgument(format!(
                "no user named {user:?} on this host; write USER:NAME with a name from /etc/passwd or a numeric uid"
            )))
        })?;
    Ok((Some(uid), name))
}

/// The ports of the found reservation of the protocol asked (`a,b,c`), or all of them as JSON.
fn print_found(found: &[ReservationInfo], udp: bool, json: bool) -> Result<ExitCode, Failure> {
    if json {
        let rows: Vec<ReservationJson> = found.iter().map(ReservationJson::from).collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).context("cannot render JSON")?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let wanted = if udp { Protocol::Udp } else { Protocol::Tcp };
    // TCP's unless asked for UDP; UDP's when the name has nothing else.
    let chosen = found
        .iter()
        .find(|r| r.protocol == wanted)
        .or_else(|| found.first().filter(|_| !udp));
    let Some(r) = chosen else {
        return Err(Failure::Berth(berth::Error::NotFound(
            "the name has no UDP reservation; drop --udp for its TCP ports".into(),
        )));
    };
    let ports: Vec<String> = r.range.ports().map(|p| p.to_string()).collect();
    outln!("{}", ports.join(","));
    Ok(ExitCode::SUCCESS)
}

/// Names a port a process of the caller's has bound; prints the reservation's token.
pub async fn publish(args: PublishArgs) -> Result<ExitCode, Failure> {
    let (protocol, port) = match (args.tcp, args.udp) {
        (Some(port), _) => (Protocol::Tcp, port),
        (None, Some(port)) => (Protocol::Udp, port),
        (None, None) => {
            return Err(Failure::Berth(berth::Error::InvalidArgument(
                "give the bound port: --tcp PORT or --udp PORT".into(),
            )))
        }
    };
    let client = connect::existing().await?;
    let r = client.publish(&args.name, protocol, port).await?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&ReservationJson::from(&r))
                .context("cannot render JSON")?
        );
    } else {
        outln!("{}", r.token);
        let owner = r.owner.as_ref().map_or_else(
            || "its process".to_owned(),
            |o| format!("pid {} ({})", o.pid, crate::output::shown(&o.command)),
        );
        eprintln!(
            "published {} as {protocol} {port}, reserved for {owner} while it runs",
            args.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One remembered name in `berth names --json`.
#[derive(Debug, Serialize)]
struct NameJson<'a> {
    name: &'a str,
    protocol: &'static str,
    start: u16,
    count: u16,
    last_used_ms: u64,
    live: bool,
}

/// Lists the caller's names.
pub async fn list(args: JsonArg) -> Result<ExitCode, Failure> {
    let client = connect::existing().await?;
    let names = client.names().await?;
    print_names(&names, args.json)
}

/// Forgets one of the caller's names.
pub async fn forget(args: ForgetArgs) -> Result<ExitCode, Failure> {
    let client = connect::existing().await?;
    let gone = client.forget_name(&args.name).await?;
    for n in &gone {
        eprintln!("forgot {} ({} {})", n.name, n.protocol, n.range);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_names(names: &[NameInfo], json: bool) -> Result<ExitCode, Failure> {
    if json {
        let rows: Vec<NameJson<'_>> = names
            .iter()
            .map(|n| NameJson {
                name: &n.name,
                protocol: n.protocol.as_str(),
                start: n.range.start(),
                count: n.range.count(),
                last_used_ms: n.last_used_ms,
                live: n.live,
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).context("cannot render JSON")?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if names.is_empty() {
        outln!("no names remembered for you (berth run --name NAME … remembers one)");
        return Ok(ExitCode::SUCCESS);
    }
    let now = output::now_ms();
    let width = names.iter().map(|n| n.name.len()).max().unwrap_or(4).max(4);
    outln!("{:<width$}  PROTO  PORTS        LAST USED  LIVE", "NAME");
    for n in names {
        outln!(
            "{:<width$}  {:<5}  {:<11}  {:>9}  {}",
            n.name,
            n.protocol.as_str(),
            n.range.to_string(),
            format!(
                "{} ago",
                output::human_age(now.saturating_sub(n.last_used_ms) / 1000)
            ),
            if n.live { "yes" } else { "no" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
