//! The client side of the peer RPC: one lazily connected tonic `Channel` per peer address, typed
//! JSON calls, error classification, and a record of which peers answered recently (used to say
//! how many voters were reachable when a write misses its deadline).
//!
//! Errors are classified by what the caller may conclude:
//! - [`CallError::Unreachable`]: no connection (refused, TLS rejected, reset). For a Raft RPC
//!   openraft treats it as a peer that is down and backs off.
//! - [`CallError::Timeout`]: no answer in time; the request may or may not have been acted on.
//! - [`CallError::Failed`]: the peer answered, but not with a reply we can use (wrong node,
//!   undecodable payload, a newer or older protocol).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::proto::raft_peer_client::RaftPeerClient;
use crate::proto::{Json, RaftRequest, SnapshotChunk};
use crate::tls::{PeerIdentity, PeerTls};
use crate::NodeId;

/// How long a peer client waits for a TCP + TLS connection before calling the peer unreachable.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Snapshot chunk size (openraft's `snapshot_max_chunk_size`): the largest raw payload of one
/// `InstallSnapshot` RPC.
pub const SNAPSHOT_CHUNK_SIZE_BYTES: usize = 4 << 20;
/// Largest peer message either side encodes or decodes: a snapshot chunk plus a wide margin
/// for its JSON header, and room for a batch of log entries (`AppendEntries`). A request that
/// would be larger is not sent: an `AppendEntries` batch is split instead (openraft's
/// `PayloadTooLarge` hint).
pub const PEER_MESSAGE_SIZE_MAX_BYTES: usize = SNAPSHOT_CHUNK_SIZE_BYTES + (60 << 20);
/// HTTP/2 stream and connection windows on peer connections (both sides). The default 64 KiB
/// would make a snapshot chunk take dozens of round trips.
pub const PEER_HTTP2_WINDOW_BYTES: u32 = 8 << 20;
/// HTTP/2 keep-alive ping interval on peer connections: detects a dead peer on an idle
/// connection.
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A peer counts as reachable if it answered an RPC this recently.
pub const PEER_REACHABLE_WINDOW: Duration = Duration::from_secs(3);

/// Room left in [`PEER_MESSAGE_SIZE_MAX_BYTES`] for the protobuf framing around a JSON payload.
const FRAMING_MARGIN_BYTES: usize = 1 << 10;

/// The peer RPC methods (`proto/quiver/raft/v1/peer.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Elect,
    Forward,
    ReadIndex,
    AddMember,
    RemoveMember,
    Status,
    TransferLeader,
}

/// Why a peer call produced no usable reply.
#[derive(Clone, Debug)]
pub enum CallError {
    Unreachable(String),
    Timeout(String),
    Failed(String),
}

impl CallError {
    pub fn detail(&self) -> &str {
        match self {
            CallError::Unreachable(d) | CallError::Timeout(d) | CallError::Failed(d) => d,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(d) => write!(f, "unreachable: {d}"),
            CallError::Timeout(d) => write!(f, "timed out: {d}"),
            CallError::Failed(d) => write!(f, "failed: {d}"),
        }
    }
}

/// The body of one request, by message type.
#[derive(Clone, Debug)]
pub enum Body {
    /// A Raft RPC addressed to node `target`.
    Raft { target: NodeId, json: Vec<u8> },
    /// A snapshot chunk addressed to node `target`.
    Snapshot {
        target: NodeId,
        header_json: Vec<u8>,
        data: Vec<u8>,
    },
    /// A cluster operation.
    Json(Vec<u8>),
}

impl Body {
    /// Bytes of payload it carries.
    pub fn len(&self) -> usize {
        match self {
            Body::Raft { json, .. } | Body::Json(json) => json.len(),
            Body::Snapshot {
                header_json, data, ..
            } => header_json.len() + data.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What we last heard from one peer address.
#[derive(Default)]
struct Contact {
    last_ok: Option<Instant>,
    last_error: Option<(Instant, String)>,
}

/// How one request reaches a peer: the seam between the peer RPC logic (forwarding, read index,
/// membership, openraft's RPCs) and the wire. Production sends it over gRPC (`GrpcTransport`);
/// the simulator carries it through its simulated network to the target's
/// [`crate::RaftNode::handle_peer`]. Either way the bytes are the same JSON.
pub trait PeerTransport: Send + Sync + 'static {
    /// Deliver `body` as `method` to the node at `addr` and return its reply's JSON bytes. The
    /// caller bounds the call by `timeout` too; an implementation may use it as the RPC's own
    /// deadline.
    fn unary<'a>(
        &'a self,
        addr: &'a str,
        method: Method,
        body: Body,
        timeout: Duration,
    ) -> PeerCall<'a>;
}

/// One call in flight through a [`PeerTransport`]: the reply's JSON bytes, or why none came.
pub type PeerCall<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, CallError>> + Send + 'a>>;

/// A transport that reaches nobody: for a node that never talks to peers (a single-member
/// cluster started with [`crate::RaftNode::start`]). Every call is `Unreachable`, which openraft
/// treats like a peer that is down.
pub(crate) struct NoPeers;

impl PeerTransport for NoPeers {
    fn unary<'a>(
        &'a self,
        addr: &'a str,
        method: Method,
        _body: Body,
        _timeout: Duration,
    ) -> PeerCall<'a> {
        Box::pin(async move {
            Err(CallError::Unreachable(format!(
                "{method:?} to {addr}: this node has no peer transport"
            )))
        })
    }
}

