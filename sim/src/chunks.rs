//! The artifact side of a `chaos` or `failover` run: real uploads, downloads, repair and bit rot
//! on the simulated chunk network.
//!
//! Every node has a [`SimStore`] (kept across its crashes and restarts, as a disk would be) and
//! an endpoint on the [`ChunkNet`], which goes down and up with the node ([`Chunks::set_up`],
//! called by the cluster). On it the real replication code runs:
//! - **Upload** ([`Chunks::upload`]): a registration's artifact (a seeded [`Corpus`]) is written
//!   through the chunk sink of the node the client reached (`Node::chunk_sink`: W from the
//!   membership, [`COPIES_REQUIRED`] in these clusters) by the upload's own writer
//!   (`ingest::write_chunks`); only then does the client propose `CreateVersion` with the
//!   corpus's manifest.
//! - **Download** ([`Chunks::download_loop`]): simulated serving clients pull acknowledged
//!   versions through a random node's own download path, as its download service does:
//!   `Node::plan_download` (a linearizable read of the version and its manifest) and
//!   `Node::download_chunks` (the local store, read-through from peers for a chunk it lacks or
//!   holds rotten, a small version's chunks from the state). What the client was handed is
//!   judged by [`check_download`] against the bytes that were uploaded.
//! - **Repair**: each node's own repair loop (`Node::repair_once` every [`REPAIR_INTERVAL`],
//!   started with the node), with a scrub budget of [`SIM_SCRUB_BYTES_PER_PASS`]; a restart
//!   starts a new node, with a fresh repair state, as a new process would.
//! - **Bit rot** ([`Chunks::corrupt`]): the chaos schedule's `Corrupt` fault flips bytes of chunks
//!   of acknowledged versions in one node's store.
//!
//! Checks: when a version is acknowledged, every chunk must have W intact copies over all stores
//! ([`check_ready_copies`]); after healing, replication must reach its target within
//! [`replication_bound`] ([`Chunks::await_replication`], [`check_replication`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use quiver_node::domain::VersionRef;
use quiver_node::ingest::write_chunks;
use quiver_node::replication::{should_hold, PlantedBugs, REPAIR_INTERVAL};
use quiver_node::NodeError;
use quiver_transfer::{ChunkRef, ChunkSource, Hash, Manifest};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::check::{short, Violation};
use crate::check_chunks::{
    check_download, check_ready_copies, check_replication, Downloaded, FileTruth, Target,
};
use crate::chunknet::{ChunkNet, Endpoint, NetConfig, Place};
use crate::chunkstore::{Corpus, PlantedStoreBugs, SimStore};
use crate::cluster::{Cluster, SimNode, SIM_CHUNK_GC_GRACE};
use crate::schedule::NodeId;
use crate::trace::SharedTrace;

/// Copies of every chunk durable before an upload succeeds (W).
pub const COPIES_REQUIRED: usize = 2;
/// Logical size of the artifact [`Chunks::probe_writes`] uploads through each node (two chunks).
pub const PROBE_LOGICAL_BYTES: u64 = 8 << 20;
/// Simulated serving clients that download versions during a run.
pub const DOWNLOADERS: u32 = 3;
/// Pause between two downloads of one downloader, drawn from this range (virtual ms).
pub const DOWNLOAD_THINK_MS: (u64, u64) = (20, 120);
/// After healing (and Raft convergence), how long repair has at least to give every node that
/// should hold a READY version an intact copy of each of its chunks; the bound grows with the
/// time the scrub needs to get round the stores ([`replication_bound`]).
pub const REPLICATION_TIMEOUT_MIN: Duration = Duration::from_secs(10);
/// The scrub's budget per repair pass in the simulator, in real bytes. Production reads
/// `SCRUB_BYTES_PER_PASS` (32 MiB) per pass; at the chunk store's scale (a real byte stands for
/// 1024) that would be 32 KiB, 8 chunks, and a run's stores would take minutes to go round.
/// 512 KiB (128 chunks) goes round a 30 s chaos run's stores in about ten passes while hashing
/// a fraction of them per pass, which keeps the run fast.
pub const SIM_SCRUB_BYTES_PER_PASS: u64 = 512 * 1024;
/// How often replication is polled while waiting for it.
const REPLICATION_POLL: Duration = Duration::from_secs(1);
/// The region every node of these scenarios is in; zones `z0`.. are dealt round-robin.
pub const SIM_REGION: &str = "sim";
/// Zones the nodes are spread over.
pub const SIM_ZONES: u64 = 3;

