//! The background task that owns a connection to the daemon, and the handle callers use.
//!
//! # Layout
//! - [`link`]: socket I/O — the handshake, the reader, the writer task, descriptors.
//! - [`books`]: request bookkeeping — reply slots, held reservations, releases in flight.
//! - [`reconnect`]: reaching a restarted daemon again, re-claiming, reporting losses.
//!
//! This module ties them together: the task serves calls on one link until it breaks, then
//! reconnects.

mod books;
mod link;
mod reconnect;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_core::Token;
use berth_protocol::{ErrorDetail, Request, Response, Welcome, MAX_REQUEST_FRAME};
use futures_util::StreamExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::loss::Losses;
use books::{Books, Call, Delivery};
pub(crate) use link::Refused;
use link::{handshake, Link};

/// A live connection: a handle to the task that owns the socket.
#[derive(Debug)]
pub(crate) struct Connection {
    calls: mpsc::UnboundedSender<Call>,
    welcome: Welcome,
    path: PathBuf,
    losses: Arc<Losses>,
}

impl Connection {
    /// Shakes hands with the daemon on `stream` (connected to `path`) and starts the task that
    /// owns the connection. Must run inside a tokio runtime.
    pub(crate) async fn open(
        stream: UnixStream,
        path: &Path,
        client_name: &str,
        options: crate::Options,
    ) -> Result<Self, Refused> {
        let (reader, writer, welcome) = handshake(stream, path, client_name).await?;
        let (calls, rx) = mpsc::unbounded_channel::<Call>();
        let (orphans_tx, orphans) = mpsc::unbounded_channel::<Token>();
        let losses = Arc::new(Losses::default());
        let task = Task {
            path: path.to_owned(),
            client_name: client_name.to_owned(),
            reconnect_window: options.reconnect_window,
            trusted_daemon_uid: options.trusted_daemon_uid,
            calls: rx,
            orphans,
            books: Books::new(orphans_tx),
            losses: losses.clone(),
        };
        tokio::spawn(task.run(Link::new(reader, writer)));
        Ok(Connection {
            calls,
            welcome,
            path: path.to_owned(),
            losses,
        })
    }

    /// Sends `request` and waits for its answer. A [`Response::Error`] becomes an `Err`.
    pub(crate) async fn call(&self, request: Request) -> Result<Response, Error> {
        self.call_with_fd(request, None).await
    }

    /// Sends `request` with `fd` attached and waits for its answer.
    pub(crate) async fn call_with_fd(
        &self,
        request: Request,
        fd: Option<OwnedFd>,
    ) -> Result<Response, Error> {
        fits(&request)?;
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Call {
                request,
                fd,
                reply: Some(tx),
            })
            .map_err(|_| Error::lost("the connection task ended"))?;
        match rx.await.map(Delivery::take) {
            Ok(Ok(Response::Error(e))) => Err(e.into()),
            Ok(result) => result,
            Err(_) => Err(Error::lost("the connection task ended")),
        }
    }

    /// Sends `request` without waiting for its answer.
    pub(crate) fn submit(&self, request: Request) {
        let _ = self.calls.send(Call {
            request,
            fd: None,
            reply: None,
        });
    }

    /// The daemon's side of the handshake.
    pub(crate) fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Whether the connection task still runs (it ends when the daemon stayed away longer than
    /// the reconnection deadline).
    pub(crate) fn is_open(&self) -> bool {
        !self.calls.is_closed()
    }

    /// The socket this connection reached.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The reservations this session lost.
    pub(crate) fn losses(&self) -> &Losses {
        &self.losses
    }
}

/// The task that owns the connection: sends calls in order, matches answers to them, keeps
/// the books of what this session holds, and — when the daemon goes away — reconnects.
struct Task {
    path: PathBuf,
    client_name: String,
    /// How long to keep trying to reach the daemon again.
    reconnect_window: Duration,
    /// [`crate::Options::trusted_daemon_uid`], checked again on every reconnection.
    trusted_daemon_uid: Option<u32>,
    calls: mpsc::UnboundedReceiver<Call>,
    /// Tokens of `Acquired` answers whose callers went away before taking them.
    orphans: mpsc::UnboundedReceiver<Token>,
    books: Books,
    losses: Arc<Losses>,
}

/// Why a connection ended.
enum End {
    /// Every handle is gone: nothing more to do.
    Unused,
    /// The daemon went away (or the connection broke).
    Lost(String),
    /// The daemon closed the connection because it was silent and held nothing
    /// (`ErrorDetail::Idle`); it read none of the requests still waiting for an answer.
    Idle,
}

