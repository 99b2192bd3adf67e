//! The server side of the peer RPC (`proto/quiver/raft/v1/peer.proto`).
//!
//! Raft RPCs go straight to openraft; cluster operations act on this node only (a request that
//! needs the leader and reaches a follower is answered `NotLeader`, and the sender retries) —
//! except `AddMember` from a joining node, which is routed to the leader from here, since the
//! joiner knows only one address. Replies are JSON `Result`s; a gRPC error status means the
//! request was not processed (undecodable, addressed to another node id, or this node is gone).
//!
//! The service holds a weak reference to the node: the server never keeps a node alive, and
//! dropping the last `RaftNode` handle stops it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context as _;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::cluster::{
    budget, AddMemberRequest, ForwardRequest, ReadIndexRequest, RemoveMemberRequest, StatusRequest,
    TransferLeaderRequest, LEADER_TRANSFER_TIMEOUT, MEMBERSHIP_CHANGE_TIMEOUT,
};
use crate::network::SnapshotChunkHeader;
use crate::node::Inner;
use crate::proto::raft_peer_server::{RaftPeer, RaftPeerServer};
use crate::proto::{Json, RaftRequest, SnapshotChunk};
use crate::tls::PeerTls;
use crate::transport::{
    PEER_HTTP2_WINDOW_BYTES, PEER_KEEPALIVE_INTERVAL, PEER_MESSAGE_SIZE_MAX_BYTES,
};
use crate::{App, NodeId, RaftNode, TypeConfig, WriteError};

/// Longest a forwarded write or read-index request may ask the leader to wait.
const FORWARDED_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// A running peer server: dropping it (or calling [`PeerServer::stop`]) stops it.
pub(crate) struct PeerServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl PeerServer {
    /// Signal the server to stop accepting and finish; returns its task to await.
    pub(crate) fn stop(self) -> JoinHandle<()> {
        let _ = self.stop.send(());
        self.task
    }
}

/// Wait (bounded) for a stopped server to finish its in-flight RPCs, then drop the rest.
pub(crate) async fn join(node_id: NodeId, mut task: JoinHandle<()>, timeout: Duration) {
    if tokio::time::timeout(timeout, &mut task).await.is_err() {
        tracing::warn!(
            node_id,
            ?timeout,
            "peer server did not stop in time; aborting it"
        );
        task.abort();
        let _ = task.await;
    }
}

/// Serve the peer RPC for `node` on `listener`, with mutual TLS if `tls` is set.
pub(crate) fn spawn<A: App>(
    node: &RaftNode<A>,
    listener: tokio::net::TcpListener,
    tls: Option<&PeerTls>,
) -> anyhow::Result<PeerServer> {
    let node_id = node.node_id();
    let local_addr = listener.local_addr().context("peer listener address")?;
    let mut builder = Server::builder()
        .initial_stream_window_size(PEER_HTTP2_WINDOW_BYTES)
        .initial_connection_window_size(PEER_HTTP2_WINDOW_BYTES)
        .http2_keepalive_interval(Some(PEER_KEEPALIVE_INTERVAL));
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.server_config())
            .context("peer TLS server configuration")?;
    }
    let service = RaftPeerServer::new(PeerService::<A> {
        node: Arc::downgrade(&node.inner),
    })
    .max_decoding_message_size(PEER_MESSAGE_SIZE_MAX_BYTES)
    .max_encoding_message_size(PEER_MESSAGE_SIZE_MAX_BYTES);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let router = builder.add_service(service);
    let task = tokio::spawn(async move {
        // A dropped sender (the node is gone) stops the server like an explicit stop.
        let signal = async {
            let _ = stop_rx.await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::error!(node_id, error = %e, "peer server failed");
        }
        tracing::debug!(node_id, "peer server stopped");
    });
    tracing::info!(node_id, %local_addr, tls = tls.is_some(), "peer server listening");
    Ok(PeerServer {
        stop: stop_tx,
        task,
    })
}

struct PeerService<A: App> {
    node: Weak<Inner<A>>,
}

impl<A: App> PeerService<A> {
    fn node(&self) -> Result<RaftNode<A>, Status> {
        self.node
            .upgrade()
            .map(RaftNode::from_inner)
            .ok_or_else(|| Status::unavailable("this raft node has shut down"))
    }

