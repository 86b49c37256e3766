//! Arbitrary bytes into the portserver's request parser: never a panic, and a pid only for the
//! form docs/portserver.md and the parser's documentation give — the first line, digits
//! optionally surrounded by ASCII whitespace, a number that fits a pid's u32.

#![no_main]

use berth_protocol::portpicker::parse_request;
use libfuzzer_sys::fuzz_target;

/// The documented grammar, written independently of the parser.
fn documented(data: &[u8]) -> Option<u32> {
    let line = match data.iter().position(|&b| b == b'\n') {
        Some(end) => &data[..end],
        None => data,
    };
    let start = line.iter().position(|b| !b.is_ascii_whitespace())?;
    let end = line.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
    let digits = &line[start..end];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: u32 = 0;
    for d in digits {
        value = value.checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
    }
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(parse_request(data), documented(data), "{data:?}");
});
