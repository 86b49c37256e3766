//! Enforce mode's programs in the kernel: attached to a cgroup subtree of a cgroup v2
//! hierarchy mounted for the test, in a network namespace of the test's own, they let the
//! owning cgroup bind its port and refuse every other cgroup with EADDRINUSE — for IPv4 and
//! IPv6 — and match nothing else: another port, another protocol, a port taken back. Needs
//! root (BPF, mounting cgroup2); reports itself skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_core::Protocol;
use berth_os::enforce::{netns_cookie, Cgroup, Programs};
use common::Hierarchy;

/// Runs the Python `script` in a process moved into `cgroup` first; returns what it printed.
fn python_in(cgroup: &Path, script: &str) -> String {
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

fn socket_of(family: u8, protocol: Protocol) -> (&'static str, &'static str, &'static str) {
    let (af, address) = match family {
        4 => ("AF_INET", "0.0.0.0"),
        _ => ("AF_INET6", "::"),
    };
    let kind = match protocol {
        Protocol::Tcp => "SOCK_STREAM",
        Protocol::Udp => "SOCK_DGRAM",
    };
    (af, kind, address)
}

/// Runs, in `cgroup`, a bind of `port` on the unspecified address of `family` (4 or 6) for
/// `protocol`; returns "bound" or the errno's name.
fn bind_in(cgroup: &Path, family: u8, protocol: Protocol, port: u16) -> String {
    let (af, kind, address) = socket_of(family, protocol);
    python_in(
        cgroup,
        &format!(
            "import socket,errno\ns=socket.socket(socket.{af}, socket.{kind})\ntry:\n    s.bind(('{address}', {port})); print('bound')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])"
        ),
    )
}

/// Runs, in `cgroup`, `n` binds of port 0 kept open together, then one more after closing
/// them all; returns the ports, the last one's after the close.
fn bind_zero_in(cgroup: &Path, family: u8, protocol: Protocol, n: usize) -> Vec<u16> {
    let (af, kind, address) = socket_of(family, protocol);
    let out = python_in(
        cgroup,
        &format!(
            "import socket\nports=[]\nopen_=[]\nfor i in range({n}):\n    s=socket.socket(socket.{af}, socket.{kind}); s.bind(('{address}', 0)); open_.append(s); ports.append(s.getsockname()[1])\nfor s in open_: s.close()\ns=socket.socket(socket.{af}, socket.{kind}); s.bind(('{address}', 0)); ports.append(s.getsockname()[1])\nprint(' '.join(map(str, ports)))"
        ),
    );
    out.split_whitespace().map(|p| p.parse().unwrap()).collect()
}

/// What every test here needs: root (BPF, mounting cgroup2), programs built, a network
/// namespace of the test's own (on this thread: the rules are scoped to it, and nothing the test
/// binds is seen outside, loopback up) and a cgroup v2 hierarchy mounted for it. `None`, with
/// the skip said, without root.
fn in_a_namespace_of_its_own() -> Option<Hierarchy> {
    if !common::root("enforce mode's programs need root (BPF, mounting cgroup2 and bpffs)") {
        return None;
    }
    if let Some(why) = berth_os::enforce::unavailable() {
        panic!("{why}");
    }
    berth_os::netns::enter_new_on_this_thread().unwrap();
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(up.success());
    Some(Hierarchy::mount())
}

/// A lease long enough for any test.
fn long_lease() -> Duration {
    berth_os::enforce::monotonic_now() + Duration::from_secs(3600)
}

#[test]
fn the_owner_cgroup_binds_its_port_and_every_other_is_refused() {
    let Some(hierarchy) = in_a_namespace_of_its_own() else {
        return;
    };
    let owner = hierarchy.cgroup("owner");
    // A cgroup below the owner's (a container's, a service's worker): the owner too.
    let worker = hierarchy.cgroup("owner/worker");
    let stranger = hierarchy.cgroup("stranger");
    let daemon = hierarchy.cgroup("daemon");
    let mut programs = Programs::attach(&hierarchy.subtree).unwrap();
    programs.renew_lease(long_lease()).unwrap();
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

#[test]
fn an_owner_s_bind_of_port_0_draws_from_its_block_and_strangers_are_counted() {
    let Some(hierarchy) = in_a_namespace_of_its_own() else {
        return;
    };
    let owner = hierarchy.cgroup("owner");
    let worker = hierarchy.cgroup("owner/worker");
    let stranger = hierarchy.cgroup("stranger");
    let mut programs = Programs::attach(&hierarchy.subtree).unwrap();
    programs.renew_lease(long_lease()).unwrap();
    let netns = netns_cookie().unwrap();
    let owner_id = Cgroup::at(hierarchy.root(), &owner).unwrap();
    // Outside the ephemeral range (32768-60999 by default): the kernel's own picks never land
    // there, so a port of the block can only come from the programs.
    let (first, count) = (20200_u16, 4_u16);
    let block = first..first + count;
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for port in block.clone() {
            programs.own(netns, (protocol, port), owner_id).unwrap();
        }
        programs
            .steer(netns, protocol, owner_id.id, (first, count), false)
            .unwrap();
    }

    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for family in [4, 6] {
            for cgroup in [&owner, &worker] {
                // Four sockets at once take the block's four ports; closed, they give them back.
                let ports = bind_zero_in(cgroup, family, protocol, 4);
                let (together, after) = ports.split_at(4);
                let mut distinct = together.to_vec();
                distinct.sort_unstable();
                assert_eq!(
                    distinct,
                    block.clone().collect::<Vec<_>>(),
                    "{protocol:?} IPv{family} from {}",
                    cgroup.display()
                );
                assert!(block.contains(&after[0]), "{ports:?}");
            }
            // A stranger's bind(0) is the kernel's: never a port of the block.
            let theirs = bind_zero_in(&stranger, family, protocol, 1);
            assert!(theirs.iter().all(|p| !block.contains(p)), "{theirs:?}");
        }
    }
    // The block's ports all held, a fifth bind(0) is left to the kernel.
    let five = bind_zero_in(&owner, 4, Protocol::Tcp, 5);
    assert!(!block.contains(&five[4]), "{five:?}");

    // A stranger's refusals are counted, with the last one's process.
    assert!(programs
        .refusals(netns, (Protocol::Tcp, first))
        .unwrap()
        .is_none());
    for _ in 0..3 {
        assert_eq!(bind_in(&stranger, 4, Protocol::Tcp, first), "EADDRINUSE");
    }
    let seen = programs
        .refusals(netns, (Protocol::Tcp, first))
        .unwrap()
        .unwrap();
    assert_eq!(seen.count, 3);
    assert_eq!(seen.last.command, "python3");
    assert_eq!(
        seen.last.cgroup,
        berth_os::enforce::cgroup_id(&stranger).unwrap()
    );
    assert!(seen.last.at <= berth_os::enforce::monotonic_now());
    assert_ne!(seen.last.pid, 0);
    assert_eq!(seen.last.uid, 0, "root ran the refused bind");

    // Past the lease nothing is refused (a daemon gone for good); renewed, refused again.
    programs
        .renew_lease(berth_os::enforce::monotonic_now())
        .unwrap();
    assert_eq!(bind_in(&stranger, 6, Protocol::Tcp, first), "bound");
    programs.renew_lease(long_lease()).unwrap();
    assert_eq!(bind_in(&stranger, 6, Protocol::Tcp, first), "EADDRINUSE");

    // Unsteered, the owner's bind(0) is the kernel's again; disowned, the refusals go too.
    programs.unsteer(netns, Protocol::Tcp, owner_id.id).unwrap();
    let back = bind_zero_in(&owner, 4, Protocol::Tcp, 1);
    assert!(back.iter().all(|p| !block.contains(p)), "{back:?}");
    programs.disown(netns, (Protocol::Tcp, first)).unwrap();
    assert!(programs
        .refusals(netns, (Protocol::Tcp, first))
        .unwrap()
        .is_none());
    // No entry can mean "any": an empty block is refused.
    assert!(programs
        .steer(netns, Protocol::Tcp, owner_id.id, (first, 0), false)
        .is_err());
    assert!(programs
        .steer(netns, Protocol::Tcp, 0, (first, 1), false)
        .is_err());
}

