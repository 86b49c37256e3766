//! Tests of [`FreeMap`] against a plain array of booleans.

use proptest::prelude::*;

use super::*;

fn range(start: u16, count: u16) -> PortRange {
    PortRange::new(start, count).unwrap()
}

/// The obvious model: one flag per port, port 0 taken.
struct Naive {
    free: Vec<bool>,
}

impl Naive {
    fn new() -> Self {
        let mut free = vec![true; LEAVES];
        free[0] = false;
        Naive { free }
    }

    fn set(&mut self, r: PortRange, value: bool) {
        for p in r.ports() {
            self.free[usize::from(p)] = value;
        }
    }

    fn is_free(&self, r: PortRange) -> bool {
        r.ports().all(|p| self.free[usize::from(p)])
    }

    /// One linear scan, counting the free run that ends at each port.
    fn find(&self, count: u16, from: u16, within: PortRange) -> Option<u16> {
        if count == 0 {
            return None;
        }
        let lo = u32::from(from.max(within.start()));
        let mut run = 0u32;
        for p in lo..=u32::from(within.end()) {
            run = if self.free[p as usize] { run + 1 } else { 0 };
            if run == u32::from(count) {
                return Some((p + 1 - run) as u16);
            }
        }
        None
    }

    fn longest(&self) -> u32 {
        let (mut best, mut run) = (0, 0);
        for &f in &self.free {
            run = if f { run + 1 } else { 0 };
            best = best.max(run);
        }
        best
    }
}

/// Every inner node, stored or computed from the bitmap, agrees with its children.
fn check_tree(map: &FreeMap) {
    for index in 1..LEAVES {
        let (_, len) = span(index);
        assert_eq!(
            map.node(index),
            Node::join(map.node(2 * index), map.node(2 * index + 1), len / 2),
            "node {index}"
        );
    }
}

#[test]
fn new_map_has_only_port_zero_taken() {
    let map = FreeMap::new();
    check_tree(&map);
    assert_eq!(map.longest_free_run(), 65535);
    let all = range(1, 65535);
    assert!(map.is_free(all));
    assert_eq!(map.find(65535, 0, all), Some(1));
    assert_eq!(map.find(1, 0, all), Some(1));
}

#[test]
fn top_port_and_range_ending_at_65535() {
    let mut map = FreeMap::new();
    let all = range(1, 65535);
    assert_eq!(map.find(1, 65535, all), Some(65535));
    assert_eq!(map.find(2, 65535, all), None);
    assert_eq!(map.find(10, 65526, all), Some(65526));
    assert_eq!(map.find(10, 65527, all), None);
    map.occupy(range(65535, 1));
    check_tree(&map);
    assert!(!map.is_free(range(65535, 1)));
    assert!(map.is_free(range(65534, 1)));
    assert_eq!(map.find(1, 65535, all), None);
    assert_eq!(map.find(1, 65534, all), Some(65534));
    map.free(range(65535, 1));
    map.occupy(range(65000, 536));
    check_tree(&map);
    assert_eq!(map.find(1, 65000, all), None);
    assert_eq!(map.find(1, 64000, all), Some(64000));
    assert_eq!(map.find(1000, 64000, all), Some(64000));
    assert_eq!(map.find(1001, 64000, all), None);
    assert_eq!(map.find(1001, 0, all), Some(1));
    map.free(range(65000, 536));
    check_tree(&map);
    assert_eq!(map.longest_free_run(), 65535);
}

#[test]
fn find_respects_within_and_from() {
    let mut map = FreeMap::new();
    map.occupy(range(1005, 1));
    let pool = range(1000, 10); // 1000..=1009
    assert_eq!(map.find(5, 0, pool), Some(1000));
    assert_eq!(map.find(5, 1001, pool), None); // 1006..=1010 leaves the pool
    assert_eq!(map.find(4, 1001, pool), Some(1001));
    assert_eq!(map.find(4, 1002, pool), Some(1006));
    assert_eq!(map.find(6, 0, pool), None);
    assert_eq!(map.find(0, 0, pool), None);
    assert_eq!(map.find(1, 2000, pool), None);
}

#[test]
fn block_straddling_node_boundaries() {
    let mut map = FreeMap::new();
    // Leave only 32760..=32775 free around the middle of the space (a root-level boundary).
    map.occupy(range(1, 32759));
    map.occupy(range(32776, 65535 - 32776 + 1));
    check_tree(&map);
    assert_eq!(map.longest_free_run(), 16);
    let all = range(1, 65535);
    assert_eq!(map.find(16, 0, all), Some(32760));
    assert_eq!(map.find(17, 0, all), None);
    assert_eq!(map.find(8, 32761, all), Some(32761));
    assert!(map.is_free(range(32760, 16)));
    assert!(!map.is_free(range(32759, 2)));
}

/// An operation on both the tree and the model; ports are drawn from a few narrow windows so
/// that occupied and free runs meet often.
#[derive(Debug, Clone)]
enum Op {
    Occupy(u16, u16),
    Free(u16, u16),
    Find(u16, u16, u16, u16),
    IsFree(u16, u16),
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![1u16..200, 32700u16..32840, 65400u16..=65535]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (port(), 1u16..40).prop_map(|(s, c)| Op::Occupy(s, c)),
        (port(), 1u16..40).prop_map(|(s, c)| Op::Free(s, c)),
        (1u16..30, port(), port(), 0u16..300).prop_map(|(c, f, w, wl)| Op::Find(c, f, w, wl)),
        (port(), 1u16..40).prop_map(|(s, c)| Op::IsFree(s, c)),
    ]
}

/// Cuts a (start, count) pair so that it stays within 65535.
fn clamp(start: u16, count: u16) -> PortRange {
    let count = count.min(65535 - start + 1);
    range(start, count)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn matches_naive_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut map = FreeMap::new();
        let mut naive = Naive::new();
        for op in ops {
            match op {
                Op::Occupy(s, c) => {
                    let r = clamp(s, c);
                    map.occupy(r);
                    naive.set(r, false);
                }
                Op::Free(s, c) => {
                    let r = clamp(s, c);
                    map.free(r);
                    naive.set(r, true);
                }
                Op::Find(count, from, w, wl) => {
                    let within = clamp(w, wl + 1);
                    prop_assert_eq!(
                        map.find(count, from, within),
                        naive.find(count, from, within),
                        "find({}, {}, {})", count, from, within
                    );
                    // Also across the whole space, from the same point.
                    let all = range(1, 65535);
                    prop_assert_eq!(map.find(count, from, all), naive.find(count, from, all));
                }
                Op::IsFree(s, c) => {
                    let r = clamp(s, c);
                    prop_assert_eq!(map.is_free(r), naive.is_free(r));
                }
            }
        }
        check_tree(&map);
        prop_assert_eq!(map.longest_free_run(), naive.longest());
    }
}
