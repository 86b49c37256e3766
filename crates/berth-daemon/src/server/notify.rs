//! Telling systemd how the daemon is doing (`sd_notify(3)`): `READY=1` once it serves,
//! `STATUS=` lines while it runs, `STOPPING=1` when it shuts down.
//!
//! Every call is a no-op without `NOTIFY_SOCKET` (the daemon was not started by systemd with
//! `Type=notify`), and a failure to notify is logged, never fatal: the service manager's view
//! matters less than serving clients.

use sd_notify::NotifyState;

/// How often the `STATUS=` line is refreshed while serving (only sent when it changed).
pub(crate) const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
pub(crate) fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// `READY=1` with a status line: the database is loaded and clients are served.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A new status line, e.g. "serving 12 reservations for 3 clients".
pub(crate) fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `STOPPING=1` with a status line: the daemon stops accepting and drains.
pub(crate) fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

fn send(states: &[NotifyState<'_>]) {
    if !enabled() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
    }
}

/// The status line for `reservations` live reservations and `clients` connections.
pub(crate) fn serving(reservations: usize, clients: u32) -> String {
    let plural = |n: u64, noun: &str| {
        if n == 1 {
            format!("1 {noun}")
        } else {
            format!("{n} {noun}s")
        }
    };
    format!(
        "serving {} for {}",
        plural(
            u64::try_from(reservations).unwrap_or(u64::MAX),
            "reservation"
        ),
        plural(u64::from(clients), "client")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_count_in_words() {
        assert_eq!(serving(1, 0), "serving 1 reservation for 0 clients");
        assert_eq!(serving(12, 1), "serving 12 reservations for 1 client");
    }
}
