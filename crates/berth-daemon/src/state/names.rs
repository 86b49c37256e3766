//! Names: the block each user's runtime name was last given (remembered in the database and
//! given again while free), looking a name up, waiting for one, and a user's list of names.
//!
//! The memory is a convenience, bounded per user (`max_names_per_user`: the name given least
//! recently is forgotten first) and in time (`forget_names_after`, for names without a live
//! reservation). Its blocks are passed by in other wildcard picks while other ports fit
//! (`Table::keep_for_name`), so that a name usually finds its block free.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_core::{ErrorKind, Name, NameScope, PortRange, Protocol, Requester, Reservation, Table};
use berth_protocol::{NameInfo, Response, MAX_WAIT_MS};
use berth_store::NameRow;

use super::{error, info, now_ms, Shared};

/// What a name was last given.
#[derive(Debug, Clone, Copy)]
struct Memory {
    range: PortRange,
    last_used_ms: u64,
}

/// Every user's remembered names.
#[derive(Debug)]
pub(crate) struct NameBook {
    /// uid → (name, protocol) → what it was given.
    memory: HashMap<u32, BTreeMap<(Name, Protocol), Memory>>,
    max_per_user: usize,
    forget_after_ms: u64,
}

/// What remembering a grant changed, for the store and the client.
pub(crate) struct Remembered {
    /// The block the name had before, when it was another.
    pub(crate) moved_from: Option<PortRange>,
    /// Rows to write, and names (uid, name, protocol) to delete.
    pub(crate) write: Vec<NameRow>,
    pub(crate) delete: Vec<(u32, Name, Protocol)>,
}

