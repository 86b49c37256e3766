//! `berth run --listen`: the reserved ports passed to the command as sockets already bound,
//! the systemd way (`sd_listen_fds(3)`), so that a socket-activated server runs on ports
//! nobody can take from it — not even between the reservation and its own bind, since it
//! makes no bind.
//!
//! - [`Sockets::bind`]: one socket per port, made here and bound through the daemon
//!   (associate); TCP sockets listening.
//! - [`Sockets::command`]: the command that gets them as descriptors 3, 4, … with `LISTEN_FDS`
//!   and `LISTEN_FDNAMES`, through [`exec`].
//! - [`exec`]: the hidden `berth __listen-exec`, the last step before the command: it moves
//!   the sockets to 3, 4, …, sets `LISTEN_PID` to its own pid and execs the command, which
//!   keeps that pid.
//!
//! Why a step of our own rather than setting `LISTEN_PID` between fork and exec: the
//! environment is built before the fork, and the child of a multi-threaded process (the tokio
//! runtime, its blocking pool) may only make async-signal-safe calls until it execs — no
//! allocation, so no `setenv` and no new environment block with its pid in it. A freshly
//! exec'd `berth` is single-threaded and may do anything; exec keeps the pid, so the pid it
//! writes is the command's. The fork side only marks descriptors (`fcntl`, `close_range`).

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use berth::{Protocol, Reservation};
use rustix::io::FdFlags;
use rustix::net::{AddressFamily, SocketType};

use crate::exit::{self, Failure};

/// The first argument that makes `berth` the step [`Sockets::command`] runs. Recognised
/// before the command line is parsed, so that it appears in no help and no completion.
pub const EXEC_STEP: &str = "__listen-exec";

