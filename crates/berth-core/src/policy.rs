//! Who may use privileged ports.
//!
//! The kernel checks the privileges of the process that calls `bind()` — the daemon — not
//! those of the client whose socket is bound. A daemon that may bind port 80 would therefore
//! bind it for anybody; this policy is berth's own check, applied on every path that reserves
//! or binds a port below the kernel's unprivileged start.

use thiserror::Error;

use crate::error::{describe, ErrorKind};
use crate::range::{PortRange, Protocol};

/// The privileged-port policy: root always; otherwise the listed users and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivilegedPorts {
    /// `net.ipv4.ip_unprivileged_port_start` of the daemon's namespace: ports below it are
    /// privileged.
    pub unprivileged_start: u16,
    /// Users allowed besides root.
    pub allow_users: Vec<u32>,
    /// Groups whose members (primary or supplementary) are allowed.
    pub allow_groups: Vec<u32>,
}

impl Default for PrivilegedPorts {
    /// Linux's default boundary (1024), root only.
    fn default() -> Self {
        PrivilegedPorts {
            unprivileged_start: 1024,
            allow_users: Vec::new(),
            allow_groups: Vec::new(),
        }
    }
}

/// A privileged port refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{protocol} {} below {unprivileged_start}, among the privileged ports, and uid {uid} may not reserve or bind those; ask an administrator to allow your user or group in the daemon's configuration ([privileged] allow_users / allow_groups), or use a port from {unprivileged_start} up", lies(*range, *unprivileged_start))]
pub struct PrivilegedDenied {
    /// The protocol.
    pub protocol: Protocol,
    /// The ports asked for.
    pub range: PortRange,
    /// The boundary in force.
    pub unprivileged_start: u16,
    /// Who asked.
    pub uid: u32,
}

/// `range` and where it lies against `start`: "port 80 is", "ports 1-1023 are", "ports
/// 1000-1100 reach" (below `start`).
fn lies(range: PortRange, start: u16) -> String {
    let verb = if range.count() == 1 {
        "is"
    } else if range.end() < start {
        "are"
    } else {
        "reach"
    };
    format!("{} {verb}", describe(range))
}

impl PrivilegedDenied {
    /// Always [`ErrorKind::PermissionDenied`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::PermissionDenied
    }
}

impl PrivilegedPorts {
    /// Whether `range` has a privileged port.
    pub fn touches(&self, range: PortRange) -> bool {
        range.start() < self.unprivileged_start
    }

    /// Whether the user `uid` with groups `gids` may use privileged ports.
    pub fn allows(&self, uid: u32, gids: &[u32]) -> bool {
        uid == 0
            || self.allow_users.contains(&uid)
            || gids.iter().any(|g| self.allow_groups.contains(g))
    }

    /// Refuses `range` to `uid`/`gids` when it has privileged ports they may not use.
    pub fn check(
        &self,
        protocol: Protocol,
        range: PortRange,
        uid: u32,
        gids: &[u32],
    ) -> Result<(), PrivilegedDenied> {
        if self.touches(range) && !self.allows(uid, gids) {
            return Err(PrivilegedDenied {
                protocol,
                range,
                unprivileged_start: self.unprivileged_start,
                uid,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u16, count: u16) -> PortRange {
        PortRange::new(start, count).unwrap()
    }

    #[test]
    fn root_only_by_default() {
        let p = PrivilegedPorts::default();
        assert!(p.check(Protocol::Tcp, r(80, 1), 0, &[]).is_ok());
        let err = p.check(Protocol::Tcp, r(80, 1), 1000, &[1000]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("port 80"), "{err}");
        assert!(p.check(Protocol::Tcp, r(1024, 10), 1000, &[]).is_ok());
        // A block that starts below the boundary is privileged even if it ends above it.
        assert!(p.check(Protocol::Udp, r(1020, 10), 1000, &[]).is_err());
    }

    #[test]
    fn the_refusal_says_where_the_ports_lie_in_good_grammar() {
        let p = PrivilegedPorts::default();
        let says = |range| {
            p.check(Protocol::Tcp, range, 1000, &[])
                .unwrap_err()
                .to_string()
        };
        assert!(
            says(r(80, 1)).starts_with("tcp port 80 is below 1024,"),
            "{}",
            says(r(80, 1))
        );
        assert!(says(r(1, 1023)).starts_with("tcp ports 1-1023 are below 1024,"));
        assert!(says(r(1000, 101)).starts_with("tcp ports 1000-1100 reach below 1024,"));
    }

    #[test]
    fn listed_users_and_groups_are_allowed() {
        let p = PrivilegedPorts {
            unprivileged_start: 1024,
            allow_users: vec![1000],
            allow_groups: vec![33],
        };
        assert!(p.allows(1000, &[]));
        assert!(p.allows(2000, &[5, 33]));
        assert!(!p.allows(2000, &[5]));
    }

    #[test]
    fn the_boundary_follows_the_kernel_setting() {
        let p = PrivilegedPorts {
            unprivileged_start: 0,
            ..PrivilegedPorts::default()
        };
        assert!(p.check(Protocol::Tcp, r(1, 1), 1000, &[]).is_ok());
    }
}
