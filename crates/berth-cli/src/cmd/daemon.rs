//! `berth daemon`.

use crate::output::outln;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use berth_daemon::{config::ephemeral_pool, kernel, portserver, Config, ConfigFile, KernelSync};
use berth_protocol::paths;

use crate::cli::DaemonArgs;
use crate::exit::Failure;

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: DaemonArgs) -> Result<ExitCode, Failure> {
    let uid = rustix::process::geteuid().as_raw();
    let socket = args
        .socket
        .unwrap_or_else(|| paths::default_socket(&paths::process_env, uid));
    let db = args
        .db
        .unwrap_or_else(|| paths::default_db(&paths::process_env, uid));
    // A directory of the user's runtime files (the `/tmp` fallback, `$XDG_RUNTIME_DIR/berth`)
    // is used only when it is private to this user; root never falls back to `/tmp` for its
    // defaults (they are /run/berth and /var/lib/berth).
    for path in [&socket, &db] {
        if let Some(dir) = paths::in_user_dir(&paths::process_env, uid, path) {
            berth::rendezvous::private_dir(&dir, true)?;
        }
    }
    let file = args.config.clone().or_else(|| {
        let system = std::path::PathBuf::from(paths::SYSTEM_CONFIG);
        (uid == 0 && system.exists()).then_some(system)
    });
    let loaded = match &file {
        Some(path) => Some(ConfigFile::load(path).map_err(anyhow::Error::from)?),
        None => None,
    };
    // Whether the kernel's reserved-ports list will be kept decides the default pool: the
    // ephemeral range only when its reservations are hidden from every connect().
    let kernel_sync = args
        .kernel_sync
        .or_else(|| loaded.as_ref().and_then(ConfigFile::kernel_sync))
        .unwrap_or(KernelSync::Auto);
    // No default pool is safe without the list when the ephemeral range leaves no port outside
    // it: the daemon then refuses wildcard requests (docs/kernel.md, "Protection off").
    let ephemeral = ephemeral_pool();
    let pool =
        kernel::safe_default_pool(kernel::will_sync(kernel_sync), ephemeral).unwrap_or(ephemeral);
    let system_instance = uid == 0 && socket == std::path::Path::new(paths::SYSTEM_SOCKET);
    // The runtime journal lives with the socket, in the runtime directory (/run/berth, or
    // $XDG_RUNTIME_DIR/berth): a tmpfs, which the journal's rows, ending with the boot, suit.
    let runtime_dir = socket
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(std::path::Path::to_path_buf);
    let mut config = Config::new(socket, db, pool);
    config.runtime_dir = runtime_dir;
    // The default pool follows the ephemeral range; one given in the file or on the command
    // line stays as given.
    config.pool_follows_ephemeral = true;
    // The system daemon answers portpicker clients unless told not to (docs/portserver.md).
    if system_instance {
        config.portserver = Some(portserver::Endpoint {
            optional: true,
            ..portserver::Endpoint::new(portserver::Address::Abstract(
                portserver::DEFAULT_ADDRESS
                    .trim_start_matches('@')
                    .to_owned(),
            ))
        });
    }
    if let (Some(path), Some(loaded)) = (&file, &loaded) {
        loaded
            .apply(&mut config, path)
            .map_err(anyhow::Error::from)?;
    }
    config.kernel_sync = kernel_sync;
    if let Some(name) = &args.authority {
        config.authority = (name != "none").then(|| name.clone());
    }
    if let Some(address) = args.portserver {
        config.portserver = Some(portserver::Endpoint::new(address));
    }
    if args.no_portserver {
        config.portserver = None;
    }
    if args.no_hold {
        config.hold = false;
    }
    if let Some(pool) = args.pool {
        config.pool = pool;
        config.pool_follows_ephemeral = false;
    }
    if let Some(n) = args.max_connections {
        config.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = args.listed_ahead {
        config.listed_ahead = n;
    }
    if let Some(secs) = args.grace {
        config.grace = std::time::Duration::from_secs(secs);
    }
    if let Some(secs) = args.idle_timeout {
        config.idle_timeout =
            berth_daemon::config_file::idle_timeout(secs).map_err(anyhow::Error::msg)?;
    }
    if args.check_config {
        match &file {
            Some(path) => outln!("{}: valid", path.display()),
            None => outln!("no configuration file; the defaults are valid"),
        }
        return Ok(ExitCode::SUCCESS);
    }

    // Before the runtime's threads exist: see the function's text.
    let tuned = berth_os::memory::tune_for_a_daemon();
    tracing::debug!(
        "{tuned} of 2 allocator settings made for a daemon (the environment chose any others)"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the daemon's runtime")?;
    let ready_stdout = args.ready_stdout;
    runtime
        .block_on(berth_daemon::serve(config, move || {
            if ready_stdout {
                signal_ready();
            }
        }))
        .map_err(anyhow::Error::from)?;
    Ok(ExitCode::SUCCESS)
}

/// Tells the command that started us that the socket is up, then lets go of its pipe so it
/// sees end-of-file: stdout goes where stderr goes (the log of a daemon started on demand).
fn signal_ready() {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(b"ready\n");
    let _ = out.flush();
    let _ = rustix::stdio::dup2_stdout(std::io::stderr());
}
