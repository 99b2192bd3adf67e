//! The `load` scenario: one large model pulled by a fleet of serving replicas in several
//! regions, through Quiver's pull path and, in the same run, through a naive baseline.
//!
//! Shape of a run (all under the seeded, paused-time runtime of [`crate::run`]):
//! 1. Boot the Raft cluster (real `RaftNode<RegistryApp>` over heed) and place the nodes: node
//!    `i` (1-based) in region `(i-1) % R`, zone `a`/`b` alternating per round. Every node's
//!    placement is registered through Raft (`UpsertNode`), so the replication target is computed
//!    from replicated state as in production.
//! 2. Registration: the model's chunks (a seeded [`Corpus`], see [`crate::chunkstore`] for the
//!    scale) are written on the origin node (node 1) through the real `ChunkSink` with W = 2 —
//!    local put plus pushes to every other node, acknowledged at two durable copies, the rest in
//!    the background — `WRITE_QUEUE_DEPTH` chunks at a time, as the upload ingest does;
//!    then `CreateModel` and `CreateVersion` (READY) go through Raft.
//! 3. Replication: every node runs the production repair pass every `REPAIR_INTERVAL`:
//!    `should_hold` on the replicated node table, then `repair_version` (`fetch_all` from the
//!    other nodes, nearest first).
//! 4. Quiver's pull path: each replica starts when the version is READY plus a seeded jitter
//!    (uniform in 0..[`ARRIVAL_JITTER_MS`]); it ranks the nodes with the SDK's `choose_nearest`
//!    (region, zone, then RTT), reads the manifest from the nearest node (one round trip), and
//!    fetches every chunk with the real `fetch_all` from the nodes of its own region, nearest
//!    first (multi-source; the nearest node anywhere if its region has none). A node that lacks
//!    a chunk reads it through from its peers (`read_chunk`). model_load_time_ms runs from the
//!    replica's start until its last chunk is verified.
//! 5. Once every replica has loaded and every holder's repair is complete, the baseline: the
//!    same replicas (fresh stores, fresh endpoints, the same arrival offsets) each pull the
//!    whole model from the origin node only.
//!
//! Bytes are counted per phase, in logical bytes: Quiver's include the registration's pushes
//! between nodes, repair and read-through; the client's upload to the origin is not simulated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use quiver_client::sdk::{choose_nearest, Candidate};
use quiver_node::command::{Command, Op, Response};
use quiver_node::domain::{Actor, NodeInfo, RiskTier, Signature, VersionMetadata, VersionStatus};
use quiver_node::replication::{
    repair_version, should_hold, ChunkSink, Repaired, BACKGROUND_PUSHES_MAX, REPAIR_INTERVAL,
};
use quiver_transfer::{fetch_all, ChunkRef, FetchOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::chunknet::{ChunkNet, Endpoint, NetConfig, Place};
use crate::chunks::COPIES_REQUIRED;
use crate::chunkstore::{Corpus, SimStore, CHUNK_BYTES_REAL, LOGICAL_BYTES_PER_BYTE};
use crate::client::EPOCH_MS;
use crate::cluster::Cluster;
use crate::config::{sub_seed, Scenario, SimConfig, NODES_MAX, NODES_MIN};
use crate::loadreport::{LoadReport, LoadSetup, Registration, ReplicaLoad, StrategyReport};
use crate::net::Router;
use crate::schedule::{node_ids, NodeId};
use crate::trace::SharedTrace;
use quiver_node::ingest::WRITE_QUEUE_DEPTH;

/// Region names, in placement order.
pub const REGION_NAMES: [&str; 8] = [
    "eu-west", "us-east", "ap-south", "us-west", "eu-north", "sa-east", "ap-east", "af-south",
];
/// Most regions of a load run.
pub const REGIONS_MAX: usize = REGION_NAMES.len();
/// Zones per region (nodes and replicas alternate between them).
pub const ZONES: [&str; 2] = ["a", "b"];
/// Most serving replicas of a load run.
pub const REPLICAS_MAX: usize = 10_000;
/// Largest model of a load run (logical bytes).
pub const MODEL_BYTES_MAX: u64 = 100_000_000_000;
/// Default model size: 2.3 GB.
pub const MODEL_BYTES_DEFAULT: u64 = 2_300_000_000;
pub const NODES_DEFAULT: usize = 6;
pub const REGIONS_DEFAULT: usize = 3;
pub const REPLICAS_DEFAULT: usize = 100;
/// A replica starts this long (at most, uniform) after the version is READY.
pub const ARRIVAL_JITTER_MS: u64 = 1_000;
/// Attempts of one replica's `fetch_all` (each resumes the last) before it gives up.
pub const REPLICA_FETCH_ATTEMPTS_MAX: usize = 3;
/// How long a replica waits for its nearest node to have applied the version before asking
/// again, and how many times.
pub const MANIFEST_RETRY: Duration = Duration::from_millis(50);
pub const MANIFEST_ATTEMPTS_MAX: usize = 100;
/// A Raft proposal is retried (no leader yet, leader changed) this many times, this far apart.
pub const PROPOSE_ATTEMPTS_MAX: usize = 100;
pub const PROPOSE_RETRY: Duration = Duration::from_millis(100);
/// Longest virtual time of each phase (the fleet's pull; the repair's completion).
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(3_600);
/// How often the scenario checks whether repair is complete.
const REPAIR_POLL: Duration = Duration::from_millis(100);
/// How long the cluster has to elect its first leader.
const BOOT_LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const MODEL_NAME: &str = "llm-serving";
const ACTOR: &str = "load-scenario";

/// A load run: the common simulator settings plus the fleet.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Seed, node count, trace keeping and data root (scenario `load`).
    pub base: SimConfig,
    pub regions: usize,
    pub replicas: usize,
    /// The model's logical size.
    pub model_bytes: u64,
}

