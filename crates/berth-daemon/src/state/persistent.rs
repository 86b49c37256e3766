//! Persistent reservations: create and delete (administrators, durable before the reply),
//! and lookup (everyone).

use berth_core::{Allowed, ErrorKind, Label, Name, PortRange, Protocol, Requester};
use berth_protocol::{Response, MAX_ALLOW_LIST};

use super::{error, info, now_ms, OsTokens, Shared};

impl Shared {
    pub(super) async fn create_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        (allowed, label, name): (Allowed, &str, &str),
        requester: &Requester,
    ) -> Response {
        if start == 0 {
            return error(
                ErrorKind::InvalidArgument,
                "a persistent reservation covers a specific range (a start from 1 to 65535); start 0 asks for any free block, which persistent reservations do not support".into(),
            );
        }
        let range = match exact_range(start, count) {
            Ok(r) => r,
            Err(refusal) => return *refusal,
        };
        if allowed.users.len() > MAX_ALLOW_LIST || allowed.groups.len() > MAX_ALLOW_LIST {
            return error(
                ErrorKind::InvalidArgument,
                format!("at most {MAX_ALLOW_LIST} users and {MAX_ALLOW_LIST} groups may be named; use a group"),
            );
        }
        let label = match Label::parse(label) {
            Ok(label) => label,
            Err(e) => return error(e.kind(), e.to_string()),
        };
        let name = match Name::parse(name) {
            Ok(name) => name,
            Err(e) => return error(e.kind(), e.to_string()),
        };
        if !requester.is_admin {
            return not_admin("create", requester);
        }
        let mut probes = self.prober.probes();
        // Into the table and onto the stream under one lock: no acquire can take the ports
        // while the store writes, and a delete of it cannot overtake the create on its way to
        // the database. Answered once durable; undone if it cannot be made durable.
        let (created, pending) = {
            let mut table = self.table();
            let token = table.new_token(&mut OsTokens);
            let change = match table.create_persistent(
                token,
                protocol,
                range,
                (allowed, label, name),
                requester.process.uid,
                now_ms(),
                &mut |proto, r| probes.first_in_use(proto, r),
            ) {
                Ok(change) => change,
                Err(e) => {
                    return match probes.shortage_answer() {
                        Some(message) => error(ErrorKind::Unavailable, message),
                        None => error(e.kind(), e.to_string()),
                    }
                }
            };
            let created = change.reservation().cloned();
            (created, self.publish(&mut table, vec![change]))
        };
        if let Err(why) = self.settle(pending).await {
            return store_failed("create", &why);
        }
        match created {
            Some(r) => Response::PersistentCreated(info(&r, &requester.process, true, now_ms())),
            None => store_failed("create", &"the reservation went missing"),
        }
    }

    pub(super) async fn delete_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        requester: &Requester,
    ) -> Response {
        let range = match exact_range(start, count) {
            Ok(r) => r,
            Err(refusal) => return *refusal,
        };
        if !requester.is_admin {
            return not_admin("delete", requester);
        }
        // Out of the table at once (so a concurrent delete finds nothing), answered once the
        // deletion is durable, and put back if it cannot be made durable.
        let (deleted, pending) = {
            let mut table = self.table();
            let Some(change) = table.delete_persistent(protocol, range) else {
                return no_exact_match(protocol, range);
            };
            let deleted = change.reservation().cloned();
            (deleted, self.publish(&mut table, vec![change]))
        };
        if let Err(why) = self.settle(pending).await {
            return store_failed("delete", &why);
        }
        match deleted {
            Some(r) => Response::PersistentDeleted(info(&r, &requester.process, true, now_ms())),
            None => store_failed("delete", &"the reservation went missing"),
        }
    }

    pub(super) fn lookup_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        requester: &Requester,
    ) -> Response {
        let range = match exact_range(start, count) {
            Ok(r) => r,
            Err(refusal) => return *refusal,
        };
        match self.table().find_persistent(protocol, range) {
            Some(r) => {
                Response::PersistentFound(info(r, &requester.process, requester.is_admin, now_ms()))
            }
            None => no_exact_match(protocol, range),
        }
    }
}

impl Shared {
    /// The persistent reservation of exactly `(start, count)`, for an administrator or a
    /// user its allow list admits (see `Request::UsePersistent`).
    pub(super) fn use_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        requester: &Requester,
    ) -> Response {
        let range = match exact_range(start, count) {
            Ok(r) => r,
            Err(refusal) => return *refusal,
        };
        let found = self.table().find_persistent(protocol, range).cloned();
        let Some(r) = found else {
            return error(
                ErrorKind::NotFound,
                format!("no persistent reservation covers exactly {protocol} {}; `berth persistent list` shows them", berth_core::describe(range)),
            );
        };
        let admitted = requester.is_admin
            || matches!(&r.lease, berth_core::Lease::Persistent { allowed, .. }
                if allowed.admits(requester.process.uid, &crate::session::peer::groups_of(&requester.process)));
        if !admitted {
            return error(
                ErrorKind::PermissionDenied,
                format!("{protocol} {} is a persistent reservation ({}) that uid {} may not use: ask an administrator to allow your user or group (`berth persistent list` shows who may)", berth_core::describe(range), r.token, requester.process.uid),
            );
        }
        Response::PersistentFound(info(&r, &requester.process, requester.is_admin, now_ms()))
    }
}

fn not_admin(what: &str, requester: &Requester) -> Response {
    error(
        ErrorKind::PermissionDenied,
        format!(
            "only administrators (root, the daemon's user, or the configured admin group) may {what} persistent reservations; uid {} is not one — run the command as root (e.g. with sudo)",
            requester.process.uid
        ),
    )
}

fn no_exact_match(protocol: Protocol, range: PortRange) -> Response {
    error(
        ErrorKind::NotFound,
        format!(
            "no persistent {protocol} reservation covers exactly {}; `berth persistent list` shows them (start and count must match exactly)",
            berth_core::describe(range)
        ),
    )
}

fn store_failed(what: &str, e: &dyn std::fmt::Display) -> Response {
    error(
        ErrorKind::Unavailable,
        format!("the daemon could not {what} the reservation in its database ({e}); nothing was changed — check the daemon's log and its database's disk"),
    )
}

/// The range `start..start+count`, or the invalid-argument answer.
fn exact_range(start: u16, count: u16) -> Result<PortRange, Box<Response>> {
    PortRange::new(start, count).map_err(|e| Box::new(error(e.kind(), e.to_string())))
}
