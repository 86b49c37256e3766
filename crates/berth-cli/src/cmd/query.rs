//! `berth list`, `berth status`, `berth release`: one request each, no daemon started.

use crate::output::{out, outln};
use std::process::ExitCode;

use anyhow::Context;
use berth::Token;

use crate::cli::{JsonArg, ReleaseArgs, StatusArgs, StatusFormat};
use crate::connect;
use crate::exit::Failure;
use crate::output::{self, ReservationJson, StatusJson};

/// Prints live reservations.
pub async fn list(args: JsonArg) -> Result<ExitCode, Failure> {
    let client = connect::existing().await?;
    let list = client.list().await?;
    if args.json {
        let rows: Vec<ReservationJson> = list.iter().map(ReservationJson::from).collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).context("cannot render JSON")?
        );
    } else if list.is_empty() {
        // Not a bare header: say so, and where the answer came from.
        outln!(
            "no reservations (daemon on {})",
            client.socket_path().display()
        );
    } else {
        out!("{}", output::table(&list));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the daemon's status.
pub async fn status(args: StatusArgs) -> Result<ExitCode, Failure> {
    let format = match (args.json, args.format) {
        (true, _) => StatusFormat::Json,
        (false, format) => format.unwrap_or(StatusFormat::Text),
    };
    let client = connect::existing().await?;
    let info = client.status().await?;
    let status = StatusJson::from(&info);
    if format == StatusFormat::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&status).context("cannot render JSON")?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let list = client.list().await?;
    if format == StatusFormat::Openmetrics {
        out!(
            "{}",
            crate::metrics::openmetrics(&info, &list, output::now_ms())
        );
        return Ok(ExitCode::SUCCESS);
    }
    {
        outln!(
            "berth daemon {} (pid {}) on {}",
            status.version,
            status.pid,
            status.socket
        );
        outln!("  up {}", output::human_age(status.uptime_s));
        outln!(
            "  wildcard pool {} ({}; free: {} tcp, {} udp)",
            status.pool,
            plural(status.pool_size, "port"),
            status.pool_free.tcp,
            status.pool_free.udp
        );
        if status.reuse_cool_down_s > 0 {
            outln!(
                "  reuse cool-down {} s: wildcard picks pass by ports freed more recently while others fit",
                status.reuse_cool_down_s
            );
        }
        outln!(
            "  {} ({} runtime, {} persistent): {}, {}",
            plural(status.reservations, "reservation"),
            status.reservations_by_kind.runtime,
            status.reservations_by_kind.persistent,
            plural(status.tcp_ports, "tcp port"),
            plural(status.udp_ports, "udp port")
        );
        outln!("  {}", plural(status.sessions, "client connection"));
        match &status.kernel_sync_off_because {
            None => outln!("  kernel sync on: reservations are kept in ip_local_reserved_ports"),
            Some(why) => outln!("  kernel sync off: {why}"),
        }
        if let Some(e) = &status.exposure {
            if e.refused {
                outln!("  warning: the wildcard pool lies in the kernel's ephemeral range {} and kernel sync is off: wildcard requests are refused (docs/kernel.md, \"Protection off\")", e.ephemeral);
            } else {
                outln!("  warning: ports {} of the wildcard pool lie in the kernel's ephemeral range {} and kernel sync is off: other programs' connect() and bind(0) may be given them (docs/kernel.md, \"Protection off\")", e.ports, e.ephemeral);
            }
        }
        if let Some(list) = &status.kernel_list {
            outln!(
                "  listed: {} for reservations, {} of other tools, {} more of the daemon's (extras: listed ahead of grants, joining scattered entries, or released and waiting); entries repaired since start-up: {}",
                plural(list.reserved, "port"),
                plural(list.foreign, "port"),
                list.extras,
                list.repaired
            );
            if !list.one_chunk {
                outln!("  warning: the list is too scattered for one kernel write: released ports stay listed until it fits again (docs/kernel.md)");
            }
        }
        if let Some(why) = &status.hold_off_because {
            outln!("  hold off: {why}; reservations are granted unheld");
        }
        match (&status.enforce.attached_at, &status.enforce.unavailable_because) {
            (Some(at), _) => outln!(
                "  mode {}: enforce mode's programs are attached at {at} (cgroup-owned reservations are kept by the kernel)",
                status.mode
            ),
            (None, None) => outln!(
                "  mode {}; enforce mode available (berth run --enforce)",
                status.mode
            ),
            (None, Some(why)) => outln!(
                "  mode {}; enforce mode unavailable: {why}",
                status.mode
            ),
        }
        if let Some(ps) = &status.portserver {
            match &ps.not_served_because {
                None => outln!(
                    "  portpicker endpoint {}: {} answered, {} refused since start-up",
                    ps.address,
                    plural(ps.answered, "request"),
                    ps.refused
                ),
                Some(why) => outln!(
                    "  warning: portpicker endpoint {} not served: {why}; portpicker clients of this address reach that process instead (docs/portserver.md)",
                    ps.address
                ),
            }
        }
        outln!(
            "  {} open of a limit of {} ({})",
            plural(status.open_files, "file descriptor"),
            status.open_files_limit,
            plural(status.hold_sockets, "hold socket")
        );
        // Held ports need a descriptor each: say so before the limit bites.
        if u64::from(status.open_files) * 10 >= status.open_files_limit * 9 {
            outln!("  warning: the daemon is near its descriptor limit; held reservations and connections will be refused — raise LimitNOFILE / ulimit -n");
        }
        let unlimited = |n: u32| {
            if n == u32::MAX {
                "unlimited".to_owned()
            } else {
                n.to_string()
            }
        };
        let usage = &status.usage;
        match &status.quota {
            Some(q) => outln!(
                "  your use: {} of {}, {} of {}, {} of {} (quota)",
                plural(usage.reservations, "reservation"),
                unlimited(q.max_reservations),
                plural(usage.ports, "port"),
                unlimited(q.max_ports),
                plural(usage.held_ports, "held port"),
                unlimited(q.max_held_ports)
            ),
            None => outln!(
                "  your use: {}, {}, {} (no quota applies to you)",
                plural(usage.reservations, "reservation"),
                plural(usage.ports, "port"),
                plural(usage.held_ports, "held port")
            ),
        }
        if let Some(share) = &status.ephemeral_share {
            outln!(
                "  ephemeral share: users without administrator rights hold {} of the {} ports ({}%) of the ephemeral range {} they may reserve together",
                share.used,
                share.max_ports,
                share.percent,
                share.range
            );
        }
        // Every user's for an administrator, the asker's own otherwise.
        if !status.users.is_empty() {
            outln!("  runtime use by user:");
            for u in &status.users {
                outln!(
                    "    uid {}: {}, {}, {}",
                    u.uid,
                    plural(u.reservations, "reservation"),
                    plural(u.ports, "port"),
                    plural(u.held_ports, "held port")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Releases a reservation by token.
pub async fn release(args: ReleaseArgs) -> Result<ExitCode, Failure> {
    let token: Token = args
        .token
        .parse()
        .map_err(|e: berth_core::RangeError| berth::Error::InvalidArgument(e.to_string()))?;
    let client = connect::existing().await?;
    if !args.force {
        refuse_others(&client, token).await?;
    }
    let released = client.release(token).await?;
    if args.json {
        let row = ReservationJson::from(&released);
        outln!(
            "{}",
            serde_json::to_string_pretty(&row).context("cannot render JSON")?
        );
    } else {
        eprintln!(
            "released {} {} ({})",
            released.protocol,
            berth_core::describe(released.range),
            released.token
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses, without --force, to release a reservation of another user whose owner still runs
/// (only an administrator could, and it takes the owner's ports from under it). The daemon
/// decides who may release; this only asks the administrator to say they mean it.
async fn refuse_others(client: &berth::Client, token: Token) -> Result<(), Failure> {
    let me = rustix::process::getuid().as_raw();
    let list = client.list().await?;
    let Some(r) = list.iter().find(|r| r.token == token) else {
        return Ok(()); // the daemon says what is wrong
    };
    match &r.owner {
        Some(owner) if r.kind == berth::Kind::Runtime && owner.uid != me => {
            Err(berth::Error::InvalidArgument(format!(
                "{} {} ({token}) belongs to pid {} ({}, uid {}), which still runs; to take it from that process, run `berth release --force {token}` as an administrator",
                r.protocol,
                berth_core::describe(r.range),
                owner.pid,
                crate::output::shown(&owner.command),
                owner.uid
            ))
            .into())
        }
        _ => Ok(()),
    }
}

/// Stops the daemon (with `restore`, its entries in the kernel's list all go) and waits (with
/// a deadline) until its process has exited.
pub async fn stop(restore: bool) -> Result<ExitCode, Failure> {
    let client = connect::existing().await?;
    let socket = client.socket_path().to_owned();
    // Watched before asking, so that its exit cannot be missed; a daemon in another pid
    // namespace (pid unknown here) is waited for through its connection instead.
    let exited = daemon_exit(client.daemon_pid());
    let pid = client.stop_with(restore).await?;
    drop(client);
    let gone = match exited {
        Some(exit) => tokio::time::timeout(STOP_TIMEOUT, exit).await.is_ok(),
        None => true,
    };
    if !gone {
        return Err(anyhow::anyhow!(
            "the berth daemon (pid {pid}) on {} accepted the stop but is still running after {}s; it may be finishing a request — see its log, or `kill {pid}`",
            socket.display(),
            STOP_TIMEOUT.as_secs()
        )
        .into());
    }
    eprintln!(
        "stopped the berth daemon (pid {pid}) on {}",
        socket.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// How long a stopping daemon may take to exit.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Resolves when process `pid` has exited, if it can be watched from here: a pidfd becomes
/// readable the moment the process exits (a zombie counts), so a stop is seen at once rather
/// than when init gets round to reaping it. Waited for on a blocking thread with `poll(2)`.
fn daemon_exit(pid: u32) -> Option<impl std::future::Future<Output = ()>> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    Some(async move {
        let _ = tokio::task::spawn_blocking(move || {
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            // Bounded like the caller's wait; EINTR just ends this wait early.
            let limit = rustix::event::Timespec {
                tv_sec: i64::try_from(STOP_TIMEOUT.as_secs()).unwrap_or(15),
                tv_nsec: 0,
            };
            let _ = rustix::event::poll(&mut fds, Some(&limit));
        })
        .await;
    })
}

/// `1 reservation`, `2 reservations`.
fn plural(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
