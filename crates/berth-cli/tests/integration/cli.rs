//! End-to-end tests of the `berth` command: a real daemon per test (see `support`), real
//! `berth run` processes, real children.
//!
//! Tests run in parallel, so each uses its own daemon, its own pool and its own specific ports,
//! all in 20000-29999 (below the host's ephemeral range):
//!
//! | test | pool | specific ports |
//! |---|---|---|
//! | `concurrent_runs_get_disjoint_blocks` | 20000-20299 | — |
//! | `overlapping_start_names_the_holder` | 20400-20419 | 20450-20459 |
//! | `sigkill_of_run_keeps_the_block_while_its_command_runs` | 20500-20519 | 20550-20559 |
//! | `exit_status_and_environment_reach_the_caller` | 20600-20699 | — |
//! | `list_status_release_and_their_errors` | 20700-20719 | 20750-20752 |
//! | `messages_say_what_is_true` | 20800-20809 | — |
//! | `a_command_name_cannot_write_to_the_readers_terminal` | 20850-20859 | — |
//! | `files_beside_the_database_that_another_user_made_are_refused` | 20860-20869 | — |
//! | `a_daemon_started_from_another_namespace_is_told_whose_the_socket_is` | 20870-20879 | — |
//! | `directories_made_for_the_socket_and_the_database_are_said` | 20880-20889 | — |
//! | autostart tests | the host's ephemeral range (a daemon started on demand) | — |

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use berth_testkit::needs;
use serde_json::Value;
use support::{is_gone, poll_until, ports, row_at, run_sh, Berth, Daemon, BERTH};

/// Asserts `ports` are `count` consecutive ports inside `lo..=hi`.
#[track_caller]
fn assert_block(ports: &[u16], count: usize, lo: u16, hi: u16) {
    assert_eq!(ports.len(), count, "{ports:?}");
    assert!(
        ports.windows(2).all(|w| w[1] == w[0] + 1),
        "not consecutive: {ports:?}"
    );
    assert!(
        ports.iter().all(|p| (lo..=hi).contains(p)),
        "outside {lo}-{hi}: {ports:?}"
    );
}

/// Asserts one `berth list --json` row has the shape `docs/cli.md` fixes; returns its token.
#[track_caller]
fn check_row(row: &Value) -> String {
    let token = row["token"].as_str().expect("token is a string");
    assert!(
        token.len() == 18
            && token.starts_with("0x")
            && token[2..].chars().all(|c| c.is_ascii_hexdigit()),
        "token {token:?} is not 0x + 16 hex digits"
    );
    assert!(
        matches!(row["protocol"].as_str(), Some("tcp" | "udp")),
        "{row}"
    );
    assert!(row["start"].is_u64() && row["count"].is_u64(), "{row}");
    assert_eq!(row["kind"], "runtime", "{row}");
    assert!(row["age_s"].is_u64(), "{row}");
    let owner = &row["owner"];
    assert!(
        owner["pid"].is_u64() && owner["uid"].is_u64() && owner["command"].is_string(),
        "{row}"
    );
    token.to_owned()
}

#[test]
fn concurrent_runs_get_disjoint_blocks() {
    let d = Daemon::start("20000-20299");
    let script = "echo $BERTH_TCP_PORTS; read x";
    let mut a = run_sh(&d, &["--tcp", "100"], script).spawn();
    let mut b = run_sh(&d, &["--tcp", "100"], script).spawn();
    let pa = ports(&a.next_line());
    let pb = ports(&b.next_line());
    assert_block(&pa, 100, 20000, 20299);
    assert_block(&pb, 100, 20000, 20299);
    assert!(
        pa.iter().all(|p| !pb.contains(p)),
        "blocks overlap: {pa:?} and {pb:?}"
    );

    // Both are held, each by the command its own `berth run` started (and handed it to).
    for (proc, block) in [(&a, &pa), (&b, &pb)] {
        let command = proc.command_pid();
        assert_ne!(command, proc.pid());
        d.owned_by(block[0], command);
    }
    let list = d.list();
    assert_eq!(list.len(), 2, "{list:?}");
    for (proc, block) in [(&a, &pa), (&b, &pb)] {
        let row = row_at(&list, block[0]).expect("the block is listed");
        check_row(row);
        assert_eq!(row["protocol"], "tcp");
        assert_eq!(row["count"], 100);
        assert_eq!(row["owner"]["pid"], proc.command_pid());
        assert_eq!(row["owner"]["command"], "sh", "{row}");
    }

    a.send_line("done");
    b.send_line("done");
    a.wait().code(0);
    b.wait().code(0);
    // `berth run` releases before it exits: nothing is left once both have.
    assert_eq!(d.list(), Vec::<Value>::new());
    // And the table says so, rather than printing a bare header.
    let out = d.berth(["list"]).output().code(0);
    assert!(
        out.stdout.starts_with("no reservations (daemon on "),
        "{}",
        out.stdout
    );
}

