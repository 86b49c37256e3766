//! The daemon's integration tests, one binary (one link) for the crate: each module drives a
//! real in-process daemon (`berth_testkit::TestDaemon`) through its socket, speaking the protocol
//! by hand where a test needs a client the real library would not be.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod architecture;
mod authority;
mod foreign_netns;
mod portserver;
mod stop;
mod timeouts;

/// Runs `python3 -c PRELUDE+script ARGS…` through `wrapper` (e.g. `setpriv …`, `unshare …`)
/// and decodes the response payload it printed as hex on its last line, one per line. The
/// caller has checked `needs::python3()`.
fn python_client<S: AsRef<str>>(
    wrapper: &[S],
    script: &str,
    args: &[&str],
) -> Vec<berth_protocol::Response> {
    use berth_testkit::deadline::{output_within, DEADLINE};
    use berth_testkit::needs::PYTHON3;
    use berth_testkit::raw::{response_from_hex, PY_PRELUDE};
    let (program, rest) = wrapper.split_first().expect("a wrapper");
    let out = output_within(
        std::process::Command::new(program.as_ref())
            .args(rest.iter().map(AsRef::as_ref))
            .args([PYTHON3, "-c"])
            .arg(format!("{PY_PRELUDE}{script}"))
            .args(args),
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("hex")
        .lines()
        .map(response_from_hex)
        .collect()
}
