//! The errors of the node's core (`Node`, the chunk sink, upload ingest), by what a caller can
//! do about them. They become a gRPC status once, at the service edge
//! (`service::status_from_node`); the simulator matches on them directly.

use quiver_raft::{MembershipError, WriteError};

use crate::domain::DomainError;
use crate::state::AppError;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The request was refused for what it asks (by the state machine, or by a query that found
    /// nothing): its reason says what to fix.
    #[error("{0}")]
    Rejected(DomainError),
    /// An upload or request that is malformed before it reaches the state machine.
    #[error("{0}")]
    Invalid(String),
    /// The client stopped before the request was complete; nothing was registered.
    #[error("{0}")]
    Aborted(String),
    /// Bytes that do not match what the client said it sent, or a copy that no longer matches its
    /// hash.
    #[error("{0}")]
    DataLoss(String),
    /// No leader is known to this node, or the leader moved; retry.
    #[error(
        "this node is not the leader (leader: node {} at {}); retry",
        leader_id.map_or("unknown".into(), |id| id.to_string()),
        leader_addr.as_deref().unwrap_or("unknown")
    )]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// Not committed (or not confirmed by a quorum) in time; the write may still apply later.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// A peer the request needed could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// Fewer than W copies of a chunk are durable: the upload is not registered.
    #[error("{0}")]
    TooFewCopies(String),
    /// This node's own storage failed (state env, chunk store).
    #[error("{0}")]
    Storage(String),
    /// Consensus stopped on this node.
    #[error("raft failed: {0}")]
    Fatal(String),
    /// This node's data disk is under its free-space reserve: uploads wait for space.
    #[error("{0}")]
    DiskFull(String),
    /// The node is at one of its limits on concurrent work (uploads): retry later.
    #[error("{0}")]
    Busy(String),
    /// A membership change named a node that is not a member.
    #[error("node {0} is not a member of the cluster")]
    NotMember(u64),
    /// The request carries no credentials, or ones this cluster does not accept (unknown,
    /// revoked, expired): the message says which and what to do.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but lacks the role: the message names the principal, the action
    /// and the role that would allow it.
    #[error("{0}")]
    PermissionDenied(String),
    /// A membership change the cluster refuses as asked (the last voter, an id in use, a
    /// change already under way): its reason says what to do instead.
    #[error("{0}")]
    Membership(String),
}

impl From<MembershipError> for NodeError {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::Write(w) => w.into(),
            MembershipError::NotMember(id) => NodeError::NotMember(id),
            e @ (MembershipError::DuplicateId { .. }
            | MembershipError::LastVoter(_)
            | MembershipError::Other(_)) => NodeError::Membership(e.to_string()),
        }
    }
}

impl From<WriteError> for NodeError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotLeader {
                leader_id,
                leader_addr,
            } => NodeError::NotLeader {
                leader_id,
                leader_addr,
            },
            WriteError::NoQuorum(m) => NodeError::NoQuorum(m),
            e @ WriteError::Unreachable { .. } => NodeError::Unreachable(e.to_string()),
            WriteError::Fatal(m) => NodeError::Fatal(m),
            e @ WriteError::TooLarge { .. } => NodeError::Invalid(e.to_string()),
        }
    }
}

impl From<AppError> for NodeError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Domain(d) => NodeError::Rejected(d),
            AppError::Storage(s) => NodeError::Storage(format!("state storage: {s:#}")),
        }
    }
}

impl From<DomainError> for NodeError {
    fn from(e: DomainError) -> Self {
        NodeError::Rejected(e)
    }
}
