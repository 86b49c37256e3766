//! Accept and admission, the same for every connection of the main socket: the user's limit
//! first, then a place of those not kept for administrators, then a shared place; a client
//! refused for any of them is answered at once and keeps nothing (`session::refuse_now`). A
//! connection never takes the room kept to receive descriptors from those served, and when
//! `accept` itself fails for want of descriptors, a reserve descriptor still lets waiting
//! clients be told "busy".

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::session::{serve_connection, Control};
use crate::state::Shared;

/// What admitting a connection needs: the daemon's state and the places it hands out.
pub(super) struct Doors {
    pub(super) shared: Arc<Shared>,
    pub(super) config: Arc<Config>,
    pub(super) control: Arc<Control>,
    pub(super) cancel: CancellationToken,
    pub(super) tracker: TaskTracker,
    /// `max_connections` places.
    pub(super) permits: Arc<Semaphore>,
    /// The places users other than administrators may take together.
    pub(super) others: Arc<Semaphore>,
}

impl Doors {
    /// Accepts and admits connections on `listener` until `shutdown` completes; each admitted
    /// one is served by a task of `tracker`.
    pub(super) async fn accept_until(
        &self,
        listener: &UnixListener,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
        accepting: &mut Accepting,
    ) {
        let Doors {
            shared,
            config,
            control,
            cancel,
            tracker,
            permits,
            others,
        } = self;
        // Descriptors come only with an admitted session's requests (see `rights`): the listener
        // refuses them, and a session is allowed them once admitted.
        if let Err(e) = crate::server::rights::pass_rights(listener, false) {
            tracing::warn!("cannot make the socket refuse descriptors (SO_PASSRIGHTS): {e}");
        }
        // Admission, the same for every socket the daemon serves: the user's limit first, then a
        // shared place; a client refused for either is answered at once and keeps nothing (see
        // `session::refuse_now`). Every connection is closed on its user's closer threads.
        let closers = shared.closers();
        loop {
            let stream = tokio::select! {
                biased;
                () = shutdown.as_mut() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        accepting.accepted();
                        crate::server::memory::accepted();
                        stream
                    }
                    Err(e) => {
                        accepting.failed(&e, listener, &closers);
                        // Back off (the pending connection keeps the listener readable): until a
                        // descriptor may have been freed, without spinning.
                        tokio::select! {
                            () = shutdown.as_mut() => break,
                            () = tokio::time::sleep(ACCEPT_RETRY) => {}
                        }
                        continue;
                    }
                },
            };
            let uid = berth_os::peer::peer_credentials(&stream).map_or(u32::MAX, |c| c.uid);
            let lane = closers.lane(uid);
            // A connection never takes the room kept to receive descriptors from those served.
            if !crate::server::limits::room_for(crate::server::limits::ACCEPT_ROOM) {
                crate::server::limits::log_shortage("a new connection is answered busy: the room kept to receive descriptors is reached");
                let busy = crate::session::Busy {
                    message: crate::server::limits::busy_message(
                        "cannot serve another connection now",
                    ),
                    limit: berth_protocol::DaemonLimit::OpenFiles,
                    max: usize::try_from(crate::server::limits::open_files_limit())
                        .unwrap_or(usize::MAX),
                    in_use: usize::try_from(crate::server::limits::open_files_in_shortage())
                        .unwrap_or(usize::MAX),
                };
                crate::session::refuse_now(stream, busy, &lane, None);
                continue;
            }
            let slot = match control.per_uid.enter(uid) {
                Ok(slot) => slot,
                Err(in_use) => {
                    let max = control.per_uid.max();
                    crate::server::refusals::log(
                        uid,
                        "busy: a connection over the user's limit is refused (max_connections_per_uid)",
                    );
                    let busy = crate::session::Busy {
                        message: format!(
                            "busy: {in_use} of {max} connections in use by uid {uid} (max_connections_per_uid); close some of this user's berth connections, or have an administrator raise max_connections_per_uid in the daemon's configuration"
                        ),
                        limit: berth_protocol::DaemonLimit::Connections,
                        max,
                        in_use,
                    };
                    crate::session::refuse_now(stream, busy, &lane, None);
                    continue;
                }
            };
            // A user's connection needs a place of those not kept for administrators too.
            let other = match &slot {
                None => None,
                Some(_) => match others.clone().try_acquire_owned() {
                    Ok(place) => Some(place),
                    Err(_) => {
                        let max = config.max_connections.max(1);
                        let kept = admin_reserve(max);
                        crate::server::refusals::log(
                            uid,
                            "busy: a connection over max_connections is refused",
                        );
                        let busy = crate::session::Busy {
                            message: format!(
                                "busy: the {} connections the daemon serves at once for users other than administrators are in use (max_connections {max}, of which {kept} are kept for administrators); retry shortly, or have an administrator raise max_connections in the daemon's configuration",
                                max - kept
                            ),
                            limit: berth_protocol::DaemonLimit::Connections,
                            max: max - kept,
                            in_use: max - kept,
                        };
                        crate::session::refuse_now(stream, busy, &lane, Some(Box::new(slot)));
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                let max = config.max_connections.max(1);
                crate::server::refusals::log(
                    uid,
                    "busy: a connection over max_connections is refused",
                );
                let busy = crate::session::Busy {
                    message: format!(
                        "busy: all {max} connections the daemon serves at once are in use (max_connections); retry shortly, or have an administrator raise max_connections in the daemon's configuration"
                    ),
                    limit: berth_protocol::DaemonLimit::Connections,
                    max,
                    in_use: max,
                };
                crate::session::refuse_now(stream, busy, &lane, Some(Box::new((slot, other))));
                continue;
            };
            let (shared, config, control, cancel) = (
                shared.clone(),
                config.clone(),
                control.clone(),
                cancel.clone(),
            );
            // The session's own future, not one wrapped in another: a wrapper would keep its
            // copies of the arguments for the connection's whole life.
            tracker.spawn(serve_connection(
                stream,
                shared,
                config,
                control,
                cancel,
                Box::new((permit, slot, other)),
            ));
        }
    }
}

