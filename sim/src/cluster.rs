//! The simulated cluster: real `quiver_node::Node`s — the production orchestration (proposing
//! with time and request ids, the chunk sink, placement, the repair loop) over a `RaftNode` on
//! heed, one data dir each — built over the simulator's environment: its virtual clock (skewed
//! per node), seeded request ids, the in-memory chunk stores and chunk network of
//! [`crate::chunks`], and the simulated peer transport of [`crate::net`].
//!
//! A crash is a power loss: the node stops answering at once (its `Raft` is detached from the
//! router first, so peers see a refused connection), its LMDB environments are closed, and then
//! its disk ([`crate::disk::SimDisk`], which its log store reports every write to) takes back
//! every log write that was not durable (none, unless a bug skipped an fsync: see the `disk`
//! module for the model). A restart opens the same data dir, as a restarted process would.
//!
//! A node is started on a tokio task of its own, so a panic while it opens its storage (openraft
//! asserting on state a bug corrupted) is an error of that start, not of the whole run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::{BasicNode, RaftMetrics, ServerState};
use quiver_node::command::{Op, RequestId};
use quiver_node::domain::{Actor, NodeInfo};
use quiver_node::env::{Clock, Env, RequestIds};
use quiver_node::node::PlantedNodeBugs;
use quiver_node::replication::PlantedBugs;
use quiver_node::state::RegistryApp;
use quiver_node::watch::{WatchEvent, WatchFilter, WatchRead};
use quiver_node::CoreConfig;
use quiver_raft::{LogDiskHandle, RaftNode, RaftNodeConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::FinalState;
use crate::chunknet::{Endpoint, SimPeers};
use crate::chunks::{Chunks, SIM_SCRUB_BYTES_PER_PASS};
use crate::chunkstore::SimStore;
use crate::disk::SimDisk;
use crate::net::{peer_addr, Router, SimTransport};
use crate::schedule::NodeId;
use crate::trace::SharedTrace;

/// Entries applied between snapshots in the simulator: small, so that runs build snapshots,
/// purge logs and (for nodes that were down long) install snapshots.
pub const SIM_SNAPSHOT_LOGS_SINCE_LAST: u64 = 200;
/// Entries kept behind a snapshot in the simulator.
pub const SIM_LOGS_TO_KEEP_AFTER_SNAPSHOT: u64 = 10;
/// Size of the nodes' Raft log segments: small, so that runs start and delete segments (and crash
/// around that) many times.
pub const SIM_LOG_SEGMENT_BYTES: u64 = 16 << 10;
/// Page size used to read a whole registry state.
const READ_PAGE_SIZE: usize = 1_000;

pub type Node = RaftNode<RegistryApp>;
/// The principal that bootstraps access in a run and grants its clients their roles.
pub const SIM_ADMIN: &str = "sim-admin";

/// [`SIM_ADMIN`] as an actor.
pub fn sim_admin() -> Actor {
    Actor {
        name: SIM_ADMIN.into(),
        authenticated: true,
    }
}

/// A registry node as the simulator builds it: the production `Node` over the simulated world.
pub type SimNode = quiver_node::Node<SimStore, SimPeers>;

/// Free logical bytes a node's chunk disk must keep for uploads to be taken
/// (`CoreConfig::disk_reserve_bytes`): four 4 MiB chunks. A full-disk fault leaves less
/// (`schedule::DISK_FULL_SLACK_BYTES`), so uploads through that node are refused with
/// `DiskFull` while pushes and repair that still fit go on.
pub const SIM_DISK_RESERVE_BYTES: u64 = 16 << 20;

/// How long an unreferenced chunk stays after its last put before a node's running collector
/// removes it (`CoreConfig::chunk_gc_grace`). Longer than a simulated registration can take from
/// its first chunk to its acknowledgement (an upload and then its command, each retried for up to
/// `client::CLIENT_OP_TIMEOUT`), as production's must be longer than its uploads; short enough
/// that a run collects what failed uploads and the final probes left, and its checkers see
/// whether a collection ever takes a chunk of an acknowledged version.
pub const SIM_CHUNK_GC_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// A node's clock: the run's virtual time since [`crate::client::EPOCH_MS`], off by the node's
/// skew.
struct SimClock {
    start: tokio::time::Instant,
    offset_ms: i64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        crate::client::EPOCH_MS + self.start.elapsed().as_millis() as i64 + self.offset_ms
    }
}

