//! `berth why` and the bound/held columns of `berth list`, through the built binary and a
//! real daemon of its own (another process: sockets of this test are not the daemon's).
//!
//! Small helpers of its own; every wait has a deadline.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use berth_testkit::deadline::output_within;
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const DEADLINE: Duration = Duration::from_secs(10);

/// A `berth daemon` child on a temporary socket, off the host's sysctls and authority.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(pool: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(BERTH)
            .arg("daemon")
            .arg("--socket")
            .arg(dir.path().join("b.sock"))
            .arg("--db")
            .arg(dir.path().join("berth.db"))
            .args(["--pool", pool, "--ready-stdout"])
            .env("BERTH_KERNEL_SYNC", "off")
            .env(
                "BERTH_AUTHORITY",
                format!("berth-test-why-{}-{pool}", std::process::id()),
            )
            .env_remove("BERTH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(line) if line == "ready\n" => Daemon { child, dir },
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not get ready: {other:?}");
            }
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("b.sock")
    }

    fn berth(&self, args: &[&str]) -> Output {
        berth_on(&self.socket(), args)
    }

    /// `berth ARGS` that must exit 0; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn berth_on(socket: &Path, args: &[&str]) -> Output {
    output_within(
        Command::new(BERTH)
            .args(args)
            .env("BERTH_SOCKET", socket)
            .env("BERTH_NO_AUTOSTART", "1")
            .env_remove("BERTH_LOG"),
        DEADLINE,
    )
}