/// `berth __listen-exec --fds A,B,… --exec-fd E -- CMD ARGS…`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "berth __listen-exec",
    about = "The last step of `berth run --listen`"
)]
pub struct ExecArgs {
    /// The inherited sockets, in the order the command gets them.
    #[arg(long, value_delimiter = ',', required = true)]
    pub fds: Vec<i32>,
    /// The write end of a pipe, open until the command's exec (then closed by it): `berth
    /// run` reads its end-of-file to know that the command runs.
    #[arg(long)]
    pub exec_fd: i32,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Runs [`exec`] when this process is that step; `None` otherwise.
pub fn step() -> Option<ExitCode> {
    let mut argv = std::env::args_os();
    let berth = argv.next()?;
    if argv.next()? != EXEC_STEP {
        return None;
    }
    let args = <ExecArgs as clap::Parser>::parse_from(std::iter::once(berth).chain(argv));
    Some(exec(args).unwrap_or_else(|failure| {
        eprintln!("berth: {failure}");
        failure.exit_code()
    }))
}

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// The sockets for the command, in the order it gets them: TCP ports ascending, then UDP
/// ports ascending.
pub struct Sockets {
    /// `(protocol, port, socket)`; each socket at a descriptor number of at least
    /// `FIRST_FD + len`, so that moving them to `FIRST_FD..` never overwrites one of them.
    passed: Vec<(Protocol, u16, OwnedFd)>,
}

/// Tells when the command itself runs, not the step before it: the step inherits the write end
/// of a pipe and marks it close-on-exec, so its exec (or its exit) ends the pipe.
pub struct Started {
    read: OwnedFd,
    /// Above the passed numbers, like the sockets; ours is dropped once the spawn returned.
    write: OwnedFd,
}

impl Started {
    /// Waits until the step has exec'd the command or ended. Then the command's pid names the
    /// command — its `/proc/PID/comm` is the command's, as the daemon records it when the
    /// reservation is handed over — and no longer `berth`.
    pub async fn exec_done(self) {
        drop(self.write);
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(self.read) else {
            return;
        };
        let mut buf = [0u8; 16];
        // The step writes nothing: end-of-file or an error, and done.
        while let Ok(1..) = tokio::io::AsyncReadExt::read(&mut pipe, &mut buf).await {}
    }
}

impl Sockets {
    /// One socket per port of `tcp` and `udp`, on `address` (default: `[::]` dual-stack
    /// where the host has IPv6, else `0.0.0.0`), bound through the daemon; TCP sockets
    /// listen with the largest backlog the kernel allows.
    pub async fn bind(
        tcp: Option<&Reservation>,
        udp: Option<&Reservation>,
        address: Option<IpAddr>,
    ) -> Result<Sockets, Failure> {
        let ip = address.unwrap_or_else(default_address);
        let total =
            tcp.map_or(0, Reservation::count) as usize + udp.map_or(0, Reservation::count) as usize;
        let floor = floor(total);
        let mut passed = Vec::with_capacity(total);
        for r in [tcp, udp].into_iter().flatten() {
            let mut these = Vec::with_capacity(usize::from(r.count()));
            for _ in r.ports() {
                let socket = new_socket(r.protocol(), ip)?;
                let port = r.bind(&socket, Some(ip)).await?;
                if r.protocol() == Protocol::Tcp {
                    rustix::net::listen(&socket, libc::SOMAXCONN).map_err(|e| {
                        anyhow::anyhow!("cannot listen on tcp port {port} ({ip}): {e}")
                    })?;
                }
                // Moved above the numbers the command gets (see `passed`).
                let high = rustix::io::fcntl_dupfd_cloexec(&socket, floor).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot keep the socket of {} port {port}: {e} (ulimit -n?)",
                        r.protocol()
                    )
                })?;
                these.push((r.protocol(), port, high));
            }
            these.sort_by_key(|&(_, port, _)| port);
            passed.extend(these);
        }
        Ok(Sockets { passed })
    }

    /// `LISTEN_FDNAMES`: one name per descriptor, `tcp-PORT` or `udp-PORT`, joined by `:`.
    pub fn names(&self) -> String {
        self.passed
            .iter()
            .map(|(protocol, port, _)| format!("{protocol}-{port}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// `berth __listen-exec --fds … --exec-fd … -- CMD ARGS…` with `LISTEN_FDS` and
    /// `LISTEN_FDNAMES` set, and the [`Started`] that tells when the command runs.
    /// Between fork and exec, every descriptor from 3 up is marked close-on-exec except the
    /// sockets, so that the step — and the command — inherits nothing else of ours (nor of
    /// our caller's: the command gets exactly 0, 1, 2 and its sockets, as under systemd).
    pub fn command(
        &self,
        program: &OsString,
        rest: &[OsString],
    ) -> Result<(tokio::process::Command, Started), Failure> {
        let exe = std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find the berth executable: {e}"))?;
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .and_then(|(read, write)| {
                Ok((read, rustix::io::fcntl_dupfd_cloexec(&write, self.floor())?))
            })
            .map_err(|e| anyhow::anyhow!("cannot make a pipe: {e}"))?;
        let mut raws: Vec<RawFd> = self
            .passed
            .iter()
            .map(|(_, _, fd)| fd.as_raw_fd())
            .collect();
        let list = raws
            .iter()
            .map(RawFd::to_string)
            .collect::<Vec<_>>()
            .join(",");
        raws.push(write.as_raw_fd());
        let mut command = tokio::process::Command::new(exe);
        command
            .arg(EXEC_STEP)
            .arg("--fds")
            .arg(list)
            .arg("--exec-fd")
            .arg(write.as_raw_fd().to_string())
            .arg("--")
            .arg(program)
            .args(rest)
            .env("LISTEN_FDS", self.passed.len().to_string())
            .env("LISTEN_FDNAMES", self.names())
            // Set by the step, to its own pid; a stale one must not reach it meanwhile.
            .env_remove("LISTEN_PID");
        keep_only(&mut command, raws);
        Ok((command, Started { read, write }))
    }

    /// The lowest number a descriptor kept for the step may have.
    fn floor(&self) -> RawFd {
        floor(self.passed.len())
    }
}

/// Marks every descriptor from 3 up close-on-exec, then clears the mark on `raws`, in the
/// child between fork and exec. The parent keeps the sockets until the spawn has returned.
fn keep_only(command: &mut tokio::process::Command, raws: Vec<RawFd>) {
    berth_os::exec::inherit_only(command.as_std_mut(), raws);
}

/// `[::]` where the host has IPv6 (a dual-stack socket then serves IPv4 too), else
/// `0.0.0.0`.
fn default_address() -> IpAddr {
    // (The probe's socket is close-on-exec: a command spawned meanwhile never inherits it.)
    if berth_os::hold::ipv6_available() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// A new unbound, blocking socket of `protocol` for `ip`'s family (close-on-exec until it is
/// passed); dual-stack for the IPv6 wildcard. Neither `SO_REUSEADDR` nor `SO_REUSEPORT`: with
/// either, another program could bind the port beside it.
fn new_socket(protocol: Protocol, ip: IpAddr) -> Result<OwnedFd, Failure> {
    let family = if ip.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let ty = match protocol {
        Protocol::Tcp => SocketType::STREAM,
        Protocol::Udp => SocketType::DGRAM,
    };
    let socket = rustix::net::socket_with(family, ty, rustix::net::SocketFlags::CLOEXEC, None)
        .map_err(|e| anyhow::anyhow!("cannot create a {protocol} socket for {ip}: {e}"))?;
    if ip.is_ipv6() && ip.is_unspecified() {
        rustix::net::sockopt::set_ipv6_v6only(&socket, false).map_err(|e| {
            anyhow::anyhow!("cannot make the {protocol} socket on [::] serve IPv4 too: {e}; pass --listen-address 0.0.0.0 or ::")
        })?;
    }
    Ok(socket)
}

/// The hidden `berth __listen-exec --fds A,B,… -- CMD ARGS…`, run by [`Sockets::command`]:
/// moves the inherited sockets `A, B, …` to 3, 4, …, sets `LISTEN_PID` to this process's pid
/// and execs the command, which keeps the pid. Returns only when the exec fails (126, 127).
pub fn exec(args: ExecArgs) -> Result<ExitCode, Failure> {
    let count = args.fds.len();
    let announced = std::env::var("LISTEN_FDS").ok();
    if announced.as_deref() != Some(count.to_string().as_str()) {
        return Err(anyhow::anyhow!(
            "{EXEC_STEP} is the last step of `berth run --listen`, not a command of its own (LISTEN_FDS={announced:?}, {count} descriptors named)"
        )
        .into());
    }
    let floor = floor(count);
    let mut taken: Vec<OwnedFd> = Vec::with_capacity(count + 1);
    for &raw in args.fds.iter().chain([&args.exec_fd]) {
        // `berth run` passed `raw` open, to this process only; a number named twice, or not
        // open, was not passed.
        let fd = (raw >= floor)
            .then(|| berth_os::inherited::take(raw).ok())
            .flatten()
            .ok_or_else(|| anyhow::anyhow!("{EXEC_STEP}: descriptor {raw} was not passed"))?;
        taken.push(fd);
    }
    // Open until the exec, which closes it: `berth run` then knows the command runs.
    let exec_fd = taken.pop();
    if let Some(fd) = &exec_fd {
        rustix::io::fcntl_setfd(fd, FdFlags::CLOEXEC)
            .map_err(|e| anyhow::anyhow!("{EXEC_STEP}: cannot mark the exec pipe: {e}"))?;
    }
    let sources = taken;
    // Nothing but 0, 1, 2 and the sources (all above `floor`) is open here, so each
    // duplicate gets the lowest free number from 3: 3, 4, … in order.
    let mut passed = Vec::with_capacity(count);
    for (i, source) in sources.iter().enumerate() {
        let want = FIRST_FD + RawFd::try_from(i).unwrap_or(RawFd::MAX);
        let fd = rustix::io::fcntl_dupfd_cloexec(source, FIRST_FD)
            .and_then(|fd| rustix::io::fcntl_setfd(&fd, FdFlags::empty()).map(|()| fd))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{EXEC_STEP}: cannot move descriptor {} to {want}: {e}",
                    source.as_raw_fd()
                )
            })?;
        if fd.as_raw_fd() != want {
            return Err(anyhow::anyhow!(
                "{EXEC_STEP}: descriptor {want} is in use, the socket landed on {}",
                fd.as_raw_fd()
            )
            .into());
        }
        passed.push(fd);
    }
    drop(sources);

    let Some((program, rest)) = args.command.split_first() else {
        return Err(anyhow::anyhow!("no command given after --").into());
    };
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    let error = std::process::Command::new(program)
        .args(rest)
        .env("LISTEN_PID", pid.to_string())
        .exec();
    // Only reached when the exec failed; `passed` and the pipe are open until here.
    drop(passed);
    drop(exec_fd);
    let code = if error.kind() == std::io::ErrorKind::NotFound {
        exit::COMMAND_NOT_FOUND
    } else {
        exit::CANNOT_EXECUTE
    };
    Err(Failure::Spawn {
        code,
        message: format!("cannot run {:?}: {error}", program.to_string_lossy()),
    })
}

