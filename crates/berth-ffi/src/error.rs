//! The failure every export reports: an errno (by kind, `docs/associate.md`) and a message, kept per thread.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};

/// Why a call failed: the errno the caller sees and the message
/// `berth_last_error_message` returns.
#[derive(Debug)]
pub(crate) struct Failure {
    errno: c_int,
    message: String,
}

impl Failure {
    pub(crate) fn new(errno: c_int, message: impl Into<String>) -> Self {
        Failure {
            errno,
            message: message.into(),
        }
    }

    /// An invalid-argument failure (EINVAL), for bad arguments found before any daemon call.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure::new(libc::EINVAL, message)
    }

    /// The errno reported for this failure.
    #[cfg(test)]
    pub(crate) fn errno(&self) -> c_int {
        self.errno
    }

    /// The message reported for this failure.
    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl From<berth::Error> for Failure {
    fn from(e: berth::Error) -> Self {
        Failure::new(e.errno(), e.message())
    }
}

impl From<berth_core::RangeError> for Failure {
    fn from(e: berth_core::RangeError) -> Self {
        Failure::new(e.kind().errno(), e.to_string())
    }
}

thread_local! {
    /// This thread's last error message; empty after a success.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `failure` as this thread's last error and sets `errno` (last, so nothing done on
/// the way can change it).
pub(crate) fn report(failure: Failure) {
    let text = failure.message.replace('\0', "\u{fffd}");
    let text = CString::new(text).unwrap_or_default();
    // During thread teardown the slot may be gone; errno still tells the caller.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
    set_errno(failure.errno);
}

/// Clears this thread's last error message after a success. `errno` is left alone, as C
/// functions do on success.
pub(crate) fn clear() {
    let _ = LAST_ERROR.try_with(|slot| {
        let mut slot = slot.borrow_mut();
        if !slot.as_bytes().is_empty() {
            *slot = CString::default();
        }
    });
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
    fn a_failure_sets_errno_and_the_message_and_a_success_clears_the_message() {
        assert_eq!(last(), "");
        report(Failure::new(libc::ENOENT, "no such reservation"));
        assert_eq!(last(), "no such reservation");
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOENT)
        );
        clear();
        assert_eq!(last(), "");
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
    }
}
