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
//!    The same paced load on as many persistent connections to the echo server (one round
//!    trip with an acquire's frame sizes per request) is measured first, as the baseline.
//! 3. They all leave; then `--cycles` times, `--clients` new clients connect, acquire
//!    `--reservations` and leave, and the memory is read after each cycle.
//!
//! The memory is also read `--settle-secs` after the clients came to hold their reservations
//! and after the last cycle, with nothing happening meanwhile: the steady state, once the
//! daemon has given back what busy sessions and a wave of connections used.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth::{Client, Protocol, Reservation};

use crate::args::ScaleArgs;
use crate::echo::{self, EchoClient};
use crate::load::{frame_sizes, Sizes};
use crate::many::{acquire_spread, connect_all, runtime, wait_settled};
use crate::servers::{self, cpu_time_us, Daemon, EchoServer};
use crate::table::{memory_kib, mib, ratio, Memory, Summary, Table};

/// One paced request's times, in nanoseconds: from the schedule, from the send.
type Timing = (u64, u64);

/// Runs the mode.
pub fn run(args: &ScaleArgs) -> Result<()> {
    let common = &args.common;
    let berth_bin = servers::prepare(common)?;
    let dir = servers::run_dir()?;
    let daemon = Daemon::start(&berth_bin, dir.paths(), common, &[])?;
    let pid = daemon.pid();
    let echo_server = EchoServer::start(dir.runtime(), common.server_cpu)?;
    let sizes = frame_sizes(&daemon.socket)?;
    println!(
        "scale mode: {} clients, {} reservations (unheld, one port each), paced {} requests/s for {} s, {} cycles; clients {}, daemon and echo server {}; daemon pid {pid}, echo pid {}",
        args.clients,
        args.reservations,
        args.rate,
        args.secs,
        args.cycles,
        pin(common.client_cpu),
        pin(common.server_cpu),
        echo_server.pid(),
    );
    let mut memory: Vec<(String, Memory)> = Vec::new();
    let mut note = |what: String| -> Result<()> {
        memory.push((what, memory_kib(pid)?));
        Ok(())
    };
    note("started, no client".into())?;
    // A measurement's settling time, not a wait for readiness: nothing is waited for but time.
    let settle = Duration::try_from_secs_f64(args.settle_secs).context("--settle-secs")?;
    let rt = runtime()?;
    let mut table = Table::default();
    rt.block_on(async {
        let echo_pid = echo_server.pid();
        let cpu_before = cpu_time_us(echo_pid)?;
        let (timings, wall) = paced_echo(
            &echo_server.target.socket,
            args.clients,
            &sizes,
            args.rate,
            args.secs,
        )
        .await?;
        let cpu = cpu_time_us(echo_pid)?.saturating_sub(cpu_before);
        let (mut from_schedule, mut from_send): (Vec<u64>, Vec<u64>) = timings.into_iter().unzip();
        table.add(
            format!("echo baseline: paced {} req/s, from schedule", args.rate),
            args.clients,
            Summary::of(&mut from_schedule, wall, Some(cpu)),
        );
        table.add(
            "echo baseline: same, from send",
            args.clients,
            Summary::of(&mut from_send, wall, Some(cpu)),
        );
        let admin = Client::connect_to(&daemon.socket).await?;
        let clients = connect_all(&daemon.socket, args.clients).await?;
        note(format!("{} clients connected", args.clients))?;
        let held = acquire_spread(&clients, args.reservations, false).await?;
        wait_settled(&admin, args.reservations, args.clients + 1).await?;
        note(format!(
            "{} clients holding {} reservations",
            args.clients, args.reservations
        ))?;
        if settle > Duration::ZERO {
            tokio::time::sleep(settle).await;
            note(format!("same, {} s later, all quiet", args.settle_secs))?;
        }

        let cpu_before = cpu_time_us(pid)?;
        let (timings, wall, held) = paced(&clients, held, args.rate, args.secs).await?;
        let cpu = cpu_time_us(pid)?.saturating_sub(cpu_before);
        let (mut from_schedule, mut from_send): (Vec<u64>, Vec<u64>) = timings.into_iter().unzip();
        let label = format!("berth: paced {} req/s, from schedule", args.rate);
        table.add(
            label,
            args.clients,
            Summary::of(&mut from_schedule, wall, Some(cpu)),
        );
        table.add(
            "berth: same, from send",
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
        if args.cycles > 0 && settle > Duration::ZERO {
            tokio::time::sleep(settle).await;
            note(format!("same, {} s later", args.settle_secs))?;
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
    let base = format!("echo baseline: paced {} req/s, from schedule", args.rate);
    let ours = format!("berth: paced {} req/s, from schedule", args.rate);
    if let (Some(b), Some(e)) = (
        table.get(&ours, args.clients),
        table.get(&base, args.clients),
    ) {
        println!(
            "paced load: berth p99 {:.1} µs from schedule (target < 1000 µs): {}; berth / echo p99 {}, p50 {}, server CPU {}\n",
            b.p99_us,
            if b.p99_us < 1000.0 { "met" } else { "missed" },
            ratio(b.p99_us, e.p99_us),
            ratio(b.p50_us, e.p50_us),
            match (b.cpu_us, e.cpu_us) {
                (Some(x), Some(y)) => ratio(x, y),
                _ => "n/a".to_owned(),
            }
        );
    }
    let peak = memory.iter().map(|(_, m)| m.hwm).max().unwrap_or(0);
    println!(
        "\npeak resident memory {} (target < 64 MiB): {}",
        mib(peak),
        if peak < 64 * 1024 { "met" } else { "missed" }
    );
    // BENCHMARKS.md's targets bound the anonymous part as well (the daemon's own heap, not the mapped binary).
    let anon = memory.iter().map(|(_, m)| m.anon).max().unwrap_or(0);
    println!(
        "largest anonymous part of the resident memory {} (target < 8 MiB): {}",
        mib(anon),
        if anon < 8 * 1024 { "met" } else { "missed" }
    );
    drop(echo_server);
    daemon.stop()
}

fn pin(cpu: Option<usize>) -> String {
    cpu.map_or("unpinned".to_owned(), |c| format!("CPU {c}"))
}

/// Schedules `rate × secs` requests, round robin over `n` receivers, from a thread of its
/// own (`std::thread::sleep` until each request's time, late ones at once). Returns the
/// receivers, the pacing thread and the start.
fn pacer(
    n: usize,
    rate: f64,
    secs: f64,
) -> (
    Vec<tokio::sync::mpsc::UnboundedReceiver<Instant>>,
    std::thread::JoinHandle<()>,
    Instant,
) {
    let total = (rate * secs).max(1.0) as u64;
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n.max(1))
        .map(|_| tokio::sync::mpsc::unbounded_channel::<Instant>())
        .unzip();
    let start = Instant::now() + Duration::from_millis(20);
    let thread = std::thread::spawn(move || {
        for k in 0..total {
            let at = start + Duration::from_secs_f64(k as f64 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let _ = senders[(k % senders.len() as u64) as usize].send(at);
        }
    });
    (receivers, thread, start)
}

/// The paced load: returns every request's timings, the wall time, and the reservations.
async fn paced(
    clients: &[Client],
    held: Vec<VecDeque<Reservation>>,
    rate: f64,
    secs: f64,
) -> Result<(Vec<Timing>, Duration, Vec<VecDeque<Reservation>>)> {
    let (receivers, pacer, start) = pacer(clients.len(), rate, secs);
    let workers = clients
        .iter()
        .zip(held)
        .zip(receivers)
        .map(|((client, mine), rx)| worker(client, mine, rx));
    let results = futures_util::future::join_all(workers).await;
    let wall = start.elapsed();
    let _ = pacer.join();
    let mut timings = Vec::new();
    let mut held = Vec::with_capacity(clients.len());
    for result in results {
        let (mine, times) = result?;
        held.push(mine);
        timings.extend(times);
    }
    anyhow::ensure!(!timings.is_empty(), "no paced request completed");
    Ok((timings, wall, held))
}

/// The same paced load on `n` persistent echo connections: each request one round trip with
/// the frame sizes of an acquire (the baseline).
async fn paced_echo(
    socket: &std::path::Path,
    n: u32,
    sizes: &Sizes,
    rate: f64,
    secs: f64,
) -> Result<(Vec<Timing>, Duration)> {
    let mut clients = Vec::with_capacity(n as usize);
    for _ in 0..n {
        clients.push(EchoClient::connect(socket).await?);
    }
    let frame = echo::request_frame(sizes.acquire, sizes.acquired);
    let (receivers, pacer, start) = pacer(clients.len(), rate, secs);
    let workers = clients
        .into_iter()
        .zip(receivers)
        .map(|(mut client, mut rx)| {
            let frame = &frame;
            async move {
                let mut times = Vec::new();
                while let Some(at) = rx.recv().await {
                    let sent = Instant::now();
                    client.round_trip(frame).await?;
                    let done = Instant::now();
                    times.push((
                        done.duration_since(at).as_nanos() as u64,
                        done.duration_since(sent).as_nanos() as u64,
                    ));
                }
                anyhow::Ok(times)
            }
        });
    let results = futures_util::future::join_all(workers).await;
    let wall = start.elapsed();
    let _ = pacer.join();
    let mut timings = Vec::new();
    for result in results {
        timings.extend(result?);
    }
    anyhow::ensure!(!timings.is_empty(), "no paced echo request completed");
    Ok((timings, wall))
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
