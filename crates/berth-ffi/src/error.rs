//! The failure every export reports: its kind, the kind's errno (`docs/associate.md`) and a
//! message, kept per thread.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, CString};

use berth_core::ErrorKind;

use crate::berth_error_kind;

/// Why a call failed: the kind `berth_last_error_kind` returns (which decides the errno the
/// caller sees) and the message `berth_last_error_message` returns.
#[derive(Debug)]
pub(crate) struct Failure {
    kind: berth_error_kind,
    message: String,
}

impl Failure {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure {
            kind: kind_of(kind),
            message: message.into(),
        }
    }

    /// An invalid-argument failure (EINVAL), for bad arguments found before any daemon call.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure::new(ErrorKind::InvalidArgument, message)
    }

    /// A failure of libberth itself (a panic caught at the boundary): EIO, which no error kind
    /// of berth has, so that a caller never mistakes a bug for an answer of the daemon.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Failure {
            kind: berth_error_kind::Internal,
            message: message.into(),
        }
    }

    /// The errno reported for this failure.
    pub(crate) fn errno(&self) -> c_int {
        errno_of(self.kind)
    }

    /// The kind reported for this failure.
    #[cfg(test)]
    pub(crate) fn kind(&self) -> berth_error_kind {
        self.kind
    }

    /// The message reported for this failure.
    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl From<berth::Error> for Failure {
    fn from(e: berth::Error) -> Self {
        Failure::new(e.kind(), e.message())
    }
}

impl From<berth_core::RangeError> for Failure {
    fn from(e: berth_core::RangeError) -> Self {
        Failure::new(e.kind(), e.to_string())
    }
}

/// The C value of an error kind.
fn kind_of(kind: ErrorKind) -> berth_error_kind {
    match kind {
        ErrorKind::InvalidArgument => berth_error_kind::InvalidArgument,
        ErrorKind::NotSupported => berth_error_kind::NotSupported,
        ErrorKind::Conflict => berth_error_kind::Conflict,
        ErrorKind::PoolExhausted => berth_error_kind::PoolExhausted,
        ErrorKind::ReservationFull => berth_error_kind::ReservationFull,
        ErrorKind::NotFound => berth_error_kind::NotFound,
        ErrorKind::PermissionDenied => berth_error_kind::PermissionDenied,
        ErrorKind::QuotaExceeded => berth_error_kind::QuotaExceeded,
        ErrorKind::Unavailable => berth_error_kind::Unavailable,
        ErrorKind::Incompatible => berth_error_kind::Incompatible,
        // `ErrorKind` may grow (it is non_exhaustive); a kind this library does not know yet
        // is not one a caller could test for. The unit test below maps every kind there is,
        // so a new one fails it until it has its own value.
        _ => berth_error_kind::Internal,
    }
}

/// The errno a failure of `kind` sets.
fn errno_of(kind: berth_error_kind) -> c_int {
    let core = match kind {
        // Never reported as a failure; 0 is what errno would say.
        berth_error_kind::None => return 0,
        berth_error_kind::Internal => return libc::EIO,
        berth_error_kind::InvalidArgument => ErrorKind::InvalidArgument,
        berth_error_kind::NotSupported => ErrorKind::NotSupported,
        berth_error_kind::Conflict => ErrorKind::Conflict,
        berth_error_kind::PoolExhausted => ErrorKind::PoolExhausted,
        berth_error_kind::ReservationFull => ErrorKind::ReservationFull,
        berth_error_kind::NotFound => ErrorKind::NotFound,
        berth_error_kind::PermissionDenied => ErrorKind::PermissionDenied,
        berth_error_kind::QuotaExceeded => ErrorKind::QuotaExceeded,
        berth_error_kind::Unavailable => ErrorKind::Unavailable,
        berth_error_kind::Incompatible => ErrorKind::Incompatible,
    };
    core.errno()
}

thread_local! {
    /// This thread's last error message; empty after a success.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    /// This thread's last error kind; `None` after a success. Kept beside the message, and
    /// set and cleared with it, so that the two always describe the same call.
    static LAST_KIND: Cell<berth_error_kind> = const { Cell::new(berth_error_kind::None) };
}

