//! The boundary every export runs inside: a panic never unwinds into C. It becomes -1 with
//! `errno` EIO, the kind `BERTH_ERROR_KIND_INTERNAL` and a message, like any other failure.

use std::any::Any;
use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{self, Failure};

/// Runs `body` and turns its outcome into the C convention: 0 on success (the last error
/// message and kind cleared), -1 with `errno`, the kind and the message set on failure or
/// panic.
pub(crate) fn boundary(body: impl FnOnce() -> Result<(), Failure>) -> c_int {
    // AssertUnwindSafe: after a panic nothing `body` touched is used again except the
    // session's mutex, whose poisoning is ignored on purpose (see `session`).
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            error::clear();
            0
        }
        Ok(Err(failure)) => {
            error::report(failure);
            -1
        }
        Err(payload) => {
            error::report(Failure::internal(format!(
                "internal error in libberth: {}; please report it",
                describe(payload.as_ref())
            )));
            -1
        }
    }
}

/// Runs `body`, which has no failure of its own, and returns `fallback` if it panics.
pub(crate) fn boundary_or<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The panic's message, when it has one.
fn describe(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a panic without a message"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn a_panic_becomes_eio_with_a_message() {
        let rc = boundary(|| panic!("boom {}", 7));
        assert_eq!(rc, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EIO)
        );
        // SAFETY: `last_message` returns this thread's NUL-terminated message.
        let message = unsafe { CStr::from_ptr(error::last_message()) };
        assert_eq!(
            message.to_str().unwrap(),
            "internal error in libberth: boom 7; please report it"
        );
        assert_eq!(error::last_kind(), crate::berth_error_kind::Internal);
    }

    #[test]
    fn success_and_failure_follow_the_c_convention() {
        assert_eq!(boundary(|| Err(Failure::invalid("bad"))), -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINVAL)
        );
        assert_eq!(error::last_kind(), crate::berth_error_kind::InvalidArgument);
        assert_eq!(boundary(|| Ok(())), 0);
        assert_eq!(error::last_kind(), crate::berth_error_kind::None);
        // SAFETY: as above.
        assert_eq!(unsafe { CStr::from_ptr(error::last_message()) }, c"");
    }

    #[test]
    fn boundary_or_returns_the_fallback_on_panic() {
        assert_eq!(boundary_or(1, || panic!("x")), 1);
        assert_eq!(boundary_or(1, || 2), 2);
    }
}
