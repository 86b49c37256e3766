//! Persistent reservations: create and delete (administrators, durable before the reply),
//! and lookup (everyone).

use berth_core::{Allowed, ErrorKind, PortRange, Protocol, Requester};
use berth_protocol::{Response, MAX_ALLOW_LIST};
use berth_store::PersistentRow;

use super::{error, info, now_ms, OsTokens, Shared};

impl Shared {
    pub(super) async fn create_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        allowed: Allowed,
        requester: &Requester,
    ) -> Response {
        if start == 0 {
            return error(
                ErrorKind::InvalidArgument,
                "a persistent reservation needs a specific range: give --start (wildcard persistent reservations do not exist)".into(),
            );
        }
        let range = match exact_range(start, count) {
            Ok(r) => r,
            Err(refusal) => return refusal,
        };
        if allowed.users.len() > MAX_ALLOW_LIST || allowed.groups.len() > MAX_ALLOW_LIST {
            return error(
                ErrorKind::InvalidArgument,
                format!("at most {MAX_ALLOW_LIST} users and {MAX_ALLOW_LIST} groups may be named; use a group"),
            );
        }
        if !requester.is_admin {
            return not_admin("create", requester);
        }
        let prober = self.prober;
        let created_at_ms = now_ms();
        // Into the table first, so that no acquire can take the ports while the store writes,
        // and queued to the store under the same lock, so that a delete of it cannot overtake
        // the create on its way to the database.
        let (reservation, durable) = {
            let mut table = self.table();
            let token = table.new_token(&mut OsTokens);
            let inserted = table.insert_persistent(
                token,
                protocol,
                range,
                allowed.clone(),
                created_at_ms,
                &mut |proto, r| prober.first_in_use(proto, r),
            );
            let reservation = match inserted {
                Ok(r) => r,
                Err(e) => return error(e.kind(), e.to_string()),
            };
            let durable = self.store.create(PersistentRow {
                token: reservation.token,
                protocol,
                range,
                allow_users: allowed.users,
                allow_groups: allowed.groups,
                created_at_ms,
                created_by_uid: requester.process.uid,
            });
            (reservation, durable)
        };
        if let Err(e) = durable.done().await {
            self.table().remove_persistent(reservation.token);
            return store_failed("create", &e);
        }
        tracing::info!(token = %reservation.token, "persistent {} {} created by uid {}", protocol, berth_core::describe(range), requester.process.uid);
        Response::PersistentCreated(info(&reservation, &requester.process, true, now_ms()))
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
            Err(refusal) => return refusal,
        };
        if !requester.is_admin {
            return not_admin("delete", requester);
        }
        let Some(token) = self
            .table()
            .find_persistent(protocol, range)
            .map(|r| r.token)
        else {
            return no_exact_match(protocol, range);
        };
        match self.store.delete(token).await {
            Ok(true) => {}
            // Not in the database: a concurrent delete of the same reservation got there first.
            Ok(false) => return no_exact_match(protocol, range),
            Err(e) => return store_failed("delete", &e),
        }
        match self.table().remove_persistent(token) {
            Some(r) => {
                tracing::info!(token = %r.token, "persistent {} {} deleted by uid {}", protocol, berth_core::describe(range), requester.process.uid);
                Response::PersistentDeleted(info(&r, &requester.process, true, now_ms()))
            }
            // A concurrent delete of the same reservation won.
            None => no_exact_match(protocol, range),
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
            Err(refusal) => return refusal,
        };
        match self.table().find_persistent(protocol, range) {
            Some(r) => {
                Response::PersistentFound(info(r, &requester.process, requester.is_admin, now_ms()))
            }
            None => no_exact_match(protocol, range),
        }
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

fn store_failed(what: &str, e: &str) -> Response {
    error(
        ErrorKind::Unavailable,
        format!("the daemon could not {what} the reservation in its database ({e}); nothing was changed — check the daemon's log and its database's disk"),
    )
}

/// The range `start..start+count`, or the invalid-argument answer.
fn exact_range(start: u16, count: u16) -> Result<PortRange, Response> {
    PortRange::new(start, count).map_err(|e| error(e.kind(), e.to_string()))
}