/// How long to wait for the daemon's last frames once a write to it failed.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// Whether `response` is the daemon's notice that it closes the connection for silence
/// rather than an answer.
fn is_idle_notice(response: &Response) -> bool {
    matches!(response, Response::Error(e) if matches!(e.detail, ErrorDetail::Idle { .. }))
}

impl Task {
    async fn run(mut self, first: Link) {
        let mut link = first;
        loop {
            let end = self.drive(&mut link).await;
            drop(link);
            let again = match end {
                End::Unused => return,
                End::Lost(why) => {
                    self.books.fail_pending(&why);
                    Vec::new()
                }
                End::Idle => {
                    let mut again = self.books.unread();
                    // Nothing to re-claim and nothing asked: connect again only when asked.
                    let nothing_held =
                        self.books.held.is_empty() && self.books.releasing.is_empty();
                    if again.is_empty() && nothing_held {
                        match self.calls.recv().await {
                            Some(call) => again.push(call),
                            None => return,
                        }
                    }
                    again
                }
            };
            link = match self.reconnect().await {
                Some(link) => link,
                None => {
                    for call in again {
                        if let Some(reply) = call.reply {
                            let _ = reply.send(Delivery::failed(Error::lost(
                                "the daemon closed an idle connection and could not be reached again",
                            )));
                        }
                    }
                    break;
                }
            };
            for call in again {
                // A writer that ended at once is seen by `drive`, which fails what is booked.
                let _ = self.send(&link, call);
            }
        }
        // The daemon stayed away. Ending the task closes the call channel: every later call
        // fails at once, and `Client::is_open` says so.
    }

    /// Serves calls on one connection until it ends.
    async fn drive(&mut self, link: &mut Link) -> End {
        loop {
            let step = tokio::select! {
                // The daemon's frames first: its idle notice is in the socket before a write
                // fails because the daemon closed, and must be seen before the writer's error,
                // so that the requests the daemon did not read are sent again, not failed.
                biased;
                frame = link.reader.next() => match frame {
                    Some(Ok(response)) if is_idle_notice(&response) => return End::Idle,
                    Some(Ok(response)) => self
                        .books
                        .answer(response)
                        .into_iter()
                        .flatten()
                        .try_for_each(|orphan| self.abandon(link, orphan)),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("the daemon closed it".into()),
                },
                call = self.calls.recv() => match call {
                    Some(call) => self.send(link, call),
                    None => return End::Unused,
                },
                Some(token) = self.orphans.recv() => self.abandon(link, token),
                written = &mut link.writer => {
                    let why = match written {
                        Ok(Err(why)) => why,
                        Ok(Ok(())) => "the writer stopped".into(),
                        Err(e) => format!("the writer failed: {e}"),
                    };
                    // A write fails once the daemon has closed, possibly before its last
                    // frames were read: take them first (briefly: the stream ends right after).
                    if let Ok(true) = tokio::time::timeout(LAST_WORDS, self.last_words(link)).await {
                        return End::Idle;
                    }
                    Err(why)
                }
            };
            if let Err(why) = step {
                return End::Lost(why);
            }
        }
    }

    /// Reads what the daemon sent before the connection broke, up to the end of the stream:
    /// answers are delivered; `true` when its idle notice is among them.
    async fn last_words(&mut self, link: &mut Link) -> bool {
        while let Some(Ok(response)) = link.reader.next().await {
            if is_idle_notice(&response) {
                return true;
            }
            // An orphan is released after the reconnect (it stays in `held`).
            let _ = self.books.answer(response);
        }
        false
    }

    /// Books `call` and hands its frame to the writer.
    fn send(&mut self, link: &Link, call: Call) -> Result<(), String> {
        let frame = self.books.queue(call);
        link.frames
            .send(frame)
            .map_err(|_| "the writer task ended".to_owned())
    }

    /// Releases a held reservation that nobody holds a handle to (its acquire was cancelled).
    fn abandon(&mut self, link: &Link, token: Token) -> Result<(), String> {
        if !self.books.held.contains(&token) {
            return Ok(());
        }
        self.send(
            link,
            Call {
                request: Request::Release { token: token.get() },
                fd: None,
                reply: None,
            },
        )
    }
}

/// A request the daemon would refuse to read (a frame over [`MAX_REQUEST_FRAME`]) is refused
/// here, before anything is sent, as what it is: an argument too long. Sent, it would end the
/// connection.
fn fits(request: &Request) -> Result<(), Error> {
    let len = berth_protocol::frame::payload_len(request);
    if len > MAX_REQUEST_FRAME {
        return Err(Error::InvalidArgument(format!(
            "the request is {len} bytes long, over the {MAX_REQUEST_FRAME} bytes the berth daemon reads in one request; shorten what it carries (a label, a name or a list)"
        )));
    }
    Ok(())
}
