//! The chunk server: answers GET / HAVE / PUT on a quinn endpoint from a [`ChunkSource`].
//!
//! One task per connection, one per request stream. Every request is bounded in size (the wire
//! checks) and in time ([`SERVER_REQUEST_TIMEOUT`]); a connection attempt from an address not yet
//! validated is answered with a stateless retry; handshakes in progress are bounded by
//! [`SERVER_HANDSHAKES_MAX`] and [`SERVER_HANDSHAKE_TIMEOUT`]; established connections by
//! [`SERVER_CONNECTIONS_MAX`] (counted after the handshake), and streams per connection by the
//! transport's stream limit. Store
//! I/O runs in `spawn_blocking`.
//!
//! With a [`PeerGate`] (a node's server: [`ChunkServer::bind_with_certs`]) the client's
//! certificate is admitted after the handshake and again before every request, so a node
//! removed while connected (or a certificate that expired meanwhile) loses the connection at
//! its next request: it is closed with [`CLOSE_REFUSED_PEER`].
//!
//! Bytes of chunk data served and received are counted per peer ([`ChunkServer::stats`]): by
//! the node the gate names, else by the client's address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::config::{end_entity, endpoint, server_config, PeerGate, QuicCerts, TransportTuning};
use super::stats::{PeerCounters, PeerLabel, TransferStats};
use super::wire::{
    decode_have_request, encode_have_response, error_message_payload, Op, RequestHeader,
    ResponseHeader, Status, REQUEST_HEADER_BYTES,
};
use super::{
    ChunkSource, QuicTls, TransferError, CLOSE_AT_CONNECTION_LIMIT, CLOSE_REFUSED_PEER,
    SERVER_CONNECTIONS_MAX, SERVER_HANDSHAKES_MAX, SERVER_HANDSHAKE_TIMEOUT,
    SERVER_REQUEST_TIMEOUT, SHUTDOWN_DRAIN_TIMEOUT,
};
use crate::{Hash, StoreError, CHUNK_SIZE_BYTES};

/// Application close code sent to peers when the server shuts down.
const CLOSE_SHUTDOWN: u32 = 0;

/// A running chunk server. Dropping it stops it abruptly; [`ChunkServer::shutdown`] first closes
/// connections and waits (bounded) for the close to reach peers.
pub struct ChunkServer {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<TransferStats>,
}

impl ChunkServer {
    /// Binds a quinn endpoint on `addr` (UDP; port 0 allowed) that serves GET/HAVE/PUT for chunks
    /// of `source`, requiring client certificates signed by the CA in `tls`. Must be called
    /// within a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        source: Arc<dyn ChunkSource>,
        tls: &QuicTls,
    ) -> Result<ChunkServer, TransferError> {
        ChunkServer::bind_with(addr, source, tls, &TransportTuning::chosen())
    }

    /// [`ChunkServer::bind`] with explicit transport tuning (benchmarks).
    pub fn bind_with(
        addr: SocketAddr,
        source: Arc<dyn ChunkSource>,
        tls: &QuicTls,
        tuning: &TransportTuning,
    ) -> Result<ChunkServer, TransferError> {
        ChunkServer::bind_inner(addr, source, tls, tuning, None)
    }

    /// A node's chunk server: its certificate is resolved from `certs` at every handshake (a
    /// renewed one is used for new connections), and every client is admitted by `certs.gate`
    /// after its handshake and before each of its requests.
    pub fn bind_with_certs(
        addr: SocketAddr,
        source: Arc<dyn ChunkSource>,
        tls: &QuicTls,
        certs: &QuicCerts,
    ) -> Result<ChunkServer, TransferError> {
        ChunkServer::bind_inner(addr, source, tls, &TransportTuning::chosen(), Some(certs))
    }

    fn bind_inner(
        addr: SocketAddr,
        source: Arc<dyn ChunkSource>,
        tls: &QuicTls,
        tuning: &TransportTuning,
        certs: Option<&QuicCerts>,
    ) -> Result<ChunkServer, TransferError> {
        let config = server_config(tls, tuning, certs)?;
        let endpoint = endpoint(addr, Some(config), tuning)?;
        let gate = certs.map(|c| c.gate.clone());
        let local_addr = endpoint.local_addr().map_err(|source| TransferError::Io {
            context: format!("read the local address of the QUIC endpoint bound on {addr}"),
            source,
        })?;
        let stats = Arc::new(TransferStats::default());
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), source, gate, stats.clone()));
        tracing::debug!(%local_addr, "chunk server listening");
        Ok(ChunkServer {
            endpoint,
            local_addr,
            accept_task: Mutex::new(Some(accept_task)),
            stats,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Bytes of chunk data this server served (GETs answered) and received (PUTs stored), per
    /// peer.
    pub fn stats(&self) -> &Arc<TransferStats> {
        &self.stats
    }

    /// Stops accepting, closes every connection (peers see "closed by peer") and waits up to
    /// [`SHUTDOWN_DRAIN_TIMEOUT`] for the closes to be delivered. Requests in flight fail.
    pub async fn shutdown(&self) {
        if let Some(task) = self.stop() {
            // Wait until the accept task and every connection task it owns are dropped.
            let _ = task.await;
        }
        if tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::debug!(local_addr = %self.local_addr, "chunk server shutdown: drain timed out");
        }
    }

    /// Closes the endpoint and aborts the accept task (dropping its JoinSets aborts every
    /// connection and request task). Returns the aborted task, the first time.
    fn stop(&self) -> Option<JoinHandle<()>> {
        self.endpoint
            .close(CLOSE_SHUTDOWN.into(), b"chunk server shutting down");
        let task = self
            .accept_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = &task {
            task.abort();
        }
        task
    }
}

