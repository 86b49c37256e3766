//! Process descriptors (`pidfd_open(2)`): a process that exits makes its pidfd readable, so a
//! task can wait for the exit of a process that is not its child.

#![expect(
    unsafe_code,
    reason = "tokio's AsyncFd registration is unsafe since tokio 1.5x"
)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// A non-blocking pidfd of one process.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// A pidfd for process `pid`; `Ok(None)` when no process has that pid (it has exited and
    /// been reaped). Pid 0 — a peer of another pid namespace, as the kernel names it — is an
    /// error: it names no process here.
    pub fn open(pid: u32) -> io::Result<Option<Self>> {
        let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return Err(io::Error::other(format!(
                "pid {pid} names no process in this pid namespace"
            )));
        };
        match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK) {
            Ok(fd) => Ok(Some(PidFd(fd))),
            Err(rustix::io::Errno::SRCH) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Registers the pidfd with tokio's reactor, to wait for the exit ([`Exit::exited`]). Call
    /// within a tokio runtime.
    pub fn watch(self) -> io::Result<Exit> {
        // SAFETY: the AsyncFd takes ownership of the pidfd, a valid open descriptor; nothing
        // else holds, replaces or closes it while it is registered (PidFd owns it alone and is
        // consumed here).
        unsafe { AsyncFd::register_with_interest(self.0, tokio::io::Interest::READABLE) }
            .map(Exit)
            .map_err(io::Error::from)
    }
}

/// Whether the process `pidfd` names has exited (its pidfd is readable; a zombie counts). Never
/// waits.
pub fn has_exited(pidfd: impl AsFd) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&pidfd.as_fd()),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll` is one valid pollfd, for a descriptor borrowed for the duration of the
    // call; a timeout of 0 never waits.
    let rc = unsafe { libc::poll(&mut poll, 1, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0 && poll.revents & libc::POLLIN != 0)
}

/// Whether the process `pidfd` names still holds its pid: it runs, or has exited and not been
/// reaped yet (a zombie). Once it is reaped, the pid may name another process — whatever
/// `/proc/PID` says then is not about this one. Asks with signal 0 (`pidfd_send_signal(2)`),
/// which delivers nothing; a process the caller may not signal is there all the same.
pub fn holds_its_pid(pidfd: impl AsFd) -> io::Result<bool> {
    // SAFETY: pidfd_send_signal with signal 0, no siginfo and no flags only checks; the
    // descriptor is borrowed for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd.as_fd()),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ESRCH) => Ok(false),
        Some(libc::EPERM) => Ok(true),
        _ => Err(e),
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A pidfd registered with tokio's reactor.
#[derive(Debug)]
pub struct Exit(AsyncFd<OwnedFd>);

impl Exit {
    /// Resolves once the process has exited (a zombie counts).
    pub async fn exited(&self) {
        // Readable means the process has exited; an error of the reactor ends the wait too.
        let _ = self.0.readable().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_exit_of_a_process_is_seen() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let exit = PidFd::open(child.id()).unwrap().unwrap().watch().unwrap();
        child.kill().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), exit.exited())
            .await
            .expect("the exit is seen");
        child.wait().unwrap();
        assert!(PidFd::open(0).is_err());
    }

    #[test]
    fn has_exited_tells_a_live_process_from_a_gone_one() {
        let me = PidFd::open(std::process::id()).unwrap().unwrap();
        assert!(!has_exited(&me).unwrap());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = PidFd::open(child.id()).unwrap().unwrap();
        child.wait().unwrap();
        assert!(has_exited(&fd).unwrap());
    }
}
