//! Read-through downloads: a chunk missing or corrupt locally is fetched from peers (verified)
//! and stored before it is served; concurrent misses of one chunk on one node share one fetch.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use quiver_transfer::{
    fetch_all, ChunkPeers, ChunkRef, ChunkSource, FetchOptions, Hash, StoreError,
};

use super::store_call::StoreCall;
use super::PlantedBugs;

/// One read-through fetch, shared by every download waiting for the same chunk. Its output is
/// the fetch's error, if any, as text (a shared output must be `Clone`).
type SharedFetch = Shared<BoxFuture<'static, Result<(), String>>>;

/// The read-through fetches in flight on one node, by chunk: a download that misses a chunk
/// another download is already fetching waits for that fetch and then reads the local copy,
/// instead of fetching the same bytes from a peer again. (A fleet of replicas starting together
/// on a node that lacks a version would otherwise pull every chunk once per replica.)
#[derive(Clone, Default)]
pub struct ReadThroughs {
    in_flight: Arc<Mutex<BTreeMap<Hash, SharedFetch>>>,
}

impl ReadThroughs {
    /// The fetch of `hash` in flight, or `start`'s, registered until it ends. The fetch runs as
    /// a task of its own: it finishes (and is forgotten) even if every download waiting for it
    /// goes away, and a panic in it fails its waiters instead of the next ones.
    fn join_or_start<F>(&self, hash: Hash, start: impl FnOnce() -> F) -> SharedFetch
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let shared = {
            let mut in_flight = lock(&self.in_flight);
            if let Some(fetch) = in_flight.get(&hash) {
                return fetch.clone();
            }
            let shared = async move {
                outcome.await.unwrap_or_else(|_| {
                    Err("the read-through fetch stopped (panic or shutdown)".into())
                })
            }
            .boxed()
            .shared();
            in_flight.insert(hash, shared.clone());
            shared
        };
        // Spawned with the registry unlocked: `Forget` takes the lock when the task is dropped.
        let forget = Forget {
            registry: self.in_flight.clone(),
            hash,
        };
        let fetch = start();
        tokio::spawn(async move {
            // Dropped when the fetch ends (before its waiters hear of it), panics or is dropped
            // with the runtime: a later miss starts a fetch of its own.
            let forget = forget;
            let outcome = fetch.await;
            drop(forget);
            let _ = done.send(outcome);
        });
        shared
    }

    /// Chunks being fetched right now.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }
}

/// Removes a fetch from its registry when dropped.
struct Forget {
    registry: Arc<Mutex<BTreeMap<Hash, SharedFetch>>>,
    hash: Hash,
}

