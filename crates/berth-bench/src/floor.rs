//! The *floor* of the portpicker protocol (BENCHMARKS.md, "Targets"): a server that makes exactly the system
//! calls an answer must make and nothing else, so that the portserver endpoint is measured
//! against the physical limit of its shape rather than against a bare echo.
//!
//! Per connection, in order: `accept4`; `getsockopt(SO_PEERCRED)`; `read` the request
//! (`"<pid>\n"`); `openat`+`read`+`close` of `/proc/<peer pid>/stat` for its start time; a
//! test bind of one candidate port in TCP and in UDP (`socket`+`bind`+`close` each, on the
//! unspecified IPv6 address — dual-stack by the host's default — or IPv4's where the host has
//! no IPv6; no reuse options); `pidfd_open` of the named pid and its `close`; one `write(2)` of
//! a fixed-size record to an append-only journal file; `write` of `"<port>\n"`; `close`.
//! Candidates cycle through the pool (a bind that fails moves on to the next), so the binds
//! succeed as a real grant's do. Blocking std I/O, two accepting threads (as the echo server's
//! connect-per-request socket, and as the daemon's two workers); no policy, no table, no
//! async runtime.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::args::FloorArgs;

/// Bytes of one journal record: fixed, as a real journal's would be.
const RECORD: usize = 32;

/// Accepting threads.
const THREADS: usize = 2;

/// What the accepting threads share.
struct Floor {
    /// The append-only journal (`O_APPEND`: each record is one `write`).
    journal: File,
    /// The ports its test binds try.
    candidates: Candidates,
    /// Whether test binds use `[::]` (the host has IPv6) or `0.0.0.0`.
    ipv6: bool,
}

/// The ports a floor binds: a pool (`LO-HI`) tried from a rotating cursor, so that binds
/// succeed as a real grant's do (a port in use moves on to the next). Shared with the echo
/// server's session floor.
pub(crate) struct Candidates {
    /// The pool's first port and its size.
    lo: u32,
    span: u32,
    /// The next candidate, as an offset into the pool.
    next: AtomicU32,
}

impl Candidates {
    /// The pool `LO-HI`, given by the option `flag` (for the error).
    pub(crate) fn parse(pool: &str, flag: &str) -> Result<Candidates> {
        let (lo, hi) = pool
            .split_once('-')
            .with_context(|| format!("{flag} is LO-HI"))?;
        let (lo, hi): (u16, u16) = (lo.trim().parse()?, hi.trim().parse()?);
        anyhow::ensure!(0 < lo && lo <= hi, "{flag} {pool}: not a range of ports");
        Ok(Candidates {
            lo: u32::from(lo),
            span: u32::from(hi) - u32::from(lo) + 1,
            next: AtomicU32::new(0),
        })
    }

    /// What `bind` makes of the first candidate, from the cursor on, that it takes; `None`
    /// when it takes none of the pool.
    pub(crate) fn first<T>(&self, mut bind: impl FnMut(u16) -> Option<T>) -> Option<T> {
        (0..self.span).find_map(|_| {
            let offset = self.next.fetch_add(1, Ordering::Relaxed) % self.span;
            bind(u16::try_from(self.lo + offset).ok()?)
        })
    }
}

/// A floor's append-only journal at `path` (`O_APPEND`: each record is one `write`).
pub(crate) fn open_journal(path: &Path) -> Result<File> {
    File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Runs the floor server until its stdin ends (the benchmark is gone) or it is killed.
pub fn serve(args: &FloorArgs) -> Result<()> {
    let candidates = Candidates::parse(&args.pool, "--pool")?;
    let listener = UnixListener::bind(&args.socket)
        .with_context(|| format!("cannot bind {}", args.socket.display()))?;
    let floor = Arc::new(Floor {
        journal: open_journal(&args.journal)?,
        candidates,
        ipv6: berth_os::hold::ipv6_available(),
    });
    for _ in 0..THREADS {
        let listener = listener.try_clone()?;
        let floor = floor.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = floor.answer(stream);
            }
        });
    }
    println!("ready");
    std::io::stdout().flush()?;
    // Stop with the benchmark: its end closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

impl Floor {
    /// One connection (accepted already): the calls an answer must make, then close (drop).
    fn answer(&self, mut stream: UnixStream) -> std::io::Result<()> {
        let peer = rustix::net::sockopt::socket_peercred(&stream)?;
        let named = read_request(&mut stream)?;
        let start_time = start_time(peer.pid.as_raw_nonzero().get())?;
        let port = self.test_bind()?;
        let pid = i32::try_from(named)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        drop(rustix::process::pidfd_open(
            pid,
            rustix::process::PidfdFlags::empty(),
        )?);
        let mut record = [0u8; RECORD];
        record[..2].copy_from_slice(&port.to_le_bytes());
        record[4..8].copy_from_slice(&named.to_le_bytes());
        record[8..16].copy_from_slice(&start_time.to_le_bytes());
        record[16..20].copy_from_slice(&peer.uid.as_raw().to_le_bytes());
        (&self.journal).write_all(&record)?;
        stream.write_all(format!("{port}\n").as_bytes())
    }

    /// The first candidate from the rotating cursor that binds in TCP and then in UDP.
    fn test_bind(&self) -> std::io::Result<u16> {
        self.candidates
            .first(|port| {
                (self.bind_once(SocketType::STREAM, port).is_ok()
                    && self.bind_once(SocketType::DGRAM, port).is_ok())
                .then_some(port)
            })
            .ok_or_else(|| std::io::ErrorKind::AddrInUse.into())
    }

    /// `socket`, `bind` to the unspecified address, `close` (on drop).
    fn bind_once(&self, ty: SocketType, port: u16) -> std::io::Result<()> {
        let (family, addr) = if self.ipv6 {
            (
                AddressFamily::INET6,
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            )
        } else {
            (
                AddressFamily::INET,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            )
        };
        let socket = rustix::net::socket_with(family, ty, SocketFlags::CLOEXEC, None)?;
        rustix::net::bind(&socket, &addr)?;
        Ok(())
    }
}

/// Reads `"<pid>\n"` (usually one `read`).
fn read_request(stream: &mut UnixStream) -> std::io::Result<u32> {
    let mut buf = [0u8; 32];
    let mut len = 0;
    while len < buf.len() {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].contains(&b'\n') {
            break;
        }
    }
    std::str::from_utf8(&buf[..len])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| std::io::ErrorKind::InvalidData.into())
}

/// The start time (field 22, clock ticks since boot) of process `pid`: one `openat`, one
/// `read`, one `close`.
fn start_time(pid: i32) -> std::io::Result<u64> {
    let mut buf = [0u8; 1024];
    let mut file = File::open(format!("/proc/{pid}/stat"))?;
    let n = file.read(&mut buf)?;
    let stat = &buf[..n];
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = stat
        .iter()
        .rposition(|&b| b == b')')
        .ok_or(std::io::ErrorKind::InvalidData)?;
    // After ')': field 3 (state) is the first, so field 22 is the 20th.
    std::str::from_utf8(&stat[after + 1..])
        .ok()
        .and_then(|rest| rest.split_ascii_whitespace().nth(19))
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| std::io::ErrorKind::InvalidData.into())
}
