//! The protocol version — defined here and nowhere else — and the handshake rule.

use thiserror::Error;

use crate::message::Hello;

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Opens every [`Hello`], so that a daemon can tell a berth client from a stray program.
pub const MAGIC: [u8; 4] = *b"BRTH";

/// The two sides share no protocol version (the error kind incompatible).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the client speaks berth protocol versions {}..={} and the daemon {}..={}; upgrade the older of the two (the daemon is `berth daemon`, the client is the program or library that connected)", .client.0, .client.1, .daemon.0, .daemon.1)]
pub struct VersionMismatch {
    /// The versions the client offered, `(min, max)`.
    pub client: (u16, u16),
    /// The versions this build speaks, `(min, max)`.
    pub daemon: (u16, u16),
}

/// Picks the version to speak with a client that sent `hello`: the newest one both sides know.
pub fn negotiate(hello: &Hello) -> Result<u16, VersionMismatch> {
    let mismatch = || VersionMismatch {
        client: (hello.min_version, hello.max_version),
        daemon: (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
    };
    if hello.magic != MAGIC {
        return Err(mismatch());
    }
    let chosen = hello.max_version.min(PROTOCOL_VERSION);
    if chosen < hello.min_version.max(MIN_PROTOCOL_VERSION) {
        return Err(mismatch());
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(min: u16, max: u16) -> Hello {
        Hello {
            magic: MAGIC,
            min_version: min,
            max_version: max,
            client: "test".into(),
        }
    }

    #[test]
    fn picks_the_newest_common_version() {
        assert_eq!(negotiate(&hello(1, 1)), Ok(PROTOCOL_VERSION));
        assert_eq!(
            negotiate(&hello(1, PROTOCOL_VERSION + 5)),
            Ok(PROTOCOL_VERSION)
        );
    }

    #[test]
    fn refuses_versions_out_of_reach() {
        let err = negotiate(&hello(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3)).unwrap_err();
        assert_eq!(err.client, (PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3));
        assert!(err.to_string().contains("upgrade"));
        assert!(negotiate(&hello(0, 0)).is_err());
    }

    #[test]
    fn refuses_a_wrong_magic() {
        let mut h = hello(1, 1);
        h.magic = *b"HTTP";
        assert!(negotiate(&h).is_err());
    }
}
