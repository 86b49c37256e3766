//! Enforce mode's kernel side: the cgroup-BPF programs that keep a port for the cgroup that
//! owns it (`bpf/enforce.bpf.c`, built by `build.rs` with clang), loaded and attached with
//! aya, and their maps: owners of ports, blocks that owners' `bind(0)` draws from, refusals,
//! and the daemon's lease.
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
use std::path::{Path, PathBuf};

use std::time::Duration;

use aya::maps::{Array, HashMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr};
use berth_core::Protocol;

/// The object `build.rs` compiled (empty when it could not).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/enforce.bpf.o"));

/// The map's key: `struct key` of `bpf/enforce.bpf.c`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// The block a cgroup's `bind(0)` draws from: `struct block_key` of `bpf/enforce.bpf.c`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BlockKey {
    netns: u64,
    cgroup: u64,
    protocol: u8,
    pad: [u8; 7],
}

// SAFETY: `repr(C)` plain data, 8 + 8 + 1 + 7 bytes with the padding spelled out, valid for
// any bit pattern.
unsafe impl aya::Pod for BlockKey {}

/// `struct block`: the block's first port, its size, the programs' rotating cursor, and
/// whether `connect()` is steered too.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    first: u16,
    count: u16,
    next: u32,
    flags: u32,
    pad: u32,
}

/// `STEER_CONNECT` of `struct block`'s flags.
const STEER_CONNECT: u32 = 1;

// SAFETY: `repr(C)` plain data, 2 + 2 + 4 + 4 + 4 bytes with no padding, valid for any bit
// pattern.
unsafe impl aya::Pod for Block {}

/// `struct held`: a port's claim (the socket's cookie, and when it was last given back).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    cookie: u64,
    released: u64,
}

// SAFETY: `repr(C)` plain data, 8 + 8 bytes, no padding, valid for any bit pattern.
unsafe impl aya::Pod for Held {}

/// `struct refusal`: how often a port was refused, and the last refusal.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawRefusal {
    count: u64,
    when: u64,
    cgroup: u64,
    pid: u32,
    comm: [u8; 16],
    uid: u32,
}

// SAFETY: `repr(C)` plain data, 8 + 8 + 8 + 4 + 16 + 4 bytes with no padding the compiler adds,
// valid for any bit pattern.
unsafe impl aya::Pod for RawRefusal {}

/// What the programs recorded of the binds they refused on one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusals {
    /// How many binds of the port were refused since it was owned.
    pub count: u64,
    /// The last refusal.
    pub last: Refused,
}

/// One refused bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// When, on the monotonic clock (`CLOCK_MONOTONIC`, what `bpf_ktime_get_ns()` reads).
    pub at: Duration,
    /// The refused task's cgroup id.
    pub cgroup: u64,
    /// The refused task's process id, as the initial pid namespace numbers it.
    pub pid: u32,
    /// Its real user id, as the initial user namespace numbers it.
    pub uid: u32,
    /// Its command name (at most 15 bytes, as the kernel keeps it).
    pub command: String,
}

/// The monotonic clock's reading now, as the programs read it.
pub fn monotonic_now() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// The programs, loaded and attached to one cgroup, and their maps.
pub struct Programs {
    ebpf: aya::Ebpf,
    /// The links, unpinned: they detach when dropped.
    links: Vec<FdLink>,
    /// The links, when pinned ([`Programs::attach_pinned`]): they outlive this process.
    pinned: Vec<(PathBuf, PinnedLink)>,
    /// Where the maps are pinned, when they are.
    maps: Option<PathBuf>,
}

/// The programs' names, in attach order (and the names of their pins).
const PROGRAMS: [&str; 7] = [
    "berth_bind4",
    "berth_bind6",
    "berth_connect4",
    "berth_connect6",
    "berth_post_bind4",
    "berth_post_bind6",
    "berth_sock_release",
];

/// The programs' maps (pinned with the links: a restart keeps owners, claims and refusals).
const MAPS: [&str; 8] = [
    "owners",
    "blocks",
    "claims",
    "refusals",
    "socket_claims",
    "exempt",
    "lease",
    // Not a map: the directory of the maps, versioned by their layout (a daemon whose maps
    // differ starts with fresh ones).
    MAPS_DIR,
];

