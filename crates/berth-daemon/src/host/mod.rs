//! What the daemon asks the host about ports: whether one is in use (`probe`), who has it
//! bound (`diag`), and checking and binding a client's socket from a reservation
//! (`associate`).

pub(crate) mod associate;
pub(crate) mod diag;
pub(crate) mod probe;
