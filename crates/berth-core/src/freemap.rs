//! A segment tree over one protocol's ports that finds free blocks quickly.
//!
//! Each node covers a power-of-two run of ports and stores three lengths of free ports: the
//! longest run anywhere in it, the run at its start (prefix) and the run at its end (suffix).
//! A parent's three lengths follow from its children's alone, so a search for "the first free
//! block of `count` ports at or after `from`" looks at O(log 65,536) nodes, however the free
//! space is fragmented. Lengths are `u32` because a fully free node of 65,536 ports does not
//! fit in a `u16`.

use crate::range::PortRange;

/// Ports of one protocol, 0..=65535: the number of leaves.
const LEAVES: usize = 1 << 16;
/// Depth of the leaves below the root (`LEAVES == 1 << DEPTH`).
const DEPTH: u32 = 16;

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
    const FREE_LEAF: Node = Node {
        best: 1,
        prefix: 1,
        suffix: 1,
    };
    const TAKEN_LEAF: Node = Node {
        best: 0,
        prefix: 0,
        suffix: 0,
    };

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
    /// Nodes in heap order: the root at 1, the children of `i` at `2i` and `2i + 1`, port `p`
    /// at leaf `LEAVES + p`. Index 0 is unused.
    nodes: Vec<Node>,
}

impl std::fmt::Debug for FreeMap {
    /// A summary: 131,072 nodes are no use in a log line.
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
        let mut nodes = vec![Node::TAKEN_LEAF; 2 * LEAVES];
        for index in (1..2 * LEAVES).rev() {
            let (first, len) = span(index);
            nodes[index] = if len == 1 {
                if first == 0 {
                    Node::TAKEN_LEAF
                } else {
                    Node::FREE_LEAF
                }
            } else {
                Node::join(nodes[2 * index], nodes[2 * index + 1], len / 2)
            };
        }
        FreeMap { nodes }
    }

    fn root(&self) -> Node {
        self.nodes[1]
    }

    /// Marks every port of `range` occupied. O(count + log 65,536).
    pub fn occupy(&mut self, range: PortRange) {
        self.set(range, Node::TAKEN_LEAF);
    }

    /// Marks every port of `range` free. O(count + log 65,536).
    pub fn free(&mut self, range: PortRange) {
        self.set(range, Node::FREE_LEAF);
    }

    /// Sets the leaves of `range`, then recomputes their ancestors one level at a time, so
    /// each ancestor is recomputed once rather than once per leaf below it.
    fn set(&mut self, range: PortRange, leaf: Node) {
        let mut lo = LEAVES + usize::from(range.start());
        let mut hi = LEAVES + usize::from(range.end());
        for node in &mut self.nodes[lo..=hi] {
            *node = leaf;
        }
        let mut half = 1;
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

    /// Whether every port of `range` is free. O(log 65,536).
    pub fn is_free(&self, range: PortRange) -> bool {
        let (nodes, len) = cover(range.start(), range.end());
        nodes[..len]
            .iter()
            .all(|&index| self.nodes[index].prefix == span(index).1)
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
            let node = self.nodes[index];
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
            let left = self.nodes[2 * index];
            let right = self.nodes[2 * index + 1];
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
