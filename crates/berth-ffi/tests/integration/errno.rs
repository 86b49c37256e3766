//! libberth's `EPROTO`: every call that needs the daemon reports it, with the kind
//! `BERTH_ERROR_KIND_INCOMPATIBLE` and a message, when the daemon answers with no protocol
//! version in common (as no daemon of this release does, so a fake one on a temporary socket
//! answers). Compiled from C, as in `c.rs` (and, like there, also with the sanitizers),
//! so that errno and the kind are read the way a C caller reads them.

use crate::support;

use std::path::Path;

use berth_core::ErrorKind;
use berth_testkit::FakeDaemon;
use support::{Build, Program};

/// Calls each function that talks to the daemon and prints, per call, one line:
/// `name<TAB>return value<TAB>errno<TAB>kind<TAB>berth_last_error_message()`, where the kind is
/// `INCOMPATIBLE (10)` for `BERTH_ERROR_KIND_INCOMPATIBLE` and `another kind (N)` otherwise.
const PROGRAM: &str = r#"
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include "berth.h"

static void show(const char *name, int rc) {
    int saved = errno;
    berth_error_kind kind = berth_last_error_kind();
    const char *message = berth_last_error_message();
    const char *known = kind == BERTH_ERROR_KIND_INCOMPATIBLE ? "INCOMPATIBLE" : "another kind";
    printf("%s\t%d\t%d\t%s (%d)\t%s\n", name, rc, saved, known, (int)kind,
           message ? message : "(null)");
}

int main(void) {
    struct berth_port_range range = { .start_port = 0, .number_of_ports = 1 };
    struct berth_port_reservation_instance got;
    uint64_t token = 0;
    errno = 0;
    show("acquire", berth_acquire_port_reservation(IPPROTO_TCP, &range, &got));
    errno = 0;
    show("release", berth_release_port_reservation(1));
    errno = 0;
    show("create", berth_create_persistent_tcp_port_reservation(27200, 1, &token));
    errno = 0;
    show("lookup", berth_lookup_persistent_udp_port_reservation(27200, 1, &token));
    errno = 0;
    show("delete", berth_delete_persistent_udp_port_reservation(27200, 1));
    return 0;
}
"#;

/// Compiles [`PROGRAM`] (`build`) and runs it against `socket`; its lines, split at tabs.
fn calls_against(socket: &Path, build: Build) -> Vec<Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("errno.c");
    std::fs::write(&source, PROGRAM).unwrap();
    let program = Program {
        path: support::compile(&source, dir.path(), build),
        build,
    };
    let out = program.run(&[], socket, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        support::describe(&program.path, &[], &out)
    );
    let lines: Vec<Vec<String>> = stdout
        .lines()
        .map(|l| l.splitn(5, '\t').map(str::to_owned).collect())
        .collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    lines
}

/// Asserts that every call failed with `EPROTO`, the kind `BERTH_ERROR_KIND_INCOMPATIBLE`
/// and a message mentioning `needle`.
fn assert_eproto(lines: &[Vec<String>], needle: &str) {
    for line in lines {
        let [name, rc, errno, kind, message] = &line[..] else {
            panic!("{line:?}")
        };
        assert_eq!(rc, "-1", "{name}: {line:?}");
        assert_eq!(errno, &libc::EPROTO.to_string(), "{name}: {line:?}");
        assert!(kind.starts_with("INCOMPATIBLE "), "{name}: {line:?}");
        assert!(message.contains(needle), "{name}: {line:?}");
    }
}

fn refusing_the_hello(build: Build) {
    if berth_testkit::needs::c_compiler().is_none()
        || (build == Build::Sanitized && !support::sanitizers_available())
    {
        return;
    }
    let fake = FakeDaemon::refusing_hello(
        ErrorKind::Incompatible,
        "client protocol versions 1..=1, daemon 7..=9: upgrade the client",
    );
    assert_eproto(&calls_against(&fake.socket, build), "upgrade the client");
}

fn choosing_a_newer_version(build: Build) {
    if berth_testkit::needs::c_compiler().is_none()
        || (build == Build::Sanitized && !support::sanitizers_available())
    {
        return;
    }
    let fake = FakeDaemon::choosing_a_newer_version();
    assert_eproto(&calls_against(&fake.socket, build), "protocol version");
}

#[test]
fn a_daemon_that_refuses_the_hello_as_incompatible_is_eproto() {
    refusing_the_hello(Build::Plain);
}

#[test]
fn a_daemon_that_refuses_the_hello_as_incompatible_is_eproto_under_asan() {
    refusing_the_hello(Build::Sanitized);
}

#[test]
fn a_daemon_that_chooses_a_version_this_library_does_not_speak_is_eproto() {
    choosing_a_newer_version(Build::Plain);
}

#[test]
fn a_daemon_that_chooses_a_version_this_library_does_not_speak_is_eproto_under_asan() {
    choosing_a_newer_version(Build::Sanitized);
}
