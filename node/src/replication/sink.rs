//! The upload side: [`ChunkSink`] writes each chunk locally and pushes it to every peer, and
//! reports it written once W copies are durable.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use quiver_transfer::{ChunkPeers, ChunkSource, ChunkStore, Hash, PeerClient};
use tokio::sync::Semaphore;

use super::store_call::StoreCall;
use super::PlantedBugs;
use crate::error::NodeError;

/// Chunks whose extra (beyond-quorum) pushes may still be in flight.
pub const BACKGROUND_PUSHES_MAX: usize = 16;

/// Where one chunk of an upload goes, and how many copies must be durable. Generic over the
/// store and the way to reach peers so that the simulator runs this same code (production:
/// the on-disk [`ChunkStore`] and QUIC's [`PeerClient`]).
#[derive(Clone)]
pub struct ChunkSink<S = ChunkStore, P = PeerClient> {
    pub store: S,
    pub peers: P,
    /// QUIC addresses of the other nodes, nearest first.
    pub targets: Vec<SocketAddr>,
    /// Copies that must be durable before the chunk counts as written (W).
    pub copies_required: usize,
    pub background: Arc<Semaphore>,
    /// Test-only switches (see [`PlantedBugs`]); default: none.
    #[doc(hidden)]
    pub planted: PlantedBugs,
}

impl<S: ChunkSource + Clone, P: ChunkPeers> ChunkSink<S, P> {
    /// Writes one chunk locally and to peers; returns once `copies_required`
    /// copies are durable. `hash` must have been computed from `data` by the
    /// caller (the local copy is not hashed again; peers verify theirs).
    pub async fn put(&self, hash: Hash, data: Bytes) -> Result<(), NodeError> {
        let mut remote_needed = self.copies_required.saturating_sub(1);
        if remote_needed > self.targets.len() {
            return Err(NodeError::TooFewCopies(format!(
                "write quorum is {} copies but only {} node(s) are known; lower --write-quorum or add nodes",
                self.copies_required,
                self.targets.len() + 1
            )));
        }
        let mut pushes: FuturesUnordered<_> = self
            .targets
            .iter()
            .map(|&peer| {
                let client = self.peers.clone();
                let data = data.clone();
                async move { (peer, client.push(peer, &hash, &data).await) }
            })
            .collect();
        if self.planted.ack_before_w_copies {
            // PLANTED BUG (test-only, see `PlantedBugs`): wait for no peer.
            remote_needed = 0;
        }
        let store = self.store.clone();
        let local_data = data.clone();
        // The hash was computed from these bytes by the caller (the upload's chunker).
        let local = StoreCall::start(move || store.put_verified(&hash, &local_data));
        let mut acked = 0;
        let mut failures = Vec::new();
        while acked < remote_needed {
            match pushes.next().await {
                Some((_, Ok(()))) => acked += 1,
                Some((peer, Err(e))) => failures.push(format!("{peer}: {e}")),
                None => break,
            }
        }
        match local.join().await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(NodeError::Storage(format!("store chunk {hash}: {e}"))),
            Err(e) => return Err(NodeError::Storage(format!("store chunk {hash}: {e}"))),
        }
        if acked < remote_needed {
            return Err(NodeError::TooFewCopies(format!(
                "only {} of {} copies of chunk {hash} are durable; peers failed: {}",
                acked + 1,
                self.copies_required,
                failures.join("; ")
            )));
        }
        if !pushes.is_empty() {
            // Copies beyond W finish in the background, but never hold up the
            // upload: when too many are already in flight, they are dropped
            // and repair brings those peers their copy later.
            match self.background.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        while let Some((peer, result)) = pushes.next().await {
                            if let Err(e) = result {
                                tracing::debug!(%peer, %hash, "background push failed (repair will retry): {e}");
                            }
                        }
                        drop(permit);
                    });
                }
                Err(_) => {
                    tracing::debug!(%hash, "background pushes saturated; leaving the extra copies to repair");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use quiver_transfer::MemoryChunkSource;

    use crate::replication::test_support::{peer, FakePeers};

    #[tokio::test]
    async fn a_chunk_counts_as_written_only_with_w_copies_unless_the_bug_is_planted() {
        let data = Bytes::from_static(b"weights");
        let hash = Hash::of(&data);
        let mut sink = ChunkSink {
            store: MemoryChunkSource::new(),
            peers: FakePeers {
                good: Arc::new(data.to_vec()),
            },
            targets: vec![peer(1), peer(2)],
            copies_required: 2,
            background: Arc::new(Semaphore::new(BACKGROUND_PUSHES_MAX)),
            planted: PlantedBugs::default(),
        };
        let err = sink
            .put(hash, data.clone())
            .await
            .expect_err("no peer took it");
        assert!(err.to_string().contains("only 1 of 2 copies"), "{err}");
        sink.planted.ack_before_w_copies = true;
        sink.put(hash, data)
            .await
            .expect("the planted bug acks one copy");
    }
}
