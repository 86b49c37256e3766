//! Where a daemon listens and keeps its data, and where clients look for it (`docs/cli.md`,
//! "Finding the daemon").
//!
//! The rules are part of the contract between daemon and clients, so they live here. They are
//! pure functions of the environment and the user id, which callers pass in; so is the
//! decision whether a `/tmp` fallback directory may be trusted ([`check_private_dir`]), given
//! what `lstat` said about it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variable that names the socket to use, overriding the search.
pub const SOCKET_ENV: &str = "BERTH_SOCKET";

/// The system instance's socket.
pub const SYSTEM_SOCKET: &str = "/run/berth/berth.sock";

/// The system instance's database.
pub const SYSTEM_DB: &str = "/var/lib/berth/berth.db";

/// The system instance's configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/berth/berth.toml";

/// A view of the environment: `lookup("HOME")`.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process environment, for [`Env`].
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// The shared-directory fallback for a user's runtime files, `$TMPDIR/berth-UID` (`TMPDIR`
/// defaulting to `/tmp`). Anyone can create that name first, so it is used only once
/// [`check_private_dir`] accepts it, and never for root.
pub fn fallback_dir(env: Env<'_>, uid: u32) -> PathBuf {
    let tmp = env("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    tmp.join(format!("berth-{uid}"))
}

/// The per-user instance's socket: `$XDG_RUNTIME_DIR/berth/berth.sock`, falling back to
/// `$TMPDIR/berth-UID/berth.sock` ([`fallback_dir`]) when the session has no runtime
/// directory.
pub fn user_socket(env: Env<'_>, uid: u32) -> PathBuf {
    match env("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("berth").join("berth.sock"),
        None => fallback_dir(env, uid).join("berth.sock"),
    }
}

/// The per-user instance's database: `$XDG_STATE_HOME/berth/berth.db`, falling back to
/// `$HOME/.local/state/berth/berth.db`, then `$TMPDIR/berth-UID/berth.db` ([`fallback_dir`]).
pub fn user_db(env: Env<'_>, uid: u32) -> PathBuf {
    if let Some(dir) = env("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("berth").join("berth.db");
    }
    if let Some(home) = env("HOME") {
        return PathBuf::from(home)
            .join(".local/state")
            .join("berth")
            .join("berth.db");
    }
    fallback_dir(env, uid).join("berth.db")
}

/// The directory of this user's runtime files that `path` lies in directly, if it does — the
/// `/tmp` fallback ([`fallback_dir`]) or `$XDG_RUNTIME_DIR/berth`: the caller must have that
/// directory accepted by [`check_private_dir`] before it uses `path`. Anyone can make the
/// fallback's name first; and `XDG_RUNTIME_DIR` is set by hand now and then (to `/tmp`, say),
/// where another user's `berth` directory may be waiting.
pub fn in_user_dir(env: Env<'_>, uid: u32, path: &Path) -> Option<PathBuf> {
    let runtime = env("XDG_RUNTIME_DIR").map(|dir| PathBuf::from(dir).join("berth"));
    [Some(fallback_dir(env, uid)), runtime]
        .into_iter()
        .flatten()
        .find(|dir| path.parent() == Some(dir.as_path()))
}

/// What `lstat` (never `stat`: a symbolic link is not followed) says about a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirFacts {
    /// It is a directory (not a symbolic link, not a file).
    pub is_dir: bool,
    /// Its owner.
    pub owner: u32,
    /// Its permission bits (`st_mode & 0o7777`).
    pub mode: u32,
}

impl DirFacts {
    /// The facts in `meta`, which must come from `lstat` (`std::fs::symlink_metadata`).
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        DirFacts {
            is_dir: meta.file_type().is_dir(),
            owner: meta.uid(),
            mode: meta.mode() & 0o7777,
        }
    }
}

/// Why a directory of a user's runtime files ([`in_user_dir`]) is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to use {dir}: {why}; another user could stand in for your berth daemon there. Set XDG_RUNTIME_DIR to a private directory (for example /run/user/{uid}), or remove {dir} if you did not make it")]
pub struct UnsafeDir {
    /// The directory.
    pub dir: String,
    /// What is wrong with it.
    pub why: String,
    /// The user it was meant for.
    pub uid: u32,
}

impl UnsafeDir {
    /// `Ok` when there is no `why`; else `dir` is refused for it.
    fn check(dir: &Path, why: Option<String>, uid: u32) -> Result<(), UnsafeDir> {
        match why {
            None => Ok(()),
            Some(why) => Err(UnsafeDir {
                dir: dir.display().to_string(),
                why,
                uid,
            }),
        }
    }
}

