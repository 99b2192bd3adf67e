//! The chunk client: one quinn endpoint per address family, one pooled connection per peer.
//! Bytes of chunk data fetched and pushed are counted per peer ([`PeerClient::stats`]): by the
//! node the server's certificate names when the client has a gate to read it, else by address.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use quinn::{Connection, ReadError, ReadExactError, RecvStream, SendStream, WriteError};

use super::config::{client_config, end_entity, endpoint, PeerGate, QuicCerts, TransportTuning};
use super::peers::verify_chunk;
use super::stats::{PeerCounters, PeerLabel, TransferStats};
use super::wire::{
    decode_have_response, encode_have_request, Op, RequestHeader, ResponseHeader, Status,
    RESPONSE_HEADER_BYTES,
};
use super::{
    FetchError, QuicTls, TransferError, CLIENT_POOL_CONNECTIONS_MAX, CONNECTIONS_PER_PEER,
    CONNECT_TIMEOUT, HAVE_BATCH_MAX, PEER_TLS_SERVER_NAME, REQUEST_TIMEOUT,
};
use crate::{ChunkRef, Hash, CHUNK_SIZE_BYTES};

/// Close code when the last handle to a client is dropped.
const CLOSE_CLIENT_DROPPED: u32 = 0;

type Slot = Arc<tokio::sync::Mutex<Option<Pooled>>>;

/// A pooled connection and the counters of the peer at its other end.
struct Pooled {
    connection: Connection,
    counters: Arc<PeerCounters>,
}

/// Talks the chunk protocol to peers. Cheap to clone (clones share the endpoint and the pool).
///
/// [`CONNECTIONS_PER_PEER`] connections per peer address, opened on first use and reused;
/// requests take them in turn (each connection's packets are processed by its own task, so bulk
/// transfers to one peer use more than one core). A connection found closed is replaced on the
/// next request (a request that finds a pooled connection dead before sending
/// anything is retried once on a fresh one). Every call is bounded: [`CONNECT_TIMEOUT`] for the
/// handshake, [`REQUEST_TIMEOUT`] for the whole call.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<Inner>,
}

struct Inner {
    v4: quinn::Endpoint,
    /// None where the host has no IPv6.
    v6: Option<quinn::Endpoint>,
    /// Keyed by (peer, lane); lane < [`CONNECTIONS_PER_PEER`].
    pool: Mutex<HashMap<(SocketAddr, usize), Slot>>,
    /// Picks the lane of the next request.
    next_lane: AtomicUsize,
    /// Names the node behind each new connection (a node's client only).
    gate: Option<Arc<dyn PeerGate>>,
    stats: Arc<TransferStats>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for endpoint in std::iter::once(&self.v4).chain(self.v6.as_ref()) {
            endpoint.close(CLOSE_CLIENT_DROPPED.into(), b"client dropped");
        }
    }
}

impl PeerClient {
    /// A client presenting this node's certificate and trusting only the cluster CA. Must be
    /// called within a tokio runtime.
    pub fn new(tls: &QuicTls) -> Result<PeerClient, TransferError> {
        PeerClient::with_tuning(tls, &TransportTuning::chosen())
    }

    /// A client presenting this node's certificate as `certs` holds it at each handshake (so
    /// a renewed one is used for new connections; pooled ones keep theirs until they close).
    pub fn with_certs(tls: &QuicTls, certs: &QuicCerts) -> Result<PeerClient, TransferError> {
        PeerClient::build(tls, &TransportTuning::chosen(), Some(certs))
    }

    /// [`PeerClient::new`] with explicit transport tuning (benchmarks).
    pub fn with_tuning(
        tls: &QuicTls,
        tuning: &TransportTuning,
    ) -> Result<PeerClient, TransferError> {
        PeerClient::build(tls, tuning, None)
    }

