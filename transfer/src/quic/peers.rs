//! How node code reaches other nodes' chunks.
//!
//! [`ChunkPeers`] is the seam between the replication logic (multi-source fetch, write-quorum
//! pushes, read-through) and the network: production uses [`PeerClient`] (QUIC, mutual TLS);
//! the simulator supplies its own implementation over a simulated network. Verification is not
//! the transport's job: [`fetch_raw`](ChunkPeers::fetch_raw) returns the bytes as the peer sent
//! them and [`super::fetch_all`] checks them with [`verify_chunk`], so the check runs in the same
//! code wherever the fetch logic runs.

use std::future::Future;
use std::net::SocketAddr;

use super::{FetchError, PeerClient};
use crate::{ChunkRef, Hash};

/// A way to ask other nodes for chunks and to give them chunks.
pub trait ChunkPeers: Clone + Send + Sync + 'static {
    /// The bytes `peer` sends for `chunk`, NOT verified against its hash (the caller verifies,
    /// see [`verify_chunk`]). `NotFound` / `Corrupt` when the peer has no valid copy.
    fn fetch_raw(
        &self,
        peer: SocketAddr,
        chunk: &ChunkRef,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;

    /// Gives `peer` the chunk; `Ok` only once the peer has verified it and made it durable.
    fn push(
        &self,
        peer: SocketAddr,
        hash: &Hash,
        data: &[u8],
    ) -> impl Future<Output = Result<(), FetchError>> + Send;
}

impl ChunkPeers for PeerClient {
    fn fetch_raw(
        &self,
        peer: SocketAddr,
        chunk: &ChunkRef,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send {
        PeerClient::fetch_raw(self, peer, chunk)
    }

    fn push(
        &self,
        peer: SocketAddr,
        hash: &Hash,
        data: &[u8],
    ) -> impl Future<Output = Result<(), FetchError>> + Send {
        PeerClient::push(self, peer, hash, data)
    }
}

/// Checks bytes received from `peer` against `chunk` (length, then blake3). A mismatch is
/// [`FetchError::Corrupt`] naming the peer and the chunk.
pub fn verify_chunk(peer: SocketAddr, chunk: &ChunkRef, data: &[u8]) -> Result<(), FetchError> {
    if data.len() as u64 != chunk.size_bytes as u64 || Hash::of(data) != chunk.hash {
        tracing::warn!(%peer, hash = %chunk.hash, "peer sent bytes that do not match the chunk");
        return Err(FetchError::Corrupt {
            peer,
            hash: chunk.hash,
        });
    }
    Ok(())
}
