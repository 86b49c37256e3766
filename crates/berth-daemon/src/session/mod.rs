//! One client connection: identify the peer, shake hands, answer requests in order, and
//! release the session's runtime reservations when it ends.
//!
//! Two requests are decided here rather than in `state`: `Stop`, because it acts on the
//! server, and every port-granting request of a client in another network namespace, which is
//! refused before it reaches the table.
//!
//! Longer than the daemon's other files because it is one thing: a connection's life, from
//! accept to close, read as one sequence (its few tests are at its end).

pub(crate) mod closer;
pub(crate) mod inbound;
pub(crate) mod lineage;
pub(crate) mod netns;
pub(crate) mod peer;
mod reused;

pub(crate) use reused::Kept;

use std::sync::Arc;
use std::time::Duration;

use berth_core::ErrorKind;
use berth_protocol::{
    negotiate, BusyDetail, DaemonLimit, ErrorDetail, FrameCodec, FrameError, NamespacesDetail,
    Request, Response, Welcome, WireError,
};
use futures_util::SinkExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::session::closer::{Closers, Lane};
use crate::session::inbound::{Inbound, ReadError, Reader};
use crate::session::netns::{NetnsCheck, PeerNetns};
use crate::session::peer::peer_owner;
use crate::state::{error, Peer, Shared};

type Writer = FramedWrite<OwnedWriteHalf, FrameCodec<Request, Response>>;

/// Requests read while a wait (`WaitName`) is answered, at most; past them reading pauses until
/// the wait ends (a client that pipelines this much behind a wait is waiting for it anyway).
const MAX_BEHIND_A_WAIT: usize = 16;

/// A session quiet for this long gives back the box its answers run in (see `reused`); a
/// busy one reuses it, with no allocation per request.
const HANDLER_KEPT: Duration = Duration::from_secs(2);

/// At most this many sessions keep the box their answers run in between requests (~2 KiB
/// each); the others allocate one per answer.
pub(crate) const KEPT_BOXES: usize = 64;

/// The write half of a session. Answers are encoded into its buffer and flushed one at a
/// time (`send`), so no backpressure boundary applies.
fn writer(wr: OwnedWriteHalf) -> Writer {
    // No buffer between answers (tokio-util's default is 8 KiB: 8 MiB for 1,000 idle
    // sessions): each answer's is allocated when it is encoded — tens of bytes, from the
    // allocator's per-thread cache — and freed once written (see `flush`).
    FramedWrite::with_capacity(wr, FrameCodec::daemon(), 0)
}

/// What sessions need of the server besides the allocation state.
pub(crate) struct Control {
    /// Cancelled by an administrator's `Stop`: the server stops accepting and drains, as on
    /// SIGTERM.
    pub(crate) stop: CancellationToken,
    /// The daemon's network namespace, to tell where each client is.
    pub(crate) netns: NetnsCheck,
    /// Connections per user.
    pub(crate) per_uid: Arc<crate::server::fair::PerUid>,
    /// The sessions that keep the box their answers run in between requests.
    pub(crate) kept_boxes: Kept,
}

/// One connection's view: who, where, and what it may ask.
struct Session<'a> {
    shared: &'a Shared,
    config: &'a Config,
    control: &'a Control,
    peer: Peer,
    /// Where the client is; decided once, when it connects.
    netns: PeerNetns,
}

/// What a session does with what it read (see `Session::work`). Small: the session's task
/// holds it while the work is awaited, so its payloads are boxed — a request inline would make
/// every connection's task 152 bytes larger (`-Zprint-type-sizes`: `serve_requests` 1,200 →
/// 1,352), for the saving of one small allocation per request.
enum Work {
    /// Write this answer (a refusal, a "busy").
    Answer(Box<Response>),
    /// Write this answer, if any, and end the session (the client left, or sent what is not
    /// a request).
    End(Option<Box<Response>>),
    /// Answer a stop; then, if allowed, stop the daemon.
    Stop {
        allowed: bool,
        restore: bool,
        response: Box<Response>,
    },
    /// A name's wait: answered when it ends.
    Wait(Box<Inbound>),
    /// Any other request, for `Shared::handle`, and who sent it (for the log).
    Handle {
        inbound: Box<Inbound>,
        what: &'static str,
        pid: u32,
        uid: u32,
    },
}

