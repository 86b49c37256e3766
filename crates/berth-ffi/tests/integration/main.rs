//! libberth's integration tests, one binary (one link) for the crate: the C tests (`c`,
//! plain and sanitized), errno and kind mapping (`errno`), and the generated header (`header`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod c;
mod errno;
mod header;
