//! `berth why`: explains one port (`docs/cli.md` has the JSON; `docs/kernel.md` how to read
//! it). One request; no daemon is started.

use crate::output::{out, outln};
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use berth::{OwnerInfo, PortReport, SocketInfo};
use serde::Serialize;

use crate::cli::WhyArgs;
use crate::connect;
use crate::exit::Failure;
use crate::output::{port_list, OwnerJson, ReservationJson};

/// Asks the daemon about the port — in the protocol given, or in both — and prints its
/// answer: exit 0 whenever a report was made, whatever it says.
pub async fn run(args: WhyArgs) -> Result<ExitCode, Failure> {
    let client = connect::existing().await?;
    let mut reports = Vec::new();
    for protocol in args.protocol.protocols() {
        reports.push(client.why(protocol, args.port).await?);
    }
    if args.json {
        let json: Vec<WhyJson> = reports.iter().map(WhyJson::from).collect();
        // One protocol asked: one object; both: an array of the two.
        let text = match json.as_slice() {
            [one] => serde_json::to_string_pretty(one),
            both => serde_json::to_string_pretty(both),
        }
        .context("cannot render JSON")?;
        outln!("{text}");
    } else {
        let texts: Vec<String> = reports.iter().map(explain).collect();
        out!("{}", texts.join("\n"));
    }
    Ok(ExitCode::SUCCESS)
}

/// `berth why --json` (fields fixed in `docs/cli.md`).
#[derive(Debug, Serialize)]
struct WhyJson {
    protocol: &'static str,
    port: u16,
    /// `"reserved"`, `"in_use"` (sockets bound, no reservation) or `"free"`.
    status: &'static str,
    reservation: Option<WhyReservationJson>,
    sockets: Vec<SocketJson>,
    in_pool: bool,
    in_ephemeral_range: bool,
    kernel_reserved: bool,
    /// Binds the kernel refused (enforce mode), or `null`.
    refusals: Option<RefusalsJson>,
}

/// Refused binds of the port in `berth why --json`.
#[derive(Debug, Serialize)]
struct RefusalsJson {
    count: u64,
    last_at_ms: u64,
    last_by: Option<OwnerJson>,
    last_cgroup: Option<String>,
}

/// The reservation covering the port, as in `berth list --json`, plus whether its owner has
/// bound this very port.
#[derive(Debug, Serialize)]
struct WhyReservationJson {
    #[serde(flatten)]
    reservation: ReservationJson,
    port_bound: bool,
}

#[derive(Debug, Serialize)]
struct SocketJson {
    local: String,
    state: String,
    owner: Option<OwnerJson>,
    held_by_berth: bool,
}

impl From<&PortReport> for WhyJson {
    fn from(r: &PortReport) -> Self {
        WhyJson {
            protocol: r.protocol.as_str(),
            port: r.port,
            status: status(r),
            reservation: r.reservation.as_ref().map(|res| WhyReservationJson {
                reservation: ReservationJson::from(res),
                port_bound: res.bound.contains(&r.port),
            }),
            sockets: r
                .sockets
                .iter()
                .map(|s| SocketJson {
                    local: s.local.clone(),
                    state: s.state.clone(),
                    owner: s.owner.as_ref().map(owner_json),
                    held_by_berth: s.held_by_berth,
                })
                .collect(),
            in_pool: r.in_pool,
            in_ephemeral_range: r.in_ephemeral_range,
            kernel_reserved: r.kernel_reserved,
            refusals: r.refusals.as_ref().map(|f| RefusalsJson {
                count: f.count,
                last_at_ms: f.last_at_ms,
                last_by: f.last_by.as_ref().map(owner_json),
                last_cgroup: f.last_cgroup.clone(),
            }),
        }
    }
}

fn owner_json(o: &OwnerInfo) -> OwnerJson {
    OwnerJson {
        pid: o.pid,
        uid: o.uid,
        command: o.command.clone(),
    }
}

fn status(r: &PortReport) -> &'static str {
    if r.reservation.is_some() {
        "reserved"
    } else if r.sockets.is_empty() {
        "free"
    } else {
        "in_use"
    }
}

