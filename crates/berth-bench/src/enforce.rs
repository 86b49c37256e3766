//! `berth-bench enforce`: what enforce mode costs the daemon's acquire and associate paths.
//!
//! One daemon and one run, in alternating phases: **off** (no cgroup owns a reservation, so
//! the daemon has no programs attached) and **on** (one reservation owned by the cgroup
//! `holder/`, so the programs are attached at the subtree). The daemon lives in `daemon/` and
//! this process — every client thread — in `clients/`, both below the attach point in both
//! phases, so that the only difference is the programs, and in the on phase they run on every
//! bind the measured requests make: the daemon's test bind (unheld acquire), its hold socket
//! (held), the client's socket it binds (associate), and their releases. The daemon's own
//! cgroup is exempt (the programs look it up only for a port another cgroup owns).
//!
//! Each phase measures, with one client: two echo round trips (a control the programs do not
//! touch: it shows the machine's drift between phases), acquire+release held and unheld, and
//! associate. The figures of each are medians over the rounds; the ratio is on / off.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use berth::{AcquireOptions, Client, Enforce, Protocol, Token};

use crate::args::EnforceArgs;
use crate::load::{self, Kind, Plan};
use crate::many;
use crate::servers::{self, Daemon, EchoServer};
use crate::table::{ratio, Summary, Table};

/// What each phase measures, in order.
const KINDS: [Kind; 4] = [Kind::Echo, Kind::Held, Kind::Unheld, Kind::Associate];

/// Runs the enforce mode.
pub fn run(args: &EnforceArgs) -> Result<()> {
    let berth_bin = servers::prepare(&args.common)?;
    let dir = servers::run_dir()?;
    // Dropped in reverse order: the servers and the holder end, the BPF filesystem the daemon
    // mounted is unmounted (any pinned link goes with it), the cgroups are removed.
    let subtree = Subtree::create(&args.subtree)?;
    let pins = Unmount(dir.path().join("bpffs"));
    std::fs::create_dir(&pins.0)?;
    subtree.enter("clients", std::process::id())?;
    let holder = Holder::start(&subtree)?;
    let config = format!(
        "enforce_attach = {:?}\nenforce_cgroups = {:?}\nenforce_pins = {:?}\n",
        toml_path(&subtree.dir)?,
        toml_path(&subtree.dir)?,
        toml_path(&pins.0)?
    );
    let daemon = Daemon::start_configured(&berth_bin, dir.paths(), &args.common, &[], &config)?;
    // Before the first enforced reservation: the daemon exempts the cgroup it is in then.
    subtree.enter("daemon", daemon.pid())?;
    let echo = EchoServer::start(dir.runtime(), args.common.server_cpu)?;
    let sizes = load::frame_sizes(&daemon.socket)?;
    let holder_cgroup = cgroup_path(holder.0.id())?;
    println!(
        "enforce mode: programs attached at {} in the on phases; daemon pid {} in {}, clients in {}, owner cgroup {holder_cgroup} (pid {})\n\
         client {}, daemon and echo server {}; requests per measurement ≤ {}, ≤ {} s each, warm-up {}; kernel sync {}\n",
        subtree.dir.display(),
        daemon.pid(),
        cgroup_path(daemon.pid())?,
        cgroup_path(std::process::id())?,
        holder.0.id(),
        pin(args.common.client_cpu),
        pin(args.common.server_cpu),
        args.requests,
        args.max_secs,
        args.warmup,
        args.common.kernel_sync.as_str(),
    );

    let rt = many::runtime()?;
    let mut owned: Option<Token> = None;
    let mut table = Table::default();
    let mut figures: Vec<(bool, Kind, Summary)> = Vec::new();
    for round in 1..=args.rounds {
        for on in [false, true] {
            rt.block_on(switch(
                &daemon.socket,
                &mut owned,
                on,
                &holder_cgroup,
                &subtree.dir,
            ))?;
            for kind in KINDS {
                let plan = Plan {
                    kind,
                    clients: 1,
                    requests: args.requests,
                    warmup: args.warmup,
                    max_secs: args.max_secs,
                };
                let server = if kind.is_echo() {
                    &echo.target
                } else {
                    &daemon.target
                };
                let mut m = load::measure(&plan, server, &sizes)
                    .with_context(|| format!("measuring {} (round {round})", kind.name()))?;
                let s = Summary::of(&mut m.latencies, m.wall, Some(m.server_cpu_us));
                let phase = if on { "on" } else { "off" };
                table.add(format!("{phase} {round}: {}", kind.name()), 1, s.clone());
                figures.push((on, kind, s));
            }
        }
    }
    // The last cgroup-owned reservation ends: the programs are detached.
    rt.block_on(switch(
        &daemon.socket,
        &mut owned,
        false,
        &holder_cgroup,
        &subtree.dir,
    ))?;
    table.print();
    report(&figures, args.rounds);
    daemon.stop()?;
    drop(echo);
    drop(holder);
    drop(pins);
    drop(subtree);
    Ok(())
}

