//! A set of ports (0–65535) as a bitmap, with the kernel's list syntax for
//! `net.ipv4.ip_local_reserved_ports`: comma-separated ports and `LO-HI` ranges, `"1-3,5"`.

use std::fmt;

use crate::range::PortRange;

const WORDS: usize = 65536 / 64;

/// A set of ports. 8 KiB, every operation O(65,536 / 64).
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet {
    bits: Box<[u64; WORDS]>,
}

impl Default for PortSet {
    fn default() -> Self {
        PortSet {
            bits: Box::new([0; WORDS]),
        }
    }
}

/// Text that is not a port list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a port list (ports and LO-HI ranges separated by commas)")]
pub struct BadPortList(pub String);

impl PortSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.bits
            .get(usize::from(port) / 64)
            .is_some_and(|w| w & (1 << (port % 64)) != 0)
    }

    /// Adds `port`.
    pub fn insert(&mut self, port: u16) {
        if let Some(w) = self.bits.get_mut(usize::from(port) / 64) {
            *w |= 1 << (port % 64);
        }
    }

    /// Adds every port of `range`.
    pub fn insert_range(&mut self, range: PortRange) {
        for port in range.ports() {
            self.insert(port);
        }
    }

    /// Removes `port`.
    pub fn remove(&mut self, port: u16) {
        if let Some(w) = self.bits.get_mut(usize::from(port) / 64) {
            *w &= !(1 << (port % 64));
        }
    }

    /// The ports in `self` or `other`.
    pub fn union(&self, other: &PortSet) -> PortSet {
        self.zip(other, |a, b| a | b)
    }

    /// The ports in both `self` and `other`.
    pub fn intersection(&self, other: &PortSet) -> PortSet {
        self.zip(other, |a, b| a & b)
    }

    /// The ports in `self` and not in `other`.
    pub fn difference(&self, other: &PortSet) -> PortSet {
        self.zip(other, |a, b| a & !b)
    }

    fn zip(&self, other: &PortSet, op: impl Fn(u64, u64) -> u64) -> PortSet {
        let mut out = PortSet::new();
        for ((o, a), b) in out
            .bits
            .iter_mut()
            .zip(self.bits.iter())
            .zip(other.bits.iter())
        {
            *o = op(*a, *b);
        }
        out
    }

    /// Number of ports in the set.
    pub fn len(&self) -> u32 {
        self.bits.iter().map(|w| w.count_ones()).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// The set as maximal runs of consecutive ports, lowest first. Walks the bitmap a word at
    /// a time: empty and full words cost one comparison each.
    pub fn runs(&self) -> Vec<(u16, u16)> {
        let mut runs = Vec::new();
        let mut open: Option<u32> = None;
        for (i, &word) in self.bits.iter().enumerate() {
            let base = (i as u32) * 64;
            match word {
                0 => {
                    if let Some(lo) = open.take() {
                        runs.push((lo, base - 1));
                    }
                }
                u64::MAX => {
                    open.get_or_insert(base);
                }
                _ => {
                    for bit in 0..64 {
                        let port = base + bit;
                        if word & (1 << bit) != 0 {
                            open.get_or_insert(port);
                        } else if let Some(lo) = open.take() {
                            runs.push((lo, port - 1));
                        }
                    }
                }
            }
        }
        if let Some(lo) = open {
            runs.push((lo, 65535));
        }
        // Every value is a port: at most 65535.
        runs.into_iter()
            .map(|(lo, hi)| {
                (
                    u16::try_from(lo).unwrap_or(u16::MAX),
                    u16::try_from(hi).unwrap_or(u16::MAX),
                )
            })
            .collect()
    }

    /// Parses the kernel's list syntax; whitespace (the trailing newline) is ignored, and an
    /// empty text is the empty set.
    pub fn parse(text: &str) -> Result<PortSet, BadPortList> {
        let bad = || BadPortList(text.chars().take(64).collect());
        let mut set = PortSet::new();
        let text = text.trim();
        if text.is_empty() {
            return Ok(set);
        }
        for item in text.split(',') {
            let item = item.trim();
            let (lo, hi) = match item.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (item, item),
            };
            let lo: u16 = lo.parse().map_err(|_| bad())?;
            let hi: u16 = hi.parse().map_err(|_| bad())?;
            if hi < lo {
                return Err(bad());
            }
            for port in lo..=hi {
                set.insert(port);
            }
        }
        Ok(set)
    }
}

impl fmt::Display for PortSet {
    /// The kernel's list syntax, coalesced: `"1-3,5"`; empty for the empty set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.runs().into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortSet({self})")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_the_kernels_syntax() {
        let set = PortSet::parse("5,1-3\n").unwrap();
        assert_eq!(set.to_string(), "1-3,5");
        assert_eq!(set.len(), 4);
        assert_eq!(PortSet::parse("\n").unwrap(), PortSet::new());
        assert_eq!(PortSet::parse("65535,0").unwrap().to_string(), "0,65535");
        assert!(PortSet::parse("3-1").is_err());
        assert!(PortSet::parse("70000").is_err());
        assert!(PortSet::parse("a,b").is_err());
    }

    #[test]
    fn union_and_difference() {
        let a = PortSet::parse("1-10").unwrap();
        let b = PortSet::parse("5-15").unwrap();
        assert_eq!(a.union(&b).to_string(), "1-15");
        assert_eq!(a.difference(&b).to_string(), "1-4");
        assert_eq!(b.difference(&a).to_string(), "11-15");
    }

    proptest! {
        #[test]
        fn printing_then_parsing_gives_the_same_set(ports in prop::collection::vec(any::<u16>(), 0..200)) {
            let mut set = PortSet::new();
            for p in &ports {
                set.insert(*p);
            }
            let again = PortSet::parse(&set.to_string()).unwrap();
            prop_assert_eq!(&again, &set);
            prop_assert_eq!(again.len() as usize, ports.iter().collect::<std::collections::BTreeSet<_>>().len());
        }
    }
}
