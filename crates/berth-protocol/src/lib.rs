//! The berth wire contract, shared by the daemon and every client.
//!
//! A client connects to the daemon's Unix stream socket and exchanges length-prefixed frames:
//! a 4-byte big-endian payload length, then a [postcard] payload. The first frame each way is
//! the version handshake ([`Request::Hello`] → [`Response::Welcome`]); after it, requests are
//! answered in order, one response per request, and a client may pipeline. `docs/protocol.md`
//! in the repository describes the format for other implementers.
//!
//! # Layout
//! - [`version`]: the protocol version (defined once, here) and the handshake negotiation.
//! - [`message`]: [`Request`], [`Response`] and the values they carry.
//! - [`detail`]: [`ErrorDetail`], the numbers behind an error's message.
//! - [`authority`]: the authority beacon that makes a berth daemon the only one serving its
//!   network namespace: its name and its one-line answer (the sockets are `berth-os`'s).
//! - [`frame`]: [`FrameCodec`], bytes ↔ messages with a hard size limit per direction.
//!
//! postcard has no field tags, so the shape of every message is fixed for a protocol version:
//! a change of shape is a new version, and [`Request::Hello`] / [`Response::Welcome`] /
//! [`Response::Error`] keep their variant numbers and shapes forever so that any two versions
//! can at least tell each other that they are incompatible.

#![forbid(unsafe_code)]

pub mod authority;
pub mod detail;
mod facts;
pub mod frame;
pub mod ledger;
pub mod message;
pub mod paths;
pub mod portpicker;
pub mod variants;
pub mod version;

pub use berth_core::{ErrorKind, Kind, PortRange, Protocol, Token};
pub use detail::{
    BusyDetail, DaemonLimit, ErrorDetail, Holder, NameDetail, NamespacesDetail, PoolDetail,
    PortsDetail, QuotaDetail, QuotaWhat,
};
pub use frame::{FrameCodec, FrameError, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
pub use message::{
    AcquireOptions, Enforce, ExposureInfo, Hello, KernelListInfo, NameInfo, OwnerInfo, PortReport,
    PortserverInfo, QuotaInfo, RefusalInfo, Request, ReservationInfo, Response, ShareInfo,
    SocketInfo, StatusInfo, UsageInfo, UserUsage, Welcome, WireError, MAX_ALLOW_LIST, MAX_NAME_LEN,
    MAX_SOCKETS_REPORTED, MAX_WAIT_MS,
};
pub use version::{negotiate, VersionMismatch, MAGIC, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
