//! Enforce mode: reservations owned by a cgroup, kept for it by cgroup-BPF programs in the
//! kernel (`berth_os::enforce`), as one more consumer of the change stream.
//!
//! A reservation bound to a cgroup (`Bond::Cgroup`) has its ports owned in the programs' map
//! (every other cgroup's bind of them fails with `EADDRINUSE`) and its block steered (a
//! `bind(0)` of the cgroup's tasks draws from it). The programs are attached when the first
//! such reservation is made and detached when the last one ends, so a daemon whose users never
//! ask for enforcement changes nothing in the kernel. While attached, the daemon renews the
//! programs' lease ([`Settings::lease`]); past it they refuse nothing.
//!
//! Each cgroup is watched until it has no process left (`berth_os::cgroup::Watches`, one
//! inotify instance for all, in `server/background.rs`); its reservations are then released, and a cgroup the daemon
//! made is removed.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use berth_core::{Change, PortRange, Protocol, Reservation, Token};
use berth_os::enforce::{Cgroup, Programs, Refusals};
use tokio::sync::mpsc;

use crate::mirror::{Ack, Consumer, MirrorError};

/// How long the programs keep refusing binds after the daemon's last renewal, by default
/// ([`Settings::lease`]): a daemon gone for good (killed, crashed) never leaves a port refused
/// to everyone for longer.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The lease is renewed this often (a sixth of it, at most every 5 s) while the programs are
/// attached.
pub(crate) fn renew_every(lease: Duration) -> Duration {
    (lease / 6).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// The oldest kernel whose bind hooks may return 3 (bind a privileged port without
/// `CAP_NET_BIND_SERVICE`), which the programs do for owners.
const MIN_KERNEL: (u32, u32) = (5, 12);

/// The cgroup the daemon moves itself into when it attaches the programs (below the one it
/// was started in): exempt from them.
const DAEMON_LEAF: &str = "berth-daemon";

/// The name of every cgroup the daemon makes starts so (then the asker's pid and a count).
const MADE_PREFIX: &str = "berth-run-";

/// `e`, saying what was being done where; `EAGAIN` from `mkdir` is the hierarchy's
/// `cgroup.max.descendants` limit.
fn said(what: &str, dir: &Path, e: io::Error) -> io::Error {
    let hint = if e.raw_os_error() == Some(rustix::io::Errno::AGAIN.raw_os_error()) {
        " (the hierarchy's cgroup.max.descendants or cgroup.max.depth is reached: an administrator raises it, or fewer enforced commands run at once)"
    } else {
        ""
    };
    let dir = berth_core::text::printable(&dir.display().to_string()).into_owned();
    io::Error::new(e.kind(), format!("{what} ({dir}): {e}{hint}"))
}

/// The most sockets listed per owned block and address family when claims are reconciled.
const CLAIMS_LISTED: usize = 4096;

/// The most ports whose refusals are logged per lease renewal.
const LOGGED_PER_CALL: usize = 8;

/// The most cgroup directories walked to name a refused task's cgroup.
const MAX_WALK: usize = 10_000;

/// What the configuration says of enforce mode.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether requests for enforcement are honoured (`enforce = false` forbids them).
    pub allowed: bool,
    /// The cgroup v2 directory the programs are attached to: its tasks, and its descendants',
    /// are policed. `None`: the root of the hierarchy (every process of the namespace).
    pub attach: Option<PathBuf>,
    /// Where the daemon makes the cgroups of `berth run --enforce`. `None`: the daemon's own
    /// cgroup under systemd (its `Delegate=yes` subtree), else `berth` at the hierarchy's root.
    pub cgroups: Option<PathBuf>,
    /// The BPF filesystem where the programs' links are pinned, so that they outlive the
    /// daemon (mounted there if it is not one). `None`: `/sys/fs/bpf`.
    pub pins: Option<PathBuf>,
    /// How long the programs keep refusing binds after the daemon's last renewal
    /// ([`DEFAULT_LEASE`]): a restart within it keeps enforcement without a gap; a daemon gone
    /// for longer leaves nothing refused.
    pub lease: Duration,
    /// Whether `connect()` on an unbound socket of an owner cgroup is bound into its block
    /// too. Off by default: each outgoing connection would leave its port in `TIME_WAIT` and
    /// drain a small block.
    pub steer_connect: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allowed: true,
            attach: None,
            cgroups: None,
            pins: None,
            lease: DEFAULT_LEASE,
            steer_connect: false,
        }
    }
}

/// A cgroup to watch until it has no process left.
#[derive(Debug)]
pub(crate) struct Watched {
    /// Its id.
    pub(crate) id: u64,
    /// Its directory.
    pub(crate) dir: PathBuf,
}

