//! `berth run --tcp N [--udp M] [--start P] [--listen] -- CMD ARGS…`: reserve, run, forward
//! signals, release, and exit with the command's status. With `--listen` the ports are held
//! and passed as bound sockets too ([`super::listen`]).

use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use anyhow::Context;
use berth::{AcquireOptions, Client, Enforce, Protocol, Reservation};
use tokio::signal::unix::{signal, SignalKind};

use super::listen::{self, Sockets};
use crate::cli::RunArgs;
use crate::connect;
use crate::exit::{self, Failure};
use crate::output::ReservationJson;

/// Signals passed on to the command. SIGINT is passed on only when it did not come from the
/// terminal, which already sent it to the command (same process group).
const FORWARDED: [(SignalKind, i32); 6] = [
    (SignalKind::terminate(), 15),
    (SignalKind::interrupt(), 2),
    (SignalKind::hangup(), 1),
    (SignalKind::quit(), 3),
    (SignalKind::user_defined1(), 10),
    (SignalKind::user_defined2(), 12),
];

/// Runs the command on freshly reserved ports.
pub async fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let start = args.start.unwrap_or(0);
    // Before anything is reserved: a command that cannot be started would only waste them.
    check_environment_fits(&args, start)?;
    if args.listen {
        let count = usize::from(args.tcp.unwrap_or(0)) + usize::from(args.udp.unwrap_or(0));
        listen::ensure_descriptors(count)?;
    }
    let client = connect::or_start(connect::Lifetime::Holding).await?;
    // Held only with --listen: a command that binds $PORT by number could not bind a held
    // port. Said explicitly either way, whatever the library's default.
    let options = AcquireOptions {
        hold: args.listen,
        label: args.label.clone().unwrap_or_default(),
        within: args.within.as_deref().map(parse_within).transpose()?,
        name: args.name.clone().unwrap_or_default(),
        // This process is moved into the new cgroup: the command, started below, is born there.
        enforce: args.enforce.then_some(Enforce::NewCgroup),
    };
    let (tcp, udp) = if args.same_ports {
        let (Some(n), Some(m)) = (args.tcp, args.udp) else {
            return Err(anyhow::anyhow!("--same-ports needs --tcp N and --udp N").into());
        };
        if n != m {
            return Err(berth::Error::InvalidArgument(format!(
                "--same-ports reserves the same numbers in both protocols, so --tcp and --udp must be equal (got {n} and {m})"
            ))
            .into());
        }
        let (tcp, udp) = client.acquire_same_ports_with(start, n, &options).await?;
        (Some(Block::Own(tcp)), Some(Block::Own(udp)))
    } else {
        (
            reserve(&client, Protocol::Tcp, start, args.tcp, &options).await?,
            reserve(&client, Protocol::Udp, start, args.udp, &options).await?,
        )
    };
    // A name whose block of last time could not be given again: say where it went and why
    // (its memory moved).
    for r in tcp.iter().chain(udp.iter()).filter_map(Block::own) {
        if let (Some(name), Some(before)) = (r.name(), r.moved_from()) {
            let why = if before.count() == r.range().count() {
                "a port of its block was taken meanwhile (by another program or an outgoing connection)".to_owned()
            } else {
                format!(
                    "{} ports were asked for, and its block of last time had {}",
                    r.range().count(),
                    before.count()
                )
            };
            eprintln!(
                "berth: notice: {name} moved from {} {before} to {}: {why}; it keeps the new ports from now on",
                r.protocol(),
                r.range()
            );
        }
    }

    // Ports asked for by number may be kept by connections in TIME_WAIT (a server of the
    // same port that just stopped): granted, but the command's own bind needs SO_REUSEADDR.
    // (Not a persistent block shared with this user: others may be binding its ports now.)
    if args.start.is_some() && !args.listen {
        if let Some(own) = tcp.as_ref().and_then(Block::own) {
            note_lingering(own.range());
        }
    }

    let Some((program, rest)) = args.command.split_first() else {
        return Err(anyhow::anyhow!("no command given after --").into());
    };
    // With --daemonizes: the read end of the keeper's reports, and the write end to pass it.
    let mut keeper_reports = None;
    let sockets = if args.listen {
        let (t, u) = (own_or_none(tcp.as_ref())?, own_or_none(udp.as_ref())?);
        Some(Sockets::bind(t, u, args.listen_address).await?)
    } else {
        None
    };
    let (mut command, started) = match &sockets {
        Some(sockets) => {
            let (command, started) = sockets.command(program, rest)?;
            (command, Some(started))
        }
        None if args.daemonizes => {
            let (command, reports) = keeper_command(program, rest)?;
            keeper_reports = Some(reports);
            (command, None)
        }
        None => {
            let mut command = tokio::process::Command::new(program);
            command.args(rest);
            (command, None)
        }
    };
    if let Some(r) = &tcp {
        command.env("BERTH_TCP_PORTS", port_list(r.info()));
        command.env("PORT", r.info().range.start().to_string());
    }
    if let Some(r) = &udp {
        command.env("BERTH_UDP_PORTS", port_list(r.info()));
    }
    if args.json {
        let rows: Vec<ReservationJson> = tcp
            .iter()
            .chain(udp.iter())
            .map(|r| ReservationJson::from(r.info()))
            .collect();
        eprintln!(
            "{}",
            serde_json::to_string(&rows).context("cannot render JSON")?
        );
    }

    // Handlers first: a signal that arrives while the command starts is then forwarded (or
    // at least does not kill us with the ports' owner still running).
    let signals = install_signal_handlers()?;
    let mut child = command.spawn().map_err(|e| {
        let name = program.to_string_lossy();
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            exit::COMMAND_NOT_FOUND
        } else {
            exit::CANNOT_EXECUTE
        };
        Failure::Spawn {
            code,
            message: format!("cannot run {name:?}: {e}"),
        }
    })?;
    // The command has its own copies now; ours would keep the ports bound after it ends.
    drop(sockets);
    if let Some((reports, write_end)) = keeper_reports {
        // Only the keeper writes: its end closing tells us it is gone.
        drop(write_end);
        let owned = tcp
            .into_iter()
            .chain(udp)
            .filter_map(Block::into_own)
            .collect();
        return keep_and_report(&child, reports, signals, owned).await;
    }
    // A persistent block is nobody's to hand over or release: only our own are. A cgroup's
    // (--enforce) lives until the cgroup is empty: neither handed over nor released here.
    let mut held: Vec<Reservation> = tcp
        .into_iter()
        .chain(udp)
        .filter_map(Block::into_own)
        .filter(|r| r.cgroup().is_none())
        .collect();
    let mut handed = Vec::new();
    let pid = child.id();
    if let Some(pid) = pid {
        forward_signals(signals, pid);
        if let Some(started) = started {
            // With --listen the pid is berth's exec step until it has exec'd the command;
            // handed over after that, the reservations name the command, not `berth`.
            started.exec_done().await;
        }
        // The command owns its ports from now on: they stay reserved while it runs, even if
        // this process is killed, and end when it ends (docs/decisions.md, "Lifetime of
        // `berth run` reservations"). A daemon that cannot take them over leaves them in this
        // session, as before.
        for r in &mut held {
            match r.transfer_to(pid).await {
                Ok(info) => handed.push(info.token),
                Err(e) => tracing::debug!("{} stays with berth run: {e}", r.token()),
            }
        }
    }
    let mut client = Some(client);
    if !handed.is_empty() && held.iter().all(|r| handed.contains(&r.token())) {
        // The command owns every port now, and this session holds nothing: give its
        // connection back for the command's whole life (one of the user's connections), so
        // that a test runner's hundreds of `berth run` at once are all served.
        held.clear();
        client = None;
    }
    let kept: Vec<&Reservation> = held
        .iter()
        .filter(|r| !handed.contains(&r.token()))
        .collect();
    let status = tokio::select! {
        status = child.wait() => status.context("waiting for the command failed")?,
        lost = first_loss(&kept) => {
            // Loud, at once: the command runs on ports the daemon may hand to others.
            let code = exit::for_kind(lost.kind());
            eprintln!("berth: {lost}");
            if let Some(target) = pid.and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw) {
                eprintln!("berth: sending SIGTERM to the command (pid {target}) and exiting with {code} once it has ended");
                let _ = rustix::process::kill_process(target, rustix::process::Signal::TERM);
            }
            let _ = child.wait().await;
            return Ok(ExitCode::from(code));
        }
    };
    drop(kept);

    // Release before exiting so that the ports are free when our parent sees the status.
    for r in held {
        if handed.contains(&r.token()) {
            continue; // ended with the command; confirmed below
        }
        if let Err(e) = r.release().await {
            tracing::warn!("releasing after the command exited: {e}");
        }
    }
    // A new connection, if the first was given back: one request, bounded.
    let confirm = match client {
        Some(client) => Some(client),
        None if !handed.is_empty() => connect::existing().await.ok(),
        None => None,
    };
    if let Some(client) = &confirm {
        ended_with_the_command(client, &handed).await;
    }
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(exit::FAILURE),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(exit::FAILURE),
        (None, None) => exit::FAILURE,
    };
    Ok(ExitCode::from(code))
}

