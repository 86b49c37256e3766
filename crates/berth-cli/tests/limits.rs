//! Fair limits through the built binary: a user at `max_connections_per_uid` is answered
//! "busy", naming the limit and the use, while other users (and root) are still served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;

use berth_daemon::testing::needs::{self, AS_NOBODY as NOBODY};
use support::{Berth, Daemon};

#[test]
fn a_user_over_its_connection_limit_is_told_busy_and_others_are_served() {
    // Nobody is the user at its limit; root, the one served meanwhile.
    if !needs::users() {
        return;
    }
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("berth.toml");
    std::fs::write(&file, "max_connections_per_uid = 2\n").unwrap();
    let d = Daemon::start_with("20980-20989", &["--config", file.to_str().unwrap()]);
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // nobody holds two connections: two `berth run`s whose commands wait.
    let mut holders: Vec<_> = (0..2)
        .map(|_| {
            let mut holder = Berth::wrapped_in(d.socket(), NOBODY)
                .args(["run", "--tcp", "1", "--", "sh", "-c", "echo ready; read x"])
                .spawn();
            assert_eq!(holder.next_line(), "ready");
            holder
        })
        .collect();

    // A third connection of nobody's is answered, not left waiting.
    Berth::wrapped_in(d.socket(), NOBODY)
        .args(["status"])
        .output()
        .code(18)
        .says(&[
            "busy",
            "2 of 2 connections",
            "uid 65534",
            "max_connections_per_uid",
        ]);
    // Root is served meanwhile.
    assert_eq!(d.list().len(), 2);

    // One connection closes: nobody is served again.
    let mut first = holders.remove(0);
    first.send_line("x");
    first.wait().code(0);
    support::poll_until("nobody served again", || {
        let out = Berth::wrapped_in(d.socket(), NOBODY)
            .args(["status", "--json"])
            .output();
        (out.status.code() == Some(0)).then_some(())
    });
    for mut holder in holders {
        holder.send_line("x");
        holder.wait().code(0);
    }
}
