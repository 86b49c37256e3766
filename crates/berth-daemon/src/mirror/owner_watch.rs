//! Noticing that a session's owner died even while its connection stays open.
//!
//! A connection closes when its process exits — unless a forked child inherited it. The
//! reservations belong to the process, not to the descriptor, so each session
//! also watches its owner through a pidfd, which becomes readable when the process exits.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use berth_core::{Bond, Change, Owner};
use berth_os::pidfd::{ExitWatch, Exits, PidFd};
use tokio::sync::mpsc;

use crate::mirror::{Ack, Consumer};
use crate::session::peer::read_owner;

/// Sends the owner of every reservation that lives as long as its owner process (handed to it,
/// or restored for it after a restart) to the task that watches owners, once per owner; that
/// task ends those reservations when the process exits.
pub(crate) struct Watcher {
    tx: mpsc::UnboundedSender<Owner>,
    watched: Watched,
}

/// What the task that watches owners receives: each owner to watch, and the set it forgets
/// them from when they exit.
pub(crate) struct Owners {
    /// The owners to watch, each once.
    pub(crate) rx: mpsc::UnboundedReceiver<Owner>,
    /// The owners watched now.
    pub(crate) watched: Watched,
}

/// The owners watched now, by pid and start time: one watch each, however many of its
/// reservations arrive. Checked where the change is published, so that a process asking for
/// its tenth port wakes no task (the portserver endpoint's clients ask one port at a time).
#[derive(Clone, Default)]
pub(crate) struct Watched(Arc<Mutex<HashSet<(u32, u64)>>>);

impl Watched {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(u32, u64)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `owner` was not watched yet (it is now).
    fn insert(&self, owner: &Owner) -> bool {
        self.lock().insert((owner.pid, owner.start_time))
    }

    /// Forgets `owner`, whose watch ended.
    pub(crate) fn remove(&self, owner: &Owner) {
        self.lock().remove(&(owner.pid, owner.start_time));
    }
}

impl Watcher {
    pub(crate) fn new() -> (Self, Owners) {
        let (tx, rx) = mpsc::unbounded_channel();
        let watched = Watched::default();
        (
            Watcher {
                tx,
                watched: watched.clone(),
            },
            Owners { rx, watched },
        )
    }
}

impl Consumer for Watcher {
    fn name(&self) -> &'static str {
        "the owner watch"
    }

    fn accept(&self, change: &Change) -> Ack {
        let watched = match change {
            // Granted: a portserver reservation is bound to its owner process from the start.
            Change::Granted(r) | Change::Restored(r) | Change::Rebound { after: r, .. } => {
                matches!(r.bond(), Some(Bond::Process | Bond::Unclaimed))
                    .then(|| r.owner())
                    .flatten()
            }
            _ => None,
        };
        if let Some(owner) = watched {
            if self.watched.insert(owner) {
                // The receiving task lives as long as the daemon serves; once it is gone
                // nobody needs to watch.
                let _ = self.tx.send(owner.clone());
            }
        }
        Ack::Done
    }
}

/// How long to wait before trying again to watch an owner when the daemon is out of
/// descriptors.
const SHORTAGE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Resolves when the owner exits; never resolves when it cannot be watched (a peer in another
/// pid namespace shows pid 0), leaving the connection's end as the only signal. A daemon out of
/// descriptors tries again every [`SHORTAGE_RETRY`]: its shortage never passes for the owner's
/// exit.
pub(crate) async fn owner_exit(exits: &Arc<Exits>, owner: &Owner) {
    loop {
        match watch(exits, owner) {
            Ok(Some(mut exit)) => {
                exit.exited().await;
                return;
            }
            Ok(None) => return,
            Err(e) if crate::server::limits::is_shortage(&e) => {
                crate::server::limits::log_shortage("a client's process cannot be watched for now");
                // Boxed: rare, and otherwise every session's task would carry a timer's room.
                Box::pin(tokio::time::sleep(SHORTAGE_RETRY)).await;
            }
            // The kernel's room for epoll entries (`fs.epoll.max_user_watches`) or its memory:
            // may come back, as descriptors do.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::ENOMEM)) => {
                log_watch_shortage(&e);
                Box::pin(tokio::time::sleep(SHORTAGE_RETRY)).await;
            }
            Err(e) => {
                tracing::debug!(pid = owner.pid, "cannot watch the owner: {e}");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Says, at most every few seconds, that the kernel has no room to watch more processes.
fn log_watch_shortage(e: &io::Error) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = std::time::Instant::now();
    if crate::server::limits::log_due(*last, now) {
        *last = Some(now);
        tracing::warn!(
            "clients' processes cannot be watched for their exit for now ({e}); trying again every {SHORTAGE_RETRY:?}. If this lasts, raise the kernel's fs.epoll.max_user_watches (sysctl) or lower max_connections"
        );
    }
}

/// A pidfd for the owner, or `None` when it has already gone (its pid is free or reused).
fn watch(exits: &Arc<Exits>, owner: &Owner) -> io::Result<Option<ExitWatch>> {
    // Pid 0 (a peer of another pid namespace) is an error: it names no process here.
    let Some(fd) = PidFd::open(owner.pid)? else {
        return Ok(None);
    };
    // The pid might have been reused between accept and now: same start time or it is gone.
    let now = read_owner(owner.pid, owner.uid, owner.gid)?;
    if now.start_time != owner.start_time {
        return Ok(None);
    }
    exits.watch(fd).map(Some)
}