/// The report for people: a verdict, then one line per fact.
fn explain(r: &PortReport) -> String {
    let mut out = String::new();
    let verdict = match &r.reservation {
        Some(res) if res.bound.contains(&r.port) => "reserved, and bound by its owner".to_owned(),
        Some(res) if res.cgroup.is_some() => {
            "reserved, kept by the kernel for its cgroup (enforce mode)".to_owned()
        }
        Some(res) if res.held => "reserved, held by berth until its owner binds it".to_owned(),
        // Bound by a program that took the port by number (berth run's children), or the
        // owner's sockets as another user sees them (whose they are is not shown): the kernel
        // lists them.
        Some(_) if !r.sockets.is_empty() => format!(
            "reserved, and {} bound on it",
            plural(r.sockets.len(), "socket")
        ),
        Some(_) => "reserved, not bound by its owner".to_owned(),
        None if r.sockets.is_empty() => "free".to_owned(),
        None => format!(
            "not reserved, but in use ({})",
            plural(r.sockets.len(), "socket")
        ),
    };
    let _ = writeln!(out, "{} port {}: {verdict}", r.protocol, r.port);
    if let Some(res) = &r.reservation {
        // A persistent reservation has no owner process; a runtime one's is shown to its own
        // user and to administrators only.
        let owner = match (&res.owner, res.kind) {
            (Some(o), _) => process(o),
            (None, berth_protocol::Kind::Persistent) => "no owner process".to_owned(),
            (None, _) => "owner not shown".to_owned(),
        };
        let _ = writeln!(
            out,
            "  reservation  {} {} {} {}, {owner}",
            res.token,
            res.kind.as_str(),
            res.protocol,
            res.range,
        );
        let _ = writeln!(
            out,
            "               held: {}; bound by its owner: {}",
            if res.held { "yes" } else { "no" },
            port_list(&res.bound)
        );
        if let Some(name) = &res.name {
            let _ = writeln!(out, "               name: {name}");
        }
        if let Some(label) = &res.label {
            let _ = writeln!(out, "               label: {}", crate::output::shown(label));
        }
        if let Some(cgroup) = &res.cgroup {
            let _ = writeln!(
                out,
                "               owned by the cgroup {}: its processes bind these ports, every other program's bind fails with EADDRINUSE",
                crate::output::shown(cgroup)
            );
        }
    }
    if let Some(f) = &r.refusals {
        let who = match (&f.last_by, &f.last_cgroup) {
            (Some(o), Some(cgroup)) => format!("{} in the cgroup {cgroup}", process(o)),
            (Some(o), None) => process(o),
            (None, _) => "a process not shown (another user's)".to_owned(),
        };
        let _ = writeln!(
            out,
            "  refused      {} in the kernel; the last denied to {who} {} ago",
            plural(usize::try_from(f.count).unwrap_or(usize::MAX), "bind"),
            crate::output::human_age(crate::output::now_ms().saturating_sub(f.last_at_ms) / 1000)
        );
    }
    for s in &r.sockets {
        let _ = writeln!(out, "  socket       {}", socket(s));
    }
    let _ = writeln!(
        out,
        "  pool         {}",
        if r.in_pool {
            "in the daemon's wildcard pool"
        } else {
            "outside the daemon's wildcard pool"
        }
    );
    let ephemeral = match (r.in_ephemeral_range, r.kernel_reserved) {
        (true, true) => {
            "in the ephemeral range, listed in ip_local_reserved_ports (hidden from automatic assignment)"
        }
        (true, false) => {
            "in the ephemeral range, not listed in ip_local_reserved_ports: any connect() or bind(0) may be given it"
        }
        (false, true) => "outside the ephemeral range; listed in ip_local_reserved_ports",
        (false, false) => "outside the ephemeral range",
    };
    let _ = writeln!(out, "  kernel       {ephemeral}");
    out
}

/// `LISTEN 0.0.0.0:8080  pid 4121 (nginx, uid 1000)`.
fn socket(s: &SocketInfo) -> String {
    let who = match (&s.owner, s.held_by_berth) {
        (_, true) => "berth's hold socket".to_owned(),
        (Some(o), false) => process(o),
        (None, false) if s.state == "TIME_WAIT" => "no process (a closed connection)".to_owned(),
        (None, false) => {
            "a process not shown (another user's, or not visible to the daemon)".to_owned()
        }
    };
    format!("{:<11} {:<22} {who}", s.state, s.local)
}

fn process(o: &OwnerInfo) -> String {
    format!(
        "pid {} ({}, uid {})",
        o.pid,
        crate::output::shown(&o.command),
        o.uid
    )
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth::Protocol;

    fn report() -> PortReport {
        PortReport {
            protocol: Protocol::Tcp,
            port: 8080,
            reservation: None,
            sockets: Vec::new(),
            in_pool: false,
            in_ephemeral_range: true,
            kernel_reserved: false,
            refusals: None,
        }
    }

    #[test]
    fn a_free_port_says_so_and_warns_about_the_ephemeral_range() {
        let text = explain(&report());
        assert!(text.starts_with("tcp port 8080: free\n"), "{text}");
        assert!(text.contains("any connect()"), "{text}");
        assert_eq!(status(&report()), "free");
    }

    #[test]
    fn sockets_name_their_process() {
        let mut r = report();
        r.sockets.push(SocketInfo {
            local: "0.0.0.0:8080".into(),
            state: "LISTEN".into(),
            owner: Some(OwnerInfo {
                pid: 4121,
                uid: 1000,
                command: "nginx".into(),
            }),
            held_by_berth: false,
        });
        r.sockets.push(SocketInfo {
            local: "127.0.0.1:8080".into(),
            state: "TIME_WAIT".into(),
            owner: None,
            held_by_berth: false,
        });
        let text = explain(&r);
        assert!(text.contains("in use (2 sockets)"), "{text}");
        assert!(text.contains("pid 4121 (nginx, uid 1000)"), "{text}");
        assert!(text.contains("a closed connection"), "{text}");
        assert_eq!(status(&r), "in_use");
    }
}
