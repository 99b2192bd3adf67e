//! The gRPC server of the peer RPC (`proto/quiver/raft/v1/peer.proto`): each call is handed to
//! a [`PeerHandler`], the node (`RaftNode::handle_peer`, `handler.rs`, which the simulator's
//! network calls too). A gRPC error status means the request was not processed (undecodable,
//! addressed to another node id, or this node is gone).
//!
//! With TLS the server makes its own handshakes (`tokio-rustls`, at most
//! [`PEER_HANDSHAKES_MAX`] at once, each within [`PEER_HANDSHAKE_TIMEOUT`]) and hands tonic the
//! established streams: its certificate is resolved from a [`PeerIdentity`] at each handshake,
//! so a renewed one is used without restarting the server. Every request is then admitted by
//! the [`PeerGate`] from the client certificate of its connection (decision 0017): a refused
//! certificate gets `PERMISSION_DENIED`, and the node id it names is handed to the node as the
//! request's sender.
//!
//! The service holds a weak reference to the node: the server never keeps a node alive, and
//! dropping the last `RaftNode` handle stops it. It knows the node only as a [`PeerHandler`], so
//! this module depends on the peer RPC's vocabulary and not on the node that runs it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::proto::raft_peer_server::{RaftPeer, RaftPeerServer};
use crate::proto::{Json, RaftRequest, SnapshotChunk};
use crate::rpc::PeerRefusal;
use crate::tls::{PeerGate, PeerIdentity, PeerTls};
use crate::transport::{
    Body, Method, PEER_HTTP2_WINDOW_BYTES, PEER_KEEPALIVE_INTERVAL, PEER_MESSAGE_SIZE_MAX_BYTES,
};
use crate::NodeId;

/// Peer TLS handshakes in progress at once; a connection beyond it is closed at once.
pub const PEER_HANDSHAKES_MAX: usize = 64;
/// Longest a peer TLS handshake may take before its connection is closed.
pub const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server hands each request to: the node, which it holds weakly
/// (`Weak<dyn PeerHandler>`) and upgrades for the length of one request.
#[tonic::async_trait]
pub(crate) trait PeerHandler: Send + Sync + 'static {
    /// Serve one peer request that arrived for this node from node `from` (as its certificate
    /// names it; `None` without a gate) (`RaftNode::handle_peer_from`).
    async fn handle_peer(
        self: Arc<Self>,
        from: Option<NodeId>,
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

/// How the peer server authenticates: the CA and this node's certificate, and the gate every
/// request passes (none: any certificate under the CA, sender unknown).
pub(crate) struct ServerTls<'a> {
    pub(crate) tls: &'a PeerTls,
    pub(crate) identity: Arc<PeerIdentity>,
    pub(crate) gate: Option<Arc<dyn PeerGate>>,
}

/// Serve the peer RPC for `node` (node `node_id`) on `listener`, with mutual TLS if `tls` is set.
pub(crate) fn spawn(
    node_id: NodeId,
    node: Weak<dyn PeerHandler>,
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls<'_>>,
) -> anyhow::Result<PeerServer> {
    let local_addr = listener.local_addr().context("peer listener address")?;
    let mut builder = Server::builder()
        .initial_stream_window_size(PEER_HTTP2_WINDOW_BYTES)
        .initial_connection_window_size(PEER_HTTP2_WINDOW_BYTES)
        .http2_keepalive_interval(Some(PEER_KEEPALIVE_INTERVAL));
    let with_tls = tls.is_some();
    let gate = tls.as_ref().and_then(|t| t.gate.clone());
    let service = RaftPeerServer::new(PeerService { node, gate })
        .max_decoding_message_size(PEER_MESSAGE_SIZE_MAX_BYTES)
        .max_encoding_message_size(PEER_MESSAGE_SIZE_MAX_BYTES);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let router = builder.add_service(service);
    // A dropped sender (the node is gone) stops the server like an explicit stop.
    let signal = async {
        let _ = stop_rx.await;
    };
    let task = match tls {
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
                    tracing::error!(node_id, error = %e, "peer server failed");
                }
                tracing::debug!(node_id, "peer server stopped");
            })
        }
        Some(tls) => {
            let config = tls
                .tls
                .server_config(tls.identity)
                .context("peer TLS server configuration")?;
            let (incoming, accepting) = tls_incoming("peer server", node_id, listener, config);
            tokio::spawn(async move {
                let served = router.serve_with_incoming_shutdown(incoming, signal).await;
                // Wait until the accepting task is gone: it owns the listener, and a node
                // stopped (or whose start failed) must give its port back before this returns.
                accepting.abort();
                let _ = accepting.await;
                if let Err(e) = served {
                    tracing::error!(node_id, error = %e, "peer server failed");
                }
                tracing::debug!(node_id, "peer server stopped");
            })
        }
    };
    tracing::info!(node_id, %local_addr, tls = with_tls, "peer server listening");
    Ok(PeerServer {
        stop: stop_tx,
        task,
    })
}

/// A stream of TLS connections for tonic's `serve_with_incoming*`, fed by [`tls_incoming`].
pub type TlsIncoming = ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>;

