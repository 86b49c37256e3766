//! `why`: what the daemon knows about one port; and the process named in a refusal over a
//! port in use on the host. Both read sock_diag and `/proc` on a blocking thread: they run
//! only when someone asks, never on the hot path.

use std::collections::HashSet;

use berth_core::{ErrorKind, Protocol, Requester};
use berth_protocol::{
    ErrorDetail, Holder as DetailHolder, OwnerInfo, PortReport, PortsDetail, RefusalInfo, Response,
    WireError, MAX_SOCKETS_REPORTED,
};

use super::{error, info, now_ms, Peer, Shared};
use crate::host::diag;
use crate::mirror::kernel::reserved_ports;

impl Shared {
    pub(super) async fn why(&self, protocol: Protocol, port: u16, peer: &Peer) -> Response {
        if port == 0 {
            return error(
                ErrorKind::InvalidArgument,
                "port 0 is never reserved or bound; ask about a port from 1 to 65535".into(),
            );
        }
        let (mut reservation, in_pool) = {
            let table = self.table();
            let reservation = table.find_port(protocol, port).map(|r| {
                let mut shown = self.with_cgroup(info(r, &peer.owner, peer.is_admin, now_ms()), r);
                shown.bound = table.bound_list(r.token);
                shown
            });
            (reservation, table.pool().range().contains(port))
        };
        let kernel_reserved = reserved_ports::read(std::path::Path::new(reserved_ports::PATH))
            .map(|set| set.contains(port))
            .unwrap_or(false);
        let berths = self.berth_socket_inodes();
        let (viewer, is_admin) = (peer.owner.uid, peer.is_admin);
        let _scan = self.scans.enter(viewer).await;
        let sockets = tokio::task::spawn_blocking(move || {
            diag::report(protocol, port, viewer, is_admin, &|inode| {
                berths.contains(&inode)
            })
        })
        .await;
        let sockets = match sockets {
            Ok(Ok(sockets)) => sockets,
            Ok(Err(e)) => {
                tracing::warn!("cannot list the sockets on {protocol} port {port}: {e}");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!("the socket listing for {protocol} port {port} failed: {e}");
                Vec::new()
            }
        };
        // A port the table remembers bound, with no live socket on it now (its owner's socket
        // closed; `TIME_WAIT` connections are no socket of anyone's): not bound any more.
        if let Some(shown) = reservation.as_mut() {
            let live = sockets
                .iter()
                .any(|s| !s.held_by_berth && s.state != "TIME_WAIT");
            if shown.bound.contains(&port) && !live {
                shown.bound.retain(|&p| p != port);
                self.forget_bound(shown.token, port);
            }
        }
        Response::Why(Box::new(PortReport {
            protocol,
            port,
            reservation,
            sockets,
            in_pool,
            in_ephemeral_range: crate::config::ephemeral_pool().range().contains(port),
            kernel_reserved,
            refusals: self.refusals_seen_by(protocol, port, peer),
        }))
    }

    /// The binds of `port` enforce mode refused, as `peer` may see them: the count and time for
    /// anyone; the process refused last (and its cgroup) for its own user and administrators.
    fn refusals_seen_by(&self, protocol: Protocol, port: u16, peer: &Peer) -> Option<RefusalInfo> {
        let seen = self.enforcer.refusals(protocol, port)?;
        // The programs' clock is the monotonic one: converted through how long ago it was.
        let ago = berth_os::enforce::monotonic_now().saturating_sub(seen.last.at);
        let ago_ms = u64::try_from(ago.as_millis()).unwrap_or(u64::MAX);
        let visible = peer.is_admin || seen.last.uid == peer.owner.uid;
        Some(RefusalInfo {
            count: seen.count,
            last_at_ms: now_ms().saturating_sub(ago_ms),
            last_by: visible.then(|| OwnerInfo {
                pid: seen.last.pid,
                uid: seen.last.uid,
                // Recorded by the kernel from the binder's own name: any text it chose.
                command: berth_core::Owner::printable_command(&seen.last.command),
            }),
            last_cgroup: if visible {
                self.enforcer.cgroup_path_by_id(seen.last.cgroup)
            } else {
                None
            },
        })
    }

    /// The inodes of the daemon's own hold sockets, which `why` marks `held_by_berth`.
    fn berth_socket_inodes(&self) -> HashSet<u64> {
        self.holds.inodes()
    }