/// A cgroup that owns reservations.
#[derive(Debug, Clone)]
struct Owner {
    cgroup: Cgroup,
    dir: PathBuf,
    /// Its path below the hierarchy's root, as people read it ("/user.slice/…").
    shown: String,
    /// Made by the daemon (`berth run --enforce`): removed once empty.
    made: bool,
}

/// One owned block.
#[derive(Debug, Clone, Copy)]
struct Owned {
    protocol: Protocol,
    range: PortRange,
    cgroup: u64,
}

#[derive(Default)]
struct State {
    programs: Option<Programs>,
    /// Where the programs are attached, while they are.
    attached_at: Option<PathBuf>,
    owned: BTreeMap<Token, Owned>,
    owners: HashMap<u64, Owner>,
    /// Names the cgroups the daemon makes.
    made: u64,
    /// The refusal counts last logged, per port.
    logged: HashMap<(Protocol, u16), u64>,
    /// The cgroup the daemon moved into (exempt), and the one it came from.
    leaf: Option<(PathBuf, PathBuf)>,
    /// Why the last attempt to attach the programs failed, until one succeeds (an exclusive
    /// program at an ancestor of the attach point, say): `berth status` says it.
    attach_failed: Option<String>,
    /// Claims the daemon made for sockets the programs did not see bind, by port: the socket's
    /// cookie (see [`Enforcer::reconcile_claims`]).
    seeded: HashMap<(Protocol, u16), u64>,
}

/// Enforce mode's state: the programs (while attached), the owned blocks, the owner cgroups.
pub(crate) struct Enforcer {
    settings: Settings,
    /// Switched off by an administrator (`berth enforce off`) until switched on or restarted.
    switched_off: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
    watch: mpsc::UnboundedSender<Watched>,
    /// The daemon's network namespace, as the programs name it (its cookie).
    netns: Result<u64, String>,
}

/// What `berth status` says of enforce mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mode {
    /// Where the programs are attached (`None`: not attached now).
    pub(crate) attached_at: Option<PathBuf>,
    /// Why a request for enforcement would be refused here, or why the last one failed to
    /// attach the programs (`None`: it would be honoured).
    pub(crate) unavailable: Option<String>,
    /// The cgroups owning reservations now.
    pub(crate) owners: usize,
}