impl LoadConfig {
    pub fn new(seed: u64) -> Self {
        let mut base = SimConfig::new(seed, Scenario::Load);
        base.nodes = NODES_DEFAULT;
        LoadConfig {
            base,
            regions: REGIONS_DEFAULT,
            replicas: REPLICAS_DEFAULT,
            model_bytes: MODEL_BYTES_DEFAULT,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(NODES_MIN..=NODES_MAX).contains(&self.base.nodes) {
            return Err(format!(
                "--nodes {} is out of range: use {NODES_MIN}..={NODES_MAX}",
                self.base.nodes
            ));
        }
        if !(1..=REGIONS_MAX).contains(&self.regions) {
            return Err(format!(
                "--regions {} is out of range: use 1..={REGIONS_MAX}",
                self.regions
            ));
        }
        if !(1..=REPLICAS_MAX).contains(&self.replicas) {
            return Err(format!(
                "--replicas {} is out of range: use 1..={REPLICAS_MAX}",
                self.replicas
            ));
        }
        if !(1..=MODEL_BYTES_MAX).contains(&self.model_bytes) {
            return Err(format!(
                "--model-bytes {} is out of range: use 1..={MODEL_BYTES_MAX}",
                self.model_bytes
            ));
        }
        Ok(())
    }

    /// The exact command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "quiver-sim run --seed {} --scenario load --nodes {} --regions {} --replicas {} --model-bytes {} --dump-trace",
            self.base.seed, self.base.nodes, self.regions, self.replicas, self.model_bytes
        )
    }

    fn region(&self, index: usize) -> &'static str {
        REGION_NAMES[index % self.regions]
    }

    /// Where node `id` (1-based) is: placed as replica `id - 1` would be.
    pub fn node_place(&self, id: NodeId) -> Place {
        self.replica_place((id - 1) as usize)
    }

    /// Where replica `j` (0-based) is: regions round-robin, then zones within them.
    pub fn replica_place(&self, j: usize) -> Place {
        Place::new(
            self.region(j),
            format!(
                "{}-{}",
                self.region(j),
                ZONES[(j / self.regions) % ZONES.len()]
            ),
        )
    }
}

