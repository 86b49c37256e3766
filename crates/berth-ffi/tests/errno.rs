//! libberth's `EPROTO`: every call that needs the daemon reports it, with a message, when the
//! daemon answers with no protocol version in common (as no daemon of this release does, so a
//! fake one on a temporary socket answers). Compiled from C, as in `tests/c.rs`, so that the
//! errno is read the way a C caller reads it. Without a C compiler each test says it is skipped
//! (`berth_daemon::testing::needs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_core::ErrorKind;
use berth_daemon::testing::deadline::{output_within, DEADLINE};
use berth_daemon::testing::needs;
use berth_daemon::testing::FakeDaemon;

/// Calls each function that talks to the daemon and prints, per call, one line:
/// `name<TAB>return value<TAB>errno<TAB>berth_last_error_message()`.
const PROGRAM: &str = r#"
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include "berth.h"

static void show(const char *name, int rc) {
    int saved = errno;
    const char *message = berth_last_error_message();
    printf("%s\t%d\t%d\t%s\n", name, rc, saved, message ? message : "(null)");
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

/// The directory holding the `libberth.so` built for this test run (see `tests/c.rs`).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("the test executable's directory");
    assert!(
        deps.join("libberth.so").is_file(),
        "no libberth.so in {}",
        deps.display()
    );
    deps.to_path_buf()
}

/// Compiles [`PROGRAM`] into `dir`; `None` without a C compiler (the skip reported).
fn compile(dir: &Path) -> Option<PathBuf> {
    let cc = needs::c_compiler()?;
    let source = dir.join("errno.c");
    std::fs::write(&source, PROGRAM).unwrap();
    let program = dir.join("errno");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let lib = lib_dir();
    let out = output_within(
        Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", "-I"])
            .arg(include)
            .arg(&source)
            .arg("-L")
            .arg(&lib)
            .arg("-lberth")
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-o")
            .arg(&program),
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(program)
}

/// Runs the program against `socket`; its lines, split at tabs; `None` without a C compiler
/// (the skip reported).
fn calls_against(socket: &Path) -> Option<Vec<Vec<String>>> {
    let dir = tempfile::tempdir().unwrap();
    let program = compile(dir.path())?;
    // cargo's LD_LIBRARY_PATH may list a stale copy of the library: use this run's.
    let out = output_within(
        Command::new(&program)
            .env("LD_LIBRARY_PATH", lib_dir())
            .env("BERTH_SOCKET", socket),
        DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Vec<String>> = stdout
        .lines()
        .map(|l| l.splitn(4, '\t').map(str::to_owned).collect())
        .collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    Some(lines)
}

/// Asserts that every call failed with `EPROTO` and a message mentioning `needle`.
fn assert_eproto(lines: &[Vec<String>], needle: &str) {
    for line in lines {
        let [name, rc, errno, message] = &line[..] else {
            panic!("{line:?}")
        };
        assert_eq!(rc, "-1", "{name}: {line:?}");
        assert_eq!(errno, &libc::EPROTO.to_string(), "{name}: {line:?}");
        assert!(message.contains(needle), "{name}: {line:?}");
    }
}

#[test]
fn a_daemon_that_refuses_the_hello_as_incompatible_is_eproto() {
    let fake = FakeDaemon::refusing_hello(
        ErrorKind::Incompatible,
        "client protocol versions 1..=1, daemon 7..=9: upgrade the client",
    );
    let Some(lines) = calls_against(&fake.socket) else {
        return;
    };
    assert_eproto(&lines, "upgrade the client");
}

#[test]
fn a_daemon_that_chooses_a_version_this_library_does_not_speak_is_eproto() {
    let fake = FakeDaemon::choosing_a_newer_version();
    let Some(lines) = calls_against(&fake.socket) else {
        return;
    };
    assert_eproto(&lines, "protocol version");
}
