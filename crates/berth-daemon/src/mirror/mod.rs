//! The one stream of table changes.
//!
//! Every change the table makes goes through [`Stream::publish`], called with the table still
//! locked, so each consumer sees the changes in exactly the table's order. A consumer mirrors
//! the table somewhere else — the journal in the database today; the kernel's reserved-ports
//! list and the hold sockets are the next ones. It answers each change at once ([`Ack::Done`])
//! or later ([`Ack::Later`]): the request that made the change is answered only once every
//! consumer has acknowledged it, and a consumer that fails a refusable change has it undone
//! (see `Shared::settle`).
//!
//! # Transactions
//! The changes published together (one request's) stand or fall together: when a consumer
//! refuses any refusable change of them, every refusable change of them is undone (a TCP+UDP
//! pair is never left half granted). The undo of a change goes to every consumer that applied
//! it — each failure says whether its consumer kept the change in its own books anyway
//! ([`MirrorError::applied`]: kernel sync counted it before its write failed) — and to no
//! consumer that did not. A consumer that fails a change that cannot be refused (a release)
//! leaves its mirror out of step with the table: the stream notes it
//! ([`Stream::out_of_step`]), for the table's owner to re-synchronise that mirror from the
//! table.

pub(crate) mod enforce;
pub(crate) mod error;
pub(crate) mod hold;
pub(crate) mod journal;
pub mod kernel;
pub(crate) mod owner_watch;
pub(crate) mod store_thread;

use std::sync::atomic::{AtomicBool, Ordering};

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

    /// Takes the changes of one batch (those published together: the two halves of a pair,
    /// a session's releases), each acknowledgement handed to `ack` with the change's index.
    /// Same rules as [`Consumer::accept`]; a consumer may record a batch at once (the
    /// journal: one write). The default: [`Consumer::accept`] each, in order.
    fn accept_batch(&self, batch: Batch<'_>, ack: &mut dyn FnMut(usize, Ack)) {
        for (i, change) in batch {
            ack(i, self.accept(change));
        }
    }

    /// Brings the mirror back in step with `table` (after a change it failed, and now and then
    /// in case): what the table has and the mirror lacks is added, what the mirror has and
    /// the table does not is taken out. Called under the table lock, so in order with
    /// [`Consumer::accept`]: only short, non-blocking work (a diff in memory and a few
    /// one-`write` records, or waking a thread of the consumer's own). The default: nothing
    /// to re-synchronise.
    fn resync(&self, table: &berth_core::Table) -> Result<(), MirrorError> {
        let _ = table;
        Ok(())
    }
}

/// The changes of a batch meant for one consumer, with their indices in the batch: all but
/// those that skip it (an undo is not sent to a consumer that never applied the change).
pub(crate) struct Batch<'a> {
    changes: std::iter::Enumerate<std::slice::Iter<'a, (Change, Vec<usize>)>>,
    consumer: usize,
}

impl<'a> Iterator for Batch<'a> {
    type Item = (usize, &'a Change);

    fn next(&mut self) -> Option<Self::Item> {
        self.changes
            .by_ref()
            .find(|(_, (_, skip))| !skip.contains(&self.consumer))
            .map(|(i, (change, _))| (i, change))
    }
}

/// The consumers, in the order they see each change.
pub(crate) struct Stream {
    consumers: Vec<Box<dyn Consumer>>,
    /// A consumer failed a change that cannot be refused: its mirror needs re-synchronising.
    out_of_step: AtomicBool,
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

/// Changes to undo, with why: every refusable change of a batch a consumer refused.
pub(crate) struct Undo {
    /// The changes to undo, in table order, each with the consumers that did not apply it
    /// (their indices): its undo is not sent to them.
    pub(crate) changes: Vec<(Change, Vec<usize>)>,
    /// The first refusal: "the database: disk full".
    pub(crate) refused: Refused,
}

impl Stream {
    pub(crate) fn new(consumers: Vec<Box<dyn Consumer>>) -> Self {
        Stream {
            consumers,
            out_of_step: AtomicBool::new(false),
        }
    }

    /// Hands `changes` to every consumer, as one batch. Call with the table locked.
    pub(crate) fn publish(&self, changes: Vec<Change>) -> Pending {
        self.publish_each(changes.into_iter().map(|c| (c, Vec::new())).collect())
    }

    /// [`Stream::publish`], each change skipping the consumers listed with it (an undo is not
    /// sent to a consumer that never applied the change it undoes).
    pub(crate) fn publish_each(&self, changes: Vec<(Change, Vec<usize>)>) -> Pending {
        let mut waiting = Vec::new();
        // Consumer by consumer, each seeing the batch in the table's order.
        for (c, consumer) in self.consumers.iter().enumerate() {
            let batch = Batch {
                changes: changes.iter().enumerate(),
                consumer: c,
            };
            consumer.accept_batch(batch, &mut |i, ack| {
                let rx = match ack {
                    Ack::Done => return,
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
            });
        }
        let changes = changes.into_iter().map(|(c, _)| c).collect();
        Pending { changes, waiting }
    }

    fn name(&self, consumer: usize) -> &'static str {
        self.consumers.get(consumer).map_or("?", |c| c.name())
    }

    /// Whether a consumer failed a change that cannot be refused since the last call (the
    /// flag is cleared): then a mirror is out of step with the table.
    pub(crate) fn out_of_step(&self) -> bool {
        self.out_of_step.swap(false, Ordering::AcqRel)
    }

    /// Re-synchronises every consumer's mirror from `table` (locked by the caller); the
    /// failures, by consumer name. A failure marks the stream out of step again.
    pub(crate) fn resync(&self, table: &berth_core::Table) -> Vec<(&'static str, MirrorError)> {
        let failed: Vec<_> = self
            .consumers
            .iter()
            .filter_map(|c| c.resync(table).err().map(|e| (c.name(), e)))
            .collect();
        if !failed.is_empty() {
            self.out_of_step.store(true, Ordering::Release);
        }
        failed
    }
}

impl Pending {
    /// Waits for every acknowledgement. `Err` when a refusable change was refused: then every
    /// refusable change of the batch is to be undone (see "Transactions"). A failed change that
    /// cannot be refused is logged, and marks the stream out of step.
    pub(crate) async fn acknowledged(self, stream: &Stream) -> Result<(), Undo> {
        let mut refused: Option<Refused> = None;
        // Per change: the consumers that failed it without applying it.
        let mut unapplied: Vec<Vec<usize>> = vec![Vec::new(); self.changes.len()];
        for w in self.waiting {
            let answer = w.rx.await.unwrap_or(Err(MirrorError::Stopped));
            let Err(why) = answer else { continue };
            let name = stream.name(w.consumer);
            let Some(change) = self.changes.get(w.change) else {
                continue;
            };
            if !why.applied() {
                if let Some(skip) = unapplied.get_mut(w.change) {
                    skip.push(w.consumer);
                }
            }
            if !change.refusable() {
                tracing::warn!("{name} could not follow a change ({why}): {change:?}");
                stream.out_of_step.store(true, Ordering::Release);
                continue;
            }
            refused.get_or_insert(Refused {
                consumer: name,
                cause: why,
            });
        }
        let Some(refused) = refused else {
            return Ok(());
        };
        let changes = self
            .changes
            .into_iter()
            .zip(unapplied)
            .filter(|(change, _)| change.refusable())
            .collect();
        Err(Undo { changes, refused })
    }
}