/// The lowest number a descriptor kept for the step may have when `count` sockets are passed:
/// above `3..3 + count`, the numbers they move to.
fn floor(count: usize) -> RawFd {
    FIRST_FD.saturating_add(RawFd::try_from(count).unwrap_or(RawFd::MAX))
}

/// The descriptors `berth run --listen` needs for `count` sockets: they sit at `3 + count`
/// and up while the command starts, besides the ones of its own.
pub fn descriptors_needed(count: usize) -> u64 {
    (2 * count as u64) + 64
}

/// Raises the soft limit on open descriptors to `need` when it is lower (within the hard
/// limit); fails, naming both, when the hard limit is lower.
pub fn ensure_descriptors(count: usize) -> Result<(), Failure> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let need = descriptors_needed(count);
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|soft| soft >= need) {
        return Ok(());
    }
    if limit.maximum.is_some_and(|hard| hard < need) {
        return Err(berth::Error::InvalidArgument(format!(
            "passing {count} sockets takes about {need} descriptors, over this process's limit of {} (ulimit -Hn); nothing was reserved. Ask for fewer ports, or raise the limit",
            limit.maximum.unwrap_or(0)
        ))
        .into());
    }
    let raised = rustix::process::Rlimit {
        current: Some(need),
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).map_err(|e| {
        anyhow::anyhow!("cannot raise the descriptor limit to {need} for {count} sockets: {e}")
            .into()
    })
}

/// The length of the longest `LISTEN_FDNAMES` value for these blocks (`name_len` is the
/// length of the `a,b,c` port list of one block: the same digits and separators).
pub fn names_len(blocks: &[(&str, u16, usize)]) -> usize {
    let parts: Vec<usize> = blocks
        .iter()
        .map(|&(protocol, count, list)| (protocol.len() + 1) * usize::from(count) + list)
        .collect();
    parts.iter().sum::<usize>() + parts.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_len_is_the_length_of_the_names() {
        // tcp 8080-8081 and udp 9998-10000: the `a,b` lists are 9 and 15 bytes long.
        let len = names_len(&[("tcp", 2, 9), ("udp", 3, 15)]);
        assert_eq!(len, "tcp-8080:tcp-8081:udp-9998:udp-9999:udp-10000".len());
        assert_eq!(names_len(&[("udp", 1, 4)]), "udp-8080".len());
    }
}
