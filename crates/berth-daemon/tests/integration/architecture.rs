//! ARCHITECTURE.md stays a true map: every `Request` variant is named there with the file that
//! handles it, every consumer of the change stream with the file it lives in, every kernel
//! interface (a module of `berth-os`) by its file, and every source path the page names exists. A request or consumer added to the code and not to the map, or
//! a file moved without the map, fails here.

use std::path::{Path, PathBuf};

use berth_protocol::variants::variant_names;
use berth_protocol::Request;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn architecture_md() -> String {
    let path = root().join("ARCHITECTURE.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The backticked tokens of `line` that look like source paths: containing a `/` and ending in
/// `.rs` or `/`.
fn paths_in(line: &str) -> Vec<&str> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| t.contains('/') && (t.ends_with(".rs") || t.ends_with('/')))
        .filter(|t| !t.contains(' ') && !t.contains('<') && !t.contains('*'))
        .collect()
}

/// Where a path the page names may be: from the repository root, from `crates/`
/// (`berth-core/src/table.rs`), or inside a crate's `src/` (the page names files within a
/// crate by their path there, e.g. `session/peer.rs`).
fn exists(path: &str) -> bool {
    let root = root();
    if root.join(path).exists() || root.join("crates").join(path).exists() {
        return true;
    }
    std::fs::read_dir(root.join("crates"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|krate| krate.path().join("src").join(path).exists())
}

#[test]
fn every_request_variant_is_mapped_to_a_file_that_exists() {
    let doc = architecture_md();
    let variants = variant_names::<Request>().expect("Request is an enum");
    let mut missing = Vec::new();
    for variant in variants {
        let name = format!("`Request::{variant}`");
        let mapped = doc.lines().any(|line| {
            line.starts_with(&format!("| {name} |"))
                && paths_in(line)
                    .iter()
                    .any(|p| p.starts_with("crates/") && exists(p))
        });
        if !mapped {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md has no table row `| `Request::X` | crates/…/file.rs |` naming an existing file for: {}",
        missing.join(", ")
    );
}

/// Every `impl … Consumer for …` of the daemon's change stream, as (file, type).
fn consumers() -> Vec<(String, String)> {
    let src = root().join("crates/berth-daemon/src");
    let mut found = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("read the daemon's sources")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines() {
                // `impl Consumer for Journal {`, or under another name (`impl ChangeConsumer for`).
                let Some(rest) = line.strip_prefix("impl ") else {
                    continue;
                };
                let Some((trait_name, ty)) = rest.split_once(" for ") else {
                    continue;
                };
                if trait_name.ends_with("Consumer") && !trait_name.contains('<') {
                    let ty = ty.trim_end_matches(" {").trim().to_owned();
                    let file = path
                        .strip_prefix(root())
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .replace("crates/berth-daemon/../../", "");
                    found.push((file, ty));
                }
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_change_stream_consumer_is_mapped_to_its_file() {
    let doc = architecture_md();
    let consumers = consumers();
    assert!(
        consumers.len() >= 4,
        "the scan found too few consumers: {consumers:?}"
    );
    let missing: Vec<String> = consumers
        .iter()
        .filter(|(file, ty)| {
            let file = file.trim_start_matches("./");
            !doc.lines().any(|line| {
                line.starts_with("| ")
                    && line.contains(&format!("`{file}`"))
                    && line.contains(ty.as_str())
            })
        })
        .map(|(file, ty)| format!("{ty} in {file}"))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's consumer table lacks (a row naming the type and `crates/…` file): {}",
        missing.join(", ")
    );
}

#[test]
fn every_kernel_interface_is_on_the_map() {
    let doc = architecture_md();
    let src = root().join("crates/berth-os/src");
    let mut missing: Vec<String> = std::fs::read_dir(&src)
        .expect("read berth-os's sources")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.ends_with(".rs") && name != "lib.rs")
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's berth-os row does not name these modules: {}",
        missing.join(", ")
    );
}

#[test]
fn every_source_path_the_page_names_exists() {
    let doc = architecture_md();
    let gone: Vec<&str> = doc
        .lines()
        .flat_map(paths_in)
        .filter(|p| !exists(p))
        .collect();
    assert!(
        gone.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {}",
        gone.join(", ")
    );
}

#[test]
fn the_path_check_tells_a_path_from_prose() {
    let line = "| `Request::List` | `crates/berth-daemon/src/state/views.rs` (`list`), `x → y` |";
    assert_eq!(
        paths_in(line),
        vec!["crates/berth-daemon/src/state/views.rs"]
    );
    assert!(exists("crates/berth-daemon/src/state/views.rs"));
    assert!(exists("session/peer.rs"));
    assert!(!exists("crates/berth-daemon/src/state.rs"));
}