/// Runs one load scenario on this thread (see the module docs). `Err` only when the run could
/// not be carried out at all; replicas that fail to load are violations in the report.
pub fn run(cfg: &LoadConfig) -> anyhow::Result<LoadReport> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let root = crate::run::data_root(&cfg.base);
    let dir = tempfile::Builder::new()
        .prefix("quiver-sim-load-")
        .tempdir_in(&root)
        .with_context(|| format!("create a data dir under {}", root.display()))?;
    let seed = cfg.base.seed;
    quiver_raft::seed_thread_rng(sub_seed(seed, "openraft"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(
            &sub_seed(seed, "tokio").to_le_bytes(),
        ))
        .build()
        .context("build the simulation runtime")?;
    let wall_start = std::time::Instant::now();
    let result = runtime.block_on(simulate(cfg, dir.path()));
    let wall = wall_start.elapsed();
    drop(runtime);
    let mut report = result?;
    report.wall_ms = wall.as_millis() as u64;
    Ok(report)
}

/// Shared between the scenario and the repair tasks.
#[derive(Default)]
struct RepairBook {
    /// Holder → virtual ms (since the run's start) at which its copy was complete.
    complete_at_ms: BTreeMap<NodeId, u64>,
    /// Holders of the version, as each node's `should_hold` decided.
    holders: BTreeMap<NodeId, bool>,
}

type SharedBook = Arc<Mutex<RepairBook>>;

fn lock(book: &SharedBook) -> std::sync::MutexGuard<'_, RepairBook> {
    book.lock().unwrap_or_else(|e| e.into_inner())
}

