//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`): the crate-private
//! pieces that parse what clients send, behind a small public surface. Not an API.

use crate::session::inbound;

/// Descriptors accepted in one read.
pub const MAX_FDS_PER_READ: usize = inbound::MAX_FDS_PER_READ;

/// Descriptors received and not yet claimed by a request, at most.
pub const MAX_PENDING_FDS: usize = inbound::MAX_PENDING_FDS;

/// The session's descriptor and credential ledger, with descriptors and senders as numbers.
pub struct Ledger(inbound::Ledger<u32, u32>);

/// What a decoded frame gets from the ledger: its sender, and its descriptor if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The sender of the read in which the frame starts.
    pub sender: u32,
    /// The descriptor the frame carries.
    pub fd: Option<u32>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger(inbound::Ledger::new())
    }
}

impl Ledger {
    /// An empty ledger, as at the start of a connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// One read of `len` bytes from `sender` with `fds`; the refusal, for a message, if any.
    pub fn record(&mut self, len: usize, fds: Vec<u32>, sender: u32) -> Result<(), String> {
        self.0
            .record(len, fds, sender)
            .map_err(|r| format!("{r:?}"))
    }

    /// One decoded frame of `len` bytes, an associate or not.
    pub fn frame(&mut self, len: usize, associate: bool) -> Result<Claim, String> {
        self.0
            .frame(len, associate)
            .map(|c| Claim {
                sender: c.sender,
                fd: c.fd,
            })
            .map_err(|r| format!("{r:?}"))
    }

    /// Descriptors received and not yet claimed.
    pub fn pending(&self) -> usize {
        self.0.pending()
    }

    /// Whether the ledger's bookkeeping is consistent.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.0.check_invariants()
    }
}

/// The portserver's request parser: the pid of `"<digits>\n"`, or `None`.
pub fn portserver_parse_request(bytes: &[u8]) -> Option<u32> {
    crate::portserver::parse_request(bytes)
}