#[test]
fn overlapping_start_names_the_holder() {
    let d = Daemon::start("20400-20419");
    let mut holder = run_sh(
        &d,
        &["--tcp", "10", "--start", "20450"],
        "echo ready; read x",
    )
    .spawn();
    assert_eq!(holder.next_line(), "ready");
    // Held by the command `berth run` started: the holder a conflict names.
    let command = holder.command_pid();
    d.owned_by(20450, command);
    let list = d.list();
    assert_eq!(list.len(), 1, "{list:?}");
    let token = check_row(&list[0]);
    assert_eq!(list[0]["start"], 20450);
    assert_eq!(list[0]["count"], 10);
    assert_eq!(list[0]["owner"]["pid"], command);
    assert_eq!(list[0]["owner"]["command"], "sh");

    let out = d
        .berth(["run", "--tcp", "5", "--start", "20455", "--", "true"])
        .output();
    out.code(12)
        .says(&[&token, &format!("pid {command} (sh, "), "20450-20459"]);
    // The failed attempt changed nothing.
    assert_eq!(d.list().len(), 1);

    holder.send_line("done");
    holder.wait().code(0);
}

#[test]
fn sigkill_of_run_keeps_the_block_while_its_command_runs() {
    let d = Daemon::start("20500-20519");
    let mut victim = run_sh(
        &d,
        &["--tcp", "10", "--start", "20550"],
        "echo ready; read x",
    )
    .spawn();
    assert_eq!(victim.next_line(), "ready");
    let command = victim.command_pid();
    d.owned_by(20550, command);

    let status = victim.kill();
    assert!(!status.success());
    // The command, re-parented, still runs on its ports: they stay its own.
    assert!(
        !is_gone(command),
        "the command (pid {command}) ended with berth run"
    );
    let list = d.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["start"], 20550, "{list:?}");
    assert_eq!(list[0]["owner"]["pid"], command, "{list:?}");
    d.berth(["run", "--tcp", "1", "--start", "20555", "--", "true"])
        .output()
        .code(12)
        .says(&[&format!("pid {command} (sh, ")]);
    // The orphaned `sh` reads our pipe: closing it ends it, and its ports are freed.
    victim.close_stdin();
    poll_until("the command's block is freed once it ended", || {
        row_at(&d.list(), 20550).is_none().then_some(())
    });
    d.berth(["run", "--tcp", "10", "--start", "20550", "--", "true"])
        .output()
        .code(0);
}

#[test]
fn exit_status_and_environment_reach_the_caller() {
    let d = Daemon::start("20600-20699");
    run_sh(&d, &["--tcp", "1"], "exit 7").output().code(7);
    run_sh(&d, &["--tcp", "1"], "kill -TERM $$")
        .output()
        .code(143);
    d.berth(["run", "--tcp", "1", "--", "berth-test-no-such-command"])
        .output()
        .code(127)
        .says(&["berth-test-no-such-command"]);

    let out = run_sh(
        &d,
        &["--tcp", "3", "--udp", "2"],
        "echo \"$PORT\"; echo \"$BERTH_TCP_PORTS\"; echo \"$BERTH_UDP_PORTS\"",
    )
    .output()
    .code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{:?}", out.stdout);
    let tcp = ports(lines[1]);
    let udp = ports(lines[2]);
    assert_block(&tcp, 3, 20600, 20699);
    assert_block(&udp, 2, 20600, 20699);
    assert_eq!(lines[0], tcp[0].to_string(), "PORT is the first TCP port");

    // Nothing outlives the commands, not even the reservation of the one that never ran.
    poll_until("every reservation is released", || {
        d.list().is_empty().then_some(())
    });
}

/// A daemon started on demand by a `berth` command: not our child, so stopped by its pid
/// (from `berth status`) with SIGTERM, even when a test fails half-way.
struct Autostarted<'a> {
    socket: &'a Path,
    pid: u32,
}