/// Request ids a function of the node, its incarnation and a counter: unique, and the same in
/// every run of a seed.
struct SimIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds for SimIds {
    fn next_id(&self) -> RequestId {
        RequestId(format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

pub struct Cluster {
    ids: Vec<NodeId>,
    data_root: PathBuf,
    router: Arc<Router>,
    trace: SharedTrace,
    /// The nodes that are up.
    up: Mutex<BTreeMap<NodeId, Arc<SimNode>>>,
    /// The nodes' chunk side (their stores, and their places and endpoints on the chunk
    /// network, which go down and up with the nodes).
    chunks: Arc<Chunks>,
    /// Every node's log disk (up or down).
    disks: BTreeMap<NodeId, Arc<SimDisk>>,
    /// Unsynced log writes lost in crashes so far.
    writes_lost: std::sync::atomic::AtomicU64,
    /// How far each node's clock is off, in ms (absent: 0).
    clock_offsets_ms: BTreeMap<NodeId, i64>,
    /// The nodes' Raft heartbeat (`RaftNodeConfig::heartbeat_ms`).
    heartbeat_ms: u64,
    /// Bugs planted in the nodes' Raft, replication and node code.
    planted: quiver_raft::PlantedRaftBugs,
    planted_chunks: PlantedBugs,
    planted_node: PlantedNodeBugs,
    /// What the repair loops of nodes that have stopped did: chunks fetched, bad copies found.
    repair_done: Mutex<(u64, u64)>,
}

impl Cluster {
    /// `chunks` holds every node's store and place; `skip_fsync`: the planted bug
    /// [`crate::Plant::DropLogFsync`], handed to every node's log store through its disk.
    pub fn new(
        ids: Vec<NodeId>,
        data_root: &Path,
        router: Arc<Router>,
        chunks: Arc<Chunks>,
        trace: SharedTrace,
        skip_fsync: bool,
    ) -> Self {
        let disks = ids
            .iter()
            .map(|&id| {
                let dir = Self::node_dir(data_root, id);
                (id, Arc::new(SimDisk::new(id, &dir, skip_fsync)))
            })
            .collect();
        Cluster {
            ids,
            data_root: data_root.to_path_buf(),
            router,
            trace,
            up: Mutex::new(BTreeMap::new()),
            chunks,
            disks,
            writes_lost: std::sync::atomic::AtomicU64::new(0),
            clock_offsets_ms: BTreeMap::new(),
            heartbeat_ms: quiver_raft::HEARTBEAT_INTERVAL_MS,
            planted: Default::default(),
            planted_chunks: Default::default(),
            planted_node: Default::default(),
            repair_done: Mutex::new((0, 0)),
        }
    }

    /// Run the nodes with these bugs planted in their Raft, replication and node code.
    pub fn with_planted(
        mut self,
        planted: quiver_raft::PlantedRaftBugs,
        planted_chunks: PlantedBugs,
        planted_node: PlantedNodeBugs,
    ) -> Self {
        self.planted = planted;
        self.planted_chunks = planted_chunks;
        self.planted_node = planted_node;
        self
    }

    /// Chunks fetched and bad copies found by every node's repair loop so far.
    pub fn repair_totals(&self) -> (u64, u64) {
        let done = *self
            .repair_done
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.lock().values().fold(done, |(f, b), node| {
            let (fetched, bad) = node.repair_totals.load();
            (f + fetched, b + bad)
        })
    }

    /// Run the nodes with this Raft heartbeat (as `quiver-node serve --heartbeat-ms`).
    pub fn with_heartbeat_ms(mut self, heartbeat_ms: u64) -> Self {
        self.heartbeat_ms = heartbeat_ms;
        self
    }

    /// Give each node's clock an offset drawn from `seed` in ±`skew_ms`.
    pub fn with_clock_skew(mut self, seed: u64, skew_ms: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let skew = skew_ms as i64;
        self.clock_offsets_ms = self
            .ids
            .iter()
            .map(|&id| (id, rng.gen_range(-skew..=skew)))
            .collect();
        self
    }

    /// What node `id`'s clock reads, in ms since the Unix epoch, when the true time is
    /// `true_ms`: what it stamps into a command it proposes.
    pub fn node_clock_ms(&self, id: NodeId, true_ms: i64) -> i64 {
        true_ms + self.clock_offsets_ms.get(&id).copied().unwrap_or(0)
    }

    fn node_dir(data_root: &Path, id: NodeId) -> PathBuf {
        data_root.join(format!("n{id}"))
    }

    /// Unsynced log writes lost in crashes so far, over all nodes.
    pub fn log_writes_lost(&self) -> u64 {
        self.writes_lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Arc<SimNode>>> {
        self.up
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn config(&self, id: NodeId) -> RaftNodeConfig {
        let mut cfg = RaftNodeConfig::new(id, Self::node_dir(&self.data_root, id), peer_addr(id));
        cfg.snapshot_logs_since_last = SIM_SNAPSHOT_LOGS_SINCE_LAST;
        cfg.logs_to_keep_after_snapshot = SIM_LOGS_TO_KEEP_AFTER_SNAPSHOT;
        cfg.log_options = quiver_raft::LogOptions {
            segment_bytes_target: SIM_LOG_SEGMENT_BYTES,
        };
        cfg.heartbeat_ms = self.heartbeat_ms;
        cfg.planted = self.planted;
        cfg.log_disk = self
            .disks
            .get(&id)
            .map(|d| LogDiskHandle(d.clone() as Arc<dyn quiver_raft::LogDisk>));
        cfg
    }

    /// Start every node, initialise the cluster with all of them as voters, and have every
    /// node record its addresses in the node table (as `Node::open` does at start).
    /// Starts every node, initialises the cluster, bootstraps the run's admin, who grants each
    /// principal of `grants` its role cluster-wide and sets `policies` (`Op::SetPolicy`s).
    pub async fn boot(
        &self,
        grants: &[(String, quiver_node::auth::Role)],
        policies: &[Op],
    ) -> anyhow::Result<()> {
        for &id in &self.ids {
            self.start(id).await?;
        }
        let first = self.ids.first().copied().context("a cluster needs nodes")?;
        let members: BTreeMap<NodeId, BasicNode> = self
            .ids
            .iter()
            .map(|&id| (id, BasicNode::new(peer_addr(id))))
            .collect();
        let node = self.handle(first).context("first node is up")?;
        node.raft()
            .initialize(members)
            .await
            .with_context(|| format!("initialise the cluster on n{first}"))?;
        for &id in &self.ids {
            let node = self.node(id).context("booted nodes are up")?;
            node.announce()
                .await
                .with_context(|| format!("n{id} records its addresses"))?;
        }
        // Access: the first node bootstraps the run's admin, who grants each of the run's
        // principals its role cluster-wide.
        let node = self.node(first).context("booted nodes are up")?;
        let system = Actor {
            name: quiver_node::auth::node_principal(first),
            authenticated: true,
        };
        let token = quiver_node::auth::PresentedToken {
            id: format!("{:016x}", 1),
            secret: format!("{:032x}", 1),
        };
        let bootstrap = Op::Bootstrap {
            id: token.id.clone(),
            principal: SIM_ADMIN.into(),
            secret_hash: token.secret_hash(),
        };
        node.propose(system, bootstrap)
            .await
            .context("bootstrap the run's admin")?;
        for (principal, role) in grants {
            let grant = Op::GrantRole {
                principal: principal.clone(),
                scope: quiver_node::auth::Scope::Cluster,
                role: *role,
            };
            node.propose(sim_admin(), grant)
                .await
                .with_context(|| format!("grant {principal} its role"))?;
        }
        for op in policies {
            let what = op.kind();
            node.propose(sim_admin(), op.clone())
                .await
                .with_context(|| format!("boot: {what}"))?;
        }
        self.trace.record(format!("boot {} nodes", self.ids.len()));
        Ok(())
    }

    /// Start node `id` from its data dir (first start or restart).
    pub async fn start(&self, id: NodeId) -> anyhow::Result<()> {
        let incarnation = self.router.next_incarnation(id);
        let transport = Arc::new(SimTransport {
            from: id,
            incarnation,
            router: self.router.clone(),
        });
        let cfg = self.config(id);
        let chunks = &self.chunks;
        let place = chunks
            .net()
            .place(Endpoint::Node(id))
            .with_context(|| format!("n{id} has no place on the chunk network"))?;
        let env = Env {
            clock: Arc::new(SimClock {
                start: self.trace.start(),
                offset_ms: self.node_clock_ms(id, 0),
            }),
            ids: Arc::new(SimIds {
                prefix: format!("n{id}i{incarnation}"),
                next: AtomicU64::new(0),
            }),
            chunks: chunks.store(id),
            peers: chunks.net().peers(Endpoint::Node(id)),
        };
        let core = CoreConfig {
            info: NodeInfo {
                node_id: id,
                api_addr: format!("10.2.{}.{}:7400", (id >> 8) & 0xff, id & 0xff),
                peer_addr: peer_addr(id),
                quic_addr: Endpoint::Node(id).addr().to_string(),
                region: place.region,
                zone: place.zone,
            },
            data_dir: Self::node_dir(&self.data_root, id),
            write_quorum: None,
            scrub_bytes_per_pass: SIM_SCRUB_BYTES_PER_PASS,
            crash_drills: false,
            disk_reserve_bytes: SIM_DISK_RESERVE_BYTES,
            chunk_gc_grace: Some(SIM_CHUNK_GC_GRACE),
            allow_anonymous_reads: false,
            planted: self.planted_chunks,
            planted_node: self.planted_node,
        };
        let node = match tokio::spawn(async move {
            let raft = RaftNode::<RegistryApp>::start_with_transport(cfg, transport).await?;
            anyhow::Ok(SimNode::assemble(core, env, raft))
        })
        .await
        {
            Ok(started) => started.with_context(|| format!("start n{id}"))?,
            Err(e) => anyhow::bail!("n{id} panicked while starting: {}", panic_message(e)),
        };
        self.router.attach(id, incarnation, node.raft.clone());
        chunks.set_up(id, true);
        self.lock().insert(id, node);
        self.trace.record(format!("up n{id}"));
        Ok(())
    }

    /// Crash node `id`: detach it from the network, stop it, release its storage. False if it
    /// was already down.
    pub async fn crash(&self, id: NodeId) -> anyhow::Result<bool> {
        let Some(node) = self.lock().remove(&id) else {
            return Ok(false);
        };
        self.router.detach(id);
        self.chunks.set_up(id, false);
        self.trace.record(format!("down n{id}"));
        node.shutdown()
            .await
            .with_context(|| format!("stop n{id}"))?;
        {
            let (fetched, bad) = node.repair_totals.load();
            let mut done = self
                .repair_done
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            done.0 += fetched;
            done.1 += bad;
        }
        let state_unsynced = node.raft.state_last_commit_unsynced();
        drop(node);
        self.chunks.power_loss(id);
        if state_unsynced {
            let state_dir = Self::node_dir(&self.data_root, id).join(quiver_raft::STATE_DIR_NAME);
            crate::disk::revert_last_state_commit(&state_dir)
                .with_context(|| format!("n{id}: power loss of the state env"))?;
            self.trace
                .record(format!("n{id} power loss: last applied batch taken back"));
        }
        if let Some(disk) = self.disks.get(&id) {
            let loss = disk.power_loss()?;
            if loss.writes_lost > 0 {
                self.writes_lost
                    .fetch_add(loss.writes_lost, std::sync::atomic::Ordering::SeqCst);
                self.trace.record(format!(
                    "n{id} power loss: {} unsynced log writes lost",
                    loss.writes_lost
                ));
            }
        }
        Ok(true)
    }

    /// The simulated kernel writes back node `id`'s dirty log pages (see [`crate::disk`]).
    pub fn writeback(&self, id: NodeId) {
        if let Some(disk) = self.disks.get(&id) {
            let made_durable = disk.writeback();
            if made_durable > 0 {
                self.trace.record(format!(
                    "n{id} writeback: {made_durable} log writes durable"
                ));
            }
        }
    }

    /// Node `id`'s Raft member, if it is up.
    pub fn handle(&self, id: NodeId) -> Option<Node> {
        self.lock().get(&id).map(|n| n.raft.clone())
    }

    /// Node `id`, if it is up.
    pub fn node(&self, id: NodeId) -> Option<Arc<SimNode>> {
        self.lock().get(&id).cloned()
    }

    pub fn up_ids(&self) -> Vec<NodeId> {
        self.lock().keys().copied().collect()
    }

    pub fn down_ids(&self) -> Vec<NodeId> {
        let up = self.lock();
        self.ids
            .iter()
            .copied()
            .filter(|id| !up.contains_key(id))
            .collect()
    }

    pub fn metrics(&self) -> Vec<(NodeId, RaftMetrics<NodeId, BasicNode>)> {
        self.lock()
            .iter()
            .map(|(id, node)| (*id, node.raft.metrics()))
            .collect()
    }

    /// Up nodes whose Raft core task has ended (it dropped its metrics channel): it panicked or
    /// stopped on a fatal error without being shut down.
    pub fn stopped_cores(&self) -> Vec<NodeId> {
        self.lock()
            .iter()
            .filter(|(_, node)| node.raft.raft().metrics().has_changed().is_err())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The up node that believes it is leader in the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.metrics()
            .into_iter()
            .filter(|(_, m)| m.state == ServerState::Leader)
            .max_by_key(|(id, m)| (m.current_term, *id))
            .map(|(id, _)| id)
    }
}

/// The text of a task's panic (or why it did not finish).
pub fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(e) => e.to_string(),
    }
}

/// A node's whole registry state and the applied index it reflects, from one read transaction.
pub fn read_state(node: &Node) -> anyhow::Result<(Option<u64>, String, FinalState)> {
    let (index, (digest, state)) = node.read_applied(|app, rtxn| {
        let digest = app.digest(rtxn).map_err(|e| anyhow::anyhow!("{e}"))?;
        let state = read_final(app, rtxn)?;
        Ok((digest, state))
    })?;
    Ok((index, digest, state))
}

fn read_final(
    app: &RegistryApp,
    rtxn: &quiver_raft::heed::RoTxn<'_>,
) -> anyhow::Result<FinalState> {
    let err = |what: &str, e: quiver_node::state::AppError| anyhow::anyhow!("{what}: {e}");
    let mut state = FinalState::default();
    let mut token = String::new();
    loop {
        let (models, next) = app
            .list_models(rtxn, "", "", READ_PAGE_SIZE, &token)
            .map_err(|e| err("list models", e))?;
        for m in models {
            state.models.insert(m.name.clone(), m);
        }
        if next.is_empty() {
            break;
        }
        token = next;
    }
    for name in state.models.keys() {
        let mut token = String::new();
        loop {
            let (versions, next) = app
                .list_versions(rtxn, name, None, "", READ_PAGE_SIZE, &token)
                .map_err(|e| err("list versions", e))?;
            for v in versions {
                state.versions.insert((v.model.clone(), v.number), v);
            }
            if next.is_empty() {
                break;
            }
            token = next;
        }
        state.aliases.extend(
            app.aliases_of_model(rtxn, name)
                .map_err(|e| err("list aliases", e))?,
        );
    }
    state.audit = app.audit_log(rtxn).map_err(|e| err("read audit log", e))?;
    let all = quiver_node::state::ReviewFilter {
        limit: usize::MAX,
        ..Default::default()
    };
    for review in app
        .reviews(rtxn, &all)
        .map_err(|e| err("read reviews", e))?
    {
        state.reviews.insert(review.id, review);
    }
    for m in state.models.values() {
        if let Some(entry) = app
            .catalog_entry(rtxn, &m.name)
            .map_err(|e| err("read the catalog", e))?
        {
            state.catalog.insert(m.name.clone(), entry);
        }
        let by_name = quiver_node::catalog::SearchFilter {
            words: quiver_node::catalog::SearchFilter::words_of(&m.name).unwrap_or_default(),
            namespace: Some(m.namespace.clone()),
            ..Default::default()
        };
        let mut token = String::new();
        let mut found = false;
        loop {
            let (hits, next) = app
                .search_models(rtxn, &by_name, &|_| true, 0, &token)
                .map_err(|e| err("search the catalog", e))?;
            found |= hits.iter().any(|h| h.model.name == m.name);
            if found || next.is_empty() {
                break;
            }
            token = next;
        }
        if !found {
            state.unsearchable.push(m.name.clone());
        }
    }
    for (model, number) in state.versions.keys() {
        let evaluations = app
            .evaluations(rtxn, model, *number)
            .map_err(|e| err("read evaluations", e))?;
        if !evaluations.is_empty() {
            state
                .evaluations
                .insert((model.clone(), *number), evaluations);
        }
    }
    for m in state.models.values() {
        let (_, policy) = app
            .applicable_policy(rtxn, m)
            .map_err(|e| err("read policies", e))?;
        let gated = policy
            .production
            .iter()
            .any(|g| matches!(g, quiver_node::governance::Gate::Approvals { .. }));
        state.gated.insert(m.name.clone(), gated);
    }
    let (revision, watch) = read_watch_log(app, rtxn).map_err(|e| err("read the watch log", e))?;
    state.watch_revision = revision;
    state.watch = watch;
    let mut after = String::new();
    loop {
        let (page, next) = app
            .list_deployments(rtxn, None, &after, 0)
            .map_err(|e| err("list deployments", e))?;
        for d in page {
            let mut history = app
                .deployment_history(rtxn, &d.endpoint, 0, usize::MAX)
                .map_err(|e| err("read a deployment's history", e))?;
            history.reverse();
            state.deploy_history.insert(d.endpoint.clone(), history);
            state.deployments.insert(d.endpoint.clone(), d);
        }
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    Ok(state)
}

/// The latest watch revision and every kept event, read as a watcher of everything would from
/// revision 0 (`watch_read` in a loop; told it is behind, from the oldest kept).
fn read_watch_log(
    app: &RegistryApp,
    rtxn: &quiver_raft::heed::RoTxn<'_>,
) -> Result<(u64, Vec<WatchEvent>), quiver_node::state::AppError> {
    let latest = app.watch_revision(rtxn)?;
    let mut events = Vec::new();
    let mut after = 0;
    while after < latest {
        match app.watch_read(rtxn, &WatchFilter::All, after)? {
            WatchRead::Events {
                events: batch,
                through,
            } => {
                events.extend(batch);
                if through == after {
                    break;
                }
                after = through;
            }
            // The oldest events are no longer kept: read on from the oldest that is.
            WatchRead::Behind { oldest_kept, .. } if oldest_kept > after + 1 => {
                after = oldest_kept - 1;
            }
            WatchRead::Behind { .. } => break,
        }
    }
    Ok((latest, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(seed: u64, skew_ms: u64) -> Cluster {
        let ids: Vec<NodeId> = (1..=5).collect();
        let trace = SharedTrace::new(false);
        let router = Router::new(&ids, 1, 0, trace.clone(), false);
        // Nothing touches the data dir until a node starts.
        let chunks = Chunks::new(
            &ids,
            0,
            trace.clone(),
            PlantedBugs::default(),
            Default::default(),
        );
        Cluster::new(ids, Path::new("/nonexistent"), router, chunks, trace, false)
            .with_clock_skew(seed, skew_ms)
    }

    #[test]
    fn clock_offsets_are_drawn_from_the_seed_within_the_skew() {
        let a = cluster(7, 500);
        let offsets: Vec<i64> = (1..=5).map(|id| a.node_clock_ms(id, 0)).collect();
        assert!(offsets.iter().all(|o| o.abs() <= 500), "{offsets:?}");
        assert!(offsets.iter().any(|o| *o != 0), "{offsets:?}");
        let again: Vec<i64> = (1..=5)
            .map(|id| cluster(7, 500).node_clock_ms(id, 0))
            .collect();
        assert_eq!(offsets, again, "a function of the seed");
        let other: Vec<i64> = (1..=5)
            .map(|id| cluster(8, 500).node_clock_ms(id, 0))
            .collect();
        assert_ne!(offsets, other);
        assert_eq!(
            cluster(7, 0).node_clock_ms(3, 1_000),
            1_000,
            "no skew, true time"
        );
    }
}
