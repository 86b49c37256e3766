//! `berth-bench scale`: many clients at once.
//!
//! 1. `--clients` clients connect and together acquire `--reservations` unheld one-port
//!    reservations; the daemon's resident memory (`VmRSS`, and its peak `VmHWM`, from
//!    `/proc/<pid>/status`) is read at each step.
//! 2. With them all connected, a paced, open-loop load of `--rate` requests per second for
//!    `--secs`: a pacing thread schedules request k at `start + k / rate` and hands it to client
//!    `k mod N`, which releases its oldest reservation or acquires a new one, in turn. Latency
//!    is reported from the scheduled time (so a client or daemon that falls behind shows up in
//!    the figures rather than slowing the offered load) and from the send.
//! 3. They all leave; then `--cycles` times, `--clients` new clients connect, acquire
//!    `--reservations` and leave, and the memory is read after each cycle.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth::{Client, Protocol, Reservation};

use crate::args::ScaleArgs;
use crate::many::{acquire_spread, connect_all, runtime, wait_settled};
use crate::servers::{self, cpu_time_us, Daemon};
use crate::table::{memory_kib, mib, Memory, Summary, Table};

/// One paced request's times, in nanoseconds: from the schedule, from the send.
type Timing = (u64, u64);

/// Runs the mode.
pub fn run(args: &ScaleArgs) -> Result<()> {
    let common = &args.common;
    if let Some(cpu) = common.client_cpu {
        servers::pin_self(cpu).with_context(|| format!("cannot pin this process to CPU {cpu}"))?;
    }
    let berth_bin = common
        .berth_bin
        .clone()
        .context("name the berth binary with --berth-bin or BERTH_BIN")?;
    let dir = tempfile::Builder::new()
        .prefix("berth-bench.")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let daemon = Daemon::start(&berth_bin, dir.path(), common, &[])?;
    let pid = daemon.pid();
    println!(
        "scale mode: {} clients, {} reservations (unheld, one port each), paced {} requests/s for {} s, {} cycles; clients {}, daemon {}; daemon pid {pid}",
        args.clients,
        args.reservations,
        args.rate,
        args.secs,
        args.cycles,
        pin(common.client_cpu),
        pin(common.server_cpu),
    );
    let mut memory: Vec<(String, Memory)> = Vec::new();
    let mut note = |what: String| -> Result<()> {
        memory.push((what, memory_kib(pid)?));
        Ok(())
    };
    note("started, no client".into())?;
    let rt = runtime()?;
    let mut table = Table::default();
    rt.block_on(async {
        let admin = Client::connect_to(&daemon.socket).await?;
        let clients = connect_all(&daemon.socket, args.clients).await?;
        note(format!("{} clients connected", args.clients))?;
        let held = acquire_spread(&clients, args.reservations, false).await?;
        wait_settled(&admin, args.reservations, args.clients + 1).await?;
        note(format!(
            "{} clients holding {} reservations",
            args.clients, args.reservations
        ))?;

        let cpu_before = cpu_time_us(pid)?;
        let (timings, wall, held) = paced(&clients, held, args.rate, args.secs).await?;
        let cpu = cpu_time_us(pid)?.saturating_sub(cpu_before);
        let (mut from_schedule, mut from_send): (Vec<u64>, Vec<u64>) = timings.into_iter().unzip();
        let label = format!("paced {} req/s, from schedule", args.rate);
        table.add(
            label,
            args.clients,
            Summary::of(&mut from_schedule, wall, Some(cpu)),
        );
        table.add(
            "same, from send",
            args.clients,
            Summary::of(&mut from_send, wall, Some(cpu)),
        );
        note("after the paced load".into())?;
        drop(held);
        drop(clients);
        wait_settled(&admin, 0, 1).await?;
        note("all clients left".into())?;
        for cycle in 1..=args.cycles {
            let clients = connect_all(&daemon.socket, args.clients).await?;
            let held = acquire_spread(&clients, args.reservations, false).await?;
            wait_settled(&admin, args.reservations, args.clients + 1).await?;
            if cycle == 1 || cycle == args.cycles {
                note(format!(
                    "cycle {cycle}: {} clients holding {}",
                    args.clients, args.reservations
                ))?;
            }
            drop(held);
            drop(clients);
            wait_settled(&admin, 0, 1).await?;
            note(format!("cycle {cycle}: all left"))?;
        }
        anyhow::Ok(())
    })?;
    println!();
    table.print();
    println!("| daemon memory | VmRSS | VmHWM (peak) | of VmRSS: anonymous | files, shared |\n|---|---:|---:|---:|---:|");
    for (what, m) in &memory {
        println!(
            "| {what} | {} | {} | {} | {} |",
            mib(m.rss),
            mib(m.hwm),
            mib(m.anon),
            mib(m.file)
        );
    }
    let peak = memory.iter().map(|(_, m)| m.hwm).max().unwrap_or(0);
    println!(
        "\npeak resident memory {} (target < 64 MiB): {}",
        mib(peak),
        if peak < 64 * 1024 { "met" } else { "missed" }
    );
    daemon.stop()
}

fn pin(cpu: Option<usize>) -> String {
    cpu.map_or("unpinned".to_owned(), |c| format!("CPU {c}"))
}

/// The paced load: returns every request's timings, the wall time, and the reservations.
async fn paced(
    clients: &[Client],
    held: Vec<VecDeque<Reservation>>,
    rate: f64,
    secs: f64,
) -> Result<(Vec<Timing>, Duration, Vec<VecDeque<Reservation>>)> {
    let n = clients.len();
    let total = (rate * secs).max(1.0) as u64;
    let mut senders = Vec::with_capacity(n);
    let mut workers = Vec::with_capacity(n);
    for (client, mine) in clients.iter().zip(held) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        senders.push(tx);
        workers.push(worker(client, mine, rx));
    }
    let start = Instant::now() + Duration::from_millis(20);
    let pacer = std::thread::spawn(move || {
        for k in 0..total {
            let at = start + Duration::from_secs_f64(k as f64 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let _ = senders[(k % n as u64) as usize].send(at);
        }
    });
    let results = futures_util::future::join_all(workers).await;
    let wall = start.elapsed();
    let _ = pacer.join();
    let mut timings = Vec::with_capacity(total as usize);
    let mut held = Vec::with_capacity(n);
    for result in results {
        let (mine, times) = result?;
        held.push(mine);
        timings.extend(times);
    }
    anyhow::ensure!(!timings.is_empty(), "no paced request completed");
    Ok((timings, wall, held))
}

/// One client of the paced load: for each scheduled time, release its oldest reservation or
/// acquire a new one, taking turns.
async fn worker(
    client: &Client,
    mut mine: VecDeque<Reservation>,
    mut schedule: tokio::sync::mpsc::UnboundedReceiver<Instant>,
) -> Result<(VecDeque<Reservation>, Vec<Timing>)> {
    let mut times = Vec::new();
    let mut release = true;
    while let Some(at) = schedule.recv().await {
        let sent = Instant::now();
        let oldest = if release { mine.pop_front() } else { None };
        match oldest {
            Some(block) => block.release().await.context("releasing")?,
            None => mine.push_back(
                client
                    .acquire_unheld(Protocol::Tcp, 0, 1)
                    .await
                    .context("acquiring")?,
            ),
        }
        let done = Instant::now();
        times.push((
            done.duration_since(at).as_nanos() as u64,
            done.duration_since(sent).as_nanos() as u64,
        ));
        release = !release;
    }
    Ok((mine, times))
}