/// `berth keep --status-fd N -- CMD…` (this same binary), and the pipe of its reports: the
/// read end, and the write end it inherits as descriptor N.
fn keeper_command(
    program: &std::ffi::OsString,
    rest: &[std::ffi::OsString],
) -> Result<
    (
        tokio::process::Command,
        (std::fs::File, std::os::fd::OwnedFd),
    ),
    Failure,
> {
    use std::os::fd::AsRawFd;
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| anyhow::anyhow!("cannot make a pipe for the keeper: {e}"))?;
    let me = std::env::current_exe().context("cannot find the berth binary for the keeper")?;
    let raw = write.as_raw_fd();
    let mut command = tokio::process::Command::new(me);
    command
        .arg("keep")
        .arg("--status-fd")
        .arg(raw.to_string())
        .arg("--")
        .arg(program)
        .args(rest);
    berth_os::exec::inherit_only(command.as_std_mut(), vec![raw]);
    Ok((command, (std::fs::File::from(read), write)))
}

/// `--daemonizes`: hands the reservations to the keeper (they live until the last process the
/// command started has exited), passes signals on to the command once the keeper names it,
/// and returns the command's own exit as soon as the keeper reports it.
async fn keep_and_report(
    keeper: &tokio::process::Child,
    reports: std::fs::File,
    signals: Vec<(tokio::signal::unix::Signal, i32)>,
    mut owned: Vec<Reservation>,
) -> Result<ExitCode, Failure> {
    if let Some(pid) = keeper.id() {
        for r in &mut owned {
            if let Err(e) = r.transfer_to(pid).await {
                eprintln!("berth: the daemon did not hand {} {} to the keeper ({e}): it ends when the command exits", r.protocol(), r.range());
            }
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(reports).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut signals = Some(signals);
    while let Some(line) = rx.recv().await {
        let (what, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match what {
            "pid" => {
                if let (Ok(pid), Some(signals)) = (value.parse::<u32>(), signals.take()) {
                    // The command is in the keeper's session, not our process group: the
                    // terminal's Ctrl-C reaches it through us.
                    forward_to(signals, pid, true);
                }
            }
            "exit" => {
                let code = value.parse::<i32>().unwrap_or(1);
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(exit::FAILURE)));
            }
            "signal" => {
                let sig = value.parse::<i32>().unwrap_or(0);
                return Ok(ExitCode::from(
                    u8::try_from(128 + sig).unwrap_or(exit::FAILURE),
                ));
            }
            what => {
                let code = if what == "notfound" {
                    exit::COMMAND_NOT_FOUND
                } else {
                    exit::CANNOT_EXECUTE
                };
                return Err(Failure::Spawn {
                    code,
                    message: value.to_owned(),
                });
            }
        }
    }
    Err(anyhow::anyhow!("the keeper ended without reporting the command's exit").into())
}

/// Resolves with the first loss among `kept` (never, when it is empty).
async fn first_loss(kept: &[&Reservation]) -> berth::Error {
    match kept {
        [] => std::future::pending().await,
        [one] => one.lost().await,
        [a, b, ..] => tokio::select! {
            e = a.lost() => e,
            e = b.lost() => e,
        },
    }
}

/// Waits, for a bounded time, until the daemon has let go of the reservations handed to the
/// command that just ended (it does so when it sees the process exit), so that the ports are
/// free when our parent sees the status.
async fn ended_with_the_command(client: &Client, handed: &[berth::Token]) {
    if handed.is_empty() {
        return;
    }
    // Bounded as a whole: with the daemon away, a list would wait for a reconnection.
    let wait = async {
        loop {
            match client.list().await {
                Ok(list) if list.iter().all(|r| !handed.contains(&r.token)) => return,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), wait).await;
}

async fn reserve(
    client: &Client,
    protocol: Protocol,
    start: u16,
    count: Option<u16>,
    options: &AcquireOptions,
) -> Result<Option<Block>, Failure> {
    let Some(n) = count else {
        return Ok(None);
    };
    // Held with --listen (berth run binds the sockets through the daemon); otherwise the
    // command binds its ports by number, so not held (see docs/kernel.md).
    match client.acquire_with(protocol, start, n, options).await {
        Ok(r) => Ok(Some(Block::Own(r))),
        // Exactly a persistent reservation this user may use: the command binds its ports
        // as every allowed user's programs do (docs/persistent.md).
        Err(conflict @ berth::Error::Conflict(_)) if start != 0 => {
            match client.use_persistent(protocol, start, n).await {
                Ok(info) => {
                    eprintln!(
                        "berth: using the persistent reservation {} ({protocol} {}), which your user may use; other allowed users' programs may use it at the same time",
                        info.token, info.range
                    );
                    if !options.name.is_empty() || !options.label.is_empty() {
                        eprintln!("berth: --name and --label do not apply to it: it is a persistent reservation, not one of this run's (an administrator gives it a name or label with `berth persistent add`)");
                    }
                    Ok(Some(Block::Shared(info)))
                }
                Err(denied @ berth::Error::PermissionDenied(_)) => Err(denied.into()),
                Err(_) => Err(conflict.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A block `berth run` gives its command: reserved for it, or a persistent reservation its
/// user may use (shared with the other allowed users; nothing to hand over or release).
enum Block {
    Own(Reservation),
    Shared(berth::ReservationInfo),
}

impl Block {
    fn info(&self) -> &berth::ReservationInfo {
        match self {
            Block::Own(r) => r.info(),
            Block::Shared(info) => info,
        }
    }

    fn own(&self) -> Option<&Reservation> {
        match self {
            Block::Own(r) => Some(r),
            Block::Shared(_) => None,
        }
    }

    fn into_own(self) -> Option<Reservation> {
        match self {
            Block::Own(r) => Some(r),
            Block::Shared(_) => None,
        }
    }
}

/// Says which TCP ports of `range` are kept only by connections in TIME_WAIT: a bind without
/// `SO_REUSEADDR` fails there until they time out (most servers set it). `--listen` is no way
/// round: a held request by number is refused beside them, since the daemon ends only the
/// owner's own `TIME_WAIT` connections.
fn note_lingering(range: berth::PortRange) {
    let cover = berth_os::hold::Cover::all(berth_os::hold::ipv6_available());
    let lingering: Vec<String> = range
        .ports()
        .filter(|&port| {
            berth_os::hold::bind(Protocol::Tcp, port, cover)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
                && berth_os::hold::free_but_for_lingering(port, cover)
        })
        .map(|port| port.to_string())
        .collect();
    if !lingering.is_empty() {
        eprintln!(
            "berth: notice: tcp {} {} {} kept by connections in TIME_WAIT (a server that just closed): the command's own bind needs SO_REUSEADDR, as most servers set it; without it, the bind fails until they time out (about a minute)",
            if lingering.len() == 1 { "port" } else { "ports" },
            lingering.join(","),
            if lingering.len() == 1 { "is" } else { "are" }
        );
    }
}

/// `--listen` binds through reservations of this run: a persistent block is refused for it.
fn own_or_none(block: Option<&Block>) -> Result<Option<&Reservation>, Failure> {
    match block {
        None => Ok(None),
        Some(Block::Own(r)) => Ok(Some(r)),
        Some(Block::Shared(info)) => Err(berth::Error::NotSupported(format!(
            "--listen binds the ports of reservations of its own; {} {} is a persistent reservation — run without --listen and bind its ports from the command",
            info.protocol, info.range
        ))
        .into()),
    }
}

/// `--within LO-HI` as the request's bounds; whether they make sense with the rest of the
/// request is the daemon's to say.
fn parse_within(text: &str) -> Result<(u16, u16), Failure> {
    let bounds = |(lo, hi): (&str, &str)| Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?));
    text.split_once('-').and_then(bounds).ok_or_else(|| {
        berth::Error::InvalidArgument(format!(
            "--within {text:?} is not a port range; write it as LO-HI, e.g. --within 20000-20099"
        ))
        .into()
    })
}

/// The kernel's limit on one environment string, `NAME=value` and its NUL (`MAX_ARG_STRLEN`).
const MAX_ARG_STRLEN: usize = 32 * 4096;

/// The longest `a,b,c` list of `count` ports from `start` (any start: five digits each).
fn list_len(start: u16, count: u16) -> usize {
    if start == 0 {
        return usize::from(count) * 6 - 1;
    }
    let end = u32::from(start) + u32::from(count) - 1;
    (u32::from(start)..=end)
        .map(|p| p.to_string().len() + 1)
        .sum::<usize>()
        - 1
}

/// Refuses, before reserving, port lists the kernel would not pass to the command: one
/// environment string is at most [`MAX_ARG_STRLEN`] bytes, and the arguments and environment
/// together at most a quarter of the stack limit (`ARG_MAX`).
fn check_environment_fits(args: &RunArgs, start: u16) -> Result<(), Failure> {
    for (option, count) in [("--tcp", args.tcp), ("--udp", args.udp)] {
        if count == Some(0) {
            return Err(berth::Error::InvalidArgument(format!(
                "{option} 0 reserves nothing: ask for 1 port or more (count 0 is invalid); nothing was reserved"
            ))
            .into());
        }
    }
    if args.start == Some(0) {
        return Err(berth::Error::InvalidArgument(
            "--start 0 names no port: give the first port of the block (1-65535), or leave --start out for any free block; nothing was reserved".into(),
        )
        .into());
    }
    let vars = [("BERTH_TCP_PORTS", args.tcp), ("BERTH_UDP_PORTS", args.udp)];
    let mut added = 0;
    for (name, count) in vars {
        let Some(count) = count else { continue };
        let len = name.len() + 1 + list_len(start, count) + 1;
        if len > MAX_ARG_STRLEN {
            let most = (MAX_ARG_STRLEN - name.len() - 2 + 1) / 6;
            return Err(berth::Error::InvalidArgument(format!(
                "{count} ports do not fit in {name}: the list would take up to {len} bytes, over the kernel's limit of {MAX_ARG_STRLEN} bytes for one environment variable; nothing was reserved. `berth run` passes at most {most} ports per protocol — reserve larger blocks from a program through the client library"
            ))
            .into());
        }
        added += len + std::mem::size_of::<usize>();
    }
    if args.listen {
        // LISTEN_FDNAMES (one `tcp-PORT` per socket), LISTEN_FDS and LISTEN_PID; the step
        // between gets the descriptor numbers as one argument of about the same length.
        let blocks: Vec<(&str, u16, usize)> = [("tcp", args.tcp), ("udp", args.udp)]
            .into_iter()
            .filter_map(|(p, c)| c.map(|c| (p, c, list_len(start, c))))
            .collect();
        let names = "LISTEN_FDNAMES=".len() + listen::names_len(&blocks) + 1;
        if names > MAX_ARG_STRLEN {
            let count: usize = blocks.iter().map(|&(_, c, _)| usize::from(c)).sum();
            return Err(berth::Error::InvalidArgument(format!(
                "{count} sockets do not fit in LISTEN_FDNAMES: the names would take up to {names} bytes, over the kernel's limit of {MAX_ARG_STRLEN} bytes for one environment variable; nothing was reserved. `berth run --listen` passes at most about 13000 sockets"
            ))
            .into());
        }
        added += 2 * names + 64 + 4 * std::mem::size_of::<usize>();
    }
    let pointer = std::mem::size_of::<usize>();
    let existing: usize = std::env::vars_os()
        .map(|(k, v)| k.len() + v.len() + 2 + pointer)
        .chain(args.command.iter().map(|a| a.len() + 1 + pointer))
        .sum();
    let stack = rustix::process::getrlimit(rustix::process::Resource::Stack).current;
    if let Some(limit) = stack.and_then(|s| usize::try_from(s / 4).ok()) {
        if existing + added > limit {
            return Err(berth::Error::InvalidArgument(format!(
                "the command's arguments and environment with the port lists would take {} bytes, over this system's limit of {limit} bytes (ARG_MAX, a quarter of `ulimit -s`); nothing was reserved. Ask for fewer ports, or shorten the environment",
                existing + added
            ))
            .into());
        }
    }
    Ok(())
}

/// `a,b,c`.
fn port_list(r: &berth::ReservationInfo) -> String {
    r.range
        .ports()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Handlers for the signals in [`FORWARDED`], installed before the command starts.
fn install_signal_handlers() -> Result<Vec<(tokio::signal::unix::Signal, i32)>, Failure> {
    FORWARDED
        .iter()
        .map(|&(kind, number)| {
            signal(kind)
                .map(|stream| (stream, number))
                .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}").into())
        })
        .collect()
}

/// Passes the signals on to process `pid` for as long as this command runs.
fn forward_signals(signals: Vec<(tokio::signal::unix::Signal, i32)>, pid: u32) {
    forward_to(signals, pid, false);
}

/// Passes the signals on to `pid`; SIGINT too when `interrupts` (the command is not in our
/// process group), else only when it did not come from the terminal.
fn forward_to(signals: Vec<(tokio::signal::unix::Signal, i32)>, pid: u32, interrupts: bool) {
    let Some(target) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    for (mut stream, number) in signals {
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if number == 2 && !interrupts && terminal_sent_it() {
                    continue;
                }
                if let Some(sig) = rustix::process::Signal::from_named_raw(number) {
                    let _ = rustix::process::kill_process(target, sig);
                }
            }
        });
    }
}

/// Whether a SIGINT came from the terminal: stdin is a terminal whose foreground process group
/// is ours, so the command (in our group) received it too.
fn terminal_sent_it() -> bool {
    match rustix::termios::tcgetpgrp(std::io::stdin()) {
        Ok(fg) => fg == rustix::process::getpgrp(),
        Err(_) => false,
    }
}