/// One line per denial, at DEBUG like grants and releases.
fn log_denial(response: &Response, what: &str, pid: u32, uid: u32) {
    if let Response::Error(e) = response {
        tracing::debug!(
            pid,
            uid,
            kind = e.kind.as_str(),
            request = what,
            "denied: {}",
            e.message
        );
    }
}

/// What must live until a connection's descriptor is closed: its slot in the daemon's
/// connection limits.
pub(crate) type Keep = Box<dyn Send>;

/// Closes `stream` on a closer thread of its peer's user (its receive queue may hold
/// descriptors in flight, whose close can block), then drops `keep`.
pub(crate) fn discard(stream: UnixStream, closers: &Closers, keep: Option<Keep>) {
    let uid = berth_os::peer::peer_credentials(&stream).map_or(u32::MAX, |c| c.uid);
    closers.lane(uid).dispose((stream, keep));
}

/// Serves one connection until the client closes it, breaks the protocol, or the daemon shuts
/// down. `permit` (its place under `max_connections`) is given back once the connection's
/// descriptor is closed.
pub(crate) async fn serve_connection(
    stream: UnixStream,
    shared: Arc<Shared>,
    config: Arc<Config>,
    control: Arc<Control>,
    shutdown: CancellationToken,
    permit: Keep,
) {
    let closers = shared.closers();
    let uid = berth_os::peer::peer_credentials(&stream).map_or(u32::MAX, |c| c.uid);
    let lane = closers.lane(uid);
    let owner = match peer_owner(&stream) {
        Ok(owner) => owner,
        Err(e) if crate::server::limits::is_shortage(&e) => {
            crate::server::limits::log_shortage("a new client's process could not be looked at");
            let message = crate::server::limits::busy_message("could not identify this client");
            let busy = Busy {
                message,
                limit: DaemonLimit::OpenFiles,
                max: usize::try_from(crate::server::limits::open_files_limit())
                    .unwrap_or(usize::MAX),
                in_use: usize::try_from(crate::server::limits::open_files_in_shortage())
                    .unwrap_or(usize::MAX),
            };
            refuse_now(stream, busy, &lane, Some(permit));
            return;
        }
        Err(e) => {
            // Told, not dropped without a word: the client prints the reason.
            crate::server::refusals::log(
                uid,
                "refused a client whose process cannot be identified",
            );
            tracing::debug!(uid, "cannot identify a client's process: {e}");
            let refusal = WireError::new(
                ErrorKind::NotSupported,
                format!(
                    "this berth daemon (pid {}) cannot identify your process ({e}): it runs in a pid namespace where your process has no pid, so it cannot tell who owns what you reserve; use a berth daemon of your own pid namespace or an ancestor of it (the host's)",
                    std::process::id()
                ),
            );
            refuse_with(stream, Response::Error(refusal), &lane, Some(permit));
            return;
        }
    };
    // Admitted: from now on the client may send the sockets it asks to have bound.
    if let Err(e) = crate::server::rights::pass_rights(&stream, true) {
        tracing::warn!(
            "dropping a connection: cannot let it pass descriptors (SO_PASSRIGHTS): {e}"
        );
        lane.dispose((stream, Some(permit)));
        return;
    }
    // Per-message credentials tell a forked child using an inherited connection apart
    // from the process that opened it.
    if let Err(e) = rustix::net::sockopt::set_socket_passcred(&stream, true) {
        tracing::warn!("dropping a connection: cannot enable SO_PASSCRED: {e}");
        lane.dispose((stream, Some(permit)));
        return;
    }
    // (The senders' pidfds, which pin a forked child's pid, are asked for once another process
    // than the owner writes: see `inbound`.)
    let netns = control.netns.peer(owner.pid, &stream);
    if netns == PeerNetns::Unknown {
        tracing::debug!(
            pid = owner.pid,
            "cannot tell the client's network namespace; serving it as a local one"
        );
    }
    let mut session = Session {
        peer: shared.open_session(owner),
        shared: &shared,
        config: &config,
        control: &control,
        netns,
    };
    let (rd, wr) = stream.into_split();
    let mut reader = Reader::new(rd, session.peer.owner.pid, lane, Some(permit));
    let mut writer = writer(wr);

    if let Some(version) = handshake(&mut reader, &mut writer, &session, &shutdown).await {
        session.peer.version = version;
        // Every line logged while serving it names the client (a flooder's "did not read its
        // answer", say), so that an operator can tell who it was.
        let span = tracing::info_span!(
            "client",
            pid = session.peer.owner.pid,
            uid = session.peer.owner.uid
        );
        tracing::Instrument::instrument(
            session.serve_requests(&mut reader, &mut writer, &shutdown),
            span,
        )
        .await;
    }
    // Writer first, reader last: the reader's drop hands the socket's read half to the
    // closer threads, because closing it closes any descriptors still queued unread, which can
    // block (see `closer`); the connection's slots are given back once it is closed.
    drop(writer);
    drop(reader);
    if shutdown.is_cancelled() {
        // The daemon stops, the client does not: keep its reservations for the next daemon.
        shared.leave_session(&session.peer);
    } else {
        shared.close_session(&session.peer);
    }
}

