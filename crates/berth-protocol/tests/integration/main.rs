//! The protocol's integration tests, one binary (one link) for the crate: golden encodings,
//! decoding any bytes, and the docs' list of requests.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod decode_any_bytes;
mod docs;
mod golden;