/// Stops the server abruptly. The UDP port is released shortly after, when quinn's endpoint
/// driver task notices that the endpoint is gone (not synchronously).
impl Drop for ChunkServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    source: Arc<dyn ChunkSource>,
    gate: Option<Arc<dyn PeerGate>>,
    stats: Arc<TransferStats>,
) {
    let mut connections = JoinSet::new();
    let handshakes = Arc::new(Semaphore::new(SERVER_HANDSHAKES_MAX));
    let established = Arc::new(Semaphore::new(SERVER_CONNECTIONS_MAX));
    while let Some(incoming) = endpoint.accept().await {
        while connections.try_join_next().is_some() {}
        if !incoming.remote_address_validated() && incoming.may_retry() {
            // A stateless retry: the client must echo a token sent to its address before the
            // server spends anything on it.
            if let Err(e) = incoming.retry() {
                tracing::debug!(error = %e, "chunk server: could not ask for a retry");
            }
            continue;
        }
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(
                remote = %incoming.remote_address(),
                limit = SERVER_HANDSHAKES_MAX,
                "chunk server at its limit of handshakes in progress, refusing a connection"
            );
            incoming.refuse();
            continue;
        };
        connections.spawn(serve_connection(
            incoming,
            handshake,
            established.clone(),
            source.clone(),
            gate.clone(),
            stats.clone(),
        ));
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    handshake: OwnedSemaphorePermit,
    established: Arc<Semaphore>,
    source: Arc<dyn ChunkSource>,
    gate: Option<Arc<dyn PeerGate>>,
    stats: Arc<TransferStats>,
) {
    let remote = incoming.remote_address();
    // The handshake verifies the client's certificate against the CA; a client without one is
    // rejected here and never reaches a request.
    let connection = match tokio::time::timeout(SERVER_HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "chunk server: handshake failed (no valid client certificate?)");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, timeout = ?SERVER_HANDSHAKE_TIMEOUT, "chunk server: handshake timed out");
            return;
        }
    };
    drop(handshake);
    let (peer_cert, label) = match &gate {
        None => (None, PeerLabel::Addr(remote)),
        Some(gate) => match admit(gate.as_ref(), &connection) {
            Ok((node_id, cert)) => {
                tracing::debug!(%remote, node_id, "chunk server: peer admitted");
                (Some((gate.clone(), cert)), PeerLabel::Node(node_id))
            }
            Err(why) => {
                refuse(&connection, remote, &why);
                return;
            }
        },
    };
    // Counted only now, once the peer proved who it is.
    let Ok(_connection_slot) = established.try_acquire_owned() else {
        tracing::warn!(
            %remote,
            limit = SERVER_CONNECTIONS_MAX,
            "chunk server at its connection limit, closing a new connection"
        );
        connection.close(
            quinn::VarInt::from_u32(CLOSE_AT_CONNECTION_LIMIT),
            b"chunk server at its connection limit; retry later",
        );
        return;
    };
    // Named only now: a refused client never takes one of the bounded labels.
    let counters = stats.peer(label);
    let mut requests = JoinSet::new();
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                if let Some((gate, cert)) = &peer_cert {
                    // Removed (or expired) since the handshake: no more requests.
                    if let Err(why) = gate.admit(cert) {
                        refuse(&connection, remote, &why);
                        break;
                    }
                }
                while requests.try_join_next().is_some() {}
                requests.spawn(serve_stream(
                    send,
                    recv,
                    source.clone(),
                    remote,
                    counters.clone(),
                ));
            }
            Err(e) => {
                tracing::debug!(%remote, reason = %e, "chunk server: connection ended");
                break;
            }
        }
    }
    // In-flight requests die with their connection anyway; let them finish sending if it is
    // still draining.
    while requests.join_next().await.is_some() {}
}