/// Whether `dir` may hold `uid`'s socket, log and lock: it must be a real directory (not a
/// symbolic link), owned by `uid`, and writable by nobody else (as ssh-agent and tmux demand
/// of theirs).
pub fn check_private_dir(dir: &Path, facts: &DirFacts, uid: u32) -> Result<(), UnsafeDir> {
    let why = if !facts.is_dir {
        Some("it is not a directory (a symbolic link or a file)".to_owned())
    } else if facts.owner != uid {
        Some(format!(
            "it is owned by uid {}, not by you (uid {uid})",
            facts.owner
        ))
    } else if facts.mode & 0o022 != 0 {
        Some(format!(
            "it is writable by group or others (mode {:04o})",
            facts.mode & 0o7777
        ))
    } else {
        None
    };
    UnsafeDir::check(dir, why, uid)
}

/// The socket a daemon run by `uid` listens on by default: the system socket for root, the
/// per-user socket for everyone else.
pub fn default_socket(env: Env<'_>, uid: u32) -> PathBuf {
    if uid == 0 {
        PathBuf::from(SYSTEM_SOCKET)
    } else {
        user_socket(env, uid)
    }
}

/// The database a daemon run by `uid` uses by default.
pub fn default_db(env: Env<'_>, uid: u32) -> PathBuf {
    if uid == 0 {
        PathBuf::from(SYSTEM_DB)
    } else {
        user_db(env, uid)
    }
}

/// The mode of a directory created to hold `socket`: 0755 for the system socket, which every
/// user may connect to, and 0700 otherwise, so that a per-user instance stays private.
pub fn socket_dir_mode(socket: &std::path::Path) -> u32 {
    if socket == std::path::Path::new(SYSTEM_SOCKET) {
        0o755
    } else {
        0o700
    }
}

/// Whether `parent`, the directory that holds a private directory of `uid`'s (see
/// [`check_private_dir`]), keeps that directory where it is: owned by root or by `uid`, and
/// writable by others only with the sticky bit (as `/tmp` is). In a directory others may
/// write without it, another user could rename the checked directory away and put another in
/// its place.
pub fn check_parent_dir(parent: &Path, facts: &DirFacts, uid: u32) -> Result<(), UnsafeDir> {
    let why = if facts.owner != 0 && facts.owner != uid {
        Some(format!(
            "the directory that holds it, {}, is owned by uid {}, not by you (uid {uid}) or root",
            parent.display(),
            facts.owner
        ))
    } else if facts.mode & 0o022 != 0 && facts.mode & 0o1000 == 0 {
        Some(format!(
            "the directory that holds it, {}, is writable by group or others without the sticky bit (mode {:04o})",
            parent.display(),
            facts.mode & 0o7777
        ))
    } else {
        None
    };
    UnsafeDir::check(parent, why, uid)
}

/// The sockets a client tries, in order: `$BERTH_SOCKET` alone when it is set (an explicit
/// choice is never second-guessed), else the system socket, then the per-user socket. Root
/// never looks in a `/tmp` fallback: its per-user socket is tried only under its own
/// `XDG_RUNTIME_DIR`.
pub fn client_candidates(env: Env<'_>, uid: u32) -> Vec<PathBuf> {
    if let Some(path) = env(SOCKET_ENV) {
        return vec![PathBuf::from(path)];
    }
    let mut out = vec![PathBuf::from(SYSTEM_SOCKET)];
    if uid == 0 && env("XDG_RUNTIME_DIR").is_none() {
        return out;
    }
    let user = user_socket(env, uid);
    if !out.contains(&user) {
        out.push(user);
    }
    out
}