impl Autostarted<'_> {
    /// The daemon answering on `socket`, per `berth status --json`.
    fn on(socket: &Path) -> Autostarted<'_> {
        let status = Berth::new(socket)
            .args(["status", "--json"])
            .output()
            .code(0)
            .json();
        let pid = status["pid"].as_u64().expect("status has the daemon's pid");
        let daemon = Autostarted {
            socket,
            pid: u32::try_from(pid).expect("a pid"),
        };
        assert_eq!(status["socket"], socket.display().to_string(), "{status}");
        assert!(status["version"].is_string(), "{status}");
        daemon
    }

    /// SIGTERMs it and waits until nothing answers on its socket.
    fn stop(self) {
        drop(self); // see Drop
    }
}

impl Drop for Autostarted<'_> {
    fn drop(&mut self) {
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .expect("a valid pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if std::thread::panicking() {
            return;
        }
        poll_until("the daemon started on demand stops", || {
            let out = Berth::new(self.socket).args(["status"]).output();
            (out.status.code() == Some(18)).then_some(())
        });
    }
}

#[test]
fn run_starts_a_daemon_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    Berth::new(&socket)
        .autostart()
        .args(["run", "--tcp", "1", "--", "true"])
        .output()
        .code(0);
    let daemon = Autostarted::on(&socket);
    // It keeps serving after the command that started it is gone, and holds nothing.
    let list = Berth::new(&socket)
        .args(["list", "--json"])
        .output()
        .code(0);
    assert_eq!(list.json(), Value::Array(vec![]));
    daemon.stop();
}

/// A daemon started on demand by a command that goes on running, then stopped, is reaped by
/// that command: no zombie of it stays under the command until the command ends.
#[test]
fn an_on_demand_daemon_stopped_while_its_starter_runs_is_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    let mut run = Berth::new(&socket)
        .autostart()
        .args(["run", "--tcp", "1", "--", "sh", "-c", "echo ready; read x"])
        .spawn();
    assert_eq!(run.next_line(), "ready");
    let daemon = Autostarted::on(&socket);
    let pid = daemon.pid;
    assert!(
        support::children_of(run.pid()).contains(&pid),
        "the daemon is the starter's child"
    );
    daemon.stop();
    poll_until("the stopped daemon is reaped", || {
        is_gone(pid).then_some(())
    });
    run.close_stdin();
    // Its reservation went with the daemon: the command itself still ends well.
    drop(run.wait());
}

#[test]
fn an_on_demand_daemon_is_detached_from_its_caller() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    // `$(…)` waits until every copy of its pipe is closed, and fd 7 is one more copy: a daemon
    // that inherited it would keep this shell waiting for as long as the daemon runs.
    let script = "x=$(\"$0\" run --tcp 1 -- true 7>&1); echo \"finished:$x\"";
    let out = Berth::bare(["sh", "-c", script])
        .env("BERTH_SOCKET", &socket)
        .env("BERTH_DB", dir.path().join("autostart.db"))
        .output()
        .code(0);
    let daemon = Autostarted::on(&socket);
    assert_eq!(out.stdout.trim(), "finished:", "{}", out.stderr);
    // A session of its own; stdin from /dev/null; stdout and stderr to its log; nothing else
    // but what it opened itself (its socket, database, …) — no pipe, no terminal.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid)).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[3], daemon.pid.to_string(), "session id: {stat}");
    let log = socket.with_extension("log");
    for entry in std::fs::read_dir(format!("/proc/{}/fd", daemon.pid)).unwrap() {
        let entry = entry.unwrap();
        let fd: u32 = entry.file_name().to_string_lossy().parse().unwrap();
        // A descriptor the daemon opened for a moment (a /proc read, a probe) may be closed
        // between the listing and this look: it was no inherited one.
        let target = match std::fs::read_link(entry.path()) {
            Ok(target) => target,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("fd {fd}: {e}"),
        };
        match fd {
            0 => assert_eq!(target, Path::new("/dev/null")),
            1 | 2 => assert_eq!(target, log, "fd {fd}"),
            _ => {
                let t = target.to_string_lossy();
                assert!(
                    !t.starts_with("pipe:") && !t.starts_with("/dev/pts"),
                    "fd {fd} is {t}"
                );
            }
        }
    }
    daemon.stop();
}

