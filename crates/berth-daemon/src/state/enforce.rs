//! Enforced reservations: granted as usual, then given to a cgroup — one the daemon makes for
//! the asking process (`berth run --enforce`), or an existing one an administrator names — whose
//! tasks the kernel then keeps the ports for (`mirror/enforce.rs`).

use berth_core::{ErrorKind, PortRange, Requester, Reservation};
use berth_protocol::{Enforce, ReservationInfo, Response};

use super::{error, Shared};
use crate::session::peer::read_owner;

impl Shared {
    /// Refuses, before anything is granted, an enforced request that cannot be honoured:
    /// not-supported naming the reason (never a weaker reservation), or permission-denied
    /// for an existing cgroup asked by someone who does not administer the daemon.
    pub(super) fn check_enforce(
        &self,
        enforce: &Enforce,
        requester: &Requester,
    ) -> Result<(), Box<Response>> {
        if let Some(why) = self.enforcer.unavailable() {
            return Err(Box::new(error(
                ErrorKind::NotSupported,
                format!("enforce mode is not available from this daemon: {why}; without --enforce, berth run's ports are protected as docs/kernel.md, \"What each mode guarantees\", says, and --daemonizes keeps them for a daemonizing command"),
            )));
        }
        match enforce {
            Enforce::Cgroup(_) if !requester.is_admin => Err(Box::new(error(
                ErrorKind::PermissionDenied,
                "only an administrator of the daemon reserves ports for an existing cgroup; use `berth run --enforce -- CMD` to have the daemon make a cgroup for your command".into(),
            ))),
            Enforce::NewCgroup if requester.process.pid == 0 => Err(Box::new(error(
                ErrorKind::NotSupported,
                "the daemon cannot name your process (it is in another pid namespace), so it cannot move it into a cgroup of its own".into(),
            ))),
            _ => Ok(()),
        }
    }

    /// Gives the `granted` reservations to the cgroup `enforce` names: made for the asking
    /// process (which is moved there) or an existing one. On failure they are released and
    /// the client told why: nothing stays reserved.
    pub(super) async fn give_to_cgroup(
        &self,
        granted: Vec<(Reservation, Option<PortRange>)>,
        enforce: &Enforce,
        requester: &Requester,
    ) -> Result<Vec<(Reservation, Option<PortRange>)>, Box<Response>> {
        match self.cgroup_for(enforce, requester).await {
            Ok(id) => {
                let given = {
                    let mut table = self.table();
                    let mut changes = Vec::new();
                    let mut refused = None;
                    for (r, _) in &granted {
                        match table.give_to_cgroup(r.token, &requester.process, id) {
                            Ok(change) => changes.push(change),
                            Err(e) => refused = Some(e.to_string()),
                        }
                    }
                    let pending = self.publish(&mut table, changes);
                    (pending, refused)
                };
                let (pending, refused) = given;
                let settled = self.settle(pending).await;
                let why = match (settled, refused) {
                    (Ok(()), None) => {
                        let table = self.table();
                        return Ok(granted
                            .into_iter()
                            .map(|(r, moved)| (table.get(r.token).cloned().unwrap_or(r), moved))
                            .collect());
                    }
                    (Err(refused), _) => refused.to_string(),
                    (Ok(()), Some(why)) => why,
                };
                self.release_granted(&granted, requester);
                Err(Box::new(error(
                    ErrorKind::Unavailable,
                    format!("the daemon could not give the reservation to the cgroup ({why}); nothing was reserved — see the daemon's log, then retry"),
                )))
            }
            Err(refusal) => {
                self.release_granted(&granted, requester);
                Err(refusal)
            }
        }
    }