impl Enforcer {
    /// The enforcer, and where the cgroups to watch arrive.
    pub(crate) fn new(settings: Settings) -> (Arc<Self>, mpsc::UnboundedReceiver<Watched>) {
        let (watch, watched) = mpsc::unbounded_channel();
        let netns = berth_os::enforce::netns_cookie().map_err(|e| e.to_string());
        let enforcer = Enforcer {
            settings,
            switched_off: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State::default()),
            watch,
            netns,
        };
        (Arc::new(enforcer), watched)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why enforcement cannot be honoured here, if it cannot: configuration, build, privileges,
    /// kernel, cgroup v2, network-namespace cookies.
    pub(crate) fn unavailable(&self) -> Option<String> {
        if !self.settings.allowed {
            return Some("enforce = false in the daemon's configuration".into());
        }
        if self.is_switched_off() {
            return Some("an administrator switched enforce mode off (berth enforce off; berth enforce on switches it back)".into());
        }
        if let Some(why) = berth_os::enforce::unavailable() {
            return Some(why.into());
        }
        if !rustix::process::geteuid().is_root() {
            return Some("the daemon does not run as root: loading BPF programs needs CAP_BPF and CAP_NET_ADMIN (an ordinary user's daemon cannot enforce)".into());
        }
        if let Some(why) = lacks_privileges() {
            return Some(why);
        }
        if let Some(release) = kernel_older_than(MIN_KERNEL) {
            return Some(format!(
                "the kernel is {release}; enforce mode needs Linux {}.{} or later",
                MIN_KERNEL.0, MIN_KERNEL.1
            ));
        }
        let mount = match self.hierarchy() {
            Ok(mount) => mount,
            Err(e) => return Some(e.to_string()),
        };
        if let Some(at) = self.settings.attach.as_ref().filter(|at| !at.is_dir()) {
            return Some(format!(
                "the attach point {} (enforce_attach) is not a cgroup directory; an administrator corrects enforce_attach (docs/configuration.md)",
                at.display()
            ));
        }
        // Cgroups are made there (berth run --enforce): a read-only hierarchy (a service with
        // ProtectControlGroups=yes) cannot take them.
        let parent = self.settings.cgroups.clone().unwrap_or(mount);
        let existing = parent.ancestors().find(|d| d.exists()).map(Path::to_owned);
        if let Some(dir) = existing {
            if rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK).is_err() {
                return Some(format!("the daemon cannot make cgroups in {} (read-only: a service unit with ProtectControlGroups=yes? see docs/operations.md, \"Enforce mode\")", dir.display()));
            }
        }
        if let Err(e) = &self.netns {
            return Some(e.clone());
        }
        None
    }

    /// What `berth status` shows.
    pub(crate) fn mode(&self) -> Mode {
        let state = self.state();
        Mode {
            attached_at: state.attached_at.clone(),
            unavailable: self.unavailable().or_else(|| {
                state.attach_failed.as_ref().map(|e| {
                    format!("the last attempt to attach the programs failed ({e}); the next request for enforcement tries again")
                })
            }),
            owners: state.owners.len(),
        }
    }

    /// Where the cgroup v2 hierarchy the programs police is mounted: the one holding the
    /// configured attach point, else the first mounted.
    fn hierarchy(&self) -> io::Result<PathBuf> {
        match &self.settings.attach {
            Some(dir) => berth_os::cgroup::mount_containing(dir),
            None => berth_os::cgroup::mount_point(),
        }
    }

    /// Makes a cgroup for process `pid` and moves it there: its children, and theirs, are
    /// born in it. Returns the cgroup's id. The cgroup is made inside the one the process is in
    /// (or in `enforce_cgroups`, when configured), so the process keeps the limits and controls
    /// of its unit or slice, and leaves with it when that is stopped. A process already in a
    /// cgroup the daemon made for it (its TCP block's, asking for its UDP block) stays there:
    /// one cgroup owns both. A process outside the policed subtree is refused: its ports could
    /// not be kept.
    pub(crate) fn new_cgroup_for(&self, pid: u32) -> io::Result<u64> {
        let mount = self.hierarchy()?;
        let now = cgroup_of(pid, &mount).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot read the cgroup of process {pid}"),
            )
        })?;
        if let Some(owner) = self
            .state()
            .owners
            .values()
            .find(|o| o.made && o.dir == now)
        {
            return Ok(owner.cgroup.id);
        }
        let policed = self
            .settings
            .attach
            .clone()
            .unwrap_or_else(|| mount.clone());
        let parent = match &self.settings.cgroups {
            Some(dir) => dir.clone(),
            None => now,
        };
        if !parent.starts_with(&policed) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} is outside the cgroup subtree enforce mode polices ({}): ports kept there could not be enforced",
                    parent.display(),
                    policed.display()
                ),
            ));
        }
        std::fs::create_dir_all(&parent)?;
        // An earlier daemon's cgroup may have the name (the counter starts again): the next.
        let dir = loop {
            let dir = {
                let mut state = self.state();
                state.made += 1;
                parent.join(format!("{MADE_PREFIX}{pid}-{}", state.made))
            };
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(said("making a cgroup for the command", &dir, e)),
            }
        };
        let moved =
            berth_os::cgroup::add_process(&dir, pid).and_then(|()| Cgroup::at(&mount, &dir));
        match moved {
            Ok(cgroup) => {
                self.adopt(&mount, cgroup, dir, true);
                Ok(cgroup.id)
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(said("moving your process into its cgroup", &dir, e))
            }
        }
    }

    /// An existing cgroup, by its path below the hierarchy's root ("/system.slice/x.service"):
    /// it must have a process (an empty one would end its reservation at once).
    pub(crate) fn existing_cgroup(&self, path: &str) -> io::Result<u64> {
        let mount = self.hierarchy()?;
        let dir = below(&mount, path)?;
        let policed = self
            .settings
            .attach
            .clone()
            .unwrap_or_else(|| mount.clone());
        if !dir.starts_with(&policed) || dir == mount {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the cgroup {path} is not below the subtree enforce mode polices ({}): name a cgroup inside it",
                    policed.display()
                ),
            ));
        }
        if !berth_os::cgroup::populated(&dir)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the cgroup {path} has no process: its reservation would end at once"),
            ));
        }
        let cgroup = Cgroup::at(&mount, &dir)?;
        self.adopt(&mount, cgroup, dir, false);
        Ok(cgroup.id)
    }

    fn adopt(&self, mount: &Path, cgroup: Cgroup, dir: PathBuf, made: bool) {
        // Worked out once: `list` and `why` show it for every reservation of the cgroup.
        let shown = below_root(mount, &dir);
        let mut state = self.state();
        let owner = state.owners.entry(cgroup.id).or_insert(Owner {
            cgroup,
            dir: dir.clone(),
            shown,
            made,
        });
        owner.made |= made;
        drop(state);
        // The watching task lives as long as the daemon serves.
        let _ = self.watch.send(Watched { id: cgroup.id, dir });
    }

    /// Forgets the cgroup `id` once it has no process left (its reservations were released):
    /// removed if the daemon made it.
    pub(crate) fn forget(&self, id: u64) {
        let owner = self.state().owners.remove(&id);
        if let Some(owner) = owner.filter(|o| o.made) {
            if let Err(e) = std::fs::remove_dir(&owner.dir) {
                tracing::warn!("cannot remove the cgroup {}: {e}", owner.shown);
            }
        }
    }

    /// The path of the cgroup `id` below the hierarchy's root, for people to read.
    pub(crate) fn path_of(&self, id: u64) -> Option<String> {
        Some(self.state().owners.get(&id)?.shown.clone())
    }

    /// The path below the hierarchy's root of the cgroup whose id is `id` (a refused task's):
    /// an owner's, else found by walking the policed subtree (at most [`MAX_WALK`]
    /// directories; only `berth why` asks).
    pub(crate) fn cgroup_path_by_id(&self, id: u64) -> Option<String> {
        if let Some(path) = self.path_of(id) {
            return Some(path);
        }
        let mount = self.hierarchy().ok()?;
        let start = self.state().attached_at.clone()?;
        let dir = find_cgroup(&start, id)?;
        Some(below_root(&mount, &dir))
    }

    /// Attaches the programs if they are not: before a cgroup is given a reservation, outside
    /// the table lock (loading and attaching takes milliseconds).
    pub(crate) fn ensure_attached(&self) -> io::Result<()> {
        let mut state = self.state();
        self.attach(&mut state)
    }

    fn attach(&self, state: &mut State) -> io::Result<()> {
        if state.programs.is_some() {
            return Ok(());
        }
        let attached = self.attach_now(state);
        state.attach_failed = attached.as_ref().err().map(io::Error::to_string);
        attached
    }

    /// [`Enforcer::attach`], once the programs are known not to be attached.
    fn attach_now(&self, state: &mut State) -> io::Result<()> {
        let mount = self.hierarchy()?;
        let at = self
            .settings
            .attach
            .clone()
            .unwrap_or_else(|| mount.clone());
        let pins = self.pins()?;
        // Said with the attach point, unless the error names it already (EPERM's does).
        let mut programs = Programs::attach_pinned(&at, &pins).map_err(|e| {
            if e.to_string().contains(&at.display().to_string()) {
                e
            } else {
                said("the attach point", &at, e)
            }
        })?;
        // The daemon binds for its clients (associate, hold sockets): its cgroup is exempt — a
        // leaf of its own, never one other processes share (on a host without systemd every
        // process may sit in the hierarchy's root).
        // A daemon outside the policed subtree is not policed: nothing to do.
        let own = own_cgroup(&mount).unwrap_or_else(|| mount.clone());
        if own.starts_with(&at) {
            let (leaf, came_from) = if own.file_name().is_some_and(|n| n == DAEMON_LEAF) {
                let parent = own.parent().map(Path::to_owned);
                (own, parent)
            } else {
                (own.join(DAEMON_LEAF), Some(own))
            };
            std::fs::create_dir_all(&leaf)
                .and_then(|()| berth_os::cgroup::add_process(&leaf, std::process::id()))
                .map_err(|e| said("moving the daemon into a cgroup of its own", &leaf, e))?;
            programs.exempt(berth_os::enforce::cgroup_id(&leaf)?)?;
            state.leaf = came_from.map(|from| (leaf, from));
        }
        programs.renew_lease(berth_os::enforce::monotonic_now() + self.settings.lease)?;
        tracing::info!("enforce mode: programs attached at {}", at.display());
        state.programs = Some(programs);
        // New maps, or maps an earlier daemon left: claims are made again from the kernel's
        // sockets (see `reconcile_claims`).
        state.seeded.clear();
        state.attached_at = Some(at);
        Ok(())
    }

    /// Where this daemon's links are pinned: `berth-<netns cookie>` on the BPF filesystem
    /// (mounted first if need be).
    fn pins(&self) -> io::Result<PathBuf> {
        let root = self
            .settings
            .pins
            .clone()
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"));
        berth_os::enforce::ensure_bpffs(&root)
            .map_err(|e| said("finding or mounting the BPF filesystem for pins", &root, e))?;
        let netns = self.netns.clone().map_err(io::Error::other)?;
        Ok(root.join(format!("berth-{netns}")))
    }

    /// After the restore at start-up: pins an earlier daemon left, when no restored
    /// reservation needed the programs, are removed (its programs detach).
    pub(crate) fn after_restore(&self) {
        // Attached for restored reservations, with the earlier daemon's maps: what they name
        // beyond the restored table goes (released while no daemon ran).
        {
            let mut state = self.state();
            if state.programs.is_some() {
                let owned: Vec<((Protocol, u16), u64)> = state
                    .owned
                    .values()
                    .flat_map(|o| o.range.ports().map(move |p| ((o.protocol, p), o.cgroup)))
                    .collect();
                if let (Ok(netns), Some(programs)) = (self.netns.clone(), state.programs.as_mut()) {
                    if let Err(e) = programs.retain(netns, &owned) {
                        tracing::error!("enforce mode: cannot clear what the earlier daemon's maps hold beyond the restored reservations: {e}");
                    }
                }
                return;
            }
        }
        // Also where enforcement is now unavailable (enforce = false): an earlier daemon's
        // programs are not left attached.
        let root = self
            .settings
            .pins
            .clone()
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"));
        let Ok(netns) = self.netns.clone() else {
            return;
        };
        let dir = root.join(format!("berth-{netns}"));
        if dir.exists() {
            match berth_os::enforce::remove_pins(&dir) {
                Ok(()) => tracing::info!(
                    "enforce mode: removed the programs an earlier daemon left pinned"
                ),
                Err(e) => tracing::warn!(
                    "enforce mode: cannot remove earlier pins in {}: {e}",
                    dir.display()
                ),
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }

    /// Takes back, after a restart, the cgroup `id` an earlier daemon's reservation was bound
    /// to: `false` when it is gone or has no process left (the reservation then ends).
    pub(crate) fn readopt(&self, id: u64) -> bool {
        let Ok(mount) = self.hierarchy() else {
            return false;
        };
        let parent = self.settings.cgroups.clone();
        let at = self
            .settings
            .attach
            .clone()
            .unwrap_or_else(|| mount.clone());
        let found = parent
            .iter()
            .chain([&at])
            .find_map(|start| find_cgroup(start, id));
        let Some(dir) = found else {
            return false;
        };
        let made = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(MADE_PREFIX));
        if !berth_os::cgroup::populated(&dir).unwrap_or(false) {
            // Emptied while no daemon ran: one the daemon made is removed now.
            if made {
                let _ = std::fs::remove_dir(&dir);
            }
            return false;
        }
        let Ok(cgroup) = Cgroup::at(&mount, &dir) else {
            return false;
        };
        self.adopt(&mount, cgroup, dir, made);
        true
    }

    fn is_switched_off(&self) -> bool {
        self.switched_off.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Switches enforcement off (the programs detached and unpinned now; the owned blocks
    /// remembered) or on again (attached, and every reservation in `owned` — the table's
    /// cgroup-owned ones — kept again). Called with the table locked.
    pub(crate) fn switch(&self, on: bool, owned: &[Reservation]) -> io::Result<()> {
        self.switched_off
            .store(!on, std::sync::atomic::Ordering::Relaxed);
        // An administrator's switch starts afresh: an earlier failed attach is not reported
        // any more (the next request tries again, and says why if it fails).
        self.state().attach_failed = None;
        if !on {
            let mut state = self.state();
            state.seeded.clear();
            if let Some(mut programs) = state.programs.take() {
                programs.unpin()?;
                tracing::warn!("enforce mode switched off by an administrator: programs detached; cgroup-owned reservations are kept by the reserved-ports list only");
            }
            state.attached_at = None;
            return Ok(());
        }
        for r in owned {
            if let Some(id) = r.cgroup() {
                self.own(r, id)?;
            }
        }
        Ok(())
    }

    /// At a clean stop: moves the daemon back to the cgroup it came from and removes the leaf
    /// it had moved into, so that no empty cgroup is left behind (the pinned programs' exempt
    /// entry then names none; the next daemon exempts its own).
    pub(crate) fn leave_leaf(&self) {
        let Some((leaf, from)) = self.state().leaf.take() else {
            return;
        };
        let back = berth_os::cgroup::add_process(&from, std::process::id())
            .and_then(|()| std::fs::remove_dir(&leaf));
        if let Err(e) = back {
            tracing::warn!(
                "enforce mode: cannot remove the daemon's cgroup {}: {e}",
                leaf.display()
            );
        }
    }

    /// Claims, for the owners' sockets the programs did not see bind, the ports they hold —
    /// sockets bound before the programs were attached (`berth enforce on`, a daemon that
    /// started with fresh maps) or bound by the daemon for its clients — so that an owner's
    /// `bind(0)` is not steered onto a port one of them holds (it would fail with
    /// `EADDRINUSE`); and gives those claims back once their socket is gone (the programs see
    /// no release of a socket whose bind they did not see). One socket dump per owned block:
    /// run it off the serving threads, after `berth enforce on` and with every lease renewal.
    pub(crate) fn reconcile_claims(&self) {
        let Ok(netns) = self.netns.clone() else {
            return;
        };
        let blocks: Vec<(Protocol, PortRange)> = {
            let state = self.state();
            if state.programs.is_none() {
                return;
            }
            state
                .owned
                .values()
                .map(|o| (o.protocol, o.range))
                .collect()
        };
        // The live sockets on the owned ports, by port (no lock held while the kernel is asked).
        let mut live: HashMap<(Protocol, u16), Vec<u64>> = HashMap::new();
        for (protocol, range) in blocks {
            let sockets = match berth_os::diag::sockets_in(
                protocol,
                (range.start(), range.end()),
                CLAIMS_LISTED,
            ) {
                Ok(sockets) => sockets,
                Err(e) => {
                    tracing::debug!(
                        "enforce mode: cannot list the sockets of {protocol} {range}: {e}"
                    );
                    continue;
                }
            };
            for s in sockets {
                if s.inode != 0 && s.cookie != 0 {
                    live.entry((protocol, s.local.port()))
                        .or_default()
                        .push(s.cookie);
                }
            }
        }
        let mut state = self.state();
        let State {
            programs, seeded, ..
        } = &mut *state;
        let Some(programs) = programs else {
            return;
        };
        seeded.retain(|&(protocol, port), cookie| {
            let alive = live
                .get(&(protocol, port))
                .is_some_and(|cookies| cookies.contains(cookie));
            if !alive {
                if let Err(e) = programs.give_back(netns, (protocol, port), *cookie) {
                    tracing::warn!("enforce mode: cannot give a claim back: {e}");
                }
            }
            alive
        });
        for (&(protocol, port), cookies) in &live {
            if seeded.contains_key(&(protocol, port)) {
                continue;
            }
            let Some(&cookie) = cookies.first() else {
                continue;
            };
            match programs.claim(netns, (protocol, port), cookie) {
                Ok(true) => {
                    seeded.insert((protocol, port), cookie);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("enforce mode: cannot claim {protocol} port {port}: {e}"),
            }
        }
    }

    /// How often the lease is renewed.
    pub(crate) fn renew_every(&self) -> Duration {
        renew_every(self.settings.lease)
    }

    /// Renews the lease while the programs are attached.
    pub(crate) fn renew(&self) {
        let mut state = self.state();
        if let Some(programs) = &mut state.programs {
            if let Err(e) =
                programs.renew_lease(berth_os::enforce::monotonic_now() + self.settings.lease)
            {
                tracing::error!("enforce mode: cannot renew the programs' lease: {e}");
            }
        }
    }

    /// Logs the binds the programs refused since the last call: a line per port (at most
    /// [`LOGGED_PER_CALL`], then how many more), with the count and the process refused last.
    /// Called with each lease renewal, so a bind loop floods nothing.
    pub(crate) fn log_refusals(&self) {
        let Ok(netns) = self.netns.clone() else {
            return;
        };
        let mut state = self.state();
        let Some(programs) = state.programs.as_mut() else {
            state.logged.clear();
            return;
        };
        let seen = match programs.all_refusals(netns) {
            Ok(seen) => seen,
            Err(e) => {
                tracing::debug!("enforce mode: cannot read the refusals: {e}");
                return;
            }
        };
        let mut news = Vec::new();
        for ((protocol, port), refusals) in seen {
            let before = state.logged.insert((protocol, port), refusals.count);
            let new = refusals.count.saturating_sub(before.unwrap_or(0));
            if new > 0 {
                news.push((protocol, port, new, refusals));
            }
        }
        let owner_of = |protocol: Protocol, port: u16| {
            state
                .owned
                .values()
                .find(|o| o.protocol == protocol && o.range.contains(port))
                .and_then(|o| state.owners.get(&o.cgroup))
                .map(|o| o.shown.clone())
                .unwrap_or_else(|| "a cgroup".to_owned())
        };
        for (protocol, port, new, refusals) in news.iter().take(LOGGED_PER_CALL) {
            let last = &refusals.last;
            tracing::warn!(
                "enforce mode refused {new} {} of {protocol} {port} (reserved by {}): the last by pid {} ({}, uid {}); `berth why --{protocol} {port}` says more",
                if *new == 1 { "bind" } else { "binds" },
                owner_of(*protocol, *port),
                last.pid,
                berth_core::Owner::printable_command(&last.command),
                last.uid
            );
        }
        if news.len() > LOGGED_PER_CALL {
            tracing::warn!(
                "enforce mode refused binds of {} more ports",
                news.len() - LOGGED_PER_CALL
            );
        }
    }

    /// What the programs recorded of refused binds of `port`.
    pub(crate) fn refusals(&self, protocol: Protocol, port: u16) -> Option<Refusals> {
        let netns = *self.netns.as_ref().ok()?;
        let mut state = self.state();
        let programs = state.programs.as_mut()?;
        programs.refusals(netns, (protocol, port)).ok().flatten()
    }

    fn own(&self, r: &Reservation, id: u64) -> io::Result<()> {
        let netns = self.netns.clone().map_err(io::Error::other)?;
        let mut state = self.state();
        let cgroup =
            state.owners.get(&id).map(|o| o.cgroup).ok_or_else(|| {
                io::Error::other(format!("cgroup {id} is not known to the daemon"))
            })?;
        let owned = Owned {
            protocol: r.protocol,
            range: r.range,
            cgroup: id,
        };
        if self.is_switched_off() || !self.settings.allowed {
            // Kept in the books (for `berth enforce on`); nothing attached.
            state.owned.insert(r.token, owned);
            return Ok(());
        }
        self.attach(&mut state)?;
        let State {
            programs,
            owned: all,
            ..
        } = &mut *state;
        let Some(programs) = programs.as_mut() else {
            return Err(io::Error::other("the programs are not attached"));
        };
        let made = (|| {
            for port in r.range.ports() {
                programs.own(netns, (r.protocol, port), cgroup)?;
            }
            programs.steer(
                netns,
                r.protocol,
                id,
                (r.range.start(), r.range.count()),
                self.settings.steer_connect,
            )
        })();
        if let Err(e) = made {
            for port in r.range.ports() {
                let _ = programs.disown(netns, (r.protocol, port));
            }
            return Err(e);
        }
        all.insert(r.token, owned);
        Ok(())
    }

    fn disown(&self, token: Token) {
        let Ok(netns) = self.netns.clone() else {
            return;
        };
        let mut state = self.state();
        let Some(gone) = state.owned.remove(&token) else {
            return;
        };
        // Another block of the same cgroup and protocol is steered instead, if there is one.
        let next = state
            .owned
            .values()
            .find(|o| o.cgroup == gone.cgroup && o.protocol == gone.protocol)
            .copied();
        for port in gone.range.ports() {
            state.logged.remove(&(gone.protocol, port));
        }
        let empty = state.owned.is_empty();
        if let Some(programs) = &mut state.programs {
            for port in gone.range.ports() {
                if let Err(e) = programs.disown(netns, (gone.protocol, port)) {
                    tracing::error!(
                        "enforce mode: cannot give back {} {port}: {e}",
                        gone.protocol
                    );
                }
            }
            let steered = match next {
                Some(o) => programs.steer(
                    netns,
                    o.protocol,
                    o.cgroup,
                    (o.range.start(), o.range.count()),
                    self.settings.steer_connect,
                ),
                None => programs.unsteer(netns, gone.protocol, gone.cgroup),
            };
            if let Err(e) = steered {
                tracing::error!("enforce mode: cannot steer cgroup {}: {e}", gone.cgroup);
            }
        }
        if empty {
            state.seeded.clear();
            if let Some(mut programs) = state.programs.take() {
                if let Err(e) = programs.unpin() {
                    tracing::error!("enforce mode: cannot unpin the programs: {e}");
                }
                if let Ok(pins) = self.pins() {
                    let _ = std::fs::remove_dir(pins);
                }
                tracing::info!("enforce mode: no cgroup owns a reservation; programs detached");
                state.attached_at = None;
            }
        }
    }
}

/// The changes of the table, as enforce mode follows them.
pub(crate) struct EnforceConsumer(pub(crate) Arc<Enforcer>);

impl Consumer for EnforceConsumer {
    fn name(&self) -> &'static str {
        "enforce mode"
    }

    fn accept(&self, change: &Change) -> Ack {
        match change {
            Change::Rebound { before, after } => match (before.cgroup(), after.cgroup()) {
                (None, Some(id)) => {
                    if let Err(e) = self.0.own(after, id) {
                        return Ack::Failed(MirrorError::Enforce(Arc::new(e)));
                    }
                }
                (Some(_), None) => self.0.disown(after.token),
                _ => {}
            },
            Change::Released { reservation, .. } if reservation.cgroup().is_some() => {
                self.0.disown(reservation.token);
            }
            // Taken back after a restart (its cgroup re-adopted first): owned again, at once.
            Change::Restored(r) => {
                if let Some(id) = r.cgroup() {
                    if let Err(e) = self.0.own(r, id) {
                        tracing::error!(
                            "enforce mode: cannot keep {} {} for its cgroup after the restart: {e}",
                            r.protocol,
                            r.range
                        );
                    }
                }
            }
            _ => {}
        }
        Ack::Done
    }
}

/// `dir` as a path below the root of the hierarchy mounted at `mount` ("/a/b").
fn below_root(mount: &Path, dir: &Path) -> String {
    let below = dir.strip_prefix(mount).unwrap_or(dir);
    // Shown to people: a delegated subtree's user names its cgroups as it likes, so they are
    // printable as command names are.
    berth_core::text::printable(&format!("/{}", below.display())).into_owned()
}

/// The cgroup directory at or below `start` whose id is `id`, walking at most [`MAX_WALK`]
/// directories.
fn find_cgroup(start: &Path, id: u64) -> Option<PathBuf> {
    let mut queue = std::collections::VecDeque::from([start.to_owned()]);
    let mut walked = 0;
    while let Some(dir) = queue.pop_front() {
        walked += 1;
        if walked > MAX_WALK {
            return None;
        }
        if berth_os::enforce::cgroup_id(&dir).ok() == Some(id) {
            return Some(dir);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        queue.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    None
}

/// `path` (below the hierarchy's root, "/a/b") as a directory of the hierarchy mounted at
/// `mount`: absolute, no `..`, an existing cgroup.
fn below(mount: &Path, path: &str) -> io::Result<PathBuf> {
    let invalid =
        |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{path:?}: {why}"));
    let Some(relative) = path.strip_prefix('/') else {
        return Err(invalid("a cgroup's path starts with / (the root of the cgroup v2 hierarchy), as /proc/PID/cgroup shows it"));
    };
    let relative = Path::new(relative);
    if relative
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(invalid("a cgroup's path has no . or .. parts"));
    }
    let dir = mount.join(relative);
    if !dir.join("cgroup.procs").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no cgroup {} (looked in {})",
                berth_core::text::printable(path),
                berth_core::text::printable(&dir.display().to_string())
            ),
        ));
    }
    Ok(dir)
}

