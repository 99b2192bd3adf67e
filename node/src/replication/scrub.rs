//! Scrub: re-verifies held copies, a bounded number of bytes per pass, so that a copy that
//! rotted on disk is found, removed and fetched again by repair.

use std::collections::BTreeSet;

use quiver_transfer::{ChunkRef, ChunkSource, Hash, StoreError};

use super::repair::RepairState;
use super::store_call::StoreCall;

/// Bytes of held chunks the scrub re-verifies per repair pass (at
/// [`REPAIR_INTERVAL`](super::REPAIR_INTERVAL), 16 MiB/s of background reads): a copy that rotted on
/// disk is found within (bytes held / this) passes.
pub const SCRUB_BYTES_PER_PASS: u64 = 32 * 1024 * 1024;
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;

    use crate::replication::test_support::RottenStore;

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
}