    /// `response` as is, unless it refuses an acquire because a port is in use on the host:
    /// then its message and detail name the process that has the port bound (pid, command,
    /// socket state), where `asker` may see it (administrators and the same user).
    pub(super) async fn name_port_user(&self, response: Response, asker: &Requester) -> Response {
        let in_use = matches!(
            &response,
            Response::Error(WireError {
                kind: ErrorKind::Conflict,
                detail: ErrorDetail::Ports(PortsDetail {
                    port: Some(_),
                    holder: None,
                    ..
                }),
                ..
            })
        );
        // Only with a look free at once: the request holds a request turn (see `HOST_SCANS`),
        // and the conflict is told anyway, without the process's name. (Every acquire's answer
        // passes here: the turns are asked only for a port in use.)
        let Some(_scan) = in_use.then(|| self.scans.try_enter()).flatten() else {
            return response;
        };
        let Response::Error(WireError {
            kind: ErrorKind::Conflict,
            message,
            detail:
                ErrorDetail::Ports(PortsDetail {
                    protocol,
                    start,
                    count,
                    port: Some(port),
                    holder: None,
                }),
        }) = response
        else {
            return response;
        };
        let (uid, is_admin) = (asker.process.uid, asker.is_admin);
        let user = tokio::task::spawn_blocking(move || port_user(protocol, port, uid, is_admin))
            .await
            .ok()
            .flatten();
        let (message, owner) = match user {
            Some((said, owner)) => (describe_user(&message, &said), owner),
            None => (message, None),
        };
        let detail = ErrorDetail::Ports(PortsDetail {
            protocol,
            start,
            count,
            port: Some(port),
            holder: owner.map(|owner| DetailHolder {
                token: None,
                kind: None,
                owner: Some(owner),
            }),
        });
        Response::Error(WireError::new(ErrorKind::Conflict, message).with_detail(detail))
    }
}

/// Who uses `port`, in words ("pid 4121 (nginx; LISTEN on 0.0.0.0:8080)"), and the process
/// where the viewer may see it. `None` when no socket is found (it went away meanwhile).
fn port_user(
    protocol: Protocol,
    port: u16,
    viewer_uid: u32,
    is_admin: bool,
) -> Option<(String, Option<OwnerInfo>)> {
    let sockets = diag::sockets_on(protocol, port, MAX_SOCKETS_REPORTED).ok()?;
    let first = sockets.first()?;
    let socket = format!("{} on {}", first.state_name(), first.local);
    if sockets.iter().all(diag::Bound::is_time_wait) {
        return Some((
            format!("TIME_WAIT connections only ({socket}; they end within a minute, and a server that binds with SO_REUSEADDR may use the port now)"),
            None,
        ));
    }
    let live: Vec<&diag::Bound> = sockets.iter().filter(|s| s.inode != 0).collect();
    let inodes: Vec<u64> = live.iter().map(|s| s.inode).collect();
    let pids = diag::owners(&inodes);
    let Some((bound, pid)) = live
        .iter()
        .find_map(|s| pids.get(&s.inode).map(|&pid| (*s, pid)))
    else {
        return Some((
            format!("a socket ({socket}) of a process the daemon cannot see"),
            None,
        ));
    };
    let socket = format!("{} on {}", bound.state_name(), bound.local);
    let Some(process) = diag::process(pid) else {
        return Some((format!("a process that just exited ({socket})"), None));
    };
    match diag::shown(&process, viewer_uid, is_admin) {
        Some(owner) => Some((
            format!("pid {} ({}; {socket})", owner.pid, owner.command),
            Some(owner),
        )),
        None => Some((format!("another user's process ({socket})"), None)),
    }
}

/// The core's "in use by a socket on this host" message with the user named.
fn describe_user(message: &str, user: &str) -> String {
    const VAGUE: &str = "in use by a socket on this host";
    if message.contains(VAGUE) {
        message.replacen(VAGUE, &format!("in use on this host by {user}"), 1)
    } else {
        format!("{message} (in use by {user})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_user_in_the_core_message() {
        let core = "tcp port 8080 (of the requested 8080) is in use by a socket on this host; choose another range";
        assert_eq!(
            describe_user(core, "pid 7 (nginx; LISTEN on 0.0.0.0:8080)"),
            "tcp port 8080 (of the requested 8080) is in use on this host by pid 7 (nginx; LISTEN on 0.0.0.0:8080); choose another range"
        );
        assert_eq!(describe_user("other", "x"), "other (in use by x)");
    }
}
