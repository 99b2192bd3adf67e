//! Chunk garbage collection: an upload that never committed leaves its
//! chunks in the store (DESIGN.md: "only garbage-collectable chunks"). With
//! the node stopped — so no upload is in flight and the store is not shared —
//! every chunk that no manifest in the replicated state refers to is removed.

use std::path::Path;

use anyhow::Context;
use quiver_transfer::ChunkStore;

use crate::state::RegistryApp;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub kept_chunks: usize,
    pub removed_chunks: usize,
    pub removed_bytes: u64,
}

/// Removes (or, with `dry_run`, counts) the unreferenced chunks of the node
/// whose data lives in `data_dir`. Fails if the node is running (it holds
/// the data dir's lock).
pub fn collect(data_dir: &Path, dry_run: bool) -> anyhow::Result<GcReport> {
    let _lock = crate::node::lock_data_dir(data_dir)?;
    let (_log, state) = quiver_raft::open_storage::<RegistryApp>(&data_dir.join("raft"))
        .with_context(|| {
            format!(
                "open the state in {} (stop the node first)",
                data_dir.display()
            )
        })?;
    let referenced = state.read(|app, txn| {
        app.referenced_chunks(txn)
            .map_err(|e| anyhow::anyhow!("read manifests: {e}"))
    })?;
    let store = ChunkStore::open(data_dir.join("chunks")).context("open the chunk store")?;
    let mut report = GcReport::default();
    for hash in store.list()? {
        if referenced.contains(&hash) {
            report.kept_chunks += 1;
            continue;
        }
        report.removed_chunks += 1;
        report.removed_bytes += store.size_of(&hash).unwrap_or(0);
        if !dry_run {
            store.remove(&hash)?;
        }
    }
    Ok(report)
}
