//! Enforce mode's programs in the kernel: attached to a cgroup subtree of a cgroup v2
//! hierarchy mounted for the test, in a network namespace of the test's own, they let the
//! owning cgroup bind its port and refuse every other cgroup with EADDRINUSE — for IPv4 and
//! IPv6 — and match nothing else: another port, another protocol, a port taken back. Needs
//! root (BPF, mounting cgroup2); reports itself skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use berth_core::Protocol;
use berth_os::enforce::{netns_cookie, Cgroup, Programs};
use common::Hierarchy;

/// Runs, in `cgroup`, a bind of `port` on the unspecified address of `family` (4 or 6) for
/// `protocol`; returns "bound" or the errno's name.
fn bind_in(cgroup: &Path, family: u8, protocol: Protocol, port: u16) -> String {
    let (af, address) = match family {
        4 => ("AF_INET", "0.0.0.0"),
        _ => ("AF_INET6", "::"),
    };
    let kind = match protocol {
        Protocol::Tcp => "SOCK_STREAM",
        Protocol::Udp => "SOCK_DGRAM",
    };
    let script = format!(
        "import socket,errno\ns=socket.socket(socket.{af}, socket.{kind})\ntry:\n    s.bind(('{address}', {port})); print('bound')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])"
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > '{}/cgroup.procs' && exec /usr/bin/python3 -c \"$0\"",
            cgroup.display()
        ))
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_owner_cgroup_binds_its_port_and_every_other_is_refused() {
    if !common::root("enforce mode's programs need root (BPF, mounting cgroup2)") {
        return;
    }
    if let Some(why) = berth_os::enforce::unavailable() {
        panic!("{why}");
    }
    // A network namespace of the test's own: the rules are scoped to it, and nothing the
    // test binds is seen outside.
    berth_os::netns::enter_new_on_this_thread().unwrap();
    let hierarchy = Hierarchy::mount();
    let owner = hierarchy.cgroup("owner");
    // A cgroup below the owner's (a container's, a service's worker): the owner too.
    let worker = hierarchy.cgroup("owner/worker");
    let stranger = hierarchy.cgroup("stranger");
    let daemon = hierarchy.cgroup("daemon");
    let mut programs = Programs::attach(&hierarchy.subtree).unwrap();
    let netns = netns_cookie().unwrap();
    let port = 47123;
    let at = |dir: &Path| Cgroup::at(hierarchy.root(), dir).unwrap();
    programs
        .own(netns, (Protocol::Tcp, port), at(&owner))
        .unwrap();
    // The daemon's own cgroup binds for its clients.
    programs.exempt(at(&daemon).id).unwrap();

    for family in [4, 6] {
        for (cgroup, expected) in [
            (&owner, "bound"),
            (&worker, "bound"),
            (&daemon, "bound"),
            (&stranger, "EADDRINUSE"),
        ] {
            assert_eq!(
                bind_in(cgroup, family, Protocol::Tcp, port),
                expected,
                "IPv{family} from {}",
                cgroup.display()
            );
        }
    }
    // Nothing else matches: UDP on the same number, the next port.
    assert_eq!(bind_in(&stranger, 4, Protocol::Udp, port), "bound");
    assert_eq!(bind_in(&stranger, 4, Protocol::Tcp, port + 1), "bound");
    // Taken back: anyone's again.
    programs.disown(netns, (Protocol::Tcp, port)).unwrap();
    assert_eq!(bind_in(&stranger, 4, Protocol::Tcp, port), "bound");
    // Another namespace's rule is not this namespace's.
    programs
        .own(netns ^ 1, (Protocol::Tcp, port), at(&owner))
        .unwrap();
    assert_eq!(bind_in(&stranger, 4, Protocol::Tcp, port), "bound");
    // Port 0 and cgroup 0 are never owned.
    assert!(programs.own(netns, (Protocol::Tcp, 0), at(&owner)).is_err());
    let nobody = Cgroup { id: 0, level: 1 };
    assert!(programs.own(netns, (Protocol::Tcp, port), nobody).is_err());
    drop(programs);
}
