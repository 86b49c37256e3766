//! Finding the daemon — and, when none answers, starting a per-user one on demand. The start
//! itself (lock, detached spawn, readiness line) is the client library's
//! ([`berth::autostart`]); this module only chooses the options and the binary (this one).

use std::time::Duration;

use anyhow::Context;
use berth::{Client, Options, Starter};

use crate::exit::Failure;

/// Whether the connection should outlive a daemon restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// One request and done: if the daemon goes away meanwhile, fail at once.
    OneShot,
    /// Holds reservations for a while (`berth run`): reconnect and re-claim them.
    Holding,
}

impl Lifetime {
    fn options(self) -> Options {
        match self {
            // A busy daemon is reported at once to a person waiting for one answer.
            Lifetime::OneShot => Options::default()
                .reconnect_window(Duration::ZERO)
                .busy_retry(Duration::ZERO),
            Lifetime::Holding => Options::default(),
        }
    }
}

/// Connects to a running daemon, without starting one, for one-shot requests.
pub async fn existing() -> Result<Client, Failure> {
    let client = Client::connect_with(Lifetime::OneShot.options()).await?;
    note_foreign(&client);
    Ok(client)
}

/// Says on stderr when the daemon that answers serves another network namespace: its
/// reservations and ports are that namespace's, not the caller's.
fn note_foreign(client: &berth::Client) {
    if let Some(f) = client.foreign_namespace() {
        eprintln!(
            "berth: note: the daemon on {} serves network namespace net:[{}] (that of pid {}, which listens there), not this one (net:[{}]): what it says of reservations and ports is true of its namespace; a daemon for this one needs a socket and a database of its own (`berth daemon --socket PATH --db PATH`)",
            client.socket_path().display(),
            f.daemon_netns,
            f.listener_pid,
            f.own_netns
        );
    }
}

/// Connects to a running daemon, starting one on demand (with this very binary) unless
/// `BERTH_NO_AUTOSTART` says not to. A start is announced once on stderr.
pub async fn or_start(lifetime: Lifetime) -> Result<Client, Failure> {
    let exe = std::env::current_exe().context("cannot find the berth executable")?;
    let starter = Starter::new().binary(exe);
    Ok(Client::connect_or_start_with(lifetime.options(), &starter).await?)
}
