//! The one stream of table changes.
//!
//! Every change the table makes goes through [`Stream::publish`], called with the table still
//! locked, so each consumer sees the changes in exactly the table's order. A consumer mirrors
//! the table somewhere else — the journal in the database today; the kernel's reserved-ports
//! list and the hold sockets are the next ones. It answers each change at once ([`Ack::Done`])
//! or later ([`Ack::Later`]): the request that made the change is answered only once every
//! consumer has acknowledged it, and a consumer that fails a refusable change has it undone
//! (see `Shared::settle`).

pub(crate) mod error;
pub(crate) mod hold;
pub(crate) mod journal;
pub mod kernel;
pub(crate) mod owner_watch;
pub(crate) mod store_thread;

use berth_core::Change;
use tokio::sync::oneshot;

pub(crate) use error::{MirrorError, Refused, WriteError};

/// A consumer's answer to one change.
pub(crate) enum Ack {
    /// Done already (or nothing to do).
    Done,
    /// Done once the receiver answers `Ok`; an `Err` refuses the change.
    Later(oneshot::Receiver<Result<(), MirrorError>>),
    /// Failed already, with why: refuses the change.
    Failed(MirrorError),
}

/// Something that mirrors the table.
pub(crate) trait Consumer: Send + Sync {
    /// Its name, for the log: "journal", "kernel", ….
    fn name(&self) -> &'static str;

    /// Takes one change. Called under the table lock, in the table's order: must not block
    /// (queue the work and answer [`Ack::Later`]).
    fn accept(&self, change: &Change) -> Ack;
}

/// The consumers, in the order they see each change.
pub(crate) struct Stream {
    consumers: Vec<Box<dyn Consumer>>,
}

/// One acknowledgement still to come.
struct Waiting {
    /// Which change (index into [`Pending::changes`]).
    change: usize,
    /// Which consumer.
    consumer: usize,
    rx: oneshot::Receiver<Result<(), MirrorError>>,
}

/// The acknowledgements of published changes, to await once the table lock is let go.
#[must_use = "await it with Shared::settle, or drop it on purpose when nobody waits"]
pub(crate) struct Pending {
    changes: Vec<Change>,
    waiting: Vec<Waiting>,
}

/// Changes a consumer failed, to undo, with why.
pub(crate) struct Undo {
    /// The refused changes that can be undone, in table order.
    pub(crate) changes: Vec<Change>,
    /// The consumers that refused (their indices), so the undo is not sent back to them.
    pub(crate) refusers: Vec<usize>,
    /// The first refusal: "the database: disk full".
    pub(crate) refused: Refused,
}

impl Stream {
    pub(crate) fn new(consumers: Vec<Box<dyn Consumer>>) -> Self {
        Stream { consumers }
    }

    /// Hands `changes` to every consumer, change by change. Call with the table locked.
    pub(crate) fn publish(&self, changes: Vec<Change>) -> Pending {
        self.publish_except(changes, &[])
    }

    /// [`Stream::publish`], skipping the consumers in `skip` (those that refused the change
    /// being undone: they never applied it).
    pub(crate) fn publish_except(&self, changes: Vec<Change>, skip: &[usize]) -> Pending {
        let mut waiting = Vec::new();
        for (i, change) in changes.iter().enumerate() {
            for (c, consumer) in self.consumers.iter().enumerate() {
                if skip.contains(&c) {
                    continue;
                }
                let rx = match consumer.accept(change) {
                    Ack::Done => continue,
                    Ack::Later(rx) => rx,
                    Ack::Failed(why) => {
                        let (tx, rx) = oneshot::channel();
                        let _ = tx.send(Err(why));
                        rx
                    }
                };
                waiting.push(Waiting {
                    change: i,
                    consumer: c,
                    rx,
                });
            }
        }
        Pending { changes, waiting }
    }

    fn name(&self, consumer: usize) -> &'static str {
        self.consumers.get(consumer).map_or("?", |c| c.name())
    }
}

impl Pending {
    /// Waits for every acknowledgement. `Err` lists the refused changes that must be undone
    /// (failures of changes that cannot be refused are logged and otherwise ignored).
    pub(crate) async fn acknowledged(self, stream: &Stream) -> Result<(), Undo> {
        let mut refused: Option<Undo> = None;
        for w in self.waiting {
            let answer = w.rx.await.unwrap_or(Err(MirrorError::Stopped));
            let Err(why) = answer else { continue };
            let name = stream.name(w.consumer);
            let Some(change) = self.changes.get(w.change) else {
                continue;
            };
            if !change.refusable() {
                tracing::warn!("{name} could not follow a change ({why}): {change:?}");
                continue;
            }
            let r = refused.get_or_insert_with(|| Undo {
                changes: Vec::new(),
                refusers: Vec::new(),
                refused: Refused {
                    consumer: name,
                    cause: why,
                },
            });
            if !r.changes.contains(change) {
                r.changes.push(change.clone());
            }
            if !r.refusers.contains(&w.consumer) {
                r.refusers.push(w.consumer);
            }
        }
        match refused {
            None => Ok(()),
            Some(r) => Err(r),
        }
    }
}
