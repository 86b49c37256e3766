//! Names through the `berth` command: `run --name` gets the same ports again, `port` and
//! `wait` find them (a persistent reservation's host-wide name too, `USER:NAME` another
//! user's), `names` lists them, `forget` drops one, and each says what is wrong when it fails.

use std::os::unix::fs::PermissionsExt;

use crate::support;

use berth_testkit::needs;
use support::{ports, run_sh, Berth, Daemon};

#[test]
fn a_named_run_gets_its_ports_again_and_others_find_them() {
    let d = Daemon::start("23400-23409");
    let first = run_sh(
        &d,
        &["--tcp", "2", "--name", "shop/web"],
        "echo $BERTH_TCP_PORTS",
    )
    .output()
    .code(0);
    let block = ports(first.stdout.trim());
    assert_eq!(block.len(), 2);
    // Another run takes the next ports; the name's come back to it.
    let mut other = run_sh(&d, &["--tcp", "2"], "echo $BERTH_TCP_PORTS; read x").spawn();
    let others = ports(&other.next_line());
    assert!(
        others.iter().all(|p| !block.contains(p)),
        "{others:?} vs {block:?}"
    );
    let mut named = run_sh(
        &d,
        &["--tcp", "2", "--name", "shop/web"],
        "echo $BERTH_TCP_PORTS; read x",
    )
    .spawn();
    assert_eq!(ports(&named.next_line()), block);

    // berth port: the ports, a,b; --json for more; USER:NAME for a user's (here our own).
    let out = d.berth(["port", "shop/web"]).output().code(0);
    assert_eq!(ports(out.stdout.trim()), block);
    let json = d
        .berth(["port", "shop/web", "--json"])
        .output()
        .code(0)
        .json();
    assert_eq!(json[0]["name"], "shop/web");
    assert_eq!(json[0]["start"], u64::from(block[0]));
    let me = rustix::process::getuid().as_raw().to_string();
    let out = d
        .berth(["port", &format!("{me}:shop/web")])
        .output()
        .code(0);
    assert_eq!(ports(out.stdout.trim()), block);
    // The name is in the list, and its second live holder is refused (conflict, 12).
    let list = d.list();
    assert!(list.iter().any(|r| r["name"] == "shop/web"), "{list:?}");
    run_sh(&d, &["--tcp", "2", "--name", "shop/web"], "true")
        .output()
        .code(12)
        .says(&["shop/web"]);
    // berth wait answers at once for a live name.
    let out = d
        .berth(["wait", "shop/web", "--timeout", "5"])
        .output()
        .code(0);
    assert_eq!(ports(out.stdout.trim()), block);

    // Another user looks it up by USER:NAME and sees the ports, not the owner.
    if needs::other_users_available() {
        std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let json = Berth::wrapped_in(d.socket(), needs::AS_NOBODY)
            .args(["port", &format!("{me}:shop/web"), "--json"])
            .output()
            .code(0)
            .json();
        assert_eq!(json[0]["start"], u64::from(block[0]));
        assert!(json[0]["owner"].is_null(), "{json}");
        // Its own name of the same text is not ours.
        Berth::wrapped_in(d.socket(), needs::AS_NOBODY)
            .args(["port", "shop/web"])
            .output()
            .code(15);
    } else {
        needs::skip(
            needs::Need::Users,
            "part: another user finds a name by USER:NAME (needs root, to run berth as nobody)",
        );
    }
    named.send_line("done");
    named.wait().code(0);
    other.send_line("done");
    other.wait().code(0);

    // Asked for a block of another size, the name moves, and the notice says why.
    let grown = run_sh(
        &d,
        &["--tcp", "3", "--name", "shop/web"],
        "echo $BERTH_TCP_PORTS",
    )
    .output()
    .code(0);
    assert!(
        grown
            .stderr
            .contains("3 ports were asked for, and its block of last time had 2"),
        "{}",
        grown.stderr
    );
    assert!(!grown.stderr.contains("taken"), "{}", grown.stderr);

    // names: remembered, not live; forget drops it.
    let names = d.berth(["names", "--json"]).output().code(0).json();
    assert_eq!(names[0]["name"], "shop/web");
    assert_eq!(names[0]["live"], false);
    let table = d.berth(["names"]).output().code(0).stdout;
    assert!(table.contains("shop/web"), "{table}");
    d.berth(["forget", "shop/web"]).output().code(0);
    d.berth(["forget", "shop/web"])
        .output()
        .code(15)
        .says(&["berth names"]);
    let names = d.berth(["names", "--json"]).output().code(0).json();
    assert_eq!(names, serde_json::json!([]));
}

