//! Why a consumer of the change stream could not follow a change, decided where it is known.
//!
//! The answers travel through oneshots, and kernel sync hands one write's result to every
//! waiter, so each type is `Clone`: sources that are not (`io::Error`, `StoreError`) are shared
//! through an `Arc`. Each message reads as it did when these were strings; a variant whose
//! message is its source's has it `transparent`.

use std::io;
use std::sync::Arc;

use berth_store::StoreError;
use thiserror::Error;

/// Why a write to the daemon's database or runtime journal failed.
#[derive(Debug, Clone, Error)]
pub(crate) enum WriteError {
    /// The store's fault switch is on (tests): the write was not tried.
    #[error("the database was made to fail (test fault injection)")]
    Faulty,
    /// The runtime journal's `write(2)`, or rewrite, failed.
    #[error(transparent)]
    Journal(Arc<StoreError>),
    /// The database's commit of a persistent row failed.
    #[error(transparent)]
    Database(Arc<StoreError>),
    /// The store thread has stopped: nothing more is written.
    #[error("the store thread is gone")]
    StoreGone,
}

/// Why a consumer could not follow a change.
#[derive(Debug, Clone, Error)]
pub(crate) enum MirrorError {
    /// The database or the runtime journal was not written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A held grant's ports could not all be held: its block was staged incomplete.
    #[error(
        "the daemon could not hold all {count} ports (out of file descriptors? see `berth status`)"
    )]
    NotHeld {
        /// The block's ports.
        count: u16,
        /// The first port that could not be held, and why (`None`: no bind was tried, the
        /// room kept to receive descriptors would have been taken).
        port: Option<u16>,
        /// What its bind answered.
        #[source]
        source: Option<Arc<io::Error>>,
    },
    /// Reading the kernel's reserved-ports list failed.
    #[error("reading it failed: {0}")]
    KernelRead(#[source] Arc<io::Error>),
    /// Recording in the runtime journal what the daemon is about to list failed (so nothing
    /// was listed).
    #[error("recording it in the runtime journal failed: {0}")]
    KernelRecord(#[source] WriteError),
    /// Writing the kernel's reserved-ports list failed.
    #[error("writing it failed: {0}")]
    KernelWrite(#[source] Arc<io::Error>),
    /// The consumer stopped (its thread ended) before answering.
    #[error("it stopped before answering")]
    Stopped,
}

impl MirrorError {
    /// A failed read of the kernel's list.
    pub(crate) fn kernel_read(e: io::Error) -> Self {
        MirrorError::KernelRead(Arc::new(e))
    }

    /// A failed write of the kernel's list.
    pub(crate) fn kernel_write(e: io::Error) -> Self {
        MirrorError::KernelWrite(Arc::new(e))
    }
}

/// A refusable change a consumer failed: which consumer, and why. Reads "the database: disk
/// full", which the request handlers put in the client's `unavailable` answer.
#[derive(Debug, Clone, Error)]
#[error("{consumer}: {cause}")]
pub(crate) struct Refused {
    /// The consumer's name ("the database", "the hold sockets", …).
    pub(crate) consumer: &'static str,
    /// Why it failed the change.
    #[source]
    pub(crate) cause: MirrorError,
}
