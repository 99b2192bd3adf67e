//! Artifact replication between nodes: write-quorum pushes during upload,
//! read-through on download, and background repair.
//!
//! - Upload: every chunk is written locally and pushed over QUIC to every
//!   peer as it arrives; the upload waits only until W copies of each chunk
//!   are durable (the local one plus W−1 peers). Pushes beyond W finish in the
//!   background, bounded by `BACKGROUND_PUSHES_MAX` chunks in flight.
//! - Download: a chunk missing or corrupt locally is fetched from peers
//!   (verified) and stored before it is served; a corrupt local copy is
//!   removed first, so the bad bytes are never served and the copy is fixed.
//! - Repair: a loop walks every READY version and fetches what this node
//!   lacks from its peers, so every node converges to a full copy. A scrub
//!   re-verifies held copies a bounded number of bytes per pass, so a copy
//!   that rotted on disk is found, removed and fetched again.
//!
//! [`PlantedBugs`] are the simulator's test-only switches that break this
//! code on purpose (off by default, settable from no CLI or config).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{FuturesUnordered, StreamExt};
use quiver_transfer::{
    fetch_all, ChunkPeers, ChunkRef, ChunkSource, ChunkStore, FetchError, FetchOptions, Hash,
    PeerClient, StoreError,
};
use tokio::sync::Semaphore;

use crate::error::NodeError;

/// Chunks whose extra (beyond-quorum) pushes may still be in flight.
pub const BACKGROUND_PUSHES_MAX: usize = 16;
/// How often repair looks for missing chunks.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(2);

/// Known bugs the simulator (quiver-sim) plants in this module's real code
/// paths, to show that its checkers notice them. Test-only: every switch is
/// off by default and production code never sets one (nothing in the
/// quiver-node CLI or config reaches them); only code that builds a
/// [`ChunkSink`] or calls [`read_chunk_with`] itself can.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// PLANTED BUG `ack-before-w-copies`: [`ChunkSink::put`] reports success
    /// once the local copy is durable; every push to a peer goes to the
    /// background, so a version can be READY with fewer than W copies.
    pub ack_before_w_copies: bool,
    /// PLANTED BUG `skip-chunk-verify`: [`read_chunk_with`] hands out the
    /// local copy without checking it (`ChunkSource::get_unverified`). (Bytes
    /// fetched from peers cannot be planted the same way: the store verifies
    /// them again on `put`.)
    pub skip_chunk_verify: bool,
}

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

/// A blocking chunk-store call (disk I/O, fsync), started at once. Under a multi-threaded
/// runtime (production) it runs on tokio's blocking pool; under a current-thread runtime it runs
/// inline. The simulator needs the latter: its stores are in memory, and a pool thread finishing
/// in wall-clock order would wake tasks in an order the seed does not decide.
enum StoreCall<T> {
    Done(T),
    Pool(tokio::task::JoinHandle<T>),
}

impl<T: Send + 'static> StoreCall<T> {
    fn start(call: impl FnOnce() -> T + Send + 'static) -> Self {
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                StoreCall::Pool(tokio::task::spawn_blocking(call))
            }
            _ => StoreCall::Done(call()),
        }
    }

    async fn join(self) -> Result<T, tokio::task::JoinError> {
        match self {
            StoreCall::Done(value) => Ok(value),
            StoreCall::Pool(handle) => handle.await,
        }
    }
}

