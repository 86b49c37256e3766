//! The idle timeout through the built binary (`berth daemon --idle-timeout`): a connection
//! that holds nothing and says nothing is closed with a last frame saying why; one that holds
//! a reservation is not; and a `berth run` whose command runs far longer than the timeout is
//! not harmed — its command keeps its ports, and `berth run` ends as usual.

use crate::support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use berth_protocol::{ErrorDetail, Hello, Protocol, Request, Response};
use berth_testkit::raw::{frame, raw_frame, responses};
use support::{Daemon, DEADLINE};

/// A raw connection that said hello.
fn greeted(d: &Daemon, name: &str) -> UnixStream {
    let mut conn = UnixStream::connect(d.socket()).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    conn.write_all(&frame(Request::Hello(Hello::current(name))))
        .unwrap();
    let welcome = read_one(&mut conn);
    assert!(matches!(welcome, Response::Welcome(_)), "{welcome:?}");
    conn
}

/// One response; panics if none comes within [`DEADLINE`].
fn read_one(conn: &mut UnixStream) -> Response {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)
        .unwrap_or_else(|e| panic!("no answer within {DEADLINE:?}: {e}"));
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut payload).unwrap();
    let mut all = responses(&raw_frame(&payload));
    all.remove(0)
}

fn ask(conn: &mut UnixStream, request: Request) -> Response {
    conn.write_all(&frame(request)).unwrap();
    read_one(conn)
}

/// Waits, with a deadline, until the daemon serves `n` sessions besides the asking one.
fn sessions_become(d: &Daemon, n: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = d.status();
        if status["sessions"] == n + 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {n} other sessions within {DEADLINE:?}: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn an_idle_connection_is_closed_while_holders_and_berth_run_are_not_harmed() {
    let d = Daemon::start_with("24100-24109", &["--idle-timeout", "1"]);
    let mut idle = greeted(&d, "idle");
    let mut holder = greeted(&d, "holder");
    let Response::Acquired(held) = ask(
        &mut holder,
        Request::Acquire {
            protocol: Protocol::Tcp,
            start: 0,
            count: 1,
        },
    ) else {
        panic!("acquire failed")
    };
    // A `berth run` whose command waits for a line: its reservation is handed to the command,
    // so its own connection holds nothing.
    let mut run = d
        .berth(["run", "--tcp", "2", "--", "sh", "-c", "echo $PORT; read x"])
        .spawn();
    let port: u16 = run.next_line().parse().unwrap();
    let command = run.command_pid();
    d.owned_by(port, command);

    // The idle connection hears why and is closed.
    let notice = read_one(&mut idle);
    match &notice {
        Response::Error(e) => {
            assert_eq!(e.detail, ErrorDetail::Idle { timeout_ms: 1000 }, "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0);
    // So is `berth run`'s, which holds nothing of its own; the holder's stays open.
    sessions_become(&d, 1);

    // The holder is served and keeps its block; the command keeps its ports.
    let Response::List(list) = ask(&mut holder, Request::List) else {
        panic!("list failed")
    };
    assert!(list.iter().any(|r| r.token == held.token), "{list:?}");
    d.owned_by(port, command);

    // `berth run` ends as it always does: with the command's status, its ports freed.
    run.send_line("done");
    run.wait().code(0);
    let rows = d.list();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["token"], held.token.to_string());
}
