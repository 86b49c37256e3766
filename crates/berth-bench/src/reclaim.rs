//! `berth-bench reclaim`: the time from a daemon restart until every client's runtime
//! reservations are back.
//!
//! `--clients` clients (one process, one thread) hold `--reservations` held one-port
//! reservations. Then, `--restarts` times: the daemon is stopped (SIGTERM, a clean stop that
//! keeps the runtime journal; `--crash`: SIGKILL), a new one is started on the same socket and
//! database, and once the old daemon has exited each client asks the daemon something cheap
//! until it is answered (by the new daemon, the only one left). A client's connection task serves calls only after it has reconnected and every
//! `Reclaim` of its reservations has been answered (`berth/src/connection/reconnect.rs`), so
//! that answer marks its reservations as re-claimed (plus one round trip). Afterwards no
//! reservation may be lost, and the new daemon must list all of them.
//!
//! The baseline is the same clients connecting and acquiring the same reservations afresh on
//! a running daemon (the set-up before the first restart).
//!
//! The stop and the start run on the blocking pool, so the clients notice the old daemon's
//! end and start reconnecting (with their backoff: 10 ms, doubling, at most 250 ms) as they
//! would on their own.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth::{Client, ErrorKind, Protocol, Reservation};

use crate::args::{Common, ReclaimArgs};
use crate::many::{acquire_spread, connect_all, runtime};
use crate::servers::{self, cpu_time_us, Daemon};
use crate::table::{Summary, Table};

/// Runs the mode.
pub fn run(args: &ReclaimArgs) -> Result<()> {
    let common = args.common.clone();
    let berth_bin = servers::prepare(&common)?;
    let dir = servers::run_dir()?;
    let dir_paths = dir.paths().clone();
    let daemon = Daemon::start(&berth_bin, &dir_paths, &common, &[])?;
    println!(
        "reclaim mode: {} clients holding {} held reservations (one TCP port each), {} restarts by {}; clients {}, daemon {}",
        args.clients,
        args.reservations,
        args.restarts,
        if args.crash { "SIGKILL" } else { "SIGTERM" },
        pin(common.client_cpu),
        pin(common.server_cpu),
    );
    let rt = runtime()?;
    let mut table = Table::default();
    let mut lines = Vec::new();
    rt.block_on(async {
        let socket = daemon.socket.clone();
        let t = Instant::now();
        let clients = connect_all(&socket, args.clients).await?;
        let held = acquire_spread(&clients, args.reservations, true).await?;
        let first = t.elapsed();
        lines.push(format!(
            "baseline: {} fresh clients connect and acquire {} held reservations on a running daemon in {:.1} ms",
            args.clients,
            args.reservations,
            ms(first)
        ));
        let mut daemon = Some(daemon);
        for round in 1..=args.restarts {
            let old = daemon.take().context("no daemon")?;
            let restart = Restart {
                berth: berth_bin.clone(),
                dirs: dir_paths.clone(),
                common: common.clone(),
                crash: args.crash,
            };
            let (new, timing) = restart_and_wait(old, restart, &clients, &held, args).await?;
            lines.push(format!(
                "restart {round} (new daemon pid {}): stop {:.1} ms; start → ready {:.1} ms; start → last client re-claimed {:.1} ms (ready → last {:.1} ms); new daemon CPU {:.1} ms ({:.1} µs per reservation, start-up included)",
                new.pid(),
                ms(timing.stopped),
                ms(timing.ready),
                ms(timing.last),
                ms(timing.last.saturating_sub(timing.ready)),
                timing.cpu_us as f64 / 1e3,
                timing.cpu_us as f64 / f64::from(args.reservations.max(1)),
            ));
            let mut per_client = timing.per_client;
            table.add(
                format!("restart {round}: start → client re-claimed"),
                args.clients,
                Summary::of(&mut per_client, timing.last, None),
            );
            daemon = Some(new);
        }
        drop(held);
        drop(clients);
        if let Some(daemon) = daemon {
            daemon.stop()?;
        }
        anyhow::Ok(())
    })?;
    println!();
    table.print();
    for line in lines {
        println!("{line}");
    }
    println!("(the req/s column is clients re-claimed per second of the whole restart)");
    Ok(())
}

fn pin(cpu: Option<usize>) -> String {
    cpu.map_or("unpinned".to_owned(), |c| format!("CPU {c}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What a restart needs to start the next daemon.
struct Restart {
    berth: PathBuf,
    dirs: servers::RunPaths,
    common: Common,
    crash: bool,
}

/// One restart's times.
struct Timing {
    /// From the signal to the old daemon's exit.
    stopped: Duration,
    /// From starting the new daemon to its "ready".
    ready: Duration,
    /// From starting the new daemon to the last client's re-claim.
    last: Duration,
    /// Each client's, from the start, in nanoseconds.
    per_client: Vec<u64>,
    /// The new daemon's CPU time until the last re-claim, µs.
    cpu_us: u64,
}

async fn restart_and_wait(
    old: Daemon,
    restart: Restart,
    clients: &[Client],
    held: &[VecDeque<Reservation>],
    args: &ReclaimArgs,
) -> Result<(Daemon, Timing)> {
    let t0 = Instant::now();
    let crash = restart.crash;
    tokio::task::spawn_blocking(move || if crash { old.stop() } else { old.terminate() })
        .await
        .context("the stopping thread")??;
    let stopped = t0.elapsed();
    let start = Instant::now();
    let new = tokio::task::spawn_blocking(move || {
        Daemon::start(&restart.berth, &restart.dirs, &restart.common, &[])
    })
    .await
    .context("the starting thread")??;
    let ready = start.elapsed();
    let new_pid = new.pid();
    let limit = Duration::from_secs_f64(args.max_secs);
    // The cheapest request with a definite answer: a lookup of a persistent reservation
    // nobody made (NotFound). `status` would not do: it counts the daemon's open descriptors
    // (`/proc/self/fd`), which with 1,000 clients costs more than the re-claims measured.
    // Asked only once the old daemon has exited, any answer comes from the new one.
    let waits = clients.iter().map(|client| async move {
        loop {
            match client.lookup_persistent(Protocol::Tcp, 1, 1).await {
                Ok(_) => return Ok(start.elapsed().as_nanos() as u64),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Ok(start.elapsed().as_nanos() as u64)
                }
                Err(_) => {}
            }
            if start.elapsed() > limit {
                bail!("a client did not re-claim within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let per_client = futures_util::future::join_all(waits)
        .await
        .into_iter()
        .collect::<Result<Vec<u64>>>()?;
    let last = start.elapsed();
    let cpu_us = cpu_time_us(new_pid)?;
    let lost = held.iter().flatten().filter(|r| r.is_lost()).count();
    anyhow::ensure!(lost == 0, "{lost} reservations were lost in the restart");
    let admin = Client::connect_to(&new.socket).await?;
    anyhow::ensure!(admin.status().await?.pid == new_pid, "not the new daemon");
    let listed = admin.list().await?.len();
    let want = held.iter().map(VecDeque::len).sum::<usize>();
    anyhow::ensure!(
        listed == want,
        "the new daemon lists {listed} reservations, the clients hold {want}"
    );
    Ok((
        new,
        Timing {
            stopped,
            ready,
            last,
            per_client,
            cpu_us,
        },
    ))
}
