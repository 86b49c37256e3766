//! Processes as `/proc` describes them: `stat`, `status`, `comm`, their namespaces and
//! capabilities, and small files read the way `/proc` needs.
//!
//! The parsers take the text (so they are tested, and fuzzed, without a process); the readers
//! read one process's file and parse it.
//!
//! A process's `stat`, `status` and `comm` hold its name, which it chose (its executable's
//! file name, `prctl(PR_SET_NAME)`) as any bytes and which the kernel cuts at 15 bytes,
//! possibly inside a character: they need not be UTF-8. They are read as text with
//! [`process_text`], whose invalid bytes become U+FFFD; the fields parsed are ASCII.

use std::borrow::Cow;
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `CAP_NET_BIND_SERVICE`, bit 10 of the capability sets.
pub const CAP_NET_BIND_SERVICE: u32 = 10;

/// Reads a small `/proc` file (at most a page) with one `read()`. Some `/proc` files answer
/// end-of-file to any read at an offset > 0, so the usual "probe, then read the rest" silently
/// truncates them.
pub fn read_file(path: impl AsRef<Path>) -> io::Result<String> {
    read_once(path.as_ref(), 4096)
}

/// [`read_file`] for a file that may exceed one page (`status` does): up to 64 KiB.
pub fn read_large_file(path: impl AsRef<Path>) -> io::Result<String> {
    read_once(path.as_ref(), 64 * 1024)
}

fn read_once(path: &Path, room: usize) -> io::Result<String> {
    String::from_utf8(read_bytes(path, room)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_bytes(path: &Path, room: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; room];
    let n = std::fs::File::open(path)?.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// A process's `/proc` file that holds its name (`stat`, `status`, `comm`) as text: bytes that
/// are not UTF-8 (in the name) become U+FFFD, so that they cannot hide the rest of the file.
pub fn process_text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// [`read_file`] or [`read_large_file`] (`room`) of a file that holds a process's name, through
/// [`process_text`].
fn read_process_file(path: &str, room: usize) -> io::Result<String> {
    read_bytes(Path::new(path), room).map(|bytes| process_text(&bytes).into_owned())
}

/// `/proc/PID/stat`.
pub fn stat(pid: u32) -> io::Result<String> {
    read_process_file(&format!("/proc/{pid}/stat"), 4096)
}

/// Field `n` (0 = state, 1 = ppid, …) after the command of `/proc/PID/stat`, whose command may
/// hold spaces and parentheses (so fields are counted from the last `)`).
pub fn field_after_comm(stat: &str, n: usize) -> Option<&str> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(n)
}

/// The command name in `/proc/PID/stat` — between the first `(` (after the pid's digits) and
/// the last `)` — without trailing whitespace: the name `/proc/PID/comm` holds, with no second
/// file to open.
pub fn comm_from_stat(stat: &str) -> Option<&str> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    stat.get(open + 1..close).map(str::trim_end)
}

/// Field 22 (`starttime`, in clock ticks since boot) of `/proc/PID/stat`: with the pid, it
/// tells a process from a later one that reuses its pid.
pub fn start_time_from_stat(stat: &str) -> Option<u64> {
    // After ")" comes field 3 (state); field 22 is 19 further on.
    field_after_comm(stat, 19)?.parse().ok()
}

/// Whether `/proc/PID/stat` is of a process that has exited and waits to be reaped (state `Z`,
/// a zombie) or is being torn down (`X`): only its pid is left, held until its parent reaps it.
/// A process whose main thread alone exited (`pthread_exit`) shows `Z` too while its other
/// threads run: it has not exited, and field 20 (`num_threads`) tells it apart.
pub fn exited_from_stat(stat: &str) -> bool {
    let threads = field_after_comm(stat, 17).and_then(|n| n.parse::<u32>().ok());
    matches!(field_after_comm(stat, 0), Some("Z" | "X" | "x")) && threads.is_none_or(|n| n <= 1)
}

/// Field 4 (`ppid`) of `/proc/PID/stat`.
pub fn parent_from_stat(stat: &str) -> Option<u32> {
    field_after_comm(stat, 1)?.parse().ok()
}

/// The value of line `key` (`"Groups:"`, `"CapEff:"`, …) of `/proc/PID/status`.
fn status_line<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key))
}

