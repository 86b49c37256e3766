//! One module per subcommand; [`dispatch`] picks the runtime each needs. [`listen`] makes the
//! sockets of `berth run --listen` and is the step that passes them to its command.

mod completions;
mod daemon;
mod enforce;
mod keep;
pub mod listen;
mod manpages;
mod names;
mod persistent;
mod query;
mod run;
mod why;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::exit::Failure;

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Daemon(args) => daemon::run(args),
        Command::Completions(args) => completions::run(args),
        Command::Manpages(args) => manpages::run(args),
        Command::Run(args) => current_thread()?.block_on(run::run(args)),
        Command::List(args) => current_thread()?.block_on(query::list(args)),
        Command::Status(args) => current_thread()?.block_on(query::status(args)),
        Command::Release(args) => current_thread()?.block_on(query::release(args)),
        Command::Why(args) => current_thread()?.block_on(why::run(args)),
        Command::Port(args) => current_thread()?.block_on(names::port(args)),
        Command::Wait(args) => current_thread()?.block_on(names::wait(args)),
        Command::Names(args) => current_thread()?.block_on(names::list(args)),
        Command::Forget(args) => current_thread()?.block_on(names::forget(args)),
        Command::Publish(args) => current_thread()?.block_on(names::publish(args)),
        Command::Stop { restore } => current_thread()?.block_on(query::stop(restore)),
        Command::Persistent(cmd) => current_thread()?.block_on(persistent::run(cmd)),
        Command::Enforce(cmd) => current_thread()?.block_on(enforce::run(cmd)),
        Command::Keep(args) => keep::run(args),
    }
}

/// Client commands do one thing at a time: a single-threaded runtime is enough.
fn current_thread() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
