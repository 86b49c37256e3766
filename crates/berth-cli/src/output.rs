//! Rendering for people (tables) and for programs (JSON, the fixed points of `docs/cli.md`).

use std::time::{SystemTime, UNIX_EPOCH};

use berth::{ReservationInfo, StatusInfo};
use serde::Serialize;

/// One reservation in `berth list --json` (fields fixed in `docs/cli.md`).
#[derive(Debug, Serialize)]
pub struct ReservationJson {
    /// `"0x"` + 16 hex digits.
    pub token: String,
    /// `"tcp"` / `"udp"`.
    pub protocol: &'static str,
    /// First port.
    pub start: u16,
    /// Number of ports.
    pub count: u16,
    /// `"runtime"` / `"persistent"`.
    pub kind: &'static str,
    /// The owning process, when the asker may see it.
    pub owner: Option<OwnerJson>,
    /// Age in whole seconds.
    pub age_s: u64,
    /// Whether the daemon holds its ports that its owner has not bound.
    pub held: bool,
    /// The ports its owner has bound from it (through associate), ascending.
    pub bound: Vec<u16>,
    /// What it is for, when it has a label and the asker may see it (`null` otherwise).
    pub label: Option<String>,
    /// Its name (`null` for none).
    pub name: Option<String>,
    /// A persistent reservation's allow list: uids, then gids (empty for runtime ones).
    pub allow_users: Vec<u32>,
    /// See `allow_users`.
    pub allow_groups: Vec<u32>,
    /// The cgroup that owns it (enforce mode), below the cgroup v2 hierarchy's root, when the
    /// asker may see its owner (`null` otherwise).
    pub cgroup: Option<String>,
}

/// The owner of a reservation in JSON.
#[derive(Debug, Serialize)]
pub struct OwnerJson {
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Command name.
    pub command: String,
}

impl From<&ReservationInfo> for ReservationJson {
    fn from(r: &ReservationInfo) -> Self {
        ReservationJson {
            token: r.token.to_string(),
            protocol: r.protocol.as_str(),
            start: r.range.start(),
            count: r.range.count(),
            kind: r.kind.as_str(),
            owner: r.owner.as_ref().map(|o| OwnerJson {
                pid: o.pid,
                uid: o.uid,
                command: o.command.clone(),
            }),
            age_s: r.age_ms / 1000,
            held: r.held,
            bound: r.bound.clone(),
            label: r.label.clone(),
            name: r.name.clone(),
            allow_users: r.allow_users.clone(),
            allow_groups: r.allow_groups.clone(),
            cgroup: r.cgroup.clone(),
        }
    }
}

