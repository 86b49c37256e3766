//! Request bookkeeping: which answer goes to which caller, which runtime reservations this
//! session holds, and which releases were written and not answered yet.
//!
//! Requests go out in the order they are submitted and the daemon answers in that order, so
//! a queue of reply slots matches answers to callers; a caller may also submit without waiting
//! (a dropped [`crate::Reservation`] releases that way).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::fd::OwnedFd;

use berth_core::Token;
use berth_protocol::{Request, Response};
use tokio::sync::{mpsc, oneshot};

use super::link::Frame;
use crate::error::Error;

pub(super) type Reply = oneshot::Sender<Delivery>;

/// A request on its way, with the slot its answer goes to (none for fire-and-forget).
pub(crate) struct Call {
    pub(super) request: Request,
    /// A descriptor that travels with the request (`SCM_RIGHTS`).
    pub(super) fd: Option<OwnedFd>,
    pub(super) reply: Option<Reply>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("request", &self.request)
            .finish()
    }
}

/// What a reply slot receives. An `Acquired` answer that its caller never takes (the caller's
/// future was dropped after the answer was handed over) goes back to the connection task when
/// this is dropped, and the task releases the reservation.
pub(crate) struct Delivery {
    result: Option<Result<Response, Error>>,
    /// Where an untaken `Acquired` answer's token goes.
    orphans: Option<mpsc::UnboundedSender<Token>>,
}

impl Delivery {
    pub(super) fn failed(error: Error) -> Self {
        Delivery {
            result: Some(Err(error)),
            orphans: None,
        }
    }

    pub(super) fn take(mut self) -> Result<Response, Error> {
        self.result
            .take()
            .unwrap_or_else(|| Err(Error::lost("the answer went missing")))
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let (Some(Ok(response)), Some(orphans)) = (&self.result, &self.orphans) {
            let fresh = match response {
                Response::Acquired(_) | Response::AcquiredBoth { .. } => acquired(response),
                _ => [None, None],
            };
            for token in fresh.into_iter().flatten() {
                let _ = orphans.send(token);
            }
        }
    }
}

/// The reservations an answer makes this session's: acquired (one, or a TCP+UDP pair) or
/// re-claimed by hand (`Client::reclaim`). A cgroup's (enforce mode) lives with the cgroup,
/// not this session.
fn acquired(response: &Response) -> [Option<Token>; 2] {
    let own = |info: &berth_protocol::ReservationInfo| info.cgroup.is_none().then_some(info.token);
    match response {
        Response::Acquired(info) | Response::Reclaimed(info) => [own(info), None],
        Response::AcquiredBoth { tcp, udp } => [own(tcp), own(udp)],
        _ => [None, None],
    }
}

/// A reply slot of a request sent and not yet answered.
struct Slot {
    reply: Option<Reply>,
    /// The held reservation this request releases (it is in `releasing` meanwhile).
    release: Option<Token>,
    /// The request and a copy of its descriptor, to send again if the daemon closes the
    /// connection for silence before reading it (see [`Books::unread`]). `None` when the
    /// descriptor could not be copied.
    again: Option<(Request, Option<OwnedFd>)>,
}

/// The books of one session.
pub(super) struct Books {
    /// Reply slots of requests sent and not yet answered, in order.
    pending: VecDeque<Slot>,
    /// Tokens of the runtime reservations acquired (or re-claimed) and not being released.
    pub(super) held: BTreeSet<Token>,
    /// Tokens of held reservations whose release was written and not answered yet, with the
    /// number of such releases in flight. After a reconnect they are released again (the
    /// daemon may have died before carrying the release out).
    pub(super) releasing: BTreeMap<Token, usize>,
    /// Cloned into each `Acquired` delivery.
    orphans: mpsc::UnboundedSender<Token>,
}

impl Books {
    pub(super) fn new(orphans: mpsc::UnboundedSender<Token>) -> Self {
        Books {
            pending: VecDeque::new(),
            held: BTreeSet::new(),
            releasing: BTreeMap::new(),
            orphans,
        }
    }

