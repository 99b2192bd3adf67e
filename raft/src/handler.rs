//! The receiving side of the peer RPC, apart from any wire: one request (method and body) in,
//! the reply's JSON bytes out. The gRPC server (`server.rs`) and the simulator's network both
//! hand requests to [`RaftNode::handle_peer`], so forwarding, read index, membership and
//! openraft's RPCs run the same code under either.
//!
//! Raft RPCs go straight to openraft; cluster operations act on this node only (a request that
//! needs the leader and reaches a follower is answered `NotLeader`, and the sender retries) —
//! except `AddMember` from a joining node, which is routed to the leader from here, since the
//! joiner knows only one address. Replies are JSON `Result`s; a [`PeerRefusal`] means the
//! request was not processed (undecodable, addressed to another node id, or this node is gone).
//!
//! When the wire knows the sender (the gRPC server, from the client certificate: decision 0017)
//! what a request says about its sender must agree: a leader's AppendEntries and
//! InstallSnapshot and a candidate's Vote carry that node's id in their vote, and a joining
//! node's own AddMember names the node to add. Anything else is [`PeerRefusal::WrongSender`].

use std::sync::Arc;
use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::{LEADER_TRANSFER_TIMEOUT, MEMBERSHIP_CHANGE_TIMEOUT};
use crate::network::SnapshotChunkHeader;
use crate::node::{Inner, RaftNode};
use crate::rpc::{
    budget, AddMemberRequest, ForwardRequest, PeerRefusal, ReadIndexRequest, RemoveMemberRequest,
    StatusRequest, TransferLeaderRequest, WriteError,
};
use crate::server::PeerHandler;
use crate::transport::{Body, Method};
use crate::{App, NodeId, TypeConfig};

/// Longest a forwarded write or read-index request may ask the leader to wait.
const FORWARDED_TIMEOUT_MAX: Duration = Duration::from_secs(60);

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, PeerRefusal> {
    serde_json::from_slice(bytes).map_err(|e| {
        PeerRefusal::Undecodable(format!(
            "undecodable {what} (a different quiver-raft version?): {e}"
        ))
    })
}

fn reply<T: Serialize>(value: &T) -> Result<Vec<u8>, PeerRefusal> {
    serde_json::to_vec(value).map_err(|e| PeerRefusal::Internal(format!("encode reply: {e}")))
}

/// Refuses a request whose claimed sender `claimed` is not `from`, the node its certificate
/// names (`None`: the wire does not know the sender).
fn check_sender(
    from: Option<NodeId>,
    claimed: Option<NodeId>,
    what: &str,
) -> Result<(), PeerRefusal> {
    match from {
        Some(from) if claimed != Some(from) => Err(PeerRefusal::WrongSender(format!(
            "{what} names node {claimed:?} as its sender, but comes with the certificate of node \
             {from}"
        ))),
        _ => Ok(()),
    }
}

impl<A: App> RaftNode<A> {
    /// Serve one peer request that arrived for this node from a sender the wire does not know
    /// (the simulator's network). See [`RaftNode::handle_peer_from`].
    pub async fn handle_peer(&self, method: Method, body: Body) -> Result<Vec<u8>, PeerRefusal> {
        self.handle_peer_from(None, method, body).await
    }