#[test]
fn port_and_wait_say_what_is_missing() {
    let d = Daemon::start("23410-23419");
    d.berth(["port", "nobody/here"])
        .output()
        .code(15)
        .says(&["no live reservation has", "nobody/here"]);
    d.berth(["wait", "nobody/here", "--timeout", "0"])
        .output()
        .code(15)
        .says(&["after waiting"]);
    d.berth(["port", "Not/A/Name"])
        .output()
        .code(10)
        .says(&["is not a name"]);
    d.berth(["port", "no-such-user-here:web"])
        .output()
        .code(10)
        .says(&["no user named"]);
    run_sh(&d, &["--tcp", "1", "--name", "bad name"], "true")
        .output()
        .code(10)
        .says(&["is not a name"]);

    // A waiter started before the name exists is answered when it does, and with --bound
    // only once the port is bound.
    let waiter = d
        .berth(["wait", "late/api", "--bound", "--timeout", "60"])
        .spawn();
    let mut holder = run_sh(
        &d,
        &["--tcp", "1", "--name", "late/api"],
        &format!("echo $PORT; read x; exec {} -c 'import socket,os; s=socket.socket(); s.bind((\"127.0.0.1\", int(os.environ[\"PORT\"]))); s.listen(); print(\"bound\", flush=True); input()'", needs::PYTHON3),
    )
    .spawn();
    let port = holder.next_line();
    holder.send_line("bind now");
    assert_eq!(holder.next_line(), "bound");
    let out = waiter.wait().code(0);
    assert_eq!(out.stdout.trim(), port);
    holder.send_line("done");
    holder.wait().code(0);
}

#[test]
fn a_persistent_name_is_the_hosts() {
    let d = Daemon::start("23420-23429");
    d.berth([
        "persistent",
        "add",
        "--tcp",
        "--start",
        "23440",
        "--count",
        "1",
        "--name",
        "ipp",
    ])
    .output()
    .code(0);
    let out = d.berth(["port", "ipp"]).output().code(0);
    assert_eq!(out.stdout.trim(), "23440");
    d.berth([
        "persistent",
        "add",
        "--tcp",
        "--start",
        "23441",
        "--count",
        "1",
        "--name",
        "ipp",
    ])
    .output()
    .code(12)
    .says(&["ipp"]);
    // Without --start, the name must be a service of /etc/services (its port is taken).
    d.berth([
        "persistent",
        "add",
        "--tcp",
        "--name",
        "no-such-service-berth",
    ])
    .output()
    .code(10)
    .says(&["is not a tcp service of /etc/services"]);
    // A text that is no name is said so, and a long one is not echoed back whole.
    let long = "X".repeat(100_000);
    let out = d
        .berth(["persistent", "add", "--tcp", "--name", &long])
        .output()
        .code(10)
        .says(&["a name of 100000 bytes is too long"]);
    assert!(out.stderr.len() < 1_000, "{} bytes", out.stderr.len());
    d.berth(["persistent", "add", "--tcp", "--name", "Bad/Name"])
        .output()
        .code(10)
        .says(&["\"Bad/Name\" is not a name"]);
    d.berth(["persistent", "add", "--tcp"]).output().code(2);
}

/// A server that binds `ADDRESS:PORT` by itself (argv[1], argv[2]), says "up", and exits at
/// the end of its input.
const SERVER: &str = "import socket,sys; s=socket.socket(); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print('up', flush=True); sys.stdin.read()";

fn start_server(port: u16, wrapper: &[&str]) -> std::process::Child {
    start_server_on("127.0.0.1", port, wrapper)
}

fn start_server_on(address: &str, port: u16, wrapper: &[&str]) -> std::process::Child {
    use std::io::BufRead;
    let mut argv: Vec<String> = wrapper.iter().map(|s| (*s).to_owned()).collect();
    argv.extend([
        // One that every user may run (not a per-user shim).
        needs::PYTHON3.into(),
        "-c".into(),
        SERVER.into(),
        address.into(),
        port.to_string(),
    ]);
    let mut child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "up", "the server did not start");
    child
}

#[test]
fn a_port_a_program_bound_is_published_and_freed_when_it_exits() {
    let d = Daemon::start("23430-23439");
    let mut server = start_server(23450, &[]);
    let out = d
        .berth(["publish", "dev/api", "--tcp", "23450"])
        .output()
        .code(0);
    assert!(out.stdout.trim().starts_with("0x"), "{}", out.stdout);
    assert!(out.stderr.contains("while it runs"), "{}", out.stderr);
    assert_eq!(
        d.berth(["port", "dev/api"]).output().code(0).stdout.trim(),
        "23450"
    );
    let row = support::row_at(&d.list(), 23450)
        .cloned()
        .expect("reserved");
    assert_eq!(row["owner"]["pid"], server.id());
    assert_eq!(row["name"], "dev/api");

    // Another user may not publish a port of this user's process.
    if needs::other_users_available() {
        std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let other = start_server(23452, &[]);
        Berth::wrapped_in(d.socket(), needs::AS_NOBODY)
            .args(["publish", "theirs", "--tcp", "23452"])
            .output()
            .code(16)
            .says(&["another user"]);
        // A port that two users' programs share (on different addresses) is neither's.
        let theirs = start_server_on("127.0.0.2", 23452, &needs::AS_NOBODY);
        d.berth(["publish", "shared", "--tcp", "23452"])
            .output()
            .code(16)
            .says(&["more than one user"]);
        for mut child in [other, theirs] {
            drop(child.stdin.take());
            child.wait().unwrap();
        }
    } else {
        needs::skip(
            needs::Need::Users,
            "part: another user's port cannot be published (needs root, to run berth as nobody)",
        );
    }

    // Its process ends: so does the reservation, and the port has nothing to publish.
    drop(server.stdin.take());
    server.wait().unwrap();
    support::poll_until("the published port freed", || {
        support::row_at(&d.list(), 23450).is_none().then_some(())
    });
    d.berth(["publish", "dev/api", "--tcp", "23450"])
        .output()
        .code(15)
        .says(&["no socket is bound"]);
}