    fn build(
        tls: &QuicTls,
        tuning: &TransportTuning,
        certs: Option<&QuicCerts>,
    ) -> Result<PeerClient, TransferError> {
        let config = client_config(tls, tuning, certs)?;
        let mut v4 = endpoint(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), None, tuning)?;
        v4.set_default_client_config(config.clone());
        let v6 = match endpoint(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), None, tuning) {
            Ok(mut v6) => {
                v6.set_default_client_config(config);
                Some(v6)
            }
            Err(e) => {
                tracing::debug!(error = %e, "no IPv6 endpoint for the chunk client");
                None
            }
        };
        Ok(PeerClient {
            inner: Arc::new(Inner {
                v4,
                v6,
                pool: Mutex::new(HashMap::new()),
                next_lane: AtomicUsize::new(0),
                gate: certs.map(|c| c.gate.clone()),
                stats: Arc::new(TransferStats::default()),
            }),
        })
    }

    /// Bytes of chunk data this client (and its clones) fetched and pushed, per peer.
    pub fn stats(&self) -> &Arc<TransferStats> {
        &self.inner.stats
    }

    /// Fetches one chunk; the bytes are blake3-verified against `chunk.hash` (and its size)
    /// before they are returned.
    pub async fn fetch(&self, peer: SocketAddr, chunk: &ChunkRef) -> Result<Vec<u8>, FetchError> {
        let data = self.fetch_raw(peer, chunk).await?;
        verify_chunk(peer, chunk, &data)?;
        Ok(data)
    }

    /// Fetches one chunk without checking its hash (its length is checked): for callers that
    /// verify themselves, as [`super::fetch_all`] does.
    pub async fn fetch_raw(
        &self,
        peer: SocketAddr,
        chunk: &ChunkRef,
    ) -> Result<Vec<u8>, FetchError> {
        let hash = chunk.hash;
        bounded(peer, hash, self.fetch_unbounded(peer, chunk)).await
    }

    /// Pushes one chunk; `Ok` only once the peer has verified it and made it durable.
    pub async fn push(&self, peer: SocketAddr, hash: &Hash, data: &[u8]) -> Result<(), FetchError> {
        if data.len() > CHUNK_SIZE_BYTES {
            return Err(FetchError::Protocol {
                peer,
                detail: format!(
                    "chunk {hash} is {} bytes, over the limit of {CHUNK_SIZE_BYTES}; not sent",
                    data.len()
                ),
            });
        }
        // Not hashed here: the peer verifies what it receives and refuses a mismatch.
        bounded(peer, *hash, self.push_unbounded(peer, *hash, data)).await
    }

    /// Which of `hashes` the peer holds (by presence; the peer does not re-verify). Asks in
    /// batches of at most [`HAVE_BATCH_MAX`], one after another; errors name the first hash of
    /// the batch that failed.
    pub async fn have(&self, peer: SocketAddr, hashes: &[Hash]) -> Result<Vec<bool>, FetchError> {
        let mut held = Vec::with_capacity(hashes.len());
        for batch in hashes.chunks(HAVE_BATCH_MAX) {
            held.extend(bounded(peer, batch[0], self.have_batch(peer, batch)).await?);
        }
        debug_assert_eq!(held.len(), hashes.len());
        Ok(held)
    }

    /// Opens (or checks) the pooled connection to `peer` without making a request.
    pub async fn connect(&self, peer: SocketAddr) -> Result<(), FetchError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.connection(peer)).await {
            Ok(connected) => connected.map(|_| ()),
            Err(_) => Err(FetchError::Connect {
                peer,
                detail: format!("no connection within {REQUEST_TIMEOUT:?}"),
            }),
        }
    }

    async fn fetch_unbounded(
        &self,
        peer: SocketAddr,
        chunk: &ChunkRef,
    ) -> Result<Vec<u8>, FetchError> {
        let hash = chunk.hash;
        let size = chunk.size_bytes as usize;
        if size > CHUNK_SIZE_BYTES {
            return Err(FetchError::Protocol {
                peer,
                detail: format!(
                    "chunk {hash} is listed as {size} bytes, over the limit of {CHUNK_SIZE_BYTES}; not requested"
                ),
            });
        }
        let header = RequestHeader {
            op: Op::Get,
            hash,
            len: 0,
        };
        let (response, mut recv, counters) = self.call(peer, header, Bytes::new()).await?;
        match response.status {
            Status::Ok if response.len as usize != size => {
                // Bytes of another length cannot match the hash: do not read them.
                tracing::warn!(%peer, %hash, expected = size, got = response.len, "peer offered a chunk of the wrong length");
                Err(FetchError::Corrupt { peer, hash })
            }
            Status::Ok => {
                let data = read_payload(&mut recv, size)
                    .await
                    .map_err(|e| read_error(peer, "read chunk bytes", e))?;
                counters.fetched(data.len());
                Ok(data)
            }
            Status::NotFound => Err(FetchError::NotFound { peer, hash }),
            Status::Corrupt => Err(FetchError::Corrupt { peer, hash }),
            Status::Error => Err(remote_error(peer, &mut recv, response, "GET", hash).await),
        }
    }

    async fn push_unbounded(
        &self,
        peer: SocketAddr,
        hash: Hash,
        data: &[u8],
    ) -> Result<(), FetchError> {
        let header = RequestHeader {
            op: Op::Put,
            hash,
            len: data.len() as u32,
        };
        let (response, mut recv, counters) = self
            .call(peer, header, Bytes::copy_from_slice(data))
            .await?;
        match response.status {
            Status::Ok => {
                counters.pushed(data.len());
                Ok(())
            }
            Status::Corrupt => Err(FetchError::Corrupt { peer, hash }),
            Status::NotFound => Err(FetchError::Protocol {
                peer,
                detail: format!("answered NotFound to a PUT of chunk {hash}"),
            }),
            Status::Error => Err(remote_error(peer, &mut recv, response, "PUT", hash).await),
        }
    }

    async fn have_batch(&self, peer: SocketAddr, batch: &[Hash]) -> Result<Vec<bool>, FetchError> {
        let payload = encode_have_request(batch);
        let header = RequestHeader {
            op: Op::Have,
            hash: Hash([0; 32]),
            len: payload.len() as u32,
        };
        let (response, mut recv, _) = self.call(peer, header, Bytes::from(payload)).await?;
        match response.status {
            Status::Ok => {
                let answer = read_payload(&mut recv, response.len as usize)
                    .await
                    .map_err(|e| read_error(peer, "read HAVE answer", e))?;
                decode_have_response(&answer, batch.len())
                    .map_err(|e| FetchError::Protocol { peer, detail: e.0 })
            }
            Status::Error => Err(remote_error(peer, &mut recv, response, "HAVE", batch[0]).await),
            status => Err(FetchError::Protocol {
                peer,
                detail: format!("answered {status:?} to HAVE"),
            }),
        }
    }

    /// Sends one request on a new stream and reads the answer's header; with the counters of
    /// the peer that answers.
    async fn call(
        &self,
        peer: SocketAddr,
        header: RequestHeader,
        payload: Bytes,
    ) -> Result<(ResponseHeader, RecvStream, Arc<PeerCounters>), FetchError> {
        debug_assert_eq!(header.len as usize, payload.len());
        let (mut send, mut recv, counters) = self.open_stream(peer).await?;
        let mut chunks = [Bytes::copy_from_slice(&header.encode()), payload];
        send.write_all_chunks(&mut chunks)
            .await
            .map_err(|e| write_error(peer, e))?;
        send.finish().map_err(|e| FetchError::Protocol {
            peer,
            detail: format!("finish request: {e}"),
        })?;
        let mut buf = [0u8; RESPONSE_HEADER_BYTES];
        recv.read_exact(&mut buf)
            .await
            .map_err(|e| read_error(peer, "read answer header", e))?;
        let response = ResponseHeader::decode(&buf, header.op)
            .map_err(|e| FetchError::Protocol { peer, detail: e.0 })?;
        Ok((response, recv, counters))
    }

    async fn open_stream(
        &self,
        peer: SocketAddr,
    ) -> Result<(SendStream, RecvStream, Arc<PeerCounters>), FetchError> {
        let (connection, counters, fresh) = self.connection(peer).await?;
        match connection.open_bi().await {
            Ok((send, recv)) => return Ok((send, recv, counters)),
            Err(e) if fresh => {
                return Err(FetchError::Connect {
                    peer,
                    detail: format!("open a stream: {e}"),
                })
            }
            Err(e) => tracing::debug!(%peer, error = %e, "pooled connection is dead, reconnecting"),
        }
        let (connection, counters, _) = self.connection(peer).await?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| FetchError::Connect {
                peer,
                detail: format!("open a stream: {e}"),
            })?;
        Ok((send, recv, counters))
    }

    /// The pooled connection to `peer`, or a new one, with the counters of the peer it reaches.
    /// `true` if it was made now.
    async fn connection(
        &self,
        peer: SocketAddr,
    ) -> Result<(Connection, Arc<PeerCounters>, bool), FetchError> {
        let lane = self.inner.next_lane.fetch_add(1, Ordering::Relaxed) % CONNECTIONS_PER_PEER;
        let slot = self.slot((peer, lane));
        // One handshake at a time per lane: concurrent callers wait and share its result.
        let mut pooled = slot.lock().await;
        if let Some(p) = pooled.as_ref() {
            if p.connection.close_reason().is_none() {
                return Ok((p.connection.clone(), p.counters.clone(), false));
            }
        }
        *pooled = None;
        let endpoint = if peer.is_ipv4() {
            &self.inner.v4
        } else {
            self.inner.v6.as_ref().ok_or_else(|| FetchError::Connect {
                peer,
                detail: "this host has no IPv6 socket for the chunk client".into(),
            })?
        };
        let connecting =
            endpoint
                .connect(peer, PEER_TLS_SERVER_NAME)
                .map_err(|e| FetchError::Connect {
                    peer,
                    detail: format!("start a QUIC connection: {e}"),
                })?;
        let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                return Err(FetchError::Connect {
                    peer,
                    detail: format!("QUIC/TLS handshake failed: {e}"),
                })
            }
            Err(_) => {
                return Err(FetchError::Connect {
                    peer,
                    detail: format!("no QUIC/TLS handshake within {CONNECT_TIMEOUT:?}"),
                })
            }
        };
        let node = self
            .inner
            .gate
            .as_ref()
            .and_then(|gate| end_entity(&connection).and_then(|cert| gate.node_of(&cert)));
        let label = node.map_or(PeerLabel::Addr(peer), PeerLabel::Node);
        let counters = self.inner.stats.peer(label);
        *pooled = Some(Pooled {
            connection: connection.clone(),
            counters: counters.clone(),
        });
        Ok((connection, counters, true))
    }

    fn slot(&self, key: (SocketAddr, usize)) -> Slot {
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = pool.get(&key) {
            return slot.clone();
        }
        if pool.len() >= CLIENT_POOL_CONNECTIONS_MAX {
            // Drop slots that hold no live connection and are not in use; then, if still full,
            // any one (its connection closes when its last user finishes).
            pool.retain(|_, slot| match slot.try_lock() {
                Ok(pooled) => pooled
                    .as_ref()
                    .is_some_and(|p| p.connection.close_reason().is_none()),
                Err(_) => true,
            });
            if pool.len() >= CLIENT_POOL_CONNECTIONS_MAX {
                if let Some(evicted) = pool.keys().next().copied() {
                    pool.remove(&evicted);
                }
            }
        }
        let slot = Slot::default();
        pool.insert(key, slot.clone());
        debug_assert!(pool.len() <= CLIENT_POOL_CONNECTIONS_MAX);
        slot
    }
}