#[test]
fn an_owner_binds_its_privileged_port_without_the_capability() {
    let Some(hierarchy) = in_a_namespace_of_its_own() else {
        return;
    };
    let owner = hierarchy.cgroup("owner");
    let stranger = hierarchy.cgroup("stranger");
    let mut programs = Programs::attach(&hierarchy.subtree).unwrap();
    programs.renew_lease(long_lease()).unwrap();
    let netns = netns_cookie().unwrap();
    let at = |dir: &Path| Cgroup::at(hierarchy.root(), dir).unwrap();
    programs
        .own(netns, (Protocol::Tcp, 400), at(&owner))
        .unwrap();
    // User nobody, without CAP_NET_BIND_SERVICE: its owned port binds, an unowned privileged
    // port does not (the kernel's own rule), and a stranger is refused the owned one.
    let as_nobody = |cgroup: &Path, port: u16| {
        python_in(
            cgroup,
            &format!(
                "import os, socket, errno\nos.setgid(65534); os.setuid(65534)\ns = socket.socket()\ntry:\n    s.bind((\"0.0.0.0\", {port})); print(\"bound\")\nexcept OSError as e:\n    print(errno.errorcode[e.errno])"
            ),
        )
    };
    assert_eq!(as_nobody(&owner, 400), "bound");
    assert_eq!(as_nobody(&owner, 401), "EACCES");
    assert_eq!(as_nobody(&stranger, 400), "EADDRINUSE");
}

