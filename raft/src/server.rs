//! The gRPC server of the peer RPC (`proto/quiver/raft/v1/peer.proto`): each call is handed to
//! a [`PeerHandler`], the node (`RaftNode::handle_peer`, `handler.rs`, which the simulator's
//! network calls too). A gRPC error status means the request was not processed (undecodable,
//! addressed to another node id, or this node is gone).
//!
//! The service holds a weak reference to the node: the server never keeps a node alive, and
//! dropping the last `RaftNode` handle stops it. It knows the node only as a [`PeerHandler`], so
//! this module depends on the peer RPC's vocabulary and not on the node that runs it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::proto::raft_peer_server::{RaftPeer, RaftPeerServer};
use crate::proto::{Json, RaftRequest, SnapshotChunk};
use crate::rpc::PeerRefusal;
use crate::tls::PeerTls;
use crate::transport::{
    Body, Method, PEER_HTTP2_WINDOW_BYTES, PEER_KEEPALIVE_INTERVAL, PEER_MESSAGE_SIZE_MAX_BYTES,
};
use crate::NodeId;

/// What the server hands each request to: the node, which it holds weakly
/// (`Weak<dyn PeerHandler>`) and upgrades for the length of one request.
#[tonic::async_trait]
pub(crate) trait PeerHandler: Send + Sync + 'static {
    /// Serve one peer request that arrived for this node (`RaftNode::handle_peer`).
    async fn handle_peer(
        self: Arc<Self>,
        method: Method,
        body: Body,
    ) -> Result<Vec<u8>, PeerRefusal>;
}

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

/// Serve the peer RPC for `node` (node `node_id`) on `listener`, with mutual TLS if `tls` is set.
pub(crate) fn spawn(
    node_id: NodeId,
    node: Weak<dyn PeerHandler>,
    listener: tokio::net::TcpListener,
    tls: Option<&PeerTls>,
) -> anyhow::Result<PeerServer> {
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
    let service = RaftPeerServer::new(PeerService { node })
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

struct PeerService {
    node: Weak<dyn PeerHandler>,
}

impl PeerService {
    /// Hands the request to the node (`RaftNode::handle_peer`), unless it has shut down.
    async fn handle(&self, method: Method, body: Body) -> Result<Response<Json>, Status> {
        let node = self
            .node
            .upgrade()
            .ok_or_else(|| Status::unavailable("this raft node has shut down"))?;
        match node.handle_peer(method, body).await {
            Ok(json) => Ok(Response::new(Json { json })),
            Err(PeerRefusal::WrongTarget(m)) => Err(Status::failed_precondition(m)),
            Err(PeerRefusal::Undecodable(m)) => Err(Status::invalid_argument(m)),
            Err(PeerRefusal::Internal(m)) => Err(Status::internal(m)),
        }
    }
}

fn raft(request: Request<RaftRequest>) -> Body {
    let RaftRequest { target, json } = request.into_inner();
    Body::Raft { target, json }
}

fn json(request: Request<Json>) -> Body {
    Body::Json(request.into_inner().json)
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<Json>, Status> {
        self.handle(Method::AppendEntries, raft(request)).await
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<Json>, Status> {
        self.handle(Method::Vote, raft(request)).await
    }

    async fn install_snapshot(
        &self,
        request: Request<SnapshotChunk>,
    ) -> Result<Response<Json>, Status> {
        let SnapshotChunk {
            target,
            header_json,
            data,
        } = request.into_inner();
        let body = Body::Snapshot {
            target,
            header_json,
            data,
        };
        self.handle(Method::InstallSnapshot, body).await
    }

    async fn elect(&self, request: Request<RaftRequest>) -> Result<Response<Json>, Status> {
        self.handle(Method::Elect, raft(request)).await
    }

    async fn forward(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        self.handle(Method::Forward, json(request)).await
    }

    async fn read_index(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        self.handle(Method::ReadIndex, json(request)).await
    }

    async fn add_member(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        self.handle(Method::AddMember, json(request)).await
    }

    async fn remove_member(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        self.handle(Method::RemoveMember, json(request)).await
    }

    async fn status(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        self.handle(Method::Status, json(request)).await
    }

    async fn transfer_leader(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        self.handle(Method::TransferLeader, json(request)).await
    }
}
