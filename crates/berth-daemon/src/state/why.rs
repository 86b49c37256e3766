//! `why`: what the daemon knows about one port.

use berth_core::{ErrorKind, Protocol};
use berth_protocol::{PortReport, Response};

use super::{error, info, now_ms, Peer, Shared};
use crate::kernel::reserved_ports;

impl Shared {
    pub(super) fn why(&self, protocol: Protocol, port: u16, peer: &Peer) -> Response {
        if port == 0 {
            return error(
                ErrorKind::InvalidArgument,
                "port 0 is never reserved or bound; ask about a port from 1 to 65535".into(),
            );
        }
        let (reservation, in_pool) = {
            let table = self.table();
            let reservation = table.find_port(protocol, port).map(|r| {
                let mut shown = info(r, &peer.owner, peer.is_admin, now_ms());
                shown.bound = table.bound_list(r.token);
                shown
            });
            (reservation, table.pool().range().contains(port))
        };
        let kernel_reserved = reserved_ports::read(std::path::Path::new(reserved_ports::PATH))
            .map(|set| set.contains(port))
            .unwrap_or(false);
        Response::Why(Box::new(PortReport {
            protocol,
            port,
            reservation,
            sockets: Vec::new(),
            in_pool,
            in_ephemeral_range: crate::config::ephemeral_pool().range().contains(port),
            kernel_reserved,
        }))
    }
}
