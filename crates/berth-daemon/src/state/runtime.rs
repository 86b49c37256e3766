//! Runtime reservations: acquire, release, re-claim after a restart, hand-over to a process,
//! and associate.
//!
//! One file for one request family: the requests on runtime reservations share their checks
//! (who may use a token, the privileged-port policy, the quota), so they are read together.

use std::net::IpAddr;
use std::os::fd::AsFd;

use berth_core::{
    AcquireError, ErrorKind, FoundInUse, Holder, Kind, Label, Name, Owner, PortRange, Protocol,
    RangeRequest, Requester, Reservation, Token, UseRequest,
};
use berth_protocol::{
    AcquireOptions, ErrorDetail, Holder as DetailHolder, NameDetail, PoolDetail, PortsDetail,
    ReservationInfo, Response, WireError,
};

use super::{error, info, now_ms, zero_token, OsTokens, Peer, Shared};
use crate::host::associate;
use crate::session::lineage;
use crate::session::peer::groups_of;

impl Shared {
    pub(super) async fn acquire(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        options: &AcquireOptions,
        requester: &Requester,
        peer: &Peer,
    ) -> Response {
        let ask = Ask::One(protocol);
        match self
            .grant(ask, start, count, options, requester, peer)
            .await
        {
            Ok(granted) => match granted.as_slice() {
                [r] => Response::Acquired(self.with_cgroup(shown(r, requester, now_ms()), &r.0)),
                _ => error(ErrorKind::Unavailable, "the grant went missing".into()),
            },
            Err(refusal) => *refusal,
        }
    }

    /// The same ports in TCP and UDP, together or not at all.
    pub(super) async fn acquire_both(
        &self,
        start: u16,
        count: u16,
        options: &AcquireOptions,
        requester: &Requester,
        peer: &Peer,
    ) -> Response {
        match self
            .grant(Ask::Both, start, count, options, requester, peer)
            .await
        {
            Ok(granted) => match granted.as_slice() {
                [tcp, udp] => {
                    let now = now_ms();
                    Response::AcquiredBoth {
                        tcp: Box::new(self.with_cgroup(shown(tcp, requester, now), &tcp.0)),
                        udp: Box::new(self.with_cgroup(shown(udp, requester, now), &udp.0)),
                    }
                }
                _ => error(ErrorKind::Unavailable, "the grant went missing".into()),
            },
            Err(refusal) => *refusal,
        }
    }

    /// Grants what `ask` asks for with `options`, owned by the asker or — enforced — by a
    /// cgroup (see `state/enforce.rs`), refused before anything is granted when enforcement
    /// cannot be honoured here.
    async fn grant(
        &self,
        ask: Ask,
        start: u16,
        count: u16,
        options: &AcquireOptions,
        requester: &Requester,
        peer: &Peer,
    ) -> Result<Vec<(Reservation, Option<PortRange>)>, Box<Response>> {
        let Some(enforce) = &options.enforce else {
            return self
                .grant_owned(ask, start, count, options, requester, peer)
                .await;
        };
        self.check_enforce(enforce, requester)?;
        let granted = self
            .grant_owned(ask, start, count, options, requester, peer)
            .await?;
        self.give_to_cgroup(granted, enforce, requester).await
    }