/// A "busy" answer: the message, and which limit at which use.
pub(crate) struct Busy {
    pub(crate) message: String,
    pub(crate) limit: DaemonLimit,
    pub(crate) max: usize,
    pub(crate) in_use: usize,
}

/// Answers a connection the daemon will not serve because it is at a limit, at once: the
/// "busy" error with the limit and the use, written without waiting (a new connection's socket
/// buffer is empty, so it fits, or the client is gone), then the connection is closed in
/// `lane` and `keep` dropped after it. The hello is not waited for: a refused client holds no
/// place and no task, whatever it does. (The client reads the answer first, even when its
/// hello could no longer be written.)
pub(crate) fn refuse_now(stream: UnixStream, busy: Busy, lane: &Lane, keep: Option<Keep>) {
    let Busy {
        message,
        limit,
        max,
        in_use,
    } = busy;
    let busy = WireError::new(ErrorKind::Unavailable, message).with_detail(ErrorDetail::Busy(
        BusyDetail {
            limit,
            max: u64::try_from(max).unwrap_or(u64::MAX),
            in_use: u64::try_from(in_use).unwrap_or(u64::MAX),
        },
    ));
    refuse_with(stream, Response::Error(busy), lane, keep);
}

/// Writes `answer` without waiting and closes the connection — at once when it cannot hold
/// descriptors, else in `lane` — then drops `keep`.
pub(crate) fn refuse_with(stream: UnixStream, answer: Response, lane: &Lane, keep: Option<Keep>) {
    let mut frame = bytes::BytesMut::new();
    let encoded = tokio_util::codec::Encoder::encode(&mut FrameCodec::daemon(), answer, &mut frame);
    if encoded.is_ok() {
        let _ = rustix::net::send(
            &stream,
            &frame,
            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
        );
    }
    // A connection that could never take descriptors has none queued: its close cannot block,
    // so it is closed here and its place given back at once, without a trip through the lane
    // (a flood of refused connections then costs no queue). Else the lane closes it.
    if berth_os::rights::refuses_rights(&stream) {
        drop(stream);
        drop(keep);
    } else {
        lane.dispose((stream, keep));
    }
}

