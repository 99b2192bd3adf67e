//! Scrub: re-verifies held copies, a bounded number of bytes per pass, so that a copy that
//! rotted on disk is found, removed and fetched again by repair.

use std::collections::BTreeSet;
use std::ops::Bound::{Excluded, Unbounded};

use quiver_transfer::{ChunkRef, ChunkSource, Hash, StoreError};

use super::repair::{RepairState, ScrubCursor};
use super::store_call::StoreCall;

/// Bytes of held chunks the scrub re-verifies per repair pass (at
/// [`REPAIR_INTERVAL`](super::REPAIR_INTERVAL), 16 MiB/s of background reads): a copy that rotted on
/// disk is found within (bytes held / this) passes.
pub const SCRUB_BYTES_PER_PASS: u64 = 32 * 1024 * 1024;
/// Chunks the scrub re-verifies per repair pass at most, however small: a node holding many
/// small versions reads them a few hundred a second, not all of them every pass.
pub const SCRUB_CHUNKS_PER_PASS: usize = 512;
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
/// counts as complete, `budget_bytes` and [`SCRUB_CHUNKS_PER_PASS`] at most
/// (at least one chunk), in
/// root order from where the last step stopped (within a version, if the
/// budget ran out in it), wrapping around. Repair itself only sees whether
/// a chunk is present (`missing_chunks`), so without this a copy that
/// rotted on disk would stay bad until a download happened to read it. A
/// rotten copy is removed and its version forgotten (`RepairState::forget`),
/// so the next pass fetches a verified copy. `roots`: the READY versions
/// this node should hold; `chunks_of`: a root's chunks, from its manifest.
pub async fn scrub_step<S: ChunkSource + Clone>(
    store: &S,
    state: &RepairState,
    roots: &[String],
    mut chunks_of: impl FnMut(&str) -> Option<Vec<ChunkRef>>,
    budget_bytes: u64,
) -> Scrubbed {
    let complete: BTreeSet<&String> = roots.iter().filter(|r| state.is_complete(r)).collect();
    let cursor = state.scrub_cursor.lock().ok().and_then(|c| c.clone());
    // The rest of the version the last step stopped in, the versions after it, the ones before
    // it (wrapping around), and the first part of the version it stopped in: each distinct chunk
    // once, as (root, first chunk, end).
    let (stopped_in, resume_at) = cursor.map_or((String::new(), None), |c| (c.root, c.resume_at));
    let stopped_in_held = complete.get(&stopped_in).copied();
    let mut order: Vec<(&String, usize, usize)> = Vec::new();
    if let (Some(root), Some(at)) = (stopped_in_held, resume_at) {
        order.push((root, at, usize::MAX));
    }
    order.extend(
        complete
            .range::<String, _>((Excluded(&stopped_in), Unbounded))
            .map(|r| (*r, 0, usize::MAX)),
    );
    order.extend(
        complete
            .range::<String, _>(..&stopped_in)
            .map(|r| (*r, 0, usize::MAX)),
    );
    match (stopped_in_held, resume_at) {
        (Some(root), Some(at)) if at > 0 => order.push((root, 0, at)),
        (Some(root), None) => order.push((root, 0, usize::MAX)),
        _ => {}
    }
    let mut report = Scrubbed::default();
    let mut bytes = 0u64;
    'roots: for (root, from, end) in order {
        let Some(chunks) = chunks_of(root) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        let mut bad = Vec::new();
        let mut verified = 0usize;
        let mut out_of_budget = false;
        for chunk in chunks.into_iter().filter(|c| seen.insert(c.hash)) {
            if verified < from {
                verified += 1;
                continue;
            }
            if verified >= end {
                break;
            }
            let spent = bytes >= budget_bytes || report.checked_chunks >= SCRUB_CHUNKS_PER_PASS;
            if spent && report.checked_chunks > 0 {
                out_of_budget = true;
                break;
            }
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
            verified += 1;
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
            // A version verified to its end is left: the next step begins after it.
            *c = Some(ScrubCursor {
                root: root.to_string(),
                resume_at: out_of_budget.then_some(verified),
            });
        }
        if out_of_budget {
            break 'roots;
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

    #[tokio::test]
    async fn a_version_larger_than_the_budget_is_scrubbed_over_several_steps_each_chunk_in_turn() {
        let store = RottenStore::default();
        let state = RepairState::default();
        let chunks: Vec<ChunkRef> = (0..10u8)
            .map(|i| {
                let data = vec![i; 4];
                store.put(&Hash::of(&data), &data).unwrap();
                ChunkRef {
                    hash: Hash::of(&data),
                    size_bytes: 4,
                }
            })
            .collect();
        state.mark_complete("big");
        let roots = vec!["big".to_string()];
        let chunks_of = |_: &str| Some(chunks.clone());
        let rotten = chunks[7].hash;
        store.rotten.lock().unwrap().insert(rotten);

        // A budget of three chunks: 0..3, 3..6, then 6..9 finds the rotten 7th.
        for _ in 0..2 {
            let step = scrub_step(&store, &state, &roots, chunks_of, 12).await;
            assert_eq!(
                step,
                Scrubbed {
                    checked_chunks: 3,
                    bad: vec![]
                }
            );
        }
        let third = scrub_step(&store, &state, &roots, chunks_of, 12).await;
        assert_eq!(third.checked_chunks, 3);
        assert_eq!(third.bad, vec![rotten]);
        assert!(!state.is_complete("big"), "repair will fetch it again");

        // Repaired: the scrub goes on where it stopped (9), wraps to 0 and 1, and never checks
        // more than its budget in one step.
        let data = vec![7u8; 4];
        store.put(&rotten, &data).unwrap();
        state.mark_complete("big");
        let fourth = scrub_step(&store, &state, &roots, chunks_of, 12).await;
        assert_eq!(
            fourth,
            Scrubbed {
                checked_chunks: 3,
                bad: vec![]
            }
        );
        let mut checked = 0;
        for _ in 0..10 {
            let step = scrub_step(&store, &state, &roots, chunks_of, 12).await;
            assert_eq!(step.checked_chunks, 3);
            checked += step.checked_chunks;
        }
        assert_eq!(
            checked, 30,
            "ten steps of three chunks: each chunk three times"
        );
        // A budget smaller than one chunk still verifies one chunk per step.
        let tiny = scrub_step(&store, &state, &roots, chunks_of, 1).await;
        assert_eq!(tiny.checked_chunks, 1);
    }

    #[tokio::test]
    async fn many_small_versions_are_scrubbed_a_bounded_number_of_chunks_per_step() {
        let store = RottenStore::default();
        let state = RepairState::default();
        let mut versions = BTreeMap::new();
        for v in 0..(SCRUB_CHUNKS_PER_PASS as u32 + 100) {
            let data = v.to_le_bytes().to_vec();
            store.put(&Hash::of(&data), &data).unwrap();
            let root = format!("root-{v:06}");
            state.mark_complete(&root);
            versions.insert(
                root,
                vec![ChunkRef {
                    hash: Hash::of(&data),
                    size_bytes: 4,
                }],
            );
        }
        let roots: Vec<String> = versions.keys().cloned().collect();
        let chunks_of = |root: &str| versions.get(root).cloned();
        let first = scrub_step(&store, &state, &roots, chunks_of, u64::MAX).await;
        assert_eq!(first.checked_chunks, SCRUB_CHUNKS_PER_PASS);
        // The next step goes on with the rest, then wraps to the first ones.
        let second = scrub_step(&store, &state, &roots, chunks_of, u64::MAX).await;
        assert_eq!(second.checked_chunks, SCRUB_CHUNKS_PER_PASS);
        let cursor = state.scrub_cursor.lock().unwrap().clone().unwrap();
        // 100 after the first step's, then 412 from the start: the next is the 413th.
        assert_eq!(
            cursor.root,
            format!("root-{:06}", SCRUB_CHUNKS_PER_PASS - 100)
        );
        assert_eq!(cursor.resume_at, Some(0));
    }
}
