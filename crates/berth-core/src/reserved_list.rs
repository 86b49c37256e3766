//! The kernel's reserved-ports list (`net.ipv4.ip_local_reserved_ports`) as berth keeps it:
//! which entries are berth's and which are others', and what to write so that the list is
//! exactly (others' entries) ∪ (live reservations) ∪ (berth's deliberate extras) — in one
//! kernel chunk, so that no write ever leaves a reserved port unlisted for a moment.
//!
//! Pure: the daemon reads the list, asks [`ListBooks::plan`] what to write, writes it, and
//! tells the books ([`ListBooks::written`]). Time comes in as milliseconds.
//!
//! # Whose entry
//! The list has no owners, and other tools rewrite it whole: `sysctl -p` replaces it with a
//! file's value; tools that add their own entries read it, change it, and write it back (a
//! *read-modify-write*). The books tell them apart by what changed since berth last saw the
//! list:
//! - an entry that appeared is someone else's — unless berth took that very port out within
//!   the last [`ECHO_WINDOW_MS`] (one to two windows): then it is an *echo*, a stale
//!   write-back of berth's own entry by a read-modify-write that raced berth's removal, and it
//!   is taken out again (counted as drift repaired);
//! - an entry that disappeared was someone else's to remove; one of berth's that disappeared is
//!   put back (drift repaired);
//! - a port an administrator lists in a sysctl configuration file ([`ListBooks::configure`])
//!   is someone else's whenever it is listed, even while a reservation covers it too: it stays
//!   listed when the reservation ends;
//! - at start-up, the ports berth recorded having written are berth's, the rest others'.
//!
//! # One chunk
//! The kernel takes at most [`ONE_CHUNK`] bytes per `write(2)`; the first chunk replaces the
//! list and later ones add to it, so a longer value leaves a gap while it is written. The
//! value is kept within one chunk by coalescing runs and, when scattered entries still do not
//! fit, listing the free ports between the closest of them too ([`fit`]): those are berth's
//! *extras*. Extras inside the kernel's ephemeral range hide ports from other programs'
//! `connect()` and `bind(0)`, so they are bounded by the caller ([`Extras`]) and the cheapest
//! gaps are filled first; extras outside it cost nothing (automatic assignment never looks
//! there).
//!
//! # Listed ahead
//! berth may also list some ports of its pool ahead of any grant ([`ListBooks::set_ahead`]):
//! a grant there is protected at once, with no write to wait for, and a release there needs no
//! write either. They are berth's extras while no reservation covers them, bounded like the
//! others by the caller.

use crate::portset::PortSet;

/// The most bytes the kernel takes from one `write(2)` of a sysctl (a 4 KiB page less one):
/// the value and its newline must fit for the write to replace the list at once.
pub const ONE_CHUNK: usize = 4095;

/// How long a port berth took out is remembered, so that a stale write-back of it is known
/// for an echo: at least this long, at most twice.
pub const ECHO_WINDOW_MS: u64 = 60_000;

/// How many free ports a value may list to fit one chunk: at most `max` inside `costly` (the
/// ephemeral range), any number outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extras {
    /// The ports where an extra costs: `(first, last)`.
    pub costly: (u16, u16),
    /// The most extras inside `costly`.
    pub max: u32,
}

impl Extras {
    /// No limit at all.
    pub const UNBOUNDED: Extras = Extras {
        costly: (1, 0),
        max: u32::MAX,
    };

    /// The ports of `lo..=hi` inside `costly`.
    pub fn cost(&self, lo: u32, hi: u32) -> u32 {
        let a = lo.max(u32::from(self.costly.0));
        let b = hi.min(u32::from(self.costly.1));
        if a > b {
            0
        } else {
            b - a + 1
        }
    }
}

/// A list that fits one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    /// What to write: the exact set and the extras.
    pub list: PortSet,
    /// The free ports listed to make it fit.
    pub extras: PortSet,
    /// How many of them lie where they cost ([`Extras::costly`]).
    pub cost: u32,
    /// Whether `list` fits one chunk; `false` when it would take more extras than allowed
    /// (then `list` is the exact set, written in several chunks).
    pub one_chunk: bool,
}

/// The ports of `set` where an extra costs (`extras.costly`).
pub fn costly(set: &PortSet, extras: Extras) -> u32 {
    set.runs()
        .iter()
        .map(|&(lo, hi)| extras.cost(u32::from(lo), u32::from(hi)))
        .fold(0, u32::saturating_add)
}