#[test]
fn no_autostart_means_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    Berth::new(&socket)
        .args(["run", "--tcp", "1", "--", "true"])
        .output()
        .code(18)
        .says(&["berth daemon"]);
    assert!(!socket.exists(), "no daemon was started");
    Berth::new(&socket)
        .args(["list"])
        .output()
        .code(18)
        .says(&["berth daemon"]);
}

#[test]
fn no_autostart_is_any_value_but_0_false_no() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    for value in ["1", "yes", "true", "on"] {
        Berth::new(&socket)
            .env("BERTH_NO_AUTOSTART", value)
            .args(["run", "--tcp", "1", "--", "true"])
            .output()
            .code(18)
            .says(&["BERTH_NO_AUTOSTART is set"]);
        assert!(
            !socket.exists(),
            "BERTH_NO_AUTOSTART={value} started a daemon"
        );
    }
    Berth::new(&socket)
        .env("BERTH_NO_AUTOSTART", "no")
        .args(["run", "--tcp", "1", "--", "true"])
        .output()
        .code(0);
    Autostarted::on(&socket).stop();
}

/// Any process may name itself as it likes (here by the name of the file it is started from:
/// an escape sequence and a newline), and another user reads that name in `berth list` and
/// `berth why`: it is shown with `?` for each unprintable character, as `ps` shows it.
#[test]
fn a_command_name_cannot_write_to_the_readers_terminal() {
    let d = Daemon::start("20850-20859");
    // A shell started as this file has that name; `berth run` hands its reservation to it.
    let evil = d.dir().join("\u{1b}[2J\nforged");
    std::os::unix::fs::symlink("/bin/sh", &evil).unwrap();
    let mut holder = d
        .berth(["run", "--tcp", "1", "--"])
        .arg(&evil)
        .args(["-c", "echo $PORT; read x"])
        .spawn();
    let port = holder.next_line().trim().to_owned();
    let shown = "?[2J?forged";

    let table = d.berth(["list"]).output().code(0).stdout;
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert!(table.contains(shown), "{table:?}");
    assert!(!table.lines().any(|l| l.starts_with("forged")), "{table:?}");
    let listed = d.list();
    assert_eq!(listed[0]["owner"]["command"], shown, "{listed:?}");
    let why = d.berth(["why", "--tcp", &port]).output().code(0).stdout;
    assert!(!why.contains('\u{1b}') && why.contains(shown), "{why:?}");

    holder.send_line("x");
    holder.wait();
}

#[test]
fn messages_say_what_is_true() {
    let d = Daemon::start("20800-20809");
    // One port is a port.
    let mut holder = run_sh(&d, &["--tcp", "1"], "echo $PORT; read x").spawn();
    let port = holder.next_line().trim().to_owned();
    let token = d.list()[0]["token"].as_str().unwrap().to_owned();
    let out = d.berth(["release", &token]).output().code(0);
    assert!(
        out.stderr.contains(&format!("released tcp port {port} (")),
        "{}",
        out.stderr
    );
    holder.send_line("x");
    holder.wait();
    // `--start 0` was given, and is no port.
    d.berth(["persistent", "add", "--tcp", "--start", "0", "--count", "1"])
        .output()
        .code(10)
        .says(&["--start 0 is not a port"]);
    // A count of 0, or --start 0, is invalid-argument too, before anything is reserved.
    d.berth(["run", "--tcp", "0", "--", "true"])
        .output()
        .code(10)
        .says(&["--tcp 0 reserves nothing", "nothing was reserved"]);
    d.berth(["run", "--tcp", "1", "--udp", "0", "--", "true"])
        .output()
        .code(10)
        .says(&["--udp 0 reserves nothing"]);
    d.berth(["run", "--tcp", "1", "--start", "0", "--", "true"])
        .output()
        .code(10)
        .says(&["--start 0 names no port"]);
    // A port list the kernel would not pass on is refused before anything is reserved.
    d.berth(["run", "--udp", "22000", "--", "true"])
        .output()
        .code(10)
        .says(&["BERTH_UDP_PORTS", "nothing was reserved", "21842"]);
    assert_eq!(d.list(), Vec::<Value>::new());
}