/// How many of `max_connections` places are kept for administrators (root and the daemon's
/// own user): however many users fill the others, an administrator can still connect — to see
/// what is going on and to stop it. A sixteenth, at most 64; none for a daemon of a handful.
pub(crate) fn admin_reserve(max_connections: usize) -> usize {
    (max_connections / 16).min(64)
}

/// How long the accept loop waits after a failed accept (typically: out of descriptors) before
/// it tries again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The accept loop's state when `accept` fails: one log line per episode, and a reserve
/// descriptor (the "spare descriptor" trick) to accept one waiting client at a time while the
/// daemon is out of descriptors, answer it "busy" and close it, rather than leave it waiting
/// without a word.
pub(super) struct Accepting {
    /// `/dev/null`, opened at start and given up to accept a client when nothing else is left;
    /// opened again as soon as that client's descriptor is closed (see [`Refill`]).
    reserve: Reserve,
    /// The shortage going on, if any.
    episode: Option<Episode>,
}

/// A time in which accepting fails: one line when it starts, one when it is over, with the
/// true count of clients answered busy in between — not a pair of lines per refused client
/// (an accept works now and then in a shortage: with the reserve descriptor's help, or when a
/// descriptor was freed for a moment).
struct Episode {
    since: std::time::Instant,
    /// The last failed accept.
    last: std::time::Instant,
    answered: u64,
}

/// How long accepting must have worked before a shortage counts as over.
const EPISODE_QUIET: Duration = Duration::from_secs(10);

impl Accepting {
    pub(super) fn new() -> Self {
        let reserve = Reserve::default();
        reserve.refill();
        Accepting {
            reserve,
            episode: None,
        }
    }

    /// An accept worked: the episode, if any, is over once no accept has failed for
    /// [`EPISODE_QUIET`].
    fn accepted(&mut self) {
        let over = self
            .episode
            .as_ref()
            .is_some_and(|e| e.last.elapsed() >= EPISODE_QUIET);
        if over {
            if let Some(e) = self.episode.take() {
                tracing::info!(
                    answered = e.answered,
                    "accepting connections again after {}s out of descriptors, in which {} clients were answered busy ({} descriptors open)",
                    e.last.saturating_duration_since(e.since).as_secs(),
                    e.answered,
                    crate::server::limits::in_use()
                );
            }
        }
        self.reserve.refill();
    }