impl Drop for Forget {
    fn drop(&mut self) {
        lock(&self.registry).remove(&self.hash);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock leaves a map that is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads one chunk for a download: locally if intact, else from peers (a fetch already in flight
/// for it on this node, in `read_throughs`, is joined rather than repeated). A corrupt local copy
/// is removed and replaced by a verified one.
pub async fn read_chunk<S: ChunkSource + Clone, P: ChunkPeers>(
    store: &S,
    peers: &P,
    sources: &[SocketAddr],
    chunk: &ChunkRef,
    read_throughs: &ReadThroughs,
) -> Result<Vec<u8>, StoreError> {
    read_chunk_with(
        store,
        peers,
        sources,
        chunk,
        read_throughs,
        PlantedBugs::default(),
    )
    .await
}

/// [`read_chunk`] with the simulator's test-only switches (see [`PlantedBugs`]).
#[doc(hidden)]
pub async fn read_chunk_with<S: ChunkSource + Clone, P: ChunkPeers>(
    store: &S,
    peers: &P,
    sources: &[SocketAddr],
    chunk: &ChunkRef,
    read_throughs: &ReadThroughs,
    planted: PlantedBugs,
) -> Result<Vec<u8>, StoreError> {
    let local = {
        let store = store.clone();
        let hash = chunk.hash;
        StoreCall::start(move || {
            if planted.skip_chunk_verify {
                // PLANTED BUG (test-only): the stored bytes, unchecked.
                store.get_unverified(&hash)
            } else {
                store.get(&hash)
            }
        })
        .join()
        .await
        .map_err(|e| join_error(chunk, e))?
    };
    let cause = match local {
        Ok(data) => return Ok(data),
        Err(e @ StoreError::Corrupt { .. }) => {
            tracing::warn!(chunk = %chunk.hash, "local copy is corrupt; removing it and fetching from peers");
            let s = store.clone();
            let hash = chunk.hash;
            StoreCall::start(move || s.remove(&hash))
                .join()
                .await
                .map_err(|e| join_error(chunk, e))??;
            e
        }
        Err(e @ StoreError::NotFound { .. }) => e,
        Err(e) => return Err(e),
    };
    if sources.is_empty() {
        return Err(cause);
    }
    let fetch = read_throughs.join_or_start(chunk.hash, || {
        let (peers, store, sources, chunk) = (
            peers.clone(),
            store.clone(),
            sources.to_vec(),
            chunk.clone(),
        );
        async move {
            fetch_all(
                &peers,
                &store,
                std::slice::from_ref(&chunk),
                &sources,
                FetchOptions::default(),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
    });
    match fetch.await {
        Ok(()) => {
            let s = store.clone();
            let hash = chunk.hash;
            StoreCall::start(move || s.get(&hash))
                .join()
                .await
                .map_err(|e| join_error(chunk, e))?
        }
        Err(e) => {
            tracing::warn!(chunk = %chunk.hash, "no peer could supply the chunk: {e}");
            Err(cause)
        }
    }
}
fn join_error(chunk: &ChunkRef, e: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        context: format!("read chunk {}", chunk.hash),
        source: std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::Future;

    use quiver_transfer::{FetchError, MemoryChunkSource};

    use crate::replication::test_support::{peer, FakePeers, RottenStore};

    /// Peers that count fetches; each answers `good` after yielding once, so that concurrent
    /// readers overlap with it. With `panic_first`, the first fetch panics instead.
    #[derive(Clone)]
    struct CountingPeers {
        good: Arc<Vec<u8>>,
        fetches: Arc<std::sync::atomic::AtomicUsize>,
        panic_first: bool,
    }

    impl CountingPeers {
        fn new(good: &[u8], panic_first: bool) -> Self {
            CountingPeers {
                good: Arc::new(good.to_vec()),
                fetches: Arc::default(),
                panic_first,
            }
        }

        fn fetches(&self) -> usize {
            self.fetches.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl ChunkPeers for CountingPeers {
        fn fetch_raw(
            &self,
            _peer: SocketAddr,
            _chunk: &ChunkRef,
        ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send {
            let first = self
                .fetches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                == 0;
            let panic = first && self.panic_first;
            let good = self.good.to_vec();
            async move {
                assert!(!panic, "planted panic in the first fetch");
                tokio::task::yield_now().await;
                Ok(good)
            }
        }

        async fn push(&self, _: SocketAddr, _: &Hash, _: &[u8]) -> Result<(), FetchError> {
            Ok(())
        }
    }

    fn weights() -> (Vec<u8>, ChunkRef) {
        let good = b"weights".to_vec();
        let chunk = ChunkRef {
            hash: Hash::of(&good),
            size_bytes: good.len() as u32,
        };
        (good, chunk)
    }

    #[tokio::test]
    async fn concurrent_downloads_missing_a_chunk_fetch_it_once() {
        let (good, chunk) = weights();
        let peers = CountingPeers::new(&good, false);
        let store = MemoryChunkSource::default();
        let read_throughs = ReadThroughs::default();
        let sources = [peer(1), peer(2)];
        let reads = (0..8).map(|_| read_chunk(&store, &peers, &sources, &chunk, &read_throughs));
        for bytes in futures::future::join_all(reads).await {
            assert_eq!(bytes.unwrap(), good);
        }
        assert_eq!(peers.fetches(), 1, "eight readers, one fetch");
        assert_eq!(
            read_throughs.in_flight(),
            0,
            "the finished fetch is forgotten"
        );
        // Each node has its own: another node's readers fetch for themselves.
        let elsewhere = MemoryChunkSource::default();
        read_chunk(
            &elsewhere,
            &peers,
            &sources,
            &chunk,
            &ReadThroughs::default(),
        )
        .await
        .unwrap();
        assert_eq!(peers.fetches(), 2);
    }

    #[tokio::test]
    async fn a_fetch_outlives_its_waiters_and_a_panicking_one_is_not_joined_again() {
        let (good, chunk) = weights();
        let sources = [peer(1)];
        // Every download waiting for the fetch goes away: the fetch still finishes and is
        // forgotten, and the chunk is stored.
        let peers = CountingPeers::new(&good, false);
        let store = MemoryChunkSource::default();
        let read_throughs = ReadThroughs::default();
        {
            let read = read_chunk(&store, &peers, &sources, &chunk, &read_throughs);
            futures::pin_mut!(read);
            assert!(futures::poll!(read.as_mut()).is_pending());
            assert_eq!(read_throughs.in_flight(), 1);
        }
        // The fetch's task runs on without anyone waiting (a few turns of the scheduler).
        for _ in 0..100 {
            if read_throughs.in_flight() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(read_throughs.in_flight(), 0, "the abandoned fetch finished");
        assert!(store.contains(&chunk.hash), "and stored the chunk");
        let again = read_chunk(&store, &peers, &sources, &chunk, &read_throughs).await;
        assert_eq!(again.unwrap(), good);
        assert_eq!(peers.fetches(), 1);

        // A fetch that panics fails its waiter and is forgotten: the next miss fetches anew.
        let peers = CountingPeers::new(&good, true);
        let store = MemoryChunkSource::default();
        let read_throughs = ReadThroughs::default();
        let failed = read_chunk(&store, &peers, &sources, &chunk, &read_throughs).await;
        assert!(
            matches!(failed, Err(StoreError::NotFound { .. })),
            "{failed:?}"
        );
        assert_eq!(read_throughs.in_flight(), 0);
        let fixed = read_chunk(&store, &peers, &sources, &chunk, &read_throughs).await;
        assert_eq!(fixed.unwrap(), good);
    }

    #[tokio::test]
    async fn a_rotten_local_copy_is_replaced_unless_the_bug_is_planted() {
        let good = b"weights".to_vec();
        let chunk = ChunkRef {
            hash: Hash::of(&good),
            size_bytes: good.len() as u32,
        };
        let peers = FakePeers {
            good: Arc::new(good.clone()),
        };
        let store = RottenStore::default();
        store.put(&chunk.hash, &good).unwrap();
        store.rotten.lock().unwrap().insert(chunk.hash);
        let planted = PlantedBugs {
            skip_chunk_verify: true,
            ..PlantedBugs::default()
        };
        let read_throughs = ReadThroughs::default();
        let bad = read_chunk_with(&store, &peers, &[peer(1)], &chunk, &read_throughs, planted)
            .await
            .unwrap();
        assert_ne!(bad, good, "the planted bug hands out the rotten copy");
        let fixed = read_chunk(&store, &peers, &[peer(1)], &chunk, &read_throughs)
            .await
            .unwrap();
        assert_eq!(fixed, good);
        assert_eq!(
            store.get(&chunk.hash).unwrap(),
            good,
            "the copy was replaced"
        );
    }
}