#[test]
fn simultaneous_runs_start_one_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    let script = "\"$0\" status --json";
    let spawn = || {
        Berth::new(&socket)
            .autostart()
            .args(["run", "--tcp", "1", "--", "sh", "-c", script, BERTH])
            .spawn()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait(), b.wait());
    // Whatever else happens, the daemon(s) they started are stopped.
    let _guards: Vec<Autostarted<'_>> = [&a, &b]
        .iter()
        .filter_map(|out| serde_json::from_str::<Value>(&out.stdout).ok()?["pid"].as_u64())
        .map(|pid| Autostarted {
            socket: &socket,
            pid: u32::try_from(pid).unwrap(),
        })
        .collect();
    let (a, b) = (a.code(0), b.code(0));
    let (sa, sb) = (a.json(), b.json());
    assert!(sa["pid"].is_u64(), "{sa}");
    assert_eq!(sa["pid"], sb["pid"], "two daemons were started: {sa} {sb}");
    assert_eq!(sa["socket"], socket.display().to_string());
    // Each command saw its own reservation in the daemon they share.
    assert!(sa["reservations"].as_u64() >= Some(1), "{sa}");
    assert!(sb["reservations"].as_u64() >= Some(1), "{sb}");
    // That daemon is still the one answering, and both reservations died with their commands.
    let now = Berth::new(&socket)
        .args(["status", "--json"])
        .output()
        .code(0)
        .json();
    assert_eq!(now["pid"], sa["pid"], "{now}");
    assert_eq!(now["reservations"], 0, "{now}");
}

#[test]
fn list_status_release_and_their_errors() {
    let d = Daemon::start("20700-20719");
    let status = d.status();
    assert!(
        status["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{status}"
    );
    assert_eq!(status["pid"], d.pid());
    assert_eq!(status["socket"], d.socket().display().to_string());
    assert_eq!(status["pool"], d.pool());
    assert_eq!(status["reservations"], 0);

    // Wildcard: the whole pool fits, one more port does not.
    d.berth(["run", "--tcp", "21", "--", "true"])
        .output()
        .code(13)
        .says(&["20700-20719"]);
    d.berth(["run", "--tcp", "20", "--", "true"])
        .output()
        .code(0);

    let mut holder = run_sh(
        &d,
        &["--tcp", "3", "--start", "20750"],
        "echo ready; read x",
    )
    .spawn();
    assert_eq!(holder.next_line(), "ready");
    let command = holder.command_pid();
    d.owned_by(20750, command);
    let list = d.list();
    assert_eq!(list.len(), 1, "{list:?}");
    let token = check_row(&list[0]);

    let table = d.berth(["list"]).output().code(0).stdout;
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    for column in [
        "TOKEN", "PROTO", "PORTS", "COUNT", "KIND", "PID", "COMMAND", "AGE",
    ] {
        assert!(header.contains(column), "header {header:?} lacks {column}");
    }
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(
        &row[..6],
        [
            token.as_str(),
            "tcp",
            "20750-20752",
            "3",
            "runtime",
            &command.to_string()
        ]
    );
    assert_eq!(row.get(6), Some(&"sh"), "{table}");
    assert_eq!(lines.next(), None, "{table}");

    let status = d.status();
    assert_eq!(status["reservations"], 1);
    assert_eq!(status["tcp_ports"], 3);
    assert_eq!(status["udp_ports"], 0);
    assert!(status["sessions"].as_u64() >= Some(1), "{status}");

    d.berth(["release", "0x0000000000000001"])
        .output()
        .code(15)
        .says(&["0x0000000000000001"]);
    // Token 0 and garbage are invalid arguments (exit 10), with a clear message.
    d.berth(["release", "0"])
        .output()
        .code(10)
        .says(&["token 0 names no reservation"]);
    d.berth(["release", "0xnothex"])
        .output()
        .code(10)
        .says(&["is not a token"]);

    // Another user may not release it, and is told whose it is as `list` would tell it: the
    // token and "another user", not the owner's pid or command.
    if needs::other_users_available() {
        std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let refused = Berth::wrapped_in(d.socket(), needs::AS_NOBODY)
            .args(["release", &token])
            .output()
            .code(16)
            .says(&[&token, "a process of another user"]);
        assert!(
            !refused.stderr.contains(&format!("pid {command}")),
            "{}",
            refused.stderr
        );
        // The same in a conflict over its ports.
        let conflict = Berth::wrapped_in(d.socket(), needs::AS_NOBODY)
            .args(["run", "--tcp", "1", "--start", "20750", "--", "true"])
            .output()
            .code(12)
            .says(&[&token, "a process of another user"]);
        assert!(
            !conflict.stderr.contains(&format!("pid {command}")),
            "{}",
            conflict.stderr
        );
        assert_eq!(d.list().len(), 1);
    } else {
        needs::skip(
            needs::Need::Users,
            "part: another user's release is refused (needs root, to run berth as nobody)",
        );
    }

    // An administrator may.
    let released = d.berth(["release", &token]).output().code(0);
    assert!(released.stderr.contains(&token), "{}", released.stderr);
    assert_eq!(d.list(), Vec::<Value>::new());
    holder.send_line("done");
    holder.wait().code(0);
}

/// A reader that stops early (`berth list | head -1`, `grep -q`) ends the command quietly:
/// status 0 and nothing on stderr, never a panic.
#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    let d = Daemon::start("20820-20829");
    d.berth(["run", "--tcp", "1", "--", "true"])
        .output()
        .code(0);
    let commands: [&[&str]; 6] = [
        &["status"],
        &["status", "--json"],
        &["status", "--format", "openmetrics"],
        &["list"],
        &["why", "--tcp", "20820"],
        &["completions", "bash"],
    ];
    for args in commands {
        // The reading end is closed before the command writes a byte.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = d
            .berth(args)
            .into_command()
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "berth {args:?}: {stderr}");
        assert!(stderr.is_empty(), "berth {args:?} said: {stderr}");
    }
}

