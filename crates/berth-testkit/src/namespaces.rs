//! Private namespaces for tests, as root or as an ordinary user.
//!
//! Tests that write `ip_local_reserved_ports`, bind privileged ports, or play a client in
//! another network namespace do it in namespaces of their own, never on the host. Root makes
//! them directly (`unshare --net`). An ordinary user makes them inside a user namespace of its
//! own where the kernel allows that (`unshare --map-root-user --net`): there it is root over its
//! network namespace, so it may write that namespace's sysctls; entering such a namespace later
//! takes entering its user namespace too (`nsenter --user … --net …`). Find out which with
//! [`super::needs::namespaces`].
//!
//! What a user namespace cannot give is other users: only the caller's own uid is mapped in
//! it (as root). Tests that need nobody as well need root ([`super::needs::users`]).

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use super::deadline::{wait_within, DEADLINE};
use super::needs::PYTHON3;

/// How a test makes private namespaces in which it is root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespaces {
    /// As root: `unshare` alone.
    Root,
    /// As an ordinary user: `unshare --map-root-user`, a user namespace of its own first.
    UserNamespace,
}

impl Namespaces {
    /// What works here, probed once per process: `None` when neither does (not root, and user
    /// namespaces are off or refused, as in some containers).
    pub fn here() -> Option<Namespaces> {
        static FOUND: OnceLock<Option<Namespaces>> = OnceLock::new();
        *FOUND.get_or_init(|| {
            if super::needs::runs("unshare", &["--net", "true"]) {
                Some(Namespaces::Root)
            } else if super::needs::runs("unshare", &["--map-root-user", "--net", "true"]) {
                Some(Namespaces::UserNamespace)
            } else {
                None
            }
        })
    }

    /// Whether the namespaces are made in a user namespace (the test is not really root).
    pub fn in_user_namespace(self) -> bool {
        self == Namespaces::UserNamespace
    }

    /// A command line prefix that runs the rest in new namespaces of the `kinds` given
    /// (`unshare` options such as `--net`, `--mount`, `--pid --fork --mount-proc`), as root
    /// there: `unshare [--map-root-user] KINDS… --`.
    pub fn unshare(self, kinds: &[&str]) -> Vec<String> {
        let mut args = vec!["unshare".to_owned()];
        if self.in_user_namespace() {
            args.push("--map-root-user".to_owned());
        }
        args.extend(kinds.iter().map(|&k| k.to_owned()));
        args.push("--".to_owned());
        args
    }

    /// A command line prefix that runs the rest in the network namespace of process `pid` (one
    /// made by [`Namespaces::unshare`]), as root there: `nsenter [--user …] --net … --`.
    /// nsenter does not fork for these namespaces: the pid of the command is the program's.
    pub fn enter_net(self, pid: u32) -> Vec<String> {
        let mut args = vec!["nsenter".to_owned()];
        if self.in_user_namespace() {
            // The user namespace first: joining its network namespace takes its privileges.
            // The credentials are kept (the caller's uid is root there): without the option
            // nsenter calls setgroups, which a user namespace of this kind refuses.
            args.push("--preserve-credentials".to_owned());
            args.push(format!("--user=/proc/{pid}/ns/user"));
        }
        args.push(format!("--net=/proc/{pid}/ns/net"));
        args.push("--".to_owned());
        args
    }

    /// A new network namespace with loopback up, held open by a process until dropped.
    ///
    /// # Panics
    /// When the holder does not start or does not report its namespace within [`DEADLINE`].
    pub fn hold_net(self) -> HeldNetns {
        let mut cmd = command(&self.unshare(&["--net"]));
        let mut holder = cmd
            .args([
                "sh",
                "-c",
                "ip link set lo up && readlink /proc/self/ns/net && exec cat >/dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?} (util-linux and iproute2): {e}"));
        let stdout = holder.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Built first, so that a failed check below still ends the holder.
        let mut held = HeldNetns {
            how: self,
            holder,
            id: String::new(),
        };
        let line = rx.recv_timeout(DEADLINE).unwrap_or_default();
        held.id = line.trim().to_owned();
        assert!(
            held.id.starts_with("net:["),
            "the namespace holder said {line:?} within {DEADLINE:?}, not its namespace"
        );
        let ours = std::fs::read_link("/proc/self/ns/net").expect("read our network namespace");
        assert_ne!(
            ours.to_string_lossy(),
            held.id,
            "the namespace holder is in our network namespace"
        );
        held
    }