/// The length of `set` as the list's text, newline included.
pub fn text_len(set: &PortSet) -> usize {
    let runs = set.runs();
    let text: usize = runs.iter().map(|&(lo, hi)| run_len(lo, hi)).sum();
    text + runs.len().saturating_sub(1) + 1
}

fn digits(port: u16) -> usize {
    match port {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

fn run_len(lo: u16, hi: u16) -> usize {
    if lo == hi {
        digits(lo)
    } else {
        digits(lo) + 1 + digits(hi)
    }
}

/// `exact`, or a superset of it whose text fits `budget` bytes, found by filling the gaps
/// between runs cheapest first (fewest costly ports, then fewest ports), so that few free ports
/// are listed where they matter. If that takes more than `limit.max` costly extras, `exact`
/// comes back, not fitting.
pub fn fit(exact: &PortSet, budget: usize, limit: Extras) -> Fitted {
    let runs = exact.runs();
    let mut len: usize = text_len(exact);
    let not_fitting = || Fitted {
        list: exact.clone(),
        extras: PortSet::new(),
        cost: 0,
        one_chunk: false,
    };
    if len <= budget {
        return Fitted {
            list: exact.clone(),
            extras: PortSet::new(),
            cost: 0,
            one_chunk: true,
        };
    }
    // Gap i lies between runs i and i+1: cheapest first, then smallest, then lowest.
    let mut gaps: Vec<(u32, u32, usize)> = runs
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let (lo, hi) = (u32::from(w[0].1) + 1, u32::from(w[1].0) - 1);
            (limit.cost(lo, hi), hi - lo + 1, i)
        })
        .collect();
    gaps.sort_unstable();
    // Chains of merged runs: `head[i]` leads towards the first run of i's chain; the first
    // run of a chain keeps the chain's last port in `end`.
    let mut head: Vec<usize> = (0..runs.len()).collect();
    let mut end: Vec<u16> = runs.iter().map(|&(_, hi)| hi).collect();
    let mut merged = Vec::new();
    let mut cost: u32 = 0;
    for (gap_cost, _, i) in gaps {
        if len <= budget {
            break;
        }
        cost = cost.saturating_add(gap_cost);
        if cost > limit.max {
            return not_fitting();
        }
        let left = find(&mut head, i);
        let right = i + 1; // the first run of its chain: gap i was not merged yet
        let (lo, mid, hi) = (runs[left].0, end[left], end[right]);
        let before = run_len(lo, mid) + run_len(runs[right].0, hi) + 1;
        len = len - before + run_len(lo, hi);
        head[right] = left;
        end[left] = hi;
        merged.push(i);
    }
    if len > budget {
        return not_fitting();
    }
    let mut list = exact.clone();
    let mut extra_ports = PortSet::new();
    for i in merged {
        for port in runs[i].1 + 1..runs[i + 1].0 {
            list.insert(port);
            extra_ports.insert(port);
        }
    }
    Fitted {
        list,
        extras: extra_ports,
        cost,
        one_chunk: true,
    }
}

fn find(head: &mut [usize], mut i: usize) -> usize {
    let mut root = i;
    while head[root] != root {
        root = head[root];
    }
    while head[i] != root {
        let next = head[i];
        head[i] = root;
        i = next;
    }
    root
}

/// How the list is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// It is right already.
    Nothing,
    /// Only ports to add: written at a file offset above 0, where the kernel adds to the list
    /// instead of replacing it — in any number of chunks, with no gap, and without undoing what
    /// another tool wrote meanwhile.
    Add(PortSet),
    /// The whole value, which replaces the list: always within one chunk.
    Replace(PortSet),
}

/// What the list should become, and what berth must record first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The write to make.
    pub write: Write,
    /// The list after the write (the value, or the list as read).
    pub list: PortSet,
    /// Others' entries in it.
    pub foreign: PortSet,
    /// berth's entries in it: reservations' ports others did not list, and the extras.
    pub mine: PortSet,
    /// berth's entries that are no live reservation's: free ports listed so the value fits
    /// one chunk, and released ports whose removal waits (see `one_chunk`).
    pub extras: PortSet,
    /// Whether the exact list fits one chunk (with the extras allowed). If not, ports berth
    /// released stay listed — a replacing write would leave a gap — until it fits again.
    pub one_chunk: bool,
    /// Every port berth may have in the list once the write is made: to record durably
    /// *before* writing (so that a crash between the two leaves no entry nobody knows is
    /// berth's). `None` when the record covers it already.
    pub record_first: Option<PortSet>,
    /// Echoes found in this read (stale write-backs of ports berth took out).
    pub echoes: PortSet,
    /// berth's entries someone else took out, put back by this write.
    pub restored: PortSet,
}

