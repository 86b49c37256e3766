//! Reading and writing `/proc/sys/net/ipv4/ip_local_reserved_ports`, with its traps:
//! - a read at an offset > 0 answers end-of-file, so the value is read with one large `read()`
//!   (a small probe read first would truncate it silently);
//! - a write replaces the whole list, but the kernel takes about 4 KiB per `write()` (the first
//!   chunk replaces, later ones add), so a long value is not replaced atomically: the value is
//!   kept short by writing coalesced ranges;
//! - writing an empty string makes no syscall: `"\n"` clears it.

use std::io::{self, Read, Write};
use std::path::Path;

use berth_core::PortSet;

/// Where the list lives, in the daemon's network namespace.
pub(crate) const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Room for the longest value the kernel prints (every other port reserved: ~190 KB).
const MAX_LEN: usize = 512 * 1024;

/// Reads the list.
pub(crate) fn read(path: &Path) -> io::Result<PortSet> {
    read_with(path, &mut Vec::new())
}

/// [`read`] into `buf`, kept by a caller that reads often (its room is reused).
pub(crate) fn read_with(path: &Path, buf: &mut Vec<u8>) -> io::Result<PortSet> {
    if buf.len() < MAX_LEN {
        buf.resize(MAX_LEN, 0);
    }
    let n = std::fs::File::open(path)?.read(buf)?;
    let text = std::str::from_utf8(buf.get(..n).unwrap_or_default())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    PortSet::parse(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Replaces the list by `set`.
pub(crate) fn write(path: &Path, set: &PortSet) -> io::Result<()> {
    let mut text = set.to_string();
    text.push('\n');
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(text.as_bytes())
}

/// Whether the daemon may write the list (opening it for writing changes nothing).
pub(crate) fn check_writable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(PATH)
        .map(drop)
        .map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => format!(
                "the daemon may not write {PATH} ({e}): it needs root or CAP_NET_ADMIN in its network namespace"
            ),
            _ => format!("cannot open {PATH} for writing ({e})"),
        })
}