/// `BERTH_SOCKET` names the one socket clients use; a daemon started with it listens there
/// (not on the default socket), so the two agree.
#[test]
fn a_daemon_listens_on_berth_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("env.sock");
    let mut daemon = Berth::new(&socket)
        .args(["daemon", "--pool", "20830-20839", "--ready-stdout"])
        .spawn();
    assert_eq!(daemon.next_line(), "ready");
    assert!(
        socket.exists(),
        "no socket at BERTH_SOCKET={}",
        socket.display()
    );
    let status = Berth::new(&socket)
        .args(["status", "--json"])
        .output()
        .code(0)
        .json();
    assert_eq!(status["socket"], socket.display().to_string(), "{status}");
    Berth::new(&socket).args(["stop"]).output().code(0);
    daemon.wait();
}

/// A database in a directory others can write to (`/tmp`): the database, SQLite's files, a
/// lock file or a runtime journal beside it that another user made is refused by name, not
/// trusted (a planted journal would
/// feed the daemon reservations; a planted lock, held, would keep it out while blaming
/// "another berth daemon").
#[test]
fn files_beside_the_database_that_another_user_made_are_refused() {
    if !needs::users() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("planted.sock");
    let db = dir.path().join("planted.db");
    for (planted, says) in [
        ("planted.db.lock", "planted.db.lock belongs to uid 65534"),
        (
            "planted.db.runtime",
            "planted.db.runtime: the file belongs to uid 65534",
        ),
        ("planted.db", "planted.db: the file belongs to uid 65534"),
        (
            "planted.db-wal",
            "planted.db-wal: the file belongs to uid 65534",
        ),
    ] {
        let file = dir.path().join(planted);
        std::fs::write(&file, b"").unwrap();
        std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
        let out = Berth::new(&socket)
            .env("BERTH_DB", &db)
            .args(["daemon", "--pool", "20860-20869", "--kernel-sync", "off"])
            .output();
        assert!(!out.status.success(), "{planted}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{planted}: {}", out.stderr);
        assert!(
            out.stderr.contains("another user may have made"),
            "{}",
            out.stderr
        );
        std::fs::remove_file(&file).unwrap();
    }
    // Without them, it starts.
    let mut daemon = Berth::new(&socket)
        .env("BERTH_DB", &db)
        .args([
            "daemon",
            "--pool",
            "20860-20869",
            "--kernel-sync",
            "off",
            "--ready-stdout",
        ])
        .spawn();
    assert_eq!(daemon.next_line(), "ready");
    Berth::new(&socket).args(["stop"]).output().code(0);
    daemon.wait();
}

