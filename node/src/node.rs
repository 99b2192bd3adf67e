//! One registry node: its Raft member, its chunk store and QUIC chunk
//! server, its clock. The services call `propose` and `read`; both go
//! through here so that time and consistency are decided in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use quiver_raft::{PeerTls, RaftNode, RaftNodeConfig, WriteError};
use quiver_transfer::{ChunkServer, ChunkSource, ChunkStore, PeerClient, QuicTls};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tonic::Status;

use crate::command::{Command, Op, RequestId, Response};
use crate::domain::{Actor, NodeInfo};
use crate::env::{Clock, SystemClock};
use crate::replication::{
    repair_version, scrub_step, should_hold, ChunkSink, ReadThroughs, RepairState, Repaired,
    BACKGROUND_PUSHES_MAX, REPAIR_INTERVAL, SCRUB_BYTES_PER_PASS,
};
use crate::service::{app_error, status_from_domain};
use crate::state::{AppResult, RegistryApp};
use crate::tls::NodeCert;

/// How a node is started.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// The address clients use (advertised as given).
    pub api_addr: String,
    /// The address peers use for Raft (advertised as given).
    pub peer_addr: String,
    /// Where to bind the QUIC chunk server (UDP); port 0 picks one.
    pub quic_listen: SocketAddr,
    pub region: String,
    pub zone: String,
    /// Any member's peer address, to join an existing cluster on first start.
    pub join: Option<String>,
    pub tls: NodeCert,
    /// Copies of every chunk durable before a version is READY (W). `None`:
    /// 2 when the cluster has two or more nodes, else 1.
    pub write_quorum: Option<usize>,
    /// Raft snapshot (and log purge) every this many entries.
    pub snapshot_every: u64,
    /// Raft heartbeat interval in ms (`RaftNodeConfig::heartbeat_ms`).
    pub heartbeat_ms: u64,
    /// Whether the Crash admin call may abort this process (failover drills).
    pub crash_drills: bool,
}

pub struct Node {
    pub config: NodeConfig,
    /// Held for the node's life: one process per data dir (and no offline
    /// GC while the node runs).
    _data_dir_lock: std::fs::File,
    pub raft: RaftNode<RegistryApp>,
    pub chunks: ChunkStore,
    pub peers: PeerClient,
    pub clock: Arc<dyn Clock>,
    chunk_server: ChunkServer,
    background_pushes: Arc<Semaphore>,
    pub repair: RepairState,
    /// Downloads' fetches of chunks this node lacks, shared between downloads.
    pub read_throughs: ReadThroughs,
    stop: watch::Sender<bool>,
}

/// How long a node waits for a leader at start.
const STARTUP_LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Which state a read may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Only after confirming with the leader: sees every acknowledged write.
    Linearizable,
    /// The local applied state, for serving-path polls.
    Stale,
}