    /// Grants what `ask` asks for with `options` (see [`Shared::grant_request`]). A wildcard
    /// request for a name tries the block the name was given last time first; when that is
    /// not free (or no longer allowed), the request is served as asked and the name's memory
    /// moves, which the answer says (`moved_from`).
    async fn grant_owned(
        &self,
        ask: Ask,
        start: u16,
        count: u16,
        options: &AcquireOptions,
        requester: &Requester,
        peer: &Peer,
    ) -> Result<Vec<(Reservation, Option<PortRange>)>, Box<Response>> {
        let owner = &requester.process;
        let invalid = |message: String| Box::new(error(ErrorKind::InvalidArgument, message));
        let request = RangeRequest::from_start_count_within(start, count, options.within)
            .map_err(|e| invalid(e.to_string()))?;
        let label = Label::parse(&options.label).map_err(|e| invalid(e.to_string()))?;
        let name = Name::parse(&options.name).map_err(|e| invalid(e.to_string()))?;
        // A daemon with hold switched off grants every reservation unheld (and says so); an
        // enforced one is never held: the kernel keeps its ports, and a hold would refuse the
        // owner's own bind.
        let hold = options.hold && self.hold_enabled && options.enforce.is_none();
        let holder = Holder {
            owner: owner.clone(),
            session: peer.session,
            acquired_at_ms: now_ms(),
            hold,
            label,
            name: name.clone(),
        };
        let Some(name) = name else {
            let granted = self
                .grant_request(ask, request, holder, (start, count), requester)
                .await?;
            return Ok(granted.into_iter().map(|r| (r, None)).collect());
        };
        let remembered = self.remembered_block(ask, owner.uid, &name, request);
        let granted = match remembered {
            Some(block) => {
                let first = self
                    .grant_request(
                        ask,
                        RangeRequest::Specific(block),
                        holder.clone(),
                        (start, count),
                        requester,
                    )
                    .await;
                match first {
                    Ok(granted) => granted,
                    // The name is someone's already: no other block makes that right.
                    Err(refusal) if names_taken(&refusal) => return Err(refusal),
                    Err(_) => {
                        self.grant_request(ask, request, holder, (start, count), requester)
                            .await?
                    }
                }
            }
            None => {
                self.grant_request(ask, request, holder, (start, count), requester)
                    .await?
            }
        };
        let moved = self.remember_names(&granted);
        Ok(granted.into_iter().zip(moved).collect())
    }

    /// The block to try first for a wildcard `request` named `name`: what the name was given
    /// last time (in TCP, for a pair), when it is as large and lies inside the bounds asked.
    fn remembered_block(
        &self,
        ask: Ask,
        uid: u32,
        name: &Name,
        request: RangeRequest,
    ) -> Option<PortRange> {
        if matches!(request, RangeRequest::Specific(_)) {
            return None;
        }
        let book = self.names();
        let block = match ask {
            Ask::One(protocol) => book.remembered(uid, name, protocol),
            Ask::Both => book
                .remembered(uid, name, Protocol::Tcp)
                .or_else(|| book.remembered(uid, name, Protocol::Udp)),
        }?;
        let inside = request
            .bounds()
            .is_none_or(|b| b.contains(block.start()) && b.contains(block.end()));
        (block.count() == request.count() && inside).then_some(block)
    }

