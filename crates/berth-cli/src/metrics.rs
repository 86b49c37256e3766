//! `berth status --format openmetrics`: the daemon's status and its reservations as an
//! OpenMetrics text exposition, for a scraper (node_exporter's textfile collector, a cron job,
//! an agent that runs a command).
//!
//! Everything is computed from one `status` and one `list` answer; per-user use is the
//! daemon's own count (`StatusInfo::users`: every user's for an administrator, the asker's own
//! otherwise).

use std::fmt::Write;

use berth::{ReservationInfo, StatusInfo};
use berth_core::{Kind, Protocol};

/// One metric family: its `# TYPE`, `# UNIT`, `# HELP` lines, then its samples
/// (`name{labels} value`).
struct Family {
    name: &'static str,
    kind: &'static str,
    unit: Option<&'static str>,
    help: &'static str,
    samples: Vec<(String, u64)>,
}

impl Family {
    fn gauge(name: &'static str, help: &'static str, samples: Vec<(String, u64)>) -> Self {
        Family {
            name,
            kind: "gauge",
            unit: None,
            help,
            samples,
        }
    }

    fn write(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# TYPE {name} {}", self.kind);
        if let Some(unit) = self.unit {
            let _ = writeln!(out, "# UNIT {name} {unit}");
        }
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        // An info family's samples carry the `_info` suffix, a counter's `_total`.
        let sample = match self.kind {
            "info" => format!("{name}_info"),
            "counter" => format!("{name}_total"),
            _ => name.to_owned(),
        };
        for (labels, value) in &self.samples {
            let _ = writeln!(out, "{sample}{labels} {value}");
        }
    }
}