/// Prints, for each kind, the medians over the rounds off and on, and on / off.
fn report(figures: &[(bool, Kind, Summary)], rounds: u32) {
    println!("medians over {rounds} round(s); ratio on / off (server CPU: the daemon's, the echo server's for the echo row):\n");
    println!("| request | p50 µs off → on | on / off | mean µs off → on | on / off | server CPU µs/req off → on | on / off | p50 on / off, each round |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for kind in KINDS {
        let of = |on: bool| -> Vec<&Summary> {
            figures
                .iter()
                .filter(|(o, k, _)| *o == on && *k == kind)
                .map(|(_, _, s)| s)
                .collect()
        };
        let (off, on) = (of(false), of(true));
        let median = |rows: &[&Summary], f: fn(&Summary) -> f64| {
            let mut v: Vec<f64> = rows.iter().map(|s| f(s)).collect();
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => 0.0,
                n if n % 2 == 1 => v[n / 2],
                n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
            }
        };
        let pair = |f: fn(&Summary) -> f64| {
            let (a, b) = (median(&off, f), median(&on, f));
            (format!("{a:.1} → {b:.1}"), ratio(b, a))
        };
        let (p50, p50_ratio) = pair(|s| s.p50_us);
        let (mean, mean_ratio) = pair(|s| s.mean_us);
        let (cpu, cpu_ratio) = pair(|s| s.cpu_us.unwrap_or(0.0));
        let rounds: Vec<String> = off
            .iter()
            .zip(&on)
            .map(|(a, b)| ratio(b.p50_us, a.p50_us))
            .collect();
        println!(
            "| {} | {p50} | {p50_ratio} | {mean} | {mean_ratio} | {cpu} | {cpu_ratio} | {} |",
            kind.name(),
            rounds.join(", ")
        );
    }
    println!();
}

