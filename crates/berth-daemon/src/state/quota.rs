//! The limits on what non-administrators reserve: each user's quota (reservations, ports, held
//! ports) and the ephemeral share — the part of the host's ephemeral range they may reserve
//! together, so that no ordinary user (nor ten of them) can leave the host's `connect()`s
//! without ports. Administrators are exempt from both, and their reservations do not count
//! against the share.

use berth_core::{AcquireError, Constraints, Owner, QuotaKind, Table};
use berth_protocol::{QuotaDetail, QuotaInfo, QuotaWhat, ShareInfo, UsageInfo, UserUsage};

use super::Shared;

impl Shared {
    /// What bounds an acquire by someone who is (`is_admin`) or is not an administrator, with
    /// the lowest port it may have; `table` is locked by the caller, so that the share is
    /// decided against the very state the grant changes.
    pub(super) fn constraints(
        &self,
        table: &Table,
        lowest_port: u16,
        is_admin: bool,
    ) -> Constraints {
        Constraints {
            lowest_port,
            quota: (!is_admin).then_some(self.quota),
            shared_max: if is_admin {
                None
            } else {
                self.share_max(table)
            },
        }
    }

    /// Tells kernel sync how many free ports it may list beside the reservations (see
    /// `ExtrasRoom`): the unused part of the ephemeral share. Called under the table lock as
    /// changes are published; without a share the room is fixed ([`Shared::reset_extras_room`]).
    pub(super) fn update_extras_room(&self, table: &Table) {
        let (Some(range), Some(max)) = (table.shared_range(), self.share_max(table)) else {
            return;
        };
        self.kernel
            .extras
            .set(range, max.saturating_sub(table.shared_used()));
    }

    /// Sets kernel sync's room for extras at start-up and when the ephemeral range changes:
    /// the unused share, or a quarter of `ephemeral` when no share is kept.
    pub(super) fn reset_extras_room(&self, table: &Table, ephemeral: berth_core::PortRange) {
        if table.shared_range().is_some() && self.ephemeral_share.is_some() {
            self.update_extras_room(table);
        } else {
            self.kernel
                .extras
                .set(ephemeral, u32::from(ephemeral.count()) / 4);
        }
    }

    /// Whether `owner`'s runtime reservations count against the ephemeral share.
    pub(super) fn capped(&self, owner: &Owner) -> bool {
        self.ephemeral_share.is_some() && !self.is_admin(owner)
    }

    /// The ephemeral share in ports, for the range the table counts against.
    fn share_max(&self, table: &Table) -> Option<u32> {
        let percent = u32::from(self.ephemeral_share?);
        let range = table.shared_range()?;
        Some(u32::from(range.count()) * percent / 100)
    }

    /// `berth status`'s view of the limits: the asker's quota and use, the share, and every
    /// user's use (an administrator's view) or the asker's own.
    pub(super) fn limits_view(
        &self,
        table: &Table,
        uid: u32,
        is_admin: bool,
    ) -> (
        Option<QuotaInfo>,
        UsageInfo,
        Option<ShareInfo>,
        Vec<UserUsage>,
    ) {
        let quota = (!is_admin).then_some(QuotaInfo {
            max_reservations: self.quota.max_reservations,
            max_ports: self.quota.max_ports,
            max_held_ports: self.quota.max_held_ports,
        });
        let share = match (
            self.ephemeral_share,
            table.shared_range(),
            self.share_max(table),
        ) {
            // Shown where it counts: while something is counted against it, or when wildcard
            // blocks can land in the range (a pool outside it — a per-user daemon's default —
            // leaves it at 0 unless someone asks for ports there by number).
            (Some(percent), Some(range), Some(max_ports))
                if table.shared_used() > 0 || table.pool().range().overlaps(range) =>
            {
                Some(ShareInfo {
                    range,
                    percent,
                    max_ports,
                    used: table.shared_used(),
                })
            }
            _ => None,
        };
        let mut users: Vec<UserUsage> = table
            .usages()
            .filter(|(user, _)| is_admin || *user == uid)
            .map(|(uid, u)| UserUsage {
                uid,
                usage: usage_info(u),
            })
            .collect();
        users.sort_by_key(|u| u.uid);
        (quota, usage_info(table.usage(uid)), share, users)
    }
}

fn usage_info(u: berth_core::Usage) -> UsageInfo {
    UsageInfo {
        reservations: u.reservations,
        ports: u.ports,
        held_ports: u.held_ports,
    }
}

/// The message and detail of a refusal for a limit: what the core says, and which setting of
/// the daemon's configuration file sets the limit (`share_percent`: the ephemeral share's
/// setting, when it is in force).
pub(super) fn quota_refused(
    e: &AcquireError,
    share_percent: Option<u8>,
) -> Option<(String, QuotaDetail)> {
    let AcquireError::QuotaExceeded {
        what,
        limit,
        used,
        asked,
        ..
    } = e
    else {
        return None;
    };
    let (setting, wire) = match what {
        QuotaKind::Reservations => (
            format!("`max_reservations = {limit}`"),
            QuotaWhat::Reservations,
        ),
        QuotaKind::Ports => (format!("`max_ports = {limit}`"), QuotaWhat::Ports),
        QuotaKind::HeldPorts => (format!("`max_held_ports = {limit}`"), QuotaWhat::HeldPorts),
        QuotaKind::Shared => (
            // The setting as it is written (a valid line), then what its number means.
            format!(
                "`ephemeral_share = {}`, a percentage of the ephemeral range,",
                share_percent.unwrap_or(0)
            ),
            QuotaWhat::EphemeralShare,
        ),
    };
    Some((
        format!("{e} ({setting} in the [quota] table of the daemon's configuration file; docs/configuration.md)"),
        QuotaDetail {
            what: wire,
            limit: *limit,
            used: *used,
            asked: u32::from(*asked),
        },
    ))
}