    /// Serve one peer request that arrived for this node from node `from`, as its certificate
    /// names it (see the module docs).
    pub async fn handle_peer_from(
        &self,
        from: Option<NodeId>,
        method: Method,
        body: Body,
    ) -> Result<Vec<u8>, PeerRefusal> {
        match (method, body) {
            (Method::AppendEntries, Body::Raft { target, json }) => {
                self.check_target(target)?;
                let rpc: AppendEntriesRequest<TypeConfig<A>> = decode(&json, "AppendEntries")?;
                check_sender(from, rpc.vote.leader_id().voted_for(), "AppendEntries")?;
                reply(&self.raft().append_entries(rpc).await)
            }
            (Method::Vote, Body::Raft { target, json }) => {
                self.check_target(target)?;
                let rpc: VoteRequest<NodeId> = decode(&json, "Vote")?;
                check_sender(from, rpc.vote.leader_id().voted_for(), "Vote")?;
                reply(&self.raft().vote(rpc).await)
            }
            (
                Method::InstallSnapshot,
                Body::Snapshot {
                    target,
                    header_json,
                    data,
                },
            ) => {
                self.check_target(target)?;
                let header: SnapshotChunkHeader = decode(&header_json, "InstallSnapshot header")?;
                check_sender(from, header.vote.leader_id().voted_for(), "InstallSnapshot")?;
                let rpc = InstallSnapshotRequest::<TypeConfig<A>> {
                    vote: header.vote,
                    meta: header.meta,
                    offset: header.offset,
                    data,
                    done: header.done,
                };
                reply(&self.raft().install_snapshot(rpc).await)
            }
            (Method::Elect, Body::Raft { target, .. }) => {
                self.check_target(target)?;
                self.check_member(from, "Elect")?;
                reply(&self.elect_here().await)
            }
            (Method::Forward, Body::Json(json)) => {
                let req: ForwardRequest<A::Command> = decode(&json, "Forward")?;
                let started = Instant::now();
                let deadline = budget(req.timeout_ms, FORWARDED_TIMEOUT_MAX);
                // A forwarded command is measured here, on the leader that batches it.
                let result = match crate::batch::check_command_size(&req.cmd) {
                    Ok(bytes) => self.write_here(req.cmd, bytes, deadline).await,
                    Err(e) => Err(e),
                };
                let result = result.map_err(|e| match e {
                    // Say, from the leader's side, which voters it could reach.
                    WriteError::NoQuorum(p) => {
                        WriteError::NoQuorum(self.no_quorum_message("write", started.elapsed(), &p))
                    }
                    e => e,
                });
                reply(&result)
            }
            (Method::ReadIndex, Body::Json(json)) => {
                let req: ReadIndexRequest = decode(&json, "ReadIndex")?;
                let started = Instant::now();
                let deadline = budget(req.timeout_ms, FORWARDED_TIMEOUT_MAX);
                let result = self.read_index_here(deadline).await.map_err(|e| match e {
                    WriteError::NoQuorum(p) => WriteError::NoQuorum(self.no_quorum_message(
                        "read index",
                        started.elapsed(),
                        &p,
                    )),
                    e => e,
                });
                reply(&result)
            }
            (Method::AddMember, Body::Json(json)) => {
                let req: AddMemberRequest = decode(&json, "AddMember")?;
                if req.forwarded {
                    // A member forwarding a join to the leader speaks for the joiner, whose own
                    // request it checked.
                    self.check_member(from, "a forwarded AddMember")?;
                } else {
                    // A node asks to join for itself.
                    check_sender(from, Some(req.node_id), "AddMember")?;
                }
                let deadline = budget(req.timeout_ms, MEMBERSHIP_CHANGE_TIMEOUT);
                let result = if req.forwarded {
                    self.add_member_here(req.node_id, req.addr, req.fresh, deadline)
                        .await
                } else {
                    self.add_member_until(req.node_id, req.addr, req.fresh, deadline)
                        .await
                };
                reply(&result)
            }
            (Method::RemoveMember, Body::Json(json)) => {
                let req: RemoveMemberRequest = decode(&json, "RemoveMember")?;
                let deadline = budget(req.timeout_ms, MEMBERSHIP_CHANGE_TIMEOUT);
                reply(&self.remove_member_here(req.node_id, deadline).await)
            }
            (Method::Status, Body::Json(json)) => {
                let _: StatusRequest = decode(&json, "Status")?;
                reply(&self.status_here().await)
            }
            (Method::TransferLeader, Body::Json(json)) => {
                let req: TransferLeaderRequest = decode(&json, "TransferLeader")?;
                let deadline = budget(req.timeout_ms, LEADER_TRANSFER_TIMEOUT);
                reply(&self.transfer_leadership_here(req.to, deadline).await)
            }
            (method, _) => Err(PeerRefusal::Undecodable(format!(
                "{method:?} arrived with the wrong message type"
            ))),
        }
    }

    /// Refuses a request that only a member may send, from node `from` if this node's
    /// membership does not list it (`None`: the wire does not know the sender).
    fn check_member(&self, from: Option<NodeId>, what: &str) -> Result<(), PeerRefusal> {
        let Some(from) = from else { return Ok(()) };
        let m = self.raft().metrics().borrow().membership_config.clone();
        if m.membership().get_node(&from).is_none() {
            return Err(PeerRefusal::WrongSender(format!(
                "{what} comes from node {from}, which is not a member"
            )));
        }
        Ok(())
    }

    /// Refuses a request addressed to another node id.
    fn check_target(&self, target: NodeId) -> Result<(), PeerRefusal> {
        if self.node_id() != target {
            return Err(PeerRefusal::WrongTarget(format!(
                "this is node {}, not node {target}",
                self.node_id()
            )));
        }
        Ok(())
    }
}

/// The gRPC server (`server.rs`) holds the node weakly, as this.
#[tonic::async_trait]
impl<A: App> PeerHandler for Inner<A> {
    async fn handle_peer(
        self: Arc<Self>,
        from: Option<NodeId>,
        method: Method,
        body: Body,
    ) -> Result<Vec<u8>, PeerRefusal> {
        RaftNode::from_inner(self)
            .handle_peer_from(from, method, body)
            .await
    }
}
