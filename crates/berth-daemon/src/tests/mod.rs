//! Tests of the daemon through its socket, speaking the protocol by hand where a test needs a
//! client the real library would not be (another user, another network namespace).

mod authority;
mod foreign_netns;
mod stop;

/// Whether this test process runs as root; tests that need it say why they skip otherwise.
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs `python3 -c PRELUDE+script ARGS…` through `wrapper` (e.g. `setpriv …`, `unshare -n`)
/// and decodes the response payload it printed as hex on its last line, one per line.
fn python_client(wrapper: &[&str], script: &str, args: &[&str]) -> Vec<berth_protocol::Response> {
    use crate::testing::raw::{response_from_hex, PY_PRELUDE};
    let (program, rest) = wrapper.split_first().expect("a wrapper");
    let out = std::process::Command::new(program)
        .args(rest)
        .args(["/usr/bin/python3", "-c"])
        .arg(format!("{PY_PRELUDE}{script}"))
        .args(args)
        .output()
        .expect("run python3");
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
