//! Reservation tokens.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::RangeError;

/// The name of a reservation: a non-zero 64-bit value drawn from the OS CSPRNG. Printed as
/// `0x` and 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Token(NonZeroU64);

impl Token {
    /// The token with this value, or `None` for 0 (never a valid token).
    pub fn new(value: u64) -> Option<Self> {
        NonZeroU64::new(value).map(Token)
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:016x}", self.0.get())
    }
}

impl FromStr for Token {
    type Err = RangeError;

    /// Accepts `0x`-prefixed hex (as printed) or plain decimal.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RangeError::BadToken(s.chars().take(32).collect());
        let value = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).map_err(|_| bad())?,
            None => s.parse::<u64>().map_err(|_| bad())?,
        };
        Token::new(value).ok_or(RangeError::ZeroToken)
    }
}

/// Where new tokens come from. The daemon draws from the OS CSPRNG; tests use a
/// deterministic sequence. The table redraws values that are 0 or name a live reservation.
pub trait TokenSource {
    /// The next raw 64-bit value.
    fn draw(&mut self) -> u64;
}

impl<F: FnMut() -> u64> TokenSource for F {
    fn draw(&mut self) -> u64 {
        self()
    }
}
