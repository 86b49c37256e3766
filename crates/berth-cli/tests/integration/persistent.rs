//! End-to-end tests of `berth persistent add|lookup|list|delete` (docs/persistent.md): a real
//! daemon per test (see `support`), real `berth` commands, root as the administrator and
//! nobody (uid/gid 65534, through `setpriv`) as an ordinary user.
//!
//! Tests run in parallel, so each uses its own daemon, its own pool and its own ports, all in
//! 21000-21999 (below the host's ephemeral range, apart from the other test files):
//!
//! | test | pool | persistent ports |
//! |---|---|---|
//! | `add_lookup_list_delete_and_their_errors` | 21900-21909 | tcp and udp 21000-21009 |
//! | `only_administrators_add_and_delete` | 21910-21919 | tcp 21100-21104, 21200 |
//! | `allow_lists_take_names_and_ids` | 21920-21929 | tcp 21300-21302, udp 21310 |
//! | `tokens_survive_a_restart` | 21930-21939 | tcp 21400-21403, udp 21450-21451 |

use crate::support;

use std::os::unix::fs::PermissionsExt;

use berth_testkit::needs::{self, AS_NOBODY};
use serde_json::Value;
use support::{row_at, run_sh, Berth, Daemon};

/// Asserts `text` (a command's stdout) is one token line, `0x` + 16 hex digits; returns it.
#[track_caller]
fn token_line(text: &str) -> String {
    let token = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no single line: {text:?}"));
    assert!(
        token.len() == 18
            && token.starts_with("0x")
            && token[2..].chars().all(|c| c.is_ascii_hexdigit())
            && !token.contains('\n'),
        "stdout {text:?} is not one token, 0x + 16 hex digits"
    );
    token.to_owned()
}

/// `berth persistent add --PROTO --start P --count N [EXTRA…]`; asserts exit 0 and returns the
/// token it printed.
#[track_caller]
fn add(d: &Daemon, proto: &str, start: u16, count: u16, extra: &[&str]) -> String {
    let out = d
        .berth(["persistent", "add", proto])
        .args(["--start", &start.to_string(), "--count", &count.to_string()])
        .args(extra)
        .output()
        .code(0);
    token_line(&out.stdout)
}

/// `berth persistent SUB --PROTO --start P --count N` (not run yet).
fn range_cmd(d: &Daemon, sub: &str, proto: &str, start: u16, count: u16) -> Berth {
    d.berth(["persistent", sub, proto]).args([
        "--start",
        &start.to_string(),
        "--count",
        &count.to_string(),
    ])
}

/// The token `berth persistent lookup` prints for an existing reservation.
#[track_caller]
fn lookup(d: &Daemon, proto: &str, start: u16, count: u16) -> String {
    token_line(
        &range_cmd(d, "lookup", proto, start, count)
            .output()
            .code(0)
            .stdout,
    )
}

/// `berth persistent list --json [FILTER…]`, parsed.
#[track_caller]
fn persistent_list(d: &Daemon, filter: &[&str]) -> Vec<Value> {
    let out = d
        .berth(["persistent", "list", "--json"])
        .args(filter)
        .output()
        .code(0);
    match out.json() {
        Value::Array(rows) => rows,
        other => panic!("berth persistent list --json printed no array: {other}"),
    }
}

/// Asserts `row` is the persistent reservation `token` of `proto` `start`, `count`, with no
/// owner.
#[track_caller]
fn assert_persistent_row(row: &Value, token: &str, proto: &str, start: u16, count: u16) {
    assert_eq!(row["token"], token, "{row}");
    assert_eq!(row["protocol"], proto, "{row}");
    assert_eq!(row["start"], start, "{row}");
    assert_eq!(row["count"], count, "{row}");
    assert_eq!(row["kind"], "persistent", "{row}");
    assert!(
        row["owner"].is_null(),
        "a persistent row has no owner: {row}"
    );
    assert!(row["age_s"].is_u64(), "{row}");
}

