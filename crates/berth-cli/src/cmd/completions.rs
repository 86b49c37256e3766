//! `berth completions SHELL`.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};
use crate::exit::Failure;

/// Prints the completion script for the shell.
pub fn run(args: CompletionsArgs) -> Result<ExitCode, Failure> {
    let mut cmd = Cli::command();
    // Into memory first: written straight to stdout, a reader that stops early would make
    // clap_complete panic.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "berth", &mut script);
    crate::output::out!("{}", String::from_utf8_lossy(&script));
    Ok(ExitCode::SUCCESS)
}