fn join_error(chunk: &ChunkRef, e: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        context: format!("read chunk {}", chunk.hash),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Clusters up to this size keep a full copy of every version on every node.
pub const FULL_REPLICATION_NODES_MAX: usize = 5;

/// Whether node `me` should hold a full copy of the version with manifest
/// `root` (its repair target). Up to `FULL_REPLICATION_NODES_MAX` nodes:
/// every node. Beyond that: one node per region, chosen by rendezvous
/// hashing of (root, node id), so choices spread across nodes and agree on
/// every node without coordination. Other nodes read through on demand.
pub fn should_hold(root: &str, me: u64, nodes: &[(u64, String)]) -> bool {
    if nodes.len() <= FULL_REPLICATION_NODES_MAX {
        return true;
    }
    let Some((_, region)) = nodes.iter().find(|(id, _)| *id == me) else {
        return true;
    };
    let score = |id: u64| {
        let mut h = blake3::Hasher::new();
        h.update(root.as_bytes());
        h.update(&id.to_le_bytes());
        *h.finalize().as_bytes()
    };
    nodes
        .iter()
        .filter(|(_, r)| r == region)
        .max_by_key(|(id, _)| (score(*id), *id))
        .is_some_and(|(id, _)| *id == me)
}

/// Bytes of held chunks the scrub re-verifies per repair pass (at
/// [`REPAIR_INTERVAL`], 16 MiB/s of background reads): a copy that rotted on
/// disk is found within (bytes held / this) passes.
pub const SCRUB_BYTES_PER_PASS: u64 = 32 * 1024 * 1024;

/// Manifest roots this node has verified complete (all chunks present), so
/// repair does not stat them again on every pass; and where the scrub of
/// complete versions goes on.
#[derive(Default)]
pub struct RepairState {
    complete: Mutex<BTreeSet<String>>,
    /// The root the last scrub step ended with.
    scrub_cursor: Mutex<Option<String>>,
}

impl RepairState {
    pub fn is_complete(&self, root: &str) -> bool {
        self.complete
            .lock()
            .map(|set| set.contains(root))
            .unwrap_or(false)
    }

    pub fn mark_complete(&self, root: &str) {
        if let Ok(mut set) = self.complete.lock() {
            set.insert(root.to_string());
        }
    }

    pub fn forget(&self, root: &str) {
        if let Ok(mut set) = self.complete.lock() {
            set.remove(root);
        }
    }
}

/// What one scrub step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scrubbed {
    /// Distinct chunks read and verified.
    pub checked_chunks: usize,
    /// Copies found rotten (removed) or gone; their versions are no longer
    /// complete, so the next repair pass fetches good copies.
    pub bad: Vec<Hash>,
}

/// One step of the scrub: re-verifies the held copies of versions repair
/// counts as complete, `budget_bytes` at most (at least one version), in
/// root order from where the last step stopped, wrapping around. Repair
/// itself only sees whether a chunk is present (`missing_chunks`), so
/// without this a copy that rotted on disk would stay bad until a download
/// happened to read it. A rotten copy is removed and its version forgotten
/// (`RepairState::forget`), so the next pass fetches a verified copy.
/// `roots`: the READY versions this node should hold; `chunks_of`: a root's
/// chunks, from its manifest.
pub async fn scrub_step<S: ChunkSource + Clone>(
    store: &S,
    state: &RepairState,
    roots: &[String],
    mut chunks_of: impl FnMut(&str) -> Option<Vec<ChunkRef>>,
    budget_bytes: u64,
) -> Scrubbed {
    let complete: BTreeSet<&String> = roots.iter().filter(|r| state.is_complete(r)).collect();
    let cursor = state.scrub_cursor.lock().ok().and_then(|c| c.clone());
    let (after, before): (Vec<&String>, Vec<&String>) = complete
        .iter()
        .partition(|r| cursor.as_ref().is_none_or(|c| r.as_str() > c.as_str()));
    let mut report = Scrubbed::default();
    let mut bytes = 0u64;
    for root in after.into_iter().chain(before) {
        if bytes >= budget_bytes {
            break;
        }
        let Some(chunks) = chunks_of(root) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        let mut bad = Vec::new();
        for chunk in chunks.into_iter().filter(|c| seen.insert(c.hash)) {
            let s = store.clone();
            let hash = chunk.hash;
            let intact = StoreCall::start(move || match s.get(&hash) {
                Ok(_) => Some(true),
                Err(StoreError::Corrupt { .. }) => {
                    if let Err(e) = s.remove(&hash) {
                        tracing::warn!(%hash, "remove rotten chunk: {e}");
                    }
                    Some(false)
                }
                Err(StoreError::NotFound { .. }) => Some(false),
                // An I/O error says nothing about the copy: try again next round.
                Err(_) => None,
            })
            .join()
            .await
            .ok()
            .flatten();
            report.checked_chunks += 1;
            bytes += chunk.size_bytes as u64;
            if intact == Some(false) {
                bad.push(hash);
            }
        }
        if !bad.is_empty() {
            tracing::warn!(%root, chunks = bad.len(), "scrub found rotten or missing chunks; repair will fetch them");
            state.forget(root);
            report.bad.extend(bad);
        }
        if let Ok(mut c) = state.scrub_cursor.lock() {
            *c = Some(root.to_string());
        }
    }
    report
}

