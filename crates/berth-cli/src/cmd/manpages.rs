//! `berth manpages DIR`.

use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{Cli, ManpagesArgs};
use crate::exit::Failure;

/// Writes `berth.1` and one page per command (`berth-daemon.1`, `berth-persistent-add.1`, …)
/// into the directory, generated from the command line itself.
pub fn run(args: ManpagesArgs) -> Result<ExitCode, Failure> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &args.dir)
        .with_context(|| format!("cannot write man pages into {}", args.dir.display()))?;
    eprintln!("wrote the berth man pages into {}", args.dir.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible command, as its page is named: `berth`, `berth-daemon`, …
    fn pages(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        let name = if prefix.is_empty() {
            cmd.get_name().to_owned()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub, &name, out);
        }
        out.push(name);
    }

    #[test]
    fn a_page_for_every_command() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("man1");
        run(ManpagesArgs {
            dir: target.clone(),
        })
        .unwrap();
        let mut expected = Vec::new();
        pages(&Cli::command(), "", &mut expected);
        for wanted in [
            "berth",
            "berth-daemon",
            "berth-persistent-add",
            "berth-manpages",
        ] {
            assert!(expected.iter().any(|p| p == wanted), "{expected:?}");
        }
        for page in &expected {
            let path = target.join(format!("{page}.1"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(text.contains(".TH"), "{page}: {text}");
        }
        let written = std::fs::read_dir(&target).unwrap().count();
        assert_eq!(written, expected.len(), "{expected:?}");
    }
}
