//! A segment tree over one protocol's ports that finds free blocks quickly.
//!
//! Each node covers a power-of-two run of ports and stores three lengths of free ports: the
//! longest run anywhere in it, the run at its start (prefix) and the run at its end (suffix).
//! A parent's three lengths follow from its children's alone, so a search for "the first free
//! block of `count` ports at or after `from`" looks at O(log 65,536) nodes, however the free
//! space is fragmented. Lengths are `u32` because a fully free node of 65,536 ports does not
//! fit in a `u16`.
//!
//! The bottom four levels are not stored: the ports themselves are a bitmap (one bit a port,
//! set when free), and a node covering 16 ports or fewer is computed from its bits when it is
//! looked at. Stored, those levels were 15 of every 16 nodes — 1.5 MiB a protocol, most of an
//! idle daemon's memory — where the bitmap takes 8 KiB.

use crate::range::PortRange;

/// Ports of one protocol, 0..=65535: the number of leaves.
const LEAVES: usize = 1 << 16;
/// Depth of the leaves below the root (`LEAVES == 1 << DEPTH`).
const DEPTH: u32 = 16;
/// Ports per word of the bitmap: the nodes of the lowest stored level cover one word each.
const WORD_BITS: u32 = u16::BITS;
/// Words of the bitmap.
const WORDS: usize = LEAVES / WORD_BITS as usize;
/// Stored nodes, in heap order: every node covering a whole word or more (index < `STORED`).
const STORED: usize = 2 * WORDS;

/// Free-run lengths of one node of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    /// Longest run of free ports anywhere in the node.
    best: u32,
    /// Free ports at the node's start.
    prefix: u32,
    /// Free ports at the node's end.
    suffix: u32,
}

impl Node {
    const TAKEN_LEAF: Node = Node {
        best: 0,
        prefix: 0,
        suffix: 0,
    };

    /// The node of `len` ports (1 to 32) whose bits (port `i` of the node at bit `i`, set when
    /// free; bits from `len` up clear) are `bits`.
    fn of_bits(bits: u32, len: u32) -> Node {
        // The longest run: each step shortens every run of ones by one.
        let mut best = 0;
        let mut x = bits;
        while x != 0 {
            x &= x >> 1;
            best += 1;
        }
        Node {
            best,
            prefix: bits.trailing_ones().min(len),
            suffix: (bits << (u32::BITS - len)).leading_ones().min(len),
        }
    }

    /// The parent of `left` and `right`, each covering `half` ports.
    fn join(left: Node, right: Node, half: u32) -> Node {
        Node {
            best: left.best.max(right.best).max(left.suffix + right.prefix),
            // A run crosses into the other half only when this half is free end to end.
            prefix: if left.prefix == half {
                half + right.prefix
            } else {
                left.prefix
            },
            suffix: if right.suffix == half {
                half + left.suffix
            } else {
                right.suffix
            },
        }
    }
}

/// The first port and the number of ports covered by tree node `index` (root = 1).
fn span(index: usize) -> (u32, u32) {
    let level = usize::BITS - 1 - index.leading_zeros();
    let len = 1u32 << (DEPTH - level);
    let first = (index - (1 << level)) as u32 * len;
    (first, len)
}

/// Which ports of one protocol are free, as a segment tree over 0..=65535.
///
/// Port 0 is occupied from the start and never freed: no range can hold it. The map knows
/// nothing of reservations; the [`Table`](crate::Table) keeps it in step with them.
#[derive(Clone)]
pub struct FreeMap {
    /// The stored nodes in heap order: the root at 1, the children of `i` at `2i` and
    /// `2i + 1`, the node of word `w` at `WORDS + w`. Index 0 is unused. (In the same order,
    /// port `p` would be leaf `LEAVES + p`.)
    nodes: Vec<Node>,
    /// One bit a port, set when free: port `p` is bit `p % 16` of word `p / 16`.
    free: Vec<u16>,
}

impl std::fmt::Debug for FreeMap {
    /// A summary: 8,192 nodes and a 65,536-bit map are no use in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreeMap")
            .field("longest_free_run", &self.root().best)
            .finish()
    }
}

impl Default for FreeMap {
    fn default() -> Self {
        Self::new()
    }
}

impl FreeMap {
    /// A map on which every port but 0 is free.
    pub fn new() -> Self {
        let mut free = vec![u16::MAX; WORDS];
        free[0] &= !1;
        let mut map = FreeMap {
            nodes: vec![Node::TAKEN_LEAF; STORED],
            free,
        };
        map.recompute(WORDS, STORED - 1);
        map
    }

    fn root(&self) -> Node {
        self.nodes[1]
    }

    /// Node `index`: stored, or computed from the bitmap for a node within one word.
    fn node(&self, index: usize) -> Node {
        if index < STORED {
            return self.nodes[index];
        }
        let (first, len) = span(index);
        let word = u32::from(self.free[(first / WORD_BITS) as usize]);
        let mask = (1u32 << len) - 1;
        Node::of_bits((word >> (first % WORD_BITS)) & mask, len)
    }

