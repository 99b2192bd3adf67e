//! Repair: each node fetches from its peers the chunks it lacks of the versions it should hold.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use quiver_transfer::{fetch_all, ChunkPeers, ChunkRef, ChunkSource, FetchError, FetchOptions};

use super::store_call::StoreCall;

/// How often repair looks for missing chunks.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(2);

/// Versions still being made whole on one node, listed at most.
pub const PENDING_LISTED_MAX: usize = 20;

/// Where a node's copies stand after a repair pass: of the READY versions, how many placement
/// gives it, how many of those it has verified complete, and the first that are not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldSummary {
    pub at_ms: i64,
    pub ready_versions: usize,
    pub held: usize,
    pub complete: usize,
    /// (model, number), at most [`PENDING_LISTED_MAX`].
    pub pending: Vec<(String, u64)>,
}

/// Where the scrub stopped: the version with manifest root `root`, verified to its end
/// (`resume_at` None) or to the distinct chunk (in manifest order) it resumes at. A version
/// larger than a step's budget is scrubbed over several steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ScrubCursor {
    pub root: String,
    pub resume_at: Option<usize>,
}

/// Manifest roots this node has verified complete (all chunks present), so
/// repair does not stat them again on every pass; and where the scrub of
/// complete versions goes on.
#[derive(Default)]
pub struct RepairState {
    complete: Mutex<BTreeSet<String>>,
    /// What the last whole repair pass found (the cluster page shows it).
    last_pass: Mutex<Option<HeldSummary>>,
    /// Where the last scrub step stopped.
    pub(super) scrub_cursor: Mutex<Option<ScrubCursor>>,
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

    /// What the last whole repair pass found, if one has ended.
    pub fn last_pass(&self) -> Option<HeldSummary> {
        self.last_pass.lock().ok().and_then(|p| p.clone())
    }

    pub fn set_last_pass(&self, summary: HeldSummary) {
        if let Ok(mut last) = self.last_pass.lock() {
            *last = Some(summary);
        }
    }

    pub fn forget(&self, root: &str) {
        if let Ok(mut set) = self.complete.lock() {
            set.remove(root);
        }
    }
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
