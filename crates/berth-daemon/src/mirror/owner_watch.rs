//! Noticing that a session's owner died even while its connection stays open.
//!
//! A connection closes when its process exits — unless a forked child inherited it. The
//! reservations belong to the process, not to the descriptor, so each session
//! also watches its owner through a pidfd, which becomes readable when the process exits.

use std::collections::{HashMap, HashSet};
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
    tx: mpsc::UnboundedSender<(Owner, Option<PidFd>)>,
    watched: Watched,
    pins: Pins,
}

/// What the task that watches owners receives: each owner to watch (with the pidfd it was
/// described through, when one was pinned), and the set it forgets them from when they exit.
pub(crate) struct Owners {
    /// The owners to watch, each once.
    pub(crate) rx: mpsc::UnboundedReceiver<(Owner, Option<PidFd>)>,
    /// The owners watched now.
    pub(crate) watched: Watched,
}

/// Pidfds of owners just described, by pid and start time, while their grant is published:
/// the owner watch then watches through the very pidfd the description was confirmed by.
/// A pidfd opened anew by pid could name another process: by then the owner may have been
/// reaped and its pid taken by one started in the same clock tick (start times count ticks of
/// 10 ms), which would pass for it.
#[derive(Clone, Default)]
pub(crate) struct Pins(Arc<Mutex<PinSet>>);

#[derive(Default)]
struct PinSet {
    /// Each owner's latest pin, with its number.
    by_owner: HashMap<(u32, u64), (u64, PidFd)>,
    next: u64,
}

/// An owner pinned (see [`Pins::pin`]); unpinned when dropped, unless pinned again since.
pub(crate) struct Pinned<'a> {
    pins: &'a Pins,
    key: (u32, u64),
    number: u64,
}

impl Pins {
    fn lock(&self) -> std::sync::MutexGuard<'_, PinSet> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pins `owner` to `pidfd` — a pidfd of that very process, taken before it was described —
    /// until the guard returned is dropped: publish the owner's grant meanwhile. Two answers
    /// for one owner at once (the endpoint's two threads) leave the later pin, whichever guard
    /// drops first.
    pub(crate) fn pin(&self, owner: &Owner, pidfd: PidFd) -> Pinned<'_> {
        let key = (owner.pid, owner.start_time);
        let mut set = self.lock();
        let number = set.next;
        set.next += 1;
        set.by_owner.insert(key, (number, pidfd));
        Pinned {
            pins: self,
            key,
            number,
        }
    }

    fn take(&self, owner: &Owner) -> Option<PidFd> {
        self.lock()
            .by_owner
            .remove(&(owner.pid, owner.start_time))
            .map(|(_, pidfd)| pidfd)
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        let mut set = self.pins.lock();
        if set
            .by_owner
            .get(&self.key)
            .is_some_and(|(n, _)| *n == self.number)
        {
            set.by_owner.remove(&self.key);
        }
    }
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
                pins: Pins::default(),
            },
            Owners { rx, watched },
        )
    }
}

impl Watcher {
    /// Where owners are pinned to their pidfds before their grants are published.
    pub(crate) fn pins(&self) -> Pins {
        self.pins.clone()
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
                let _ = self.tx.send((owner.clone(), self.pins.take(owner)));
            }
        }
        Ack::Done
    }
}

/// How long to wait before trying again to watch an owner when the daemon is out of
/// descriptors.
const SHORTAGE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Resolves when the owner exits; never resolves when it cannot be watched (a peer in another
/// pid namespace shows pid 0), leaving the connection's end as the only signal. Watched through
/// `pinned` when given (a pidfd of that very process: see [`Pins`]), else through a pidfd
/// opened by pid and checked against the start time. A daemon out of descriptors tries again
/// every [`SHORTAGE_RETRY`]: its shortage never passes for the owner's exit.
pub(crate) async fn owner_exit(exits: &Arc<Exits>, owner: &Owner, mut pinned: Option<PidFd>) {
    loop {
        let watched = match pinned.take() {
            Some(pidfd) => exits.watch(pidfd).map(Some),
            None => watch(exits, owner),
        };
        match watched {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An owner reaped whose description — pid and start time — a newcomer now has (as one
    /// started on its pid in the same clock tick would): watched through the pidfd pinned for
    /// it, its exit is seen at once; opened anew by pid, the newcomer passes for it.
    #[tokio::test]
    async fn a_pinned_owner_is_watched_through_its_own_pidfd() {
        let exits = Exits::new().unwrap();
        tokio::spawn({
            let exits = exits.clone();
            async move { exits.run().await }
        });
        let mut reaped = std::process::Command::new("true").spawn().unwrap();
        let pinned = PidFd::open(reaped.id()).unwrap().unwrap();
        reaped.wait().unwrap();
        let mut newcomer = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let owner = read_owner(newcomer.id(), 0, 0).unwrap();
        assert!(owner.start_time > 0);
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            owner_exit(&exits, &owner, Some(pinned)),
        )
        .await
        .expect("the exit of the process pinned is seen");
        // By pid, the newcomer is watched in its place.
        assert!(matches!(watch(&exits, &owner), Ok(Some(_))));
        newcomer.kill().unwrap();
        newcomer.wait().unwrap();
    }

    /// A pin lasts while its guard does, and is taken once.
    #[test]
    fn a_pin_is_taken_once_and_dropped_with_its_guard() {
        let pins = Pins::default();
        let me = read_owner(std::process::id(), 0, 0).unwrap();
        {
            let _pinned = pins.pin(&me, PidFd::open(me.pid).unwrap().unwrap());
            assert!(pins.take(&me).is_some());
            assert!(pins.take(&me).is_none());
        }
        {
            let _pinned = pins.pin(&me, PidFd::open(me.pid).unwrap().unwrap());
        }
        assert!(pins.take(&me).is_none(), "unpinned with its guard");
        // Two at once: the earlier guard's drop leaves the later pin.
        let first = pins.pin(&me, PidFd::open(me.pid).unwrap().unwrap());
        let second = pins.pin(&me, PidFd::open(me.pid).unwrap().unwrap());
        drop(first);
        assert!(pins.take(&me).is_some(), "the later pin stays");
        drop(second);
        assert!(pins.take(&me).is_none());
    }
}
