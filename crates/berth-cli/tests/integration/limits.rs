//! Fair limits through the built binary: a user at `max_connections_per_uid` is answered
//! "busy", naming the limit and the use, while other users (and root) are still served.

use crate::support;

use std::os::unix::fs::PermissionsExt;

use berth_testkit::needs::{self, AS_NOBODY as NOBODY};
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

    // nobody holds two connections (`berth run` would not: it gives its connection back once
    // its command owns the ports), with a client that speaks the protocol by hand.
    let script = format!(
        "{}\nsock = os.environ['BERTH_SOCKET']\nconns = []\nfor _ in range(2):\n    c = socket.socket(socket.AF_UNIX); c.connect(sock); hello(c, b'holder'); conns.append(c)\nprint('ready', flush=True)\nsys.stdin.readline(); conns.pop().close(); print('closed', flush=True)\nsys.stdin.readline()\n",
        berth_testkit::raw::PY_PRELUDE
    );
    let mut wrapper: Vec<&str> = NOBODY.to_vec();
    wrapper.extend(["/usr/bin/python3", "-c", script.as_str()]);
    let mut holder = Berth::bare(wrapper).env("BERTH_SOCKET", d.socket()).spawn();
    assert_eq!(holder.next_line(), "ready");

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
    assert!(d.list().is_empty());

    // One connection closes: nobody is served again.
    holder.send_line("x");
    assert_eq!(holder.next_line(), "closed");
    support::poll_until("nobody served again", || {
        let out = Berth::wrapped_in(d.socket(), NOBODY)
            .args(["status", "--json"])
            .output();
        (out.status.code() == Some(0)).then_some(())
    });
    holder.send_line("x");
    holder.wait().code(0);
}

/// A refused connection is closed where it is refused (it can hold no descriptor: the socket
/// refuses them from its first byte on), so a flood of refused clients that keep their ends
/// open leaves the daemon's descriptors where they were — nothing queued to close later.
#[test]
fn refused_connections_leave_the_daemon_no_descriptor() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use berth_protocol::{ErrorDetail, Hello, Request, Response};
    use berth_testkit::raw::{frame, raw_frame, responses};

    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("berth.toml");
    std::fs::write(&file, "max_connections = 2\n").unwrap();
    let d = Daemon::start_with("20990-20999", &["--config", file.to_str().unwrap()]);
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count()
    };
    let greet = || {
        let mut conn = UnixStream::connect(d.socket()).unwrap();
        conn.set_read_timeout(Some(support::DEADLINE)).unwrap();
        // A refusal may come before the hello is written: then writing fails, reading works.
        let _ = conn.write_all(&frame(Request::Hello(Hello::current("flood"))));
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).unwrap();
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        conn.read_exact(&mut payload).unwrap();
        (conn, responses(&raw_frame(&payload)).remove(0))
    };
    // Both places taken, and the daemon's descriptors counted with them.
    let held: Vec<UnixStream> = (0..2).map(|_| greet().0).collect();
    let before = descriptors();
    let mut refused = Vec::new();
    for _ in 0..300 {
        let (conn, answer) = greet();
        let Response::Error(e) = &answer else {
            panic!("served past max_connections: {answer:?}")
        };
        assert!(matches!(e.detail, ErrorDetail::Busy(_)), "{e:?}");
        // Kept open on this side: the daemon's end must not wait for it.
        refused.push(conn);
    }
    let after = descriptors();
    assert!(
        after <= before + 8,
        "{before} descriptors before 300 refused connections, {after} after"
    );
    drop(held);
}