impl NameBook {
    /// An empty book with these bounds.
    pub(crate) fn new(max_per_user: usize, forget_after: Duration) -> Self {
        NameBook {
            memory: HashMap::new(),
            max_per_user: max_per_user.max(1),
            forget_after_ms: u64::try_from(forget_after.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Takes the stored rows at start-up (after the table is restored, so that live names are
    /// known), keeping their blocks out of other wildcard picks; returns the rows forgotten for
    /// age or over a user's count, to delete.
    pub(crate) fn load(
        &mut self,
        rows: Vec<NameRow>,
        table: &mut Table,
        now: u64,
    ) -> Vec<(u32, Name, Protocol)> {
        for row in rows {
            let memory = Memory {
                range: row.range,
                last_used_ms: row.last_used_ms,
            };
            table.keep_for_name(row.protocol, row.range);
            let mine = self.memory.entry(row.uid).or_default();
            if let Some(old) = mine.insert((row.name, row.protocol), memory) {
                table.unkeep_for_name(row.protocol, old.range);
            }
        }
        let uids: Vec<u32> = self.memory.keys().copied().collect();
        let mut forgotten = Vec::new();
        for uid in uids {
            forgotten.extend(self.bound_user(uid, table, now));
        }
        forgotten.sort();
        forgotten.dedup();
        forgotten
    }

    /// The block `uid`'s `name` was last given in `protocol`.
    pub(crate) fn remembered(
        &self,
        uid: u32,
        name: &Name,
        protocol: Protocol,
    ) -> Option<PortRange> {
        self.memory
            .get(&uid)?
            .get(&(name.clone(), protocol))
            .map(|m| m.range)
    }

    /// Notes that `r`, just granted with a name, is that name's block now.
    pub(crate) fn remember(&mut self, r: &Reservation, table: &mut Table, now: u64) -> Remembered {
        let mut done = Remembered {
            moved_from: None,
            write: Vec::new(),
            delete: Vec::new(),
        };
        let (Some(name), NameScope::User(uid)) = (&r.name, r.name_scope()) else {
            return done;
        };
        let before = self.memory.entry(uid).or_default().insert(
            (name.clone(), r.protocol),
            Memory {
                range: r.range,
                last_used_ms: now,
            },
        );
        match before {
            Some(old) if old.range == r.range => {}
            Some(old) => {
                table.unkeep_for_name(r.protocol, old.range);
                table.keep_for_name(r.protocol, r.range);
                done.moved_from = Some(old.range);
            }
            None => table.keep_for_name(r.protocol, r.range),
        }
        done.write.push(NameRow {
            uid,
            name: name.clone(),
            protocol: r.protocol,
            range: r.range,
            last_used_ms: now,
        });
        done.delete = self.bound_user(uid, table, now);
        done
    }

    /// Forgets `uid`'s names that were not given for too long and have no live reservation,
    /// then the least recently given past the user's count; returns what it forgot.
    fn bound_user(&mut self, uid: u32, table: &mut Table, now: u64) -> Vec<(u32, Name, Protocol)> {
        let mut mine: Vec<((u32, Name, Protocol), Memory)> = self
            .memory
            .get(&uid)
            .into_iter()
            .flatten()
            .map(|((name, protocol), m)| ((uid, name.clone(), *protocol), *m))
            .collect();
        let live = |table: &Table, (uid, name, protocol): &(u32, Name, Protocol)| {
            table
                .find_name(NameScope::User(*uid), *protocol, name)
                .is_some()
        };
        let mut forgotten = Vec::new();
        mine.retain(|(key, memory)| {
            let stale = now.saturating_sub(memory.last_used_ms) > self.forget_after_ms;
            if stale && !live(table, key) {
                forgotten.push(key.clone());
                false
            } else {
                true
            }
        });
        // A name counts once however many protocols it has (its entries are adjacent: the
        // map is ordered by name, then protocol).
        let mut names: Vec<(u64, Name)> = Vec::new();
        for ((_, name, _), memory) in &mine {
            match names.last_mut() {
                Some((last, n)) if n == name => *last = (*last).max(memory.last_used_ms),
                _ => names.push((memory.last_used_ms, name.clone())),
            }
        }
        names.sort();
        let over = names.len().saturating_sub(self.max_per_user);
        for (_, name) in names.into_iter().take(over) {
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                let known = self
                    .memory
                    .get(&uid)
                    .is_some_and(|mine| mine.contains_key(&(name.clone(), protocol)));
                if known {
                    forgotten.push((uid, name.clone(), protocol));
                }
            }
        }
        for (uid, name, protocol) in &forgotten {
            let gone = self
                .memory
                .get_mut(uid)
                .and_then(|mine| mine.remove(&(name.clone(), *protocol)));
            if let Some(memory) = gone {
                table.unkeep_for_name(*protocol, memory.range);
            }
        }
        self.memory.retain(|_, mine| !mine.is_empty());
        forgotten
    }

    /// Forgets `uid`'s `name` in both protocols; returns what it was.
    pub(crate) fn forget(&mut self, uid: u32, name: &Name, table: &mut Table) -> Vec<NameInfo> {
        let mut gone = Vec::new();
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let memory = self
                .memory
                .get_mut(&uid)
                .and_then(|mine| mine.remove(&(name.clone(), protocol)));
            if let Some(memory) = memory {
                table.unkeep_for_name(protocol, memory.range);
                gone.push(name_info(name, protocol, memory, table, uid));
            }
        }
        self.memory.retain(|_, mine| !mine.is_empty());
        gone
    }

    /// `uid`'s names, by name then protocol.
    pub(crate) fn list(&self, uid: u32, table: &Table) -> Vec<NameInfo> {
        self.memory
            .get(&uid)
            .into_iter()
            .flatten()
            .map(|((name, protocol), memory)| name_info(name, *protocol, *memory, table, uid))
            .collect()
    }
}

fn name_info(name: &Name, protocol: Protocol, memory: Memory, table: &Table, uid: u32) -> NameInfo {
    NameInfo {
        name: name.to_string(),
        protocol,
        range: memory.range,
        last_used_ms: memory.last_used_ms,
        live: table
            .find_name(NameScope::User(uid), protocol, name)
            .is_some(),
    }
}

/// A name from a request, or the answer that refuses it.
pub(super) fn parse_name(text: &str) -> Result<Name, Box<Response>> {
    match Name::parse(text) {
        Ok(Some(name)) => Ok(name),
        Ok(None) => Err(Box::new(error(
            ErrorKind::InvalidArgument,
            "no name given; names look like shop/web".into(),
        ))),
        Err(e) => Err(Box::new(error(e.kind(), e.to_string()))),
    }
}

/// How often a wait for a bound port asks the kernel again, at least (the table's changes
/// wake a wait for a name at once).
const BOUND_POLL: Duration = Duration::from_millis(100);

/// How many kernel looks run at once, daemon-wide (each is two sock_diag walks per
/// reservation of the name, filtered to its block's ports, whatever the block's size): one,
/// so that waits never take more than a thread, however many there are.
pub(crate) const KERNEL_LOOKS: usize = 1;

/// Recent kernel looks: a block, when it was looked at, and whether a socket was bound to it.
pub(crate) type Looks =
    std::collections::HashMap<(Protocol, PortRange), (tokio::time::Instant, bool)>;

impl Shared {
    /// The live reservations of `name` in the scope the request names (see
    /// `Request::LookupName`), TCP first.
    fn named(&self, user: Option<u32>, name: &Name, asker: &Requester) -> Vec<Reservation> {
        let table = self.table();
        let scopes: Vec<NameScope> = match user {
            Some(uid) => vec![NameScope::User(uid)],
            None => vec![NameScope::User(asker.process.uid), NameScope::Host],
        };
        for scope in scopes {
            let found: Vec<Reservation> = [Protocol::Tcp, Protocol::Udp]
                .into_iter()
                .filter_map(|p| table.find_name(scope, p, name).cloned())
                .collect();
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    }

    pub(super) fn lookup_name(&self, user: Option<u32>, name: &str, asker: &Requester) -> Response {
        let name = match parse_name(name) {
            Ok(name) => name,
            Err(refusal) => return *refusal,
        };
        let found = self.named(user, &name, asker);
        if found.is_empty() {
            return not_named(user, &name, None);
        }
        self.answer_named(&found, asker)
    }

    fn answer_named(&self, found: &[Reservation], asker: &Requester) -> Response {
        let now = now_ms();
        let table = self.table();
        Response::Named(
            found
                .iter()
                .map(|r| {
                    let mut shown = info(r, &asker.process, asker.is_admin, now);
                    shown.bound = table.bound_list(r.token);
                    shown
                })
                .collect(),
        )
    }

    /// Answers once the name exists (and, with `bound`, once each of its reservations has a
    /// socket bound to one of its ports other than the daemon's hold sockets), or not-found
    /// after `timeout_ms`. Holds no turn while it waits: it wakes on every change of the
    /// table, and asks the kernel about bound sockets every [`BOUND_POLL`].
    pub(crate) async fn wait_name(
        &self,
        (user, name, bound, timeout_ms): (Option<u32>, &str, bool, u32),
        asker: &Requester,
    ) -> Response {
        let name = match parse_name(name) {
            Ok(name) => name,
            Err(refusal) => return *refusal,
        };
        let timeout = Duration::from_millis(u64::from(timeout_ms.min(MAX_WAIT_MS)));
        let deadline = tokio::time::Instant::now() + timeout;
        // When the kernel may be asked again: at most every poll period, however often the
        // table changes (a change re-reads the table only, which costs nothing).
        let mut next_kernel_look = tokio::time::Instant::now();
        loop {
            // Registered before looking, so that a change between the look and the wait wakes it.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let found = self.named(user, &name, asker);
            if !found.is_empty() && (!bound || self.all_bound_in_table(&found)) {
                return self.answer_named(&found, asker);
            }
            if !found.is_empty() && tokio::time::Instant::now() >= next_kernel_look {
                if self.all_bound_on_host(&found, deadline).await {
                    return self.answer_named(&found, asker);
                }
                next_kernel_look = tokio::time::Instant::now() + BOUND_POLL;
            }
            let wake = if bound && !found.is_empty() {
                next_kernel_look.min(deadline)
            } else {
                deadline
            };
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let what = if found.is_empty() { None } else { Some(()) };
                return not_named(user, &name, Some((timeout, what.is_some())));
            }
        }
    }

    /// Whether each of `found` has a port bound through associate (the table knows at once).
    fn all_bound_in_table(&self, found: &[Reservation]) -> bool {
        let table = self.table();
        found.iter().all(|r| !table.bound_list(r.token).is_empty())
    }

    /// Whether each of `found` has a socket other than the daemon's hold sockets bound to one
    /// of its ports (not only `TIME_WAIT`), as the kernel lists them; a bind through associate
    /// counts at once. The kernel is asked off the serving threads, by a few waits at a time
    /// ([`KERNEL_LOOKS`]): however many wait, the threads that associate and `why` need stay
    /// free.
    async fn all_bound_on_host(
        &self,
        found: &[Reservation],
        deadline: tokio::time::Instant,
    ) -> bool {
        let unbound: Vec<(Protocol, PortRange)> = {
            let table = self.table();
            found
                .iter()
                .filter(|r| table.bound_list(r.token).is_empty())
                .map(|r| (r.protocol, r.range))
                .collect()
        };
        // What a look made for another wait of the same block a moment ago is the answer
        // here too: many waits on one name cost the kernel one look per poll period.
        let mut unknown = Vec::with_capacity(unbound.len());
        {
            let looks = self.looks();
            for block in unbound {
                match looks.get(&block) {
                    Some(&(at, bound)) if at.elapsed() < BOUND_POLL => {
                        if !bound {
                            return false;
                        }
                    }
                    _ => unknown.push(block),
                }
            }
        }
        let unbound = unknown;
        if unbound.is_empty() {
            return true;
        }
        // A turn, for no longer than the wait has: past its deadline the wait answers anyway.
        let turn = tokio::time::timeout_at(deadline, self.kernel_looks.clone().acquire_owned());
        let Ok(Ok(turn)) = turn.await else {
            return false;
        };
        let holds = self.holds.clone();
        let asked = tokio::task::spawn_blocking(move || {
            // The turn ends with the look, even when the wait that asked has gone meanwhile.
            let _turn = turn;
            // Off the serving threads: the daemon's own hold sockets, which do not count.
            let berths = holds.inodes();
            unbound
                .into_iter()
                .map(|(protocol, range)| {
                    // Every hold socket of the block, and some room for the others.
                    let limit = usize::from(range.count()) * 2 + 64;
                    let bound = crate::host::diag::sockets_in(
                        protocol,
                        (range.start(), range.end()),
                        limit,
                    )
                    .unwrap_or_default()
                    .iter()
                    .any(|s| !s.is_time_wait() && !berths.contains(&s.inode));
                    ((protocol, range), bound)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(asked) = asked else {
            return false;
        };
        let mut looks = self.looks();
        // tokio's clock, as the waits' deadlines (paused in tests, like them).
        let now = tokio::time::Instant::now();
        // Old looks go: the map holds a moment's worth.
        looks.retain(|_, (at, _)| at.elapsed() < BOUND_POLL);
        for &(block, bound) in &asked {
            looks.insert(block, (now, bound));
        }
        asked.iter().all(|&(_, bound)| bound)
    }

    /// Names `port`, bound already by a process of the asker's user (see
    /// `Request::Publish`): the socket bound to it and the process holding it come from the
    /// kernel, never from the asker's word.
    pub(super) async fn publish_port(
        &self,
        name: &str,
        protocol: Protocol,
        port: u16,
        asker: &Requester,
    ) -> Response {
        let name = match parse_name(name) {
            Ok(name) => name,
            Err(refusal) => return *refusal,
        };
        let Ok(range) = PortRange::new(port, 1) else {
            return error(
                ErrorKind::InvalidArgument,
                "port 0 is never bound; give the port your program has bound".into(),
            );
        };
        let berths = self.holds.inodes();
        let asker_pid = asker.process.pid;
        let found =
            tokio::task::spawn_blocking(move || bound_by(protocol, port, &berths, asker_pid))
                .await
                .unwrap_or(Err(Unbound::Unknown));
        let owner = match found {
            Ok(owner) => owner,
            Err(Unbound::Nothing) => {
                return error(
                    ErrorKind::NotFound,
                    format!("no socket is bound to {protocol} port {port} on this host; publish a port once your program has bound it (or reserve one with `berth run --name {name}`)"),
                )
            }
            Err(Unbound::Unknown) => {
                return error(
                    ErrorKind::PermissionDenied,
                    format!("{protocol} port {port} is bound, but the daemon cannot see by which process every socket on it is held (another user's, which a daemon of your own user cannot read, or too many sockets); only a port of your own processes can be published"),
                )
            }
            Err(Unbound::Shared) => {
                return error(
                    ErrorKind::PermissionDenied,
                    format!("{protocol} port {port} has sockets of processes of more than one user; a port is published only when its sockets are all one user's"),
                )
            }
        };
        if owner.uid != asker.process.uid && !asker.is_admin {
            return error(
                ErrorKind::PermissionDenied,
                format!("{protocol} port {port} is bound by a process of another user; only its own user (or an administrator) may publish it"),
            );
        }
        let (published, pending) = {
            let mut table = self.table();
            let limits = self.constraints(&table, 0, asker.is_admin);
            match table.publish(
                protocol,
                range,
                (owner, name),
                (limits, now_ms()),
                &mut super::OsTokens,
            ) {
                Ok(change) => {
                    let r = change.reservation().cloned();
                    (r, self.publish(&mut table, vec![change]))
                }
                Err(e) => {
                    let e = e.seen_by(asker.process.uid, asker.is_admin);
                    // A reservation over the port: there is nothing to publish, it has an
                    // owner in berth already.
                    if let berth_core::AcquireError::Conflict { holder, .. } = &e {
                        return error(
                            e.kind(),
                            format!("{protocol} port {port} is reserved already: reservation {} of {}; a reserved port is named when it is reserved (`berth run --name`), not published", holder.token, holder.holder_description()),
                        );
                    }
                    return error(e.kind(), e.to_string());
                }
            }
        };
        if let Err(why) = self.settle(pending).await {
            return error(
                ErrorKind::Unavailable,
                format!("the daemon could not record the name ({why}); nothing was published — see the daemon's log, then retry"),
            );
        }
        let Some(r) = published else {
            return error(ErrorKind::Unavailable, "the grant went missing".into());
        };
        self.remember_names(std::slice::from_ref(&r));
        Response::Acquired(info(&r, &asker.process, asker.is_admin, now_ms()))
    }

    pub(super) fn list_names(&self, asker: &Requester) -> Response {
        // The table's lock first, always (see `Shared::names`).
        let table = self.table();
        let listed = self.names().list(asker.process.uid, &table);
        Response::Names(listed)
    }

    pub(super) fn forget_name(&self, name: &str, asker: &Requester) -> Response {
        let name = match parse_name(name) {
            Ok(name) => name,
            Err(refusal) => return *refusal,
        };
        let uid = asker.process.uid;
        let gone = {
            let mut table = self.table();
            self.names().forget(uid, &name, &mut table)
        };
        if gone.is_empty() {
            return error(
                ErrorKind::NotFound,
                format!("you have no remembered name {name}; `berth names` lists yours"),
            );
        }
        for g in &gone {
            self.store.forget_name(uid, name.clone(), g.protocol);
        }
        Response::Names(gone)
    }

    /// Notes the names of `granted` in the memory and the database; returns the block each
    /// had before, where it moved.
    pub(super) fn remember_names(&self, granted: &[Reservation]) -> Vec<Option<PortRange>> {
        let now = now_ms();
        let mut table = self.table();
        let mut book = self.names();
        granted
            .iter()
            .map(|r| {
                let done = book.remember(r, &mut table, now);
                for row in done.write {
                    self.store.remember_name(row);
                }
                for (uid, name, protocol) in done.delete {
                    self.store.forget_name(uid, name, protocol);
                }
                done.moved_from
            })
            .collect()
    }
}

/// Why no process could be named for a bound port.
enum Unbound {
    /// No socket is bound to it (`TIME_WAIT` aside, and the daemon's own hold sockets).
    Nothing,
    /// Sockets are, but not every one of them is held by a process the daemon can see (or
    /// there are too many to tell).
    Unknown,
    /// Processes of more than one user have sockets on it: it is nobody's alone to name.
    Shared,
}

/// The most sockets on a port that publish looks at; more: refused (too many to tell whose).
const PUBLISH_SOCKETS: usize = 64;

/// The process that has `port` bound: `asker_pid` when it is one of them, else the first the
/// kernel lists (listening sockets first). Every socket on the port must be held by a process
/// the daemon can see, all of one user: a port another user's program also uses is not one
/// user's to name.
fn bound_by(
    protocol: Protocol,
    port: u16,
    berths: &std::collections::HashSet<u64>,
    asker_pid: u32,
) -> Result<berth_core::Owner, Unbound> {
    let sockets = crate::host::diag::live_sockets_on(protocol, port, PUBLISH_SOCKETS)
        .map_err(|_| Unbound::Unknown)?;
    if sockets.len() >= PUBLISH_SOCKETS {
        return Err(Unbound::Unknown);
    }
    let live: Vec<&crate::host::diag::Bound> = sockets
        .iter()
        .filter(|s| !s.is_time_wait() && !berths.contains(&s.inode))
        .collect();
    if live.is_empty() {
        return Err(Unbound::Nothing);
    }
    if live.iter().any(|s| s.inode == 0) {
        return Err(Unbound::Unknown);
    }
    let inodes: Vec<u64> = live.iter().map(|s| s.inode).collect();
    let owners = berth_os::diag::owners(&inodes, PUBLISH_SOCKETS);
    let mut processes = Vec::with_capacity(inodes.len());
    for inode in &inodes {
        let pid = owners.get(inode).copied().ok_or(Unbound::Unknown)?;
        processes.push(crate::host::diag::process(pid).ok_or(Unbound::Unknown)?);
    }
    let first_uid = processes.first().map(|p| p.uid).ok_or(Unbound::Unknown)?;
    if processes.iter().any(|p| p.uid != first_uid) {
        return Err(Unbound::Shared);
    }
    let chosen = processes
        .iter()
        .position(|p| p.pid == asker_pid)
        .unwrap_or(0);
    Ok(processes.swap_remove(chosen))
}

/// not-found for a name: none live, or (after a wait) none bound.
fn not_named(user: Option<u32>, name: &Name, waited: Option<(Duration, bool)>) -> Response {
    let whose = match user {
        Some(uid) => format!("uid {uid}'s name {name}"),
        None => format!("the name {name} (yours, or a persistent reservation's)"),
    };
    let message = match waited {
        None => format!("no live reservation has {whose}; `berth list` shows the live ones, `berth names` the names you used before"),
        Some((after, false)) => format!("no reservation had {whose} after waiting {} s; is the program that reserves it running? (`berth wait --timeout SECS` waits longer)", after.as_secs()),
        Some((after, true)) => format!("a reservation has {whose}, but no socket was bound to its ports after waiting {} s; is its program listening yet? (`berth why` shows its ports)", after.as_secs()),
    };
    error(ErrorKind::NotFound, message)
}
