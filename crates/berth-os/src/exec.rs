//! What a spawned process inherits: set up in the child between `fork` and `exec`.
//!
//! A descriptor inherited by accident keeps whatever it refers to alive for as long as the
//! child runs: a pipe its starter's caller waits on (`x=$(berth run … 7>&1)`), a socket. So a
//! child berth starts inherits its standard three and the descriptors named for it, nothing
//! else. Descriptors are marked close-on-exec rather than closed: std's own exec-error pipe
//! (close-on-exec already) must stay open until the exec.

#![expect(
    unsafe_code,
    reason = "pre_exec: the closure runs between fork and exec and only makes async-signal-safe syscalls"
)]

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The highest descriptor number marked one by one where `close_range(2)` is missing.
const MARK_AT_MOST: u64 = 1 << 20;

/// Makes the child a session of its own (`setsid(2)`): a Ctrl-C or a closed terminal meant for
/// its starter does not reach it.
pub fn new_session(command: &mut Command) {
    // SAFETY: setsid(2) is async-signal-safe; the closure allocates nothing and touches no
    // lock.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
}

/// Has the child inherit no descriptor from 3 up but `keep`: every one is marked close-on-exec
/// (`close_range(2)` with `CLOSE_RANGE_CLOEXEC`, or one by one before Linux 5.11), then the
/// mark is cleared on `keep`. The caller keeps the descriptors in `keep` open until the spawn
/// has returned; one that is not open fails the spawn.
pub fn inherit_only(command: &mut Command, keep: Vec<RawFd>) {
    // SAFETY: close_range(2), getrlimit(2) and fcntl(2) are async-signal-safe; the closure reads
    // the vector made before the fork, allocates nothing and takes no lock. fcntl(F_SETFD) on a
    // number changes at most a flag of whatever it refers to, open or not.
    unsafe {
        command.pre_exec(move || {
            let flags = libc::CLOSE_RANGE_CLOEXEC as libc::c_int;
            if libc::close_range(3, libc::c_uint::MAX, flags) != 0 {
                // Kernels before 5.11: one by one.
                let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                    .current
                    .unwrap_or(65_536)
                    .min(MARK_AT_MOST);
                for raw in 3..i32::try_from(limit).unwrap_or(65_536) {
                    libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            for &raw in &keep {
                if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Has the child inherit `fd` as descriptor number `number`, as systemd hands over its sockets
/// from 3 on: `dup2(2)` onto `number` (clearing close-on-exec there), or, when `fd` is
/// `number` already, its close-on-exec flag cleared (a `dup2` onto itself would leave it set).
/// Whatever the child had at `number` is replaced. The caller keeps `fd` open until the spawn
/// has returned; one that is not open fails the spawn. Only berth's tests need it (feature
/// `testing`).
#[cfg(feature = "testing")]
pub fn inherit_at(command: &mut Command, fd: RawFd, number: RawFd) {
    // SAFETY: dup2(2) and fcntl(2) are async-signal-safe; the closure captures two integers,
    // allocates nothing and takes no lock. On a number, either call changes at most the
    // descriptor table of the child, which runs no Rust code of ours after the exec.
    unsafe {
        command.pre_exec(move || {
            let rc = if fd == number {
                libc::fcntl(number, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, number)
            };
            if rc == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts the child with `RLIMIT_NOFILE` set to `limit` (soft and hard): a daemon that runs
/// out of descriptors without exhausting its caller's. Only berth's tests need it (feature
/// `testing`).
#[cfg(feature = "testing")]
pub fn limit_open_files(command: &mut Command, limit: u64) {
    let limit = rustix::process::Rlimit {
        current: Some(limit),
        maximum: Some(limit),
    };
    // SAFETY: setrlimit(2) is async-signal-safe; the closure captures a plain value, allocates
    // nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                .map_err(io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The descriptors a shell child sees open, from 3 up.
    fn open_in_child(command: &mut Command) -> Vec<RawFd> {
        let out = command.args(["-c", "ls /proc/self/fd"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .filter(|&fd| fd >= 3)
            .collect()
    }

    #[test]
    fn only_the_named_descriptors_are_inherited() {
        let (keep, _keep_w) = rustix::pipe::pipe().unwrap();
        // Inheritable, as a descriptor of a caller that forgot close-on-exec would be — at a
        // high number, which the child's own tools (its listing of /proc/self/fd) never take.
        let (low, _stray_w) = rustix::pipe::pipe().unwrap();
        let stray = rustix::io::fcntl_dupfd_cloexec(&low, 500).unwrap();
        rustix::io::fcntl_setfd(&stray, rustix::io::FdFlags::empty()).unwrap();
        let mut command = Command::new("sh");
        new_session(&mut command);
        inherit_only(&mut command, vec![keep.as_raw_fd()]);
        let open = open_in_child(&mut command);
        assert!(open.contains(&keep.as_raw_fd()), "{open:?}");
        assert!(!open.contains(&stray.as_raw_fd()), "{open:?}");
    }

    #[test]
    fn a_descriptor_is_inherited_at_the_number_asked_for() {
        let (rd, _wr) = rustix::pipe::pipe().unwrap();
        let mut command = Command::new("sh");
        inherit_at(&mut command, rd.as_raw_fd(), 7);
        let open = open_in_child(&mut command);
        assert!(open.contains(&7), "{open:?}");
        // A descriptor at that number already (close-on-exec, as ours are) is inherited too;
        // the lowest free number from 7 on is 7 unless another test holds it meanwhile.
        let seven = rustix::io::fcntl_dupfd_cloexec(&rd, 7).unwrap();
        if seven.as_raw_fd() == 7 {
            let mut command = Command::new("sh");
            inherit_at(&mut command, 7, 7);
            assert!(open_in_child(&mut command).contains(&7));
        }
    }

    #[test]
    fn a_child_starts_with_the_open_file_limit_asked_for() {
        let out = {
            let mut command = Command::new("sh");
            limit_open_files(&mut command, 200);
            command
                .args(["-c", "ulimit -n; ulimit -Hn"])
                .output()
                .unwrap()
        };
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "200\n200\n");
    }
}