/// `berth status --json`.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    /// The daemon's release.
    pub version: String,
    /// This command's release.
    pub client_version: &'static str,
    /// The protocol version in use.
    pub protocol_version: u16,
    /// The daemon's pid.
    pub pid: u32,
    /// Its socket.
    pub socket: String,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// The wildcard pool, `LO-HI`.
    pub pool: String,
    /// Live reservations.
    pub reservations: u32,
    /// Reserved TCP ports.
    pub tcp_ports: u32,
    /// Reserved UDP ports.
    pub udp_ports: u32,
    /// Live reservations by kind, `{"runtime", "persistent"}`.
    pub reservations_by_kind: KindsJson,
    /// Ports in the wildcard pool.
    pub pool_size: u32,
    /// Ports of the pool no reservation covers, `{"tcp", "udp"}`.
    pub pool_free: ProtocolsJson,
    /// Open client connections.
    pub sessions: u32,
    /// Whether the daemon keeps `net.ipv4.ip_local_reserved_ports` (its reservations are then
    /// hidden from other programs' `bind(0)` and `connect()`).
    pub kernel_sync: bool,
    /// Why it does not, when it does not (`null` when it does).
    pub kernel_sync_off_because: Option<String>,
    /// Hold sockets open (one per held port and family).
    pub hold_sockets: u32,
    /// Whether the daemon holds the ports of reservations acquired with hold.
    pub hold: bool,
    /// Why it does not, when it does not (`null` when it does).
    pub hold_off_because: Option<String>,
    /// Descriptors the daemon has open now.
    pub open_files: u32,
    /// Its descriptor limit (soft `RLIMIT_NOFILE`, raised to the hard one at start-up).
    pub open_files_limit: u64,
    /// Your quota, `{"max_reservations", "max_ports", "max_held_ports"}`, or `null` when none
    /// applies to you (administrators).
    pub quota: Option<QuotaJson>,
    /// Your runtime use, `{"reservations", "ports", "held_ports"}`.
    pub usage: UsageJson,
    /// The part of the ephemeral range users without administrator rights may reserve
    /// together, `{"range", "percent", "max_ports", "used"}`, or `null` when none is kept.
    pub ephemeral_share: Option<ShareJson>,
    /// Runtime use per user, `[{"uid", "reservations", "ports", "held_ports"}]`: every user's
    /// for an administrator, your own otherwise.
    pub users: Vec<UserUsageJson>,
    /// Whose entries `ip_local_reserved_ports` holds, `{"reserved", "extras", "foreign",
    /// "repaired", "one_chunk"}` (see `docs/kernel.md`), or `null` without kernel sync.
    pub kernel_list: Option<KernelListJson>,
    /// The pool's ports exposed to other programs' `connect()` (inside the ephemeral range,
    /// without kernel sync), `{"ports", "ephemeral", "refused"}` — `refused`: wildcard
    /// requests are refused for it — or `null` when none are.
    pub exposure: Option<ExposureJson>,
    /// The reuse cool-down in seconds: wildcard picks pass by ports freed less than this long
    /// ago while other ports fit (0: none).
    pub reuse_cool_down_s: u32,
    /// Which mode keeps reservations now: `"enforce"` (enforce mode's programs are attached),
    /// `"hold"` (hold sockets) or `"advisory"`.
    pub mode: String,
    /// Enforce mode: `{"available", "unavailable_because", "attached_at"}`.
    pub enforce: EnforceJson,
    /// The portpicker endpoint, `{"address", "served", "not_served_because", "answered",
    /// "refused"}`, or `null` when the daemon has none.
    pub portserver: Option<PortserverJson>,
}

/// The portpicker endpoint in `berth status --json`.
#[derive(Debug, serde::Serialize)]
pub struct PortserverJson {
    /// Its address: `@name` (abstract) or a socket path.
    pub address: String,
    /// Whether the daemon answers there.
    pub served: bool,
    /// Why not, when not (another process holds the address; `null` when served).
    pub not_served_because: Option<String>,
    /// Requests answered with a port since the daemon started.
    pub answered: u64,
    /// Requests and connections refused (closed without a port) since the daemon started.
    pub refused: u64,
}

/// Enforce mode in `berth status --json`.
#[derive(Debug, serde::Serialize)]
pub struct EnforceJson {
    /// Whether `berth run --enforce` would be honoured.
    pub available: bool,
    /// Why not, when not (`null` when it would).
    pub unavailable_because: Option<String>,
    /// Where the programs are attached (a cgroup v2 directory), or `null` while no cgroup
    /// owns a reservation.
    pub attached_at: Option<String>,
}

/// An exposed pool in `berth status --json`.
#[derive(Debug, serde::Serialize)]
pub struct ExposureJson {
    /// The pool's ports inside the ephemeral range, `LO-HI`.
    pub ports: String,
    /// The ephemeral range, `LO-HI`.
    pub ephemeral: String,
    /// Whether wildcard requests are refused for it.
    pub refused: bool,
}

/// The kernel's list in `berth status --json`.
#[derive(Debug, serde::Serialize)]
pub struct KernelListJson {
    /// Listed ports that are the daemon's, for its reservations.
    pub reserved: u32,
    /// Other ports the daemon listed: free ports listed ahead of grants, free ports joining
    /// scattered entries so the value fits one kernel write, and released ports waiting
    /// while it does not.
    pub extras: u32,
    /// Listed ports that are others' entries.
    pub foreign: u32,
    /// Entries repaired since start-up (stale write-backs taken out, entries put back).
    pub repaired: u64,
    /// Whether the exact list fit one kernel write (if not, released ports stay listed).
    pub one_chunk: bool,
}

/// The ephemeral share in `berth status --json`.
#[derive(Debug, serde::Serialize)]
pub struct ShareJson {
    /// The ephemeral range, `LO-HI`.
    pub range: String,
    /// The share, in percent of it.
    pub percent: u8,
    /// The share, in ports.
    pub max_ports: u32,
    /// Ports of it reserved by users without administrator rights.
    pub used: u32,
}