    /// Grants `request` to `holder`, bound to its session, and answers only once every
    /// consumer of the change stream has it (a crash after the reply must not forget it). If
    /// any grant is refused, all of them are undone: nothing is reserved. `(start, count)`: the
    /// request as the client gave it, for refusals.
    async fn grant_request(
        &self,
        ask: Ask,
        request: RangeRequest,
        holder: Holder,
        (start, count): (u16, u16),
        requester: &Requester,
    ) -> Result<Vec<Reservation>, Box<Response>> {
        let owner = &requester.process;
        let lowest_port = self.lowest_port_for(request, owner);
        let hold = holder.hold;
        let (mut probes, holds) = (self.prober.probes(), &self.holds);
        let wildcard = !matches!(request, RangeRequest::Specific(_));
        let bounds = request.bounds();
        // A held block's in-use test is its hold sockets' own binds, which then keep the
        // ports: they are made outside the table lock (a large block is many binds). The block
        // is chosen under the lock — inserted in the table, so no other request can have it —
        // held outside it, then published under it; a port found in use undoes the choice, and
        // a wildcard request chooses again, passing by every port it found in use (the cursor
        // alone does not: another request's withdrawal may send it back over them).
        let refuse = |e: &berth_core::AcquireError| {
            Box::new(acquire_refused(
                e,
                start,
                count,
                requester,
                self.ephemeral_share,
            ))
        };
        let mut found_in_use = FoundInUse::default();
        let pending = loop {
            let (changes, granted) = {
                let mut table = self.table();
                // Bounds a request chose are searched as asked.
                if wildcard && bounds.is_none() {
                    if let Some(message) = self.exposed_refusal(table.pool().range()) {
                        return Err(Box::new(error(ErrorKind::PoolExhausted, message)));
                    }
                }
                // Administrators are exempt: they keep the service running for everyone.
                let limits = self.constraints(&table, lowest_port, requester.is_admin);
                // An unheld block's in-use test: one probe bind a port, under the lock, so
                // that no other request takes the block between the probe and the grant.
                let mut in_use = |proto, range| {
                    if let Some(port) = found_in_use.first_in(proto, range) {
                        return Some(port);
                    }
                    // A wildcard block leaves alone the ports an administrator listed in the
                    // kernel's reserved-ports list: they are someone else's.
                    if wildcard {
                        if let Some(port) = self.listed_by_others(range) {
                            return Some(port);
                        }
                    }
                    if hold {
                        None
                    } else if wildcard {
                        probes.first_in_use(proto, range)
                    } else {
                        probes.first_in_use_by_number(proto, range)
                    }
                };
                let changes = match ask {
                    Ask::One(protocol) => table
                        .acquire(
                            protocol,
                            request,
                            holder.clone(),
                            limits,
                            &mut OsTokens,
                            &mut in_use,
                        )
                        .map(|c| vec![c]),
                    Ask::Both => table
                        .acquire_both(request, holder.clone(), limits, &mut OsTokens, &mut in_use)
                        .map(Vec::from),
                };
                let changes = match changes {
                    Ok(changes) => changes,
                    Err(e) => {
                        if let Some(message) = probes.shortage_answer() {
                            return Err(Box::new(error(ErrorKind::Unavailable, message)));
                        }
                        return Err(refuse(&e));
                    }
                };
                let granted: Vec<Reservation> = changes
                    .iter()
                    .filter_map(|c| c.reservation().cloned())
                    .collect();
                if !hold {
                    break (self.publish(&mut table, changes), granted);
                }
                (changes, granted)
            };
            // Held: the hold sockets' binds, outside the table lock.
            let taken = granted
                .iter()
                .find_map(|r| holds.try_hold(r.protocol, r.range).map(|port| (r, port)));
            let mut table = self.table();
            let Some((r, port)) = taken else {
                break (self.publish(&mut table, changes), granted);
            };
            // In use on the host: the choice is undone (nobody saw it), its staged sockets
            // dropped.
            let (protocol, range) = (r.protocol, r.range);
            for g in &granted {
                holds.unstage(g.protocol, g.range);
                table.withdraw(g, port);
            }
            drop(table);
            found_in_use.note(protocol, port);
            if !wildcard {
                return Err(refuse(&berth_core::AcquireError::InUse {
                    protocol,
                    requested: range,
                    port,
                }));
            }
            // A wildcard request chooses again, until the table's search, passing by every port
            // found in use, finds nothing: each choice notes a new port, so this ends within
            // the pool's ports.
        };
        let (pending, granted) = pending;
        // A refused grant is undone with its whole batch (see the stream's "Transactions").
        if let Err(why) = self.settle(pending).await {
            return Err(Box::new(error(
                ErrorKind::Unavailable,
                format!("the daemon could not complete the reservation ({why}); nothing was reserved — see the daemon's log (`berth status` shows its descriptor use), then retry"),
            )));
        }
        Ok(granted)
    }

    /// The lowest port `owner` may get: above the privileged ports, unless it may use them.
    /// Looks at the owner (groups, capabilities) only when the request could reach privileged
    /// ports.
    pub(super) fn lowest_port_for(&self, request: RangeRequest, owner: &Owner) -> u16 {
        match request {
            RangeRequest::Specific(range) => {
                let policy = self.privileged_now();
                if policy.touches(range) && !self.may_use_privileged(owner) {
                    policy.unprivileged_start
                } else {
                    0
                }
            }
            RangeRequest::Wildcard { .. } => self.lowest_wildcard_port(owner),
            // Bounds are judged as a specific block of them would be.
            RangeRequest::Within { bounds, .. } => {
                self.lowest_port_for(RangeRequest::Specific(bounds), owner)
            }
        }
    }

    pub(super) async fn release(&self, token: u64, requester: &Requester) -> Response {
        let Some(token) = Token::new(token) else {
            return zero_token();
        };
        let (released, pending) = {
            let mut table = self.table();
            let change = match table.release(token, requester) {
                Ok(change) => change,
                Err(e) => {
                    let e = e.seen_by(requester.process.uid, requester.is_admin);
                    return error(e.kind(), e.to_string());
                }
            };
            let released = change.reservation().cloned();
            (released, self.publish(&mut table, vec![change]))
        };
        // A release cannot be refused; a journal that failed to follow only means a restarted
        // daemon would hold the block until its grace period ends.
        let _ = self.settle(pending).await;
        match released {
            Some(r) => {
                if !r.is_owned_by(&requester.process) {
                    // An administrator's action, not a client's own lifecycle.
                    tracing::info!(token = %r.token, pid = requester.process.pid, uid = requester.process.uid, "{} {} of {} released by an administrator (pid {}, uid {})", r.protocol, berth_core::describe(r.range), r.holder_description(), requester.process.pid, requester.process.uid);
                }
                Response::Released(info(&r, &requester.process, requester.is_admin, now_ms()))
            }
            None => error(ErrorKind::Unavailable, "the release went missing".into()),
        }
    }