#[test]
fn add_lookup_list_delete_and_their_errors() {
    let d = Daemon::start("21900-21909");
    let token = add(&d, "--tcp", 21000, 10, &[]);
    assert_eq!(lookup(&d, "--tcp", 21000, 10), token);
    let out = range_cmd(&d, "lookup", "--tcp", 21000, 10)
        .args(["--json"])
        .output()
        .code(0);
    assert_eq!(out.json()["token"], token.as_str(), "{}", out.stdout);

    // Listed, by `berth persistent list` (all, and TCP only) and `berth list`, with no owner.
    for filter in [&[][..], &["--tcp"][..]] {
        let rows = persistent_list(&d, filter);
        assert_eq!(rows.len(), 1, "{filter:?}: {rows:?}");
        assert_persistent_row(&rows[0], &token, "tcp", 21000, 10);
    }
    assert_eq!(persistent_list(&d, &["--udp"]), Vec::<Value>::new());
    let all = d.list();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_persistent_row(&all[0], &token, "tcp", 21000, 10);
    let table = d.berth(["persistent", "list"]).output().code(0).stdout;
    assert!(
        table.contains(&token) && table.contains("persistent"),
        "{table}"
    );

    // An overlapping persistent reservation is a conflict naming the holder.
    add_err(&d, "--tcp", 21005, 10)
        .code(12)
        .says(&[&token, "21000-21009"]);
    add_err(&d, "--tcp", 20995, 6)
        .code(12)
        .says(&[&token, "21000-21009"]);
    // The other protocol's space is separate.
    let udp = add(&d, "--udp", 21000, 10, &[]);
    assert_ne!(udp, token);
    range_cmd(&d, "delete", "--udp", 21000, 10).output().code(0);

    // A wildcard persistent reservation does not exist; nor do ranges past 65535.
    add_err(&d, "--tcp", 0, 1).code(10).says(&["--start"]);
    add_err(&d, "--tcp", 65530, 10).code(10);
    add_err(&d, "--tcp", 21950, 0).code(10);

    // Lookup and delete want the exact range.
    for (proto, start, count) in [
        ("--tcp", 21000, 9),
        ("--tcp", 21001, 9),
        ("--tcp", 21000, 11),
        ("--udp", 21000, 10),
    ] {
        range_cmd(&d, "lookup", proto, start, count)
            .output()
            .code(15)
            .says(&[]);
        range_cmd(&d, "delete", proto, start, count)
            .output()
            .code(15)
            .says(&[]);
    }

    // Not released: deleted, and `berth release` says so.
    d.berth(["release", &token])
        .output()
        .code(10)
        .says(&[&token, "berth persistent delete"]);
    // No runtime reservation takes its ports (TCP); UDP's ports are another space.
    d.berth(["run", "--tcp", "1", "--start", "21003", "--", "true"])
        .output()
        .code(12)
        .says(&[&token]);
    d.berth(["run", "--udp", "1", "--start", "21003", "--", "true"])
        .output()
        .code(0);
    // Nothing changed.
    assert_eq!(lookup(&d, "--tcp", 21000, 10), token);
    assert_eq!(d.list().len(), 1);

    let deleted = range_cmd(&d, "delete", "--tcp", 21000, 10).output().code(0);
    assert!(deleted.stderr.contains(&token), "{}", deleted.stderr);
    range_cmd(&d, "lookup", "--tcp", 21000, 10)
        .output()
        .code(15)
        .says(&["21000"]);
    range_cmd(&d, "delete", "--tcp", 21000, 10)
        .output()
        .code(15);
    assert_eq!(persistent_list(&d, &[]), Vec::<Value>::new());
    assert_eq!(d.list(), Vec::<Value>::new());
    // Its ports are free again.
    d.berth(["run", "--tcp", "10", "--start", "21000", "--", "true"])
        .output()
        .code(0);
}

/// `berth persistent add` expected to fail; returns how it ended.
fn add_err(d: &Daemon, proto: &str, start: u16, count: u16) -> support::Out {
    let out = range_cmd(d, "add", proto, start, count).output();
    assert_eq!(out.stdout, "", "a failed add printed a token");
    out
}

#[test]
fn only_administrators_add_and_delete() {
    if !needs::users() {
        return;
    }
    let d = Daemon::start("21910-21919");
    // Nobody must reach the socket (mode 0666) through its directory.
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 0755 the socket's directory");
    let nobody = |args: &[&str]| Berth::wrapped_in(d.socket(), AS_NOBODY).args(args);

    let token = add(&d, "--tcp", 21100, 5, &[]);
    let range = ["--tcp", "--start", "21100", "--count", "5"];

    nobody(&[
        "persistent",
        "add",
        "--tcp",
        "--start",
        "21200",
        "--count",
        "1",
    ])
    .output()
    .code(16)
    .says(&["administrators", "uid 65534"]);
    nobody(&["persistent", "delete"])
        .args(range)
        .output()
        .code(16)
        .says(&["administrators", "uid 65534"]);
    // Lookup and list are open to everyone.
    let found = nobody(&["persistent", "lookup"])
        .args(range)
        .output()
        .code(0);
    assert_eq!(token_line(&found.stdout), token);
    let listed = nobody(&["persistent", "list", "--json"]).output().code(0);
    let rows = listed.json();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_persistent_row(&rows[0], &token, "tcp", 21100, 5);
    // Nobody cannot release it either (it is not released at all), and is not told to delete
    // it, which only an administrator may.
    nobody(&["release", &token])
        .output()
        .code(10)
        .says(&[&token, "deleted, by an administrator"]);

    // Nothing changed: the reservation is there, the refused one is not.
    assert_eq!(lookup(&d, "--tcp", 21100, 5), token);
    range_cmd(&d, "lookup", "--tcp", 21200, 1).output().code(15);
    range_cmd(&d, "delete", "--tcp", 21100, 5).output().code(0);
    range_cmd(&d, "lookup", "--tcp", 21100, 5).output().code(15);
}