/// One user's use in `berth status --json`.
#[derive(Debug, serde::Serialize)]
pub struct UserUsageJson {
    /// The user.
    pub uid: u32,
    /// Live runtime reservations.
    pub reservations: u32,
    /// Port numbers in them.
    pub ports: u32,
    /// Ports of held reservations.
    pub held_ports: u32,
}

/// Reservations by kind in `berth status --json`.
#[derive(Debug, serde::Serialize)]
pub struct KindsJson {
    /// Runtime reservations.
    pub runtime: u32,
    /// Persistent reservations.
    pub persistent: u32,
}

/// A count per protocol in `berth status --json`.
#[derive(Debug, serde::Serialize)]
pub struct ProtocolsJson {
    /// TCP.
    pub tcp: u32,
    /// UDP.
    pub udp: u32,
}

/// A quota in `berth status --json`.
#[derive(Debug, serde::Serialize)]
pub struct QuotaJson {
    /// Live runtime reservations at most (a TCP+UDP pair of the same ports counts once).
    pub max_reservations: u32,
    /// Port numbers in them at most (a number in both protocols counts once).
    pub max_ports: u32,
    /// Ports of held reservations at most.
    pub max_held_ports: u32,
}

/// A user's use in `berth status --json`.
#[derive(Debug, serde::Serialize)]
pub struct UsageJson {
    /// Live runtime reservations.
    pub reservations: u32,
    /// Port numbers in them.
    pub ports: u32,
    /// Ports of held reservations.
    pub held_ports: u32,
}