/// Reads the hello and answers it; `None` when the connection should close. A daemon that
/// stops does not wait for a hello that has not come.
async fn handshake(
    reader: &mut Reader,
    writer: &mut Writer,
    session: &Session<'_>,
    shutdown: &CancellationToken,
) -> Option<u16> {
    let (peer, config) = (&session.peer, session.config);
    let first = tokio::select! {
        () = shutdown.cancelled() => return None,
        first = tokio::time::timeout(config.handshake_timeout, reader.next()) => first,
    };
    let first = match first {
        Err(_) => {
            tracing::debug!(pid = peer.owner.pid, "no hello in time; closing");
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(inbound))) => Ok(inbound.request),
        Ok(Err(e)) => Err(e),
    };
    let reply = match first {
        Ok(Request::Hello(hello)) => match negotiate(&hello) {
            Ok(version) => {
                tracing::debug!(pid = peer.owner.pid, client = %berth_core::Owner::printable_command(&hello.client), version, "client connected");
                let welcome = Response::Welcome(Welcome {
                    version,
                    daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
                    daemon_pid: std::process::id(),
                });
                send(writer, welcome, config.write_timeout).await?;
                return Some(version);
            }
            Err(e) => error(ErrorKind::Incompatible, e.to_string()),
        },
        Ok(_) => error(
            ErrorKind::Incompatible,
            "the first frame must be a berth Hello; is this a berth client of a matching protocol?"
                .into(),
        ),
        Err(e) => frame_error_reply(&e, session.peer.owner.uid)?,
    };
    send(writer, reply, config.write_timeout).await;
    None
}