/// Where the maps are pinned, below the pins' directory; the number is the maps' layout.
const MAPS_DIR: &str = "maps-v1";

/// `statfs`'s type of a bpffs.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Makes sure `dir` is on a BPF filesystem (bpffs), where pins live: mounts one there when it
/// is not (Linux mounts none by itself; systemd mounts `/sys/fs/bpf`). Needs root.
pub fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let fs = rustix::fs::statfs(dir)?;
    // f_type's width differs between targets (i64 here).
    if u64::try_from(fs.f_type).unwrap_or(0) == BPF_FS_MAGIC {
        return Ok(());
    }
    rustix::mount::mount("bpf", dir, "bpf", rustix::mount::MountFlags::empty(), None).map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(
            e.kind(),
            format!("mounting a BPF filesystem at {}: {e}", dir.display()),
        )
    })
}

/// Removes the pins a daemon left in `dir` (its programs detach once nothing else holds
/// them). Nothing there is fine.
pub fn remove_pins(dir: &Path) -> io::Result<()> {
    for name in PROGRAMS {
        remove_if_there(&dir.join(name))?;
    }
    for name in &MAPS[..MAPS.len() - 1] {
        remove_if_there(&dir.join(MAPS_DIR).join(name))?;
    }
    match std::fs::remove_dir(dir.join(MAPS_DIR)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl std::fmt::Debug for Programs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programs").finish_non_exhaustive()
    }
}

/// A failed attach, as an `io::Error` that says why: `EPERM` there means an exclusive program
/// (one attached without `BPF_F_ALLOW_MULTI`, the old way) at the cgroup or an ancestor.
fn attach_failed(name: &str, cgroup: &Path, e: aya::programs::ProgramError) -> io::Error {
    if let aya::programs::ProgramError::SyscallError(call) = &e {
        if call.io_error.raw_os_error() == Some(libc::EPERM) {
            return io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "attaching {name} at {} was refused (EPERM): an exclusive cgroup-BPF program (attached without BPF_F_ALLOW_MULTI) is at that cgroup or an ancestor, and nothing may be attached beside it; detach it, or attach berth's programs below it (enforce_attach)",
                    cgroup.display()
                ),
            );
        }
    }
    failed(name, e)
}

