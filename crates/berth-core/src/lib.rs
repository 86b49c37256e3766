//! berth's pure core: the port-reservation model (docs/model.md) with no I/O.
//!
//! Everything here is plain data and decisions: which ports a request gets, whether it
//! conflicts, who may release what. The daemon supplies the outside world through small
//! seams — a [`TokenSource`] for random tokens and a probe closure that says whether a port is
//! in use on the host — so the core can be tested exhaustively against a simple model.
//!
//! # Layout
//! - [`range`]: [`Protocol`], [`PortRange`], [`RangeRequest`] and [`Pool`] — validated values.
//! - [`token`]: [`Token`], the non-zero 64-bit reservation name, and [`TokenSource`].
//! - [`owner`]: [`Owner`], [`Holder`] and [`Requester`] — who holds and who asks.
//! - [`label`]: [`Label`], the free text a reservation may carry for people to read.
//! - [`text`]: which characters of text from outside may be shown to people as they are.
//! - [`name`]: [`Name`], how programs find a reservation's ports and the daemon keeps a
//!   name's block stable.
//! - [`error`]: [`ErrorKind`] (the kinds of docs/errors.md with their errno) and the typed errors.
//! - [`freemap`]: a segment tree over one protocol's 65,536 ports that finds free blocks in
//!   O(log 65,536), whatever the number of live reservations.
//! - [`table`]: [`Table`], the allocation state of both protocols.
//! - [`policy`]: [`PrivilegedPorts`], who may bind ports below the unprivileged start.
//! - [`portset`]: [`PortSet`], a set of ports in the kernel's list syntax
//!   (`ip_local_reserved_ports`).
//! - [`reserved_list`]: [`ListBooks`], whose entries of that list are berth's and what to
//!   write so that it equals the table, in one kernel chunk.

#![forbid(unsafe_code)]

pub mod error;
pub mod freemap;
pub mod label;
pub mod name;
pub mod owner;
pub mod policy;
pub mod portset;
pub mod range;
pub mod reserved_list;
pub mod table;
pub mod text;
pub mod token;

pub use error::{describe, AcquireError, ErrorKind, RangeError, ReleaseError, UseError};
pub use label::{Label, LabelError, MAX_LABEL_LEN};
pub use name::{Name, NameError, MAX_NAME_LEN};
pub use owner::{Holder, Owner, Requester, SessionId};
pub use policy::{PrivilegedDenied, PrivilegedPorts};
pub use portset::{BadPortList, PortSet};
pub use range::{Pool, PortRange, Protocol, RangeRequest};
pub use reserved_list::{
    Extras, Figures as ListFigures, ListBooks, Plan as ListPlan, Write as ListWrite,
};
pub use table::{
    Allowed, BindPlan, Bond, Change, Constraints, Ending, FoundInUse, Kind, Lease, NameScope,
    PortUse, Quota, QuotaKind, Reservation, Table, Usage, UseRequest,
};
pub use token::{Token, TokenSource};