    /// An accept failed with `e`: logs once per episode, and when the daemon is out of
    /// descriptors answers one waiting client with the reserve descriptor.
    fn failed(
        &mut self,
        e: &io::Error,
        listener: &UnixListener,
        closers: &crate::session::closer::Closers,
    ) {
        let shortage = crate::server::limits::is_shortage(e);
        let now = std::time::Instant::now();
        if let Some(episode) = &mut self.episode {
            episode.last = now;
        } else {
            if shortage {
                tracing::warn!(
                    open = crate::server::limits::open_files_in_shortage(),
                    limit = crate::server::limits::open_files_limit(),
                    "cannot accept connections: the daemon is out of file descriptors ({} open); new clients are answered busy until some are freed, existing ones keep their reservations (raise LimitNOFILE= if this recurs)",
                    crate::server::limits::in_use()
                );
            } else {
                tracing::warn!("accept failed: {e}; retrying every {ACCEPT_RETRY:?}");
            }
        }
        let episode = self.episode.get_or_insert(Episode {
            since: now,
            last: now,
            answered: 0,
        });
        let answered = &mut episode.answered;
        if !shortage {
            return;
        }
        // The reserve's descriptor is this client's for a moment.
        if !self.reserve.give_up() {
            // Given up earlier and not yet back: maybe a descriptor was freed since.
            self.reserve.refill();
            return;
        }
        match rustix::net::acceptfrom_with(
            listener,
            rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        ) {
            Ok((fd, _)) => {
                *answered += 1;
                let stream = std::os::unix::net::UnixStream::from(fd);
                let busy = berth_protocol::WireError::new(
                    berth_core::ErrorKind::Unavailable,
                    crate::server::limits::busy_message("cannot serve another connection now"),
                )
                .with_detail(berth_protocol::ErrorDetail::Busy(
                    berth_protocol::BusyDetail {
                        limit: berth_protocol::DaemonLimit::OpenFiles,
                        max: crate::server::limits::open_files_limit(),
                        in_use: crate::server::limits::open_files_in_shortage(),
                    },
                ));
                let mut frame = bytes::BytesMut::new();
                let encoded = tokio_util::codec::Encoder::encode(
                    &mut berth_protocol::FrameCodec::<
                        berth_protocol::Request,
                        berth_protocol::Response,
                    >::daemon(),
                    berth_protocol::Response::Error(busy),
                    &mut frame,
                );
                if encoded.is_ok() {
                    // A new connection's buffer is empty: the answer fits, or the client is
                    // gone. Never waits.
                    let _ = rustix::net::send(
                        &stream,
                        &frame,
                        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
                    );
                }
                // Its receive queue may hold descriptors in flight: closed on a closer thread,
                // which then takes the descriptor back for the reserve.
                let uid = berth_os::peer::peer_credentials(&stream).map_or(u32::MAX, |c| c.uid);
                closers
                    .lane(uid)
                    .dispose((stream, Refill(self.reserve.clone())));
            }
            Err(e) => {
                tracing::debug!("accept with the reserve descriptor failed: {e}");
                self.reserve.refill();
            }
        }
    }
}

/// The reserve descriptor, shared with the closer that gives it back.
#[derive(Clone, Default)]
struct Reserve(Arc<std::sync::Mutex<Option<std::os::fd::OwnedFd>>>);

impl Reserve {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<std::os::fd::OwnedFd>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens it again (`/dev/null`, whose close never blocks) if it was given up.
    fn refill(&self) {
        let mut reserve = self.lock();
        if reserve.is_none() {
            *reserve = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok();
        }
    }

    /// Closes it, freeing one descriptor; `false` when there was none.
    fn give_up(&self) -> bool {
        self.lock().take().is_some()
    }
}

/// Dropped after the client accepted with the reserve's descriptor is closed: opens the
/// reserve again with the descriptor just freed.
struct Refill(Reserve);

impl Drop for Refill {
    fn drop(&mut self) {
        self.0.refill();
    }
}
