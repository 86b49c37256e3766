//! The descriptor limit: every connection, owner pidfd and (soon) hold socket costs one, so the
//! daemon raises its soft limit to the hard one at start-up and reports it in `berth status`.

pub(crate) use berth_os::rlimit::open_files_limit;
use berth_os::rlimit::{count_open_files as count_open, free_at_or_above};

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit; returns the soft limit in force
/// afterwards (`u64::MAX` for unlimited).
pub(crate) fn raise_open_files() -> u64 {
    if let Err(e) = berth_os::rlimit::raise_open_files() {
        tracing::warn!("cannot raise the open-file limit to its hard limit: {e}");
    }
    open_files_limit()
}

/// Descriptors this process has open (`/proc/self/fd`, without the directory's own), counted
/// at most once per [`COUNT_EVERY`]: listing the directory costs about a millisecond per 1,000
/// descriptors, and `status`, which shows it, is a request anyone may send as often as they like.
pub(crate) fn open_files() -> u32 {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, u32)>> = std::sync::Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = std::time::Instant::now();
    match *last {
        Some((at, n)) if now.duration_since(at) < COUNT_EVERY => n,
        _ => {
            let n = count_open().unwrap_or(0);
            *last = Some((now, n));
            n
        }
    }
}

/// How long a count of open descriptors is reused for `status`.
const COUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Descriptors open now, when the daemon may be out of them: reading `/proc/self/fd` takes a
/// descriptor too, and failing for want of one means every one up to the limit is open.
pub(crate) fn open_files_in_shortage() -> u64 {
    match count_open() {
        Ok(n) => u64::from(n),
        Err(e) if is_shortage(&e) => open_files_limit(),
        Err(_) => 0,
    }
}

/// Whether the daemon has room for `fds` more descriptors, with a margin for its own work:
/// what a `recvmsg` needs (the kernel closes on the reading thread whatever it cannot install,
/// and such a close can block), and what a new connection or hold socket must leave for it.
/// Two system calls: is a descriptor free at or above the limit less the room
/// (`berth_os::rlimit::free_at_or_above`; the top of the table is the last to fill)?
pub(crate) fn room_for(fds: usize) -> bool {
    // A room found for a small request is trusted for a millisecond: a busy daemon reads (and
    // grants held blocks of a few ports) thousands of times a second, and a probe each would
    // cost two system calls. Larger requests (a new connection's room) are always probed.
    static LAST_ROOMY: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let small = fds <= SMALL_ROOM;
    let now = std::time::Instant::now();
    if small {
        let last = *LAST_ROOMY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| now.saturating_duration_since(at) < ROOM_TRUSTED) {
            return true;
        }
    }
    let roomy = probe_room(fds);
    if small && roomy {
        *LAST_ROOMY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(now);
    }
    roomy
}

/// The largest request whose room is trusted for [`ROOM_TRUSTED`] once found: a read's, and a
/// held acquire's of up to 16 ports (two sockets a port, beside a message's descriptors).
const SMALL_ROOM: usize = crate::session::inbound::KERNEL_MAX_FDS + 2 * 16;

/// How long a room found is trusted for (see [`room_for`]).
const ROOM_TRUSTED: std::time::Duration = std::time::Duration::from_millis(1);

/// [`room_for`]'s probe itself.
fn probe_room(fds: usize) -> bool {
    let Ok(limit) = i64::try_from(open_files_limit()) else {
        return true;
    };
    // A small limit (a test's) keeps a fraction of itself free instead: a quarter for what an
    // admitted session needs (a read), a third for more (a new connection's), so that admitted
    // sessions are still read once new connections are refused.
    let cap = if fds > crate::session::inbound::READ_ROOM {
        limit / 3
    } else {
        limit / 4
    };
    let room = i64::try_from(fds + ROOM_MARGIN)
        .unwrap_or(i64::MAX)
        .min(cap);
    let Ok(from) = i32::try_from(limit - room) else {
        return true;
    };
    free_at_or_above(from).unwrap_or(true)
}

/// Descriptors kept free beyond a message's for the daemon's own work (probes, `/proc` reads,
/// the database).
const ROOM_MARGIN: usize = 64;

/// The room a new connection must leave: a message's descriptors more than a read needs, so
/// that a daemon short of descriptors refuses new connections while it still reads those it
/// serves (and sees them end, which frees descriptors).
pub(crate) const ACCEPT_ROOM: usize = 2 * crate::session::inbound::READ_ROOM;

/// Whether `e` says that the daemon (`EMFILE`) or the system (`ENFILE`) is out of file
/// descriptors: a shortage of the daemon's, never the client's fault.
pub(crate) fn is_shortage(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The daemon's use of descriptors, for messages: "N of M".
pub(crate) fn in_use() -> String {
    match open_files_limit() {
        u64::MAX => format!("{} of unlimited", open_files_in_shortage()),
        limit => format!("{} of {limit}", open_files_in_shortage()),
    }
}

/// What a client is told when the daemon could not serve it for want of descriptors.
pub(crate) fn busy_message(what: &str) -> String {
    format!(
        "busy: the daemon is out of file descriptors ({} open) and {what}; nothing was changed, retry shortly, or have an administrator raise the daemon's RLIMIT_NOFILE (LimitNOFILE= of berth.service)",
        in_use()
    )
}

/// Logs that the daemon is out of descriptors, at most once per [`SHORTAGE_LOG_EVERY`]
/// whatever ran into it: a shortage is an episode, not a line per request.
pub(crate) fn log_shortage(what: &str) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = std::time::Instant::now();
    if !log_due(*last, now) {
        return;
    }
    *last = Some(now);
    tracing::warn!(
        open = open_files_in_shortage(),
        limit = open_files_limit(),
        "the daemon is out of file descriptors ({}): {what}; clients are answered busy and keep their reservations (raise LimitNOFILE= if this recurs)",
        in_use()
    );
}

/// How often [`log_shortage`] logs, at most.
const SHORTAGE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a shortage line is due at `now`, the last one having been logged at `last`.
pub(crate) fn log_due(last: Option<std::time::Instant>, now: std::time::Instant) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= SHORTAGE_LOG_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shortage_is_logged_once_per_interval() {
        let start = std::time::Instant::now();
        assert!(log_due(None, start));
        assert!(!log_due(Some(start), start));
        assert!(!log_due(Some(start), start + SHORTAGE_LOG_EVERY / 2));
        assert!(log_due(Some(start), start + SHORTAGE_LOG_EVERY));
    }

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let limit = raise_open_files();
        assert_eq!(limit, berth_os::rlimit::open_files_hard_limit());
    }
}