/// The exposition: one family per metric, then `# EOF`.
pub fn openmetrics(status: &StatusInfo, list: &[ReservationInfo], now_ms: u64) -> String {
    let one = |value: u64| vec![(String::new(), value)];
    let per_user = |value: fn(&berth::UsageInfo) -> u32| {
        status
            .users
            .iter()
            .map(|u| (format!("{{uid=\"{}\"}}", u.uid), u64::from(value(&u.usage))))
            .collect::<Vec<_>>()
    };
    let families = [
        Family {
            name: "berth",
            kind: "info",
            unit: None,
            help: "The daemon's release and protocol version.",
            samples: vec![(
                format!(
                    "{{version=\"{}\",protocol_version=\"{}\"}}",
                    escape(&status.version),
                    status.protocol_version
                ),
                1,
            )],
        },
        Family {
            name: "berth_uptime_seconds",
            kind: "gauge",
            unit: Some("seconds"),
            help: "Seconds since the daemon started.",
            samples: one(now_ms.saturating_sub(status.started_at_ms) / 1000),
        },
        Family::gauge(
            "berth_reservations",
            "Live reservations by kind.",
            [Kind::Runtime, Kind::Persistent]
                .into_iter()
                .map(|kind| {
                    let n = list.iter().filter(|r| r.kind == kind).count();
                    (
                        format!("{{kind=\"{}\"}}", kind.as_str()),
                        u64::try_from(n).unwrap_or(u64::MAX),
                    )
                })
                .collect(),
        ),
        Family::gauge(
            "berth_reserved_ports",
            "Reserved ports by protocol.",
            vec![
                (label(Protocol::Tcp), u64::from(status.tcp_ports)),
                (label(Protocol::Udp), u64::from(status.udp_ports)),
            ],
        ),
        Family::gauge(
            "berth_held_ports",
            "Reserved ports the daemon holds bound until their owner binds them, by protocol.",
            per_protocol(list, |r| {
                if r.held {
                    u64::from(r.range.count()).saturating_sub(len(&r.bound))
                } else {
                    0
                }
            }),
        ),
        Family::gauge(
            "berth_bound_ports",
            "Reserved ports their owner has bound through the daemon, by protocol.",
            per_protocol(list, |r| len(&r.bound)),
        ),
        Family::gauge(
            "berth_pool_ports",
            "Ports in the wildcard pool.",
            one(u64::from(status.pool.range().count())),
        ),
        Family::gauge(
            "berth_pool_free_ports",
            "Ports of the wildcard pool no reservation covers, by protocol.",
            vec![
                (
                    "{protocol=\"tcp\"}".to_owned(),
                    u64::from(status.pool_free.0),
                ),
                (
                    "{protocol=\"udp\"}".to_owned(),
                    u64::from(status.pool_free.1),
                ),
            ],
        ),
        Family::gauge(
            "berth_connected_clients",
            "Open client connections.",
            one(u64::from(status.sessions)),
        ),
        Family::gauge(
            "berth_open_files_limit",
            "The daemon's descriptor limit (soft RLIMIT_NOFILE); no sample when unlimited.",
            if status.open_files_limit == u64::MAX {
                Vec::new()
            } else {
                one(status.open_files_limit)
            },
        ),
        Family::gauge(
            "berth_kernel_sync",
            "1 when the daemon keeps net.ipv4.ip_local_reserved_ports, else 0.",
            one(u64::from(status.kernel_sync)),
        ),
        Family::gauge(
            "berth_hold",
            "1 when the daemon holds the ports of reservations acquired with hold, else 0.",
            one(u64::from(status.hold)),
        ),
        Family::gauge(
            "berth_user_reservations",
            "Runtime reservations per owner uid, a TCP+UDP pair of the same ports counted once (every user for an administrator, else the asker's own).",
            per_user(|u| u.reservations),
        ),
        Family::gauge(
            "berth_user_ports",
            "Port numbers of runtime reservations per owner uid, a number in both protocols counted once (every user for an administrator, else the asker's own).",
            per_user(|u| u.ports),
        ),
        Family::gauge(
            "berth_user_held_ports",
            "Ports of held runtime reservations per owner uid (every user for an administrator, else the asker's own).",
            per_user(|u| u.held_ports),
        ),
        Family::gauge(
            "berth_ephemeral_share_ports",
            "The ports of the ephemeral range users without administrator rights may reserve together; no sample when no share is kept.",
            status
                .ephemeral_share
                .iter()
                .map(|s| (String::new(), u64::from(s.max_ports)))
                .collect(),
        ),
        Family::gauge(
            "berth_ephemeral_share_used_ports",
            "The ports of the ephemeral range users without administrator rights reserve now; no sample when no share is kept.",
            status
                .ephemeral_share
                .iter()
                .map(|s| (String::new(), u64::from(s.used)))
                .collect(),
        ),
        Family {
            name: "berth_portserver_requests",
            kind: "counter",
            unit: None,
            help: "Portpicker requests the daemon's endpoint answered with a port, and those it refused (closed without one), since the daemon started; no sample when it has no endpoint.",
            samples: status
                .portserver
                .iter()
                .flat_map(|p| {
                    [
                        ("{outcome=\"answered\"}".to_owned(), p.answered),
                        ("{outcome=\"refused\"}".to_owned(), p.refused),
                    ]
                })
                .collect(),
        },
    ];
    let mut out = String::new();
    for family in &families {
        family.write(&mut out);
    }
    out.push_str("# EOF\n");
    out
}

fn len(v: &[u16]) -> u64 {
    u64::try_from(v.len()).unwrap_or(u64::MAX)
}

fn label(protocol: Protocol) -> String {
    format!("{{protocol=\"{}\"}}", protocol.as_str())
}