async fn simulate(cfg: &LoadConfig, dir: &std::path::Path) -> anyhow::Result<LoadReport> {
    let seed = cfg.base.seed;
    let trace = SharedTrace::new(cfg.base.keep_trace);
    let start = trace.start();
    trace.record(format!(
        "run seed {seed} scenario load nodes {} regions {} replicas {} model_bytes {}",
        cfg.base.nodes, cfg.regions, cfg.replicas, cfg.model_bytes
    ));
    let corpus = Arc::new(
        Corpus::synthesize(sub_seed(seed, "model"), cfg.model_bytes).map_err(anyhow::Error::msg)?,
    );
    let manifest = corpus.manifest().context("the synthesized manifest")?;
    let root = manifest.root().to_hex().to_string();
    let chunks: Vec<ChunkRef> = corpus.chunks().to_vec();

    let ids = node_ids(cfg.base.nodes);
    // The Raft network is one region: the load scenario measures the chunk path, whose
    // regions are `chunknet`'s (cross-region Raft needs longer timers; decision 0004).
    let router = Router::new(&ids, 1, sub_seed(seed, "net"), trace.clone(), false);
    let cluster = Arc::new(Cluster::new(ids.clone(), dir, router, trace.clone(), false));
    cluster.boot().await.context("boot the cluster")?;
    let net = ChunkNet::new(
        NetConfig::default(),
        sub_seed(seed, "chunknet"),
        trace.clone(),
    );
    for &id in &ids {
        net.add_node(id, cfg.node_place(id), SimStore::new(Some(corpus.clone())));
    }
    wait_for_leader(&cluster).await?;
    for &id in &ids {
        let place = cfg.node_place(id);
        propose(
            &cluster,
            &trace,
            Op::UpsertNode(NodeInfo {
                node_id: id,
                api_addr: api_addr(id),
                peer_addr: SocketAddr::new(Endpoint::Node(id).addr().ip(), 7000).to_string(),
                quic_addr: Endpoint::Node(id).addr().to_string(),
                region: place.region,
                zone: place.zone,
            }),
        )
        .await?;
    }

    // Registration on the origin through the real ChunkSink (W = 2).
    let origin: NodeId = ids[0];
    let origin_store = net.store(origin).context("the origin's store")?;
    let sink = ChunkSink {
        store: origin_store,
        peers: net.peers(Endpoint::Node(origin)),
        targets: net.node_sources(origin),
        copies_required: COPIES_REQUIRED,
        background: Arc::new(Semaphore::new(BACKGROUND_PUSHES_MAX)),
        planted: Default::default(),
    };
    let before = net.stats();
    let upload_start = Instant::now();
    trace.record(format!("upload {} chunks to n{origin}", chunks.len()));
    let results: Vec<_> = stream::iter(chunks.iter().cloned())
        .map(|chunk| {
            let sink = sink.clone();
            let data = corpus.bytes(&chunk.hash);
            async move {
                let data = data.context("a corpus chunk")?;
                sink.put(chunk.hash, Bytes::copy_from_slice(&data))
                    .await
                    .map_err(|status| anyhow::anyhow!("upload chunk {}: {status}", chunk.hash))
            }
        })
        .buffered(WRITE_QUEUE_DEPTH)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let upload_ms = upload_start.elapsed().as_millis() as u64;
    propose(
        &cluster,
        &trace,
        Op::CreateModel {
            name: MODEL_NAME.into(),
            namespace: "serving".into(),
            description: "the load scenario's model".into(),
            risk_tier: RiskTier::Low,
            tags: BTreeMap::new(),
        },
    )
    .await?;
    let mut metrics = BTreeMap::new();
    metrics.insert("auc".to_string(), 0.9);
    let created = propose(
        &cluster,
        &trace,
        Op::CreateVersion {
            model: MODEL_NAME.into(),
            manifest: manifest.clone(),
            manifest_root: root.clone(),
            signature: Signature::default(),
            metadata: VersionMetadata {
                data_snapshot_id: "snap-1".into(),
                code_commit: root[..12].to_string(),
                pipeline_run_id: "run-1".into(),
                hyperparameters: BTreeMap::new(),
                metrics,
            },
            tags: BTreeMap::new(),
            status: VersionStatus::Ready,
            inline_chunks: Vec::new(),
        },
    )
    .await?;
    let number = match created {
        Response::Version(v) => v.number,
        other => anyhow::bail!("CreateVersion answered {other:?}, not a version"),
    };
    let ready_at = Instant::now();
    trace.record(format!(
        "version {MODEL_NAME}/{number} READY root {}",
        &root[..12]
    ));

    // Replication: every node's repair loop.
    let book: SharedBook = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let repairers: Vec<_> = ids
        .iter()
        .map(|&id| {
            tokio::spawn(repair_loop(
                id,
                cluster.clone(),
                net.clone(),
                book.clone(),
                trace.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // Quiver's pull path.
    let mut arrival_rng = StdRng::seed_from_u64(sub_seed(seed, "arrival"));
    let offsets: Vec<Duration> = (0..cfg.replicas)
        .map(|_| Duration::from_millis(arrival_rng.gen_range(0..ARRIVAL_JITTER_MS)))
        .collect();
    let quiver_loads = pull_fleet(
        cfg,
        &cluster,
        &net,
        &corpus,
        &root,
        &trace,
        ready_at,
        &offsets,
        Strategy::Quiver,
    )
    .await;
    let mut violations = Vec::new();
    let repaired_at_ms = wait_for_repair(&book, &ids, &trace).await;
    if repaired_at_ms.is_none() {
        violations.push(format!(
            "repair: not every holder had the version within {} s",
            PHASE_TIMEOUT.as_secs()
        ));
    }
    stop.store(true, Ordering::SeqCst);
    for r in repairers {
        r.await.context("repair task")?;
    }
    let after_quiver = net.stats();

    // The baseline: every replica from the origin.
    let baseline_start = Instant::now();
    trace.record("baseline: every replica pulls from the origin");
    let baseline_loads = pull_fleet(
        cfg,
        &cluster,
        &net,
        &corpus,
        &root,
        &trace,
        baseline_start,
        &offsets,
        Strategy::Baseline { origin },
    )
    .await;
    let after_baseline = net.stats();

    for load in quiver_loads.iter().chain(&baseline_loads) {
        if !load.complete || load.chunks_verified != chunks.len() {
            violations.push(format!(
                "replica c{} ({}) did not load and verify every chunk: {} of {} verified, complete {}",
                load.replica,
                load.region,
                load.chunks_verified,
                chunks.len(),
                load.complete
            ));
        }
    }
    let version_count = cluster
        .handle(origin)
        .context("the origin is up")?
        .read(|app, rtxn| {
            Ok(app
                .list_versions(rtxn, MODEL_NAME, None, "", 1_000, "")
                .map_err(|e| anyhow::anyhow!("list versions: {e}"))?
                .0
                .len() as u64)
        })?;
    for id in cluster.up_ids() {
        cluster.crash(id).await?;
    }

    let b = lock(&book);
    let holders: Vec<u64> = b
        .holders
        .iter()
        .filter(|(_, holds)| **holds)
        .map(|(id, _)| *id)
        .collect();
    drop(b);
    let mut quiver = StrategyReport::new(
        "quiver",
        "each replica pulls from the nodes of its region (nearest first, multi-source); nodes read through from their peers and repair to their target",
        quiver_loads,
        after_quiver.all().since(&before.all()),
        after_quiver.between_nodes.since(&before.between_nodes),
    );
    quiver.redundant_bytes_between_nodes =
        after_quiver.redundant_between_nodes_bytes - before.redundant_between_nodes_bytes;
    let mut baseline = StrategyReport::new(
        "baseline",
        "each replica pulls the whole model from the origin node",
        baseline_loads,
        after_baseline.all().since(&after_quiver.all()),
        after_baseline
            .between_nodes
            .since(&after_quiver.between_nodes),
    );
    baseline.redundant_bytes_between_nodes =
        after_baseline.redundant_between_nodes_bytes - after_quiver.redundant_between_nodes_bytes;
    let sim_ms = trace.elapsed_ms();
    for v in &violations {
        trace.record(format!("violation {v}"));
    }
    let net_cfg = net.config();
    let mut t = trace.lock();
    Ok(LoadReport {
        setup: LoadSetup {
            seed,
            nodes: cfg.base.nodes,
            regions: (0..cfg.regions).map(|i| cfg.region(i).to_string()).collect(),
            replicas: cfg.replicas,
            model_bytes: cfg.model_bytes,
            chunks: chunks.len(),
            scale: LOGICAL_BYTES_PER_BYTE,
            real_chunk_bytes: CHUNK_BYTES_REAL,
            write_quorum: COPIES_REQUIRED,
            arrival: format!(
                "every replica starts when the version is READY plus a seeded uniform jitter of 0..{ARRIVAL_JITTER_MS} ms; the baseline replays the same offsets after Quiver's phase and repair are done"
            ),
            network: format!(
                "nodes {} Gbit/s, replicas {} Gbit/s (egress and ingress each), region-to-region links {} Gbit/s per direction; one-way latency {} us in a zone, {} us in a region, {}..{} ms between regions",
                net_cfg.node_bytes_per_s * 8 / 1_000_000_000,
                net_cfg.client_bytes_per_s * 8 / 1_000_000_000,
                net_cfg.cross_region_link_bytes_per_s * 8 / 1_000_000_000,
                net_cfg.same_zone_latency.as_micros(),
                net_cfg.same_region_latency.as_micros(),
                net_cfg.cross_region_latency_ms.0,
                net_cfg.cross_region_latency_ms.1
            ),
        },
        registration: Registration {
            origin_node: origin,
            upload_ms,
            ready_at_ms: ready_at.saturating_duration_since(start).as_millis() as u64,
            holders,
            repaired_at_ms,
        },
        quiver,
        baseline,
        ratio_p50: 0.0,
        ratio_p95: 0.0,
        ratio_p99: 0.0,
        version_count,
        sim_ms,
        wall_ms: 0,
        trace_events: t.events(),
        trace_hash: t.hash_hex(),
        violations,
        trace_lines: t.take_lines(),
    }
    .with_ratios())
}

#[derive(Clone, Copy, Debug)]
enum Strategy {
    Quiver,
    Baseline { origin: NodeId },
}

/// Every replica pulls the model, each starting at `at + offsets[j]`; in replica order.
#[allow(clippy::too_many_arguments)]
async fn pull_fleet(
    cfg: &LoadConfig,
    cluster: &Arc<Cluster>,
    net: &Arc<ChunkNet>,
    corpus: &Arc<Corpus>,
    root: &str,
    trace: &SharedTrace,
    at: Instant,
    offsets: &[Duration],
    strategy: Strategy,
) -> Vec<ReplicaLoad> {
    let base = match strategy {
        Strategy::Quiver => 0,
        Strategy::Baseline { .. } => cfg.replicas as u32,
    };
    let tasks: Vec<_> = offsets
        .iter()
        .enumerate()
        .map(|(j, offset)| {
            let id = base + j as u32;
            let place = cfg.replica_place(j);
            net.add_client(id, place.clone());
            tokio::spawn(pull_one(
                id,
                place,
                cluster.clone(),
                net.clone(),
                corpus.clone(),
                root.to_string(),
                trace.clone(),
                at + *offset,
                strategy,
            ))
        })
        .collect();
    let mut loads = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(load) => loads.push(load),
            Err(e) => trace.record(format!("replica task failed: {e}")),
        }
    }
    loads
}

/// One replica's pull (see the module docs).
#[allow(clippy::too_many_arguments)]
async fn pull_one(
    id: u32,
    place: Place,
    cluster: Arc<Cluster>,
    net: Arc<ChunkNet>,
    corpus: Arc<Corpus>,
    root: String,
    trace: SharedTrace,
    start_at: Instant,
    strategy: Strategy,
) -> ReplicaLoad {
    tokio::time::sleep_until(start_at).await;
    let started = Instant::now();
    let me = Endpoint::Client(id);
    let sources: Vec<NodeId> = match strategy {
        Strategy::Quiver => nearest_sources(&net, me, &place),
        Strategy::Baseline { origin } => vec![origin],
    };
    trace.record(format!(
        "c{id} start ({}) sources {}",
        place.region,
        sources
            .iter()
            .map(|s| format!("n{s}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let mut load = ReplicaLoad {
        replica: id,
        region: place.region.clone(),
        model_load_time_ms: 0,
        chunks_verified: 0,
        complete: false,
        sources: sources.clone(),
    };
    let Some(&first) = sources.first() else {
        trace.record(format!("c{id} has no node to pull from"));
        return load;
    };
    let chunks = match read_manifest(&cluster, &net, me, first, &root).await {
        Ok(chunks) => chunks,
        Err(e) => {
            trace.record(format!("c{id} manifest: {e:#}"));
            return load;
        }
    };
    let addrs: Vec<SocketAddr> = sources.iter().map(|&s| Endpoint::Node(s).addr()).collect();
    let store = SimStore::new(Some(corpus));
    let peers = net.peers(me);
    for attempt in 1..=REPLICA_FETCH_ATTEMPTS_MAX {
        match fetch_all(&peers, &store, &chunks, &addrs, FetchOptions::default()).await {
            Ok(report) => {
                // Skipped chunks were verified and stored by an earlier attempt.
                load.chunks_verified = report.fetched_chunks + report.skipped_chunks;
                break;
            }
            Err(e) => {
                trace.record(format!("c{id} fetch attempt {attempt} failed: {e}"));
            }
        }
    }
    load.complete = store.holds_intact(&chunks);
    load.model_load_time_ms = started.elapsed().as_millis() as u64;
    trace.record(format!(
        "c{id} loaded {} chunks in {} ms complete {}",
        load.chunks_verified, load.model_load_time_ms, load.complete
    ));
    load
}

/// The nodes a replica pulls from: the nodes of its own region ranked by the SDK's
/// `choose_nearest` (zone, then RTT, then id); if its region has none, the nearest node.
fn nearest_sources(net: &ChunkNet, me: Endpoint, place: &Place) -> Vec<NodeId> {
    let mut candidates: Vec<Candidate> = net
        .nodes()
        .into_iter()
        .filter_map(|id| {
            let node_place = net.place(Endpoint::Node(id))?;
            Some(Candidate {
                node_id: id,
                api_addr: api_addr(id),
                region: node_place.region,
                zone: node_place.zone,
                rtt: net.rtt(me, Endpoint::Node(id)),
            })
        })
        .collect();
    let mut ranked = Vec::new();
    while let Some(i) = choose_nearest(&candidates, &place.region, &place.zone) {
        ranked.push(candidates.remove(i));
    }
    let local: Vec<NodeId> = ranked
        .iter()
        .filter(|c| c.region == place.region)
        .map(|c| c.node_id)
        .collect();
    if local.is_empty() {
        ranked.first().map(|c| c.node_id).into_iter().collect()
    } else {
        local
    }
}

/// The version's chunks as node `from` knows them (its applied state), after one round trip;
/// retried while the node has not applied the version yet.
async fn read_manifest(
    cluster: &Cluster,
    net: &ChunkNet,
    me: Endpoint,
    from: NodeId,
    root: &str,
) -> anyhow::Result<Vec<ChunkRef>> {
    let rtt = net
        .rtt(me, Endpoint::Node(from))
        .with_context(|| format!("n{from} is unreachable"))?;
    let mut last = String::new();
    for _ in 0..MANIFEST_ATTEMPTS_MAX {
        tokio::time::sleep(rtt).await;
        let node = cluster
            .handle(from)
            .with_context(|| format!("n{from} is down"))?;
        match node.read(|app, rtxn| {
            app.manifest(rtxn, root)
                .map_err(|e| anyhow::anyhow!("manifest {root}: {e}"))
        }) {
            Ok(manifest) => return Ok(manifest.files.into_iter().flat_map(|f| f.chunks).collect()),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(MANIFEST_RETRY).await;
    }
    anyhow::bail!("n{from} never had manifest {root}: {last}")
}

/// Node `id`'s repair loop: the production pass (`should_hold` on the replicated node table,
/// then `repair_version` from the other nodes, nearest first) every `REPAIR_INTERVAL`, until
/// `stop`.
async fn repair_loop(
    id: NodeId,
    cluster: Arc<Cluster>,
    net: Arc<ChunkNet>,
    book: SharedBook,
    trace: SharedTrace,
    stop: Arc<AtomicBool>,
) {
    let Some(store) = net.store(id) else {
        return;
    };
    let peers = net.peers(Endpoint::Node(id));
    let sources = net.node_sources(id);
    let start = trace.start();
    loop {
        tokio::time::sleep(REPAIR_INTERVAL).await;
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(node) = cluster.handle(id) else {
            continue;
        };
        let state = node.read(|app, rtxn| {
            let err = |e: quiver_node::state::AppError| anyhow::anyhow!("{e}");
            let roots = app.ready_manifest_roots(rtxn).map_err(err)?;
            let members: Vec<(u64, String)> = app
                .nodes(rtxn)
                .map_err(err)?
                .into_iter()
                .map(|n| (n.node_id, n.region))
                .collect();
            let mut versions = Vec::new();
            for (_, _, root) in roots {
                let manifest = app.manifest(rtxn, &root).map_err(err)?;
                versions.push((root, manifest));
            }
            Ok((members, versions))
        });
        let (members, versions) = match state {
            Ok(state) => state,
            Err(e) => {
                trace.record(format!("n{id} repair: read state: {e:#}"));
                continue;
            }
        };
        for (root, manifest) in versions {
            let holds = should_hold(&root, id, &members);
            let known = {
                let mut b = lock(&book);
                b.holders.insert(id, holds);
                b.complete_at_ms.contains_key(&id)
            };
            if !holds || known {
                continue;
            }
            let chunks = manifest.files.into_iter().flat_map(|f| f.chunks).collect();
            match repair_version(&store, &peers, &sources, chunks).await {
                Ok(Repaired::Complete { fetched_chunks }) => {
                    let at_ms = Instant::now().saturating_duration_since(start).as_millis() as u64;
                    trace.record(format!(
                        "n{id} repair complete for {}: fetched {fetched_chunks} chunks",
                        &root[..12]
                    ));
                    lock(&book).complete_at_ms.insert(id, at_ms);
                }
                Ok(Repaired::NoSources { missing_chunks }) => {
                    trace.record(format!("n{id} repair: {missing_chunks} chunks, no sources"));
                }
                Err(e) => trace.record(format!("n{id} repair incomplete, will retry: {e}")),
            }
        }
    }
}

/// Waits until every node has decided and every holder is complete; returns when the last
/// holder completed (virtual ms since the run's start), or `None` after [`PHASE_TIMEOUT`].
async fn wait_for_repair(book: &SharedBook, ids: &[NodeId], trace: &SharedTrace) -> Option<u64> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        {
            let b = lock(book);
            let decided = ids.iter().all(|id| b.holders.contains_key(id));
            let holders: Vec<NodeId> = ids
                .iter()
                .copied()
                .filter(|id| b.holders.get(id) == Some(&true))
                .collect();
            if decided && holders.iter().all(|h| b.complete_at_ms.contains_key(h)) {
                let last = holders
                    .iter()
                    .filter_map(|h| b.complete_at_ms.get(h))
                    .max()
                    .copied()
                    .unwrap_or(0);
                drop(b);
                trace.record(format!("repair complete on every holder by {last} ms"));
                return Some(last);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(REPAIR_POLL).await;
    }
}

/// Node `id`'s client API address as registered in the node table (nothing listens there).
fn api_addr(id: NodeId) -> String {
    SocketAddr::new(Endpoint::Node(id).addr().ip(), 7001).to_string()
}

async fn wait_for_leader(cluster: &Cluster) -> anyhow::Result<()> {
    let deadline = Instant::now() + BOOT_LEADER_TIMEOUT;
    while cluster.leader().is_none() {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "no leader within {} s of boot",
                BOOT_LEADER_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(PROPOSE_RETRY).await;
    }
    Ok(())
}

/// Proposes `op` through the current leader; retries while there is none or it changes.
async fn propose(cluster: &Cluster, trace: &SharedTrace, op: Op) -> anyhow::Result<Response> {
    let what = op.kind();
    let mut last = String::from("no leader");
    for _ in 0..PROPOSE_ATTEMPTS_MAX {
        if let Some(node) = cluster.leader().and_then(|id| cluster.handle(id)) {
            let cmd = Command {
                actor: Actor {
                    name: ACTOR.into(),
                    authenticated: false,
                },
                at_ms: EPOCH_MS + trace.elapsed_ms() as i64,
                request_id: None,
                op: op.clone(),
            };
            match node.write(cmd).await {
                Ok(Response::Rejected(e)) => anyhow::bail!("{what} rejected: {e}"),
                Ok(response) => {
                    trace.record(format!("applied {what}"));
                    return Ok(response);
                }
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(PROPOSE_RETRY).await;
    }
    anyhow::bail!("{what} not applied after {PROPOSE_ATTEMPTS_MAX} attempts: {last}")
}
