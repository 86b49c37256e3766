//! When protection is off: a daemon that does not keep `ip_local_reserved_ports` cannot hide
//! its grants from other programs' `connect()` and `bind(0)`, so a wildcard pool inside the
//! kernel's ephemeral range hands out ports any of them may be given. The default pool is kept
//! outside the range (it follows the range when it changes); when the range leaves no room
//! outside it, the default pool stays where it was and wildcard requests are refused, saying
//! why. A pool an administrator chose is served as chosen, with a warning in the log (once per
//! change) and in `berth status`.

use std::sync::Mutex;

use berth_core::PortRange;
use berth_protocol::ExposureInfo;

use super::{KernelState, Shared};

/// What the daemon knows of the ephemeral range, for a daemon without kernel sync.
#[derive(Debug)]
pub(super) struct Exposure {
    /// Whether the pool is the default one (refused when exposed) or the administrator's
    /// (served, with a warning).
    pool_follows: bool,
    /// The ephemeral range as last read, and the exposure last warned about.
    seen: Mutex<(PortRange, Option<PortRange>)>,
}

impl Exposure {
    /// For a pool that follows the range (`pool_follows`) or not, with the range as read now.
    pub(super) fn new(pool_follows: bool, ephemeral: PortRange) -> Self {
        Exposure {
            pool_follows,
            seen: Mutex::new((ephemeral, None)),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, (PortRange, Option<PortRange>)> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl KernelState {
    /// The part of `pool` inside the ephemeral range, when the daemon does not keep the
    /// kernel's list (then those ports are exposed to every `connect()`), and whether wildcard
    /// requests are refused for it.
    pub(super) fn exposure(&self, pool: PortRange) -> Option<ExposureInfo> {
        self.exposure_within(pool, self.exposure.seen().0)
    }

    /// [`KernelState::exposure`] against the ephemeral range `ephemeral`.
    fn exposure_within(&self, pool: PortRange, ephemeral: PortRange) -> Option<ExposureInfo> {
        self.off_because.as_ref()?;
        let overlap = pool.intersection(ephemeral)?;
        Some(ExposureInfo {
            ports: overlap,
            ephemeral,
            refused: self.exposure.pool_follows,
        })
    }

    /// Why kernel sync is off, in words ("" when it is on).
    pub(super) fn off_reason(&self) -> String {
        self.off_because
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

impl Shared {
    /// Notes the ephemeral range read now, and warns once about each new exposure of `pool`.
    pub(super) fn note_ephemeral(&self, ephemeral: PortRange, pool: PortRange) {
        let exposed = self.kernel.exposure_within(pool, ephemeral);
        {
            let mut seen = self.kernel.exposure.seen();
            let warned = std::mem::replace(&mut *seen, (ephemeral, exposed.map(|e| e.ports))).1;
            if warned == exposed.map(|e| e.ports) {
                return;
            }
        }
        let why = self.kernel.off_reason();
        match exposed {
            Some(e) if e.refused => tracing::warn!(
                "the kernel's ephemeral range {ephemeral} leaves no room outside it for the default wildcard pool, and {why}: wildcard requests are refused until the range changes; give the daemon a pool (--pool, or pool in its configuration) or let it keep ip_local_reserved_ports (docs/kernel.md, \"Protection off\")"
            ),
            Some(e) => tracing::warn!(
                "ports {} of the wildcard pool {pool} lie in the kernel's ephemeral range {ephemeral}, and {why}: other programs' connect() and bind(0) may be given them; choose a pool outside the ephemeral range, or let the daemon keep ip_local_reserved_ports (docs/kernel.md, \"Protection off\")",
                e.ports
            ),
            None => tracing::info!("the wildcard pool {pool} lies outside the ephemeral range {ephemeral}"),
        }
    }

    /// A wildcard request's refusal while the default pool is exposed (see the module).
    pub(super) fn exposed_refusal(&self, pool: PortRange) -> Option<String> {
        let e = self.kernel.exposure(pool).filter(|e| e.refused)?;
        let why = self.kernel.off_reason();
        Some(format!(
            "the daemon's wildcard pool {pool} lies in the kernel's ephemeral range {}, and {why}: a port granted there could be given to any program's connect() meanwhile, so nothing was reserved; ask for ports by number outside the range, or have an administrator give the daemon a pool outside it (--pool) or let it keep ip_local_reserved_ports",
            e.ephemeral
        ))
    }
}
