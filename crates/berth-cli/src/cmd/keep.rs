//! The keeper of `berth run --daemonizes`: a child subreaper that starts the command, reports
//! its pid and then its exit status to `berth run` (which exits with it at once), and lives on
//! until the last of the command's descendants has exited — daemonized ones included: an
//! orphan is re-parented to its nearest subreaper, so the keeper reaps every one. `berth run`
//! hands the reservations to the keeper, so they live exactly that long.
//!
//! Reports, one line each on the descriptor named by `--status-fd`: `pid N`, then `exit C`,
//! `signal S`, or `notfound MESSAGE` / `error MESSAGE` when the command could not start.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use crate::cli::KeepArgs;
use crate::exit::Failure;

/// Runs the keeper.
pub fn run(args: KeepArgs) -> Result<ExitCode, Failure> {
    let fd = berth_os::inherited::take(args.status_fd).map_err(|e| {
        anyhow::anyhow!(
            "berth keep is started by `berth run --daemonizes`, which passes it a descriptor: {e}"
        )
    })?;
    // Ours alone: a command that inherited it would hold `berth run`'s reading open.
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| anyhow::anyhow!("cannot keep the report descriptor to the keeper: {e}"))?;
    let mut reports = std::fs::File::from(fd);
    // Orphaned descendants come to us, not to init.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| anyhow::anyhow!("cannot become a child subreaper: {e}"))?;
    // A session of our own: the terminal's Ctrl-C or hang-up for `berth run` does not end
    // the keeper (`berth run` passes its signals on to the command).
    let _ = rustix::process::setsid();
    let Some((program, rest)) = args.command.split_first() else {
        return Err(anyhow::anyhow!("no command given after --").into());
    };
    let mut launcher = match std::process::Command::new(program).args(rest).spawn() {
        Ok(child) => child,
        Err(e) => {
            // As without --daemonizes: 127 for a command not found, 126 for one not runnable.
            let what = if e.kind() == std::io::ErrorKind::NotFound {
                "notfound"
            } else {
                "error"
            };
            let _ = writeln!(
                reports,
                "{what} cannot run {:?}: {e}",
                program.to_string_lossy()
            );
            return Ok(ExitCode::from(crate::exit::CANNOT_EXECUTE));
        }
    };
    let _ = writeln!(reports, "pid {}", launcher.id());
    // Our standard descriptors are `berth run`'s: held open by the keeper, they would keep a
    // caller reading the command's output waiting for as long as the background lives.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
    let line = match launcher.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            (None, None) => "exit 1".to_owned(),
        },
        Err(e) => format!("error waiting for the command: {e}"),
    };
    let _ = writeln!(reports, "{line}");
    drop(reports);
    // Every descendant left is ours to reap; the last one's exit ends the reservations.
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some(_)) => {}
            Err(rustix::io::Errno::INTR) => {}
            Ok(None) | Err(_) => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}
