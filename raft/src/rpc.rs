//! The peer RPC's vocabulary, apart from any wire and any node: the request messages peers send
//! each other (forwarding, read index, membership, status, leadership transfer), the error a
//! write or read answers with ([`WriteError`]), and why a request was not processed at all
//! ([`PeerRefusal`]). The sending side (`node.rs`, `cluster.rs`), the receiving side
//! (`handler.rs`), the group commit (`batch.rs`) and the gRPC server (`server.rs`) all speak it,
//! so it depends on none of them.

use std::time::Duration;

use openraft::error::ForwardToLeader;
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::NodeId;

/// Why a write or a linearizable read could not be served here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum WriteError {
    #[error("not the leader; leader is node {leader_id:?} at {leader_addr:?}")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("raft fatal error: {0}")]
    Fatal(String),
    #[error("cannot reach node {node_id} at {addr}: {detail}")]
    Unreachable {
        node_id: NodeId,
        addr: String,
        detail: String,
    },
    /// The command is larger than [`crate::COMMAND_BYTES_MAX`] once encoded: it never enters
    /// the log.
    #[error(
        "the command is {bytes} bytes once encoded, over the limit of {max} bytes per command: \
         send less in one request (shorter fields, fewer tags, or a smaller manifest)"
    )]
    TooLarge { bytes: usize, max: usize },
}

impl WriteError {
    pub(crate) fn not_leader(f: ForwardToLeader<NodeId, BasicNode>) -> Self {
        WriteError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        }
    }
}

/// Why a peer request was not processed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    /// The request was addressed to another node id.
    #[error("{0}")]
    WrongTarget(String),
    /// The request claims a sender other than the node its certificate names (decision 0017).
    #[error("{0}")]
    WrongSender(String),
    /// The request could not be decoded (or its body does not fit its method).
    #[error("{0}")]
    Undecodable(String),
    /// The reply could not be encoded.
    #[error("{0}")]
    Internal(String),
}

/// Peer RPC `Forward`: a client write for the leader. Serialised with `C = &Command`.
#[derive(Serialize, Deserialize)]
pub(crate) struct ForwardRequest<C> {
    pub(crate) cmd: C,
    pub(crate) timeout_ms: u64,
}

/// Peer RPC `ReadIndex`.
#[derive(Serialize, Deserialize)]
pub(crate) struct ReadIndexRequest {
    pub(crate) timeout_ms: u64,
}

/// Peer RPC `AddMember`. `forwarded`: sent by a member to the leader (act here or refuse);
/// otherwise sent by a joining node to any member (route it to the leader). `fresh`: the node
/// being added has empty storage (it is joining for the first time).
#[derive(Serialize, Deserialize)]
pub(crate) struct AddMemberRequest {
    pub(crate) node_id: NodeId,
    pub(crate) addr: String,
    pub(crate) forwarded: bool,
    #[serde(default)]
    pub(crate) fresh: bool,
    pub(crate) timeout_ms: u64,
}

/// Peer RPC `RemoveMember`, sent to the leader.
#[derive(Serialize, Deserialize)]
pub(crate) struct RemoveMemberRequest {
    pub(crate) node_id: NodeId,
    pub(crate) timeout_ms: u64,
}

/// Peer RPC `Status`: the receiver's own view, without asking anyone else.
#[derive(Serialize, Deserialize)]
pub(crate) struct StatusRequest {}

/// Peer RPC `TransferLeader`, sent to the leader.
#[derive(Serialize, Deserialize)]
pub(crate) struct TransferLeaderRequest {
    pub(crate) to: Option<NodeId>,
    pub(crate) timeout_ms: u64,
}

/// Cap on a time budget that arrived over the wire.
pub(crate) fn budget(timeout_ms: u64, max: Duration) -> Instant {
    Instant::now() + Duration::from_millis(timeout_ms).min(max)
}
