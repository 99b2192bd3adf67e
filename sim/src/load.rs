//! The `load` scenario: one large model pulled by a fleet of serving replicas in several
//! regions, through Quiver's pull path and, in the same run, through a naive baseline.
//!
//! Shape of a run (all under the seeded, paused-time runtime of [`crate::run`]):
//! 1. Boot the cluster: real `quiver_node::Node`s ([`Cluster`]) over the chunk network of this
//!    run, node `i` (1-based) placed in region `(i-1) % R`, zone `a`/`b` alternating per round.
//!    Each node announces its place in the replicated node table as it boots, so placement
//!    (`should_hold`) and W are computed from replicated state as in production.
//! 2. Registration: the model's chunks (a seeded [`Corpus`], see [`crate::chunkstore`] for the
//!    scale) go through the origin node's (node 1) own upload path: `Node::chunk_sink` (local
//!    put plus pushes to every other node, acknowledged at W durable copies, the rest in the
//!    background) and the upload's writer `ingest::write_chunks`; then `CreateModel` and
//!    `CreateVersion` (READY) are stamped by the origin and proposed through it (it forwards to
//!    the leader), retried unchanged while there is no leader.
//! 3. Replication: every node's own repair loop (`Node::repair_once` every `REPAIR_INTERVAL`);
//!    the scenario only watches which holders have marked the version complete.
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
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::stream;
use quiver_client::sdk::{choose_nearest, Candidate};
use quiver_node::command::{Op, Response};
use quiver_node::domain::{Actor, RiskTier, Signature, VersionMetadata, VersionStatus};
use quiver_node::ingest::write_chunks;
use quiver_node::node::Consistency;
use quiver_node::replication::should_hold;
use quiver_node::NodeError;
use quiver_transfer::{fetch_all, ChunkRef, FetchOptions, Hash};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::chunknet::{ChunkNet, Endpoint, NetConfig, Place};
use crate::chunks::Chunks;
use crate::chunkstore::{Corpus, SimStore, CHUNK_BYTES_REAL, LOGICAL_BYTES_PER_BYTE};
use crate::cluster::{Cluster, SimNode};
use crate::config::{sub_seed, Scenario, SimConfig, NODES_MAX, NODES_MIN};
use crate::loadreport::{LoadReport, LoadSetup, Registration, ReplicaLoad, StrategyReport};
use crate::net::Router;
use crate::schedule::{node_ids, NodeId};
use crate::trace::SharedTrace;

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
    let net = ChunkNet::new(
        NetConfig::default(),
        sub_seed(seed, "chunknet"),
        trace.clone(),
    );
    for &id in &ids {
        net.add_node(id, cfg.node_place(id), SimStore::new(Some(corpus.clone())));
    }
    // The Raft network is one region: the load scenario measures the chunk path, whose
    // regions are `chunknet`'s (cross-region Raft needs longer timers; decision 0004). The
    // nodes announce their places on the chunk network in the node table as they boot.
    let router = Router::new(&ids, 1, sub_seed(seed, "net"), trace.clone(), false);
    let chunk_side = Chunks::over(net.clone(), trace.clone());
    let cluster = Arc::new(Cluster::new(
        ids.clone(),
        dir,
        router,
        chunk_side,
        trace.clone(),
        false,
    ));
    cluster
        .boot(&[(ACTOR.to_string(), quiver_node::auth::Role::Admin)], &[])
        .await
        .context("boot the cluster")?;

    // Registration through the origin's own upload path: its chunk sink (W from the
    // membership) and the upload's writer, then the registration commands through it.
    let origin: NodeId = ids[0];
    let origin_node = cluster.node(origin).context("the origin is up")?;
    let sink = origin_node
        .chunk_sink()
        .await
        .context("the origin's chunk sink")?;
    let write_quorum = sink.copies_required;
    let before = net.stats();
    let upload_start = Instant::now();
    trace.record(format!("upload {} chunks to n{origin}", chunks.len()));
    let bytes: Vec<(Hash, Bytes)> = chunks
        .iter()
        .map(|c| {
            let data = corpus.bytes(&c.hash).context("a corpus chunk")?;
            Ok((c.hash, Bytes::copy_from_slice(&data)))
        })
        .collect::<anyhow::Result<_>>()?;
    write_chunks(sink, stream::iter(bytes))
        .await
        .context("upload to the origin")?;
    let upload_ms = upload_start.elapsed().as_millis() as u64;
    propose(
        &origin_node,
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
        &origin_node,
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
    drop(origin_node);
    let number = match created {
        Response::Version(v) => v.number,
        other => anyhow::bail!("CreateVersion answered {other:?}, not a version"),
    };
    let ready_at = Instant::now();
    trace.record(format!(
        "version {MODEL_NAME}/{number} READY root {}",
        &root[..12]
    ));

    // Replication: the holders' own repair loops, watched from now on.
    let holders = holders_of(&cluster, origin, &root).await?;
    let repair_watch = tokio::spawn({
        let (cluster, holders, root, trace) = (
            cluster.clone(),
            holders.clone(),
            root.clone(),
            trace.clone(),
        );
        async move { wait_for_repair(&cluster, &holders, &root, &trace).await }
    });

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
    let repaired_at_ms = repair_watch.await.context("the repair watch")?;
    if repaired_at_ms.is_none() {
        violations.push(format!(
            "repair: not every holder had the version within {} s",
            PHASE_TIMEOUT.as_secs()
        ));
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
        .node(origin)
        .context("the origin is up")?
        .read(Consistency::Linearizable, |app, rtxn| {
            Ok(app
                .list_versions(rtxn, MODEL_NAME, None, "", 1_000, "")?
                .0
                .len() as u64)
        })
        .await
        .context("list versions")?;
    for id in cluster.up_ids() {
        cluster.crash(id).await?;
    }

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
            write_quorum,
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
            .node(from)
            .with_context(|| format!("n{from} is down"))?;
        match node
            .read(Consistency::Stale, |app, rtxn| app.manifest(rtxn, root))
            .await
        {
            Ok(manifest) => return Ok(manifest.chunk_refs()),
            Err(e) => last = format!("manifest {root}: {e}"),
        }
        tokio::time::sleep(MANIFEST_RETRY).await;
    }
    anyhow::bail!("n{from} never had manifest {root}: {last}")
}

