//! Enforce mode's kernel side: the cgroup-BPF programs that keep a port for the cgroup that
//! owns it (`bpf/enforce.bpf.c`, built by `build.rs` with clang), loaded and attached with
//! aya, and their map of owners.
//!
//! A cgroup is named by its id: on cgroup v2 the inode number of its directory, which is what
//! `bpf_get_current_cgroup_id()` returns for a task in it. A network namespace is named by its
//! cookie (`SO_NETNS_COOKIE`), what `bpf_get_netns_cookie()` returns for a socket in it.
//! Programs apply to the tasks of the cgroup they are attached to and of its descendants;
//! they detach when the [`Programs`] are dropped.

#![expect(
    unsafe_code,
    reason = "aya reads and writes map entries as plain bytes: the key and value types are Pod"
)]

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::maps::HashMap;
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr};
use berth_core::Protocol;

/// The object `build.rs` compiled (empty when it could not).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/enforce.bpf.o"));

/// The map's key: `struct key` of `bpf/enforce.bpf.c`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    netns: u64,
    port: u16,
    protocol: u8,
    pad: [u8; 5],
}

// SAFETY: `Key` is `repr(C)` plain data with no padding the compiler adds (8 + 2 + 1 + 5
// bytes, the padding spelled out and always zero), valid for any bit pattern.
unsafe impl aya::Pod for Key {}

/// The map's value: `struct owner`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    cgroup: u64,
    level: u32,
    pad: u32,
}

// SAFETY: `repr(C)` plain data, 8 + 4 + 4 bytes with no padding the compiler adds, valid for
// any bit pattern.
unsafe impl aya::Pod for Owner {}

/// A cgroup as the programs compare it: its id, and its depth below the hierarchy's root (the
/// root is 0), at which a task's ancestor id is compared, so that a task of any cgroup below
/// the owner counts as the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cgroup {
    /// Its id (the directory's inode number); never 0.
    pub id: u64,
    /// Its depth below the root of its hierarchy.
    pub level: u32,
}

impl Cgroup {
    /// The cgroup at `dir`, in the cgroup v2 hierarchy mounted at `mount`.
    pub fn at(mount: &Path, dir: &Path) -> io::Result<Cgroup> {
        let below = dir.strip_prefix(mount).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not below {}", dir.display(), mount.display()),
            )
        })?;
        let level = u32::try_from(below.components().count()).unwrap_or(u32::MAX);
        Ok(Cgroup {
            id: cgroup_id(dir)?,
            level,
        })
    }
}

/// Why enforce mode cannot run here, when this build has no programs (built without clang).
pub fn unavailable() -> Option<&'static str> {
    #[cfg(berth_bpf_unbuilt)]
    {
        Some(concat!(
            "this berth was built without its BPF programs: ",
            env!("BERTH_BPF_UNBUILT")
        ))
    }
    #[cfg(not(berth_bpf_unbuilt))]
    {
        None
    }
}

/// The id of the cgroup v2 directory `dir` (its inode number).
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// The caller's network-namespace cookie (Linux 5.14+, as the programs see it).
pub fn netns_cookie() -> io::Result<u64> {
    match crate::netns::NetNs::current()? {
        crate::netns::NetNs::Cookie(cookie) => Ok(cookie),
        crate::netns::NetNs::Inode { .. } => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel names no network namespace by cookie (SO_NETNS_COOKIE, Linux 5.14+)",
        )),
    }
}

/// The programs, loaded and attached to one cgroup, and their map of owners.
pub struct Programs {
    ebpf: aya::Ebpf,
}

impl std::fmt::Debug for Programs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programs").finish_non_exhaustive()
    }
}

/// A failure of aya's, as an `io::Error` that says what was being done.
fn failed(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl Programs {
    /// Loads the programs (the kernel's verifier checks them) and attaches them to the cgroup
    /// v2 directory `cgroup`: from then on its tasks', and its descendants', binds of owned
    /// ports are checked. Needs `CAP_BPF` and `CAP_NET_ADMIN` (root).
    pub fn attach(cgroup: &Path) -> io::Result<Programs> {
        if let Some(why) = unavailable() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, why));
        }
        let mut ebpf = aya::Ebpf::load(OBJECT).map_err(|e| failed("loading the BPF object", e))?;
        let dir = std::fs::File::open(cgroup)?;
        for name in ["berth_bind4", "berth_bind6"] {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| failed("the BPF object lacks a program", name))?
                .try_into()
                .map_err(|e| failed(name, e))?;
            program.load().map_err(|e| failed(name, e))?;
            program
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| failed(name, e))?;
        }
        for name in ["berth_post_bind4", "berth_post_bind6"] {
            let program: &mut CgroupSock = ebpf
                .program_mut(name)
                .ok_or_else(|| failed("the BPF object lacks a program", name))?
                .try_into()
                .map_err(|e| failed(name, e))?;
            program.load().map_err(|e| failed(name, e))?;
            program
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| failed(name, e))?;
        }
        Ok(Programs { ebpf })
    }

    fn owners(&mut self) -> io::Result<HashMap<&mut aya::maps::MapData, Key, Owner>> {
        let map = self
            .ebpf
            .map_mut("owners")
            .ok_or_else(|| failed("the BPF object lacks its map", "owners"))?;
        HashMap::try_from(map).map_err(|e| failed("owners", e))
    }

    /// Gives `port` of `protocol` in the network namespace `netns` (a cookie) to `cgroup`
    /// (not id 0) and the cgroups below it: every other cgroup's bind of it fails with
    /// `EADDRINUSE`, exempt cgroups' aside.
    pub fn own(
        &mut self,
        netns: u64,
        (protocol, port): (Protocol, u16),
        cgroup: Cgroup,
    ) -> io::Result<()> {
        if port == 0 || cgroup.id == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "port 0 and cgroup 0 are never owned",
            ));
        }
        let owner = Owner {
            cgroup: cgroup.id,
            level: cgroup.level,
            pad: 0,
        };
        self.owners()?
            .insert(key(netns, protocol, port), owner, 0)
            .map_err(|e| failed("owning a port", e))
    }

    /// Lets the tasks of the cgroup `id` (exactly that one: the daemon's own) bind any port,
    /// owned or not: the daemon binds its clients' sockets and holds their ports.
    pub fn exempt(&mut self, id: u64) -> io::Result<()> {
        let map = self
            .ebpf
            .map_mut("exempt")
            .ok_or_else(|| failed("the BPF object lacks its map", "exempt"))?;
        let mut exempt: HashMap<&mut aya::maps::MapData, u64, u8> =
            HashMap::try_from(map).map_err(|e| failed("exempt", e))?;
        exempt
            .insert(id, 1, 0)
            .map_err(|e| failed("exempting a cgroup", e))
    }

    /// Takes `port` back from whichever cgroup owned it (nothing to take is fine).
    pub fn disown(&mut self, netns: u64, (protocol, port): (Protocol, u16)) -> io::Result<()> {
        match self.owners()?.remove(&key(netns, protocol, port)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(failed("disowning a port", e)),
        }
    }
}

fn key(netns: u64, protocol: Protocol, port: u16) -> Key {
    let protocol = match protocol {
        Protocol::Tcp => libc::IPPROTO_TCP,
        Protocol::Udp => libc::IPPROTO_UDP,
    };
    Key {
        netns,
        port,
        protocol: u8::try_from(protocol).unwrap_or(0),
        pad: [0; 5],
    }
}
