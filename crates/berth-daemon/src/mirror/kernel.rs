//! Making the rest of the host honour reservations.
//!
//! `net.ipv4.ip_local_reserved_ports` of the daemon's network namespace hides ports from
//! automatic assignment (`bind(0)` and `connect()`, TCP and UDP, IPv4 and IPv6): while the
//! daemon may write it, it keeps it equal to the entries it did not write plus every
//! reservation (`sync`). A daemon that cannot write it serves a pool outside the kernel's
//! ephemeral range instead ([`safe_default_pool`]).

use berth_core::Pool;

pub(crate) use berth_os::reserved_ports;
pub(crate) mod sync;

/// Whether the daemon keeps `ip_local_reserved_ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelSync {
    /// When the daemon can write the file (root, or `CAP_NET_ADMIN` in its namespace).
    Auto,
    /// Always; the daemon refuses to start when it cannot.
    On,
    /// Never (the library's default: tests and embedded daemons never touch the host).
    #[default]
    Off,
}

impl std::str::FromStr for KernelSync {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(KernelSync::Auto),
            "on" => Ok(KernelSync::On),
            "off" => Ok(KernelSync::Off),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}

/// A kernel-sync mode that is none of auto, on and off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a kernel-sync mode; use auto, on or off")]
pub struct UnknownMode(String);

/// Why the daemon does not keep `ip_local_reserved_ports`.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SyncOff {
    /// The configuration says so.
    #[error("kernel sync is switched off (kernel_sync = \"off\")")]
    SwitchedOff,
    /// The daemon may not write the list: it needs root or `CAP_NET_ADMIN`.
    #[error("the daemon may not write {path} ({0}): it needs root or CAP_NET_ADMIN in its network namespace", path = reserved_ports::PATH)]
    Denied(#[source] std::sync::Arc<std::io::Error>),
    /// The list cannot be opened for writing for another reason.
    #[error("cannot open {path} for writing ({0})", path = reserved_ports::PATH)]
    Unopenable(#[source] std::sync::Arc<std::io::Error>),
}

/// What the database says an earlier daemon wrote into the list (empty when nothing, or when
/// the record cannot be read — then nothing is taken out that was not written now).
pub(crate) fn recorded(store: &berth_store::Store) -> berth_core::PortSet {
    store
        .meta(sync::WRITTEN_KEY)
        .ok()
        .flatten()
        .and_then(|text| berth_core::PortSet::parse(&text).ok())
        .unwrap_or_default()
}

/// Whether the daemon will keep the file, or why not.
pub(crate) fn decide(mode: KernelSync) -> Result<(), SyncOff> {
    match mode {
        KernelSync::Off => Err(SyncOff::SwitchedOff),
        KernelSync::Auto | KernelSync::On => reserved_ports::check_writable().map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                SyncOff::Denied(std::sync::Arc::new(e))
            } else {
                SyncOff::Unopenable(std::sync::Arc::new(e))
            }
        }),
    }
}

/// Whether a daemon with `mode` will keep `ip_local_reserved_ports` here: decides the default
/// pool before the daemon starts.
pub fn will_sync(mode: KernelSync) -> bool {
    decide(mode).is_ok()
}

/// How many free ports kernel sync may list beside the reservations so that the list's value
/// fits one kernel chunk (see `sync`). Such *extras* inside the ephemeral range are hidden from
/// other programs' `connect()` and `bind(0)` like reserved ports, so they are bounded: together
/// with non-administrators' reservations they stay within the ephemeral share (its unused
/// part is the room; a quarter of the range when no share is kept). Extras outside the range
/// cost nothing. The table's owner keeps the room up to date as grants change the share; past
/// it the list is written in several chunks, with a warning.
#[derive(Debug, Default)]
pub(crate) struct ExtrasRoom {
    costly: std::sync::Mutex<(u16, u16)>,
    max: std::sync::atomic::AtomicU32,
}

impl ExtrasRoom {
    /// Room for `max` extras inside the ephemeral range `ephemeral`.
    pub(crate) fn set(&self, ephemeral: berth_core::PortRange, max: u32) {
        *self
            .costly
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            (ephemeral.start(), ephemeral.end());
        self.max.store(max, std::sync::atomic::Ordering::Relaxed);
    }

    /// The room now.
    pub(crate) fn get(&self) -> berth_core::Extras {
        berth_core::Extras {
            costly: *self
                .costly
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            max: self.max.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The IANA dynamic range, where a pool outside the ephemeral range is looked for first.
const DYNAMIC: (u16, u16) = (49152, 65535);

/// The default pool: the kernel's ephemeral range when the daemon keeps the reserved-ports list
/// (its grants are then hidden from every `connect()`), else the largest block of the dynamic
/// range (49152-65535) outside the ephemeral range — ports any `connect()` may be given must not
/// be handed out unprotected — or, if the ephemeral range covers all of it, the largest block of
/// 1024-65535 outside it; `None` when the ephemeral range leaves no port of 1024-65535 outside
/// it (then no default pool is safe without the list).
pub fn safe_default_pool(syncing: bool, ephemeral: Pool) -> Option<Pool> {
    if syncing {
        return Some(ephemeral);
    }
    let eph = ephemeral.range();
    let outside = |lo: u16, hi: u16| -> Option<(u16, u16)> {
        // The parts of lo..=hi before and after the ephemeral range; the larger one.
        let before = (lo < eph.start()).then(|| (lo, hi.min(eph.start() - 1)));
        let after = (hi > eph.end()).then(|| (lo.max(eph.end() + 1), hi));
        [before, after]
            .into_iter()
            .flatten()
            .filter(|(a, b)| a <= b)
            .max_by_key(|(a, b)| b - a)
    };
    outside(DYNAMIC.0, DYNAMIC.1)
        .or_else(|| outside(1024, 65535))
        .and_then(|(lo, hi)| Pool::new(lo, hi).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pool_avoids_the_ephemeral_range_without_sync() {
        let linux = Pool::new(32768, 60999).unwrap();
        assert_eq!(safe_default_pool(true, linux), Some(linux));
        assert_eq!(
            safe_default_pool(false, linux),
            Some(Pool::new(61000, 65535).unwrap())
        );
        let wide = Pool::new(49152, 65535).unwrap();
        assert_eq!(
            safe_default_pool(false, wide),
            Some(Pool::new(1024, 49151).unwrap())
        );
        let low = Pool::new(10000, 20000).unwrap();
        assert_eq!(
            safe_default_pool(false, low),
            Some(Pool::new(49152, 65535).unwrap())
        );
        // Everything above the privileged ports is ephemeral: no pool is safe without sync.
        let all = Pool::new(1024, 65535).unwrap();
        assert_eq!(safe_default_pool(false, all), None);
        assert_eq!(safe_default_pool(true, all), Some(all));
    }
}