/// What one repair of one version did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repaired {
    /// Every chunk is now held; `fetched_chunks` of them were fetched in this pass.
    Complete { fetched_chunks: usize },
    /// Chunks are missing and there is no peer to fetch them from.
    NoSources { missing_chunks: usize },
}

/// Repairs one version on one node: fetches from `sources` (nearest first) every chunk of
/// `chunks` that `store` lacks, verified ([`fetch_all`]). The per-version step of the repair
/// loop, generic so that the simulator runs the same code. An error leaves what was fetched in
/// the store; the next pass resumes.
pub async fn repair_version<S: ChunkSource + Clone, P: ChunkPeers>(
    store: &S,
    peers: &P,
    sources: &[SocketAddr],
    chunks: Vec<ChunkRef>,
) -> Result<Repaired, FetchError> {
    let missing = missing_chunks(store, chunks).await;
    if missing.is_empty() {
        return Ok(Repaired::Complete { fetched_chunks: 0 });
    }
    if sources.is_empty() {
        return Ok(Repaired::NoSources {
            missing_chunks: missing.len(),
        });
    }
    let report = fetch_all(peers, store, &missing, sources, FetchOptions::default()).await?;
    Ok(Repaired::Complete {
        fetched_chunks: report.fetched_chunks,
    })
}

