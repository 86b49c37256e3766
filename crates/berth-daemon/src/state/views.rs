//! Read-only answers: `List` and `Status`, and what each viewer may see of a reservation.

use super::*;

impl Shared {
    pub(super) fn list(&self, peer: &Peer) -> Response {
        let now = now_ms();
        let table = self.table();
        Response::List(
            table
                .iter()
                .map(|r| {
                    let mut shown = self.with_cgroup(info(r, &peer.owner, peer.is_admin, now), r);
                    shown.bound = table.bound_list(r.token);
                    shown
                })
                .collect(),
        )
    }

    pub(super) fn status(&self, peer: &Peer) -> Response {
        // What asks the kernel (a /proc/self/fd listing, a count of hold sockets) is read
        // before the table is locked: nothing that grows with the table or the process runs
        // under its lock.
        let open_files = crate::server::limits::open_files();
        let open_files_limit = crate::server::limits::open_files_limit();
        let hold_sockets = u32::try_from(self.holds.count()).unwrap_or(u32::MAX);
        let kernel_list = self.kernel_list_figures();
        // Reads /proc and the mount table: before the table's lock too.
        let enforce = self.enforcer.mode();
        let table = self.table();
        let (quota, usage, ephemeral_share, users) =
            self.limits_view(&table, peer.owner.uid, peer.is_admin);
        Response::Status(StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: peer.version,
            pid: std::process::id(),
            socket: self.socket.clone(),
            started_at_ms: self.started_at_ms,
            pool: table.pool(),
            reservations: u32::try_from(table.len()).unwrap_or(u32::MAX),
            tcp_ports: table.reserved_ports(Protocol::Tcp),
            udp_ports: table.reserved_ports(Protocol::Udp),
            persistent: table.persistent_count(),
            pool_free: (
                table.free_in_pool(Protocol::Tcp),
                table.free_in_pool(Protocol::Udp),
            ),
            sessions: self.sessions.load(Ordering::Relaxed),
            open_files_limit,
            kernel_sync: self.kernel.off_because.is_none(),
            kernel_sync_off_because: self.kernel.off_reason(),
            hold_sockets,
            hold: self.hold_enabled,
            hold_off_because: if self.hold_enabled {
                String::new()
            } else {
                "hold is switched off (hold = false in the configuration, or --no-hold)".to_owned()
            },
            open_files,
            quota,
            usage,
            ephemeral_share,
            users,
            reuse_cool_down_s: u32::try_from(table.reuse_cool_down_ms() / 1000).unwrap_or(u32::MAX),
            kernel_list: kernel_list.map(|f| KernelListInfo {
                reserved: f.reserved,
                extras: f.extras,
                foreign: f.foreign,
                repaired: f.repaired,
                one_chunk: f.one_chunk,
            }),
            exposure: self.kernel.exposure(table.pool().range()),
            mode: if enforce.attached_at.is_some() {
                "enforce"
            } else if self.hold_enabled {
                "hold"
            } else {
                "advisory"
            }
            .to_owned(),
            enforce_attached_at: enforce.attached_at.map(|p| p.display().to_string()),
            enforce_unavailable_because: enforce.unavailable.unwrap_or_default(),
            portserver: self.portserver_info(),
        })
    }
}

/// What `viewer` may see of `r`: owner details — and with them a runtime reservation's label
/// — only for administrators and the owner's own user (the rule of `Reservation::seen_by`).
pub(super) fn info(r: &Reservation, viewer: &Owner, is_admin: bool, now: u64) -> ReservationInfo {
    let hidden = r.owner().is_some_and(|o| !is_admin && o.uid != viewer.uid);
    let owner = r.owner().filter(|_| !hidden).map(|o| OwnerInfo {
        pid: o.pid,
        uid: o.uid,
        command: o.command.to_string(),
    });
    ReservationInfo {
        token: r.token,
        protocol: r.protocol,
        range: r.range,
        kind: r.kind(),
        held: r.held(),
        bound: Vec::new(),
        owner,
        acquired_at_ms: r.acquired_at_ms,
        age_ms: now.saturating_sub(r.acquired_at_ms),
        label: r
            .label
            .as_ref()
            .filter(|_| !hidden)
            .map(|l| l.as_str().to_owned()),
        name: r.name.as_ref().map(|n| n.as_str().to_owned()),
        moved_from: None,
        allow_users: match &r.lease {
            berth_core::Lease::Persistent { allowed, .. } => allowed.users.clone(),
            berth_core::Lease::Runtime { .. } => Vec::new(),
        },
        allow_groups: match &r.lease {
            berth_core::Lease::Persistent { allowed, .. } => allowed.groups.clone(),
            berth_core::Lease::Runtime { .. } => Vec::new(),
        },
        // The daemon's enforce state knows its path (`Shared::with_cgroup`).
        cgroup: None,
    }
}
