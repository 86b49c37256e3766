//! Nobody can stand in for a user's daemon: a `/tmp` fallback directory another user made (or
//! that others may write to, or that is a symbolic link) is refused with a message saying why
//! and what to do; the daemon's kernel credentials are checked before anything is sent; root
//! never looks in `/tmp`.
//!
//! Each command runs as an ordinary user or as root with an empty environment, inside a private
//! mount namespace whose `/run` is an empty tmpfs, so that a system daemon of the host (on
//! `/run/berth/berth.sock`) cannot answer. Run as root, the ordinary user is nobody (uid
//! 65534, with `setpriv`). Run as an ordinary user, it is that user itself, and "root" is root
//! of a user namespace of its own (which is what makes the mount namespace possible too); the
//! parts that need another user (a directory someone else made, a daemon of someone else) are
//! then reported skipped (`berth_testkit::needs`).

use crate::support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use berth_testkit::needs::{self, Need, AS_NOBODY, NOBODY};
use support::{lines_of, poll_until, Berth, BERTH, DEADLINE};

/// Runs the rest of the command line with an empty `/run` of its own (after `$0`).
const PRIVATE_RUN: [&str; 3] = [
    "sh",
    "-c",
    "mount --make-rprivate / && mount -t tmpfs tmpfs /run && exec \"$@\"",
];

/// The ordinary user the commands run as: nobody where the test may switch users (root),
/// else the test's own user.
fn ordinary_user() -> u32 {
    if needs::other_users_available() {
        NOBODY
    } else {
        rustix::process::getuid().as_raw()
    }
}

/// `berth …` as the ordinary user ([`ordinary_user`]) or as root, in a private mount namespace,
/// with `TMPDIR=tmp` and no `XDG_RUNTIME_DIR`; `None` (the skip reported) where no private
/// mount namespace can be made.
fn berth_in(tmp: &Path, as_user: bool) -> Option<Berth> {
    let ns = needs::namespaces()?;
    let mut wrapper: Vec<String> = ns.unshare(&["--mount"]);
    wrapper.extend(PRIVATE_RUN.map(str::to_owned));
    wrapper.push("sh".to_owned()); // $0 of the inner shell
    if as_user {
        if ns.in_user_namespace() {
            // Back from root of the user namespace to the user itself, in a user namespace
            // nested in it that maps the one uid: the mount namespace stays.
            let (uid, gid) = (
                rustix::process::getuid().as_raw(),
                rustix::process::getgid().as_raw(),
            );
            wrapper.extend([
                "unshare".to_owned(),
                format!("--map-user={uid}"),
                format!("--map-group={gid}"),
                "--".to_owned(),
            ]);
        } else {
            // As nobody, who must be able to reach the built binary.
            if !needs::users() {
                return None;
            }
            wrapper.extend(AS_NOBODY.map(str::to_owned));
        }
    }
    // A beacon name of this test's own: a daemon one test starts on demand must not be the one
    // another test's client finds first through the beacon.
    let tag = tmp
        .file_name()
        .map_or_else(|| "tmp".to_owned(), |n| n.to_string_lossy().into_owned());
    Some(
        Berth::bare(wrapper)
            .env("TMPDIR", tmp)
            .env("HOME", tmp.join("home"))
            .env(
                "BERTH_AUTHORITY",
                format!("berth-test-{}-{tag}", std::process::id()),
            ),
    )
}

/// A temporary directory anyone may create entries in, like `/tmp`.
fn shared_tmp() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    tmp
}

/// Makes the fallback directory in some untrustworthy way.
type Make<'a> = dyn Fn(&Path) + 'a;

#[test]
fn a_fallback_directory_not_private_to_the_user_is_refused() {
    let user = ordinary_user();
    let tmp = shared_tmp();
    let dir = tmp.path().join(format!("berth-{user}"));
    let mut cases: Vec<(&str, &Make<'_>, &str)> = Vec::new();
    if user == NOBODY {
        cases.push((
            "made by another user",
            &|d| {
                std::fs::create_dir(d).unwrap();
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
            },
            "owned by uid 0",
        ));
    } else {
        needs::skip(
            Need::Users,
            "part: a directory made by another user (needs root, to make one)",
        );
    }
    let writable: &Make<'_> = &|d| {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::chown(d, Some(user), Some(user)).unwrap();
    };
    let symlink: &Make<'_> = &|d| {
        let real = d.with_extension("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&real, Some(user), Some(user)).unwrap();
        std::os::unix::fs::symlink(&real, d).unwrap();
    };
    cases.push((
        "writable by others",
        writable,
        "writable by group or others",
    ));
    cases.push(("a symbolic link", symlink, "not a directory"));
    // The same rule for `$XDG_RUNTIME_DIR/berth`: XDG_RUNTIME_DIR set by hand to a directory
    // others share (here the same one) may hold another user's `berth`.
    let in_runtime_dir = tmp.path().join("berth");
    let layouts = [(&dir, None), (&in_runtime_dir, Some(tmp.path()))];
    for ((what, make, why), (dir, xdg)) in cases
        .iter()
        .flat_map(|case| layouts.iter().map(move |layout| (case, layout)))
    {
        let (dir, what, why) = (*dir, *what, *why);
        make(dir);
        for args in [&["status"][..], &["run", "--tcp", "1", "--", "true"][..]] {
            let Some(mut berth) = berth_in(tmp.path(), true) else {
                return;
            };
            if let Some(xdg) = xdg {
                berth = berth.env("XDG_RUNTIME_DIR", xdg);
            }
            let out = berth.args(args).output();
            assert_eq!(
                out.status.code(),
                Some(16),
                "{what}: {args:?}: {}",
                out.stderr
            );
            for needle in [&dir.display().to_string(), why, "XDG_RUNTIME_DIR", "remove"] {
                assert!(
                    out.stderr.contains(needle),
                    "{what}: {needle:?}: {}",
                    out.stderr
                );
            }
        }
        assert!(
            !dir.join("berth.sock").exists() && !dir.join("berth.log").exists(),
            "{what}: nothing may be created in it"
        );
        let _ = std::fs::remove_file(dir);
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(dir.with_extension("real"));
    }
}

