//! The simulated cluster: real `RaftNode<RegistryApp>`s over heed, one data dir each, started
//! with the simulated network instead of the peer transport.
//!
//! A crash is a node shutdown: the node stops answering at once (its `Raft` is detached from
//! the router first, so peers see a refused connection) and its LMDB environments are closed;
//! what it committed is on disk. A restart opens the same data dir, as a restarted process
//! would. (Losing unsynced writes on a crash needs a simulated disk; not in this slice.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;
use openraft::{BasicNode, RaftMetrics, ServerState};
use quiver_node::state::RegistryApp;
use quiver_raft::{RaftNode, RaftNodeConfig};

use crate::check::FinalState;
use crate::chunks::Chunks;
use crate::net::{Router, SimNetwork};
use crate::schedule::NodeId;
use crate::trace::SharedTrace;

/// Entries applied between snapshots in the simulator: small, so that runs build snapshots,
/// purge logs and (for nodes that were down long) install snapshots.
pub const SIM_SNAPSHOT_LOGS_SINCE_LAST: u64 = 200;
/// Entries kept behind a snapshot in the simulator.
pub const SIM_LOGS_TO_KEEP_AFTER_SNAPSHOT: u64 = 10;
/// Page size used to read a whole registry state.
const READ_PAGE_SIZE: usize = 1_000;

pub type Node = RaftNode<RegistryApp>;

pub struct Cluster {
    ids: Vec<NodeId>,
    data_root: PathBuf,
    router: Arc<Router>,
    trace: SharedTrace,
    /// The nodes that are up.
    up: Mutex<BTreeMap<NodeId, Node>>,
    /// The nodes' chunk side, whose endpoints go down and up with the nodes.
    chunks: OnceLock<Arc<Chunks>>,
}

impl Cluster {
    pub fn new(
        ids: Vec<NodeId>,
        data_root: &Path,
        router: Arc<Router>,
        trace: SharedTrace,
    ) -> Self {
        Cluster {
            ids,
            data_root: data_root.to_path_buf(),
            router,
            trace,
            up: Mutex::new(BTreeMap::new()),
            chunks: OnceLock::new(),
        }
    }

    /// From now on, crashes and restarts also take the nodes' chunk endpoints down and up.
    pub fn attach_chunks(&self, chunks: Arc<Chunks>) {
        let _ = self.chunks.set(chunks);
    }

    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Node>> {
        self.up
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn addr(id: NodeId) -> String {
        format!("n{id}.sim:7000")
    }

    fn config(&self, id: NodeId) -> RaftNodeConfig {
        let mut cfg =
            RaftNodeConfig::new(id, self.data_root.join(format!("n{id}")), Self::addr(id));
        cfg.snapshot_logs_since_last = SIM_SNAPSHOT_LOGS_SINCE_LAST;
        cfg.logs_to_keep_after_snapshot = SIM_LOGS_TO_KEEP_AFTER_SNAPSHOT;
        cfg
    }

    /// Start every node and initialise the cluster with all of them as voters.
    pub async fn boot(&self) -> anyhow::Result<()> {
        for &id in &self.ids {
            self.start(id).await?;
        }
        let first = self.ids.first().copied().context("a cluster needs nodes")?;
        let members: BTreeMap<NodeId, BasicNode> = self
            .ids
            .iter()
            .map(|&id| (id, BasicNode::new(Self::addr(id))))
            .collect();
        let node = self.handle(first).context("first node is up")?;
        node.raft()
            .initialize(members)
            .await
            .with_context(|| format!("initialise the cluster on n{first}"))?;
        self.trace.record(format!("boot {} nodes", self.ids.len()));
        Ok(())
    }

    /// Start node `id` from its data dir (first start or restart).
    pub async fn start(&self, id: NodeId) -> anyhow::Result<()> {
        let incarnation = self.router.next_incarnation(id);
        let network = SimNetwork {
            from: id,
            incarnation,
            router: self.router.clone(),
        };
        let node = RaftNode::<RegistryApp>::start_with_network(self.config(id), network)
            .await
            .with_context(|| format!("start n{id}"))?;
        self.router.attach(id, incarnation, node.raft().clone());
        if let Some(chunks) = self.chunks.get() {
            chunks.set_up(id, true);
        }
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
        if let Some(chunks) = self.chunks.get() {
            chunks.set_up(id, false);
        }
        self.trace.record(format!("down n{id}"));
        node.shutdown()
            .await
            .with_context(|| format!("stop n{id}"))?;
        Ok(true)
    }

    pub fn handle(&self, id: NodeId) -> Option<Node> {
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
            .map(|(id, node)| (*id, node.metrics()))
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
    Ok(state)
}