    /// Queues `call`'s reply slot and returns its frame for the writer, in that order.
    pub(super) fn queue(&mut self, call: Call) -> Frame {
        let release = match call.request {
            Request::Release { token } => Token::new(token).filter(|&t| self.start_release(t)),
            _ => None,
        };
        let again = match &call.fd {
            None => Some((call.request.clone(), None)),
            Some(fd) => fd
                .try_clone()
                .ok()
                .map(|copy| (call.request.clone(), Some(copy))),
        };
        self.pending.push_back(Slot {
            reply: call.reply,
            release,
            again,
        });
        Frame {
            request: call.request,
            fd: call.fd,
        }
    }

    /// A release of `token` is being written: if it is ours, it moves from `held` to
    /// `releasing`. Whether it is tracked.
    fn start_release(&mut self, token: Token) -> bool {
        if self.held.remove(&token) || self.releasing.contains_key(&token) {
            *self.releasing.entry(token).or_insert(0) += 1;
            true
        } else {
            false
        }
    }

    /// A tracked release of `token` was answered (released, or refused: either way it is not
    /// ours any more).
    fn finish_release(&mut self, token: Token) {
        if let Entry::Occupied(mut in_flight) = self.releasing.entry(token) {
            *in_flight.get_mut() = in_flight.get().saturating_sub(1);
            if *in_flight.get() == 0 {
                in_flight.remove();
            }
        }
    }

    /// Matches `response` to the oldest reply slot, keeps the books, and delivers it. Returns
    /// the tokens of acquired reservations whose caller went away (to be released at once).
    pub(super) fn answer(&mut self, response: Response) -> [Option<Token>; 2] {
        let slot = self.pending.pop_front();
        if let Some(token) = slot.as_ref().and_then(|s| s.release) {
            self.finish_release(token);
        }
        // Released, or handed to another process: no longer this session's.
        if let Response::Released(info) | Response::Transferred(info) = &response {
            self.held.remove(&info.token);
        }
        let acquired = acquired(&response);
        self.held.extend(acquired.into_iter().flatten());
        let any = acquired.iter().any(Option::is_some);
        let delivered = match slot.and_then(|s| s.reply) {
            Some(reply) => {
                let delivery = Delivery {
                    result: Some(Ok(response)),
                    orphans: any.then(|| self.orphans.clone()),
                };
                match reply.send(delivery) {
                    Ok(()) => true,
                    Err(mut undelivered) => {
                        // Released by the caller of this function, not through the orphans.
                        undelivered.orphans = None;
                        false
                    }
                }
            }
            None => false,
        };
        if delivered {
            [None, None]
        } else {
            acquired
        }
    }

    /// The requests waiting for an answer, as calls to send again, in order: the daemon closed
    /// the connection for silence, so it read none of them. Their releases are forgotten (the
    /// call tracks its own again when it is queued). One whose descriptor could not be copied
    /// fails instead.
    pub(super) fn unread(&mut self) -> Vec<Call> {
        let mut again = Vec::new();
        for slot in std::mem::take(&mut self.pending) {
            if let Some(token) = slot.release {
                // Moot in practice: a daemon with an unread release still holds its
                // reservation, so it would not have closed the connection for silence.
                self.finish_release(token);
            }
            match slot.again {
                Some((request, fd)) => again.push(Call {
                    request,
                    fd,
                    reply: slot.reply,
                }),
                None => {
                    if let Some(reply) = slot.reply {
                        let _ = reply.send(Delivery::failed(Error::lost(
                            "the daemon closed an idle connection and the request's descriptor could not be kept to send again",
                        )));
                    }
                }
            }
        }
        again
    }

    /// Fails every request waiting for an answer (the connection broke). Unanswered releases
    /// stay in `releasing`, to be repeated after the reconnect.
    pub(super) fn fail_pending(&mut self, why: &str) {
        for slot in self.pending.drain(..) {
            if let Some(reply) = slot.reply {
                let _ = reply.send(Delivery::failed(Error::lost(why)));
            }
        }
    }
}