/// The real uid and gid (the first of `Uid:` and `Gid:`) of `/proc/PID/status`.
pub fn ids_from_status(status: &str) -> Option<(u32, u32)> {
    let first = |key: &str| {
        status_line(status, key)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    Some((first("Uid:")?, first("Gid:")?))
}

/// The supplementary groups (`Groups:`) of `/proc/PID/status`; empty when the line is missing.
pub fn groups_from_status(status: &str) -> Vec<u32> {
    status_line(status, "Groups:")
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The effective capability set (`CapEff:`, hexadecimal) of `/proc/PID/status`.
pub fn effective_caps_from_status(status: &str) -> Option<u64> {
    status_line(status, "CapEff:").and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The thread group — the process — of task `tid` (`Tgid:` of `/proc/TID/status`): `tid`
/// itself for a process, another pid for one of its threads; `None` when it has gone.
pub fn thread_group(tid: u32) -> Option<u32> {
    let status = read_file(format!("/proc/{tid}/status")).ok()?;
    status_line(&status, "Tgid:")?.trim().parse().ok()
}

/// The real uid and gid of process `pid`.
pub fn real_ids(pid: u32) -> Option<(u32, u32)> {
    ids_from_status(&read_process_file(&format!("/proc/{pid}/status"), 4096).ok()?)
}

/// The supplementary groups of process `pid`; empty when the process is gone.
pub fn supplementary_groups(pid: u32) -> Vec<u32> {
    read_process_file(&format!("/proc/{pid}/status"), 64 * 1024)
        .map(|status| groups_from_status(&status))
        .unwrap_or_default()
}

/// The owner (uid, gid) of process `pid`'s `/proc` directory; `None` when it has gone.
pub fn dir_owner(pid: u32) -> Option<(u32, u32)> {
    let meta = std::fs::metadata(format!("/proc/{pid}")).ok()?;
    Some((meta.uid(), meta.gid()))
}

/// The pid namespace process `pid` (or `"self"`) is in: the target of `/proc/PID/ns/pid`
/// (`pid:[4026531836]`).
pub fn pid_namespace(pid: &str) -> Option<OsString> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(std::path::PathBuf::into_os_string)
}

/// Whether process `pid` holds capability `cap` (a bit number, e.g. [`CAP_NET_BIND_SERVICE`])
/// in its effective set *over this process's user namespace*: its user namespace must be this
/// process's. `CapEff` in `/proc` is relative to the process's own user namespace — after
/// `unshare -Ur` it shows every capability, which the kernel honours only over namespaces that
/// user namespace owns — so a capability counts only in the caller's own user namespace. Read
/// when asked (a capability can be dropped at any time).
pub fn capable_here(pid: u32, cap: u32) -> bool {
    let userns = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    // This process's user namespace does not change: looked at once.
    static OURS: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    let ours = *OURS.get_or_init(|| userns("/proc/self/ns/user"));
    let theirs = userns(&format!("/proc/{pid}/ns/user"));
    theirs.is_some()
        && theirs == ours
        && read_process_file(&format!("/proc/{pid}/status"), 4096)
            .ok()
            .and_then(|status| effective_caps_from_status(&status))
            .is_some_and(|caps| caps & (1 << cap) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str =
        "4121 (a) b (c)) S 1 4121 4121 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";

    #[test]
    fn stat_fields_are_counted_after_awkward_command_names() {
        assert_eq!(start_time_from_stat(STAT), Some(987654));
        assert_eq!(parent_from_stat(STAT), Some(1));
        assert_eq!(field_after_comm(STAT, 0), Some("S"));
        assert_eq!(comm_from_stat(STAT), Some("a) b (c)"));
        assert_eq!(comm_from_stat("1 (x"), None);
        assert_eq!(comm_from_stat("1 )x("), None);
        assert_eq!(start_time_from_stat("garbage"), None);
        assert_eq!(start_time_from_stat("1 (x) S 1"), None, "too short");
        assert_eq!(parent_from_stat("1 (x"), None);
    }

    #[test]
    fn a_zombie_is_told_by_its_state() {
        assert!(!exited_from_stat(STAT));
        let zombie = "7 (a) Z) Z 1 7 7 0 -1 4228108 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        assert!(exited_from_stat(zombie));
        assert!(exited_from_stat("7 (sh) X 1 7 7 0 -1 4228108 0 0"));
        // Its main thread exited (`pthread_exit`), two threads still run: not exited.
        let leader_gone = "7 (a) Z 1 7 7 0 -1 4228108 0 0 0 0 0 0 0 0 20 0 2 0 987654 0 0";
        assert!(!exited_from_stat(leader_gone));
        assert!(
            !exited_from_stat("7 (Z) R 1"),
            "the command name is not the state"
        );
        assert!(!exited_from_stat("garbage"));
    }

    const STATUS: &str = "Name:\tbash\nUid:\t1000\t1001\t1002\t1003\nGid:\t100\t101\t102\t103\n\
                          Groups:\t4 24 27 \nCapEff:\t0000000000000400\n";

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(ids_from_status(STATUS), Some((1000, 100)));
        assert_eq!(groups_from_status(STATUS), vec![4, 24, 27]);
        assert_eq!(
            effective_caps_from_status(STATUS),
            Some(1 << CAP_NET_BIND_SERVICE)
        );
        assert_eq!(ids_from_status("Uid:\t1\n"), None, "no Gid line");
        assert!(groups_from_status("Groups:\n").is_empty());
        assert!(groups_from_status("").is_empty());
        assert_eq!(effective_caps_from_status("CapEff:\tzz\n"), None);
    }

    #[test]
    fn a_name_cut_inside_a_character_hides_nothing() {
        // The kernel keeps 15 bytes of the executable's name: "ä" × 10 becomes 7½ of them.
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("ä".repeat(10));
        std::os::unix::fs::symlink("/bin/sleep", &name).unwrap();
        let mut child = std::process::Command::new(&name).arg("10").spawn().unwrap();
        // spawn returns once the exec has happened: the child has its new name.
        let pid = child.id();
        let stat = stat(pid);
        let ids = real_ids(pid);
        let raw = std::fs::read(format!("/proc/{pid}/comm"));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            raw.unwrap(),
            [&b"\xc3\xa4".repeat(7)[..], b"\xc3\n"].concat()
        );
        let stat = stat.unwrap();
        assert!(start_time_from_stat(&stat).is_some_and(|t| t > 0));
        // The same name as /proc/PID/comm, its cut character shown as U+FFFD.
        assert_eq!(
            comm_from_stat(&stat),
            Some(format!("{}\u{fffd}", "ä".repeat(7)).as_str())
        );
        assert!(ids.is_some());
    }

    #[test]
    fn describes_this_process() {
        let me = std::process::id();
        let stat = stat(me).unwrap();
        assert!(start_time_from_stat(&stat).is_some_and(|t| t > 0));
        assert!(!comm_from_stat(&stat).unwrap().is_empty());
        assert_eq!(
            real_ids(me),
            Some((
                rustix::process::getuid().as_raw(),
                rustix::process::getgid().as_raw()
            ))
        );
        assert!(pid_namespace("self").is_some());
        assert_eq!(pid_namespace("self"), pid_namespace(&me.to_string()));
    }
}