/// A failure of aya's, as an `io::Error` that says what was being done.
fn failed(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl Programs {
    /// Loads the programs (the kernel's verifier checks them) and attaches them to the cgroup
    /// v2 directory `cgroup`: from then on its tasks', and its descendants', binds of owned
    /// ports are checked. Needs `CAP_BPF` and `CAP_NET_ADMIN` (root). Nothing is refused until
    /// a lease is given ([`Programs::renew_lease`]).
    pub fn attach(cgroup: &Path) -> io::Result<Programs> {
        let (mut programs, links) = Programs::load_and_attach(cgroup, None)?;
        programs.links = links;
        Ok(programs)
    }

    /// [`Programs::attach`], then pins the links in `pins` (a directory on a BPF filesystem,
    /// see [`ensure_bpffs`]): they stay attached after this process exits — the next daemon
    /// takes over without a gap — until [`Programs::unpin`] or the pins are removed. Pins a
    /// previous daemon left there are replaced, after these programs are attached (its
    /// programs detach then).
    pub fn attach_pinned(cgroup: &Path, pins: &Path) -> io::Result<Programs> {
        let maps = pins.join(MAPS_DIR);
        std::fs::create_dir_all(&maps)?;
        let (mut programs, links) = Programs::load_and_attach(cgroup, Some(&maps))?;
        programs.maps = Some(maps);
        for (name, link) in PROGRAMS.into_iter().zip(links) {
            let path = pins.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let pinned = link
                .pin(&path)
                .map_err(|e| failed("pinning a program's link", e))?;
            programs.pinned.push((path, pinned));
        }
        Ok(programs)
    }

    /// Keeps in the maps only what `owned` (the namespace `netns`'s owned ports, with their
    /// owner cgroup's id) says: a restart's maps, taken over from the earlier daemon, may name
    /// blocks released while no daemon ran. Claims of ports no longer owned go too.
    pub fn retain(&mut self, netns: u64, owned: &[((Protocol, u16), u64)]) -> io::Result<()> {
        let keep: std::collections::HashSet<Key> = owned
            .iter()
            .map(|&((protocol, port), _)| key(netns, protocol, port))
            .collect();
        let cgroups: std::collections::HashSet<BlockKey> = owned
            .iter()
            .map(|&((protocol, _), cgroup)| block_key(netns, protocol, cgroup))
            .collect();
        let stale: Vec<Key> = self
            .hash::<Key, Owner>("owners")?
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns == netns && !keep.contains(k))
            .collect();
        for k in &stale {
            absent_is_fine(
                self.hash::<Key, Owner>("owners")?.remove(k),
                "disowning a port",
            )?;
            absent_is_fine(
                self.hash::<Key, Held>("claims")?.remove(k),
                "dropping a claim",
            )?;
        }
        let stale: Vec<BlockKey> = self
            .hash::<BlockKey, Block>("blocks")?
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns == netns && !cgroups.contains(k))
            .collect();
        for k in &stale {
            absent_is_fine(
                self.hash::<BlockKey, Block>("blocks")?.remove(k),
                "unsteering a block",
            )?;
        }
        Ok(())
    }

    /// Claims `port` for the socket whose cookie is `cookie`, unless a socket claims it already:
    /// for sockets bound where the programs did not see them claim it (before they were
    /// attached — `berth enforce on`, a restart with fresh maps — or by the daemon for its
    /// clients), so that an owner's `bind(0)` is not steered onto a port one of its sockets
    /// holds. Such a claim is not given back by the socket's release (the programs never saw
    /// it): [`Programs::give_back`] does that once the socket is gone. Returns whether it
    /// claimed the port.
    pub fn claim(
        &mut self,
        netns: u64,
        (protocol, port): (Protocol, u16),
        cookie: u64,
    ) -> io::Result<bool> {
        let k = key(netns, protocol, port);
        let mut claims = self.hash::<Key, Held>("claims")?;
        // BPF_NOEXIST for a port never claimed, BPF_EXIST over a claim given back: a program
        // claiming it meanwhile makes the update fail rather than be overwritten… mostly (a
        // give-back and a new claim between the read and the update are not told apart).
        let flags = match claims.get(&k, 0) {
            Ok(held) if held.cookie != 0 => return Ok(false),
            Ok(_) => 2,
            Err(_) => 1,
        };
        match claims.insert(
            k,
            Held {
                cookie,
                released: 0,
            },
            flags,
        ) {
            Ok(()) => Ok(true),
            Err(_) => Ok(false),
        }
    }

    /// Gives back the claim of `port` held by the socket `cookie` (only its own), marking when,
    /// as the socket's release would have.
    pub fn give_back(
        &mut self,
        netns: u64,
        (protocol, port): (Protocol, u16),
        cookie: u64,
    ) -> io::Result<()> {
        let k = key(netns, protocol, port);
        let mut claims = self.hash::<Key, Held>("claims")?;
        if claims.get(&k, 0).is_ok_and(|held| held.cookie == cookie) {
            let released = u64::try_from(monotonic_now().as_nanos()).unwrap_or(u64::MAX);
            claims
                .insert(
                    k,
                    Held {
                        cookie: 0,
                        released,
                    },
                    2,
                )
                .map_err(|e| failed("giving a claim back", e))?;
        }
        Ok(())
    }

    /// Removes the pins: the programs detach when these [`Programs`] are dropped.
    pub fn unpin(&mut self) -> io::Result<()> {
        for (path, pinned) in self.pinned.drain(..) {
            let link = pinned.unpin().map_err(|e| {
                io::Error::new(e.kind(), format!("unpinning {}: {e}", path.display()))
            })?;
            self.links.push(link);
        }
        if let Some(dir) = self.maps.take() {
            for name in &MAPS[..MAPS.len() - 1] {
                remove_if_there(&dir.join(name))?;
            }
            let _ = std::fs::remove_dir(&dir);
        }
        Ok(())
    }

    /// Loads the programs and attaches them to `cgroup`; also returns their links, taken from
    /// aya (so that they can be pinned; dropped, they detach).
    fn load_and_attach(cgroup: &Path, maps: Option<&Path>) -> io::Result<(Programs, Vec<FdLink>)> {
        if let Some(why) = unavailable() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, why));
        }
        let mut loader = aya::EbpfLoader::new();
        if let Some(dir) = maps {
            // Taken over when an earlier daemon pinned them there, else made and pinned.
            for name in &MAPS[..MAPS.len() - 1] {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| failed("loading the BPF object", e))?;
        let dir = std::fs::File::open(cgroup)?;
        let mut links = Vec::with_capacity(PROGRAMS.len());
        for name in PROGRAMS {
            let program = ebpf
                .program_mut(name)
                .ok_or_else(|| failed("the BPF object lacks a program", name))?;
            let link: FdLink = if name.starts_with("berth_bind")
                || name.starts_with("berth_connect")
            {
                let program: &mut CgroupSockAddr =
                    program.try_into().map_err(|e| failed(name, e))?;
                program.load().map_err(|e| failed(name, e))?;
                let id = program
                    .attach(&dir, CgroupAttachMode::Single)
                    .map_err(|e| attach_failed(name, cgroup, e))?;
                let link = program.take_link(id).map_err(|e| failed(name, e))?;
                link.try_into().map_err(|e| failed(name, e))?
            } else {
                let program: &mut CgroupSock = program.try_into().map_err(|e| failed(name, e))?;
                program.load().map_err(|e| failed(name, e))?;
                let id = program
                    .attach(&dir, CgroupAttachMode::Single)
                    .map_err(|e| attach_failed(name, cgroup, e))?;
                let link = program.take_link(id).map_err(|e| failed(name, e))?;
                link.try_into().map_err(|e| failed(name, e))?
            };
            links.push(link);
        }
        Ok((
            Programs {
                ebpf,
                links: Vec::new(),
                pinned: Vec::new(),
                maps: None,
            },
            links,
        ))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> io::Result<HashMap<&mut aya::maps::MapData, K, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| failed("the BPF object lacks its map", name))?;
        HashMap::try_from(map).map_err(|e| failed(name, e))
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
        self.hash::<Key, Owner>("owners")?
            .insert(key(netns, protocol, port), owner, 0)
            .map_err(|e| failed("owning a port", e))
    }

    /// Lets the tasks of the cgroup `id` (exactly that one: the daemon's own) bind any port,
    /// owned or not: the daemon binds its clients' sockets and holds their ports.
    pub fn exempt(&mut self, id: u64) -> io::Result<()> {
        // Only this one: maps taken over from an earlier daemon may name its cgroup.
        let mut exempt = self.hash::<u64, u8>("exempt")?;
        let others: Vec<u64> = exempt
            .keys()
            .filter_map(Result::ok)
            .filter(|k| *k != id)
            .collect();
        for other in others {
            absent_is_fine(exempt.remove(&other), "ending an exemption")?;
        }
        exempt
            .insert(id, 1, 0)
            .map_err(|e| failed("exempting a cgroup", e))
    }

    /// Takes `port` back from whichever cgroup owned it (nothing to take is fine), with the
    /// claims and refusals recorded for it.
    pub fn disown(&mut self, netns: u64, (protocol, port): (Protocol, u16)) -> io::Result<()> {
        let k = key(netns, protocol, port);
        absent_is_fine(
            self.hash::<Key, Owner>("owners")?.remove(&k),
            "disowning a port",
        )?;
        absent_is_fine(
            self.hash::<Key, Held>("claims")?.remove(&k),
            "dropping a claim",
        )?;
        absent_is_fine(
            self.hash::<Key, RawRefusal>("refusals")?.remove(&k),
            "dropping refusals",
        )
    }

    /// Makes the ports `first..first + count` of `protocol` the block that `bind(0)` of a task
    /// of `cgroup` (or below it) draws from in the namespace `netns`: a port no socket of the
    /// owner holds. With `connect`, a `connect()` on an unbound socket is bound into it too
    /// (the kernel picks as usual when no port of it is free). One block per cgroup and
    /// protocol: a later call replaces it.
    pub fn steer(
        &mut self,
        netns: u64,
        protocol: Protocol,
        cgroup: u64,
        (first, count): (u16, u16),
        connect: bool,
    ) -> io::Result<()> {
        if first == 0 || count == 0 || cgroup == 0 || u32::from(first) + u32::from(count) > 65536 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a steered block has a cgroup, a first port and a size, all not 0, within 1-65535",
            ));
        }
        let block = Block {
            first,
            count,
            next: 0,
            flags: if connect { STEER_CONNECT } else { 0 },
            pad: 0,
        };
        self.hash::<BlockKey, Block>("blocks")?
            .insert(block_key(netns, protocol, cgroup), block, 0)
            .map_err(|e| failed("steering a block", e))
    }

    /// Stops steering `cgroup`'s `bind(0)` of `protocol` (nothing to stop is fine).
    pub fn unsteer(&mut self, netns: u64, protocol: Protocol, cgroup: u64) -> io::Result<()> {
        absent_is_fine(
            self.hash::<BlockKey, Block>("blocks")?
                .remove(&block_key(netns, protocol, cgroup)),
            "unsteering a block",
        )
    }

    /// Lets the programs refuse binds until the monotonic clock reads `until`
    /// ([`monotonic_now`] plus the lease); past it they refuse nothing.
    pub fn renew_lease(&mut self, until: Duration) -> io::Result<()> {
        let map = self
            .ebpf
            .map_mut("lease")
            .ok_or_else(|| failed("the BPF object lacks its map", "lease"))?;
        let mut lease: Array<&mut aya::maps::MapData, u64> =
            Array::try_from(map).map_err(|e| failed("lease", e))?;
        let nanos = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        lease
            .set(0, nanos, 0)
            .map_err(|e| failed("renewing the lease", e))
    }

    /// What the programs recorded of the binds of `port` they refused, if any.
    pub fn refusals(
        &mut self,
        netns: u64,
        (protocol, port): (Protocol, u16),
    ) -> io::Result<Option<Refusals>> {
        match self
            .hash::<Key, RawRefusal>("refusals")?
            .get(&key(netns, protocol, port), 0)
        {
            Ok(raw) => Ok(Some(refusals_of(&raw))),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(failed("reading refusals", e)),
        }
    }

    /// Every port of the namespace `netns` with refused binds, and what was recorded (at most
    /// the map's size: 8,192 ports).
    pub fn all_refusals(&mut self, netns: u64) -> io::Result<Vec<((Protocol, u16), Refusals)>> {
        let map = self.hash::<Key, RawRefusal>("refusals")?;
        let mut found = Vec::new();
        for entry in map.iter() {
            // An entry removed while the walk goes on ends it early: the next walk sees the rest.
            let Ok((k, raw)) = entry else { break };
            let protocol = match i32::from(k.protocol) {
                libc::IPPROTO_TCP => Protocol::Tcp,
                libc::IPPROTO_UDP => Protocol::Udp,
                _ => continue,
            };
            if k.netns == netns {
                found.push(((protocol, k.port), refusals_of(&raw)));
            }
        }
        Ok(found)
    }
}

fn refusals_of(raw: &RawRefusal) -> Refusals {
    let len = raw
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.comm.len());
    Refusals {
        count: raw.count,
        last: Refused {
            at: Duration::from_nanos(raw.when),
            cgroup: raw.cgroup,
            pid: raw.pid,
            uid: raw.uid,
            command: String::from_utf8_lossy(&raw.comm[..len]).into_owned(),
        },
    }
}

fn absent_is_fine(outcome: Result<(), aya::maps::MapError>, what: &str) -> io::Result<()> {
    match outcome {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(failed(what, e)),
    }
}

fn protocol_number(protocol: Protocol) -> u8 {
    let number = match protocol {
        Protocol::Tcp => libc::IPPROTO_TCP,
        Protocol::Udp => libc::IPPROTO_UDP,
    };
    u8::try_from(number).unwrap_or(0)
}

fn key(netns: u64, protocol: Protocol, port: u16) -> Key {
    Key {
        netns,
        port,
        protocol: protocol_number(protocol),
        pad: [0; 5],
    }
}

fn block_key(netns: u64, protocol: Protocol, cgroup: u64) -> BlockKey {
    BlockKey {
        netns,
        cgroup,
        protocol: protocol_number(protocol),
        pad: [0; 7],
    }
}