    /// After a restart: gives a restored reservation back to its owner's new session.
    pub(super) async fn reclaim(&self, token: u64, requester: &Requester, peer: &Peer) -> Response {
        let Some(token) = Token::new(token) else {
            return zero_token();
        };
        let (after, pending) = {
            let mut table = self.table();
            let change = match table.reclaim(token, &requester.process, peer.session) {
                Ok(change) => change,
                Err(e) => return error(e.kind(), e.to_string()),
            };
            let after = change.reservation().cloned();
            (after, self.publish(&mut table, vec![change]))
        };
        if let Err(why) = self.settle(pending).await {
            return error(
                ErrorKind::Unavailable,
                format!("the daemon could not record the re-claim ({why}); retry"),
            );
        }
        match after {
            Some(r) => {
                Response::Reclaimed(info(&r, &requester.process, requester.is_admin, now_ms()))
            }
            None => error(ErrorKind::Unavailable, "the re-claim went missing".into()),
        }
    }

    /// Hands a reservation of the requester to process `pid`, a child of the requester of the
    /// same user: from then on it lives exactly as long as that process.
    pub(super) async fn transfer(&self, token: u64, pid: u32, requester: &Requester) -> Response {
        let Some(token) = Token::new(token) else {
            return zero_token();
        };
        let (to, pidfd) = match lineage::child_of(&requester.process, pid) {
            Ok(child) => child,
            Err(why) => return error(why.kind(), why.to_string()),
        };
        // The owner watch watches the child through the pidfd it was described through (see
        // `owner_watch::Pins`).
        let _pinned = pidfd.map(|pidfd| self.pins.pin(&to, pidfd));
        let (after, pending) = {
            let mut table = self.table();
            let change = match table.transfer(token, &requester.process, to) {
                Ok(change) => change,
                Err(e) => return error(e.kind(), e.to_string()),
            };
            let after = change.reservation().cloned();
            (after, self.publish(&mut table, vec![change]))
        };
        if let Err(why) = self.settle(pending).await {
            return error(ErrorKind::Unavailable, format!("the daemon could not record the hand-over ({why}); the reservation stays with pid {}", requester.process.pid));
        }
        match after {
            Some(r) => {
                Response::Transferred(info(&r, &requester.process, requester.is_admin, now_ms()))
            }
            None => error(ErrorKind::Unavailable, "the hand-over went missing".into()),
        }
    }

    pub(super) async fn associate(
        &self,
        token: u64,
        address: Option<IpAddr>,
        port: Option<u16>,
        fd: Option<crate::session::closer::Received>,
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
            && self.table().get(token).map(|r| r.kind()) == Some(Kind::Persistent);
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
        let mut plan = match self.table().authorize_use(token, asker) {
            Ok(plan) => plan,
            Err(e) => {
                let e = e.seen_by(requester.process.uid, requester.is_admin);
                return error(e.kind(), e.to_string());
            }
        };
        // Exactly the port asked for, or an error: never another one.
        if let Some(port) = port {
            if !plan.range.contains(port) {
                return error(
                    ErrorKind::InvalidArgument,
                    format!(
                        "port {port} is not in reservation {token} ({} {}); ask for one of its ports, or omit the port to get any free one",
                        plan.protocol,
                        berth_core::describe(plan.range)
                    ),
                );
            }
            plan.order.retain(|(p, _)| *p == port);
        }
        if facts.protocol != plan.protocol {
            return error(
                ErrorKind::NotSupported,
                format!(
                    "reservation {token} is for {} but the socket is {}; send a {} socket",
                    plan.protocol,
                    facts.protocol,
                    if plan.protocol == Protocol::Tcp {
                        "SOCK_STREAM (TCP)"
                    } else {
                        "SOCK_DGRAM (UDP)"
                    }
                ),
            );
        }
        // An administrator who created a persistent reservation for someone has decided for
        // its privileged ports too; a runtime one needs the privileged-port policy.
        if plan.kind == Kind::Runtime {
            if let Err(refusal) =
                self.check_privileged(plan.protocol, plan.range, &requester.process)
            {
                return *refusal;
            }
        }
        let address = match associate::choose_address(facts, address) {
            Ok(a) => a,
            Err((kind, message)) => return error(kind, message),
        };
        // A held port's hold sockets are what keeps automatic port choice off it until the
        // kernel's list has it: they are given up only once it does.
        if plan.held {
            self.kernel_caught_up().await;
        }
        // The binds happen outside the table lock; the kernel arbitrates between them.
        let held = plan.held.then_some((&*self.holds, token));
        let uid = requester.process.uid;
        match associate::bind_from(fd.as_fd(), facts, &plan, address, held, uid).await {
            Ok(port) => {
                self.table().note_bound(token, port);
                tracing::debug!(%token, port, pid = requester.process.pid, "socket bound");
                Response::Associated { port }
            }
            Err((kind, message)) => error(kind, message),
        }
    }
}