    /// Recomputes the stored nodes `lo..=hi` of the words' level (from their words), then
    /// their ancestors, one level at a time, so each ancestor is recomputed once.
    fn recompute(&mut self, mut lo: usize, mut hi: usize) {
        for index in lo..=hi {
            let word = u32::from(self.free[index - WORDS]);
            self.nodes[index] = Node::of_bits(word, WORD_BITS);
        }
        let mut half = WORD_BITS;
        while lo > 1 {
            lo /= 2;
            hi /= 2;
            for index in lo..=hi {
                self.nodes[index] =
                    Node::join(self.nodes[2 * index], self.nodes[2 * index + 1], half);
            }
            half *= 2;
        }
    }

    /// Marks every port of `range` occupied. O(count + log 65,536).
    pub fn occupy(&mut self, range: PortRange) {
        self.set(range, false);
    }

    /// Marks every port of `range` free. O(count + log 65,536).
    pub fn free(&mut self, range: PortRange) {
        self.set(range, true);
    }

    /// Sets the bits of `range` (a word at a time), then recomputes the stored nodes above.
    fn set(&mut self, range: PortRange, free: bool) {
        let (start, end) = (u32::from(range.start()), u32::from(range.end()));
        let (first_word, last_word) = (start / WORD_BITS, end / WORD_BITS);
        for w in first_word..=last_word {
            let lo = if w == first_word {
                start % WORD_BITS
            } else {
                0
            };
            let hi = if w == last_word {
                end % WORD_BITS
            } else {
                WORD_BITS - 1
            };
            // Bits lo..=hi of a word.
            let mask = ((u32::MAX >> (u32::BITS - 1 - hi)) & (u32::MAX << lo)) as u16;
            let word = &mut self.free[w as usize];
            *word = if free { *word | mask } else { *word & !mask };
        }
        self.recompute(WORDS + first_word as usize, WORDS + last_word as usize);
    }

    /// Whether every port of `range` is free. O(log 65,536).
    pub fn is_free(&self, range: PortRange) -> bool {
        let (nodes, len) = cover(range.start(), range.end());
        nodes[..len]
            .iter()
            .all(|&index| self.node(index).prefix == span(index).1)
    }

    /// The lowest `s` with `from <= s` such that `s ..= s + count - 1` is free and lies inside
    /// `within`; `None` when there is none, or when `count` is 0. O(log 65,536).
    pub fn find(&self, count: u16, from: u16, within: PortRange) -> Option<u16> {
        let count = u32::from(count);
        let lo = from.max(within.start());
        let hi = within.end();
        if count == 0 || lo > hi {
            return None;
        }
        // Walk the O(log) nodes that tile lo..=hi from left to right, carrying the free run
        // that ends just before the current node. A block either finishes inside a node's
        // prefix (then it starts `run` ports before that node) or lies wholly inside one node
        // (then its `best` says so, and only that node is descended into).
        let (nodes, len) = cover(lo, hi);
        let mut run = 0u32;
        for &index in &nodes[..len] {
            let node = self.node(index);
            let (first, node_len) = span(index);
            if run + node.prefix >= count {
                return u16::try_from(first - run).ok();
            }
            if node.best >= count {
                return self.descend(index, count);
            }
            run = if node.prefix == node_len {
                run + node_len
            } else {
                node.suffix
            };
        }
        None
    }

    /// The first free block of `count` ports inside node `index`, which must have
    /// `best >= count`. One step per level: the block is in the left child, or straddles the
    /// middle, or is in the right child — checked in that order, so the first one wins.
    fn descend(&self, mut index: usize, count: u32) -> Option<u16> {
        while index < LEAVES {
            let left = self.node(2 * index);
            let right = self.node(2 * index + 1);
            if left.best >= count {
                index *= 2;
            } else if left.suffix + right.prefix >= count {
                let (first, len) = span(2 * index);
                return u16::try_from(first + len - left.suffix).ok();
            } else {
                index = 2 * index + 1;
            }
        }
        // A leaf: count is 1 and the port is free.
        u16::try_from(span(index).0).ok()
    }

    /// The longest run of free ports in the whole space.
    pub fn longest_free_run(&self) -> u32 {
        self.root().best
    }
}

/// The tree nodes that exactly tile ports `lo..=hi`, left to right; at most two per level.
fn cover(lo: u16, hi: u16) -> ([usize; 2 * DEPTH as usize + 2], usize) {
    const MAX: usize = DEPTH as usize + 1;
    let mut left = [0usize; MAX];
    let mut right = [0usize; MAX];
    let (mut nl, mut nr) = (0, 0);
    let mut l = LEAVES + usize::from(lo);
    let mut r = LEAVES + usize::from(hi) + 1;
    while l < r {
        if l & 1 == 1 {
            left[nl] = l;
            nl += 1;
            l += 1;
        }
        if r & 1 == 1 {
            r -= 1;
            right[nr] = r;
            nr += 1;
        }
        l /= 2;
        r /= 2;
    }
    let mut out = [0usize; 2 * MAX];
    out[..nl].copy_from_slice(&left[..nl]);
    for (slot, &index) in out[nl..nl + nr].iter_mut().zip(right[..nr].iter().rev()) {
        *slot = index;
    }
    (out, nl + nr)
}

#[cfg(test)]
mod tests;