#[test]
fn why_names_the_process_that_has_a_port_bound() {
    let d = Daemon::start("26400-26409");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let me = u64::from(std::process::id());

    // A process another test forks meanwhile holds a copy of every descriptor until its exec,
    // and may be the one found holding the listener: asked again until the copy is gone.
    let report = crate::support::poll_until("the listener reported as this process's", || {
        let report = d.json(&["why", "--tcp", &port, "--json"]);
        let mine = report["sockets"].as_array().is_some_and(|s| {
            s.iter().any(|s| {
                s["local"] == format!("127.0.0.1:{port}") && s["owner"]["pid"].as_u64() == Some(me)
            })
        });
        mine.then_some(report)
    });
    assert_eq!(report["protocol"], "tcp");
    assert_eq!(report["port"].as_str(), None);
    assert_eq!(report["port"].to_string(), port);
    assert_eq!(report["status"], "in_use");
    assert!(report["reservation"].is_null());
    assert_eq!(report["in_pool"], false);
    assert!(report["in_ephemeral_range"].is_boolean());
    assert!(report["kernel_reserved"].is_boolean());
    let sockets = report["sockets"].as_array().unwrap();
    let ours = sockets
        .iter()
        .find(|s| s["local"] == format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("the listener is not in {report}"));
    assert_eq!(ours["state"], "LISTEN");
    assert_eq!(ours["owner"]["pid"].as_u64(), Some(me));
    assert!(ours["owner"]["command"].is_string());
    // The daemon is another process: this socket is not one of its own.
    assert_eq!(ours["held_by_berth"], false);

    let text = crate::support::poll_until("the text naming this process", || {
        let text = d.ok(&["why", "--tcp", &port]);
        text.contains(&format!("pid {me} (")).then_some(text)
    });
    assert!(
        text.starts_with(&format!("tcp port {port}: not reserved, but in use")),
        "{text}"
    );
    assert!(text.contains("LISTEN"), "{text}");
    assert!(text.contains(&format!("pid {me} (")), "{text}");

    // The same port in the other space is free of this socket.
    let udp = d.json(&["why", "--udp", &port, "--json"]);
    assert!(udp["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["local"] != format!("127.0.0.1:{port}")));
}

#[test]
fn why_and_list_show_a_reservation_its_bound_ports_and_held() {
    let d = Daemon::start("26410-26419");
    let client = berth::blocking::Client::connect_to(d.socket()).unwrap();
    let reservation = client.acquire(berth::Protocol::Udp, 26412, 3).unwrap();
    let socket = reservation.udp_socket(Ipv4Addr::LOCALHOST.into()).unwrap();
    let bound = socket.local_addr().unwrap().port();
    let token = reservation.token().to_string();
    let me = u64::from(std::process::id());

    // The socket's owner is this process. A process another test forks meanwhile holds a copy
    // of every descriptor until its exec, and may be the one found holding the socket: asked
    // again until the copy is gone.
    let owned_by_me = |report: &serde_json::Value| {
        report["sockets"].as_array().is_some_and(|s| {
            s.iter().any(|s| {
                s["local"] == format!("127.0.0.1:{bound}") && s["owner"]["pid"].as_u64() == Some(me)
            })
        })
    };
    let report = crate::support::poll_until("the socket reported as this process's", || {
        let report = d.json(&["why", "--udp", &bound.to_string(), "--json"]);
        owned_by_me(&report).then_some(report)
    });
    assert_eq!(report["status"], "reserved");
    assert_eq!(report["in_pool"], true);
    let res = &report["reservation"];
    assert_eq!(res["token"], token.as_str());
    assert_eq!(res["kind"], "runtime");
    assert_eq!(
        (res["start"].as_u64(), res["count"].as_u64()),
        (Some(26412), Some(3))
    );
    assert_eq!(res["owner"]["pid"].as_u64(), Some(me));
    assert!(res["held"].is_boolean());
    assert_eq!(res["bound"], serde_json::json!([bound]));
    assert_eq!(res["port_bound"], true);
    let sock = report["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["local"] == format!("127.0.0.1:{bound}"))
        .unwrap_or_else(|| panic!("the owner's socket is not in {report}"));
    assert_eq!(sock["state"], "UNCONN");
    assert_eq!(sock["owner"]["pid"].as_u64(), Some(me));

    // Another port of the block: reserved, not bound by its owner.
    let other = reservation.ports().find(|&p| p != bound).unwrap();
    let report = d.json(&["why", "--udp", &other.to_string(), "--json"]);
    assert_eq!(report["reservation"]["port_bound"], false);
    let text = d.ok(&["why", "--udp", &other.to_string()]);
    assert!(text.contains(&token), "{text}");
    assert!(
        text.contains(&format!("bound by its owner: {bound}")),
        "{text}"
    );

    // berth list: the fixed keys, and held and bound.
    let list = d.json(&["list", "--json"]);
    let row = &list.as_array().unwrap()[0];
    for key in [
        "token", "protocol", "start", "count", "kind", "owner", "age_s",
    ] {
        assert!(row.get(key).is_some(), "{key} missing from {row}");
    }
    assert!(row["held"].is_boolean());
    assert_eq!(row["bound"], serde_json::json!([bound]));
    let table = d.ok(&["list"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.trim_end().ends_with("AGE  HELD  BOUND  NAME  LABEL"),
        "{header}"
    );
    let cells: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        cells[cells.len() - 2..],
        ["-", "-"],
        "no name, no label: {table}"
    );
    assert_eq!(cells[cells.len() - 3], bound.to_string(), "{table}");
    assert!(["yes", "no"].contains(&cells[cells.len() - 4]), "{table}");
}

#[test]
fn why_reports_a_free_pool_port() {
    let d = Daemon::start("26420-26429");
    // Nothing on the host should use this test's own pool port; the report is made either way.
    let report = d.json(&["why", "--tcp", "26425", "--json"]);
    assert!(report["reservation"].is_null());
    assert_eq!(report["in_pool"], true);
    if report["sockets"].as_array().unwrap().is_empty() {
        assert_eq!(report["status"], "free");
        let text = d.ok(&["why", "--tcp", "26425"]);
        assert!(text.starts_with("tcp port 26425: free\n"), "{text}");
        assert!(text.contains("in the daemon's wildcard pool"), "{text}");
    }
    // A persistent reservation has no owner process, and says so; its name is shown.
    d.ok(&[
        "persistent",
        "add",
        "--tcp",
        "--start",
        "26428",
        "--count",
        "1",
        "--name",
        "why/pers",
    ]);
    let text = d.ok(&["why", "--tcp", "26428"]);
    assert!(text.contains("no owner process"), "{text}");
    assert!(!text.contains("owner not shown"), "{text}");
    assert!(text.contains("name: why/pers"), "{text}");
}

#[test]
fn why_exit_codes() {
    let d = Daemon::start("26430-26439");
    // Port 0: invalid-argument.
    assert_eq!(d.berth(&["why", "--tcp", "0"]).status.code(), Some(10));
    // Bad command lines.
    assert_eq!(
        d.berth(&["why", "--tcp", "--udp", "26430"]).status.code(),
        Some(2)
    );
    assert_eq!(
        d.berth(&["why", "--tcp", "--udp", "26430"]).status.code(),
        Some(2)
    );
    assert_eq!(d.berth(&["why", "--tcp", "70000"]).status.code(), Some(2));
    // No daemon: unavailable, and none is started.
    let gone = d.dir.path().join("nobody.sock");
    let out = berth_on(&gone, &["why", "--tcp", "26430"]);
    assert_eq!(out.status.code(), Some(18));
    assert!(!gone.exists());
    // A UDP socket of this test is found through the CLI too.
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = udp.local_addr().unwrap().port().to_string();
    let report = d.json(&["why", "--udp", &port, "--json"]);
    assert_eq!(report["status"], "in_use");
    // With neither --tcp nor --udp: both reports, TCP first — an array in JSON.
    let both = d.json(&["why", &port, "--json"]);
    let protocols: Vec<_> = both
        .as_array()
        .expect("an array of reports")
        .iter()
        .map(|r| {
            (
                r["protocol"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(protocols[1], ("udp", "in_use"), "{both}");
    assert_eq!(protocols[0].0, "tcp", "{both}");
    let text = d.ok(&["why", &port]);
    assert!(text.starts_with(&format!("tcp port {port}: ")), "{text}");
    assert!(
        text.contains(&format!("\nudp port {port}: not reserved, but in use")),
        "{text}"
    );
}

#[test]
fn why_says_a_reserved_port_has_sockets_a_program_bound_by_number() {
    let d = Daemon::start("26440-26449");
    // `berth run`'s child binds the port it was given by number (not through berth) and asks.
    let script = "import os, socket, subprocess, sys\n\
                  s = socket.socket(); s.bind((\"127.0.0.1\", int(os.environ[\"PORT\"]))); s.listen()\n\
                  print(subprocess.run([sys.argv[1], \"why\", \"--tcp\", os.environ[\"PORT\"]], capture_output=True, text=True).stdout)";
    let text = d.ok(&[
        "run",
        "--tcp",
        "1",
        "--",
        "/usr/bin/python3",
        "-c",
        script,
        BERTH,
    ]);
    assert!(
        text.contains(": reserved, and 1 socket bound on it\n"),
        "{text}"
    );
}
