//! Exit codes: the one place where failures become numbers. `docs/cli.md` lists them.

use std::fmt;
use std::process::ExitCode;

use berth::ErrorKind;

/// A generic failure (bad configuration, I/O, a daemon that would not start).
pub const FAILURE: u8 = 1;
/// `berth run`: the command was found but could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// `berth run`: the command was not found.
pub const COMMAND_NOT_FOUND: u8 = 127;

/// The exit code of each error kind: 10 + its position in the table of `docs/associate.md`.
pub fn for_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidArgument => 10,
        ErrorKind::NotSupported => 11,
        ErrorKind::Conflict => 12,
        ErrorKind::PoolExhausted => 13,
        ErrorKind::ReservationFull => 14,
        ErrorKind::NotFound => 15,
        ErrorKind::PermissionDenied => 16,
        ErrorKind::QuotaExceeded => 17,
        ErrorKind::Unavailable => 18,
        ErrorKind::Incompatible => 19,
        _ => FAILURE,
    }
}

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    /// berth said no; the kind decides the exit code.
    Berth(berth::Error),
    /// Anything else.
    Other(anyhow::Error),
    /// `berth run` could not start its command.
    Spawn {
        /// Exit code: 126 or 127.
        code: u8,
        /// What happened.
        message: String,
    },
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Failure::Berth(e) => for_kind(e.kind()),
            Failure::Other(_) => FAILURE,
            Failure::Spawn { code, .. } => *code,
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Berth(e) => write!(f, "{e}"),
            Failure::Other(e) => f.write_str(&without_repeats(e)),
            Failure::Spawn { message, .. } => f.write_str(message),
        }
    }
}

/// The error and its causes joined with `: `, leaving out a cause whose text is already
/// part of what comes before (an error that quotes its source in its own message would
/// otherwise say it twice: "…: No such file or directory (os error 2): No such file or
/// directory (os error 2)").
fn without_repeats(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

impl From<berth::Error> for Failure {
    fn from(e: berth::Error) -> Self {
        Failure::Berth(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let quoted = format!("cannot read /x: {io}");
        let e = anyhow::Error::new(io).context(quoted.clone());
        assert_eq!(Failure::from(e).to_string(), quoted);
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(Failure::from(e).to_string(), "outer: inner");
    }

    #[test]
    fn every_kind_has_its_own_code() {
        let mut codes: Vec<u8> = ErrorKind::ALL.iter().map(|k| for_kind(*k)).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert!(codes.iter().all(|c| (10..20).contains(c)));
    }
}