/// Accepts TCP connections on `listener` and makes their TLS handshakes with `config`, each on
/// a task of its own (at most [`PEER_HANDSHAKES_MAX`] at once, each within
/// [`PEER_HANDSHAKE_TIMEOUT`]; a connection beyond them is closed), handing the established
/// streams to tonic. The returned task owns the listener: abort and await it to free the port.
/// `server` names the server in the log (`peer server`, `API server`).
pub fn tls_incoming(
    server: &'static str,
    node_id: NodeId,
    listener: tokio::net::TcpListener,
    config: rustls::ServerConfig,
) -> (TlsIncoming, JoinHandle<()>) {
    let (connections, accepted) = mpsc::channel(PEER_HANDSHAKES_MAX);
    let (incoming, handshaking) = tls_incoming_from(server, node_id, accepted, config);
    let accepting = tokio::spawn(async move {
        // Ends the handshakes' task with this one: the port and every task go together.
        let _handshaking = AbortOnDrop(handshaking);
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    if connections.send(accepted).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // A transient accept error (out of file descriptors, a reset before
                    // accept): tell, and keep serving the connections that work.
                    tracing::warn!(node_id, error = %e, "{server}: accept failed");
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    (incoming, accepting)
}

/// [`tls_incoming`] for TCP connections accepted elsewhere (a listener that also serves other
/// protocols on its port): makes the TLS handshakes of the connections `accepted` sends, with
/// the same limits. The returned task ends when `accepted` closes, or when aborted.
pub fn tls_incoming_from(
    server: &'static str,
    node_id: NodeId,
    mut accepted: mpsc::Receiver<(TcpStream, std::net::SocketAddr)>,
    config: rustls::ServerConfig,
) -> (TlsIncoming, JoinHandle<()>) {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (streams, streams_rx) = mpsc::channel(PEER_HANDSHAKES_MAX);
    let handshaking = tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(PEER_HANDSHAKES_MAX));
        while let Some((tcp, remote)) = accepted.recv().await {
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(node_id, %remote, limit = PEER_HANDSHAKES_MAX, "{server} at its limit of handshakes in progress, closing a connection");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let streams: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>> =
                streams.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = streams.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(node_id, %remote, error = %e, "{server}: TLS handshake failed (a plaintext client, or a certificate not from the cluster CA?)");
                    }
                    Err(_) => {
                        tracing::info!(node_id, %remote, timeout = ?PEER_HANDSHAKE_TIMEOUT, "{server}: TLS handshake timed out");
                    }
                }
            });
        }
    });
    (ReceiverStream::new(streams_rx), handshaking)
}

/// Aborts its task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct PeerService {
    node: Weak<dyn PeerHandler>,
    gate: Option<Arc<dyn PeerGate>>,
}

impl PeerService {
    /// The node the request's client certificate names, if the gate admits it now.
    fn admit<T>(&self, method: Method, request: &Request<T>) -> Result<Option<NodeId>, Status> {
        let Some(gate) = &self.gate else {
            return Ok(None);
        };
        let certs = request.peer_certs();
        let Some(end_entity) = certs.as_ref().and_then(|certs| certs.first()) else {
            return Err(Status::unauthenticated(format!(
                "{method:?}: no client certificate on this connection"
            )));
        };
        match gate.admit(end_entity) {
            Ok(node_id) => Ok(Some(node_id)),
            Err(why) => {
                tracing::info!(?method, %why, "peer request refused");
                Err(Status::permission_denied(format!(
                    "{method:?} refused: {why}"
                )))
            }
        }
    }

    /// Hands the request to the node (`RaftNode::handle_peer_from`), unless it has shut down.
    async fn handle(
        &self,
        from: Option<NodeId>,
        method: Method,
        body: Body,
    ) -> Result<Response<Json>, Status> {
        let node = self
            .node
            .upgrade()
            .ok_or_else(|| Status::unavailable("this raft node has shut down"))?;
        match node.handle_peer(from, method, body).await {
            Ok(json) => Ok(Response::new(Json { json })),
            Err(PeerRefusal::WrongSender(m)) => Err(Status::permission_denied(m)),
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
        let from = self.admit(Method::AppendEntries, &request)?;
        self.handle(from, Method::AppendEntries, raft(request))
            .await
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<Json>, Status> {
        let from = self.admit(Method::Vote, &request)?;
        self.handle(from, Method::Vote, raft(request)).await
    }

    async fn install_snapshot(
        &self,
        request: Request<SnapshotChunk>,
    ) -> Result<Response<Json>, Status> {
        let from = self.admit(Method::InstallSnapshot, &request)?;
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
        self.handle(from, Method::InstallSnapshot, body).await
    }

    async fn elect(&self, request: Request<RaftRequest>) -> Result<Response<Json>, Status> {
        let from = self.admit(Method::Elect, &request)?;
        self.handle(from, Method::Elect, raft(request)).await
    }

    async fn forward(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let from = self.admit(Method::Forward, &request)?;
        self.handle(from, Method::Forward, json(request)).await
    }

    async fn read_index(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let from = self.admit(Method::ReadIndex, &request)?;
        self.handle(from, Method::ReadIndex, json(request)).await
    }

    async fn add_member(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let from = self.admit(Method::AddMember, &request)?;
        self.handle(from, Method::AddMember, json(request)).await
    }

    async fn remove_member(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let from = self.admit(Method::RemoveMember, &request)?;
        self.handle(from, Method::RemoveMember, json(request)).await
    }

    async fn status(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let from = self.admit(Method::Status, &request)?;
        self.handle(from, Method::Status, json(request)).await
    }

    async fn transfer_leader(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let from = self.admit(Method::TransferLeader, &request)?;
        self.handle(from, Method::TransferLeader, json(request))
            .await
    }
}