/// Makes the on phase (one TCP port owned by the cgroup `holder`: the daemon attaches the
/// programs) or the off phase (that reservation released: the last one, so they are
/// detached), and checks that `berth status` says so — and, on, that a bind of the owned port
/// from this process's cgroup is refused.
async fn switch(
    socket: &Path,
    owned: &mut Option<Token>,
    on: bool,
    holder: &str,
    attach: &Path,
) -> Result<()> {
    let client = Client::connect_to(socket).await?;
    if on && owned.is_none() {
        let options = AcquireOptions::default().enforce(Enforce::Cgroup(holder.to_owned()));
        let r = client
            .acquire_with(Protocol::Tcp, 0, 1, &options)
            .await
            .context("reserving a port for the holder cgroup")?;
        *owned = Some(r.info().token);
        let port = r.info().range.start();
        // The cgroup owns it: dropping the handle leaves it reserved.
        drop(r);
        match std::net::TcpListener::bind(("0.0.0.0", port)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            other => {
                bail!("a bind of the owned port {port} from clients/ was not refused: {other:?}")
            }
        }
    } else if !on {
        if let Some(token) = owned.take() {
            client
                .release(token)
                .await
                .context("releasing the holder's port")?;
        }
    }
    // The programs are attached or detached before the answer; allow a moment all the same.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = client.status().await?;
        let attached = status.mode == "enforce";
        if attached == on {
            if on {
                let at = status.enforce_attached_at.unwrap_or_default();
                ensure!(
                    Path::new(&at) == attach,
                    "the programs are attached at {at}"
                );
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon's mode is {:?} (attached at {:?}), not {}",
                status.mode,
                status.enforce_attached_at,
                if on { "enforce" } else { "detached" }
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The benchmark's own cgroup v2 subtree, created here and removed when dropped (this
/// process moved back to the cgroup it came from first).
struct Subtree {
    dir: PathBuf,
    /// This process's cgroup before.
    original: PathBuf,
}

impl Subtree {
    /// Creates `dir` (which must not exist, in a cgroup v2 directory) and its `clients/`,
    /// `daemon/` and `holder/`.
    fn create(dir: &Path) -> Result<Subtree> {
        let parent = dir
            .parent()
            .context("the subtree has no parent directory")?;
        ensure!(
            dir.is_absolute() && parent.join("cgroup.controllers").exists(),
            "{} is not a cgroup v2 directory: the subtree must be a new directory in one",
            parent.display()
        );
        let original = cgroup_dir(std::process::id(), dir)?;
        std::fs::create_dir(dir).with_context(|| {
            format!(
                "cannot create the cgroup {} (it must not exist)",
                dir.display()
            )
        })?;
        let subtree = Subtree {
            dir: dir.to_owned(),
            original,
        };
        for name in ["clients", "daemon", "holder"] {
            std::fs::create_dir(dir.join(name))
                .with_context(|| format!("cannot create {}", dir.join(name).display()))?;
        }
        Ok(subtree)
    }

    /// Moves process `pid` (all its threads) into the cgroup `name` of the subtree.
    fn enter(&self, name: &str, pid: u32) -> Result<()> {
        let procs = self.dir.join(name).join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .with_context(|| format!("cannot move pid {pid} into {}", procs.display()))
    }
}

impl Drop for Subtree {
    fn drop(&mut self) {
        let back = self.original.join("cgroup.procs");
        if let Err(e) = std::fs::write(&back, std::process::id().to_string()) {
            eprintln!("berth-bench: cannot move back to {}: {e}", back.display());
        }
        // The daemon's own leaf first (it moves into `daemon/berth-daemon` when it attaches).
        for dir in ["clients", "daemon/berth-daemon", "daemon", "holder"]
            .iter()
            .map(|name| self.dir.join(name))
            .chain([self.dir.clone()])
        {
            if !dir.exists() {
                continue;
            }
            // Our processes have been waited for; a cgroup may take a moment to empty.
            let mut tries = 0;
            while let Err(e) = std::fs::remove_dir(&dir) {
                tries += 1;
                if tries == 100 {
                    eprintln!(
                        "berth-bench: cannot remove the cgroup {}: {e}",
                        dir.display()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The process whose cgroup owns the enforced reservation (`sleep`, in `holder/`), killed by
/// its pid when dropped.
struct Holder(Child);

impl Holder {
    fn start(subtree: &Subtree) -> Result<Holder> {
        let child = Command::new("sleep")
            .arg("3600")
            .spawn()
            .context("cannot start sleep")?;
        let holder = Holder(child);
        subtree.enter("holder", holder.0.id())?;
        Ok(holder)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory unmounted when dropped, if something is mounted there then (the BPF
/// filesystem the daemon mounts for its pins).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        let parent = self.0.parent().and_then(dev);
        if dev(&self.0).is_some() && dev(&self.0) != parent {
            match Command::new("umount").arg(&self.0).status() {
                Ok(s) if s.success() => {}
                other => eprintln!("berth-bench: umount {}: {other:?}", self.0.display()),
            }
        }
    }
}

/// Process `pid`'s cgroup v2 path below the hierarchy's root (`/a/b`), from
/// `/proc/<pid>/cgroup`.
fn cgroup_path(pid: u32) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .with_context(|| format!("pid {pid} is in no cgroup v2"))
}

/// Process `pid`'s cgroup v2 directory in the hierarchy mounted where `near` is.
fn cgroup_dir(pid: u32, near: &Path) -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = info
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next()? == "cgroup2")
                .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .filter(|m| near.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .with_context(|| format!("{} is in no cgroup v2 hierarchy", near.display()))?;
    Ok(mount.join(cgroup_path(pid)?.trim_start_matches('/')))
}

/// "CPU n", or "unpinned".
fn pin(cpu: Option<usize>) -> String {
    cpu.map_or("unpinned".to_owned(), |c| format!("CPU {c}"))
}

/// `path` as text, to be written as a TOML string with `{:?}` (Rust's escapes of `"` and `\`
/// are TOML's).
fn toml_path(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