/// The nodes that should hold the version whose manifest is `root` (`should_hold` on the node
/// table that `from` has applied): the ones the repair must bring to a complete copy.
async fn holders_of(cluster: &Cluster, from: NodeId, root: &str) -> anyhow::Result<Vec<NodeId>> {
    let node = cluster
        .node(from)
        .with_context(|| format!("n{from} is up"))?;
    let members: Vec<(u64, String)> = node
        .read(Consistency::Linearizable, |app, rtxn| app.nodes(rtxn))
        .await
        .context("read the node table")?
        .into_iter()
        .map(|n| (n.node_id, n.region))
        .collect();
    Ok(members
        .iter()
        .map(|(id, _)| *id)
        .filter(|&id| should_hold(root, id, &members))
        .collect())
}

/// Waits until every holder's own repair loop has marked the version complete; returns when
/// the last one had (virtual ms since the run's start, to the poll), or `None` after
/// [`PHASE_TIMEOUT`].
async fn wait_for_repair(
    cluster: &Cluster,
    holders: &[NodeId],
    root: &str,
    trace: &SharedTrace,
) -> Option<u64> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    let mut pending: Vec<NodeId> = holders.to_vec();
    loop {
        pending.retain(|&id| {
            let done = cluster
                .node(id)
                .is_some_and(|node| node.repair.is_complete(root));
            if done {
                trace.record(format!("n{id} repair complete for {}", &root[..12]));
            }
            !done
        });
        if pending.is_empty() {
            let at_ms = trace.elapsed_ms();
            trace.record(format!("repair complete on every holder by {at_ms} ms"));
            return Some(at_ms);
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

/// Proposes `op` through `node` as a client would: stamped once there, the same command
/// retried (the node forwards it to the leader) while there is no leader or no quorum yet.
async fn propose(node: &SimNode, trace: &SharedTrace, op: Op) -> anyhow::Result<Response> {
    let what = op.kind();
    let actor = Actor {
        name: ACTOR.into(),
        authenticated: true,
    };
    let command = node.stamp(actor, op);
    let mut last = String::new();
    for _ in 0..PROPOSE_ATTEMPTS_MAX {
        match node.propose_command(command.clone()).await {
            Ok(response) => {
                trace.record(format!("applied {what}"));
                return Ok(response);
            }
            Err(NodeError::Rejected(e)) => anyhow::bail!("{what} rejected: {e}"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(PROPOSE_RETRY).await;
    }
    anyhow::bail!("{what} not applied after {PROPOSE_ATTEMPTS_MAX} attempts: {last}")
}