    /// A socket of `domain` and `kind` made in a new network namespace (which lives as long as
    /// the socket). As root, a thread of this process enters a new network namespace to make it
    /// (`unshare(CLONE_NEWNET)` changes only the calling thread). An ordinary user cannot do
    /// that — only a single-threaded process can enter a new user namespace — so a child made
    /// with [`Namespaces::unshare`] creates it and passes it back over a socket pair
    /// (`SCM_RIGHTS`); that child is Python, and `None` (the skip reported) when there is none.
    ///
    /// # Panics
    /// When the thread or the child fails, or the child passes nothing back within
    /// [`DEADLINE`].
    pub fn socket(
        self,
        domain: rustix::net::AddressFamily,
        kind: rustix::net::SocketType,
    ) -> Option<OwnedFd> {
        match self {
            Namespaces::Root => Some(socket_on_a_thread_elsewhere(domain, kind)),
            Namespaces::UserNamespace => {
                if !super::needs::python3() {
                    return None;
                }
                Some(self.socket_from_a_child(domain, kind))
            }
        }
    }

    fn socket_from_a_child(
        self,
        domain: rustix::net::AddressFamily,
        kind: rustix::net::SocketType,
    ) -> OwnedFd {
        const SEND_ONE: &str = r#"
import array, socket, sys
made = socket.socket(int(sys.argv[1]), int(sys.argv[2]))
back = socket.socket(fileno=0)
back.sendmsg([b"s"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [made.fileno()]))])
"#;
        let (ours, theirs) = UnixStream::pair().expect("a socket pair");
        ours.set_read_timeout(Some(DEADLINE))
            .expect("a read timeout");
        let mut cmd = command(&self.unshare(&["--net"]));
        cmd.args([PYTHON3, "-c", SEND_ONE])
            .arg(domain.as_raw().to_string())
            .arg(kind.as_raw().to_string())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let what = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        // Our copy of the child's end goes with `cmd`: end-of-file, should the child die.
        drop(cmd);
        let got = receive_one(&ours);
        let status = wait_within(&mut child, DEADLINE, &what);
        let fd = got.unwrap_or_else(|e| panic!("{what} passed no socket ({status}): {e}"));
        assert!(status.success(), "{what} failed: {status}");
        fd
    }
}

/// A socket made on a thread that entered a new network namespace (root only).
fn socket_on_a_thread_elsewhere(
    domain: rustix::net::AddressFamily,
    kind: rustix::net::SocketType,
) -> OwnedFd {
    std::thread::spawn(move || {
        berth_os::netns::enter_new_on_this_thread()
            .expect("unshare(CLONE_NEWNET) on a thread, as root");
        rustix::net::socket(domain, kind, None).expect("a socket")
    })
    .join()
    .expect("the thread that makes the socket")
}

/// One descriptor received on `socket` (`SCM_RIGHTS`, close-on-exec), within its read timeout.
fn receive_one(socket: &UnixStream) -> std::io::Result<OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut buf = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(
        socket,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    control
        .drain()
        .find_map(|message| match message {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .ok_or_else(|| std::io::Error::other("a message without a descriptor"))
}

/// `prefix[0] prefix[1..]…`, a command to append to.
fn command(prefix: &[String]) -> Command {
    let (program, args) = prefix.split_first().expect("a program");
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// A private network namespace ([`Namespaces::hold_net`]), held open by a process of ours: its
/// stdin is closed, then it is killed and reaped by its pid, when this is dropped.
pub struct HeldNetns {
    how: Namespaces,
    holder: Child,
    /// Its `net:[inode]`.
    id: String,
}

impl HeldNetns {
    /// Its `net:[inode]`, as `readlink /proc/PID/ns/net` shows it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The holder's pid (its namespaces are the namespace's).
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// How it was made.
    pub fn how(&self) -> Namespaces {
        self.how
    }

    /// A command line prefix that runs the rest inside, as root there
    /// ([`Namespaces::enter_net`]).
    pub fn enter(&self) -> Vec<String> {
        self.how.enter_net(self.pid())
    }

    /// `program` inside, as root there: the rest of the command line is to be added.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = command(&self.enter());
        cmd.arg(program);
        cmd
    }
}

impl Drop for HeldNetns {
    fn drop(&mut self) {
        drop(self.holder.stdin.take());
        // Killed first, so the wait is short.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
