//! One registry node: its Raft member, its chunk store, its clock. The
//! services call `propose` and `read`; both go through here so that time and
//! consistency are decided in one place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quiver_raft::{RaftNode, RaftNodeConfig, WriteError};
use quiver_transfer::ChunkStore;
use tonic::Status;

use crate::command::{Command, Op, Response};
use crate::domain::Actor;
use crate::env::{Clock, SystemClock};
use crate::service::{app_error, status_from_domain};
use crate::state::{AppResult, RegistryApp};

/// How a node is started.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// The address clients and peers use to reach this node.
    pub advertise_addr: String,
}

pub struct Node {
    pub config: NodeConfig,
    pub raft: RaftNode<RegistryApp>,
    pub chunks: ChunkStore,
    pub clock: Arc<dyn Clock>,
}

/// How long a node waits for itself to become leader at start.
const STARTUP_LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Which state a read may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Only after confirming leadership: sees every acknowledged write.
    Linearizable,
    /// The local applied state, for serving-path polls.
    Stale,
}

impl Node {
    pub async fn open(config: NodeConfig) -> anyhow::Result<Arc<Node>> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
        let chunks = ChunkStore::open(config.data_dir.join("chunks"))
            .with_context(|| format!("open chunk store in {}", config.data_dir.display()))?;
        let raft = RaftNode::start(RaftNodeConfig::new(
            config.node_id,
            config.data_dir.join("raft"),
            config.advertise_addr.clone(),
        ))
        .await
        .context("start raft")?;
        raft.wait_for_leader(STARTUP_LEADER_TIMEOUT)
            .await
            .context("wait for a leader")?;
        Ok(Arc::new(Node {
            config,
            raft,
            chunks,
            clock: Arc::new(SystemClock),
        }))
    }

    /// Proposes `op` as `actor` at the node's current time; returns the
    /// applied result, with a rejection mapped to its gRPC status.
    pub async fn propose(&self, actor: Actor, op: Op) -> Result<Response, Status> {
        let command = Command {
            actor,
            at_ms: self.clock.now_ms(),
            op,
        };
        match self.raft.write(command).await {
            Ok(Response::Rejected(e)) => Err(status_from_domain(&e)),
            Ok(response) => Ok(response),
            Err(e) => Err(status_from_write(e)),
        }
    }

    /// Runs a query against applied state, after a linearizability barrier
    /// unless a stale read was asked for.
    pub async fn read<T>(
        &self,
        consistency: Consistency,
        query: impl FnOnce(&RegistryApp, &heed::RoTxn<'_>) -> AppResult<T>,
    ) -> Result<T, Status> {
        if consistency == Consistency::Linearizable {
            self.raft
                .linearizable_barrier()
                .await
                .map_err(status_from_write)?;
        }
        self.raft
            .read(|app, txn| Ok(query(app, txn)))
            .map_err(|e| Status::internal(format!("read state: {e:#}")))?
            .map_err(|e| app_error(&e))
    }

    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.raft.shutdown().await
    }
}

fn status_from_write(e: WriteError) -> Status {
    match e {
        WriteError::NotLeader {
            leader_id,
            leader_addr,
        } => Status::unavailable(format!(
            "this node is not the leader (leader: node {} at {}); retry against the leader",
            leader_id.map_or("unknown".into(), |id| id.to_string()),
            leader_addr.unwrap_or_else(|| "unknown".into())
        )),
        WriteError::NoQuorum(m) => Status::unavailable(format!("no quorum: {m}")),
        WriteError::Fatal(m) => Status::internal(format!("raft failed: {m}")),
    }
}
