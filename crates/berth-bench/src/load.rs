//! Running one measurement: N client threads, each with its own connection and a
//! current-thread tokio runtime, sharing a request budget and a deadline; and the live
//! reservations kept in the daemon meanwhile.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use berth::{Client, Protocol, Reservation};
use berth_protocol::{FrameCodec, Request, Response};
use bytes::BytesMut;
use clap::ValueEnum;
use futures_util::StreamExt;
use tokio_util::codec::Encoder;

use crate::echo::{self, EchoClient};
use crate::servers::{cpu_time_us, Target};

/// What one request of a measurement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Acquire one held port (`Client::acquire`), then release it.
    Held,
    /// Acquire one unheld port (`Client::acquire_unheld`), then release it.
    Unheld,
    /// Two round trips on a persistent echo connection, with the frame sizes of acquire and
    /// of release.
    Echo,
    /// The same two round trips, answered by the session floor: the system calls a held
    /// acquire and its release must make, and nothing else (see `echo::SessionFloor`).
    Floor,
    /// Connect, a line each way, close.
    ConnectEcho,
    /// Bind a fresh TCP socket from a kept one-port unheld reservation through the daemon
    /// (`Reservation::bind`: an `Associate` carrying the socket), then close it. Measured by
    /// the `enforce` mode only.
    #[value(skip)]
    Associate,
}

impl Kind {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Held => "acquire+release (held)",
            Kind::Unheld => "acquire+release (unheld)",
            Kind::Echo => "2 echo round trips",
            Kind::Floor => "session floor (2 answers' calls)",
            Kind::ConnectEcho => "connect-per-request echo",
            Kind::Associate => "associate (bind a fresh socket)",
        }
    }

    /// Whether the echo server serves it.
    pub fn is_echo(self) -> bool {
        matches!(self, Kind::Echo | Kind::Floor | Kind::ConnectEcho)
    }
}

/// One measurement's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// What a request is.
    pub kind: Kind,
    /// Concurrent clients (threads).
    pub clients: u32,
    /// Requests measured, all clients together.
    pub requests: u64,
    /// Unmeasured requests per client first.
    pub warmup: u64,
    /// Upper bound on the measured part, in seconds.
    pub max_secs: f64,
}

/// Payload sizes of berth's frames for one acquire and one release (the 4-byte length
/// prefix excluded), as the real client and daemon encode them.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// The acquire request.
    pub acquire: usize,
    /// Its answer.
    pub acquired: usize,
    /// The release request.
    pub release: usize,
    /// Its answer.
    pub released: usize,
}

/// Encodes the frames of a real acquire+release (one port, through the daemon) to learn their
/// sizes.
pub fn frame_sizes(socket: &Path) -> Result<Sizes> {
    runtime()?.block_on(async {
        let client = Client::connect_to(socket).await?;
        let block = client.acquire(Protocol::Tcp, 0, 1).await?;
        let info = block.info().clone();
        block.release().await?;
        let request = |r: Request| -> Result<usize> {
            let mut buf = BytesMut::new();
            FrameCodec::client().encode(r, &mut buf)?;
            Ok(buf.len() - 4)
        };
        let response = |r: Response| -> Result<usize> {
            let mut buf = BytesMut::new();
            FrameCodec::daemon().encode(r, &mut buf)?;
            Ok(buf.len() - 4)
        };
        Ok(Sizes {
            acquire: request(Request::AcquireWith {
                protocol: Protocol::Tcp,
                start: 0,
                count: 1,
                options: berth_protocol::AcquireOptions::held(),
            })?,
            acquired: response(Response::Acquired(info.clone()))?,
            release: request(Request::Release {
                token: info.token.get(),
            })?,
            released: response(Response::Released(info))?,
        })
    })
}

/// What a measurement found.
#[derive(Debug)]
pub struct Measured {
    /// Each request's latency in nanoseconds, sorted.
    pub latencies: Vec<u64>,
    /// From the start signal to the last client's end.
    pub wall: Duration,
    /// The server's CPU time over the same span, in microseconds.
    pub server_cpu_us: u64,
}

/// Runs `plan` against `target`.
pub fn measure(plan: &Plan, target: &Target, sizes: &Sizes) -> Result<Measured> {
    let n = plan.clients as usize;
    let ready = Arc::new(Barrier::new(n + 1));
    let go = Arc::new(Barrier::new(n + 1));
    let done = Arc::new(Barrier::new(n + 1));
    let budget = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::with_capacity(n);
    for _ in 0..n {
        let (plan, target, sizes) = (*plan, target.clone(), *sizes);
        let barriers = [ready.clone(), go.clone(), done.clone()];
        let budget = budget.clone();
        threads.push(std::thread::spawn(move || {
            client_thread(&plan, &target, &sizes, &barriers, &budget)
        }));
    }
    ready.wait();
    let cpu_before = cpu_time_us(target.pid)?;
    let start = Instant::now();
    go.wait();
    done.wait();
    let wall = start.elapsed();
    let cpu_after = cpu_time_us(target.pid)?;
    let mut latencies = Vec::new();
    for thread in threads {
        let mine = thread
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
        latencies.extend(mine);
    }
    latencies.sort_unstable();
    anyhow::ensure!(!latencies.is_empty(), "no request completed");
    Ok(Measured {
        latencies,
        wall,
        server_cpu_us: cpu_after.saturating_sub(cpu_before),
    })
}