    /// The cgroup `enforce` names, made (and the asker moved there) if it is new; the
    /// programs attached first, outside the table lock.
    async fn cgroup_for(
        &self,
        enforce: &Enforce,
        requester: &Requester,
    ) -> Result<u64, Box<Response>> {
        let enforcer = self.enforcer.clone();
        let enforce = enforce.clone();
        let process = requester.process.clone();
        let made = tokio::task::spawn_blocking(move || {
            enforcer.ensure_attached().map_err(|e| {
                // Refused by the kernel for good (an exclusive program at an ancestor), or an
                // attach point that is not there: the mode is not available here, which is
                // what the client must hear, with who can change that.
                let lasting = matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound
                );
                if lasting {
                    (
                        ErrorKind::NotSupported,
                        format!("the daemon could not attach its enforcement programs: {e}; an administrator can change what this names (or enforce_attach, docs/configuration.md), or switch enforce mode off with berth enforce off"),
                    )
                } else {
                    (
                        ErrorKind::Unavailable,
                        format!("the daemon could not attach its enforcement programs: {e}; retry"),
                    )
                }
            })?;
            match &enforce {
                Enforce::NewCgroup => {
                    // The pid names the same process still (not a reused one).
                    let now = read_owner(process.pid, process.uid, process.gid).map_err(|e| {
                        (
                            ErrorKind::Unavailable,
                            format!("cannot read your process: {e}"),
                        )
                    })?;
                    if now.start_time != process.start_time {
                        return Err((ErrorKind::NotFound, "your process is gone".to_owned()));
                    }
                    enforcer.new_cgroup_for(process.pid).map_err(|e| {
                        // Outside the policed subtree: enforcement is not available to it.
                        let kind = if e.kind() == std::io::ErrorKind::Unsupported {
                            ErrorKind::NotSupported
                        } else {
                            ErrorKind::Unavailable
                        };
                        (
                            kind,
                            format!("the daemon could not make a cgroup for your process: {e}"),
                        )
                    })
                }
                Enforce::Cgroup(path) => enforcer.existing_cgroup(path).map_err(|e| {
                    let kind = match e.kind() {
                        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                        std::io::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
                        _ => ErrorKind::Unavailable,
                    };
                    (kind, e.to_string())
                }),
            }
        })
        .await;
        match made {
            Ok(Ok(id)) => Ok(id),
            Ok(Err((kind, message))) => Err(Box::new(error(kind, message))),
            Err(e) => Err(Box::new(error(
                ErrorKind::Unavailable,
                format!("the daemon's task failed: {e}"),
            ))),
        }
    }

    /// Releases reservations just granted whose hand-over failed.
    fn release_granted(&self, granted: &[(Reservation, Option<PortRange>)], requester: &Requester) {
        let mut table = self.table();
        let released: Vec<_> = granted
            .iter()
            .filter_map(|(r, _)| table.release(r.token, requester).ok())
            .collect();
        drop(self.publish(&mut table, released));
    }

    /// Switches enforce mode off (detached and unpinned now, enforced requests refused) or on
    /// again (re-attached for the cgroup-owned reservations there are); administrators only.
    pub(super) fn set_enforce(&self, on: bool, requester: &Requester) -> Response {
        if !requester.is_admin {
            return error(
                ErrorKind::PermissionDenied,
                "only an administrator of the daemon switches enforce mode off or on".into(),
            );
        }
        let switched = {
            // The table's lock first (the enforcer's is taken under it by the change stream).
            let table = self.table();
            let owned: Vec<Reservation> = table
                .iter()
                .filter(|r| r.cgroup().is_some())
                .cloned()
                .collect();
            self.enforcer.switch(on, &owned)
        };
        if let Err(e) = switched {
            let which = if on { "on" } else { "off" };
            return error(
                ErrorKind::Unavailable,
                format!("the daemon could not switch enforce mode {which}: {e}; see its log"),
            );
        }
        let peer = super::Peer {
            owner: requester.process.clone(),
            session: berth_core::SessionId(0),
            is_admin: requester.is_admin,
            version: berth_protocol::PROTOCOL_VERSION,
        };
        self.status(&peer)
    }

    /// `shown` with the cgroup that owns `r`, when it is shown its owner.
    pub(super) fn with_cgroup(
        &self,
        mut shown: ReservationInfo,
        r: &Reservation,
    ) -> ReservationInfo {
        if shown.owner.is_some() {
            shown.cgroup = r.cgroup().and_then(|id| self.enforcer.path_of(id));
        }
        shown
    }
}
