//! Multi-source fetch: the I/O shell around [`FetchScheduler`], over any [`ChunkPeers`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use super::peers::verify_chunk;
use super::scheduler::{Assignment, FetchScheduler, Next, Outcome};
use super::{ChunkPeers, ChunkSource, FetchError};
use crate::{ChunkRef, Hash, StoreError};

/// Upper bound on [`FetchOptions::parallelism`] (larger values are clamped).
pub const FETCH_PARALLELISM_MAX: usize = 256;
/// Upper bound on [`FetchOptions::attempts_per_chunk_max`] (larger values are clamped).
pub const FETCH_ATTEMPTS_PER_CHUNK_LIMIT: usize = 64;
/// Default [`FetchOptions::parallelism`]: requests in flight across all peers.
pub const FETCH_PARALLELISM_DEFAULT: usize = 8;
/// Default [`FetchOptions::chunk_timeout`].
pub const FETCH_CHUNK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default [`FetchOptions::attempts_per_chunk_max`].
pub const FETCH_ATTEMPTS_PER_CHUNK_DEFAULT: usize = 4;

#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Requests in flight at once, over all peers (1..=[`FETCH_PARALLELISM_MAX`]).
    /// Memory: up to this many chunks in flight.
    pub parallelism: usize,
    /// One attempt (connect if needed, request, receive, verify) gets this long; then the chunk is
    /// retried elsewhere and the peer counts as failing.
    pub chunk_timeout: Duration,
    /// Attempts per chunk over all peers (1..=[`FETCH_ATTEMPTS_PER_CHUNK_LIMIT`]) before the
    /// fetch fails.
    pub attempts_per_chunk_max: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            parallelism: FETCH_PARALLELISM_DEFAULT,
            chunk_timeout: FETCH_CHUNK_TIMEOUT_DEFAULT,
            attempts_per_chunk_max: FETCH_ATTEMPTS_PER_CHUNK_DEFAULT,
        }
    }
}

/// What [`fetch_all`] did. Counts are of distinct chunks (a hash listed twice counts once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Chunks fetched from peers, verified and stored.
    pub fetched_chunks: usize,
    /// Chunks already in the store, not fetched (resume).
    pub skipped_chunks: usize,
    pub fetched_bytes: u64,
    /// Peers that served corrupt data, in the order they were banned.
    pub corrupt_peers: Vec<SocketAddr>,
    /// Attempts that did not bring a verified chunk (corrupt, not found, failed, timed out).
    pub failed_attempts: usize,
}