/// What the artifact side did, for the report (and, as `artifacts`, its JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChunkStats {
    pub uploads: u64,
    pub uploads_failed: u64,
    pub downloads: u64,
    /// Of `downloads`: small versions, served from the node's state (decision 0010).
    pub downloads_inline: u64,
    pub downloads_failed: u64,
    /// Downloads not attempted: the node was down or had not applied the version yet.
    pub downloads_skipped: u64,
    #[serde(skip)]
    pub chunks_corrupted: u64,
    pub chunks_repaired: u64,
    /// Rotten (or vanished) copies the repair pass's scrub found.
    pub chunks_scrubbed_bad: u64,
    /// From healing to every node holding every READY version intact (`None`: never, or the
    /// run ended before looking).
    pub replicated_ms: Option<u64>,
    /// Uploads a node refused because its chunk disk was under the reserve (`DiskFull`).
    pub uploads_refused_disk_full: u64,
    /// What the chunk disks' faults did, summed over the stores.
    pub disk: DiskStats,
}

/// What the chunk disks' faults did ([`crate::chunkstore::StoreStats`], summed over stores).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskStats {
    pub full_puts: u64,
    pub failed_syncs: u64,
    pub torn_copies: u64,
    pub replaced_bad_copies: u64,
    pub unsynced_lost: u64,
    /// Chunks the nodes' running collectors removed (no version referred to them).
    pub collected: u64,
}

/// What was uploaded for one manifest root: its chunks and the files' independent hashes.
struct Uploaded {
    chunks: Vec<ChunkRef>,
    truth: Vec<FileTruth>,
}

/// A version a client was told is registered.
#[derive(Clone)]
struct Acked {
    label: String,
    root: String,
    /// How downloaders name it (`None` when the ack did not say its number).
    reference: Option<VersionRef>,
}

#[derive(Default)]
struct State {
    uploaded: BTreeMap<String, Uploaded>,
    /// Acknowledged versions, in ack order.
    acked: Vec<Acked>,
    violations: Vec<Violation>,
    stats: ChunkStats,
}

/// The nodes' chunk stores, the chunk network, and what the run's clients uploaded.
pub struct Chunks {
    net: Arc<ChunkNet>,
    stores: BTreeMap<NodeId, SimStore>,
    trace: SharedTrace,
    state: Mutex<State>,
}

impl Chunks {
    /// Stores and network endpoints for nodes `ids` (all up), with the test-only switches of
    /// the node's replication code set from `planted`.
    pub fn new(
        ids: &[NodeId],
        seed: u64,
        trace: SharedTrace,
        planted: PlantedBugs,
        planted_store: PlantedStoreBugs,
    ) -> Arc<Self> {
        let cfg = NetConfig {
            planted,
            ..NetConfig::default()
        };
        let net = ChunkNet::new(cfg, seed, trace.clone());
        for &id in ids {
            let zone = format!("z{}", id % SIM_ZONES);
            let store = SimStore::new(None).with_planted(planted_store);
            net.add_node(id, Place::new(SIM_REGION, zone), store);
        }
        Self::over(net, trace)
    }