fn per_protocol(
    list: &[ReservationInfo],
    f: impl Fn(&ReservationInfo) -> u64,
) -> Vec<(String, u64)> {
    [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .map(|p| {
            let n = list.iter().filter(|r| r.protocol == p).map(&f).sum();
            (label(p), n)
        })
        .collect()
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth::OwnerInfo;
    use berth_core::{PortRange, Token};

    fn reservation(
        kind: Kind,
        protocol: Protocol,
        start: u16,
        count: u16,
        uid: Option<u32>,
    ) -> ReservationInfo {
        ReservationInfo {
            token: Token::new(u64::from(start)).unwrap(),
            protocol,
            range: PortRange::new(start, count).unwrap(),
            kind,
            owner: uid.map(|uid| OwnerInfo {
                pid: 100 + uid,
                uid,
                command: "x".into(),
            }),
            acquired_at_ms: 0,
            age_ms: 0,
            held: true,
            bound: vec![start],
            label: None,
            moved_from: None,
            name: None,
            allow_groups: Vec::new(),
            cgroup: None,
            allow_users: Vec::new(),
        }
    }

    fn status() -> StatusInfo {
        StatusInfo {
            version: "1.2.3".into(),
            protocol_version: 4,
            pid: 1,
            socket: "/run/berth/berth.sock".into(),
            started_at_ms: 1_000,
            pool: berth_core::Pool::new(40000, 40099).unwrap(),
            reservations: 3,
            tcp_ports: 5,
            udp_ports: 1,
            sessions: 2,
            open_files_limit: 65536,
            kernel_sync: false,
            kernel_sync_off_because: "test".into(),
            persistent: 1,
            pool_free: (96, 100),
            hold: true,
            hold_off_because: String::new(),
            hold_sockets: 4,
            open_files: 30,
            quota: None,
            usage: berth::UsageInfo::default(),
            ephemeral_share: Some(berth::ShareInfo {
                range: berth_core::PortRange::new(32768, 28232).unwrap(),
                percent: 50,
                max_ports: 14116,
                used: 3,
            }),
            users: vec![
                berth::UserUsage {
                    uid: 0,
                    usage: berth::UsageInfo {
                        reservations: 1,
                        ports: 1,
                        held_ports: 0,
                    },
                },
                berth::UserUsage {
                    uid: 1000,
                    usage: berth::UsageInfo {
                        reservations: 1,
                        ports: 3,
                        held_ports: 3,
                    },
                },
            ],
            kernel_list: None,
            exposure: None,
            reuse_cool_down_s: 60,
            mode: "hold".into(),
            enforce_attached_at: None,
            enforce_unavailable_because: String::new(),
            portserver: Some(berth_protocol::PortserverInfo {
                address: "@unittest-portserver".into(),
                not_served_because: String::new(),
                answered: 1234,
                refused: 5,
            }),
        }
    }

    #[test]
    fn the_exposition_has_every_family_and_ends_with_eof() {
        let list = [
            reservation(Kind::Runtime, Protocol::Tcp, 40000, 3, Some(1000)),
            reservation(Kind::Runtime, Protocol::Udp, 40010, 1, Some(0)),
            reservation(Kind::Persistent, Protocol::Tcp, 8080, 2, None),
        ];
        let text = openmetrics(&status(), &list, 61_000);
        for line in [
            "berth_info{version=\"1.2.3\",protocol_version=\"4\"} 1",
            "berth_uptime_seconds 60",
            "berth_reservations{kind=\"runtime\"} 2",
            "berth_reservations{kind=\"persistent\"} 1",
            "berth_reserved_ports{protocol=\"tcp\"} 5",
            "berth_reserved_ports{protocol=\"udp\"} 1",
            "berth_held_ports{protocol=\"tcp\"} 3",
            "berth_held_ports{protocol=\"udp\"} 0",
            "berth_bound_ports{protocol=\"tcp\"} 2",
            "berth_pool_ports 100",
            "berth_pool_free_ports{protocol=\"tcp\"} 96",
            "berth_pool_free_ports{protocol=\"udp\"} 100",
            "berth_connected_clients 2",
            "berth_open_files_limit 65536",
            "berth_kernel_sync 0",
            "berth_hold 1",
            "berth_user_reservations{uid=\"1000\"} 1",
            "berth_user_ports{uid=\"1000\"} 3",
            "berth_user_ports{uid=\"0\"} 1",
            "berth_user_held_ports{uid=\"1000\"} 3",
            "berth_ephemeral_share_ports 14116",
            "berth_ephemeral_share_used_ports 3",
            "# TYPE berth_portserver_requests counter",
            "berth_portserver_requests_total{outcome=\"answered\"} 1234",
            "berth_portserver_requests_total{outcome=\"refused\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Every sample belongs to the family declared last before it.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_owned();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&family), "{line} outside {family}");
            }
        }
    }

    #[test]
    fn a_daemon_without_a_portserver_endpoint_has_no_portserver_samples() {
        let status = StatusInfo {
            portserver: None,
            ..status()
        };
        let text = openmetrics(&status, &[], 61_000);
        assert!(text.contains("# TYPE berth_portserver_requests counter"));
        assert!(!text.contains("berth_portserver_requests_total"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