/// The chunks of `chunks` this store does not hold.
pub async fn missing_chunks<S: ChunkSource + Clone>(
    store: &S,
    chunks: Vec<ChunkRef>,
) -> Vec<ChunkRef> {
    let store = store.clone();
    StoreCall::start(move || {
        let mut seen = BTreeSet::new();
        chunks
            .into_iter()
            .filter(|c| seen.insert(c.hash) && !store.contains(&c.hash))
            .collect()
    })
    .join()
    .await
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(regions: &[&str]) -> Vec<(u64, String)> {
        regions
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 1, r.to_string()))
            .collect()
    }

    use std::collections::BTreeMap;
    use std::collections::BTreeSet as Set;
    use std::future::Future;
    use std::sync::Mutex as StdMutex;

    use quiver_transfer::{FetchError, MemoryChunkSource};

    /// Peers for the planted-bug tests: every push fails at once; every fetch returns `good`.
    #[derive(Clone)]
    struct FakePeers {
        good: Arc<Vec<u8>>,
    }

    impl ChunkPeers for FakePeers {
        fn fetch_raw(
            &self,
            _peer: SocketAddr,
            _chunk: &ChunkRef,
        ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send {
            let good = self.good.to_vec();
            async move { Ok(good) }
        }

        async fn push(
            &self,
            peer: SocketAddr,
            _hash: &Hash,
            _data: &[u8],
        ) -> Result<(), FetchError> {
            Err(FetchError::Connect {
                peer,
                detail: "down".into(),
            })
        }
    }

    /// A memory store whose copies of `rotten` chunks have a flipped first byte.
    #[derive(Clone, Default)]
    struct RottenStore {
        inner: MemoryChunkSource,
        rotten: Arc<StdMutex<Set<Hash>>>,
    }

    impl ChunkSource for RottenStore {
        fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
            if self.rotten.lock().unwrap().contains(hash) {
                return Err(StoreError::Corrupt { hash: *hash });
            }
            self.inner.get(hash)
        }
        fn put(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
            self.inner.put(hash, data)
        }
        fn contains(&self, hash: &Hash) -> bool {
            self.inner.contains(hash)
        }
        fn remove(&self, hash: &Hash) -> Result<(), StoreError> {
            self.rotten.lock().unwrap().remove(hash);
            self.inner.remove(hash)
        }
        fn get_unverified(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
            let mut data = self.inner.get(hash)?;
            if self.rotten.lock().unwrap().contains(hash) {
                data[0] ^= 0xff;
            }
            Ok(data)
        }
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

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

    #[tokio::test]
    async fn the_scrub_finds_rot_within_its_budget_and_resumes_where_it_stopped() {
        let store = RottenStore::default();
        let state = RepairState::default();
        let mut versions = BTreeMap::new();
        for v in 0..3u8 {
            let chunks: Vec<ChunkRef> = (0..2u8)
                .map(|i| {
                    let data = vec![v, i, 7];
                    store.put(&Hash::of(&data), &data).unwrap();
                    ChunkRef {
                        hash: Hash::of(&data),
                        size_bytes: 3,
                    }
                })
                .collect();
            let root = format!("root-{v}");
            state.mark_complete(&root);
            versions.insert(root, chunks);
        }
        let roots: Vec<String> = versions.keys().cloned().collect();
        let rotten = versions["root-1"][1].hash;
        store.rotten.lock().unwrap().insert(rotten);
        let chunks_of = |root: &str| versions.get(root).cloned();

        // A budget of one version's bytes: one version per step, in root order.
        let first = scrub_step(&store, &state, &roots, chunks_of, 6).await;
        assert_eq!(
            first,
            Scrubbed {
                checked_chunks: 2,
                bad: vec![]
            }
        );
        let second = scrub_step(&store, &state, &roots, chunks_of, 6).await;
        assert_eq!(second.bad, vec![rotten]);
        assert!(!store.contains(&rotten), "the rotten copy is removed");
        assert!(!state.is_complete("root-1"), "repair will fetch it again");
        assert!(state.is_complete("root-0") && state.is_complete("root-2"));
        // Incomplete versions are repair's business: the scrub goes on with root-2, then wraps.
        let third = scrub_step(&store, &state, &roots, chunks_of, 6).await;
        assert_eq!(third.checked_chunks, 2);
        let all = scrub_step(&store, &state, &roots, chunks_of, u64::MAX).await;
        assert_eq!(
            all,
            Scrubbed {
                checked_chunks: 4,
                bad: vec![]
            }
        );
    }

    #[test]
    fn small_clusters_replicate_everywhere() {
        let all = nodes(&["eu", "eu", "us", "us", "ap"]);
        assert!((1..=5).all(|me| should_hold("root", me, &all)));
    }

    #[test]
    fn large_clusters_keep_exactly_one_full_copy_per_region() {
        let all = nodes(&["eu", "eu", "eu", "us", "us", "us", "ap"]);
        for root in ["a", "b", "c", "d"] {
            for region in ["eu", "us", "ap"] {
                let holders: Vec<u64> = all
                    .iter()
                    .filter(|(_, r)| r == region)
                    .map(|(id, _)| *id)
                    .filter(|&id| should_hold(root, id, &all))
                    .collect();
                assert_eq!(
                    holders.len(),
                    1,
                    "root {root}, region {region}: {holders:?}"
                );
            }
        }
        let spread: std::collections::BTreeSet<u64> = (0..32)
            .map(|i| format!("root-{i}"))
            .filter_map(|root| (1..=3).find(|&id| should_hold(&root, id, &all)))
            .collect();
        assert!(spread.len() > 1, "choices spread over the region's nodes");
    }
}