/// Applies [`REQUEST_TIMEOUT`] to a whole call.
async fn bounded<T>(
    peer: SocketAddr,
    hash: Hash,
    call: impl std::future::Future<Output = Result<T, FetchError>>,
) -> Result<T, FetchError> {
    tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .unwrap_or(Err(FetchError::Timeout { peer, hash }))
}

/// Reads exactly `len` bytes (already checked against its bound) without zero-filling a buffer.
async fn read_payload(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>, ReadExactError> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        match recv.read_chunk(len - out.len(), true).await? {
            Some(chunk) => out.extend_from_slice(&chunk.bytes),
            None => return Err(ReadExactError::FinishedEarly(out.len())),
        }
    }
    debug_assert_eq!(out.len(), len);
    Ok(out)
}

/// The message of an Error answer, as a Protocol error.
async fn remote_error(
    peer: SocketAddr,
    recv: &mut RecvStream,
    response: ResponseHeader,
    op: &str,
    hash: Hash,
) -> FetchError {
    // Bounded by ResponseHeader::decode (ERROR_MESSAGE_BYTES_MAX).
    let message = match read_payload(recv, response.len as usize).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(message unreadable: {e})"),
    };
    FetchError::Protocol {
        peer,
        detail: format!("peer failed {op} for chunk {hash}: {message}"),
    }
}

fn write_error(peer: SocketAddr, e: WriteError) -> FetchError {
    match e {
        WriteError::ConnectionLost(e) => FetchError::Connect {
            peer,
            detail: format!("connection lost while sending a request: {e}"),
        },
        other => FetchError::Protocol {
            peer,
            detail: format!("send request: {other}"),
        },
    }
}

fn read_error(peer: SocketAddr, what: &str, e: ReadExactError) -> FetchError {
    match e {
        ReadExactError::ReadError(ReadError::ConnectionLost(e)) => FetchError::Connect {
            peer,
            detail: format!("connection lost ({what}): {e}"),
        },
        ReadExactError::FinishedEarly(n) => FetchError::Protocol {
            peer,
            detail: format!("{what}: the answer ended after {n} bytes"),
        },
        ReadExactError::ReadError(other) => FetchError::Protocol {
            peer,
            detail: format!("{what}: {other}"),
        },
    }
}
