//! `/etc/services`: the port a well-known service name stands for (`berth persistent add
//! --name ipp` with no `--start`).

use std::path::Path;

use berth::Protocol;

/// The port of service `name` (or an alias) for `protocol` in the services file `file`.
pub fn port_in(file: &Path, name: &str, protocol: Protocol) -> Option<u16> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let service = fields.next()?;
        let (port, proto) = fields.next()?.split_once('/')?;
        let named = service == name || fields.any(|alias| alias == name);
        (named && proto == protocol.as_str())
            .then(|| port.parse().ok())
            .flatten()
    })
}

/// [`port_in`] the system's `/etc/services`.
pub fn port_of(name: &str, protocol: Protocol) -> Option<u16> {
    port_in(Path::new("/etc/services"), name, protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_by_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services");
        std::fs::write(
            &file,
            "# comment\nipp\t\t631/tcp\t\t\t\t# Internet Printing Protocol\nhttp 80/tcp www # WWW\ndomain 53/udp\n",
        )
        .unwrap();
        assert_eq!(port_in(&file, "ipp", Protocol::Tcp), Some(631));
        assert_eq!(port_in(&file, "www", Protocol::Tcp), Some(80));
        assert_eq!(port_in(&file, "domain", Protocol::Udp), Some(53));
        assert_eq!(port_in(&file, "domain", Protocol::Tcp), None);
        assert_eq!(port_in(&file, "comment", Protocol::Tcp), None);
        assert_eq!(port_in(&file, "Printing", Protocol::Tcp), None);
    }
}
