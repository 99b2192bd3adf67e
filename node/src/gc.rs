//! Chunk garbage collection: an upload that never committed leaves its
//! chunks in the store (DESIGN.md: "only garbage-collectable chunks").
//!
//! **While the node runs** ([`Node::collect_chunks_once`], every grace period by the node's
//! collector when `CoreConfig::chunk_gc_grace` is set): a chunk is removed when no version in
//! the replicated state refers to it, no upload in progress through this node has written it
//! ([`UploadPins`]), and nothing has put it for at least one grace period (the store's put
//! epochs, `quiver_transfer::collect`), so the chunks a peer's upload pushed here are kept while
//! that upload goes on. The state is read linearizably after the store is listed, so a version
//! committed before the read is seen; one committed after it was uploaded recently, so its
//! chunks are recent or pinned. An upload must therefore finish within one grace period of the
//! first chunk it pushed to a peer, or that peer may collect the chunk before the version
//! commits (repair then copies it back from the uploading node).
//!
//! **With the node stopped** ([`collect`], `quiver-node gc`): no upload is in flight and the
//! store is not shared, so every chunk that no manifest in the replicated state refers to is
//! removed at once.
//!
//! "The replicated state" includes what the node's Raft log holds beyond its applied state:
//! entries committed before the node stopped but not yet applied, or applied and taken back by a
//! power loss (the state env does not sync its last commit's meta page, decision 0012). The node
//! applies them when it starts again, so the chunks their versions name are kept.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use quiver_raft::openraft::{EntryPayload, RaftLogReader};
use quiver_transfer::quic::ChunkPeers;
use quiver_transfer::{ChunkSource, ChunkStore, Collected, Hash};

use crate::command::Op;
use crate::error::NodeError;
use crate::node::{Consistency, Node};
use crate::replication::StoreCall;
use crate::state::RegistryApp;

/// Default of `quiver-node serve --gc-grace-secs`: how long an unreferenced chunk is kept after
/// its last put before the running node removes it.
pub const CHUNK_GC_GRACE_DEFAULT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Chunks written by the uploads in progress through this node, with how many uploads wrote
/// each: the running collector keeps them whatever their age.
#[derive(Debug, Default)]
pub struct UploadPins {
    counts: Mutex<HashMap<Hash, usize>>,
}

impl UploadPins {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Hash, usize>> {
        // A panic cannot leave the map half-updated (single updates).
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an upload in progress wrote `hash`.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.counts().contains_key(hash)
    }

    /// Chunks pinned now.
    pub fn len(&self) -> usize {
        self.counts().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One upload's pins: released when it is dropped, whether the upload committed or failed.
#[derive(Debug)]
pub struct PinSet {
    pins: Arc<UploadPins>,
    mine: HashSet<Hash>,
}

impl PinSet {
    pub fn new(pins: Arc<UploadPins>) -> Self {
        PinSet {
            pins,
            mine: HashSet::new(),
        }
    }

    /// Pins `hash` until this set is dropped; call it before the chunk is written.
    pub fn pin(&mut self, hash: Hash) {
        if self.mine.insert(hash) {
            *self.pins.counts().entry(hash).or_default() += 1;
        }
    }
}

impl Drop for PinSet {
    fn drop(&mut self) {
        let mut counts = self.pins.counts();
        for hash in &self.mine {
            if let Some(count) = counts.get_mut(hash) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(hash);
                }
            }
        }
    }
}

/// What one pass of the running collector found and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkGcPass {
    /// Chunks in the store when the pass began.
    pub stored: u64,
    /// Of those, chunks no version refers to and no upload in progress wrote.
    pub unreferenced: u64,
    /// Of those, what was idle and removed.
    pub removed: Collected,
}