/// Peer clients of one node: its transport and the contact record. Shared by openraft's network
/// clients and the node's forwarding, so both go through the same seam.
pub(crate) struct Peers {
    transport: Arc<dyn PeerTransport>,
    contacts: Mutex<HashMap<String, Contact>>,
}

impl Peers {
    pub(crate) fn new(transport: Arc<dyn PeerTransport>) -> Self {
        Peers {
            transport,
            contacts: Mutex::new(HashMap::new()),
        }
    }

    fn record(&self, addr: &str, outcome: Result<(), &CallError>) {
        let mut contacts = self
            .contacts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let contact = contacts.entry(addr.to_string()).or_default();
        match outcome {
            // The peer answered, even if with an error of its own: it is reachable.
            Ok(()) | Err(CallError::Failed(_)) => contact.last_ok = Some(Instant::now()),
            Err(e) => contact.last_error = Some((Instant::now(), e.to_string())),
        }
    }

    /// `Ok` if the last call to `addr` was answered, within [`PEER_REACHABLE_WINDOW`]; else
    /// what went wrong last.
    pub(crate) fn reachability(&self, addr: &str) -> Result<(), String> {
        let contacts = self
            .contacts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(contact) = contacts.get(addr) else {
            return Err("not contacted from this node yet".to_string());
        };
        match (&contact.last_ok, &contact.last_error) {
            (_, Some((failed, e))) if contact.last_ok.is_none_or(|ok| ok < *failed) => {
                Err(e.clone())
            }
            (Some(ok), _) if ok.elapsed() <= PEER_REACHABLE_WINDOW => Ok(()),
            _ => Err(format!("no answer in the last {PEER_REACHABLE_WINDOW:?}")),
        }
    }

    /// One unary call; returns the reply's JSON bytes. A request over
    /// [`PEER_MESSAGE_SIZE_MAX_BYTES`] is not sent; the whole call is bounded by `timeout`.
    pub(crate) async fn unary(
        &self,
        addr: &str,
        method: Method,
        body: Body,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let result = if body.len() + FRAMING_MARGIN_BYTES > PEER_MESSAGE_SIZE_MAX_BYTES {
            Err(CallError::Failed(format!(
                "{method:?} request of {} bytes exceeds the peer message limit of \
                 {PEER_MESSAGE_SIZE_MAX_BYTES} bytes",
                body.len()
            )))
        } else {
            match tokio::time::timeout(timeout, self.transport.unary(addr, method, body, timeout))
                .await
            {
                Err(_) => Err(CallError::Timeout(format!(
                    "{method:?} to {addr}: no answer within {timeout:?}"
                ))),
                Ok(reply) => reply,
            }
        };
        self.record(addr, result.as_ref().map(|_| ()));
        result
    }

    /// A cluster-operation call: `req` and the reply are JSON.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        method: Method,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let json = serde_json::to_vec(req)
            .map_err(|e| CallError::Failed(format!("encode {method:?} request: {e}")))?;
        let reply = self.unary(addr, method, Body::Json(json), timeout).await?;
        decode_reply(addr, method, &reply)
    }
}

/// The production transport: one lazily connected tonic `Channel` per peer address, mutual TLS
/// when configured. When this node's certificate is renewed ([`PeerIdentity::replace`]) the
/// channels are dropped and new ones present the new certificate.
pub(crate) struct GrpcTransport {
    tls: Option<(PeerTls, Arc<PeerIdentity>)>,
    channels: Mutex<Channels>,
}

/// The channels made with the client configuration of one identity generation.
#[derive(Default)]
struct Channels {
    generation: u64,
    tls: Option<ClientTlsConfig>,
    by_addr: HashMap<String, Channel>,
}

impl GrpcTransport {
    pub(crate) fn new(tls: Option<(PeerTls, Arc<PeerIdentity>)>) -> anyhow::Result<Self> {
        let channels = Channels {
            generation: tls
                .as_ref()
                .map_or(0, |(_, identity)| identity.generation()),
            tls: tls
                .as_ref()
                .map(|(tls, identity)| tls.client_config(identity)),
            by_addr: HashMap::new(),
        };
        // Surface a TLS configuration tonic refuses now, not on the first RPC.
        endpoint("127.0.0.1:1", channels.tls.as_ref())?;
        Ok(GrpcTransport {
            tls,
            channels: Mutex::new(channels),
        })
    }