/// Brings every chunk in `chunks` into `store` from `peers` (any may hold any chunk), in
/// parallel, verifying each chunk. Chunks already in the store are skipped (that is resume).
///
/// Peers that serve corrupt data are banned for the rest of this fetch; slow or failing peers are
/// avoided (per-chunk timeout, the chunk retried elsewhere; see [`FetchScheduler`] for the
/// policy). A chunk that fails [`FetchOptions::attempts_per_chunk_max`] times ends the fetch with
/// its last error; chunks stored until then stay, so calling again resumes. A store error ends it
/// at once.
///
/// Store writes (`put`, durable) run on the calling task: through `block_in_place` on a
/// multi-threaded tokio runtime, inline on a current-thread one.
pub async fn fetch_all<P: ChunkPeers>(
    client: &P,
    store: &dyn ChunkSource,
    chunks: &[ChunkRef],
    peers: &[SocketAddr],
    opts: FetchOptions,
) -> Result<FetchReport, FetchError> {
    let mut report = FetchReport::default();
    let mut seen = HashSet::with_capacity(chunks.len());
    let mut missing = Vec::new();
    for chunk in chunks {
        if !seen.insert(chunk.hash) {
            continue;
        }
        if store.contains(&chunk.hash) {
            report.skipped_chunks += 1;
        } else {
            missing.push(chunk.clone());
        }
    }
    let mut unique_peers = Vec::with_capacity(peers.len());
    for peer in peers {
        if !unique_peers.contains(peer) {
            unique_peers.push(*peer);
        }
    }
    let peer_count = unique_peers.len();
    let mut scheduler = FetchScheduler::new(
        missing,
        unique_peers,
        opts.parallelism.clamp(1, FETCH_PARALLELISM_MAX),
        opts.attempts_per_chunk_max
            .clamp(1, FETCH_ATTEMPTS_PER_CHUNK_LIMIT),
    );
    // The last error of each chunk that has failed at least once (for the final error).
    let mut last_errors: HashMap<usize, FetchError> = HashMap::new();
    let mut in_flight = FuturesUnordered::new();
    loop {
        loop {
            match scheduler.next_action() {
                Next::Fetch(assignment) => {
                    in_flight.push(attempt(client, assignment, opts.chunk_timeout));
                }
                Next::Wait => break,
                Next::Finished => {
                    report.corrupt_peers = scheduler.banned_peers();
                    debug_assert_eq!(report.fetched_chunks, scheduler.done_count());
                    return Ok(report);
                }
                Next::Stuck { chunk_index, chunk } => {
                    return Err(last_errors
                        .remove(&chunk_index)
                        .unwrap_or(FetchError::NoPeers {
                            hash: chunk.hash,
                            peers: peer_count,
                            banned: scheduler.banned_peers().len(),
                        }));
                }
            }
        }
        // Wait means at least one request is in flight.
        let Some((assignment, result)) = in_flight.next().await else {
            unreachable!("the scheduler waits only while requests are in flight");
        };
        let outcome = match result {
            Ok(data) => {
                put(store, &assignment.chunk.hash, &data)?;
                report.fetched_chunks += 1;
                report.fetched_bytes += data.len() as u64;
                Outcome::Done
            }
            Err(e) => {
                report.failed_attempts += 1;
                let outcome = match &e {
                    FetchError::Corrupt { .. } => {
                        tracing::warn!(peer = %assignment.peer, hash = %assignment.chunk.hash, "peer served a corrupt chunk: banned for this fetch");
                        Outcome::Corrupt
                    }
                    FetchError::NotFound { .. } => Outcome::NotFound,
                    FetchError::Timeout { .. } => Outcome::Timeout,
                    FetchError::Store(_) => return Err(e),
                    FetchError::Connect { .. }
                    | FetchError::Protocol { .. }
                    | FetchError::NoPeers { .. } => Outcome::Failed,
                };
                tracing::debug!(peer = %assignment.peer, hash = %assignment.chunk.hash, error = %e, "chunk attempt failed");
                last_errors.insert(assignment.chunk_index, e);
                outcome
            }
        };
        if let Err(gave_up) = scheduler.on_outcome(&assignment, outcome) {
            tracing::warn!(hash = %gave_up.chunk.hash, attempts = gave_up.attempts, "giving up on a chunk");
            return Err(last_errors
                .remove(&gave_up.chunk_index)
                .unwrap_or(FetchError::NoPeers {
                    hash: gave_up.chunk.hash,
                    peers: peer_count,
                    banned: scheduler.banned_peers().len(),
                }));
        }
        if outcome == Outcome::Done {
            last_errors.remove(&assignment.chunk_index);
        }
    }
}

/// One attempt, bounded by the per-chunk timeout; the bytes are verified before they count.
async fn attempt<P: ChunkPeers>(
    client: &P,
    assignment: Assignment,
    timeout: Duration,
) -> (Assignment, Result<Vec<u8>, FetchError>) {
    let (peer, chunk) = (assignment.peer, &assignment.chunk);
    let result = match tokio::time::timeout(timeout, client.fetch_raw(peer, chunk)).await {
        Ok(Ok(data)) => verify_chunk(peer, chunk, &data).map(|()| data),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(FetchError::Timeout {
            peer,
            hash: chunk.hash,
        }),
    };
    (assignment, result)
}

/// Stores a verified chunk. Blocking (fsync): moved off the async worker where tokio allows it.
fn put(store: &dyn ChunkSource, hash: &Hash, data: &[u8]) -> Result<(), StoreError> {
    let write = || store.put_verified(hash, data).map(|_| ());
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(write),
        _ => write(),
    }
}
