//! The privileged-port policy with the kernel's current facts: the boundary
//! (`net.ipv4.ip_unprivileged_port_start`) as it is now, and whether the asking process may
//! bind privileged ports itself (`CAP_NET_BIND_SERVICE` where it counts), read when a decision
//! needs them — never a copy taken at start-up.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use berth_core::{Owner, PortRange, PrivilegedPorts, Protocol};
use berth_protocol::Response;

use super::{error, Shared};
use crate::session::peer::groups_of;

/// How long a read of the boundary is used for: decisions see a change within this, without a
/// `/proc` read per request.
pub(crate) const BOUNDARY_FRESH: Duration = Duration::from_millis(250);

/// The boundary as last read, and when.
#[derive(Debug, Default)]
pub(super) struct Boundary(Mutex<Option<(Instant, u16)>>);

impl Boundary {
    /// `ip_unprivileged_port_start` of the daemon's network namespace, at most
    /// [`BOUNDARY_FRESH`] old.
    fn now(&self) -> u16 {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match *last {
            Some((at, start)) if now.saturating_duration_since(at) < BOUNDARY_FRESH => start,
            _ => {
                let start = crate::config::unprivileged_port_start();
                *last = Some((now, start));
                start
            }
        }
    }
}

impl Shared {
    /// The policy, with the boundary in force now.
    pub(super) fn privileged_now(&self) -> PrivilegedPorts {
        PrivilegedPorts {
            unprivileged_start: self.boundary.now(),
            ..self.privileged.clone()
        }
    }

    /// Whether `who` may use privileged ports at all: the policy allows its user or a group
    /// of it, or the kernel would let it bind them itself.
    pub(super) fn may_use_privileged(&self, who: &Owner) -> bool {
        self.privileged.allows(who.uid, &groups_of(who))
            || crate::session::peer::may_bind_privileged(who.pid)
    }

    /// Refuses privileged ports to processes that may not use them.
    pub(super) fn check_privileged(
        &self,
        protocol: Protocol,
        range: PortRange,
        who: &Owner,
    ) -> Result<(), Box<Response>> {
        let policy = self.privileged_now();
        if !policy.touches(range) || self.may_use_privileged(who) {
            return Ok(());
        }
        policy
            .check(protocol, range, who.uid, &groups_of(who))
            .map_err(|e| Box::new(error(e.kind(), e.to_string())))
    }

    /// The lowest port `who` may get from the wildcard pool: above the privileged ports
    /// unless it may use them.
    pub(super) fn lowest_wildcard_port(&self, who: &Owner) -> u16 {
        let policy = self.privileged_now();
        let pool = self.table().pool();
        if policy.touches(pool.range()) && !self.may_use_privileged(who) {
            policy.unprivileged_start
        } else {
            0
        }
    }
}
