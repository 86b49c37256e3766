//! `berth-bench portserver`: the portpicker protocol (one request per connection,
//! `"<pid>\n"` in, `"<port>\n"` out) against berth's `--portserver` endpoint, Google's
//! `portserver.py`, the *floor* server (`floor`: only the system calls an answer must make —
//! the target's baseline) and the connect-per-request echo (for reference), in one run:
//!
//! - a raw Rust client (`echo::connect_once`, N threads) against each of the four;
//! - the real Python client, `portpicker.pick_unused_port()` with `PORTSERVER_ADDRESS` set, in
//!   one Python process timing each pick, against each of the four.
//!
//! Every request names this process (the raw client) or the Python process: a portserver's
//! reservation lasts until the named process exits, so the raw client's reservations pile up
//! over the run (both portservers get a pool of the same size, `--pool`, and the run refuses to
//! ask for more than half of it) and the Python client's are freed when its process exits.
//! Each portserver hands a still-living pid a fresh port on every request (berth: another
//! reservation of a free number; portserver.py: the next free entry of its rotating queue),
//! so neither is given an easy repeat.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::args::PortserverArgs;
use crate::load::{self, Kind, Plan, Sizes};
use crate::servers::{self, cpu_time_us, Daemon, EchoServer, FloorServer, Target};
use crate::table::{ratio, Summary, Table};

const ECHO: &str = "connect-per-request echo";
const BERTH: &str = "berth --portserver";
const PY: &str = "portserver.py";
const FLOOR: &str = "floor server";

/// The Python client: warm up, say "warm", wait for a line, time `n` picks, print
/// `wall_ns lat_ns…`, wait for stdin to close. A pick the portserver did not answer (portpicker
/// then picks a port by itself, silently) fails the run.
const PY_CLIENT: &str = r#"
import os, sys, time, portpicker
n, warm = int(sys.argv[1]), int(sys.argv[2])
failed = [0]
ask = portpicker.get_port_from_port_server
def counted(*a, **k):
    port = ask(*a, **k)
    if not port:
        failed[0] += 1
    return port
portpicker.get_port_from_port_server = counted
for _ in range(warm):
    portpicker.pick_unused_port()
print("warm", flush=True)
sys.stdin.readline()
lat = []
t0 = time.perf_counter_ns()
for _ in range(n):
    t = time.perf_counter_ns()
    portpicker.pick_unused_port()
    lat.append(time.perf_counter_ns() - t)
wall = time.perf_counter_ns() - t0
if failed[0]:
    print("failed", failed[0], flush=True)
else:
    print(wall, *lat, flush=True)
sys.stdin.read()
"#;

