//! What the tests of cgroup v2 and enforce mode share: a hierarchy of their own.

#![allow(dead_code, reason = "each test binary uses a part")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

/// Whether the test runs as root; says it is skipped, and why, when not.
pub fn root(why: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        println!("SKIPPED: {why}");
    }
    root
}

/// A cgroup v2 hierarchy mounted at a temporary directory, with a subtree for the test;
/// unmounted when dropped.
pub struct Hierarchy {
    mount: tempfile::TempDir,
    /// The test's own cgroup, where programs are attached and children made.
    pub subtree: PathBuf,
}

impl Hierarchy {
    pub fn mount() -> Hierarchy {
        let mount = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(mount.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t cgroup2 failed: {status}");
        // Tests of one binary run at once: each its own subtree.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let subtree = mount
            .path()
            .join(format!("berth-enforce-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&subtree).unwrap();
        Hierarchy { mount, subtree }
    }

    /// Where the hierarchy is mounted (its root cgroup).
    pub fn root(&self) -> &std::path::Path {
        self.mount.path()
    }

    pub fn cgroup(&self, name: &str) -> PathBuf {
        let dir = self.subtree.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for Hierarchy {
    fn drop(&mut self) {
        // Children first; each is empty once its test process has exited.
        // Cgroups are removed with rmdir, deepest first (each empty once its processes exited).
        fn remove(dir: &std::path::Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        remove(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        remove(&self.subtree);
        let _ = Command::new("umount").arg(self.mount.path()).status();
    }
}
