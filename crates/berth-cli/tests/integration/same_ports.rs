//! `berth run --same-ports`: the same numbers in TCP and UDP, together or not at all.

use crate::support;

use support::{ports, run_sh, Daemon};

#[test]
fn same_ports_gives_one_set_of_numbers_free_in_both_protocols() {
    let d = Daemon::start("21700-21709");
    // UDP 21700-21701 taken by someone else: a 2-port pair must skip it.
    let mut other = run_sh(&d, &["--udp", "2"], "echo $BERTH_UDP_PORTS; read x").spawn();
    assert_eq!(ports(&other.next_line()), vec![21700, 21701]);

    let out = run_sh(
        &d,
        &["--tcp", "2", "--udp", "2", "--same-ports"],
        "echo $BERTH_TCP_PORTS; echo $BERTH_UDP_PORTS",
    )
    .output()
    .code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (tcp, udp) = (ports(lines[0]), ports(lines[1]));
    assert_eq!(tcp, udp, "the same numbers in both");
    assert_eq!(tcp, vec![21702, 21703]);

    // Unequal counts are refused before anything is reserved.
    run_sh(&d, &["--tcp", "2", "--udp", "1", "--same-ports"], "true")
        .output()
        .code(10)
        .says(&["must be equal"]);
    // A specific pair over the other's UDP block is a conflict naming it.
    run_sh(
        &d,
        &[
            "--tcp",
            "1",
            "--udp",
            "1",
            "--same-ports",
            "--start",
            "21701",
        ],
        "true",
    )
    .output()
    .code(12);
    other.send_line("done");
    other.wait().code(0);
}