/// A fallback directory that is the user's own but sits in a directory others may write
/// without the sticky bit (another user could rename it away and put theirs in its place) is
/// refused, naming that directory.
#[test]
fn a_fallback_directory_in_a_directory_others_may_rename_it_in_is_refused() {
    let user = ordinary_user();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = tmp.path().join(format!("berth-{user}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&dir, Some(user), Some(user)).unwrap();
    let Some(berth) = berth_in(tmp.path(), true) else {
        return;
    };
    let out = berth.args(["status"]).output().code(16);
    assert!(
        out.stderr.contains("without the sticky bit")
            && out.stderr.contains(&tmp.path().display().to_string()),
        "{}",
        out.stderr
    );
}

#[test]
fn an_absent_fallback_directory_is_made_private_and_the_start_is_announced() {
    let user = ordinary_user();
    let tmp = shared_tmp();
    let dir = tmp.path().join(format!("berth-{user}"));
    let Some(berth) = berth_in(tmp.path(), true) else {
        return;
    };
    let out = berth
        .args(["run", "--tcp", "1", "--", "true"])
        .output()
        .code(0);
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.mode() & 0o777), (user, 0o700));
    let log = std::fs::symlink_metadata(dir.join("berth.log")).unwrap();
    assert_eq!(log.mode() & 0o777, 0o600);
    // Said once, with what it takes to find and stop it.
    let socket = dir.join("berth.sock");
    assert_eq!(
        out.stderr.matches("started a berth daemon").count(),
        1,
        "{}",
        out.stderr
    );
    for needle in [
        "pid ",
        &socket.display().to_string(),
        "berth.log",
        "berth stop",
    ] {
        assert!(out.stderr.contains(needle), "{needle:?}: {}", out.stderr);
    }
    // A second command finds it and says nothing about starting.
    let again = berth_in(tmp.path(), true)
        .expect("as before")
        .args(["run", "--tcp", "1", "--", "true"])
        .output()
        .code(0);
    assert!(!again.stderr.contains("started"), "{}", again.stderr);
    let status = berth_in(tmp.path(), true)
        .expect("as before")
        .args(["status", "--json"])
        .output()
        .code(0)
        .json();
    let pid =
        rustix::process::Pid::from_raw(i32::try_from(status["pid"].as_u64().unwrap()).unwrap())
            .unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    poll_until("the daemon started on demand stops", || {
        (!socket.exists()).then_some(())
    });
}

#[test]
fn root_never_uses_a_tmp_fallback() {
    let tmp = shared_tmp();
    std::fs::create_dir(tmp.path().join("berth-0")).unwrap();
    let Some(berth) = berth_in(tmp.path(), false) else {
        return;
    };
    let out = berth.args(["status"]).output().code(18);
    assert!(!out.stderr.contains("berth-0"), "{}", out.stderr);
}

#[test]
fn a_daemon_of_another_user_is_refused_before_anything_is_sent() {
    if !needs::users() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("b.sock");
    let mut child = Command::new(AS_NOBODY[0])
        .args(&AS_NOBODY[1..])
        .args([BERTH, "daemon"])
        .arg("--socket")
        .arg(&socket)
        .arg("--db")
        .arg(dir.path().join("berth.db"))
        .args(["--pool", "46100-46199", "--ready-stdout"])
        .env_remove("BERTH_LOG")
        // Off the host's reserved-ports list, and a beacon of its own beside the other tests' daemons.
        .env("BERTH_KERNEL_SYNC", "off")
        .env(
            "BERTH_AUTHORITY",
            format!("berth-test-{}-{}", std::process::id(), line!()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = lines_of(child.stdout.take().unwrap()).recv_timeout(DEADLINE);
    let pid = child.id();
    let out = Berth::new(&socket).args(["status"]).output();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(line.unwrap().trim(), "ready");
    let out = out.code(16);
    for needle in [
        &format!("pid {pid}"),
        "uid 65534",
        &socket.display().to_string(),
    ] {
        assert!(out.stderr.contains(needle), "{needle:?}: {}", out.stderr);
    }
}