/// What the books say of the list (for `berth status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Listed ports that are berth's for its reservations.
    pub reserved: u32,
    /// Listed ports that are berth's extras.
    pub extras: u32,
    /// Listed ports that are others' entries.
    pub foreign: u32,
    /// Entries repaired since start-up: echoes taken out again, and berth's entries put back
    /// after someone else removed them.
    pub repaired: u64,
    /// Whether the exact list fit one chunk at the last write (if not, released ports stay
    /// listed until it does).
    pub one_chunk: bool,
}

/// berth's memory of the list. See the module's documentation.
#[derive(Debug, Clone)]
pub struct ListBooks {
    /// Every port berth may have in the list, as recorded durably (a superset of `mine`).
    recorded: PortSet,
    /// The list as berth last saw it: after its last write, or its last read. `None` before
    /// the first.
    seen: Option<PortSet>,
    /// Others' entries, as of the last plan.
    foreign: PortSet,
    /// berth's entries, as of the last write.
    mine: PortSet,
    /// The extras of the last write.
    extras: PortSet,
    /// Ports berth took out: this window's and the last one's.
    taken_out: [PortSet; 2],
    /// When this window began.
    window_start_ms: u64,
    /// Ports an administrator's configuration lists.
    configured: PortSet,
    /// Ports berth lists ahead of grants.
    ahead: PortSet,
    /// Drift repaired since start-up.
    repaired: u64,
    /// Whether the last write fit one chunk.
    one_chunk: bool,
}

impl ListBooks {
    /// Books for a daemon that recorded having written `recorded` (an earlier daemon's
    /// entries, after a crash or a stop that kept live ones).
    pub fn new(recorded: PortSet, now_ms: u64) -> Self {
        ListBooks {
            mine: recorded.clone(),
            recorded,
            seen: None,
            foreign: PortSet::new(),
            extras: PortSet::new(),
            taken_out: [PortSet::new(), PortSet::new()],
            window_start_ms: now_ms,
            configured: PortSet::new(),
            ahead: PortSet::new(),
            repaired: 0,
            one_chunk: true,
        }
    }

    /// The ports an administrator lists in configuration files (always others' entries when
    /// listed).
    pub fn configure(&mut self, configured: PortSet) {
        self.configured = configured;
    }

    /// The ports berth lists ahead of grants from now on (none to stop): listed by every
    /// later plan but the stop's, and counted as extras while no reservation covers them.
    pub fn set_ahead(&mut self, ahead: PortSet) {
        self.ahead = ahead;
    }

    /// What to write, given the list as just read (`current`) and the ports the live
    /// reservations need (`ours`), with the ports listed ahead; free ports are listed to fit a
    /// chunk within `extras`.
    pub fn plan(&mut self, current: &PortSet, ours: &PortSet, extras: Extras, now_ms: u64) -> Plan {
        let wanted = ours.union(&self.ahead);
        self.plan_for(current, ours, &wanted, extras, now_ms)
    }

    /// [`ListBooks::plan`] for a list that should hold `wanted` (`ours` and more) besides
    /// others' entries.
    fn plan_for(
        &mut self,
        current: &PortSet,
        ours: &PortSet,
        wanted: &PortSet,
        extras: Extras,
        now_ms: u64,
    ) -> Plan {
        self.rotate(now_ms);
        let (echoes, restored) = match &self.seen {
            None => {
                self.foreign = current.difference(&self.recorded);
                (PortSet::new(), PortSet::new())
            }
            Some(seen) => {
                let appeared = current.difference(seen);
                let disappeared = seen.difference(current);
                let recent = self.taken_out[0].union(&self.taken_out[1]);
                let echoes = appeared.intersection(&recent).difference(&self.configured);
                self.foreign = self
                    .foreign
                    .difference(&disappeared)
                    .union(&appeared.difference(&echoes));
                let restored = disappeared.intersection(&self.mine).intersection(wanted);
                (echoes, restored)
            }
        };
        self.foreign = self.foreign.union(&current.intersection(&self.configured));
        let exact = self.foreign.union(wanted);
        let fitted = fit(&exact, ONE_CHUNK, extras);
        let list = if fitted.one_chunk {
            fitted.list
        } else {
            // Too scattered for one chunk within the room: only add, and let removals wait —
            // while the ports left listed that way hide fewer ports where they cost than the
            // cheapest one-chunk value would; past that, that value. So what berth keeps
            // listed beyond its reservations never grows without bound.
            let added = current.union(&exact);
            let unbounded = Extras {
                max: u32::MAX,
                ..extras
            };
            let cheapest = fit(&exact, ONE_CHUNK, unbounded);
            if cheapest.one_chunk && cheapest.cost < costly(&added.difference(&exact), extras) {
                cheapest.list
            } else {
                added
            }
        };
        let write = if &list == current {
            Write::Nothing
        } else if current.difference(&list).is_empty() {
            Write::Add(list.difference(current))
        } else {
            Write::Replace(list.clone())
        };
        let mine = list.difference(&self.foreign);
        let superset = self.recorded.union(&mine);
        Plan {
            write,
            record_first: (superset != self.recorded).then_some(superset),
            extras: mine.difference(ours),
            list,
            foreign: self.foreign.clone(),
            mine,
            one_chunk: fitted.one_chunk,
            echoes,
            restored,
        }
    }

