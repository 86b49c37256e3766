//! Rows for the tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]
#![expect(
    clippy::expect_used,
    reason = "test fixtures: a bad constant should stop the test loudly"
)]

use berth_core::{Owner, PortRange, Protocol, Token};
use berth_store::{JournalRow, PersistentRow};

/// A token; panics on 0 (tests only).
pub fn token(value: u64) -> Token {
    Token::new(value).expect("test tokens are non-zero")
}

/// A persistent row with allow lists.
pub fn persistent(t: u64, protocol: Protocol, start: u16, count: u16) -> PersistentRow {
    PersistentRow {
        token: token(t),
        protocol,
        range: PortRange::new(start, count).expect("valid test range"),
        allow_users: vec![1000, 1001],
        allow_groups: vec![27],
        created_at_ms: 1_750_000_000_000 + t % 1000,
        created_by_uid: 0,
        label: None,
        name: None,
    }
}

/// A journal row owned by a made-up process.
pub fn journaled(t: u64, start: u16, count: u16) -> JournalRow {
    JournalRow {
        token: token(t),
        protocol: Protocol::Tcp,
        range: PortRange::new(start, count).expect("valid test range"),
        owner: Owner {
            pid: 4121,
            uid: 1000,
            gid: 1000,
            start_time: u64::MAX - t,
            command: format!("cmd-{t}").into(),
        },
        acquired_at_ms: 1_750_000_000_000 + t % 1000,
        process: false,
        held: false,
        label: None,
        name: None,
        cgroup: None,
    }
}
