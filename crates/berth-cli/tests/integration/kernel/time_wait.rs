//! Ports kept only by connections in `TIME_WAIT` (a server that just closed): a root daemon
//! ends them to hold the port again, so that a stranger using `SO_REUSEADDR` cannot take it;
//! and a request by number for such a port is granted (docs/kernel.md, "TIME_WAIT").

use super::*;

/// Run by `berth run --listen`: fd 3 is the held port's listening socket. Sets
/// `SO_REUSEADDR` on it as servers do (its connections inherit it, and so does their
/// TIME_WAIT: a stranger with the option may then bind beside them), makes one connection to
/// itself, closes the server's end first (so it lingers in TIME_WAIT on the port), closes the
/// listener, prints the port, and keeps the reservation until stdin ends.
const SERVER: &str = r#"
import socket, sys
l = socket.socket(fileno=3)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
port = l.getsockname()[1]
c = socket.create_connection(("127.0.0.1", port))
a, _ = l.accept()
a.close()
c.recv(1)
c.close()
l.close()
print(port, flush=True)
sys.stdin.read()
"#;

/// Binds `port` the way a stranger slipping in would: `SO_REUSEADDR`, then `listen`. Prints
/// "bound" or "refused".
const STRANGER: &str = r#"
import errno, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.listen()
    print("bound")
except OSError as e:
    print("refused" if e.errno == errno.EADDRINUSE else f"error {e}")
"#;

/// Leaves a connection in TIME_WAIT on `port`: a listener there, a connection to it, the
/// server's end closed first.
const LINGER: &str = r#"
import socket, sys
port = int(sys.argv[1])
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port))
l.listen()
c = socket.create_connection(("127.0.0.1", port))
a, _ = l.accept()
a.close()
c.recv(1)
c.close()
l.close()
"#;

#[test]
fn a_held_port_kept_by_time_wait_is_held_again_and_a_stranger_kept_out() {
    if !needs::python3() {
        return;
    }
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    let daemon = Daemon::start(&ns, dir.path(), &["--pool", "40000-40099"], None);
    let server = dir.path().join("server.py");
    std::fs::write(&server, SERVER).expect("write the server");
    let stranger = dir.path().join("stranger.py");
    std::fs::write(&stranger, STRANGER).expect("write the stranger");
    let mut run = ns
        .berth(
            &daemon.socket,
            &["run", "--listen", "--tcp", "1", "--", needs::PYTHON3],
        )
        .arg(&server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn berth run --listen");
    let stdin = run.stdin.take();
    let lines = lines_of(run.stdout.take().expect("piped stdout"));
    let port = berth_testkit::deadline::next_line(&lines, DEADLINE, "the server");
    let lingering = ns.sh(&format!("ss -Htan state time-wait sport = :{port} | wc -l"));
    // The server's end lingers (unless the daemon already ended it).
    assert!(lingering.trim().parse::<u32>().is_ok(), "{lingering}");
    // Within a few re-hold passes the port is held again: the stranger is refused, and no
    // TIME_WAIT connection is left on it.
    support::poll_until("the stranger refused", || {
        let out = ok(ns.command(needs::PYTHON3).arg(&stranger).arg(&port));
        assert!(!out.contains("error"), "{out}");
        out.contains("refused").then_some(())
    });
    let left = ns.sh(&format!("ss -Htan state time-wait sport = :{port} | wc -l"));
    assert_eq!(left.trim(), "0", "TIME_WAIT connections left on {port}");
    drop(stdin);
    let status = wait(&mut run, "berth run");
    assert!(status.success(), "berth run ended with {status}");
}

#[test]
fn a_port_kept_only_by_time_wait_is_granted_by_number() {
    if !needs::python3() {
        return;
    }
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = workdir();
    let daemon = Daemon::start(&ns, dir.path(), &["--pool", "40000-40099"], None);
    let linger = dir.path().join("linger.py");
    std::fs::write(&linger, LINGER).expect("write the script");
    ok(ns.command(needs::PYTHON3).arg(&linger).arg("41000"));
    let left = ns.sh("ss -Htan state time-wait sport = :41000 | wc -l");
    assert_eq!(left.trim(), "1", "the connection lingers");
    let out = run(&mut ns.berth(
        &daemon.socket,
        &["run", "--tcp", "1", "--start", "41000", "--", "true"],
    ));
    assert!(out.status.success(), "refused over TIME_WAIT: {out:?}");
    // Granted, with what the command's own bind needs.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tcp port 41000 is kept by connections in TIME_WAIT")
            && stderr.contains("SO_REUSEADDR"),
        "{stderr}"
    );
    // A port with nothing on it: no notice.
    let out = run(&mut ns.berth(
        &daemon.socket,
        &["run", "--tcp", "1", "--start", "41002", "--", "true"],
    ));
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("TIME_WAIT"));
    // A listener is still in use, by number too.
    let mut holder = ns
        .command(needs::PYTHON3)
        .args([
            "-c",
            "import socket,sys; s=socket.socket(); s.bind(('0.0.0.0',41001)); s.listen(); print('up', flush=True); sys.stdin.read()",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a listener");
    let lines = lines_of(holder.stdout.take().expect("piped stdout"));
    assert_eq!(
        berth_testkit::deadline::next_line(&lines, DEADLINE, "the listener"),
        "up"
    );
    let out = run(&mut ns.berth(
        &daemon.socket,
        &["run", "--tcp", "1", "--start", "41001", "--", "true"],
    ));
    assert!(!out.status.success(), "granted beside a listener");
    drop(holder.stdin.take());
    let _ = wait(&mut holder, "the listener");
}