/// The client's end-entity certificate and the node it names, if `gate` admits it.
fn admit(
    gate: &dyn PeerGate,
    connection: &quinn::Connection,
) -> Result<(u64, CertificateDer<'static>), String> {
    let cert = end_entity(connection)
        .ok_or_else(|| "no client certificate on this connection".to_string())?;
    let node_id = gate.admit(&cert)?;
    Ok((node_id, cert))
}

fn refuse(connection: &quinn::Connection, remote: SocketAddr, why: &str) {
    tracing::info!(%remote, %why, "chunk server: peer refused");
    let reason = format!("refused: {why}");
    let reason = &reason.as_bytes()[..reason.len().min(REFUSAL_REASON_BYTES_MAX)];
    connection.close(quinn::VarInt::from_u32(CLOSE_REFUSED_PEER), reason);
}

/// Longest reason sent with a refusal's close frame.
const REFUSAL_REASON_BYTES_MAX: usize = 256;

async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    source: Arc<dyn ChunkSource>,
    remote: SocketAddr,
    counters: Arc<PeerCounters>,
) {
    let served = tokio::time::timeout(
        SERVER_REQUEST_TIMEOUT,
        serve_request(&mut send, &mut recv, source, &counters),
    )
    .await;
    match served {
        Ok(Ok(())) => {}
        Ok(Err(detail)) => tracing::debug!(%remote, %detail, "chunk server: request failed"),
        Err(_) => {
            tracing::info!(%remote, timeout = ?SERVER_REQUEST_TIMEOUT, "chunk server: request timed out");
            let _ = send.reset(0u32.into());
        }
    }
}

/// Reads one request and answers it. Err: the stream broke (nothing more can be said on it).
async fn serve_request(
    send: &mut SendStream,
    recv: &mut RecvStream,
    source: Arc<dyn ChunkSource>,
    counters: &PeerCounters,
) -> Result<(), String> {
    let mut header = [0u8; REQUEST_HEADER_BYTES];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| format!("read request header: {e}"))?;
    let request = match RequestHeader::decode(&header) {
        Ok(request) => request,
        Err(e) => return respond_error(send, &e.0).await,
    };
    // Bounded by RequestHeader::decode (at most one chunk or one HAVE batch).
    let mut payload = vec![0u8; request.len as usize];
    recv.read_exact(&mut payload)
        .await
        .map_err(|e| format!("read {:?} request payload: {e}", request.op))?;
    match request.op {
        Op::Get => serve_get(send, source, request.hash, counters).await,
        Op::Put => serve_put(send, source, request.hash, payload, counters).await,
        Op::Have => serve_have(send, source, &payload).await,
    }
}