    fn channel(&self, addr: &str) -> Result<Channel, CallError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((tls, identity)) = &self.tls {
            let generation = identity.generation();
            if generation != channels.generation {
                // A renewed certificate: connect anew with it.
                *channels = Channels {
                    generation,
                    tls: Some(tls.client_config(identity)),
                    by_addr: HashMap::new(),
                };
            }
        }
        if let Some(channel) = channels.by_addr.get(addr) {
            return Ok(channel.clone());
        }
        let channel = endpoint(addr, channels.tls.as_ref())
            .map_err(|e| CallError::Failed(format!("{e:#}")))?
            .connect_lazy();
        channels.by_addr.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    async fn send(
        &self,
        addr: &str,
        method: Method,
        body: Body,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let mut client = RaftPeerClient::new(self.channel(addr)?)
            .max_decoding_message_size(PEER_MESSAGE_SIZE_MAX_BYTES)
            .max_encoding_message_size(PEER_MESSAGE_SIZE_MAX_BYTES);
        let call = async {
            match (method, body) {
                (Method::AppendEntries, Body::Raft { target, json }) => {
                    client
                        .append_entries(request(RaftRequest { target, json }, timeout))
                        .await
                }
                (Method::Vote, Body::Raft { target, json }) => {
                    client
                        .vote(request(RaftRequest { target, json }, timeout))
                        .await
                }
                (Method::Elect, Body::Raft { target, json }) => {
                    client
                        .elect(request(RaftRequest { target, json }, timeout))
                        .await
                }
                (
                    Method::InstallSnapshot,
                    Body::Snapshot {
                        target,
                        header_json,
                        data,
                    },
                ) => {
                    let chunk = SnapshotChunk {
                        target,
                        header_json,
                        data,
                    };
                    client.install_snapshot(request(chunk, timeout)).await
                }
                (Method::Forward, Body::Json(json)) => {
                    client.forward(request(Json { json }, timeout)).await
                }
                (Method::ReadIndex, Body::Json(json)) => {
                    client.read_index(request(Json { json }, timeout)).await
                }
                (Method::AddMember, Body::Json(json)) => {
                    client.add_member(request(Json { json }, timeout)).await
                }
                (Method::RemoveMember, Body::Json(json)) => {
                    client.remove_member(request(Json { json }, timeout)).await
                }
                (Method::Status, Body::Json(json)) => {
                    client.status(request(Json { json }, timeout)).await
                }
                (Method::TransferLeader, Body::Json(json)) => {
                    client
                        .transfer_leader(request(Json { json }, timeout))
                        .await
                }
                (method, _) => Err(tonic::Status::internal(format!(
                    "bug: {method:?} called with the wrong message type"
                ))),
            }
        };
        match call.await {
            Ok(reply) => Ok(reply.into_inner().json),
            Err(status) => Err(classify(addr, method, &status)),
        }
    }
}

impl PeerTransport for GrpcTransport {
    fn unary<'a>(
        &'a self,
        addr: &'a str,
        method: Method,
        body: Body,
        timeout: Duration,
    ) -> PeerCall<'a> {
        Box::pin(self.send(addr, method, body, timeout))
    }
}

pub(crate) fn decode_reply<T: DeserializeOwned>(
    addr: &str,
    method: Method,
    reply: &[u8],
) -> Result<T, CallError> {
    serde_json::from_slice(reply).map_err(|e| {
        CallError::Failed(format!(
            "undecodable {method:?} reply from {addr} (a different quiver-raft version?): {e}"
        ))
    })
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> anyhow::Result<Endpoint> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| anyhow::anyhow!("peer address {addr:?} is not host:port: {e}"))?
        .connect_timeout(PEER_CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(PEER_HTTP2_WINDOW_BYTES)
        .initial_connection_window_size(PEER_HTTP2_WINDOW_BYTES)
        .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| anyhow::anyhow!("peer TLS client configuration: {e}"))?;
    }
    Ok(endpoint)
}

/// Map a gRPC status to what the caller may conclude from it.
fn classify(addr: &str, method: Method, status: &tonic::Status) -> CallError {
    let mut detail = format!("{method:?} to {addr}: {}", status.message());
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let text = s.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = s.source();
    }
    match status.code() {
        tonic::Code::Unavailable => CallError::Unreachable(detail),
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => CallError::Timeout(detail),
        // A transport failure that tonic could not classify (e.g. the TLS session was torn
        // down by the peer after the handshake) surfaces as Unknown with a source error.
        tonic::Code::Unknown if std::error::Error::source(status).is_some() => {
            CallError::Unreachable(detail)
        }
        _ => CallError::Failed(detail),
    }
}
