//! The client's error type.

use berth_core::ErrorKind;
use berth_protocol::WireError;
use thiserror::Error;

/// Everything a berth call can fail with. Each variant is one of the error kinds (`docs/associate.md`
/// lists them with their errnos) and carries the daemon's message, which names the ports and holders involved and says what
/// to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad count, range or token.
    #[error("{0}")]
    InvalidArgument(String),
    /// The socket does not suit the reservation.
    #[error("{0}")]
    NotSupported(String),
    /// The ports are reserved already or in use.
    #[error("{0}")]
    Conflict(String),
    /// The pool has no free block that large.
    #[error("{0}")]
    PoolExhausted(String),
    /// Every port of the reservation is bound.
    #[error("{0}")]
    ReservationFull(String),
    /// No such reservation.
    #[error("{0}")]
    NotFound(String),
    /// Not the owner, nor an administrator.
    #[error("{0}")]
    PermissionDenied(String),
    /// The user's quota is used up.
    #[error("{0}")]
    QuotaExceeded(String),
    /// No daemon answers.
    #[error("{0}")]
    Unavailable(String),
    /// Client and daemon share no protocol version, or the daemon's answer made no sense.
    #[error("{0}")]
    Incompatible(String),
}

impl Error {
    /// The error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotSupported(_) => ErrorKind::NotSupported,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::PoolExhausted(_) => ErrorKind::PoolExhausted,
            Error::ReservationFull(_) => ErrorKind::ReservationFull,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::QuotaExceeded(_) => ErrorKind::QuotaExceeded,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Incompatible(_) => ErrorKind::Incompatible,
        }
    }

    /// The errno the C ABI reports for this error.
    pub fn errno(&self) -> i32 {
        self.kind().errno()
    }

    /// The message alone.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidArgument(m)
            | Error::NotSupported(m)
            | Error::Conflict(m)
            | Error::PoolExhausted(m)
            | Error::ReservationFull(m)
            | Error::NotFound(m)
            | Error::PermissionDenied(m)
            | Error::QuotaExceeded(m)
            | Error::Unavailable(m)
            | Error::Incompatible(m) => m,
        }
    }

    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: String) -> Self {
        match kind {
            ErrorKind::InvalidArgument => Error::InvalidArgument(message),
            ErrorKind::NotSupported => Error::NotSupported(message),
            ErrorKind::Conflict => Error::Conflict(message),
            ErrorKind::PoolExhausted => Error::PoolExhausted(message),
            ErrorKind::ReservationFull => Error::ReservationFull(message),
            ErrorKind::NotFound => Error::NotFound(message),
            ErrorKind::PermissionDenied => Error::PermissionDenied(message),
            ErrorKind::QuotaExceeded => Error::QuotaExceeded(message),
            ErrorKind::Unavailable => Error::Unavailable(message),
            // A kind from a newer daemon that this client does not know.
            _ => Error::Incompatible(message),
        }
    }

    /// The connection to the daemon broke.
    pub(crate) fn lost(detail: impl std::fmt::Display) -> Self {
        Error::Unavailable(format!(
            "the connection to the berth daemon was lost ({detail}); the request may not have been carried out — check `berth status` and retry"
        ))
    }

    /// The daemon answered something this client cannot use.
    pub(crate) fn unexpected(what: impl std::fmt::Debug) -> Self {
        Error::Incompatible(format!(
            "the daemon sent an unexpected answer ({what:?}); client and daemon are probably different berth releases"
        ))
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error::new(e.kind, e.message)
    }
}
