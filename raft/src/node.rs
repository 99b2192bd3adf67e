//! `RaftNode`: the one handle the registry holds on consensus.
//!
//! It owns an `openraft::Raft` over the heed stores and translates openraft's error taxonomy into
//! the three outcomes a caller acts on ([`WriteError`]): ask someone else (not the leader), try
//! again later (no quorum), or give up (fatal). Reads go straight to the state env: they see
//! applied state only; callers that need linearizability call [`RaftNode::linearizable_barrier`]
//! first.
//!
//! Shutdown is complete, not best-effort: it stops openraft and then waits, bounded by
//! [`STORAGE_RELEASE_TIMEOUT`], until every task has dropped its handle on the LMDB environments.
//! Only then can the same directory be opened again in this process (LMDB refuses a second open),
//! which is what a restart in tests and in the simulator does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{BasicNode, Raft, RaftMetrics, RaftNetworkFactory, SnapshotPolicy};

use crate::network::UnreachableNetwork;
use crate::state_store::StateMachineStore;
use crate::{open_storage_tracked, App, EnvsReleased, NodeId, TypeConfig};

/// Name every Quiver cluster reports to openraft (it appears in its logs and errors).
const CLUSTER_NAME: &str = "quiver";
/// Leader heartbeat period.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// Election timeout range: followers wait a random time in [min, max) without hearing from a
/// leader before standing for election. At least 3 heartbeats, so one lost heartbeat does not
/// cause an election; the spread makes split votes unlikely.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 300;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 600;
/// Upper bound on openraft's `purge_batch_size`: how many purgeable entries must accumulate before
/// a purge (one LMDB transaction and fsync) is issued. It matters when a lagging follower catches
/// up entry by entry; the effective value never exceeds the snapshot interval, so every snapshot
/// after the first one can purge.
pub const PURGE_BATCH_SIZE_MAX: u64 = 64;
/// Default number of applied entries between snapshots.
pub const SNAPSHOT_LOGS_SINCE_LAST_DEFAULT: u64 = 10_000;
/// Default number of entries kept in the log behind the latest snapshot, so that slightly lagging
/// followers catch up from the log instead of needing a snapshot.
pub const LOGS_TO_KEEP_AFTER_SNAPSHOT_DEFAULT: u64 = 1_000;
/// How long `shutdown` waits for openraft's tasks to release the storage.
pub const STORAGE_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run one Raft node.
#[derive(Clone, Debug)]
pub struct RaftNodeConfig {
    pub node_id: NodeId,
    /// The log lives in `data_dir/log`, the state machine in `data_dir/state`.
    pub data_dir: PathBuf,
    /// Advertised address stored in this node's `BasicNode`.
    pub addr: String,
    /// Build a snapshot after this many entries have been applied since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot.
    pub logs_to_keep_after_snapshot: u64,
}

impl RaftNodeConfig {
    pub fn new(node_id: NodeId, data_dir: PathBuf, addr: String) -> Self {
        RaftNodeConfig {
            node_id,
            data_dir,
            addr,
            snapshot_logs_since_last: SNAPSHOT_LOGS_SINCE_LAST_DEFAULT,
            logs_to_keep_after_snapshot: LOGS_TO_KEEP_AFTER_SNAPSHOT_DEFAULT,
        }
    }

    /// The openraft configuration for this node, validated.
    pub fn raft_config(&self) -> anyhow::Result<openraft::Config> {
        anyhow::ensure!(
            self.snapshot_logs_since_last > 0,
            "snapshot_logs_since_last must be at least 1"
        );
        let config = openraft::Config {
            cluster_name: CLUSTER_NAME.to_string(),
            heartbeat_interval: HEARTBEAT_INTERVAL_MS,
            election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_to_keep_after_snapshot,
            purge_batch_size: PURGE_BATCH_SIZE_MAX.min(self.snapshot_logs_since_last),
            ..Default::default()
        };
        config.validate().context("validate openraft config")
    }
}

/// Why a write or a linearizable read could not be served here.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("not the leader; leader is node {leader_id:?} at {leader_addr:?}")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("raft fatal error: {0}")]
    Fatal(String),
}

impl WriteError {
    fn not_leader(f: ForwardToLeader<NodeId, BasicNode>) -> Self {
        WriteError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        }
    }
}

/// A running Raft node over an [`App`]. Cheap to clone; clones share the node.
pub struct RaftNode<A: App> {
    inner: Arc<Inner<A>>,
}