impl Session<'_> {
    async fn serve_requests(
        &self,
        reader: &mut Reader,
        writer: &mut Writer,
        shutdown: &CancellationToken,
    ) {
        let (peer, limit) = (&self.peer, self.config.write_timeout);
        let owner_exit =
            crate::mirror::owner_watch::owner_exit(self.shared.exits(), &peer.owner, None);
        tokio::pin!(owner_exit);
        let idle = self.config.idle_timeout;
        // Far enough for "never" without overflowing an `Instant`.
        let never = Duration::from_secs(100 * 365 * 24 * 3600);
        let silence = tokio::time::sleep(idle.unwrap_or(never));
        tokio::pin!(silence);
        // Requests read while a wait was answered: served next, in order, before reading again.
        let mut next: std::collections::VecDeque<Inbound> = std::collections::VecDeque::new();
        let mut handler = reused::Reused::new(&self.control.kept_boxes);
        let mut answered = tokio::time::Instant::now();
        // Set when the silence timer only gave the answers' box back.
        let mut box_released = false;
        loop {
            // Silence counts from the last answer (or the welcome): the time an answer takes
            // is not the client's silence.
            if !std::mem::take(&mut box_released) {
                answered = tokio::time::Instant::now();
            }
            // The silence timer first frees the answers' box, if kept, then ends the idle wait.
            let quiet = idle.unwrap_or(never);
            let wake = if handler.is_kept() {
                HANDLER_KEPT.min(quiet)
            } else {
                quiet
            };
            silence.as_mut().reset(answered + wake);
            // Everything an await keeps is part of every idle session's task, and a value that
            // was ever borrowed is kept until its block ends: so the request is read and taken
            // apart in this block, and only what the work needs leaves it.
            let work = {
                // Biased: what the client sent (or its end of stream) comes first, so an ordinary
                // exit is seen as the connection closing rather than as the owner dying.
                // (Not `if let` on `pop_front`: its `None` would be kept across the wait below.)
                let frame = if !next.is_empty() {
                    Ok(next.pop_front())
                } else {
                    tokio::select! {
                    biased;
                    frame = reader.next() => frame,
                    () = shutdown.cancelled() => return,
                    () = &mut owner_exit => {
                        tracing::debug!(pid = peer.owner.pid, "the session's owner exited while its connection stayed open (inherited by a child?); ending the session");
                        return;
                    }
                    () = &mut silence => {
                        if handler.release() {
                            // Quiet: its answers' box is given back (silence still counts).
                            box_released = true;
                            continue;
                        }
                        let limit = idle.unwrap_or(never);
                        // Reader::next is cancel-safe: a frame begun stays buffered.
                        if self.shared.session_holds(peer) {
                            continue;
                        }
                        tracing::debug!(pid = peer.owner.pid, "closing a connection silent for {limit:?} that holds nothing");
                        send(writer, idle_notice(limit), self.config.write_timeout).await;
                        return;
                    }
                    }
                };
                self.work(frame)
            };
            match work {
                Work::Answer(response) => {
                    if send(writer, *response, limit).await.is_none() {
                        return;
                    }
                }
                Work::End(response) => {
                    if let Some(response) = response {
                        send(writer, *response, limit).await;
                    }
                    return;
                }
                Work::Stop {
                    allowed,
                    restore,
                    response,
                } => {
                    // Answer first: once stopping, the session ends without a word.
                    let sent = send(writer, *response, limit).await;
                    if allowed {
                        if restore {
                            self.shared.restore_list_on_stop();
                        }
                        self.control.stop.cancel();
                    }
                    if sent.is_none() {
                        return;
                    }
                }
                Work::Wait(inbound) => {
                    // A wait takes no turn and may last long: it ends early if the client goes
                    // away, its owner exits or the daemon stops; requests sent meanwhile are
                    // read (a few, then reading pauses) and served after it, in order.
                    // Boxed: a session that never waits does not carry a wait's state.
                    let mut wait = Box::pin(self.shared.wait(*inbound, peer));
                    let response = loop {
                        tokio::select! {
                            biased;
                            response = &mut wait => break response,
                            () = shutdown.cancelled() => return,
                            () = &mut owner_exit => return,
                            // Not past a frame that brought a descriptor: it is closed (and
                            // counted) only once served, before the next request is read.
                            frame = reader.next(), if next.len() < MAX_BEHIND_A_WAIT
                                && next.back().is_none_or(|i| i.fd.is_none() && !i.lost_fd) => match frame {
                                Ok(Some(inbound)) => next.push_back(inbound),
                                Ok(None) | Err(_) => return,
                            },
                        }
                    };
                    drop(wait);
                    if send(writer, response, limit).await.is_none() {
                        return;
                    }
                }
                Work::Handle {
                    inbound,
                    what,
                    pid,
                    uid,
                } => {
                    let answer = handler.run(self.shared.handle(*inbound, peer)).await;
                    handler.finished();
                    let sending = {
                        // Moved in: a borrowed value is kept until its block ends.
                        let response = answer;
                        log_denial(&response, what, pid, uid);
                        send(writer, response, limit)
                    };
                    if sending.await.is_none() {
                        return;
                    }
                }
            }
        }
    }

    /// What to do with what was read: the answers that need no wait made here.
    fn work(&self, frame: Result<Option<Inbound>, ReadError>) -> Work {
        let peer = &self.peer;
        let inbound = match frame {
            Ok(Some(inbound)) => inbound,
            Ok(None) => return Work::End(None),
            Err(e) => return Work::End(frame_error_reply(&e, peer.owner.uid).map(Box::new)),
        };
        if matches!(inbound.request, Request::Stop | Request::StopWith { .. }) {
            let allowed = self.may_stop(&inbound);
            let response = if allowed {
                tracing::info!(
                    pid = peer.owner.pid,
                    uid = peer.owner.uid,
                    "stop requested by a client"
                );
                Response::Stopping {
                    pid: std::process::id(),
                }
            } else {
                self.stop_refused()
            };
            return Work::Stop {
                allowed,
                restore: matches!(inbound.request, Request::StopWith { restore: true }),
                response: Box::new(response),
            };
        }
        if inbound.lost_fd {
            // The daemon's shortage, not the client's doing: nothing changes, the session and
            // its reservations stay.
            let message = crate::server::limits::busy_message(&format!(
                "could not take the socket sent with this {} request",
                inbound.request.name()
            ));
            tracing::debug!(pid = peer.owner.pid, "{message}");
            let busy = WireError::new(ErrorKind::Unavailable, message).with_detail(
                ErrorDetail::Busy(BusyDetail {
                    limit: DaemonLimit::OpenFiles,
                    max: crate::server::limits::open_files_limit(),
                    in_use: crate::server::limits::open_files_in_shortage(),
                }),
            );
            return Work::Answer(Box::new(Response::Error(busy)));
        }
        let what = inbound.request.name();
        let (pid, uid) = match inbound.sender.map(|s| s.cred) {
            Some(c) if c.pid != 0 => (c.pid, c.uid),
            _ => (peer.owner.pid, peer.owner.uid),
        };
        if let Some(refusal) = self.refuse_foreign(&inbound.request) {
            log_denial(&refusal, what, pid, uid);
            return Work::Answer(Box::new(refusal));
        }
        if matches!(inbound.request, Request::WaitName { .. }) {
            return Work::Wait(Box::new(inbound));
        }
        Work::Handle {
            inbound: Box::new(inbound),
            what,
            pid,
            uid,
        }
    }

    /// Whether the sender of `inbound` may stop the daemon: an administrator (root, the
    /// daemon's own user, a member of an admin group) — and, when another process wrote on the
    /// connection (a forked child), one of the same user or root.
    fn may_stop(&self, inbound: &Inbound) -> bool {
        let sender_uid = inbound.sender.map(|s| s.cred.uid);
        self.peer.is_admin && sender_uid.is_none_or(|uid| uid == self.peer.owner.uid || uid == 0)
    }

    fn stop_refused(&self) -> Response {
        let uid = rustix::process::geteuid().as_raw();
        error(
            ErrorKind::PermissionDenied,
            format!(
                "only an administrator may stop the berth daemon (pid {}): root, its own user (uid {uid}), or a member of its admin groups; you are uid {}",
                std::process::id(),
                self.peer.owner.uid
            ),
        )
    }

    /// The refusal of a request that grants or uses ports, for a client in another network
    /// namespace; `None` when the request may be served.
    fn refuse_foreign(&self, request: &Request) -> Option<Response> {
        let PeerNetns::Foreign { daemon, peer } = self.netns else {
            return None;
        };
        let what = request.port_use()?;
        Some(foreign_netns(what, daemon, peer))
    }
}

