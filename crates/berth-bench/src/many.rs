//! Many `berth::Client`s on one current-thread runtime (the scale and reclaim modes):
//! connecting them, spreading reservations over them, waiting for the daemon to settle.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth::{Client, Protocol, Reservation};
use futures_util::StreamExt;

/// Connections opened at once.
const CONNECTING_AT_ONCE: usize = 64;

/// `n` clients of the daemon on `socket`.
pub async fn connect_all(socket: &Path, n: u32) -> Result<Vec<Client>> {
    let mut connecting = futures_util::stream::iter(0..n)
        .map(|_| Client::connect_to(socket))
        .buffered(CONNECTING_AT_ONCE);
    let mut clients = Vec::with_capacity(n as usize);
    while let Some(client) = connecting.next().await {
        clients.push(client.with_context(|| format!("connecting client {}", clients.len()))?);
    }
    Ok(clients)
}

/// `total` one-port TCP reservations spread evenly over `clients` (held or not), each client
/// acquiring its share one after the other, all clients at once.
pub async fn acquire_spread(
    clients: &[Client],
    total: u32,
    hold: bool,
) -> Result<Vec<VecDeque<Reservation>>> {
    let n = clients.len().max(1) as u32;
    let shares = clients.iter().enumerate().map(|(i, client)| {
        let share = total / n + u32::from((i as u32) < total % n);
        async move {
            let mut mine = VecDeque::with_capacity(share as usize);
            for _ in 0..share {
                let block = if hold {
                    client.acquire(Protocol::Tcp, 0, 1).await
                } else {
                    client.acquire_unheld(Protocol::Tcp, 0, 1).await
                };
                mine.push_back(block.context("acquiring")?);
            }
            anyhow::Ok(mine)
        }
    });
    futures_util::future::join_all(shares)
        .await
        .into_iter()
        .collect()
}

/// Waits until the daemon has `reservations` live reservations and at most `sessions`
/// connections (the asking one included), as an ordinary client sees them.
pub async fn wait_settled(admin: &Client, reservations: u32, sessions: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = admin.status().await.context("status")?;
        if status.reservations == reservations && status.sessions <= sessions {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon did not settle within 60 s: {} reservations (want {reservations}), {} sessions (want ≤ {sessions})",
                status.reservations,
                status.sessions
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A current-thread runtime with I/O and timers (and a blocking pool for `spawn_blocking`).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build a tokio runtime")
}
