//! Work left for the end of the process: `atexit(3)`. Only berth's tests need it (feature
//! `testing`): berth-testkit prints its summary of skipped tests after libtest's last line.

#![expect(
    unsafe_code,
    reason = "atexit(3) has no safe wrapper in libc or rustix"
)]

use std::io;

/// Has `handler` called when the process ends through `exit(3)` (a return from `main`
/// included; not a signal, `_exit` or an abort), after the handlers registered later. It runs
/// once `main` has returned, so it must not count on anything torn down by then; a panic in it
/// cannot unwind out of an `extern "C" fn` and aborts the process.
pub fn register(handler: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `handler` is a function, valid for the whole life of the process, with the
    // C calling convention atexit expects; it cannot unwind into libc (a panic in an
    // `extern "C" fn` aborts).
    let rc = unsafe { libc::atexit(handler) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other("atexit: no room for another handler"))
    }
}