/// Runs the mode.
pub fn run(args: &PortserverArgs) -> Result<()> {
    let common = &args.common;
    let berth_bin = servers::prepare(common)?;
    let pool = pool_size(&common.pool)?;
    let mut levels = vec![1];
    if args.clients > 1 {
        levels.push(args.clients);
    }
    let asked: u64 = levels
        .iter()
        .map(|&c| args.requests + u64::from(c) * args.warmup)
        .sum();
    if asked > pool / 2 {
        bail!("{asked} raw requests would hold more than half of the {pool}-port pool (every answer lasts until this process exits): lower --requests or widen --pool");
    }
    let dir = servers::run_dir()?;
    let berth_ps = dir.runtime().join("berth-portserver.sock");
    let daemon = Daemon::start(
        &berth_bin,
        dir.paths(),
        common,
        &[OsStr::new("--portserver"), berth_ps.as_os_str()],
    )?;
    let echo = EchoServer::start(dir.runtime(), common.server_cpu)?;
    let floor = FloorServer::start(dir.runtime(), &common.pool, common.server_cpu)?;
    let py = match PyPortserver::start(args, dir.path()) {
        Ok(py) => Some(py),
        Err(e) => {
            println!("portserver.py not measured: {e:#}\n");
            None
        }
    };
    println!(
        "portserver mode: clients {}, servers {}; berth daemon pid {}, floor pid {}, echo pid {}, portserver.py pid {}; pool {} ({pool} ports each); requests ≤ {} per measurement, ≤ {} s, warm-up {} per client",
        pin(common.client_cpu),
        pin(common.server_cpu),
        daemon.pid(),
        floor.pid(),
        echo.pid(),
        py.as_ref().map_or("–".to_owned(), |p| p.pid.to_string()),
        common.pool,
        args.requests,
        args.max_secs,
        args.warmup,
    );
    let mut targets: Vec<(&str, Target)> = vec![
        (ECHO, echo.target.clone()),
        (FLOOR, floor.target.clone()),
        (BERTH, connect_target(daemon.pid(), &berth_ps)),
    ];
    if let Some(py) = &py {
        targets.push((PY, connect_target(py.pid, &py.socket)));
    }

    let mut table = Table::default();
    let sizes = Sizes {
        acquire: 0,
        acquired: 0,
        release: 0,
        released: 0,
    };
    for &clients in &levels {
        for (name, target) in &targets {
            let plan = Plan {
                kind: Kind::ConnectEcho,
                clients,
                requests: args.requests,
                warmup: args.warmup,
                max_secs: args.max_secs,
            };
            let mut m = load::measure(&plan, target, &sizes)
                .with_context(|| format!("measuring {name} with {clients} clients"))?;
            table.add(
                format!("raw client → {name}"),
                clients,
                Summary::of(&mut m.latencies, m.wall, Some(m.server_cpu_us)),
            );
        }
    }
    if !args.no_python {
        for (name, target) in &targets {
            let address = target.connect_socket.clone().unwrap_or_default();
            match python_client(args, &address, target.pid) {
                Ok(s) => table.add(format!("pick_unused_port() → {name}"), 1, s),
                Err(e) => println!("the Python client against {name} was not measured: {e:#}"),
            }
        }
    }
    let held = berth_held(&daemon.socket).unwrap_or(0);
    table.print();
    for &clients in &levels {
        ratios(&table, "raw client", clients);
    }
    ratios(&table, "pick_unused_port()", 1);
    println!(
        "\nberth held {held} reservations (two per answer: TCP and UDP) for this process at the end: the raw client's answers last until it exits."
    );
    daemon.stop()?;
    drop(echo);
    drop(floor);
    drop(py);
    Ok(())
}

fn pin(cpu: Option<usize>) -> String {
    cpu.map_or("unpinned".to_owned(), |c| format!("CPU {c}"))
}

/// Prints the target ratios of one client kind at one concurrency level.
fn ratios(table: &Table, client: &str, clients: u32) {
    let get = |server: &str| table.get(&format!("{client} → {server}"), clients);
    let Some(berth) = get(BERTH) else {
        return;
    };
    let cpu = |a: &Summary, b: &Summary| match (a.cpu_us, b.cpu_us) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => "n/a".to_owned(),
    };
    if let Some(floor) = get(FLOOR) {
        println!(
            "{client}, {clients} client(s): berth / floor throughput {} (target ≥ 0.70×), p50 {}, server CPU per answer {}",
            ratio(berth.per_sec, floor.per_sec),
            ratio(berth.p50_us, floor.p50_us),
            cpu(berth, floor),
        );
    }
    if let Some(echo) = get(ECHO) {
        println!(
            "{client}, {clients} client(s): berth / echo throughput {} (reference, no target), p50 {}, server CPU {}",
            ratio(berth.per_sec, echo.per_sec),
            ratio(berth.p50_us, echo.p50_us),
            cpu(berth, echo),
        );
    }
    if let Some(py) = get(PY) {
        println!(
            "{client}, {clients} client(s): berth / portserver.py throughput {} (target ≥ 5×), p50 {} (py / berth), server CPU {} (py / berth)",
            ratio(berth.per_sec, py.per_sec),
            ratio(py.p50_us, berth.p50_us),
            cpu(py, berth),
        );
    }
}

fn connect_target(pid: u32, socket: &Path) -> Target {
    Target {
        pid,
        socket: socket.to_owned(),
        connect_socket: Some(socket.to_owned()),
    }
}