impl<A: App> Clone for RaftNode<A> {
    fn clone(&self) -> Self {
        RaftNode {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<A: App> {
    node_id: NodeId,
    raft: Raft<TypeConfig<A>>,
    /// Our handle on the state env for reads; `None` once shut down.
    state: RwLock<Option<StateMachineStore<A>>>,
    /// Resolves when every storage handle is dropped; taken by the first `shutdown`.
    released: tokio::sync::Mutex<Option<EnvsReleased>>,
}

impl<A: App> RaftNode<A> {
    /// Open storage under `cfg.data_dir`, start Raft with a network that reaches nobody, and if
    /// the node has never been initialised, initialise a single-member cluster
    /// `{node_id: BasicNode{addr}}`. On restart it resumes from disk.
    pub async fn start(cfg: RaftNodeConfig) -> anyhow::Result<Self> {
        let addr = cfg.addr.clone();
        let node = Self::start_with_network(cfg, UnreachableNetwork).await?;
        if let Err(e) = node.initialize_single_member(addr).await {
            // Release the storage so the caller may retry in this process.
            if let Err(shutdown_err) = node.shutdown().await {
                tracing::warn!(error = %format!("{shutdown_err:#}"), "shutdown after failed start");
            }
            return Err(e);
        }
        Ok(node)
    }

    /// Open storage and start Raft over `network`, without initialising a cluster. A node that
    /// was never initialised waits to be added to a cluster (or for [`openraft::Raft::initialize`]
    /// through [`RaftNode::raft`]).
    pub async fn start_with_network<N>(cfg: RaftNodeConfig, network: N) -> anyhow::Result<Self>
    where
        N: RaftNetworkFactory<TypeConfig<A>>,
    {
        let config = Arc::new(cfg.raft_config()?);
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("create data dir {}", cfg.data_dir.display()))?;
        let (log, state, released) = open_storage_tracked::<A>(&cfg.data_dir)
            .with_context(|| format!("open raft storage in {}", cfg.data_dir.display()))?;
        let raft = Raft::new(cfg.node_id, config, network, log, state.clone())
            .await
            .with_context(|| format!("start raft node {}", cfg.node_id))?;
        tracing::info!(node_id = cfg.node_id, data_dir = %cfg.data_dir.display(), "raft node started");
        Ok(RaftNode {
            inner: Arc::new(Inner {
                node_id: cfg.node_id,
                raft,
                state: RwLock::new(Some(state)),
                released: tokio::sync::Mutex::new(Some(released)),
            }),
        })
    }

    async fn initialize_single_member(&self, addr: String) -> anyhow::Result<()> {
        let raft = &self.inner.raft;
        if raft
            .is_initialized()
            .await
            .context("query raft initialisation")?
        {
            return Ok(());
        }
        let members = BTreeMap::from([(self.inner.node_id, BasicNode::new(addr))]);
        match raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Already part of a cluster: exactly the state we wanted.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e).context("initialise single-member cluster"),
        }
    }

    /// Propose a command; returns the app's response once committed and applied locally.
    pub async fn write(&self, cmd: A::Command) -> Result<A::Response, WriteError> {
        match self.inner.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(WriteError::not_leader(f))
            }
            // Only membership changes produce this; a plain command never does.
            Err(RaftError::APIError(e @ ClientWriteError::ChangeMembershipError(_))) => {
                Err(WriteError::Fatal(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(WriteError::Fatal(f.to_string())),
        }
    }

    /// Wait until this node can serve a linearizable read: it has confirmed its leadership with
    /// a quorum and applied everything committed before the call.
    pub async fn linearizable_barrier(&self) -> Result<(), WriteError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(WriteError::not_leader(f))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(WriteError::NoQuorum(q.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(WriteError::Fatal(f.to_string())),
        }
    }

    /// Run `f` against the app and a read txn of the state env (reads see only applied state).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&A, &heed::RoTxn<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let state = self
            .inner
            .state
            .read()
            .map_err(|_| {
                anyhow::anyhow!(
                    "state handle lock of raft node {} poisoned",
                    self.inner.node_id
                )
            })?
            .clone()
            .ok_or_else(|| anyhow::anyhow!("raft node {} is shut down", self.inner.node_id))?;
        state.read(f)
    }

    /// Wait (bounded by `timeout`) until some node is leader; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        let metrics = self
            .inner
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .with_context(|| format!("node {} waiting for a leader", self.inner.node_id))?;
        metrics
            .current_leader
            .ok_or_else(|| anyhow::anyhow!("metrics satisfied the leader wait without a leader"))
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    pub fn raft(&self) -> &Raft<TypeConfig<A>> {
        &self.inner.raft
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Stop Raft and release the storage. After it returns the data dir can be opened again in
    /// this process. Idempotent; reads and writes fail afterwards.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        let node_id = self.inner.node_id;
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("raft core task of node {node_id} failed: {e}"))?;
        let state = match self.inner.state.write() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(state);
        let released = self.inner.released.lock().await.take();
        if let Some(released) = released {
            tokio::time::timeout(STORAGE_RELEASE_TIMEOUT, released.wait())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "raft node {node_id}: storage still in use {STORAGE_RELEASE_TIMEOUT:?} after shutdown"
                    )
                })?;
        }
        tracing::info!(node_id, "raft node shut down");
        Ok(())
    }
}