impl Node {
    pub async fn open(config: NodeConfig, peer_listener: TcpListener) -> anyhow::Result<Arc<Node>> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
        let data_dir_lock = lock_data_dir(&config.data_dir)?;
        let chunks = ChunkStore::open(config.data_dir.join("chunks"))
            .with_context(|| format!("open chunk store in {}", config.data_dir.display()))?;
        let quic_tls = QuicTls {
            ca_cert_pem: config.tls.ca_cert_pem.clone(),
            cert_pem: config.tls.cert_pem.clone(),
            key_pem: config.tls.key_pem.clone(),
        };
        let source: Arc<dyn ChunkSource> = Arc::new(chunks.clone());
        let chunk_server = ChunkServer::bind(config.quic_listen, source, &quic_tls)
            .with_context(|| format!("bind the QUIC chunk server on {}", config.quic_listen))?;
        let peers = PeerClient::new(&quic_tls).context("create the QUIC peer client")?;
        let mut raft_config = RaftNodeConfig::new(
            config.node_id,
            config.data_dir.join("raft"),
            config.peer_addr.clone(),
        );
        raft_config.tls = Some(PeerTls {
            ca_cert_pem: config.tls.ca_cert_pem.clone(),
            cert_pem: config.tls.cert_pem.clone(),
            key_pem: config.tls.key_pem.clone(),
        });
        raft_config.join = config.join.clone();
        raft_config.heartbeat_ms = config.heartbeat_ms;
        raft_config.snapshot_logs_since_last = config.snapshot_every;
        raft_config.logs_to_keep_after_snapshot = (config.snapshot_every / 10).max(1);
        let raft = RaftNode::start_with_listener(raft_config, peer_listener)
            .await
            .context("start raft")?;
        raft.wait_for_leader(STARTUP_LEADER_TIMEOUT)
            .await
            .context("wait for a leader")?;
        let (stop, _) = watch::channel(false);
        let node = Arc::new(Node {
            config,
            _data_dir_lock: data_dir_lock,
            raft,
            chunks,
            peers,
            clock: Arc::new(SystemClock),
            chunk_server,
            background_pushes: Arc::new(Semaphore::new(BACKGROUND_PUSHES_MAX)),
            repair: RepairState::default(),
            read_throughs: ReadThroughs::default(),
            stop,
        });
        node.announce()
            .await
            .context("register this node's addresses")?;
        tokio::spawn(repair_loop(Arc::downgrade(&node), node.stop.subscribe()));
        Ok(node)
    }

    pub fn quic_addr(&self) -> SocketAddr {
        self.chunk_server.local_addr()
    }

    fn info(&self) -> NodeInfo {
        NodeInfo {
            node_id: self.config.node_id,
            api_addr: self.config.api_addr.clone(),
            peer_addr: self.config.peer_addr.clone(),
            quic_addr: self.quic_addr().to_string(),
            region: self.config.region.clone(),
            zone: self.config.zone.clone(),
        }
    }

    /// Records this node's addresses and labels in the replicated node
    /// table, unless they are already there.
    async fn announce(&self) -> anyhow::Result<()> {
        let info = self.info();
        let known = self
            .read(Consistency::Stale, |app, txn| app.nodes(txn))
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        if known.contains(&info) {
            return Ok(());
        }
        let actor = Actor {
            name: format!("node-{}", info.node_id),
            authenticated: true,
        };
        self.propose(actor, Op::UpsertNode(info))
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok(())
    }

    /// Other nodes, nearest first: same region and zone, then same region,
    /// then the rest, each by node id.
    pub async fn peer_nodes(&self) -> Result<Vec<NodeInfo>, Status> {
        let mut nodes = self
            .read(Consistency::Stale, |app, txn| app.nodes(txn))
            .await?;
        nodes.retain(|n| n.node_id != self.config.node_id);
        let (region, zone) = (&self.config.region, &self.config.zone);
        nodes.sort_by_key(|n| {
            let distance = match (&n.region == region, &n.zone == zone) {
                (true, true) => 0,
                (true, false) => 1,
                _ => 2,
            };
            (distance, n.node_id)
        });
        Ok(nodes)
    }

    /// QUIC addresses of the other nodes, nearest first.
    pub async fn peer_chunk_addrs(&self) -> Result<Vec<SocketAddr>, Status> {
        Ok(self
            .peer_nodes()
            .await?
            .iter()
            .filter_map(|n| n.quic_addr.parse().ok())
            .collect())
    }

    /// Where an upload's chunks go: here plus every peer, acknowledged once
    /// W copies are durable.
    pub async fn chunk_sink(&self) -> Result<ChunkSink, Status> {
        let targets = self.peer_chunk_addrs().await?;
        let cluster_size = targets.len() + 1;
        let copies_required = self
            .config
            .write_quorum
            .unwrap_or(if cluster_size >= 2 { 2 } else { 1 })
            .max(1);
        Ok(ChunkSink {
            store: self.chunks.clone(),
            peers: self.peers.clone(),
            targets,
            copies_required,
            background: self.background_pushes.clone(),
            planted: Default::default(),
        })
    }

    /// Copies of a log entry that are durable once it is committed: the smallest majority among
    /// the voter sets of the membership this node knows (two during a joint change).
    pub fn commit_quorum(&self) -> usize {
        let metrics = self.raft.metrics();
        metrics
            .membership_config
            .membership()
            .get_joint_config()
            .iter()
            .map(|voters| voters.len() / 2 + 1)
            .min()
            .unwrap_or(1)
    }

    /// Proposes `op` as `actor` at the node's current time; returns the
    /// applied result, with a rejection mapped to its gRPC status. A follower
    /// forwards the command to the leader.
    pub async fn propose(&self, actor: Actor, op: Op) -> Result<Response, Status> {
        let command = Command {
            actor,
            at_ms: self.clock.now_ms(),
            // Retries of this write (forwarding across leader changes) keep the id, so a copy
            // that reaches the log twice answers once.
            request_id: Some(RequestId::random()),
            op,
        };
        match self.raft.write(command).await {
            Ok(Response::Rejected(e)) => Err(status_from_domain(&e)),
            Ok(response) => Ok(response),
            Err(e) => Err(status_from_write(e)),
        }
    }

    /// Runs a query against applied state, after a linearizability barrier
    /// (confirmed with the leader) unless a stale read was asked for.
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

    /// One pass of repair: fetch every chunk of every READY version that
    /// this node lacks; then one scrub step (`scrub_step`: re-verify held
    /// copies, `SCRUB_BYTES_PER_PASS` at most; a rotten one is removed and
    /// fetched on the next pass). Returns how many chunks were fetched.
    pub async fn repair_once(&self) -> Result<usize, Status> {
        let roots = self
            .read(Consistency::Stale, |app, txn| app.ready_manifest_roots(txn))
            .await?;
        let sources = self.peer_chunk_addrs().await?;
        let members: Vec<(u64, String)> = self
            .read(Consistency::Stale, |app, txn| app.nodes(txn))
            .await?
            .into_iter()
            .map(|n| (n.node_id, n.region))
            .collect();
        let mut fetched = 0;
        let held: Vec<String> = roots
            .iter()
            .filter(|(_, _, root)| should_hold(root, self.config.node_id, &members))
            .map(|(_, _, root)| root.clone())
            .collect();
        for (model, number, root) in roots {
            if self.repair.is_complete(&root) || !should_hold(&root, self.config.node_id, &members)
            {
                continue;
            }
            let manifest = self
                .read(Consistency::Stale, |app, txn| app.manifest(txn, &root))
                .await?;
            let chunks = manifest.files.into_iter().flat_map(|f| f.chunks).collect();
            match repair_version(&self.chunks, &self.peers, &sources, chunks).await {
                Ok(Repaired::Complete { fetched_chunks }) => {
                    if fetched_chunks > 0 {
                        fetched += fetched_chunks;
                        tracing::info!(version = %format!("{model}/{number}"), chunks = fetched_chunks, "repaired");
                    }
                    self.repair.mark_complete(&root);
                }
                Ok(Repaired::NoSources { .. }) => {}
                Err(e) => {
                    tracing::warn!(version = %format!("{model}/{number}"), "repair incomplete, will retry: {e}")
                }
            }
        }
        let chunks_of = |root: &str| {
            let manifest = self
                .raft
                .read(|app, txn| Ok(app.manifest(txn, root)))
                .ok()?
                .ok()?;
            Some(manifest.files.into_iter().flat_map(|f| f.chunks).collect())
        };
        scrub_step(
            &self.chunks,
            &self.repair,
            &held,
            chunks_of,
            SCRUB_BYTES_PER_PASS,
        )
        .await;
        Ok(fetched)
    }

    pub async fn shutdown(&self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.chunk_server.shutdown().await;
        self.raft.shutdown().await
    }
}

/// The lock file that keeps a data dir to one process.
pub const DATA_DIR_LOCK_FILE: &str = "node.lock";

/// Takes the data dir's exclusive lock, or fails naming the dir if another
/// process (a running node, or `quiver-node gc`) holds it.
pub fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join(DATA_DIR_LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{} is in use by another process (a running node?); stop it first",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("lock {}", path.display()))
        }
    }
}

async fn repair_loop(node: Weak<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPAIR_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let Some(node) = node.upgrade() else { return };
        if let Err(e) = node.repair_once().await {
            tracing::debug!("repair pass failed: {}", e.message());
        }
    }
}

pub fn status_from_write(e: WriteError) -> Status {
    match e {
        WriteError::NotLeader {
            leader_id,
            leader_addr,
        } => Status::unavailable(format!(
            "this node is not the leader (leader: node {} at {}); retry",
            leader_id.map_or("unknown".into(), |id| id.to_string()),
            leader_addr.unwrap_or_else(|| "unknown".into())
        )),
        WriteError::NoQuorum(m) => Status::unavailable(format!("no quorum: {m}")),
        WriteError::Unreachable { .. } => Status::unavailable(e.to_string()),
        WriteError::Fatal(m) => Status::internal(format!("raft failed: {m}")),
    }
}
