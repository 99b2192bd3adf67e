//! Chunk garbage collection: an upload that never committed leaves its
//! chunks in the store (DESIGN.md: "only garbage-collectable chunks"). With
//! the node stopped — so no upload is in flight and the store is not shared —
//! every chunk that no manifest in the replicated state refers to is removed.
//!
//! "The replicated state" includes what the node's Raft log holds beyond its applied state:
//! entries committed before the node stopped but not yet applied, or applied and taken back by a
//! power loss (the state env does not sync its last commit's meta page, decision 0012). The node
//! applies them when it starts again, so the chunks their versions name are kept.

use std::path::Path;

use anyhow::Context;
use quiver_raft::openraft::{EntryPayload, RaftLogReader};
use quiver_transfer::ChunkStore;

use crate::command::Op;
use crate::state::RegistryApp;

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