    /// The chunk side of the nodes already on `net`, each with the store it was added with
    /// (the `load` scenario places its nodes in regions and preloads nothing).
    pub fn over(net: Arc<ChunkNet>, trace: SharedTrace) -> Arc<Self> {
        let stores = net
            .nodes()
            .into_iter()
            .filter_map(|id| Some((id, net.store(id)?)))
            .collect();
        Arc::new(Chunks {
            net,
            stores,
            trace,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn net(&self) -> &Arc<ChunkNet> {
        &self.net
    }

    pub fn stats(&self) -> ChunkStats {
        let mut stats = self.lock().stats.clone();
        for store in self.stores.values() {
            let s = store.stats();
            let d = &mut stats.disk;
            d.full_puts += s.full_puts;
            d.failed_syncs += s.failed_syncs;
            d.torn_copies += s.torn_copies;
            d.replaced_bad_copies += s.replaced_bad_copies;
            d.unsynced_lost += s.unsynced_lost;
            d.collected += s.collected;
        }
        stats
    }

    pub fn set_replicated_ms(&self, ms: Option<u64>) {
        self.lock().stats.replicated_ms = ms;
    }

    /// Violations found so far (acks, downloads), leaving none behind.
    pub fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(&mut self.lock().violations)
    }

    /// Node `id` crashed (`up` false) or restarted: its endpoint refuses or serves again.
    pub fn set_up(&self, id: NodeId, up: bool) {
        self.net.set_up(Endpoint::Node(id), up);
    }

    /// Node `id`'s chunk store (kept across its crashes, as a disk would be).
    pub fn store(&self, id: NodeId) -> SimStore {
        self.stores[&id].clone()
    }

    /// Writes `corpus` through `node`'s own chunk sink (`Node::chunk_sink`: its store, its peers
    /// nearest first, W copies) with the upload's writer (`write_chunks`), as its upload ingest
    /// does after chunking (see the module docs). `Err` says why the upload failed (too few
    /// copies); nothing is registered then.
    pub async fn upload(&self, node: &SimNode, corpus: &Corpus) -> Result<(), String> {
        let written = self.write(node, corpus).await;
        let mut state = self.lock();
        if let Err(why) = written {
            state.stats.uploads_failed += 1;
            if matches!(why, NodeError::DiskFull(_)) {
                state.stats.uploads_refused_disk_full += 1;
            }
            return Err(why.to_string());
        }
        state.stats.uploads += 1;
        let root = corpus
            .manifest()
            .map_err(|e| format!("the artifact's manifest is invalid: {e}"))?
            .root()
            .to_hex();
        let whole: Vec<u8> = corpus
            .chunks()
            .iter()
            .filter_map(|c| corpus.bytes(&c.hash))
            .flat_map(|b| b.to_vec())
            .collect();
        let truth = vec![FileTruth::of(crate::chunkstore::CORPUS_FILE_PATH, &whole)];
        state.uploaded.insert(
            root,
            Uploaded {
                chunks: corpus.chunks().to_vec(),
                truth,
            },
        );
        Ok(())
    }

    /// What `node`'s upload service does with an artifact's chunks: refuse while its chunk
    /// disk is under the reserve (`Node::check_disk_reserve`), else write them through its own
    /// chunk sink with the upload's writer.
    async fn write(&self, node: &SimNode, corpus: &Corpus) -> Result<(), NodeError> {
        node.check_disk_reserve()?;
        let chunks: Vec<(Hash, Bytes)> = corpus
            .chunks()
            .iter()
            .filter_map(|c| Some((c.hash, Bytes::from(corpus.bytes(&c.hash)?.to_vec()))))
            .collect();
        let sink = node.chunk_sink().await?;
        write_chunks(sink, stream::iter(chunks)).await
    }

    /// Every chunk-disk fault ends (the scenario is over).
    pub fn heal_disks(&self) {
        for store in self.stores.values() {
            store.heal();
        }
    }

    /// Node `id` lost power (it is down): its store loses what was never durable (nothing,
    /// unless a planted bug kept unsynced copies).
    pub fn power_loss(&self, id: NodeId) {
        let Some(store) = self.stores.get(&id) else {
            return;
        };
        let lost = store.power_loss();
        if lost > 0 {
            self.trace.record(format!(
                "n{id} power loss: {lost} unsynced chunk copies lost"
            ));
        }
    }

    /// After healing: every up node must take a fresh upload (a small artifact drawn from
    /// `seed`, W copies), showing that writes resume once space returns and syncs work. One
    /// violation per node that refuses.
    pub async fn probe_writes(&self, cluster: &Cluster, seed: u64) -> Vec<Violation> {
        let mut found = Vec::new();
        for id in cluster.up_ids() {
            let Some(node) = cluster.node(id) else {
                continue;
            };
            let probe = match Corpus::synthesize(seed ^ id, PROBE_LOGICAL_BYTES) {
                Ok(corpus) => corpus,
                Err(e) => {
                    found.push(Violation::new(
                        "writes-stuck",
                        format!("probe artifact: {e}"),
                    ));
                    continue;
                }
            };
            match self.write(&node, &probe).await {
                Ok(()) => self.trace.record(format!("probe upload via n{id}: ok")),
                Err(e) => {
                    self.trace.record(format!("probe upload via n{id}: {e}"));
                    found.push(Violation::new(
                        "writes-stuck",
                        format!("n{id} refused an upload after every fault had healed: {e}"),
                    ));
                }
            }
        }
        found
    }

    /// After the probes, which leave chunks no version refers to, as a failed upload does:
    /// every up node's running collector (`Node::collect_chunks_once`, every
    /// [`SIM_CHUNK_GC_GRACE`]) must remove them. A chunk goes at the first pass a whole grace
    /// period after its last put, so this waits two periods and a repair pass, then reports each
    /// store that still holds chunks no version in the final state refers to. (That collection
    /// never takes a chunk of an acknowledged version is what the ready-copies and replication
    /// checkers see.)
    pub async fn await_collection(&self, cluster: &Cluster) -> Vec<Violation> {
        tokio::time::sleep(SIM_CHUNK_GC_GRACE * 2 + REPAIR_INTERVAL).await;
        let up = cluster.up_ids();
        let referenced = up
            .first()
            .and_then(|&id| cluster.handle(id))
            .map(|node| node.read_applied(|app, rtxn| Ok(app.referenced_chunks(rtxn))));
        let referenced = match referenced {
            Some(Ok((_, Ok(referenced)))) => referenced,
            other => {
                return vec![Violation::new(
                    "state-read",
                    format!("reading referenced chunks: {other:?}"),
                )]
            }
        };
        let mut found = Vec::new();
        for id in up {
            let Some(store) = self.stores.get(&id) else {
                continue;
            };
            let left: Vec<Hash> = store
                .list()
                .unwrap_or_default()
                .into_iter()
                .filter(|h| !referenced.contains(h))
                .collect();
            if let Some(first) = left.first() {
                found.push(Violation::new(
                    "garbage-kept",
                    format!(
                        "n{id} still holds {} chunks no version refers to (e.g. {}) two collection \
                         periods after the last upload",
                        left.len(),
                        short(&first.to_hex())
                    ),
                ));
            } else {
                self.trace
                    .record(format!("n{id}: no unreferenced chunks left"));
            }
        }
        found
    }

    /// A client was told small version `label` (manifest `root`, its chunks `inline` in the
    /// command, decision 0010) is registered: no chunk store holds it, so there are no copies to
    /// count; downloaders find it from now on and check what nodes serve from their state.
    pub fn on_inline_version_acked(
        &self,
        label: String,
        reference: Option<VersionRef>,
        manifest: &Manifest,
        inline: &[quiver_node::command::InlineChunk],
    ) {
        let bytes: BTreeMap<Hash, &[u8]> =
            inline.iter().map(|c| (c.hash, c.data.as_slice())).collect();
        let truth = manifest
            .files
            .iter()
            .map(|f| {
                let whole: Vec<u8> = f
                    .chunks
                    .iter()
                    .filter_map(|c| bytes.get(&c.hash))
                    .flat_map(|b| b.iter().copied())
                    .collect();
                FileTruth::of(&f.path, &whole)
            })
            .collect();
        let root = manifest.root().to_hex();
        let mut state = self.lock();
        state.uploaded.insert(
            root.clone(),
            Uploaded {
                chunks: manifest_chunks(manifest),
                truth,
            },
        );
        state.acked.push(Acked {
            label,
            root,
            reference,
        });
    }

    /// Intact copies of each of `chunks` over every store.
    fn copies(&self, chunks: &[ChunkRef]) -> BTreeMap<Hash, usize> {
        chunks
            .iter()
            .map(|c| {
                let n = self
                    .stores
                    .values()
                    .filter(|s| s.holds_intact(std::slice::from_ref(c)))
                    .count();
                (c.hash, n)
            })
            .collect()
    }

    /// A client was told version `label` (manifest `root`) is registered, READY: check its
    /// copies now, and let downloaders and bit rot find it from now on.
    pub fn on_version_acked(&self, label: String, reference: Option<VersionRef>, root: &str) {
        let chunks = match self.lock().uploaded.get(root) {
            Some(u) => u.chunks.clone(),
            None => return,
        };
        let copies = self.copies(&chunks);
        let found = check_ready_copies(&label, &chunks, &copies, COPIES_REQUIRED);
        let mut state = self.lock();
        state.violations.extend(found);
        state.acked.push(Acked {
            label,
            root: root.to_string(),
            reference,
        });
    }

    /// Fault: rot up to `count` chunks of acknowledged versions held by node `id`, chosen with
    /// an RNG seeded by `salt`. Returns how many were rotted.
    pub fn corrupt(&self, id: NodeId, count: u32, salt: u64) -> usize {
        let Some(store) = self.stores.get(&id) else {
            return 0;
        };
        let candidates: Vec<Hash> = {
            let state = self.lock();
            let set: BTreeSet<Hash> = state
                .acked
                .iter()
                .filter_map(|a| state.uploaded.get(&a.root))
                .flat_map(|u| u.chunks.iter().map(|c| c.hash))
                .filter(|h| store.contains(h))
                .collect();
            set.into_iter().collect()
        };
        let mut rng = StdRng::seed_from_u64(salt);
        let chosen: Vec<Hash> = candidates
            .choose_multiple(&mut rng, count as usize)
            .copied()
            .collect();
        let mut rotted = 0;
        for hash in chosen {
            if store.corrupt(&hash) {
                rotted += 1;
                self.trace
                    .record(format!("rot n{id} chunk {}", hash.short()));
            }
        }
        self.lock().stats.chunks_corrupted += rotted as u64;
        rotted
    }

    /// The nodes and their regions, as `should_hold` takes them.
    fn members(&self) -> Vec<(u64, String)> {
        self.stores
            .keys()
            .map(|&id| (id, SIM_REGION.to_string()))
            .collect()
    }

    /// Downloader `client`: every [`DOWNLOAD_THINK_MS`], pull a random acknowledged version
    /// through a random node (see the module docs); until `stop`.
    pub async fn download_loop(
        self: Arc<Self>,
        cluster: Arc<Cluster>,
        client: u32,
        seed: u64,
        stop: Arc<AtomicBool>,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = cluster.ids().to_vec();
        while !stop.load(Ordering::SeqCst) {
            let think = rng.gen_range(DOWNLOAD_THINK_MS.0..=DOWNLOAD_THINK_MS.1);
            tokio::time::sleep(Duration::from_millis(think)).await;
            let pick = {
                let state = self.lock();
                (!state.acked.is_empty())
                    .then(|| state.acked[rng.gen_range(0..state.acked.len())].clone())
            };
            let Some(acked) = pick else {
                continue;
            };
            let node = ids[rng.gen_range(0..ids.len())];
            self.download(&cluster, client, node, &acked).await;
        }
    }

    /// One download of `acked` through node `id`, as its download service serves it
    /// (`Node::plan_download`, `Node::download_chunks`: local store, the state for a small
    /// version, read-through from peers), judged against what was uploaded.
    async fn download(&self, cluster: &Cluster, client: u32, id: NodeId, acked: &Acked) {
        let label = &acked.label;
        let what = format!("download c{client} {label} via n{id}");
        let skip = |why: &str| {
            self.lock().stats.downloads_skipped += 1;
            self.trace.record(format!("{what}: skipped ({why})"));
        };
        let (Some(node), Some(reference)) = (cluster.node(id), &acked.reference) else {
            return skip("node down, or the ack named no number");
        };
        let plan = match node.plan_download(reference).await {
            Ok(plan) => plan,
            Err(e) => return skip(&e.to_string()),
        };
        let mut files: Vec<Downloaded> = plan
            .manifest
            .files
            .iter()
            .map(|f| Downloaded {
                path: f.path.clone(),
                bytes: Vec::with_capacity(f.size_bytes as usize),
            })
            .collect();
        let reads = node.download_chunks(&plan);
        let mut reads = std::pin::pin!(reads);
        while let Some(read) = reads.next().await {
            match read.data {
                Ok(data) => files[read.file_index].bytes.extend_from_slice(&data),
                Err(e) => {
                    self.lock().stats.downloads_failed += 1;
                    self.trace.record(format!("{what}: failed: {e}"));
                    return;
                }
            }
        }
        let mut state = self.lock();
        let Some(uploaded) = state.uploaded.get(&acked.root) else {
            return;
        };
        let found = check_download(label, id, &uploaded.truth, &files);
        self.trace.record(format!(
            "{what}: {} ({} chunks)",
            if found.is_empty() { "ok" } else { "MISMATCH" },
            plan.manifest.chunk_count()
        ));
        state.stats.downloads += 1;
        if plan.is_inline() {
            state.stats.downloads_inline += 1;
        }
        state.violations.extend(found);
    }

    /// After healing: wait (at most [`replication_bound`] of what the holders hold) until every
    /// node that should hold a READY version of `versions` (label, manifest) holds an intact copy
    /// of each chunk; the violations if it never does. Sets [`ChunkStats::replicated_ms`].
    pub async fn await_replication(&self, versions: &[(String, Manifest)]) -> Vec<Violation> {
        let members = self.members();
        let targets: Vec<Target> = versions
            .iter()
            .map(|(label, manifest)| {
                let root = manifest.root().to_hex();
                Target {
                    version: label.clone(),
                    chunks: manifest_chunks(manifest),
                    holders: self
                        .stores
                        .keys()
                        .copied()
                        .filter(|&id| should_hold(&root, id, &members))
                        .collect(),
                }
            })
            .collect();
        let mut held_bytes: BTreeMap<NodeId, u64> = BTreeMap::new();
        for t in &targets {
            let bytes: u64 = t.chunks.iter().map(|c| c.size_bytes as u64).sum();
            for h in &t.holders {
                *held_bytes.entry(*h).or_default() += bytes;
            }
        }
        let bound = replication_bound(
            held_bytes.values().copied().max().unwrap_or(0),
            SIM_SCRUB_BYTES_PER_PASS,
        );
        let started = Instant::now();
        // Faults are over: a copy found intact stays intact, so each is hashed once.
        let mut intact: BTreeMap<NodeId, BTreeSet<Hash>> = BTreeMap::new();
        loop {
            for (&id, store) in &self.stores {
                let known = intact.entry(id).or_default();
                for t in &targets {
                    for c in &t.chunks {
                        if !known.contains(&c.hash) && store.holds_intact(std::slice::from_ref(c)) {
                            known.insert(c.hash);
                        }
                    }
                }
            }
            let waited = started.elapsed();
            let found = check_replication(&targets, &intact, waited.as_millis() as u64);
            if found.is_empty() {
                self.set_replicated_ms(Some(waited.as_millis() as u64));
                self.trace.record(format!(
                    "replicated: {} READY versions whole on every holder",
                    targets.len()
                ));
                return found;
            }
            if waited >= bound {
                return found;
            }
            tokio::time::sleep(REPLICATION_POLL).await;
        }
    }
}

/// How long replication may take after healing when a node should hold `held_bytes`: a copy
/// rotted just before healing is found by the scrub within one round of the store (a pass per
/// `scrub_bytes_per_pass`, one pass per `REPAIR_INTERVAL`) and fetched on the next pass; at
/// least [`REPLICATION_TIMEOUT_MIN`].
pub fn replication_bound(held_bytes: u64, scrub_bytes_per_pass: u64) -> Duration {
    let round = held_bytes.div_ceil(scrub_bytes_per_pass.max(1)) as u32;
    REPLICATION_TIMEOUT_MIN + REPAIR_INTERVAL * (round + 2)
}

/// Every chunk of a manifest, in file order.
pub fn manifest_chunks(manifest: &Manifest) -> Vec<ChunkRef> {
    manifest
        .files
        .iter()
        .flat_map(|f| f.chunks.iter().cloned())
        .collect()
}

/// A short name for a root, for labels of versions whose number an ack did not say.
pub fn root_label(model: &str, number: Option<u64>, root: &str) -> String {
    match number {
        Some(n) => format!("{model}/{n}"),
        None => format!("{model}/? root {}", short(root)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_bound_covers_a_scrub_round_and_a_repair_pass() {
        let pass = REPAIR_INTERVAL;
        assert_eq!(
            replication_bound(0, 100),
            REPLICATION_TIMEOUT_MIN + pass * 2
        );
        assert_eq!(
            replication_bound(100, 100),
            REPLICATION_TIMEOUT_MIN + pass * 3
        );
        assert_eq!(
            replication_bound(101, 100),
            REPLICATION_TIMEOUT_MIN + pass * 4
        );
        assert_eq!(replication_bound(5, 0), REPLICATION_TIMEOUT_MIN + pass * 7);
    }
}