    /// The last write, at a clean stop: the list becomes exactly others' entries and `keep`
    /// (the reservations left for the next daemon), without extras. When that value takes
    /// more than one chunk, it is written so only with nothing to keep (nothing of berth's is
    /// left to protect, and an administrator's list that long was written the same way);
    /// with something to keep, a longer replacing write would unlist kept ports while its
    /// later chunks are written, so the stop writes one chunk with extras instead — free ports
    /// listed between scattered entries, recorded as berth's (`record_first`) for the next
    /// daemon to take out — as many as it takes, the cheapest where `extras.costly` says
    /// ports cost (`extras.max` is not a bound here).
    pub fn plan_stop(
        &mut self,
        current: &PortSet,
        keep: &PortSet,
        extras: Extras,
        now_ms: u64,
    ) -> Plan {
        let extras = Extras {
            max: u32::MAX,
            ..extras
        };
        let mut plan = self.plan_for(current, keep, keep, extras, now_ms);
        let exact = self.foreign.union(keep);
        let without_gap = text_len(&exact) <= ONE_CHUNK
            || keep.is_empty()
            || current.difference(&exact).is_empty();
        if plan.list != exact && without_gap {
            plan.write = if current.difference(&exact).is_empty() {
                Write::Add(exact.difference(current))
            } else {
                Write::Replace(exact.clone())
            };
            plan.mine = exact.difference(&self.foreign);
            plan.extras = PortSet::new();
            plan.one_chunk = text_len(&exact) <= ONE_CHUNK;
            plan.list = exact;
        }
        plan
    }

    /// Notes that `plan` was carried out (its record made, its value written) at `now_ms`.
    pub fn written(&mut self, plan: &Plan, now_ms: u64) {
        self.rotate(now_ms);
        if let Some(superset) = &plan.record_first {
            self.recorded = superset.clone();
        }
        let taken = self.mine.difference(&plan.mine);
        self.taken_out[0] = self.taken_out[0].union(&taken);
        self.repaired += u64::from(plan.echoes.len()) + u64::from(plan.restored.len());
        self.seen = Some(plan.list.clone());
        self.mine = plan.mine.clone();
        self.extras = plan.extras.clone();
        self.one_chunk = plan.one_chunk;
    }

    /// When the writer is idle: the narrower record to make (berth's entries now), if it
    /// differs. Call [`ListBooks::narrowed`] once it is made.
    pub fn narrowing(&self) -> Option<PortSet> {
        (self.mine != self.recorded).then(|| self.mine.clone())
    }

    /// Notes that the record is now `recorded`.
    pub fn narrowed(&mut self, recorded: PortSet) {
        self.recorded = recorded;
    }

    /// What the books say now.
    pub fn figures(&self) -> Figures {
        Figures {
            reserved: self.mine.difference(&self.extras).len(),
            extras: self.extras.len(),
            foreign: self.foreign.len(),
            repaired: self.repaired,
            one_chunk: self.one_chunk,
        }
    }

    /// Others' entries, as of the last plan.
    pub fn foreign(&self) -> &PortSet {
        &self.foreign
    }

    /// Starts a new window of removals when this one is over; what was taken out more than
    /// two windows ago is forgotten.
    fn rotate(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        if elapsed >= ECHO_WINDOW_MS {
            let [current, _] = std::mem::take(&mut self.taken_out);
            let last = if elapsed >= 2 * ECHO_WINDOW_MS {
                PortSet::new()
            } else {
                current
            };
            self.taken_out = [PortSet::new(), last];
            self.window_start_ms = now_ms;
        }
    }
}

#[cfg(test)]
mod tests;
