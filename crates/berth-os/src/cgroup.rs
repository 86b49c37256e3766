//! Cgroup v2, as enforce mode's cgroup owners need it: where the hierarchy is mounted, putting
//! a process into a cgroup, whether a cgroup has processes (`cgroup.events`, `populated`), and
//! watching for the kernel's changes of `cgroup.events` — many cgroups through one inotify
//! instance ([`Watches`]).

#![expect(
    unsafe_code,
    reason = "tokio's AsyncFd registration is unsafe since tokio 1.5x"
)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;

/// Where a cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo` (the first one).
pub fn mount_point() -> io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    mount_point_in(&info).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)",
        )
    })
}

/// Where the cgroup v2 hierarchy holding `dir` is mounted: the deepest `cgroup2` mount point
/// that `dir` lies below (the hierarchy may be mounted more than once).
pub fn mount_containing(dir: &Path) -> io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    mount_points_in(&info)
        .filter(|mount| dir.starts_with(mount))
        .max_by_key(|mount| mount.components().count())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not in a cgroup v2 hierarchy", dir.display()),
            )
        })
}

/// The mount point of the first `cgroup2` line of a mountinfo text.
fn mount_point_in(mountinfo: &str) -> Option<PathBuf> {
    mount_points_in(mountinfo).next()
}

/// The mount points of the `cgroup2` lines of a mountinfo text, in order.
fn mount_points_in(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo.lines().filter_map(|line| {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER"
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// Moves process `pid` (every thread of it) into the cgroup at `cgroup`.
pub fn add_process(cgroup: &Path, pid: u32) -> io::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
}

/// Whether the cgroup at `cgroup`, or any cgroup below it, has a process.
pub fn populated(cgroup: &Path) -> io::Result<bool> {
    let events = std::fs::read_to_string(cgroup.join("cgroup.events"))?;
    events
        .lines()
        .find_map(|line| line.strip_prefix("populated "))
        .map(|value| value.trim() == "1")
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}/cgroup.events has no populated line", cgroup.display()),
            )
        })
}

/// Many cgroups watched through one inotify instance (an instance per cgroup would spend the
/// host's per-user instance limit, `fs.inotify.max_user_instances`, 128 by default): the
/// kernel modifies a cgroup's `cgroup.events` when its `populated` line changes.
pub struct Watches {
    fd: AsyncFd<OwnedFd>,
}

impl Watches {
    /// A new, empty set. Call within a tokio runtime.
    pub fn new() -> io::Result<Watches> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        Ok(Watches { fd: register(fd)? })
    }

    /// Watches the cgroup at `cgroup`; returns the watch's number, which [`Watches::changed`]
    /// reports. Look at [`populated`] after this call: a change before it is not reported.
    pub fn watch(&self, cgroup: &Path) -> io::Result<i32> {
        Ok(inotify::add_watch(
            self.fd.get_ref(),
            cgroup.join("cgroup.events"),
            inotify::WatchFlags::MODIFY,
        )?)
    }

    /// Stops watching `wd` (one already gone is fine).
    pub fn unwatch(&self, wd: i32) {
        let _ = inotify::remove_watch(self.fd.get_ref(), wd);
    }

    /// Waits for changes; returns the watches that changed (each once), the removed ones too.
    pub async fn changed(&self) -> io::Result<Vec<i32>> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        loop {
            let mut ready = self.fd.readable().await?;
            let mut reader = inotify::Reader::new(self.fd.get_ref(), &mut buf);
            let mut changed = Vec::new();
            loop {
                match reader.next() {
                    Ok(event) => {
                        if !changed.contains(&event.wd()) {
                            changed.push(event.wd());
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            ready.clear_ready();
            if !changed.is_empty() {
                return Ok(changed);
            }
        }
    }
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the inotify descriptor, valid and open; nothing
    // else holds, replaces or closes it while it is registered (it was made here and moved in).
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_among_others() {
        let info = "25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755\n\
                    26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                    27 25 0:24 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 none rw\n";
        assert_eq!(
            mount_point_in(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_point_in("1 2 0:1 / / rw - ext4 /dev/sda rw\n"), None);
        let twice = format!("{info}28 25 0:24 / /tmp/x rw - cgroup2 none rw\n");
        assert_eq!(
            mount_points_in(&twice).collect::<Vec<_>>(),
            [
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/tmp/x")
            ]
        );
    }
}