impl<S: ChunkSource + Clone, P: ChunkPeers> Node<S, P> {
    /// One pass of the running collector (see the module docs): starts a new put epoch, then
    /// removes every stored chunk that no version refers to, no upload in progress pins and
    /// nothing put in this or the previous epoch. Fails, removing nothing, when the state cannot
    /// be read linearizably (no leader).
    pub async fn collect_chunks_once(&self) -> Result<ChunkGcPass, NodeError> {
        self.chunks.start_gc_epoch();
        let store = self.chunks.clone();
        let stored = StoreCall::start(move || store.list())
            .join()
            .await
            .map_err(|e| NodeError::Storage(format!("list the chunk store: {e}")))?
            .map_err(|e| NodeError::Storage(format!("list the chunk store: {e}")))?;
        let pinned: BTreeSet<Hash> = stored
            .iter()
            .filter(|h| self.upload_pins.contains(h))
            .copied()
            .collect();
        let referenced = self
            .read(Consistency::Linearizable, |app, txn| {
                app.referenced_chunks(txn)
            })
            .await?;
        let unreferenced: Vec<Hash> = stored
            .iter()
            .filter(|h| !referenced.contains(h) && !pinned.contains(h))
            .copied()
            .collect();
        let store = self.chunks.clone();
        let candidates = unreferenced.clone();
        let removed = StoreCall::start(move || store.remove_idle(&candidates))
            .join()
            .await
            .map_err(|e| NodeError::Storage(format!("remove unreferenced chunks: {e}")))?
            .map_err(|e| NodeError::Storage(format!("remove unreferenced chunks: {e}")))?;
        if removed.chunks > 0 {
            tracing::info!(
                node_id = self.node_id(),
                chunks = removed.chunks,
                bytes = removed.bytes,
                "collected chunks no version refers to (abandoned uploads)"
            );
        }
        Ok(ChunkGcPass {
            stored: stored.len() as u64,
            unreferenced: unreferenced.len() as u64,
            removed,
        })
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub kept_chunks: usize,
    pub removed_chunks: usize,
    pub removed_bytes: u64,
    /// Log entries beyond the applied state whose versions' chunks were kept too.
    pub unapplied_entries: usize,
}

/// Removes (or, with `dry_run`, counts) the unreferenced chunks of the node
/// whose data lives in `data_dir`. Fails if the node is running (it holds
/// the data dir's lock).
pub fn collect(data_dir: &Path, dry_run: bool) -> anyhow::Result<GcReport> {
    let _lock = crate::node::lock_data_dir(data_dir)?;
    let (mut log, state) = quiver_raft::open_storage::<RegistryApp>(&data_dir.join("raft"))
        .with_context(|| {
            format!(
                "open the state in {} (stop the node first)",
                data_dir.display()
            )
        })?;
    let (last_applied, mut referenced) = state.read_applied(|app, txn| {
        app.referenced_chunks(txn)
            .map_err(|e| anyhow::anyhow!("read manifests: {e}"))
    })?;
    // The log store reads synchronously; its reader is async only by openraft's trait.
    let unapplied =
        futures::executor::block_on(log.try_get_log_entries(last_applied.map_or(0, |i| i + 1)..))
            .map_err(|e| anyhow::anyhow!("read the Raft log beyond the applied state: {e}"))?;
    let mut report = GcReport {
        unapplied_entries: unapplied.len(),
        ..GcReport::default()
    };
    for entry in unapplied {
        let EntryPayload::Normal(commands) = entry.payload else {
            continue;
        };
        for command in commands {
            if let Op::CreateVersion { manifest, .. } = command.op {
                referenced.extend(manifest.chunk_hashes());
            }
        }
    }
    let store = ChunkStore::open(data_dir.join("chunks")).context("open the chunk store")?;
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

#[cfg(test)]
mod tests {
    use quiver_raft::openraft::{CommittedLeaderId, Entry, LogId};
    use quiver_raft::LogStore;
    use quiver_transfer::Hash;

    use super::*;
    use crate::command::Command;
    use crate::state::tests::{actor, create_version};

    /// A chunk stays pinned while any upload that wrote it is in progress, and no longer.
    #[test]
    fn pins_last_as_long_as_some_upload_that_wrote_the_chunk() {
        let pins = std::sync::Arc::new(UploadPins::default());
        let (shared, own) = (Hash::of(b"shared"), Hash::of(b"own"));
        let mut first = PinSet::new(pins.clone());
        first.pin(shared);
        first.pin(shared);
        first.pin(own);
        let mut second = PinSet::new(pins.clone());
        second.pin(shared);
        assert_eq!(pins.len(), 2);
        drop(first);
        assert!(pins.contains(&shared), "the second upload still needs it");
        assert!(!pins.contains(&own));
        drop(second);
        assert!(pins.is_empty());
    }

    /// A version that is in the log but not (or no longer) in the applied state keeps its
    /// chunks: the node applies it when it starts again.
    #[test]
    fn chunks_of_a_version_only_in_the_log_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let in_log = b"weights of a version committed but not applied";
        let stray = b"an interrupted upload";
        {
            let (log, _state) =
                quiver_raft::open_storage::<RegistryApp>(&dir.path().join("raft")).expect("open");
            let command = Command {
                actor: actor("pipeline"),
                at_ms: 1,
                request_id: None,
                op: create_version("reco", in_log),
            };
            let entry = Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
                payload: EntryPayload::Normal(vec![command]),
            };
            append(log, entry);
        }
        let store = ChunkStore::open(dir.path().join("chunks")).expect("store");
        store.put(&Hash::of(in_log), in_log).expect("put");
        store.put(&Hash::of(stray), stray).expect("put");
        drop(store);

        let report = collect(dir.path(), false).expect("gc");
        assert_eq!(report.unapplied_entries, 1);
        assert_eq!((report.kept_chunks, report.removed_chunks), (1, 1));
        let store = ChunkStore::open(dir.path().join("chunks")).expect("store");
        assert_eq!(store.list().expect("list"), vec![Hash::of(in_log)]);
    }

    fn append(mut log: LogStore<RegistryApp>, entry: Entry<quiver_raft::TypeConfig<RegistryApp>>) {
        use quiver_raft::openraft::storage::RaftLogStorageExt;
        futures::executor::block_on(log.blocking_append([entry])).expect("append");
    }
}
