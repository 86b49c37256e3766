//! Per-port state inside one reservation: which ports its owner has bound through associate,
//! and where the next associate starts. Associate and (later) the hold sockets share this one
//! truth.

/// What the daemon knows of one port of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortUse {
    /// Not bound through berth (as far as the daemon knows).
    Free,
    /// A socket was bound to it from the reservation; it may since have been closed, which the
    /// kernel tells at the next bind.
    Bound,
}

/// The ports of one reservation. Their state is allocated on the first associate only, so the
/// many reservations that are never associated cost eight bytes here (a thin pointer: every
/// live reservation's record carries it).
#[derive(Debug, Clone, Default)]
pub(super) struct PortStates {
    bound: Option<Box<Bound>>,
}

/// The ports of a reservation once one was bound through associate.
#[derive(Debug, Clone)]
struct Bound {
    /// Offset (from the reservation's first port) where the next associate starts, so that
    /// successive binds spread over the block.
    cursor: u16,
    /// One flag per port: bound through associate.
    flags: Box<[bool]>,
    /// How many flags are set, kept with them: a sweep over a block's ports (the re-hold and
    /// stale-bound passes) asks after each one.
    set: usize,
}

impl PortStates {
    pub(super) fn get(&self, offset: u16) -> PortUse {
        match self
            .bound
            .as_deref()
            .and_then(|b| b.flags.get(usize::from(offset)))
        {
            Some(true) => PortUse::Bound,
            _ => PortUse::Free,
        }
    }

    /// The offsets of a block of `count` ports in the order an associate should try them:
    /// free ports first, from the cursor on and wrapping, then the bound ones in the same
    /// order (a socket bound from them may have closed, or the asker's socket may share the
    /// port with it — the kernel decides).
    pub(super) fn order(&self, count: u16) -> Vec<(u16, PortUse)> {
        let cursor = self.bound.as_deref().map_or(0, |b| b.cursor);
        let cursor = if cursor < count { cursor } else { 0 };
        let ring = (cursor..count).chain(0..cursor);
        let (mut free, bound): (Vec<_>, Vec<_>) = ring
            .map(|offset| (offset, self.get(offset)))
            .partition(|(_, state)| *state == PortUse::Free);
        free.extend(bound);
        free
    }

    /// Records a bind to `offset` (of a block of `count` ports); the cursor moves past it.
    pub(super) fn bound(&mut self, offset: u16, count: u16) {
        if offset >= count {
            return;
        }
        let bound = self.bound.get_or_insert_with(|| {
            Box::new(Bound {
                cursor: 0,
                flags: vec![false; usize::from(count)].into_boxed_slice(),
                set: 0,
            })
        });
        if let Some(flag) = bound.flags.get_mut(usize::from(offset)) {
            if !*flag {
                *flag = true;
                bound.set += 1;
            }
        }
        bound.cursor = if offset + 1 >= count { 0 } else { offset + 1 };
    }

    /// Records that `offset` is known to be free again (its socket closed).
    pub(super) fn unbound(&mut self, offset: u16) {
        if let Some(bound) = self.bound.as_deref_mut() {
            if let Some(flag) = bound.flags.get_mut(usize::from(offset)) {
                if *flag {
                    *flag = false;
                    bound.set -= 1;
                }
            }
        }
    }

    /// How many ports are marked bound.
    pub(super) fn bound_count(&self) -> usize {
        self.bound.as_deref().map_or(0, |b| b.set)
    }
}
