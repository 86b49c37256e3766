//! Tests of the daemon through its socket, speaking the protocol by hand where a test needs a
//! client the real library would not be (another user, another network namespace).

mod authority;
mod foreign_netns;
mod stop;

/// Runs `python3 -c PRELUDE+script ARGS…` through `wrapper` (e.g. `setpriv …`, `unshare …`)
/// and decodes the response payload it printed as hex on its last line, one per line. The
/// caller has checked `needs::python3()`.
fn python_client<S: AsRef<str>>(
    wrapper: &[S],
    script: &str,
    args: &[&str],
) -> Vec<berth_protocol::Response> {
    use crate::testing::deadline::{output_within, DEADLINE};
    use crate::testing::needs::PYTHON3;
    use crate::testing::raw::{response_from_hex, PY_PRELUDE};
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