async fn serve_get(
    send: &mut SendStream,
    source: Arc<dyn ChunkSource>,
    hash: Hash,
    counters: &PeerCounters,
) -> Result<(), String> {
    let read = tokio::task::spawn_blocking(move || source.get(&hash)).await;
    match read {
        Ok(Ok(data)) if data.len() <= CHUNK_SIZE_BYTES => {
            // ChunkSource::get verified the bytes; a corrupt chunk never gets here.
            let len = data.len();
            let header = ResponseHeader {
                status: Status::Ok,
                len: len as u32,
            };
            respond(send, header, Bytes::from(data)).await?;
            counters.served(len);
            Ok(())
        }
        Ok(Ok(data)) => {
            let message = format!(
                "chunk {hash} is {} bytes, over the limit of {CHUNK_SIZE_BYTES}",
                data.len()
            );
            tracing::error!(%hash, "{message}");
            respond_error(send, &message).await
        }
        Ok(Err(StoreError::NotFound { .. })) => respond_status(send, Status::NotFound).await,
        Ok(Err(StoreError::Corrupt { .. })) => {
            tracing::warn!(%hash, "chunk is corrupt in the local store: answered Corrupt, not sent");
            respond_status(send, Status::Corrupt).await
        }
        Ok(Err(e)) => {
            tracing::warn!(%hash, error = %e, "chunk server: reading a chunk failed");
            respond_error(send, &format!("read chunk {hash}: {e}")).await
        }
        Err(e) => respond_error(send, &format!("read chunk {hash}: task failed: {e}")).await,
    }
}

async fn serve_put(
    send: &mut SendStream,
    source: Arc<dyn ChunkSource>,
    hash: Hash,
    payload: Vec<u8>,
    counters: &PeerCounters,
) -> Result<(), String> {
    let len = payload.len();
    let stored = tokio::task::spawn_blocking(move || source.put(&hash, &payload)).await;
    match stored {
        Ok(Ok(_)) => {
            // Verified and durable here, whether or not the answer reaches the peer.
            counters.received(len);
            respond_status(send, Status::Ok).await
        }
        Ok(Err(StoreError::HashMismatch { actual, .. })) => {
            tracing::warn!(%hash, %actual, "pushed chunk does not match its hash: rejected");
            respond_status(send, Status::Corrupt).await
        }
        Ok(Err(e)) => {
            tracing::warn!(%hash, error = %e, "chunk server: storing a pushed chunk failed");
            respond_error(send, &format!("store chunk {hash}: {e}")).await
        }
        Err(e) => respond_error(send, &format!("store chunk {hash}: task failed: {e}")).await,
    }
}

async fn serve_have(
    send: &mut SendStream,
    source: Arc<dyn ChunkSource>,
    payload: &[u8],
) -> Result<(), String> {
    let hashes = match decode_have_request(payload) {
        Ok(hashes) => hashes,
        Err(e) => return respond_error(send, &e.0).await,
    };
    let held = tokio::task::spawn_blocking(move || {
        hashes
            .iter()
            .map(|h| source.contains(h))
            .collect::<Vec<bool>>()
    })
    .await;
    match held {
        Ok(held) => {
            let answer = encode_have_response(&held);
            let header = ResponseHeader {
                status: Status::Ok,
                len: answer.len() as u32,
            };
            respond(send, header, Bytes::from(answer)).await
        }
        Err(e) => respond_error(send, &format!("check chunks: task failed: {e}")).await,
    }
}

async fn respond_status(send: &mut SendStream, status: Status) -> Result<(), String> {
    respond(send, ResponseHeader { status, len: 0 }, Bytes::new()).await
}

async fn respond_error(send: &mut SendStream, message: &str) -> Result<(), String> {
    let payload = Bytes::copy_from_slice(error_message_payload(message));
    let header = ResponseHeader {
        status: Status::Error,
        len: payload.len() as u32,
    };
    respond(send, header, payload).await
}

async fn respond(
    send: &mut SendStream,
    header: ResponseHeader,
    payload: Bytes,
) -> Result<(), String> {
    debug_assert_eq!(header.len as usize, payload.len());
    let mut chunks = [Bytes::copy_from_slice(&header.encode()), payload];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(|e| format!("send {:?} response: {e}", header.status))?;
    send.finish()
        .map_err(|e| format!("finish {:?} response: {e}", header.status))
}
