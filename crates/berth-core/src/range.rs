//! Validated port values: protocols, ranges, requests and the wildcard pool.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::RangeError;

/// A transport protocol. Each has its own port space, ports 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP (stream sockets).
    Tcp,
    /// UDP (datagram sockets).
    Udp,
}

impl Protocol {
    /// Both protocols, in a fixed order.
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    /// The other one: UDP for TCP, TCP for UDP.
    pub fn other(self) -> Protocol {
        match self {
            Protocol::Tcp => Protocol::Udp,
            Protocol::Udp => Protocol::Tcp,
        }
    }

    /// The lower-case name used on the command line and in JSON: `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(RangeError::UnknownProtocol(
                other.chars().take(16).collect(),
            )),
        }
    }
}

/// A contiguous, non-empty block of ports `start ..= start + count - 1`, never containing
/// port 0 and never running past 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawRange", into = "RawRange")]
pub struct PortRange {
    start: u16,
    count: u16,
}

/// The unchecked shape of a [`PortRange`] on the wire; decoding validates it.
#[derive(Serialize, Deserialize)]
struct RawRange {
    start: u16,
    count: u16,
}

impl TryFrom<RawRange> for PortRange {
    type Error = RangeError;
    fn try_from(raw: RawRange) -> Result<Self, RangeError> {
        PortRange::new(raw.start, raw.count)
    }
}

impl From<PortRange> for RawRange {
    fn from(r: PortRange) -> Self {
        RawRange {
            start: r.start,
            count: r.count,
        }
    }
}

impl PortRange {
    /// A block of `count` ports from `start`. Fails when `start` is 0, `count` is 0, or the
    /// block would run past port 65535.
    pub fn new(start: u16, count: u16) -> Result<Self, RangeError> {
        if start == 0 {
            return Err(RangeError::ZeroStart);
        }
        if count == 0 {
            return Err(RangeError::ZeroCount);
        }
        if u32::from(start) + u32::from(count) - 1 > u32::from(u16::MAX) {
            return Err(RangeError::PastEnd {
                start,
                count: u32::from(count),
            });
        }
        Ok(PortRange { start, count })
    }

    /// A block from `first` to `last` inclusive.
    pub fn from_bounds(first: u16, last: u16) -> Result<Self, RangeError> {
        if last < first {
            return Err(RangeError::Reversed { first, last });
        }
        let count = u16::try_from(u32::from(last) - u32::from(first) + 1).map_err(|_| {
            RangeError::PastEnd {
                start: first,
                count: u32::from(last) - u32::from(first) + 1,
            }
        })?;
        PortRange::new(first, count)
    }

    /// The first port.
    pub fn start(self) -> u16 {
        self.start
    }

    /// How many ports.
    pub fn count(self) -> u16 {
        self.count
    }

    /// The last port (inclusive).
    pub fn end(self) -> u16 {
        // Cannot overflow: `new` checked start + count - 1 <= 65535.
        self.start + (self.count - 1)
    }

    /// Whether `port` lies in the block.
    pub fn contains(self, port: u16) -> bool {
        self.start <= port && port <= self.end()
    }

    /// Whether the two blocks share a port.
    pub fn overlaps(self, other: PortRange) -> bool {
        self.start <= other.end() && other.start <= self.end()
    }

    /// The ports the two blocks share, if any.
    pub fn intersection(self, other: PortRange) -> Option<PortRange> {
        let first = self.start.max(other.start);
        let last = self.end().min(other.end());
        PortRange::from_bounds(first, last).ok()
    }

    /// The ports of the block, in order.
    pub fn ports(self) -> impl Iterator<Item = u16> {
        self.start..=self.end()
    }
}

impl fmt::Display for PortRange {
    /// `8080` for one port, `8080-8089` for a block.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end())
        }
    }
}

/// What a client asks for: a specific block, or any free block of a size (a range
/// whose start is 0 is a wildcard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RangeRequest {
    /// Exactly these ports.
    Specific(PortRange),
    /// Any `count` contiguous free ports from the pool.
    Wildcard {
        /// How many ports; at least 1.
        count: u16,
    },
    /// Any `count` contiguous free ports inside `bounds` (a bounded wildcard), which may lie
    /// inside the pool or outside it.
    Within {
        /// How many ports; at least 1, at most `bounds.count()`.
        count: u16,
        /// The ports the block must lie in.
        bounds: PortRange,
    },
}

impl RangeRequest {
    /// The `(start, count)` form of the protocol: `start == 0` means wildcard. Fails on `count == 0`
    /// and on a specific range that runs past 65535.
    pub fn from_start_count(start: u16, count: u16) -> Result<Self, RangeError> {
        if count == 0 {
            return Err(RangeError::ZeroCount);
        }
        if start == 0 {
            Ok(RangeRequest::Wildcard { count })
        } else {
            PortRange::new(start, count).map(RangeRequest::Specific)
        }
    }

    /// [`RangeRequest::from_start_count`], bounded to `within = (first, last)` (inclusive)
    /// when given: then `start` must be 0 and the bounds must hold `count` ports.
    pub fn from_start_count_within(
        start: u16,
        count: u16,
        within: Option<(u16, u16)>,
    ) -> Result<Self, RangeError> {
        let request = Self::from_start_count(start, count)?;
        let Some((first, last)) = within else {
            return Ok(request);
        };
        if start != 0 {
            return Err(RangeError::StartWithin { start });
        }
        if first == 0 {
            return Err(RangeError::ZeroBound);
        }
        let bounds = PortRange::from_bounds(first, last)?;
        if count > bounds.count() {
            return Err(RangeError::WithinTooSmall { count, bounds });
        }
        Ok(RangeRequest::Within { count, bounds })
    }

    /// How many ports are asked for.
    pub fn count(self) -> u16 {
        match self {
            RangeRequest::Specific(r) => r.count(),
            RangeRequest::Wildcard { count } | RangeRequest::Within { count, .. } => count,
        }
    }

    /// The bounds of a wildcard search: the request's for [`RangeRequest::Within`], none
    /// (the pool) otherwise.
    pub fn bounds(self) -> Option<PortRange> {
        match self {
            RangeRequest::Within { bounds, .. } => Some(bounds),
            _ => None,
        }
    }
}

/// The ports wildcard requests are served from (by default the kernel's ephemeral range).
/// Specific requests may lie anywhere in 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pool(PortRange);

impl Pool {
    /// Linux's default ephemeral range, 32768-60999.
    pub const LINUX_DEFAULT: Pool = Pool(PortRange {
        start: 32768,
        count: 60999 - 32768 + 1,
    });

    /// The pool `first ..= last`.
    pub fn new(first: u16, last: u16) -> Result<Self, RangeError> {
        if first == 0 {
            return Err(RangeError::ZeroPool);
        }
        PortRange::from_bounds(first, last).map(Pool)
    }

    /// The pool as a block of ports.
    pub fn range(self) -> PortRange {
        self.0
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.start(), self.0.end())
    }
}

impl FromStr for Pool {
    type Err = RangeError;

    /// Parses `LO-HI`, e.g. `32768-60999`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RangeError::BadPool(s.chars().take(32).collect());
        let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        Pool::new(lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_is_low_high_from_port_1() {
        assert_eq!("32768-60999".parse::<Pool>(), Ok(Pool::LINUX_DEFAULT));
        let zero = "0-100".parse::<Pool>().unwrap_err();
        assert_eq!(zero, RangeError::ZeroPool);
        assert!(!zero.to_string().contains("any free block"), "{zero}");
        assert!(matches!("x".parse::<Pool>(), Err(RangeError::BadPool(_))));
    }
}
