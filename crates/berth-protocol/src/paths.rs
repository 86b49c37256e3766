//! Where a daemon listens and keeps its data (SPEC §5), and where clients look for it.
//!
//! The rules are part of the contract between daemon and clients, so they live here. They are
//! pure functions of the environment and the user id, which callers pass in.

use std::ffi::OsString;
use std::path::PathBuf;

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

/// The per-user instance's socket: `$XDG_RUNTIME_DIR/berth/berth.sock`, falling back to
/// `/tmp/berth-UID/berth.sock` when the session has no runtime directory.
pub fn user_socket(env: Env<'_>, uid: u32) -> PathBuf {
    match env("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("berth").join("berth.sock"),
        None => std::env::temp_dir()
            .join(format!("berth-{uid}"))
            .join("berth.sock"),
    }
}

/// The per-user instance's database: `$XDG_STATE_HOME/berth/berth.db`, falling back to
/// `$HOME/.local/state/berth/berth.db`, then `/tmp/berth-UID/berth.db`.
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
    std::env::temp_dir()
        .join(format!("berth-{uid}"))
        .join("berth.db")
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

/// The sockets a client tries, in order: `$BERTH_SOCKET` alone when it is set (an explicit
/// choice is never second-guessed), else the system socket, then the per-user socket.
pub fn client_candidates(env: Env<'_>, uid: u32) -> Vec<PathBuf> {
    if let Some(path) = env(SOCKET_ENV) {
        return vec![PathBuf::from(path)];
    }
    let mut out = vec![PathBuf::from(SYSTEM_SOCKET)];
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
        assert!(user_socket(&env, 7).ends_with("berth-7/berth.sock"));
    }
}
