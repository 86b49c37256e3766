//! Process descriptors (`pidfd_open(2)`): a process that exits makes its pidfd readable, so a
//! task can wait for the exit of a process that is not its child.
//!
//! Many exits are watched through one epoll instance ([`Exits`]), itself registered with
//! tokio's reactor once. A registration with the reactor of its own costs each pidfd a few
//! hundred bytes, and the wait for it as much again in the waiting task: a daemon that watches
//! the owner of each of a thousand connections would pay that a thousand times. Here a watch
//! costs its pidfd, an entry in the set and a one-shot channel.

#![expect(
    unsafe_code,
    reason = "tokio's AsyncFd registration is unsafe since tokio 1.5x"
)]

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::event::epoll;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

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

/// A number that names the process `pidfd` refers to, and no other, until the system stops:
/// the pidfd's inode number where pidfds live in pidfs (Linux 6.9 and later, 64-bit), which
/// gives each process its own and never reuses one — unlike its pid. Two pidfds of one process
/// share it. `None` on older kernels, whose pidfds all share one anonymous inode.
pub fn process_key(pidfd: impl AsFd) -> Option<u64> {
    /// `PIDFS_MAGIC` (include/uapi/linux/magic.h): the file system of pidfds since 6.9.
    const PIDFS_MAGIC: u64 = 0x5049_4446;
    /// Whether pidfds live in pidfs: asked once, of the first pidfd seen (a kernel does not
    /// change its mind).
    static PIDFS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let pidfd = pidfd.as_fd();
    let pidfs = *PIDFS.get_or_init(|| {
        rustix::fs::fstatfs(pidfd)
            .is_ok_and(|fs| u64::try_from(fs.f_type).ok() == Some(PIDFS_MAGIC))
    });
    if !pidfs || usize::BITS < 64 {
        return None;
    }
    rustix::fs::fstat(pidfd).ok().map(|st| st.st_ino)
}

impl From<OwnedFd> for PidFd {
    /// A pidfd the kernel gave otherwise (`SO_PEERPIDFD`, `SCM_PIDFD`).
    fn from(fd: OwnedFd) -> Self {
        PidFd(fd)
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// How many exits one `epoll_wait` takes at most (more are taken by the next).
const EXITS_AT_ONCE: usize = 64;

/// Processes whose exits are watched, through one epoll instance (see the module's text).
/// [`Exits::run`] must be running for exits to be seen.
#[derive(Debug)]
pub struct Exits {
    epoll: AsyncFd<OwnedFd>,
    waiting: Mutex<Waiting>,
}

/// The watches not told yet, by key.
#[derive(Debug, Default)]
struct Waiting {
    next: u64,
    told: HashMap<u64, oneshot::Sender<()>>,
}

impl Exits {
    /// A new, empty set. Call within a tokio runtime.
    pub fn new() -> io::Result<Arc<Exits>> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        // SAFETY: the AsyncFd takes ownership of the epoll descriptor, valid and open; nothing
        // else holds, replaces or closes it while it is registered (it was made here and moved
        // in).
        let epoll = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Arc::new(Exits {
            epoll,
            waiting: Mutex::new(Waiting::default()),
        }))
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches the exit of the process `pidfd` names, until the watch is dropped.
    pub fn watch(self: &Arc<Self>, pidfd: PidFd) -> io::Result<ExitWatch> {
        let (tell, told) = oneshot::channel();
        let key = {
            let mut waiting = self.waiting();
            let key = waiting.next;
            waiting.next += 1;
            waiting.told.insert(key, tell);
            key
        };
        // One-shot: an exited process's pidfd stays readable, and is reported once.
        let added = epoll::add(
            self.epoll.get_ref(),
            &pidfd.0,
            epoll::EventData::new_u64(key),
            epoll::EventFlags::IN | epoll::EventFlags::ONESHOT,
        );
        if let Err(e) = added {
            self.waiting().told.remove(&key);
            return Err(e.into());
        }
        Ok(ExitWatch {
            exits: Arc::clone(self),
            key,
            pidfd: pidfd.0,
            told,
            exited: false,
        })
    }

    /// Tells each watch whose process exited, for as long as it runs; returns only if the
    /// reactor or `epoll_wait` fails (the watches then wait for ever).
    pub async fn run(&self) -> io::Result<()> {
        let now = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            let mut ready = self.epoll.readable().await?;
            // Made after the wait, not kept across it: an event is not `Send` (its data may be
            // a pointer), and the task may move between threads at an await.
            let mut events: Vec<epoll::Event> = Vec::with_capacity(EXITS_AT_ONCE);
            loop {
                events.clear();
                epoll::wait(
                    self.epoll.get_ref(),
                    rustix::buffer::spare_capacity(&mut events),
                    Some(&now),
                )?;
                if events.is_empty() {
                    break;
                }
                let mut waiting = self.waiting();
                for event in &events {
                    if let Some(tell) = waiting.told.remove(&event.data.u64()) {
                        // A watch dropped meanwhile no longer listens.
                        let _ = tell.send(());
                    }
                }
            }
            drop(events);
            // Readiness that came after the guard was taken is kept (tokio's rule).
            ready.clear_ready();
        }
    }
}

