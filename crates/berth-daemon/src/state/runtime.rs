//! Runtime reservations: acquire, release, re-claim after a restart, and associate.

use std::net::IpAddr;
use std::os::fd::AsFd;

use berth_core::{ErrorKind, Holder, Kind, Protocol, RangeRequest, Requester, Token, UseRequest};
use berth_protocol::Response;
use berth_store::{JournalOp, JournalRow};

use super::{error, info, now_ms, zero_token, OsTokens, Peer, Shared};
use crate::associate;
use crate::peer::groups_of;

impl Shared {
    pub(super) async fn acquire(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        requester: &Requester,
        peer: &Peer,
    ) -> Response {
        let owner = &requester.process;
        let request = match RangeRequest::from_start_count(start, count) {
            Ok(r) => r,
            Err(e) => return error(e.kind(), e.to_string()),
        };
        if let RangeRequest::Specific(range) = request {
            if let Err(refusal) = self.check_privileged(protocol, range, owner) {
                return refusal;
            }
        }
        let holder = Holder {
            owner: owner.clone(),
            session: peer.session,
            acquired_at_ms: now_ms(),
        };
        let prober = self.prober;
        // A wildcard block never holds privileged ports the asker may not use: to the search
        // they look like ports in use, so it moves past them (and a pool of nothing else is
        // exhausted for this user).
        let privileged_below = match request {
            RangeRequest::Wildcard { .. }
                if self.pool_is_privileged && !self.may_use_privileged(owner) =>
            {
                self.privileged.unprivileged_start
            }
            _ => 0,
        };
        let (result, journaled) = {
            let mut table = self.table();
            // The probe binds are non-blocking syscalls; holding the lock across them keeps a
            // candidate block from being handed to two clients at once.
            let result = table.acquire(
                protocol,
                request,
                holder,
                &mut OsTokens,
                &mut |proto, range| {
                    if range.start() < privileged_below {
                        return Some(range.start());
                    }
                    prober.first_in_use(proto, range)
                },
            );
            // Queued under the lock, so the journal sees changes in the table's order.
            let journaled = result.as_ref().ok().and_then(|r| {
                let owner = r.owner.clone()?;
                Some(self.store.journal(JournalOp::Insert(JournalRow {
                    token: r.token,
                    protocol: r.protocol,
                    range: r.range,
                    owner,
                    acquired_at_ms: r.acquired_at_ms,
                })))
            });
            (result, journaled)
        };
        match result {
            Ok(r) => {
                // Acknowledge only once the journal has it: a crash after this reply must not
                // forget the reservation. If it cannot be journaled, it is not granted.
                if let Some(queued) = journaled {
                    if let Err(e) = queued.done().await {
                        self.undo_acquire(&r);
                        return error(
                            ErrorKind::Unavailable,
                            format!("the daemon could not record the reservation in its database ({e}); nothing was reserved — check the daemon's log and its database's disk, then retry"),
                        );
                    }
                }
                tracing::info!(token = %r.token, "{} {} reserved by pid {} ({})", r.protocol, berth_core::describe(r.range), owner.pid, owner.command);
                Response::Acquired(info(&r, owner, requester.is_admin, now_ms()))
            }
            Err(e) => error(e.kind(), e.to_string()),
        }
    }

    pub(super) async fn release(&self, token: u64, requester: &Requester) -> Response {
        let Some(token) = Token::new(token) else {
            return zero_token();
        };
        let (result, journaled) = {
            let mut table = self.table();
            let result = table.release(token, requester);
            let journaled = result
                .as_ref()
                .ok()
                .map(|r| self.store.journal(JournalOp::Remove(r.token)));
            (result, journaled)
        };
        match result {
            Ok(r) => {
                // A failed journal write here only means a restarted daemon would hold the
                // block until its grace period ends (its owner no longer claims it).
                if let Some(queued) = journaled {
                    let _ = queued.done().await;
                }
                tracing::info!(token = %r.token, "{} {} released by pid {}", r.protocol, berth_core::describe(r.range), requester.process.pid);
                Response::Released(info(&r, &requester.process, requester.is_admin, now_ms()))
            }
            Err(e) => error(e.kind(), e.to_string()),
        }
    }