/// Not-supported, naming both namespaces: a port is free or taken per network namespace, so
/// ports checked and reserved in the daemon's would mean nothing in the client's.
fn foreign_netns(what: &str, daemon: u64, peer: Option<u64>) -> Response {
    let theirs = peer.map_or_else(
        || "another network namespace".to_owned(),
        |p| format!("network namespace net:[{p}]"),
    );
    Response::Error(
        WireError::new(
            ErrorKind::NotSupported,
            format!(
                "cannot {what}: this client is in {theirs}, but this berth daemon (pid {}) serves network namespace net:[{daemon}], and ports are reserved and checked per namespace; use the berth daemon of the client's namespace: start one there with a socket and a database of its own (`berth daemon --socket PATH --db PATH`, run in that namespace) and point BERTH_SOCKET at its socket",
                std::process::id()
            ),
        )
        .with_detail(ErrorDetail::Namespaces(NamespacesDetail {
            daemon_netns: daemon,
            peer_netns: peer.unwrap_or(0),
        })),
    )
}

/// The last frame on a connection closed for silence: not an answer to any request.
fn idle_notice(limit: Duration) -> Response {
    Response::Error(
        WireError::new(
            ErrorKind::Unavailable,
            format!(
                "closing this connection: it sent nothing for {}s and held no reservation (idle_timeout_s); no request written after the last answer was read, so send it again on a new connection",
                limit.as_secs()
            ),
        )
        .with_detail(ErrorDetail::Idle {
            timeout_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        }),
    )
}