impl From<&StatusInfo> for StatusJson {
    fn from(s: &StatusInfo) -> Self {
        StatusJson {
            version: s.version.clone(),
            client_version: env!("CARGO_PKG_VERSION"),
            protocol_version: s.protocol_version,
            pid: s.pid,
            socket: s.socket.clone(),
            uptime_s: now_ms().saturating_sub(s.started_at_ms) / 1000,
            pool: s.pool.to_string(),
            reservations: s.reservations,
            tcp_ports: s.tcp_ports,
            udp_ports: s.udp_ports,
            reservations_by_kind: KindsJson {
                runtime: s.reservations.saturating_sub(s.persistent),
                persistent: s.persistent,
            },
            pool_size: u32::from(s.pool.range().count()),
            pool_free: ProtocolsJson {
                tcp: s.pool_free.0,
                udp: s.pool_free.1,
            },
            sessions: s.sessions,
            kernel_sync: s.kernel_sync,
            kernel_sync_off_because: (!s.kernel_sync).then(|| s.kernel_sync_off_because.clone()),
            hold_sockets: s.hold_sockets,
            hold: s.hold,
            hold_off_because: (!s.hold).then(|| s.hold_off_because.clone()),
            open_files: s.open_files,
            open_files_limit: s.open_files_limit,
            quota: s.quota.map(|q| QuotaJson {
                max_reservations: q.max_reservations,
                max_ports: q.max_ports,
                max_held_ports: q.max_held_ports,
            }),
            usage: UsageJson {
                reservations: s.usage.reservations,
                ports: s.usage.ports,
                held_ports: s.usage.held_ports,
            },
            ephemeral_share: s.ephemeral_share.map(|share| ShareJson {
                range: format!("{}-{}", share.range.start(), share.range.end()),
                percent: share.percent,
                max_ports: share.max_ports,
                used: share.used,
            }),
            users: s
                .users
                .iter()
                .map(|u| UserUsageJson {
                    uid: u.uid,
                    reservations: u.usage.reservations,
                    ports: u.usage.ports,
                    held_ports: u.usage.held_ports,
                })
                .collect(),
            exposure: s.exposure.map(|e| ExposureJson {
                ports: format!("{}-{}", e.ports.start(), e.ports.end()),
                ephemeral: format!("{}-{}", e.ephemeral.start(), e.ephemeral.end()),
                refused: e.refused,
            }),
            reuse_cool_down_s: s.reuse_cool_down_s,
            mode: s.mode.clone(),
            enforce: EnforceJson {
                available: s.enforce_unavailable_because.is_empty(),
                unavailable_because: (!s.enforce_unavailable_because.is_empty())
                    .then(|| s.enforce_unavailable_because.clone()),
                attached_at: s.enforce_attached_at.clone(),
            },
            portserver: s.portserver.as_ref().map(|p| PortserverJson {
                address: shown(&p.address),
                served: p.not_served_because.is_empty(),
                not_served_because: (!p.not_served_because.is_empty())
                    .then(|| shown(&p.not_served_because)),
                answered: p.answered,
                refused: p.refused,
            }),
            kernel_list: s.kernel_list.map(|k| KernelListJson {
                reserved: k.reserved,
                extras: k.extras,
                foreign: k.foreign,
                repaired: k.repaired,
                one_chunk: k.one_chunk,
            }),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `berth list` for people: one aligned row per reservation.
pub fn table(list: &[ReservationInfo]) -> String {
    let mut rows = vec![[
        "TOKEN".to_owned(),
        "PROTO".to_owned(),
        "PORTS".to_owned(),
        "COUNT".to_owned(),
        "KIND".to_owned(),
        "PID".to_owned(),
        "COMMAND".to_owned(),
        "AGE".to_owned(),
        "HELD".to_owned(),
        "BOUND".to_owned(),
        "NAME".to_owned(),
        "LABEL".to_owned(),
    ]];
    for r in list {
        let (pid, command) = match &r.owner {
            // Printable however the daemon sent it (an earlier release sent names as the
            // processes chose them): this table goes to a terminal.
            Some(o) => (o.pid.to_string(), shown(&o.command)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        rows.push([
            r.token.to_string(),
            r.protocol.to_string(),
            r.range.to_string(),
            r.range.count().to_string(),
            r.kind.as_str().to_owned(),
            pid,
            command,
            human_age(r.age_ms / 1000),
            // A cgroup's ports are kept by the kernel's enforcement, not by hold sockets.
            match (r.held, &r.cgroup) {
                (_, Some(_)) => "enforced",
                (true, None) => "yes",
                (false, None) => "no",
            }
            .to_owned(),
            port_list(&r.bound),
            r.name.clone().unwrap_or_else(|| "-".to_owned()),
            r.label.as_deref().map_or_else(|| "-".to_owned(), shown),
        ]);
    }
    let mut widths = [0usize; 12];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Ports as runs: `8080,8082-8085`; `-` for none.
pub fn port_list(ports: &[u16]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for port in sorted {
        match runs.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(port) => *end = port,
            _ => runs.push((port, port)),
        }
    }
    if runs.is_empty() {
        return "-".to_owned();
    }
    runs.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `42s`, `5m03s`, `2h07m`, `3d04h`.
pub fn human_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Writes to standard output. A reader that went away (`berth list | head -1`, `grep -q`) ends
/// the command quietly with status 0, as if it had finished: the reader has what it wanted.
/// Any other failure to write is said on stderr, with status 1.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("berth: cannot write to standard output: {e}");
        std::process::exit(i32::from(crate::exit::FAILURE));
    }
}

/// `print!` through [`write_out`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!($($arg)*))
    };
}

/// `println!` through [`write_out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// `text` from another user (a command name, a label) as a terminal may show it: each
/// unprintable character as `?` (`berth_core::text`).
pub(crate) fn shown(text: &str) -> String {
    berth_core::text::printable(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(303), "5m03s");
        assert_eq!(human_age(7620), "2h07m");
        assert_eq!(human_age(273600), "3d04h");
    }

    #[test]
    fn text_of_others_is_shown_printable() {
        assert_eq!(shown("\u{1b}[2J\nforged\u{200b}"), "?[2J?forged?");
        assert_eq!(shown("nginx"), "nginx");
    }

    #[test]
    fn an_empty_table_has_its_header() {
        assert!(table(&[]).starts_with("TOKEN  PROTO  PORTS"));
        assert!(table(&[])
            .trim_end()
            .ends_with("AGE  HELD  BOUND  NAME  LABEL"));
    }

    #[test]
    fn port_lists_are_runs() {
        assert_eq!(port_list(&[]), "-");
        assert_eq!(port_list(&[8085, 8080, 8082, 8083, 8084]), "8080,8082-8085");
        assert_eq!(port_list(&[65535, 65534]), "65534-65535");
    }
}
