//! The long messages users read, pinned word for word by snapshots (`snapshots/`, reviewed
//! with `cargo insta review` or rewritten with `INSTA_UPDATE=always`), so a change of wording
//! shows in review instead of slipping through tests that look for a few words. What varies
//! from run to run — the temporary directory, pids, tokens, the user — is replaced by a
//! placeholder first.
//!
//! Ports: pool 26500-26549, specific ports 26550-26599 (apart from the other modules).

use crate::support;

use berth_testkit::FakeDaemon;
use support::{Berth, Daemon, Out};

/// `out`'s stderr with what differs between runs replaced: `dir` by `[DIR]`, each of `pids`
/// after the word "pid" by `[PID]`, this user's uid after "uid" by `[UID]`, and tokens by
/// `[TOKEN]`. Numbers are replaced only where the word says what they are: a pid may well
/// equal a port.
fn redacted(out: &Out, dir: &std::path::Path, pids: &[u32]) -> String {
    let mut text = out.stderr.replace(&*dir.to_string_lossy(), "[DIR]");
    for pid in pids {
        text = replace_word(&text, &format!("pid {pid}"), "pid [PID]");
    }
    let uid = rustix::process::getuid().as_raw();
    text = replace_word(&text, &format!("uid {uid}"), "uid [UID]");
    redact_tokens(&text)
}

/// `text` with every occurrence of `words` that is not part of a longer word or number
/// replaced by `with`.
fn replace_word(text: &str, words: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(words) {
        let before = out.chars().chain(rest[..at].chars()).next_back();
        let after = rest[at + words.len()..].chars().next();
        let alone = !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric());
        out.push_str(&rest[..at]);
        out.push_str(if alone { with } else { words });
        rest = &rest[at + words.len()..];
    }
    out.push_str(rest);
    out
}

/// `text` with every token (`0x` and 16 hex digits) replaced by `[TOKEN]`.
fn redact_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("0x") {
        let hex = rest[at + 2..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .count();
        out.push_str(&rest[..at]);
        if hex == 16 {
            out.push_str("[TOKEN]");
            rest = &rest[at + 18..];
        } else {
            out.push_str("0x");
            rest = &rest[at + 2..];
        }
    }
    out.push_str(rest);
    out
}

/// A block held by another `berth run`, asked for again: the refusal names the holder and says
/// what to do.
#[test]
fn a_conflict_names_the_holder() {
    let d = Daemon::start("26500-26549");
    let mut holder = d
        .berth([
            "run",
            "--tcp",
            "2",
            "--start",
            "26550",
            "--",
            "sh",
            "-c",
            "echo held; read x",
        ])
        .spawn();
    assert_eq!(holder.next_line(), "held");
    let out = d
        .berth(["run", "--tcp", "1", "--start", "26551", "--", "true"])
        .output()
        .code(12);
    let pids = [holder.pid(), holder.command_pid(), d.pid()];
    insta::assert_snapshot!(redacted(&out, d.dir(), &pids));
    holder.send_line("x");
    holder.wait();
}

/// More ports than the pool has: the refusal says how many were asked and how many there are.
#[test]
fn a_wildcard_larger_than_the_pool() {
    let d = Daemon::start("26500-26509");
    let out = d
        .berth(["run", "--tcp", "11", "--", "true"])
        .output()
        .code(13);
    insta::assert_snapshot!(redacted(&out, d.dir(), &[d.pid()]));
}

/// Releasing a token nobody holds.
#[test]
fn releasing_an_unknown_token() {
    let d = Daemon::start("26500-26509");
    let out = d.berth(["release", "0x00000000deadbeef"]).output().code(15);
    insta::assert_snapshot!(redacted(&out, d.dir(), &[d.pid()]));
}

/// No daemon on the socket, and on-demand start off: what to do about it.
#[test]
fn no_daemon_to_ask() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = Berth::new(&dir.path().join("none.sock"))
        .args(["list"])
        .output();
    insta::assert_snapshot!(redacted(&out, dir.path(), &[]));
}

/// A daemon of another protocol version.
#[test]
fn a_daemon_of_another_version() {
    let fake = FakeDaemon::choosing_a_newer_version();
    let out = Berth::new(&fake.socket).args(["list"]).output().code(19);
    let dir = fake.socket.parent().expect("the fake's directory");
    insta::assert_snapshot!(redacted(&out, dir, &[std::process::id()]));
}

/// Arguments that are not a reservation: a count of 0, a port past 65535.
#[test]
fn arguments_that_are_no_reservation() {
    let d = Daemon::start("26500-26509");
    let zero = d.berth(["run", "--tcp", "0", "--", "true"]).output();
    let past = d
        .berth(["run", "--tcp", "2", "--start", "65535", "--", "true"])
        .output();
    let both = format!(
        "--tcp 0:\n{}\n--tcp 2 --start 65535:\n{}",
        redacted(&zero, d.dir(), &[d.pid()]),
        redacted(&past, d.dir(), &[d.pid()])
    );
    insta::assert_snapshot!(both);
}

/// `berth --help` and `berth run --help`: the first thing a new user reads.
#[test]
fn help() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("b.sock");
    let top = Berth::new(&socket).args(["--help"]).output().code(0);
    let run = Berth::new(&socket).args(["run", "--help"]).output().code(0);
    insta::assert_snapshot!("help", top.stdout);
    insta::assert_snapshot!("run_help", run.stdout);
}