/// The daemon's own cgroup v2 directory.
fn own_cgroup(mount: &Path) -> Option<PathBuf> {
    cgroup_file(&std::fs::read_to_string("/proc/self/cgroup").ok()?, mount)
}

/// Process `pid`'s cgroup v2 directory.
fn cgroup_of(pid: u32, mount: &Path) -> Option<PathBuf> {
    cgroup_file(
        &std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?,
        mount,
    )
}

/// The cgroup v2 directory a `/proc/PID/cgroup` text names (its `0::/path` line).
fn cgroup_file(text: &str, mount: &Path) -> Option<PathBuf> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(path.trim_start_matches('/')))
}

/// Why the daemon may not load and attach cgroup-BPF programs, if it may not: it must hold
/// `CAP_BPF` (or `CAP_SYS_ADMIN`, before Linux 5.8) and `CAP_NET_ADMIN`, in the initial user
/// namespace (the kernel loads no cgroup program from any other).
fn lacks_privileges() -> Option<String> {
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_BPF: u64 = 39;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let caps = berth_os::proc::effective_caps_from_status(&status)?;
    let has = |cap: u64| caps & (1 << cap) != 0;
    if !(has(CAP_BPF) || has(CAP_SYS_ADMIN)) || !has(CAP_NET_ADMIN) {
        return Some("the daemon lacks CAP_BPF and CAP_NET_ADMIN, which loading and attaching cgroup-BPF programs needs (a service unit must grant them: see docs/operations.md, \"Enforce mode\")".into());
    }
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    let initial = map.split_whitespace().collect::<Vec<_>>().as_slice() == ["0", "0", "4294967295"];
    (!initial).then(|| {
        "the daemon runs in a user namespace of its own, where the kernel loads no cgroup-BPF program".to_owned()
    })
}

/// The kernel's release (`/proc/sys/kernel/osrelease`) when it is older than `(major, minor)`.
fn kernel_older_than((major, minor): (u32, u32)) -> Option<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim().to_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let found = (parts.next()?, parts.next()?);
    (found < (major, minor)).then_some(release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_stay_below_the_hierarchy() {
        let mount = Path::new("/nonexistent-berth-test");
        assert!(below(mount, "system.slice")
            .unwrap_err()
            .to_string()
            .contains("starts with /"));
        assert!(below(mount, "/a/../b")
            .unwrap_err()
            .to_string()
            .contains(".."));
        assert_eq!(
            below(mount, "/a").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_cgroup_is_shown_as_printable_text() {
        let mount = Path::new("/sys/fs/cgroup");
        let dir = mount.join("user.slice/\u{1b}[2J\nforged");
        assert_eq!(below_root(mount, &dir), "/user.slice/?[2J?forged");
        assert_eq!(below_root(mount, &mount.join("a/b")), "/a/b");
    }
}