/// Records `failure` as this thread's last error and sets `errno` (last, so nothing done on
/// the way can change it).
pub(crate) fn report(failure: Failure) {
    let errno = failure.errno();
    let text = failure.message.replace('\0', "\u{fffd}");
    let text = CString::new(text).unwrap_or_default();
    // During thread teardown the slots may be gone; errno still tells the caller.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
    let _ = LAST_KIND.try_with(|slot| slot.set(failure.kind));
    set_errno(errno);
}

/// Clears this thread's last error message and kind after a success. `errno` is left alone,
/// as C functions do on success.
pub(crate) fn clear() {
    let _ = LAST_ERROR.try_with(|slot| {
        let mut slot = slot.borrow_mut();
        if !slot.as_bytes().is_empty() {
            *slot = CString::default();
        }
    });
    let _ = LAST_KIND.try_with(|slot| slot.set(berth_error_kind::None));
}

/// This thread's last error kind.
pub(crate) fn last_kind() -> berth_error_kind {
    LAST_KIND
        .try_with(Cell::get)
        .unwrap_or(berth_error_kind::None)
}

/// This thread's last error message, valid until the next libberth call on this thread.
pub(crate) fn last_message() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

fn set_errno(code: c_int) {
    // SAFETY: `__errno_location` returns a valid, aligned pointer to the calling thread's
    // errno, which lives as long as the thread; writing an int there is what C's `errno = x`
    // does.
    unsafe { *libc::__errno_location() = code };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: `last_message` returns a pointer to this thread's NUL-terminated message.
        unsafe { CStr::from_ptr(last_message()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_failure_sets_errno_the_kind_and_the_message_and_a_success_clears_them() {
        assert_eq!(
            (last(), last_kind()),
            (String::new(), berth_error_kind::None)
        );
        report(Failure::new(ErrorKind::NotFound, "no such reservation"));
        assert_eq!(last(), "no such reservation");
        assert_eq!(last_kind(), berth_error_kind::NotFound);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOENT)
        );
        clear();
        assert_eq!(
            (last(), last_kind()),
            (String::new(), berth_error_kind::None)
        );
    }

    #[test]
    fn every_kind_has_a_value_of_its_own_with_its_errno() {
        let mut seen = Vec::new();
        for kind in ErrorKind::ALL {
            let value = kind_of(kind);
            assert!(
                !matches!(value, berth_error_kind::None | berth_error_kind::Internal),
                "{kind:?} has no berth_error_kind of its own"
            );
            assert!(!seen.contains(&value), "{kind:?} shares {value:?}");
            seen.push(value);
            assert_eq!(errno_of(value), kind.errno(), "{kind:?}");
        }
        // Conflict and reservation-full share EADDRINUSE: the kind is what tells them apart.
        assert_eq!(
            errno_of(berth_error_kind::Conflict),
            errno_of(berth_error_kind::ReservationFull)
        );
        assert_eq!(errno_of(berth_error_kind::Internal), libc::EIO);
    }

    #[test]
    fn the_c_values_are_the_documented_numbers() {
        // berth.h and docs/associate.md give these numbers; a C program may store them.
        let values = [
            (berth_error_kind::None, 0),
            (berth_error_kind::InvalidArgument, 1),
            (berth_error_kind::NotSupported, 2),
            (berth_error_kind::Conflict, 3),
            (berth_error_kind::PoolExhausted, 4),
            (berth_error_kind::ReservationFull, 5),
            (berth_error_kind::NotFound, 6),
            (berth_error_kind::PermissionDenied, 7),
            (berth_error_kind::QuotaExceeded, 8),
            (berth_error_kind::Unavailable, 9),
            (berth_error_kind::Incompatible, 10),
            (berth_error_kind::Internal, 11),
        ];
        for (kind, number) in values {
            assert_eq!(kind as i32, number, "{kind:?}");
        }
    }

    #[test]
    fn a_message_with_a_nul_byte_is_kept_whole() {
        report(Failure::invalid("a\0b"));
        assert_eq!(last(), "a\u{fffd}b");
    }

    #[test]
    fn client_errors_keep_their_errno() {
        let f = Failure::from(berth::Error::PoolExhausted("full".into()));
        assert_eq!((f.errno(), f.message()), (libc::EADDRNOTAVAIL, "full"));
        assert_eq!(f.kind(), berth_error_kind::PoolExhausted);
    }
}