#[test]
fn allow_lists_take_names_and_ids() {
    let d = Daemon::start("21920-21929");
    let by_name = add(
        &d,
        "--tcp",
        21300,
        3,
        &["--allow-user", "nobody", "--allow-group", "65534"],
    );
    let by_id = add(
        &d,
        "--udp",
        21310,
        1,
        &[
            "--allow-user",
            "65534",
            "--allow-user",
            "0",
            "--allow-group",
            "0",
        ],
    );
    assert_ne!(by_name, by_id);
    assert_eq!(lookup(&d, "--tcp", 21300, 3), by_name);
    assert_eq!(lookup(&d, "--udp", 21310, 1), by_id);

    // Unknown names are refused by the command before anything is created.
    for (flag, name) in [
        ("--allow-user", "berth-test-no-such-user"),
        ("--allow-group", "berth-test-no-such-group"),
    ] {
        range_cmd(&d, "add", "--tcp", 21305, 1)
            .args([flag, name])
            .output()
            .code(10)
            .says(&[name]);
    }
    // At most 64 of each.
    let many: Vec<String> = (1000..1065)
        .flat_map(|uid| ["--allow-user".to_owned(), uid.to_string()])
        .collect();
    range_cmd(&d, "add", "--tcp", 21305, 1)
        .args(&many)
        .output()
        .code(10)
        .says(&["64"]);
    range_cmd(&d, "lookup", "--tcp", 21305, 1).output().code(15);
    assert_eq!(persistent_list(&d, &[]).len(), 2);
}

#[test]
fn tokens_survive_a_restart() {
    let mut d = Daemon::start("21930-21939");
    let tcp = add(&d, "--tcp", 21400, 4, &["--allow-user", "nobody"]);
    let udp = add(&d, "--udp", 21450, 2, &[]);

    // A clean stop and a new daemon on the same socket and database.
    d.stop();
    d.restart();
    assert_eq!(lookup(&d, "--tcp", 21400, 4), tcp);
    assert_eq!(lookup(&d, "--udp", 21450, 2), udp);
    let rows = persistent_list(&d, &[]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_persistent_row(&rows[0], &tcp, "tcp", 21400, 4);
    assert_persistent_row(&rows[1], &udp, "udp", 21450, 2);
    assert_eq!(d.list().len(), 2);
    // Still held: no runtime reservation gets its ports.
    d.berth(["run", "--tcp", "1", "--start", "21402", "--", "true"])
        .output()
        .code(12)
        .says(&[&tcp]);

    // A deletion lasts too.
    range_cmd(&d, "delete", "--udp", 21450, 2).output().code(0);
    d.stop();
    d.restart();
    assert_eq!(lookup(&d, "--tcp", 21400, 4), tcp);
    range_cmd(&d, "lookup", "--udp", 21450, 2).output().code(15);
    let rows = persistent_list(&d, &[]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_persistent_row(&rows[0], &tcp, "tcp", 21400, 4);
}

#[test]
fn berth_run_uses_a_persistent_reservation_its_user_may_use() {
    let d = Daemon::start("23470-23479");
    for (start, allow) in [("23460", Some("nobody")), ("23461", None)] {
        let mut args = vec![
            "persistent",
            "add",
            "--tcp",
            "--start",
            start,
            "--count",
            "1",
        ];
        if let Some(user) = allow {
            args.extend(["--allow-user", user]);
        }
        d.berth(args).output().code(0);
    }
    // Who may use it, by name.
    let listed = d.berth(["persistent", "list"]).output().code(0).stdout;
    assert!(
        listed.contains("tcp 23460 may be used by user nobody; administrators"),
        "{listed}"
    );
    let json = d
        .berth(["persistent", "list", "--json"])
        .output()
        .code(0)
        .json();
    assert_eq!(json[0]["allow_users"], serde_json::json!([65534]));
    // An administrator (the daemon's own user here) runs on it: the command gets the port,
    // and the persistent reservation stays when it ends.
    let out = run_sh(&d, &["--tcp", "1", "--start", "23461"], "echo $PORT")
        .output()
        .code(0);
    assert_eq!(out.stdout.trim(), "23461");
    assert!(
        out.stderr.contains("using the persistent reservation"),
        "{}",
        out.stderr
    );
    assert!(row_at(&d.list(), 23461).is_some(), "still there");
    if needs::other_users_available() {
        std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let as_nobody = |start: &str| {
            Berth::wrapped_in(d.socket(), needs::AS_NOBODY)
                .args([
                    "run",
                    "--tcp",
                    "1",
                    "--start",
                    start,
                    "--",
                    "sh",
                    "-c",
                    "echo $PORT",
                ])
                .output()
        };
        // On the allow list: used, as the administrator's was.
        let out = as_nobody("23460").code(0);
        assert_eq!(out.stdout.trim(), "23460");
        // Not on it: refused, saying who decides.
        as_nobody("23461")
            .code(16)
            .says(&["may not use", "berth persistent list"]);
    } else {
        needs::skip(
            needs::Need::Users,
            "part: an allowed and a refused user run on persistent reservations (needs root, to run berth as nobody)",
        );
    }
}
