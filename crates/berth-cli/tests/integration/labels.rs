//! Labels and bounded wildcards through the `berth` command: `run --label`, `run --within`,
//! `persistent add --label`, where a label shows (`list`, its JSON, `why`, a conflict) and to
//! whom, and the errors of each.

use std::os::unix::fs::PermissionsExt;

use crate::support;

use berth_testkit::needs;
use support::{ports, row_at, run_sh, Berth, Daemon};

const LABEL: &str = "tests::login (shard 3/8)";

#[test]
fn a_label_shows_in_list_why_and_conflicts_to_the_owners_user_only() {
    let d = Daemon::start("23100-23109");
    let mut holder = run_sh(
        &d,
        &["--tcp", "2", "--within", "23300-23309", "--label", LABEL],
        "echo $BERTH_TCP_PORTS; read x",
    )
    .spawn();
    // Outside the pool, the lowest free block of the bounds.
    assert_eq!(ports(&holder.next_line()), vec![23300, 23301]);

    let list = d.list();
    let row = row_at(&list, 23300).expect("the reservation is listed");
    assert_eq!(row["label"], LABEL, "{row}");
    let table = d.berth(["list"]).output().code(0).stdout;
    let line = table
        .lines()
        .find(|l| l.contains("23300-23301"))
        .expect("a row");
    assert!(line.trim_end().ends_with(LABEL), "{table}");
    let why = d.berth(["why", "--tcp", "23301"]).output().code(0);
    assert!(
        why.stdout.contains(&format!("label: {LABEL}")),
        "{}",
        why.stdout
    );
    // The holder's label names it in a conflict over its ports.
    d.berth(["run", "--tcp", "1", "--start", "23301", "--", "true"])
        .output()
        .code(12)
        .says(&[&format!("label \"{LABEL}\"")]);

    // Another user sees the ports, not the owner, and so not the label either.
    if needs::other_users_available() {
        std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let as_nobody = |args: &[&str]| {
            Berth::wrapped_in(d.socket(), needs::AS_NOBODY)
                .args(args)
                .output()
        };
        let list = as_nobody(&["list", "--json"]).code(0).json();
        let row = row_at(list.as_array().unwrap(), 23300).expect("listed for others too");
        assert!(row["label"].is_null() && row["owner"].is_null(), "{row}");
        let why = as_nobody(&["why", "--tcp", "23300"]).code(0);
        assert!(!why.stdout.contains("tests::login"), "{}", why.stdout);
        let conflict = as_nobody(&["run", "--tcp", "1", "--start", "23300", "--", "true"]).code(12);
        assert!(
            !conflict.stderr.contains("tests::login"),
            "{}",
            conflict.stderr
        );
    } else {
        needs::skip(
            needs::Need::Users,
            "part: another user does not see the label (needs root, to run berth as nobody)",
        );
    }
    holder.send_line("done");
    holder.wait().code(0);
}

#[test]
fn bounded_runs_and_the_errors_of_labels_and_bounds() {
    let d = Daemon::start("23110-23119");
    // Bounds inside the pool, and across its edge.
    let out = run_sh(
        &d,
        &["--tcp", "3", "--within", "23118-23122"],
        "echo $BERTH_TCP_PORTS",
    )
    .output()
    .code(0);
    assert_eq!(ports(out.stdout.trim()), vec![23118, 23119, 23120]);
    // Full bounds: pool-exhausted (13), naming them.
    let mut holder = run_sh(
        &d,
        &["--udp", "1", "--within", "23330-23330"],
        "echo up; read x",
    )
    .spawn();
    assert_eq!(holder.next_line(), "up");
    run_sh(&d, &["--udp", "1", "--within", "23330-23330"], "true")
        .output()
        .code(13)
        .says(&["within 23330-23330", "widen the bounds"]);
    holder.send_line("done");
    holder.wait().code(0);

    // Invalid arguments (10), each saying what to do.
    for (args, says) in [
        (&["--within", "banana"][..], "write it as LO-HI"),
        (
            &["--within", "23340-23341", "--start", "23340"],
            "cannot be combined",
        ),
        (&["--within", "23345-23340"], "ends before it starts"),
        (&["--within", "0-10"], "port 0 cannot bound a search"),
    ] {
        let mut all = vec!["--tcp", "2"];
        all.extend_from_slice(args);
        run_sh(&d, &all, "true").output().code(10).says(&[says]);
    }
    run_sh(&d, &["--tcp", "3", "--within", "23340-23341"], "true")
        .output()
        .code(10)
        .says(&["3 ports do not fit within 23340-23341"]);
    run_sh(&d, &["--tcp", "1", "--label", "two\nlines"], "true")
        .output()
        .code(10)
        .says(&["control characters"]);
    // An invisible character would let one label pass for another.
    run_sh(&d, &["--tcp", "1", "--label", "ci\u{200b}-job"], "true")
        .output()
        .code(10)
        .says(&["invisible characters", "U+200B at byte 2"]);
    let long = "x".repeat(129);
    run_sh(&d, &["--tcp", "1", "--label", &long], "true")
        .output()
        .code(10)
        .says(&["at most 128 bytes"]);
    // Longer than a request may be: refused before it is sent, as an argument too long.
    let huge = "x".repeat(70_000);
    let out = run_sh(&d, &["--tcp", "1", "--label", &huge], "true")
        .output()
        .code(10)
        .says(&["over the 65536 bytes the berth daemon reads in one request"]);
    assert!(!out.stderr.contains("lost"), "{}", out.stderr);
    assert_eq!(d.list().len(), 0, "nothing was reserved by a refused run");
}

#[test]
fn a_persistent_reservations_label_is_shown_to_everyone() {
    let d = Daemon::start("23120-23129");
    d.berth([
        "persistent",
        "add",
        "--tcp",
        "--start",
        "23350",
        "--count",
        "2",
        "--label",
        "shop web (TLS)",
    ])
    .output()
    .code(0);
    let list = d.list();
    assert_eq!(row_at(&list, 23350).unwrap()["label"], "shop web (TLS)");
    if needs::other_users_available() {
        std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let list = Berth::wrapped_in(d.socket(), needs::AS_NOBODY)
            .args(["list", "--json"])
            .output()
            .code(0)
            .json();
        let row = row_at(list.as_array().unwrap(), 23350).unwrap();
        assert_eq!(row["label"], "shop web (TLS)", "{row}");
    } else {
        needs::skip(
            needs::Need::Users,
            "part: another user sees a persistent label (needs root, to run berth as nobody)",
        );
    }
    // A bad label is refused before anything is created.
    d.berth([
        "persistent",
        "add",
        "--tcp",
        "--start",
        "23360",
        "--count",
        "1",
        "--label",
        "\u{1b}[31mred",
    ])
    .output()
    .code(10)
    .says(&["control characters"]);
    assert!(row_at(&d.list(), 23360).is_none());
}