#[test]
fn pinned_programs_outlive_their_loader_until_the_pins_go() {
    let Some(hierarchy) = in_a_namespace_of_its_own() else {
        return;
    };
    let owner = hierarchy.cgroup("owner");
    let stranger = hierarchy.cgroup("stranger");
    let bpffs = tempfile::tempdir().unwrap();
    berth_os::enforce::ensure_bpffs(bpffs.path()).unwrap();
    // Mounted once: a second call finds it.
    berth_os::enforce::ensure_bpffs(bpffs.path()).unwrap();
    let pins = bpffs.path().join("berth");
    let netns = netns_cookie().unwrap();
    let at = |dir: &Path| Cgroup::at(hierarchy.root(), dir).unwrap();
    let port = 47300;
    {
        let mut programs = Programs::attach_pinned(&hierarchy.subtree, &pins).unwrap();
        programs.renew_lease(long_lease()).unwrap();
        programs
            .own(netns, (Protocol::Tcp, port), at(&owner))
            .unwrap();
    }
    // The loader's handles are gone; the pinned programs still refuse.
    assert_eq!(bind_in(&stranger, 4, Protocol::Tcp, port), "EADDRINUSE");
    // A second loader takes over the pinned maps (owners, claims, refusals) and replaces the
    // links: the port stays refused without a gap.
    let mut second = Programs::attach_pinned(&hierarchy.subtree, &pins).unwrap();
    second.renew_lease(long_lease()).unwrap();
    assert_eq!(bind_in(&stranger, 4, Protocol::Tcp, port), "EADDRINUSE");
    // What its table no longer has goes; what it has stays.
    second.retain(netns, &[]).unwrap();
    assert_eq!(bind_in(&stranger, 4, Protocol::Tcp, port), "bound");
    let owner_id = at(&owner);
    second.own(netns, (Protocol::Tcp, port), owner_id).unwrap();
    second
        .retain(netns, &[((Protocol::Tcp, port), owner_id.id)])
        .unwrap();
    assert_eq!(bind_in(&stranger, 4, Protocol::Tcp, port), "EADDRINUSE");
    // Unpinned, they detach with their handles.
    second.unpin().unwrap();
    drop(second);
    assert_eq!(bind_in(&stranger, 4, Protocol::Tcp, port), "bound");
    // Pins left behind are removed on request.
    {
        let mut third = Programs::attach_pinned(&hierarchy.subtree, &pins).unwrap();
        third.renew_lease(long_lease()).unwrap();
        third.own(netns, (Protocol::Tcp, port), at(&owner)).unwrap();
    }
    assert_eq!(bind_in(&stranger, 4, Protocol::Tcp, port), "EADDRINUSE");
    berth_os::enforce::remove_pins(&pins).unwrap();
    assert_eq!(bind_in(&stranger, 4, Protocol::Tcp, port), "bound");
    let _ = Command::new("umount").arg(bpffs.path()).status();
}

#[test]
fn connect_is_steered_into_the_block_only_when_asked() {
    let Some(hierarchy) = in_a_namespace_of_its_own() else {
        return;
    };
    let owner = hierarchy.cgroup("owner");
    let mut programs = Programs::attach(&hierarchy.subtree).unwrap();
    programs.renew_lease(long_lease()).unwrap();
    let netns = netns_cookie().unwrap();
    let owner_id = Cgroup::at(hierarchy.root(), &owner).unwrap();
    // Outside the ephemeral range, as above.
    let (first, count) = (20400_u16, 3_u16);
    let block = first..first + count;
    for port in block.clone() {
        programs
            .own(netns, (Protocol::Tcp, port), owner_id)
            .unwrap();
    }
    // Two connections at once (IPv4, IPv6) to a listener of the test's, from unbound sockets;
    // prints their local ports.
    let connects = |cgroup: &Path| -> Vec<u16> {
        python_in(
            cgroup,
            "import socket\n\
             l4 = socket.socket(); l4.bind((\"127.0.0.1\", 20500)); l4.listen()\n\
             l6 = socket.socket(socket.AF_INET6); l6.bind((\"::1\", 20501)); l6.listen()\n\
             a = socket.create_connection(l4.getsockname()[:2])\n\
             b = socket.socket(socket.AF_INET6); b.connect(l6.getsockname()[:2])\n\
             print(a.getsockname()[1], b.getsockname()[1])",
        )
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
    };
    // Not asked: the kernel picks, from its ephemeral range.
    programs
        .steer(netns, Protocol::Tcp, owner_id.id, (first, count), false)
        .unwrap();
    let plain = connects(&owner);
    assert!(plain.iter().all(|p| !block.contains(p)), "{plain:?}");
    // Asked: from the block.
    programs
        .steer(netns, Protocol::Tcp, owner_id.id, (first, count), true)
        .unwrap();
    let steered = connects(&owner);
    assert!(steered.iter().all(|p| block.contains(p)), "{steered:?}");
}