/// The reply to a frame of `uid`'s that could not be read; `None` when the connection itself
/// failed. Logged at DEBUG each, and at INFO at most once per user every few seconds (with a
/// count): a client sending garbage in a loop must not flood the log.
fn frame_error_reply(e: &ReadError, uid: u32) -> Option<Response> {
    let e = match e {
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Some(error(
                ErrorKind::InvalidArgument,
                format!("{e}; the connection is closed"),
            ))
        }
        ReadError::Io(e) => {
            tracing::debug!("connection failed: {e}");
            return None;
        }
        ReadError::Frame(e) => e,
    };
    tracing::debug!(uid, "closing a connection: {e}");
    crate::server::refusals::log(
        uid,
        "closing connections whose frames cannot be read (malformed, oversized or of another protocol; see the log at debug)",
    );
    match e {
        FrameError::Io(_) => None,
        FrameError::TooLong { len, max } => Some(error(
            ErrorKind::InvalidArgument,
            format!("request frame of {len} bytes exceeds the limit of {max} bytes; the connection is closed"),
        )),
        FrameError::Malformed(why) => Some(error(
            ErrorKind::InvalidArgument,
            format!("malformed or unknown request ({why}); the connection is closed — check that client and daemon are the same berth release"),
        )),
    }
}

/// Writes one response; `None` when the client is gone or does not read in time.
fn send(
    writer: &mut Writer,
    response: Response,
    limit: Duration,
) -> impl std::future::Future<Output = Option<()>> + '_ {
    // Encoded now rather than in the future: that future is part of the session's task while
    // it is written, and an answer is hundreds of bytes.
    let encoded = encode(writer, response);
    async move {
        if let Err(e) = encoded {
            tracing::debug!("cannot answer a client: {e}");
            return None;
        }
        flush(writer, limit).await
    }
}

/// Encodes `response` into the writer's buffer.
fn encode(writer: &mut Writer, response: Response) -> Result<(), FrameError> {
    let mut buffer = std::mem::take(writer.write_buffer_mut());
    let encoded = tokio_util::codec::Encoder::encode(writer.encoder_mut(), response, &mut buffer);
    *writer.write_buffer_mut() = buffer;
    encoded
}

/// Writes what the writer's buffer holds within `limit`.
async fn flush(writer: &mut Writer, limit: Duration) -> Option<()> {
    match tokio::time::timeout(limit, writer.flush()).await {
        Ok(Ok(())) => {
            let buffer = writer.write_buffer_mut();
            if buffer.is_empty() {
                *buffer = bytes::BytesMut::new();
            }
            Some(())
        }
        Ok(Err(e)) => {
            tracing::debug!("cannot answer a client: {e}");
            None
        }
        Err(_) => {
            tracing::info!("a client did not read its answer within {limit:?}; closing it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_write_buffer_is_held_only_while_an_answer_is_written() {
        let (daemon, client) = tokio::net::UnixStream::pair().unwrap();
        let (_rd, wr) = daemon.into_split();
        let mut writer = writer(wr);
        assert_eq!(writer.write_buffer().capacity(), 0);
        let large = error(ErrorKind::Unavailable, "x".repeat(20_000));
        let limit = Duration::from_secs(10);
        send(&mut writer, large, limit).await.expect("sent");
        assert_eq!(writer.write_buffer().capacity(), 0);
        send(&mut writer, Response::Stopping { pid: 1 }, limit)
            .await
            .expect("sent");
        assert_eq!(writer.write_buffer().capacity(), 0);
        // Both answers arrived whole.
        let mut codec = FrameCodec::<Response, Request>::client();
        let mut bytes = bytes::BytesMut::new();
        let mut answers = Vec::new();
        let std_client = client.into_std().unwrap();
        std_client.set_nonblocking(false).unwrap();
        while answers.len() < 2 {
            let mut chunk = [0u8; 4096];
            let n = std::io::Read::read(&mut &std_client, &mut chunk).unwrap();
            assert!(n > 0, "the connection ended early");
            bytes.extend_from_slice(&chunk[..n]);
            while let Some(answer) =
                tokio_util::codec::Decoder::decode(&mut codec, &mut bytes).unwrap()
            {
                answers.push(answer);
            }
        }
        assert!(matches!(answers[0], Response::Error(_)));
        assert!(matches!(answers[1], Response::Stopping { pid: 1 }));
    }
}
