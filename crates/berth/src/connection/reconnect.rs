//! Reconnection after the daemon went away (a restart, a crash): reach it again with backoff
//! within the reconnection window, repeat the releases that may not have been carried out,
//! and re-claim the held reservations. A reservation that cannot be re-claimed is reported as
//! lost ([`crate::loss`]) — never dropped silently.

use std::time::Duration;

use berth_core::{ErrorKind, Token};
use berth_protocol::{Request, Response};
use futures_util::SinkExt;
use tokio::time::Instant;

use super::link::{handshake, next_answer, Link, Reader, Writer};
use super::Task;
use crate::error::Error;

/// The least time one reconnection attempt (connect, handshake, releases, re-claims) is
/// given, even when less of the reconnection window is left.
const ATTEMPT_FLOOR: Duration = Duration::from_secs(1);

impl Task {
    /// Reaches the daemon again, repeats the releases that were not answered, and re-claims
    /// the held reservations. `None` when nobody answered within the reconnection window (the
    /// held reservations are then lost), or the client was dropped meanwhile.
    pub(super) async fn reconnect(&mut self) -> Option<Link> {
        let deadline = Instant::now() + self.reconnect_window;
        let mut pause = Duration::from_millis(10);
        loop {
            if self.calls.is_closed()
                && self.books.held.is_empty()
                && self.books.releasing.is_empty()
            {
                return None;
            }
            // A daemon that accepts and never answers must not hold an attempt up forever.
            let limit = deadline
                .saturating_duration_since(Instant::now())
                .max(ATTEMPT_FLOOR);
            let last = match tokio::time::timeout(limit, self.attempt()).await {
                Ok(Ok((reader, writer))) => return Some(Link::new(reader, writer)),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "an attempt timed out".to_owned(),
            };
            if Instant::now() + pause > deadline {
                let held = std::mem::take(&mut self.books.held);
                for token in held {
                    self.losses.mark(
                        token,
                        ErrorKind::Unavailable,
                        format!(
                            "reservation {} is lost: the berth daemon on {} went away and did not come back within {}s ({last}); its ports may be handed to others — stop using them",
                            token,
                            self.path.display(),
                            self.reconnect_window.as_secs()
                        ),
                    );
                }
                self.books.releasing.clear();
                return None;
            }
            // Waiting for a daemon to come back: there is no readiness signal to wait on.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// One reconnection attempt: connect, shake hands, release what was being released (any
    /// answer will do: released, or gone already), then re-claim each held reservation. One
    /// the daemon does not know or refuses (its owner is this process, so a refusal means the
    /// reservation is gone) is lost; any other answer fails the attempt, keeping the token for
    /// the next one. Requests are pipelined, with reading and writing side by side.
    async fn attempt(&mut self) -> Result<(Reader, Writer), Error> {
        let stream =
            crate::rendezvous::connect_within(&self.path, ATTEMPT_FLOOR, self.trusted_daemon_uid)
                .await?;
        let (mut reader, mut writer, _) = handshake(stream, &self.path, &self.client_name).await?;
        let releases: Vec<Token> = self.books.releasing.keys().copied().collect();
        let reclaims: Vec<Token> = self.books.held.iter().copied().collect();
        let requests = releases
            .iter()
            .map(|t| Request::Release { token: t.get() })
            .chain(reclaims.iter().map(|t| Request::Reclaim { token: t.get() }));
        let write = async {
            for request in requests {
                writer.feed(request).await.map_err(Error::lost)?;
            }
            writer.flush().await.map_err(Error::lost)
        };
        let books = &mut self.books;
        let losses = &self.losses;
        let path = &self.path;
        let read = async {
            for token in &releases {
                next_answer(&mut reader).await?;
                books.releasing.remove(token);
            }
            let mut failed = None;
            for &token in &reclaims {
                match next_answer(&mut reader).await? {
                    Response::Reclaimed(_) => {}
                    Response::Error(e)
                        if matches!(e.kind, ErrorKind::NotFound | ErrorKind::PermissionDenied) =>
                    {
                        books.held.remove(&token);
                        losses.mark(
                            token,
                            ErrorKind::NotFound,
                            format!(
                                "reservation {} is lost: the berth daemon on {} restarted and did not give it back ({}); its ports may be handed to others — stop using them",
                                token,
                                path.display(),
                                e.message
                            ),
                        );
                    }
                    Response::Error(e) => failed = Some(Error::from(e)),
                    other => failed = Some(Error::unexpected(other)),
                }
            }
            failed.map_or(Ok(()), Err)
        };
        tokio::try_join!(write, read)?;
        Ok((reader, writer))
    }
}
