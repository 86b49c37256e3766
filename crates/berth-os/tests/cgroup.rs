//! Cgroup v2 for enforce mode's cgroup owners: a process moved into a cgroup makes it
//! populated, and the wait for it to be empty ends when the last process exits — woken by the
//! kernel, with a deadline only as a guard. Needs root (mounting cgroup2); reports itself
//! skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_os::cgroup::{add_process, populated, Watches};
use common::Hierarchy;

#[tokio::test]
async fn a_cgroup_is_empty_once_its_last_process_exits() {
    if !common::root("cgroup v2 tests need root (mounting cgroup2)") {
        return;
    }
    let hierarchy = Hierarchy::mount();
    let owner = hierarchy.cgroup("owner");
    assert!(!populated(&owner).unwrap());
    // Empty already: no wait.
    let watches = std::sync::Arc::new(Watches::new().unwrap());
    tokio::time::timeout(Duration::from_secs(30), until_empty(&watches, &owner))
        .await
        .expect("an empty cgroup is empty at once")
        .unwrap();

    // A launcher that starts a "daemonized" child and exits: the cgroup stays populated while
    // the child runs, and empties when it ends.
    let mut launcher = Command::new("sh")
        .arg("-c")
        .arg("read go; exec 3<&0; sh -c 'read x <&3' & exit 0")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    add_process(&owner, launcher.id()).unwrap();
    assert!(populated(&owner).unwrap());
    let mut input = launcher.stdin.take().unwrap();
    // Forked after the move: the child is in the cgroup too.
    input.write_all(b"go\n").unwrap();
    assert!(launcher.wait().unwrap().success());
    let wait = tokio::spawn({
        let (owner, watches) = (owner.clone(), watches.clone());
        async move { until_empty(&watches, &owner).await }
    });
    assert!(populated(&owner).unwrap(), "the child still runs");
    assert!(!wait.is_finished());
    // The child reads the same pipe: a line ends it.
    input.write_all(b"x\n").unwrap();
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("the wait ends when the cgroup empties")
        .unwrap()
        .unwrap();
    assert!(!populated(&owner).unwrap());
}

/// Resolves once the cgroup at `dir` has no process left, woken by the kernel's changes of its
/// `cgroup.events` (never by polling) — as the daemon waits.
async fn until_empty(watches: &Watches, dir: &std::path::Path) -> std::io::Result<()> {
    // Watched before the first look: an exit between the two is seen.
    let wd = watches.watch(dir)?;
    while populated(dir)? {
        watches.changed().await?;
    }
    watches.unwatch(wd);
    Ok(())
}