/// One process's exit, watched in an [`Exits`] set until dropped.
#[derive(Debug)]
pub struct ExitWatch {
    exits: Arc<Exits>,
    key: u64,
    pidfd: OwnedFd,
    told: oneshot::Receiver<()>,
    /// Whether the exit was seen (a one-shot receiver must not be awaited again after).
    exited: bool,
}

impl ExitWatch {
    /// Resolves once the process has exited (a zombie counts), at once when it was seen
    /// before; never if the set's [`Exits::run`] has ended.
    pub async fn exited(&mut self) {
        if self.exited {
            return;
        }
        match (&mut self.told).await {
            Ok(()) => self.exited = true,
            Err(_) => std::future::pending::<()>().await,
        }
    }
}

impl AsFd for ExitWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        // Closing the pidfd would take it out of the set as well (nothing duplicates it); said
        // here, so that the set never depends on that.
        let _ = epoll::delete(self.exits.epoll.get_ref(), &self.pidfd);
        self.exits.waiting().told.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set whose `run` goes on in a task of the test's runtime.
    fn running_exits() -> Arc<Exits> {
        let exits = Exits::new().unwrap();
        tokio::spawn({
            let exits = exits.clone();
            async move { exits.run().await }
        });
        exits
    }

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap()
    }

    /// Where pidfds are pidfs (this kernel and any since 6.9), two pidfds of one process share
    /// a key and another process has another; elsewhere there is none.
    #[test]
    fn a_process_key_names_one_process() {
        let mine = PidFd::open(std::process::id()).unwrap().unwrap();
        let again = PidFd::open(std::process::id()).unwrap().unwrap();
        let mut child = sleeper();
        let theirs = PidFd::open(child.id()).unwrap().unwrap();
        let pidfs = rustix::fs::fstatfs(&mine).unwrap().f_type == 0x5049_4446;
        if pidfs {
            let key = process_key(&mine).expect("a key on pidfs");
            assert_eq!(process_key(&again), Some(key));
            assert_ne!(process_key(&theirs), Some(key));
            assert!(process_key(&theirs).is_some());
        } else {
            assert_eq!(process_key(&mine), None);
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn the_exit_of_a_process_is_seen() {
        let exits = running_exits();
        let mut child = sleeper();
        let mut exit = exits
            .watch(PidFd::open(child.id()).unwrap().unwrap())
            .unwrap();
        child.kill().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), exit.exited())
            .await
            .expect("the exit is seen");
        // Asked again (a caller that waits in a loop), it answers at once.
        exit.exited().await;
        child.wait().unwrap();
        assert!(PidFd::open(0).is_err());
    }

    #[tokio::test]
    async fn each_watch_is_told_of_its_own_process_only() {
        let exits = running_exits();
        let mut children: Vec<_> = (0..3).map(|_| sleeper()).collect();
        let mut watches: Vec<_> = children
            .iter()
            .map(|c| exits.watch(PidFd::open(c.id()).unwrap().unwrap()).unwrap())
            .collect();
        // A dropped watch leaves the set: its process's exit reaches nobody.
        drop(watches.remove(0));
        children[0].kill().unwrap();
        children[2].kill().unwrap();
        let deadline = std::time::Duration::from_secs(10);
        tokio::time::timeout(deadline, watches[1].exited())
            .await
            .expect("the third child's exit is seen");
        assert_eq!(
            exits.waiting().told.len(),
            1,
            "only the second child is still watched"
        );
        assert!(
            matches!(
                watches[0].told.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            ),
            "the second child still runs"
        );
        children[1].kill().unwrap();
        tokio::time::timeout(deadline, watches[0].exited())
            .await
            .expect("the second child's exit is seen");
        drop(watches);
        assert!(exits.waiting().told.is_empty());
        for mut child in children {
            child.wait().unwrap();
        }
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
