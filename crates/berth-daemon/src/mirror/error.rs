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
    /// Enforce mode's programs in the kernel could not take a cgroup's ports (their maps
    /// refused an entry, or the programs could not be attached).
    #[error("the kernel's enforcement could not take it: {0}")]
    Enforce(#[source] Arc<io::Error>),
    /// The consumer stopped (its thread ended) before answering.
    #[error("it stopped before answering")]
    Stopped,
}

impl MirrorError {
    /// Whether the consumer kept the change in its own books although it could not mirror it
    /// (then an undo must reach it): kernel sync counts a change's ports when it takes the
    /// change, before the write that fails; the journal and the hold sockets record nothing
    /// that failed. A consumer that stopped is treated as having applied it (an undo it does
    /// not need is harmless to it; one it needs and misses is not).
    pub(crate) fn applied(&self) -> bool {
        match self {
            MirrorError::KernelRead(_)
            | MirrorError::KernelRecord(_)
            | MirrorError::KernelWrite(_)
            | MirrorError::Stopped => true,
            MirrorError::Write(_) | MirrorError::NotHeld { .. } | MirrorError::Enforce(_) => false,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_the_strings_did() {
        let refused = |consumer, cause| Refused { consumer, cause }.to_string();
        assert_eq!(
            refused("the database", WriteError::Faulty.into()),
            "the database: the database was made to fail (test fault injection)"
        );
        assert_eq!(
            refused(
                "the hold sockets",
                MirrorError::NotHeld {
                    count: 3,
                    port: None,
                    source: None
                }
            ),
            "the hold sockets: the daemon could not hold all 3 ports (out of file descriptors? see `berth status`)"
        );
        assert_eq!(
            MirrorError::KernelRecord(WriteError::Faulty).to_string(),
            "recording it in the runtime journal failed: the database was made to fail (test fault injection)"
        );
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(
            MirrorError::kernel_write(io::Error::from(io::ErrorKind::PermissionDenied)).to_string(),
            format!("writing it failed: {denied}")
        );
        assert_eq!(
            MirrorError::Stopped.to_string(),
            "it stopped before answering"
        );
    }

    #[test]
    fn a_cause_keeps_its_source() {
        use std::error::Error as _;
        let held = MirrorError::NotHeld {
            count: 2,
            port: Some(40000),
            source: Some(Arc::new(io::Error::from_raw_os_error(libc::EMFILE))),
        };
        let refused = Refused {
            consumer: "the hold sockets",
            cause: held,
        };
        let source = refused.source().and_then(|cause| cause.source());
        assert!(source.is_some_and(|s| s.to_string().contains("Too many open files")));
    }
}