/// Ports in a `LO-HI` pool.
fn pool_size(pool: &str) -> Result<u64> {
    let (lo, hi) = pool.split_once('-').context("--pool is LO-HI")?;
    let (lo, hi): (u64, u64) = (lo.trim().parse()?, hi.trim().parse()?);
    anyhow::ensure!(lo <= hi, "--pool {pool}: LO > HI");
    Ok(hi - lo + 1)
}

/// Reservations berth holds now (from an ordinary client's status).
fn berth_held(socket: &Path) -> Result<u32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = berth::Client::connect_to(socket).await?;
        Ok(client.status().await?.reservations)
    })
}

/// Google's portserver.py, a child of ours (pinned like the daemon).
struct PyPortserver {
    child: Child,
    pid: u32,
    socket: PathBuf,
}

impl PyPortserver {
    fn start(args: &PortserverArgs, dir: &Path) -> Result<PyPortserver> {
        let script = match &args.portserver_py {
            Some(path) => path.clone(),
            None => find_portserver_py(&args.python)?,
        };
        let socket = dir.join("portserver-py.sock");
        let mut cmd = match args.common.server_cpu {
            Some(cpu) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(cpu.to_string()).arg(&args.python);
                cmd
            }
            None => Command::new(&args.python),
        };
        cmd.arg(&script)
            .arg("--portserver_static_pool")
            .arg(&args.common.pool)
            .arg("--portserver_address")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("portserver-py.log"))
                    .context("cannot create portserver-py.log")?,
            );
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let pid = child.id();
        // It prints nothing when ready (without --verbose): wait for its socket.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited ({status}): {}",
                    script.display(),
                    std::fs::read_to_string(dir.join("portserver-py.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not listen within 20 s", script.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(PyPortserver { child, pid, socket })
    }
}

impl Drop for PyPortserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `portserver.py` of the `portpicker` package: installed as a script beside Python's.
fn find_portserver_py(python: &Path) -> Result<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import os, shutil, sysconfig, portpicker\n\
             c = [os.path.join(sysconfig.get_path('scripts'), 'portserver.py'), shutil.which('portserver.py') or '']\n\
             print(next((p for p in c if p and os.path.exists(p)), ''))",
        ])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || path.is_empty() {
        bail!(
            "no portserver.py found (pip install portpicker, or name it with --portserver-py): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(path))
}

/// One Python process timing `--requests` (at most `--python-requests`) picks against
/// `address`, with the server's (`pid`) CPU time over the measured picks.
fn python_client(args: &PortserverArgs, address: &Path, pid: u32) -> Result<Summary> {
    let n = args.requests.min(args.python_requests);
    let mut cmd = match args.common.client_cpu {
        Some(cpu) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpu.to_string()).arg(&args.python);
            cmd
        }
        None => Command::new(&args.python),
    };
    let mut child = cmd
        .args(["-c", PY_CLIENT, &n.to_string(), &args.warmup.to_string()])
        .env("PORTSERVER_ADDRESS", address)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the Python client")?;
    let result = (|| {
        let mut stdin = child.stdin.take().context("no stdin pipe")?;
        let mut out = BufReader::new(child.stdout.take().context("no stdout pipe")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        anyhow::ensure!(line == "warm\n", "the Python client said {line:?}");
        let before = cpu_time_us(pid)?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        line.clear();
        out.read_line(&mut line)?;
        let after = cpu_time_us(pid)?;
        drop(stdin);
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        anyhow::ensure!(
            first != "failed" && !first.is_empty(),
            "the portserver did not answer every pick: {line:?}"
        );
        let wall = Duration::from_nanos(first.parse()?);
        let mut latencies: Vec<u64> = fields.map(str::parse).collect::<Result<_, _>>()?;
        anyhow::ensure!(!latencies.is_empty(), "no pick measured");
        Ok(Summary::of(
            &mut latencies,
            wall,
            Some(after.saturating_sub(before)),
        ))
    })();
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}
