//! `docs/protocol.md` lists every variant of the wire enums with its variant index — the number
//! postcard puts on the wire — so that a writer of another client finds every message there.
//!
//! The variant names and their order come from the types themselves
//! (`berth_protocol::variants`). A variant added to the code and not to the page fails this
//! test.

use std::path::Path;

use berth_protocol::variants::variant_names;
use berth_protocol::{ErrorDetail, Request, Response};
use serde::de::DeserializeOwned;

/// The variants of `T`, in declaration order (index = position).
fn variants<T: DeserializeOwned>(what: &str) -> &'static [&'static str] {
    let names =
        variant_names::<T>().unwrap_or_else(|| panic!("{what} is not deserialized as an enum"));
    assert!(!names.is_empty(), "{what} has no variants");
    names
}

fn protocol_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `doc` names `variant` with its index as the tables do: `` `Name` (i) `` or, with its
/// fields, `` `Name(…)` (i) `` / `` `Name { … }` (i) ``.
fn listed(doc: &str, variant: &str, index: usize) -> bool {
    let tail = format!("` ({index})");
    doc.match_indices(&format!("`{variant}")).any(|(at, _)| {
        let rest = &doc[at + 1 + variant.len()..];
        let Some(close) = rest.find('`') else {
            return false;
        };
        // Right after the name: the closing backtick, or the fields.
        let fields = &rest[..close];
        (fields.is_empty() || fields.starts_with('(') || fields.starts_with(" {"))
            && rest[close..].starts_with(&tail)
    })
}

fn assert_all_listed(what: &str, names: &[&str]) {
    let doc = protocol_md();
    let missing: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(index, name)| !listed(&doc, name, *index))
        .map(|(index, name)| format!("`{name}` ({index})"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/protocol.md does not list these {what} variants with their index: {}",
        missing.join(", ")
    );
}

#[test]
fn protocol_md_lists_every_request() {
    let names = variants::<Request>("Request");
    assert!(names.contains(&"AssociateAt"), "{names:?}");
    assert_all_listed("Request", names);
}

#[test]
fn protocol_md_lists_every_response() {
    assert_all_listed("Response", variants::<Response>("Response"));
}

#[test]
fn protocol_md_lists_every_error_detail() {
    assert_all_listed("ErrorDetail", variants::<ErrorDetail>("ErrorDetail"));
}

#[test]
fn the_check_tells_a_listed_variant_from_a_missing_one() {
    let doc =
        "| `Acquire` (1) | … | `Acquired(ReservationInfo)` (2) | `Stopping { pid: u32 }` (11) |";
    assert!(listed(doc, "Acquire", 1));
    assert!(listed(doc, "Acquired", 2));
    assert!(listed(doc, "Stopping", 11));
    // Wrong index, a longer name that merely starts with it, and an absent one.
    assert!(!listed(doc, "Acquire", 2));
    assert!(!listed(doc, "Acq", 1));
    assert!(!listed(doc, "AssociateAt", 15));
}