/// What an acquire asks for: ports of one protocol, or the same ports in both.
#[derive(Debug, Clone, Copy)]
enum Ask {
    One(Protocol),
    Both,
}

/// A reservation just granted as its owner sees it, with where its name moved from.
fn shown(
    (r, moved_from): &(Reservation, Option<PortRange>),
    requester: &Requester,
    now: u64,
) -> ReservationInfo {
    ReservationInfo {
        moved_from: *moved_from,
        ..info(r, &requester.process, requester.is_admin, now)
    }
}

/// Whether `refusal` says the name asked for is another live reservation's.
fn names_taken(refusal: &Response) -> bool {
    matches!(
        refusal,
        Response::Error(WireError {
            detail: ErrorDetail::Name(_),
            ..
        })
    )
}

/// The answer to a refused acquire, with the numbers a program needs: the ports and their
/// holder (owner details only where `asker` may see them), the pool, or the quota.
fn acquire_refused(
    e: &AcquireError,
    start: u16,
    count: u16,
    asker: &Requester,
    share_percent: Option<u8>,
) -> Response {
    let ports = |protocol, port, holder| {
        ErrorDetail::Ports(PortsDetail {
            protocol,
            start,
            count,
            port,
            holder,
        })
    };
    let detail = match e {
        AcquireError::Conflict {
            protocol, holder, ..
        } => {
            let shown = info(holder, &asker.process, asker.is_admin, 0);
            let first = holder.range.start().max(start);
            ports(
                *protocol,
                Some(first),
                Some(DetailHolder {
                    token: Some(holder.token),
                    kind: Some(holder.kind()),
                    owner: shown.owner,
                }),
            )
        }
        AcquireError::NameTaken {
            protocol,
            name,
            holder,
        } => {
            let shown = info(holder, &asker.process, asker.is_admin, 0);
            ErrorDetail::Name(NameDetail {
                protocol: *protocol,
                name: name.to_string(),
                holder: DetailHolder {
                    token: Some(holder.token),
                    kind: Some(holder.kind()),
                    owner: shown.owner,
                },
            })
        }
        AcquireError::InUse { protocol, port, .. } => ports(*protocol, Some(*port), None),
        AcquireError::Privileged(denied) => {
            ports(denied.protocol, Some(denied.range.start()), None)
        }
        AcquireError::PoolExhausted {
            protocol,
            count,
            pool,
            free_ports,
            skipped_privileged,
            bounds,
        } => ErrorDetail::Pool(PoolDetail {
            protocol: *protocol,
            pool: *pool,
            count: *count,
            fragmented: *free_ports >= u32::from(*count),
            privileged_skipped: *skipped_privileged,
            within: bounds.map(|b| (b.start(), b.end())),
        }),
        AcquireError::QuotaExceeded { .. } => {
            if let Some((message, detail)) = super::quota::quota_refused(e, share_percent) {
                return Response::Error(
                    WireError::new(e.kind(), message).with_detail(ErrorDetail::Quota(detail)),
                );
            }
            ErrorDetail::None
        }
    };
    // The message names the holder only as the detail does (another user's owner hidden).
    let message = e.seen_by(asker.process.uid, asker.is_admin).to_string();
    Response::Error(WireError::new(e.kind(), message).with_detail(detail))
}
