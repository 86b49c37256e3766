//! The one place a request is dispatched: every `Request` variant is matched here, and sent to
//! the module of its family (`runtime`, `persistent`, `why`, `views`) with the requester the
//! kernel named.

use super::*;

impl Shared {
    pub(super) async fn answer(&self, inbound: Inbound, peer: &Peer) -> Response {
        let Inbound {
            request,
            sender,
            fd,
            lost_fd: _,
        } = inbound;
        match request {
            Request::Acquire {
                protocol,
                start,
                count,
            } => {
                // The reservation belongs to the process that sent the request — a forked
                // child writing on its parent's connection acquires for itself.
                let requester = self.requester(peer, sender);
                let options = AcquireOptions::default();
                let response = self
                    .acquire(protocol, start, count, &options, &requester, peer)
                    .await;
                self.name_port_user(response, &requester).await
            }
            Request::AcquireWith {
                protocol,
                start,
                count,
                options,
            } => {
                let requester = self.requester(peer, sender);
                let response = self
                    .acquire(protocol, start, count, &options, &requester, peer)
                    .await;
                self.name_port_user(response, &requester).await
            }
            Request::AcquireBoth {
                start,
                count,
                options,
            } => {
                let requester = self.requester(peer, sender);
                self.acquire_both(start, count, &options, &requester, peer)
                    .await
            }
            Request::Why { protocol, port } => self.why(protocol, port, peer).await,
            Request::Release { token } => self.release(token, &self.requester(peer, sender)).await,
            Request::Associate { token, address } => {
                self.associate(token, address, None, fd, &self.requester(peer, sender))
                    .await
            }
            Request::AssociateAt {
                token,
                address,
                port,
            } => {
                self.associate(
                    token,
                    address,
                    Some(port),
                    fd,
                    &self.requester(peer, sender),
                )
                .await
            }
            Request::Reclaim { token } => {
                self.reclaim(token, &self.requester(peer, sender), peer)
                    .await
            }
            Request::Transfer { token, pid } => {
                self.transfer(token, pid, &self.requester(peer, sender))
                    .await
            }
            Request::CreatePersistent {
                protocol,
                start,
                count,
                allow_users,
                allow_groups,
                label,
                name,
            } => {
                let allowed = Allowed {
                    users: allow_users,
                    groups: allow_groups,
                };
                let requester = self.requester(peer, sender);
                self.create_persistent(protocol, start, count, (allowed, &label, &name), &requester)
                    .await
            }
            Request::LookupName { user, name } => {
                self.lookup_name(user, &name, &self.requester(peer, sender))
            }
            Request::WaitName {
                user,
                name,
                bound,
                timeout_ms,
            } => {
                self.wait_name(
                    (user, &name, bound, timeout_ms),
                    &self.requester(peer, sender),
                )
                .await
            }
            Request::ListNames => self.list_names(&self.requester(peer, sender)),
            Request::ForgetName { name } => self.forget_name(&name, &self.requester(peer, sender)),
            Request::UsePersistent {
                protocol,
                start,
                count,
            } => self.use_persistent(protocol, start, count, &self.requester(peer, sender)),
            Request::Publish {
                name,
                protocol,
                port,
            } => {
                self.publish_port(&name, protocol, port, &self.requester(peer, sender))
                    .await
            }
            Request::DeletePersistent {
                protocol,
                start,
                count,
            } => {
                let requester = self.requester(peer, sender);
                self.delete_persistent(protocol, start, count, &requester)
                    .await
            }
            Request::LookupPersistent {
                protocol,
                start,
                count,
            } => self.lookup_persistent(protocol, start, count, &self.requester(peer, sender)),
            Request::SetEnforce { on } => {
                let answer = self.set_enforce(on, &self.requester(peer, sender));
                // Switched on: the owners' sockets bound meanwhile are claimed before the
                // answer, so that their bind(0) is steered around them at once.
                if on && !matches!(answer, Response::Error(_)) {
                    let enforcer = self.enforcer_handle();
                    let _ = tokio::task::spawn_blocking(move || enforcer.reconcile_claims()).await;
                }
                answer
            }
            Request::List => self.list(peer),
            Request::Status => self.status(peer),
            Request::Hello(_) => error(
                ErrorKind::InvalidArgument,
                "the handshake was already done on this connection; send Hello only once, first"
                    .into(),
            ),
            // The session answers it: stopping is the server's business, not the table's.
            Request::Stop | Request::StopWith { .. } => error(
                ErrorKind::InvalidArgument,
                "a stop request reached the table; it is answered by the session".into(),
            ),
        }
    }

    /// Who sent a request: the session's owner, unless the kernel says another process sent
    /// it (a forked child writing on an inherited connection).
    pub(super) fn requester(&self, peer: &Peer, sender: Option<Sender>) -> Requester {
        let process = match sender {
            // pid 0: the kernel could not name the sender in our pid namespace; the session's
            // owner (whom the kernel named at connect time) answers for the connection.
            Some(s) if s.cred.pid != 0 && s.cred.pid != peer.owner.pid => {
                let now = process_owner(s.cred.pid, s.cred.uid, s.cred.gid);
                match s.start_time {
                    // The sender, pinned by its pidfd when its bytes were read, is not the
                    // process that has its pid now: it has exited.
                    Some(pinned) if pinned != now.start_time => gone(now),
                    _ => now,
                }
            }
            _ => peer.owner.clone(),
        };
        let is_admin = if process.pid == peer.owner.pid {
            peer.is_admin
        } else {
            self.is_admin(&process)
        };
        Requester { process, is_admin }
    }
}