    /// Takes back a reservation that could not be journaled.
    fn undo_acquire(&self, r: &berth_core::Reservation) {
        let admin = Requester {
            process: r.owner.clone().unwrap_or_else(peerless),
            is_admin: true,
        };
        let mut table = self.table();
        if table.release(r.token, &admin).is_ok() {
            self.store.journal_detached(JournalOp::Remove(r.token));
        }
    }

    /// After a restart: gives a journaled reservation back to its owner's new session.
    pub(super) fn reclaim(&self, token: u64, requester: &Requester, peer: &Peer) -> Response {
        let Some(token) = Token::new(token) else {
            return zero_token();
        };
        let result = self
            .table()
            .reclaim(token, &requester.process, peer.session);
        match result {
            Ok(r) => {
                tracing::info!(token = %r.token, "{} {} re-claimed by pid {}", r.protocol, berth_core::describe(r.range), requester.process.pid);
                Response::Reclaimed(info(&r, &requester.process, requester.is_admin, now_ms()))
            }
            Err(e) => error(e.kind(), e.to_string()),
        }
    }

    pub(super) fn associate(
        &self,
        token: u64,
        address: Option<IpAddr>,
        fd: Option<crate::closer::Received>,
        requester: &Requester,
    ) -> Response {
        let Some(fd) = fd else {
            return error(
                ErrorKind::InvalidArgument,
                "an associate request must carry the socket to bind (SCM_RIGHTS); none came with it".into(),
            );
        };
        let Some(token) = Token::new(token) else {
            return zero_token();
        };
        let facts = match associate::inspect(fd.as_fd(), self.netns) {
            Ok(facts) => facts,
            Err((kind, message)) => return error(kind, message),
        };
        // Groups matter only for a persistent reservation's allow list, and only to someone
        // who is not an administrator: read /proc only then, never on the common path.
        let needs_groups = !requester.is_admin
            && self.table().get(token).map(|r| r.kind) == Some(Kind::Persistent);
        let gids = if needs_groups {
            groups_of(&requester.process)
        } else {
            Vec::new()
        };
        let asker = UseRequest {
            process: &requester.process,
            is_admin: requester.is_admin,
            gids: &gids,
        };
        let (range, protocol, kind, cursor) = {
            let table = self.table();
            match table.authorize_use(token, asker) {
                Ok((r, cursor)) => (r.range, r.protocol, r.kind, cursor),
                Err(e) => return error(e.kind(), e.to_string()),
            }
        };
        if facts.protocol != protocol {
            return error(
                ErrorKind::NotSupported,
                format!(
                    "reservation {token} is for {protocol} but the socket is {}; send a {} socket",
                    facts.protocol,
                    if protocol == Protocol::Tcp {
                        "SOCK_STREAM (TCP)"
                    } else {
                        "SOCK_DGRAM (UDP)"
                    }
                ),
            );
        }
        // An administrator who created a persistent reservation for someone has decided for
        // its privileged ports too; a runtime one needs the privileged-port policy.
        if kind == Kind::Runtime {
            if let Err(refusal) = self.check_privileged(protocol, range, &requester.process) {
                return refusal;
            }
        }
        let address = match associate::choose_address(facts, address) {
            Ok(a) => a,
            Err((kind, message)) => return error(kind, message),
        };
        // The binds happen outside the table lock; the kernel arbitrates between them.
        match associate::bind_from(fd.as_fd(), facts, range, cursor, address) {
            Ok(port) => {
                self.table().note_bound(token, port);
                tracing::debug!(%token, port, pid = requester.process.pid, "socket bound");
                Response::Associated { port }
            }
            Err((kind, message)) => error(kind, message),
        }
    }
}

/// A placeholder identity for administrative undo operations.
fn peerless() -> berth_core::Owner {
    berth_core::Owner {
        pid: 0,
        uid: 0,
        gid: 0,
        start_time: 0,
        command: String::new(),
    }
}