/// The socket file is shared by every network namespace of the host, its daemon by none but
/// its own: a second `berth daemon` started on it from another namespace is told that the
/// daemon there serves another namespace, and what to do (a socket and a database of its own).
#[test]
fn a_daemon_started_from_another_namespace_is_told_whose_the_socket_is() {
    let Some(ns) = needs::namespaces() else {
        return;
    };
    let d = Daemon::start("20870-20879");
    let unshare = ns.unshare(&["--net"]);
    let out = std::process::Command::new(&unshare[0])
        .args(&unshare[1..])
        .arg(BERTH)
        .args(["daemon", "--kernel-sync", "off", "--socket"])
        .arg(d.socket())
        .arg("--db")
        .arg(d.dir().join("other.db"))
        .env_remove("BERTH_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("already answers on"), "{stderr}");
    // Which namespace the daemon serves is read from /proc/PID/ns/net: root may, and so may
    // its own user outside a user namespace of its own.
    if !ns.in_user_namespace() {
        let pid = format!("that of pid {}", d.pid());
        for needle in [
            pid.as_str(),
            "serves network namespace net:[",
            "not this one",
            "`berth daemon --socket PATH --db PATH`",
        ] {
            assert!(stderr.contains(needle), "{needle}: {stderr}");
        }
    }
    // What that daemon lists and says is its namespace's: a client here is told so.
    let out = std::process::Command::new(&unshare[0])
        .args(&unshare[1..])
        .arg(BERTH)
        .arg("list")
        .env("BERTH_SOCKET", d.socket())
        .env("BERTH_NO_AUTOSTART", "1")
        .env_remove("BERTH_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    if !ns.in_user_namespace() {
        assert!(
            stderr.contains("note: the daemon on") && stderr.contains("not this one"),
            "{stderr}"
        );
    }
}

/// Directories made for `--socket` and `--db` are said in the log: a mistyped path does not
/// leave them behind unnoticed.
#[test]
fn directories_made_for_the_socket_and_the_database_are_said() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("made/for/it.sock");
    let db = dir.path().join("db/dir/it.db");
    let mut daemon = Berth::new(&socket)
        .env("BERTH_DB", &db)
        .args(["daemon", "--pool", "20880-20889", "--kernel-sync", "off"])
        .arg("--ready-stdout")
        .spawn();
    assert_eq!(daemon.next_line(), "ready");
    Berth::new(&socket).args(["stop"]).output().code(0);
    let out = daemon.wait();
    for made in [socket.parent().unwrap(), db.parent().unwrap()] {
        assert!(
            out.stderr.contains(&format!("created {}", made.display())),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn completions_name_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = Berth::new(&dir.path().join("b.sock"))
        .args(["completions", "bash"])
        .output()
        .code(0);
    assert!(out.stdout.contains("berth"), "{}", out.stdout);
    assert!(out.stdout.contains("complete"), "{}", out.stdout);
}

// Un-ignore once the daemon answers `Request::Stop` (the lead's daemon side; the client side
// is `Client::stop` and `berth stop`).
#[test]
fn stop_stops_the_daemon_and_says_so() {
    let d = Daemon::start("20810-20819");
    let pid = d.pid();
    let out = d.berth(["stop"]).output().code(0);
    assert!(
        out.stderr
            .contains(&format!("stopped the berth daemon (pid {pid})")),
        "{}",
        out.stderr
    );
    // Gone when `berth stop` returns: nothing answers, and there is nothing left to stop.
    d.berth(["status"]).output().code(18);
    d.berth(["stop"]).output().code(18);
}

#[test]
fn the_configuration_sample_in_the_docs_validates() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    let sample = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/configuration.md has a ```toml sample");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, sample).unwrap();
    let out = Berth::new(&dir.path().join("b.sock"))
        .args(["daemon", "--check-config", "--config"])
        .arg(&file)
        .output()
        .code(0);
    assert!(out.stdout.contains("valid"), "{}", out.stdout);
}

/// The reuse cool-down: a port freed a moment ago is passed by while another fits — here the
/// pool's next port, where the next-fit cursor alone would hand out the port just freed (a
/// specific request does not move the cursor) — and handed out when nothing else fits.
#[test]
fn a_port_freed_a_moment_ago_is_passed_by_while_another_fits() {
    let d = Daemon::start("21040-21041");
    let port = |opts: &[&str]| -> u16 {
        let out = run_sh(&d, opts, "echo $PORT").output().code(0);
        out.stdout.trim().parse().expect("a port")
    };
    assert_eq!(port(&["--tcp", "1", "--start", "21040"]), 21040);
    // 21040 was freed just now; the cursor is still at the pool's start.
    assert_eq!(port(&["--tcp", "1"]), 21041);
    // Both cooling: nothing else fits, so a cooling one rather than a refusal.
    let third = port(&["--tcp", "1"]);
    assert!((21040..=21041).contains(&third), "{third}");
    let status = d.status();
    assert_eq!(status["reuse_cool_down_s"], 60, "{status}");
}