/// The socket an on-demand daemon is started on when no candidate answers: `$BERTH_SOCKET`
/// when set, else this user's default socket.
pub fn autostart_socket(env: Env<'_>, uid: u32) -> PathBuf {
    match env(SOCKET_ENV) {
        Some(path) => PathBuf::from(path),
        None => default_socket(env, uid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn explicit_socket_wins_alone() {
        let env = env_of(&[("BERTH_SOCKET", "/x/s"), ("XDG_RUNTIME_DIR", "/run/user/5")]);
        assert_eq!(client_candidates(&env, 5), vec![PathBuf::from("/x/s")]);
        assert_eq!(autostart_socket(&env, 5), PathBuf::from("/x/s"));
    }

    #[test]
    fn system_then_user() {
        let env = env_of(&[("XDG_RUNTIME_DIR", "/run/user/5")]);
        assert_eq!(
            client_candidates(&env, 5),
            vec![
                PathBuf::from(SYSTEM_SOCKET),
                PathBuf::from("/run/user/5/berth/berth.sock")
            ]
        );
        assert_eq!(
            autostart_socket(&env, 5),
            PathBuf::from("/run/user/5/berth/berth.sock")
        );
        assert_eq!(autostart_socket(&env, 0), PathBuf::from(SYSTEM_SOCKET));
    }

    #[test]
    fn state_fallbacks() {
        let env = env_of(&[("HOME", "/home/a")]);
        assert_eq!(
            user_db(&env, 7),
            PathBuf::from("/home/a/.local/state/berth/berth.db")
        );
        let env = env_of(&[("XDG_STATE_HOME", "/s")]);
        assert_eq!(user_db(&env, 7), PathBuf::from("/s/berth/berth.db"));
        assert_eq!(default_db(&env, 0), PathBuf::from(SYSTEM_DB));
        let env = env_of(&[]);
        assert_eq!(
            user_socket(&env, 7),
            PathBuf::from("/tmp/berth-7/berth.sock")
        );
        let env = env_of(&[("TMPDIR", "/t")]);
        assert_eq!(user_db(&env, 7), PathBuf::from("/t/berth-7/berth.db"));
        assert_eq!(
            in_user_dir(&env, 7, Path::new("/t/berth-7/berth.sock")),
            Some(PathBuf::from("/t/berth-7"))
        );
        assert_eq!(in_user_dir(&env, 7, Path::new("/t/x/berth.sock")), None);
        // The runtime directory's `berth` directory is checked too: XDG_RUNTIME_DIR may be
        // set by hand to a directory others share.
        let env = env_of(&[("XDG_RUNTIME_DIR", "/tmp")]);
        assert_eq!(
            in_user_dir(&env, 7, &user_socket(&env, 7)),
            Some(PathBuf::from("/tmp/berth"))
        );
    }

    #[test]
    fn root_never_searches_a_tmp_fallback() {
        let env = env_of(&[("TMPDIR", "/t")]);
        assert_eq!(
            client_candidates(&env, 0),
            vec![PathBuf::from(SYSTEM_SOCKET)]
        );
        let env = env_of(&[("XDG_RUNTIME_DIR", "/run/user/0")]);
        assert_eq!(client_candidates(&env, 0).len(), 2);
    }

    #[test]
    fn the_parent_keeps_the_private_directory_in_place() {
        let parent = Path::new("/x");
        let facts = |owner, mode| DirFacts {
            is_dir: true,
            owner,
            mode,
        };
        assert!(
            check_parent_dir(parent, &facts(0, 0o1777), 7).is_ok(),
            "/tmp"
        );
        assert!(
            check_parent_dir(parent, &facts(7, 0o700), 7).is_ok(),
            "/run/user/7"
        );
        assert!(check_parent_dir(parent, &facts(0, 0o755), 7).is_ok());
        let open = check_parent_dir(parent, &facts(0, 0o777), 7).unwrap_err();
        assert!(open.why.contains("without the sticky bit"), "{open}");
        let theirs = check_parent_dir(parent, &facts(8, 0o700), 7).unwrap_err();
        assert!(theirs.why.contains("owned by uid 8"), "{theirs}");
    }

    #[test]
    fn only_a_private_directory_of_ones_own_is_trusted() {
        let dir = Path::new("/tmp/berth-7");
        let good = DirFacts {
            is_dir: true,
            owner: 7,
            mode: 0o700,
        };
        assert_eq!(check_private_dir(dir, &good, 7), Ok(()));
        assert_eq!(
            check_private_dir(
                dir,
                &DirFacts {
                    mode: 0o755,
                    ..good
                },
                7
            ),
            Ok(())
        );
        let squatted = DirFacts { owner: 8, ..good };
        let e = check_private_dir(dir, &squatted, 7).unwrap_err();
        assert!(e.to_string().contains("owned by uid 8"), "{e}");
        assert!(e.to_string().contains("XDG_RUNTIME_DIR"), "{e}");
        for mode in [0o777, 0o1777, 0o720, 0o702] {
            let open = DirFacts { mode, ..good };
            assert!(check_private_dir(dir, &open, 7).is_err(), "{mode:o}");
        }
        let link = DirFacts {
            is_dir: false,
            ..good
        };
        assert!(check_private_dir(dir, &link, 7).is_err());
    }
}