/// One client: connect and warm up, wait for the start, run until the budget or the deadline
/// is spent, wait for the others (the server's CPU time is read then), hang up. Always passes
/// the three barriers, even after an error, so that the others are never left waiting.
fn client_thread(
    plan: &Plan,
    target: &Target,
    sizes: &Sizes,
    [ready, go, done]: &[Arc<Barrier>; 3],
    budget: &AtomicU64,
) -> Result<Vec<u64>> {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            ready.wait();
            go.wait();
            done.wait();
            return Err(e);
        }
    };
    rt.block_on(async {
        let mut op = match Op::open(plan.kind, target, sizes).await {
            Ok(mut op) => {
                let mut warm = Ok(());
                for _ in 0..plan.warmup {
                    warm = op.once().await;
                    if warm.is_err() {
                        break;
                    }
                }
                warm.map(|()| op)
            }
            Err(e) => Err(e),
        };
        ready.wait();
        go.wait();
        let deadline = Instant::now() + Duration::from_secs_f64(plan.max_secs);
        let mut latencies = Vec::with_capacity(plan.requests as usize / plan.clients as usize + 1);
        if let Ok(op) = op.as_mut() {
            while budget.fetch_add(1, Ordering::Relaxed) < plan.requests
                && Instant::now() < deadline
            {
                let t = Instant::now();
                if let Err(e) = op.once().await {
                    done.wait();
                    return Err(e);
                }
                latencies.push(t.elapsed().as_nanos() as u64);
            }
        }
        done.wait();
        op.map(|_| latencies)
    })
}

/// A client of one kind.
enum Op {
    Berth {
        client: Client,
        hold: bool,
    },
    Echo {
        client: EchoClient,
        acquire: Vec<u8>,
        release: Vec<u8>,
    },
    Connect {
        socket: std::path::PathBuf,
    },
    Associate {
        reservation: Reservation,
    },
}

impl Op {
    async fn open(kind: Kind, target: &Target, sizes: &Sizes) -> Result<Op> {
        Ok(match kind {
            Kind::Held | Kind::Unheld => Op::Berth {
                client: Client::connect_to(&target.socket).await?,
                hold: kind == Kind::Held,
            },
            Kind::Echo | Kind::Floor => Op::Echo {
                client: EchoClient::connect(&target.socket).await?,
                acquire: echo::request_frame(sizes.acquire, sizes.acquired),
                release: echo::request_frame(sizes.release, sizes.released),
            },
            Kind::ConnectEcho => Op::Connect {
                socket: target
                    .connect_socket
                    .clone()
                    .context("no connect-per-request socket")?,
            },
            Kind::Associate => {
                let client = Client::connect_to(&target.socket).await?;
                Op::Associate {
                    reservation: client.acquire_unheld(Protocol::Tcp, 0, 1).await?,
                }
            }
        })
    }

    async fn once(&mut self) -> Result<()> {
        match self {
            Op::Berth { client, hold } => {
                let block = if *hold {
                    client.acquire(Protocol::Tcp, 0, 1).await?
                } else {
                    client.acquire_unheld(Protocol::Tcp, 0, 1).await?
                };
                block.release().await?;
            }
            Op::Echo {
                client,
                acquire,
                release,
            } => {
                client.round_trip(acquire).await?;
                client.round_trip(release).await?;
            }
            Op::Connect { socket } => echo::connect_once(socket)?,
            Op::Associate { reservation } => {
                // Closed at the end of the request: its port is free for the next bind.
                let socket = tokio::net::TcpSocket::new_v4()?;
                reservation.bind(&socket, None).await?;
            }
        }
        Ok(())
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build a tokio runtime")
}

/// Live reservations (unheld, one port each) kept by a client on a thread of its own.
pub struct Filler {
    commands: tokio::sync::mpsc::UnboundedSender<(u32, std::sync::mpsc::Sender<Result<u32>>)>,
    thread: Option<std::thread::JoinHandle<()>>,
    count: u32,
}

impl Filler {
    /// Connects to `socket` and acquires `count` reservations.
    pub fn start(socket: &Path, count: u32) -> Result<Filler> {
        let (commands, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(u32, std::sync::mpsc::Sender<Result<u32>>)>();
        let socket = socket.to_owned();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = runtime() else { return };
            rt.block_on(async move {
                let client = Client::connect_to(&socket).await;
                let mut held: Vec<Reservation> = Vec::new();
                while let Some((target, reply)) = rx.recv().await {
                    let answer = match &client {
                        Ok(client) => grow(client, &mut held, target).await,
                        Err(e) => Err(anyhow!("the filler cannot connect: {e}")),
                    };
                    let _ = reply.send(answer);
                }
            });
        });
        let mut filler = Filler {
            commands,
            thread: Some(thread),
            count: 0,
        };
        filler.grow_to(count)?;
        Ok(filler)
    }

    /// Live reservations now.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Acquires more until `count` are live.
    pub fn grow_to(&mut self, count: u32) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.commands
            .send((count, tx))
            .map_err(|_| anyhow!("the filler thread has ended"))?;
        self.count = rx
            .recv()
            .map_err(|_| anyhow!("the filler thread has ended"))??;
        Ok(())
    }

    /// Lets the reservations go with the filler's connection.
    pub fn stop(mut self) {
        let (commands, _) = tokio::sync::mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.commands, commands));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn grow(client: &Client, held: &mut Vec<Reservation>, target: u32) -> Result<u32> {
    let missing = (target as usize).saturating_sub(held.len());
    let mut acquiring = futures_util::stream::iter(0..missing)
        .map(|_| client.acquire_unheld(Protocol::Tcp, 0, 1))
        .buffer_unordered(64);
    while let Some(block) = acquiring.next().await {
        held.push(block.context("filling live reservations")?);
    }
    Ok(held.len() as u32)
}
