//! Pure facts about each request that more than one program needs: its name in logs, and what
//! it would do with ports of the daemon's network namespace. Each is one exhaustive match, so
//! a new request is sorted here once, beside its definition, rather than in every program that
//! logs or screens requests.

use crate::Request;

impl Request {
    /// The request's name, as logs show it (kebab-case, stable).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello(_) => "hello",
            Request::Acquire { .. } | Request::AcquireWith { .. } => "acquire",
            Request::AcquireBoth { .. } => "acquire-both",
            Request::AssociateAt { .. } => "associate-at",
            Request::Release { .. } => "release",
            Request::List => "list",
            Request::Status => "status",
            Request::Associate { .. } => "associate",
            Request::CreatePersistent { .. } => "create-persistent",
            Request::DeletePersistent { .. } => "delete-persistent",
            Request::LookupPersistent { .. } => "lookup-persistent",
            Request::Reclaim { .. } => "reclaim",
            Request::Transfer { .. } => "transfer",
            Request::Why { .. } => "why",
            Request::Stop | Request::StopWith { .. } => "stop",
            Request::LookupName { .. } => "lookup-name",
            Request::WaitName { .. } => "wait-name",
            Request::ListNames => "list-names",
            Request::ForgetName { .. } => "forget-name",
            Request::Publish { .. } => "publish",
            Request::UsePersistent { .. } => "use-persistent",
            Request::SetEnforce { .. } => "set-enforce",
        }
    }

    /// What the request would do with ports of the daemon's network namespace, in a few words
    /// for a refusal ("reserve ports"), or `None` when it grants, uses or explains no port
    /// there. A daemon cannot serve such a request to a client of another network namespace:
    /// ports free or taken in one namespace mean nothing in another.
    pub fn port_use(&self) -> Option<&'static str> {
        match self {
            Request::Acquire { .. } | Request::AcquireWith { .. } | Request::AcquireBoth { .. } => {
                Some("reserve ports")
            }
            // About a port of the daemon's namespace, which would mislead a client elsewhere.
            Request::Why { .. } => Some("explain a port"),
            Request::Associate { .. } | Request::AssociateAt { .. } => Some("bind a socket"),
            Request::CreatePersistent { .. } => Some("create a persistent reservation"),
            Request::Reclaim { .. } => Some("re-claim a reservation"),
            Request::Transfer { .. } => Some("hand over a reservation"),
            Request::Publish { .. } => Some("name a bound port"),
            Request::Hello(_)
            | Request::Release { .. }
            | Request::List
            | Request::Status
            | Request::DeletePersistent { .. }
            | Request::LookupPersistent { .. }
            | Request::Stop
            | Request::StopWith { .. }
            | Request::LookupName { .. }
            | Request::UsePersistent { .. }
            | Request::SetEnforce { .. }
            | Request::ListNames
            | Request::ForgetName { .. } => None,
            // Whether a port is bound is a fact of the daemon's namespace.
            Request::WaitName { bound: true, .. } => Some("wait for a bound port"),
            Request::WaitName { bound: false, .. } => None,
        }
    }
}