    /// The node, if `target` is its id.
    fn target(&self, target: NodeId) -> Result<RaftNode<A>, Status> {
        let node = self.node()?;
        if node.node_id() != target {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {target}",
                node.node_id()
            )));
        }
        Ok(node)
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Status> {
    serde_json::from_slice(bytes).map_err(|e| {
        Status::invalid_argument(format!(
            "undecodable {what} (a different quiver-raft version?): {e}"
        ))
    })
}

fn reply<T: Serialize>(value: &T) -> Result<Response<Json>, Status> {
    serde_json::to_vec(value)
        .map(|json| Response::new(Json { json }))
        .map_err(|e| Status::internal(format!("encode reply: {e}")))
}

#[tonic::async_trait]
impl<A: App> RaftPeer for PeerService<A> {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<Json>, Status> {
        let req = request.into_inner();
        let node = self.target(req.target)?;
        let rpc: AppendEntriesRequest<TypeConfig<A>> = decode(&req.json, "AppendEntries")?;
        reply(&node.raft().append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<Json>, Status> {
        let req = request.into_inner();
        let node = self.target(req.target)?;
        let rpc: VoteRequest<NodeId> = decode(&req.json, "Vote")?;
        reply(&node.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<SnapshotChunk>,
    ) -> Result<Response<Json>, Status> {
        let chunk = request.into_inner();
        let node = self.target(chunk.target)?;
        let header: SnapshotChunkHeader = decode(&chunk.header_json, "InstallSnapshot header")?;
        let rpc = InstallSnapshotRequest::<TypeConfig<A>> {
            vote: header.vote,
            meta: header.meta,
            offset: header.offset,
            data: chunk.data,
            done: header.done,
        };
        reply(&node.raft().install_snapshot(rpc).await)
    }

    async fn elect(&self, request: Request<RaftRequest>) -> Result<Response<Json>, Status> {
        let node = self.target(request.into_inner().target)?;
        reply(&node.elect_here().await)
    }

    async fn forward(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let node = self.node()?;
        let req: ForwardRequest<A::Command> = decode(&request.into_inner().json, "Forward")?;
        let started = Instant::now();
        let deadline = budget(req.timeout_ms, FORWARDED_TIMEOUT_MAX);
        let result = node
            .write_here(req.cmd, deadline)
            .await
            .map_err(|e| match e {
                // Say, from the leader's side, which voters it could reach.
                WriteError::NoQuorum(p) => {
                    WriteError::NoQuorum(node.no_quorum_message("write", started.elapsed(), &p))
                }
                e => e,
            });
        reply(&result)
    }

    async fn read_index(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let node = self.node()?;
        let req: ReadIndexRequest = decode(&request.into_inner().json, "ReadIndex")?;
        let started = Instant::now();
        let deadline = budget(req.timeout_ms, FORWARDED_TIMEOUT_MAX);
        let result = node.read_index_here(deadline).await.map_err(|e| match e {
            WriteError::NoQuorum(p) => {
                WriteError::NoQuorum(node.no_quorum_message("read index", started.elapsed(), &p))
            }
            e => e,
        });
        reply(&result)
    }

    async fn add_member(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let node = self.node()?;
        let req: AddMemberRequest = decode(&request.into_inner().json, "AddMember")?;
        let deadline = budget(req.timeout_ms, MEMBERSHIP_CHANGE_TIMEOUT);
        let result = if req.forwarded {
            node.add_member_here(req.node_id, req.addr, req.fresh, deadline)
                .await
        } else {
            node.add_member_until(req.node_id, req.addr, req.fresh, deadline)
                .await
        };
        reply(&result)
    }

    async fn remove_member(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let node = self.node()?;
        let req: RemoveMemberRequest = decode(&request.into_inner().json, "RemoveMember")?;
        let deadline = budget(req.timeout_ms, MEMBERSHIP_CHANGE_TIMEOUT);
        reply(&node.remove_member_here(req.node_id, deadline).await)
    }

    async fn status(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let node = self.node()?;
        let _: StatusRequest = decode(&request.into_inner().json, "Status")?;
        reply(&node.status_here().await)
    }

    async fn transfer_leader(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let node = self.node()?;
        let req: TransferLeaderRequest = decode(&request.into_inner().json, "TransferLeader")?;
        let deadline = budget(req.timeout_ms, LEADER_TRANSFER_TIMEOUT);
        reply(&node.transfer_leadership_here(req.to, deadline).await)
    }
}
