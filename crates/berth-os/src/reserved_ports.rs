//! Reading and writing `/proc/sys/net/ipv4/ip_local_reserved_ports` (the ports automatic
//! assignment never picks), with its traps:
//! - a read at an offset > 0 answers end-of-file, so the value is read with one large `read()`
//!   (a small probe read first would truncate it silently);
//! - a write replaces the whole list, but the kernel takes about 4 KiB per `write()` (the first
//!   chunk replaces, later ones add), so a long value is not replaced atomically: the value is
//!   kept short by writing coalesced ranges;
//! - writing an empty string makes no syscall: `"\n"` clears it.

use std::io::{self, Read, Write};
use std::path::Path;

use berth_core::PortSet;

/// Where the list lives, in the caller's network namespace.
pub const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Room for the longest value the kernel prints (every other port reserved: ~190 KB).
const MAX_LEN: usize = 512 * 1024;

/// The smallest read: room for a list of a few hundred entries.
const MIN_LEN: usize = 4096;

/// Reads the list.
pub fn read(path: &Path) -> io::Result<PortSet> {
    read_with(path, &mut Vec::new())
}

/// [`read`] into `buf`, kept by a caller that reads often: its length is the size of the next
/// read. The kernel allocates and zeroes a buffer as large as each read of a sysctl, so a read
/// sized for the longest possible list costs far more than the list; instead a read starts
/// with room for twice the last value, and one that fills its buffer (the value may be cut)
/// is made again, from the start, with twice the room.
pub fn read_with(path: &Path, buf: &mut Vec<u8>) -> io::Result<PortSet> {
    let mut room = buf.len().clamp(MIN_LEN, MAX_LEN);
    let n = loop {
        buf.resize(room, 0);
        let n = std::fs::File::open(path)?.read(buf)?;
        if n < room || room >= MAX_LEN {
            break n;
        }
        room = (room * 2).min(MAX_LEN);
    };
    let set = parse(buf.get(..n).unwrap_or_default())?;
    buf.truncate((n * 2).clamp(MIN_LEN, MAX_LEN));
    Ok(set)
}

/// The list from the bytes of the file (as [`write`] writes them, and the kernel prints them:
/// `"8080-8082,9000\n"`; `"\n"` is empty); `InvalidData` for anything else.
pub fn parse(value: &[u8]) -> io::Result<PortSet> {
    let text =
        std::str::from_utf8(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    PortSet::parse(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Adds `set` to the list, keeping what is there: written at a file offset above 0, where the
/// kernel adds each chunk to the list instead of replacing it — so a value of any length
/// leaves no gap, and an entry another tool writes meanwhile is not undone.
pub fn add(path: &Path, set: &PortSet) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut text = set.to_string();
    text.push('\n');
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all_at(text.as_bytes(), 1)
}

/// Replaces the list by `set` (the first chunk of a value replaces the list, later ones add:
/// only a value within one chunk replaces it at once).
pub fn write(path: &Path, set: &PortSet) -> io::Result<()> {
    let mut text = set.to_string();
    text.push('\n');
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(text.as_bytes())
}

/// Where sysctl configuration is read at boot (systemd-sysctl's and procps' places, most
/// specific first): an administrator's `net.ipv4.ip_local_reserved_ports` lives there.
pub const CONFIG_PLACES: [&str; 6] = [
    "/etc/sysctl.conf",
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
];

/// The ports the sysctl configuration in `places` (files, and directories of `*.conf` files)
/// lists in `net.ipv4.ip_local_reserved_ports` — every value together, whichever file would
/// win at boot: each is an administrator's wish. What cannot be read or parsed is skipped.
pub fn configured(places: &[impl AsRef<Path>]) -> PortSet {
    let mut set = PortSet::new();
    for place in places {
        let place = place.as_ref();
        let files: Vec<std::path::PathBuf> = match std::fs::read_dir(place) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect(),
            Err(_) => vec![place.to_owned()],
        };
        for file in files {
            // Bounded: a sysctl file is a few lines.
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            set = set.union(&configured_in(text.get(..64 * 1024).unwrap_or(&text)));
        }
    }
    set
}

/// The ports one sysctl configuration text lists in `net.ipv4.ip_local_reserved_ports`
/// (`key = value` lines; `#` and `;` comments; a leading `-` on the key; `/` or `.` between
/// the key's parts).
pub fn configured_in(text: &str) -> PortSet {
    let mut set = PortSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_start_matches('-').replace('/', ".");
        if key == "net.ipv4.ip_local_reserved_ports" {
            if let Ok(ports) = PortSet::parse(value.trim()) {
                set = set.union(&ports);
            }
        }
    }
    set
}

/// Whether this process may write the list (opening it for writing changes nothing); if not,
/// the error of opening it (`PermissionDenied`: neither root nor `CAP_NET_ADMIN` in its network
/// namespace).
pub fn check_writable() -> io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(PATH).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_entries_are_read_from_sysctl_files() {
        let text = "# a comment\nnet.ipv4.ip_local_port_range = 32768 60999\n\
                    -net/ipv4/ip_local_reserved_ports = 8080, 9000-9001\n; net.ipv4.ip_local_reserved_ports = 1\n";
        assert_eq!(configured_in(text).to_string(), "8080,9000-9001");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("50-a.conf"),
            "net.ipv4.ip_local_reserved_ports=1000\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("ignored.txt"),
            "net.ipv4.ip_local_reserved_ports=2000\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let single = dir.path().join("single");
        std::fs::write(&single, "net.ipv4.ip_local_reserved_ports=3000\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("missing");
        let set = configured(&[dir.path().to_owned(), single, missing]);
        assert_eq!(set.to_string(), "1000,3000");
    }

    #[test]
    fn a_value_longer_than_the_last_read_is_read_whole() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("list");
        // Every other port from 1,000: ~30,000 entries, ~180 KB of text.
        let long: Vec<String> = (1000u32..61000).step_by(2).map(|p| p.to_string()).collect();
        std::fs::write(&path, format!("{}\n", long.join(","))).unwrap_or_else(|e| panic!("{e}"));
        let mut buf = Vec::new();
        let set = read_with(&path, &mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(usize::try_from(set.len()).ok(), Some(long.len()));
        assert!(
            buf.len() > 180_000,
            "the next read has room for it: {}",
            buf.len()
        );
        // A short value afterwards: read whole, and the next read is small again.
        std::fs::write(&path, "2000-2001\n").unwrap_or_else(|e| panic!("{e}"));
        let set = read_with(&path, &mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.to_string(), "2000-2001");
        assert_eq!(buf.len(), MIN_LEN);
    }

    #[test]
    fn the_list_is_written_coalesced_and_read_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("list");
        std::fs::write(&path, "").unwrap_or_else(|e| panic!("{e}"));
        let set = PortSet::parse("8080,8081,8082,9000\n").unwrap_or_else(|e| panic!("{e}"));
        write(&path, &set).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, "8080-8082,9000\n");
        assert_eq!(read(&path).unwrap_or_else(|e| panic!("{e}")), set);
        // The kernel's empty list is a newline, read back as nothing.
        std::fs::write(&path, "\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(read(&path).unwrap_or_else(|e| panic!("{e}")).is_empty());
        // What is not a port list is refused, not half read.
        std::fs::write(&path, "8080,x\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read(&path).map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::InvalidData)
        );
    }
}
