//! One registry node over an environment ([`Env`]): its Raft member, its chunk store and chunk
//! peers, its clock and request ids. The gRPC services and the simulator call the same entry
//! points (`propose`, `read`, `chunk_sink`, `repair_once`), so time, ids, consistency, placement
//! and repair are decided here once. [`Node::open`] builds the production node (on-disk stores,
//! QUIC, gRPC peers); [`Node::assemble`] builds one over any environment.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use quiver_raft::{PeerIdentity, PeerTls, RaftNode, RaftNodeConfig};
use quiver_transfer::{
    ChunkBytes, ChunkPeers, ChunkServer, ChunkSource, ChunkStore, PeerClient, PeerLabel, QuicCerts,
    QuicTls, TransferStats,
};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::access_cache::AccessCache;
use crate::command::{Command, Op, Response};
use crate::domain::{Actor, NodeInfo};
use crate::env::{Clock, Env, RandomIds, RequestIds, SystemClock};
use crate::error::NodeError;
use crate::gc::UploadPins;
use crate::in_flight::InFlight;
use crate::peer_certs::{refresh_peer_access_loop, PeerAccess};
use crate::replication::{
    repair_version, scrub_step, should_hold, ChunkSink, HeldSummary, PlantedBugs, ReadThroughs,
    RepairState, Repaired, Scrubbed, BACKGROUND_PUSHES_MAX, PENDING_LISTED_MAX, REPAIR_INTERVAL,
    SCRUB_BYTES_PER_PASS,
};
use crate::state::{AppResult, RegistryApp};
use crate::tls::{CertIdentities, ClientIdentity, NodeCert};
use crate::upload_slots::UploadSlots;

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
    /// Free bytes of the data disk uploads must leave (`CoreConfig::disk_reserve_bytes`).
    pub disk_reserve_bytes: u64,
    /// `CoreConfig::chunk_gc_grace`.
    pub chunk_gc_grace: Option<Duration>,
    /// `CoreConfig::allow_anonymous_reads`.
    pub allow_anonymous_reads: bool,
}

/// What the core of a node is and how it behaves, whatever world it runs in (production's
/// [`NodeConfig`] is turned into one by [`Node::open`]; the simulator builds its own).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// This node's id, addresses and labels, as announced in the replicated node table.
    pub info: NodeInfo,
    pub data_dir: PathBuf,
    /// Copies of every chunk durable before a version is READY (W). `None`: 2 when the cluster
    /// has two or more nodes, else 1.
    pub write_quorum: Option<usize>,
    /// Bytes of held chunks the repair loop re-verifies per pass (`scrub_step`).
    pub scrub_bytes_per_pass: u64,
    /// Whether the Crash admin call may abort this process (failover drills).
    pub crash_drills: bool,
    /// Bytes of the data disk uploads must leave free for the Raft log and the state; below it
    /// uploads are refused (`NodeError::DiskFull`). 0: no reserve.
    pub disk_reserve_bytes: u64,
    /// How long an unreferenced chunk is kept after its last put before the running node
    /// removes it (`crate::gc`), one collection pass per period; `None`: only `quiver-node gc`
    /// (node stopped) collects.
    pub chunk_gc_grace: Option<Duration>,
    /// Whether a request without credentials may read (models, versions, aliases, downloads,
    /// status) as `anonymous`. Off by default: such a request is refused as unauthenticated.
    pub allow_anonymous_reads: bool,
    /// Test-only switches of the replication code (see [`PlantedBugs`]); default: none.
    #[doc(hidden)]
    pub planted: PlantedBugs,
    /// Test-only switches of this module's code (see [`PlantedNodeBugs`]); default: none.
    #[doc(hidden)]
    pub planted_node: PlantedNodeBugs,
}

/// Known bugs the simulator plants in `Node`'s own code, to show its checkers notice them.
/// Off by default; nothing in the CLI or a config file sets them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedNodeBugs {
    /// PLANTED BUG `retry-without-request-id`: a follower forwarding a command to the leader
    /// gives it a fresh request id, so a retry of a command that was applied applies again.
    pub forward_drops_request_id: bool,
    /// PLANTED BUG `repair-skips-after-restart`: a node that starts with READY versions in its
    /// state leaves them out of its repair loop (repair and scrub), as if an old record said
    /// they were whole, so what it lacked when it went down is never fetched.
    pub repair_skips_after_restart: bool,
    /// PLANTED BUG `apply-skips-name-validation`: the state machine (and the proposing node,
    /// whose field check would otherwise refuse them first) skips its field checks and takes
    /// model names on trust,
    /// so a command with an empty one fails in apply with a storage error (see `RegistryApp`).
    pub apply_skips_name_validation: bool,
    /// PLANTED BUG `follower-skips-role-check`: a node that is not the leader forwards a
    /// command without checking the proposer's role, as if the leader would check it (it does
    /// not: it trusts its peers, decision 0016).
    pub follower_skips_role_check: bool,
    /// PLANTED BUG `registrant-approval-counts`: the state machine forgets the four-eyes rule,
    /// so a version's registrant may approve its own review and that approval counts.
    pub registrant_approval_counts: bool,
    /// PLANTED BUG `watch-resume-skips-one`: a watch resumed after a revision
    /// (`Node::watch_start` with `Some(after)`) starts one revision later, so the watcher never
    /// hears of the event right after the last one it was told of.
    pub watch_resume_skips_one: bool,
    /// PLANTED BUG `controller-skips-step`: the state machine takes a controller's
    /// `AdvanceRollout` two steps at once (to the step after next, when the plan has one), so
    /// a rollout never holds the step in between.
    pub controller_skips_step: bool,
}

/// A registry node over an environment `Env<S, P>`: its Raft member, its chunk store and chunk
/// peers, its clock and ids. The services (and the simulator) call `propose`, `read`,
/// `chunk_sink` and `repair_once`; time, ids, consistency and placement are decided here.
pub struct Node<S = ChunkStore, P = PeerClient> {
    pub core: CoreConfig,
    pub raft: RaftNode<RegistryApp>,
    pub chunks: S,
    pub peers: P,
    pub clock: Arc<dyn Clock>,
    ids: Arc<dyn RequestIds>,
    /// What access checks remember between requests; the state machine keeps it fresh.
    pub(crate) access_cache: Arc<AccessCache>,
    /// What the client certificates presented to this node say (`crate::access`).
    pub(crate) client_certs: CertIdentities<ClientIdentity>,
    background_pushes: Arc<Semaphore>,
    pub repair: RepairState,
    /// Downloads' fetches of chunks this node lacks, shared between downloads.
    pub read_throughs: ReadThroughs,
    /// Uploads being received, bounded in all and per client.
    pub uploads: UploadSlots,
    /// Chunks the uploads in progress wrote: the running collector keeps them.
    pub upload_pins: Arc<UploadPins>,
    /// Downloads being sent (each ends when its client has read it all, goes away, or reads
    /// nothing for the API's download send timeout).
    pub downloads: InFlight,
    /// What the repair loop did since this node started.
    pub repair_totals: RepairTotals,
    /// Versions the repair loop leaves alone (only the planted `repair_skips_after_restart`
    /// fills it).
    repair_skipped: BTreeSet<String>,
    pub(crate) stop: watch::Sender<bool>,
    /// This node's Prometheus metrics (`crate::metrics`).
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    /// What only a node of its own process holds: the data dir's lock and the QUIC chunk server.
    host: Option<Host>,
}

/// A production node's resources beyond its core.
struct Host {
    /// Held for the node's life: one process per data dir (and no offline GC while it runs).
    _data_dir_lock: std::fs::File,
    chunk_server: ChunkServer,
    /// What the QUIC peer client (`Env::peers`) fetched and pushed, per peer.
    client_stats: Arc<TransferStats>,
    /// The certificates peers see and admit (decision 0017).
    pub(crate) certs: HostCerts,
}

impl Host {
    /// Chunk bytes moved over QUIC per peer: the server's (served, received) and the client's
    /// (fetched, pushed) together, in label order.
    fn chunk_bytes_by_peer(&self) -> Vec<(PeerLabel, ChunkBytes)> {
        let mut by_peer = std::collections::BTreeMap::<PeerLabel, ChunkBytes>::new();
        let server = self.chunk_server.stats().totals();
        for (label, bytes) in server.into_iter().chain(self.client_stats.totals()) {
            by_peer.entry(label).or_default().add(&bytes);
        }
        by_peer.into_iter().collect()
    }
}

/// A production node's certificate, as it is now, and the gate it admits peers by.
pub(crate) struct HostCerts {
    pub(crate) ca_cert_pem: String,
    /// This node's certificate, presented by the Raft and QUIC servers and clients.
    pub(crate) identity: Arc<PeerIdentity>,
    pub(crate) access: Arc<PeerAccess>,
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

impl Node<ChunkStore, PeerClient> {
    /// Starts a node of this process: its data dir, chunk store, QUIC chunk server and client,
    /// Raft over gRPC on `peer_listener` (joining through `config.join` on first start); waits
    /// for a leader and records its addresses in the node table.
    pub async fn open(config: NodeConfig, peer_listener: TcpListener) -> anyhow::Result<Arc<Node>> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
        let data_dir_lock = lock_data_dir(&config.data_dir)?;
        let chunks = ChunkStore::open(config.data_dir.join("chunks"))
            .with_context(|| format!("open chunk store in {}", config.data_dir.display()))?;
        let named = config
            .tls
            .identity()
            .context("read this node's certificate")?;
        anyhow::ensure!(
            named.node_id == config.node_id,
            "this node's certificate is node {}'s, not node {}'s: issue one for node {} \
             (`quiver-node cert issue --node-id {}`)",
            named.node_id,
            config.node_id,
            config.node_id,
            config.node_id
        );
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let certs = HostCerts {
            ca_cert_pem: config.tls.ca_cert_pem.clone(),
            identity: Arc::new(
                PeerIdentity::new(&config.tls.cert_pem, &config.tls.key_pem)
                    .context("this node's certificate and key")?,
            ),
            access: Arc::new(PeerAccess::new(clock.clone())),
        };
        let quic_tls = QuicTls {
            ca_cert_pem: config.tls.ca_cert_pem.clone(),
            cert_pem: config.tls.cert_pem.clone(),
            key_pem: config.tls.key_pem.clone(),
        };
        let quic_certs = QuicCerts {
            server_cert: certs.identity.clone(),
            client_cert: certs.identity.clone(),
            gate: certs.access.clone(),
        };
        let source: Arc<dyn ChunkSource> = Arc::new(chunks.clone());
        let chunk_server =
            ChunkServer::bind_with_certs(config.quic_listen, source, &quic_tls, &quic_certs)
                .with_context(|| format!("bind the QUIC chunk server on {}", config.quic_listen))?;
        let peers = PeerClient::with_certs(&quic_tls, &quic_certs)
            .context("create the QUIC peer client")?;
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
        raft_config.identity = Some(certs.identity.clone());
        raft_config.gate = Some(certs.access.clone());
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
        let core = CoreConfig {
            info: NodeInfo {
                node_id: config.node_id,
                api_addr: config.api_addr.clone(),
                peer_addr: config.peer_addr.clone(),
                quic_addr: chunk_server.local_addr().to_string(),
                region: config.region.clone(),
                zone: config.zone.clone(),
            },
            data_dir: config.data_dir.clone(),
            write_quorum: config.write_quorum,
            scrub_bytes_per_pass: SCRUB_BYTES_PER_PASS,
            crash_drills: config.crash_drills,
            disk_reserve_bytes: config.disk_reserve_bytes,
            chunk_gc_grace: config.chunk_gc_grace,
            allow_anonymous_reads: config.allow_anonymous_reads,
            planted: PlantedBugs::default(),
            planted_node: PlantedNodeBugs::default(),
        };
        let env = Env {
            clock,
            ids: Arc::new(RandomIds),
            chunks,
            peers,
        };
        let host = Host {
            _data_dir_lock: data_dir_lock,
            client_stats: env.peers.stats().clone(),
            chunk_server,
            certs,
        };
        let node = Node::build(core, env, raft, Some(host));
        node.refresh_peer_access()
            .context("read the removed nodes from the state")?;
        tokio::spawn(refresh_peer_access_loop(
            Arc::downgrade(&node),
            node.stop.subscribe(),
        ));
        node.announce()
            .await
            .context("register this node's addresses")?;
        Ok(node)
    }

    /// This node's certificates, if it is a node of its own process.
    pub(crate) fn host_certs(&self) -> Option<&HostCerts> {
        self.host.as_ref().map(|host| &host.certs)
    }

    /// Where this node's QUIC chunk server listens.
    pub fn quic_addr(&self) -> SocketAddr {
        match &self.host {
            Some(host) => host.chunk_server.local_addr(),
            None => self
                .core
                .info
                .quic_addr
                .parse()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        }
    }
}

impl<S: ChunkSource + Clone, P: ChunkPeers> Node<S, P> {
    /// A node over `env` and a started `raft`, with its repair loop running (every
    /// `REPAIR_INTERVAL`, until `shutdown`). It does not announce itself: call
    /// [`Node::announce`] once a leader is known.
    pub fn assemble(core: CoreConfig, env: Env<S, P>, raft: RaftNode<RegistryApp>) -> Arc<Self> {
        Self::build(core, env, raft, None)
    }

    fn build(
        core: CoreConfig,
        env: Env<S, P>,
        raft: RaftNode<RegistryApp>,
        host: Option<Host>,
    ) -> Arc<Self> {
        let (stop, _) = watch::channel(false);
        if core.planted_node.apply_skips_name_validation {
            // PLANTED BUG (test-only, see `PlantedNodeBugs`).
            let _ = raft.read(|app, _| {
                app.plant_skip_name_validation(true);
                Ok(())
            });
        }
        if core.planted_node.registrant_approval_counts {
            // PLANTED BUG (test-only, see `PlantedNodeBugs`).
            let _ = raft.read(|app, _| {
                app.plant_registrant_approval_counts(true);
                Ok(())
            });
        }
        if core.planted_node.controller_skips_step {
            // PLANTED BUG (test-only, see `PlantedNodeBugs`).
            let _ = raft.read(|app, _| {
                app.plant_controller_skips_step(true);
                Ok(())
            });
        }
        // The state machine's own cache, which its apply keeps fresh; one that no apply reaches
        // would go stale, so without the state machine nothing is served from a cache.
        let access_cache = raft
            .read(|app, _| Ok(app.access_cache()))
            .unwrap_or_else(|_| Arc::new(AccessCache::never()));
        let mut repair_skipped = BTreeSet::new();
        if core.planted_node.repair_skips_after_restart {
            // PLANTED BUG (test-only, see `PlantedNodeBugs`): whatever is READY at start is
            // taken as whole.
            if let Ok(Ok(roots)) = raft.read(|app, txn| Ok(app.ready_manifest_roots(txn))) {
                repair_skipped.extend(roots.into_iter().map(|(_, _, root)| root));
            }
        }
        let metrics = crate::metrics::NodeMetrics::new(core.info.node_id);
        let node = Arc::new(Node {
            core,
            raft,
            chunks: env.chunks,
            peers: env.peers,
            clock: env.clock,
            ids: env.ids,
            access_cache,
            client_certs: CertIdentities::default(),
            background_pushes: Arc::new(Semaphore::new(BACKGROUND_PUSHES_MAX)),
            repair: RepairState::default(),
            read_throughs: ReadThroughs::default(),
            uploads: UploadSlots::default(),
            upload_pins: Arc::default(),
            downloads: InFlight::default(),
            repair_totals: RepairTotals::default(),
            repair_skipped,
            stop,
            metrics,
            host,
        });
        tokio::spawn(repair_loop(Arc::downgrade(&node), node.stop.subscribe()));
        tokio::spawn(crate::controller::controller_loop(
            Arc::downgrade(&node),
            node.stop.subscribe(),
        ));
        if let Some(grace) = node.core.chunk_gc_grace {
            tokio::spawn(chunk_gc_loop(
                Arc::downgrade(&node),
                grace,
                node.stop.subscribe(),
            ));
        }
        node
    }

    pub fn node_id(&self) -> u64 {
        self.core.info.node_id
    }

    /// What a metrics scrape reads of this node now (its local state; no round of consensus).
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let m = self.raft.metrics();
        let last_log_index = m.last_log_index.unwrap_or(0);
        let is_leader = m.current_leader == Some(self.node_id());
        let lag_by_peer = match (&m.replication, is_leader) {
            (Some(replication), true) => replication
                .iter()
                .filter(|(id, _)| **id != self.node_id())
                .map(|(id, matched)| {
                    let matched = matched.map(|l| l.index).unwrap_or(0);
                    (*id, last_log_index.saturating_sub(matched))
                })
                .collect(),
            _ => Vec::new(),
        };
        let counts = self
            .raft
            .read(|app, txn| Ok(app.counts(txn)))
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let (fetched, bad) = self.repair_totals.load();
        let chunk_bytes_by_peer = self
            .host
            .as_ref()
            .map(Host::chunk_bytes_by_peer)
            .unwrap_or_default();
        crate::metrics::Snapshot {
            term: m.current_term,
            leader_id: m.current_leader,
            is_leader,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index,
            lag_by_peer,
            version_count: counts.0,
            endpoint_count: counts.1,
            watch_revision: counts.2,
            repair_fetched_chunks: fetched,
            scrub_bad_copies: bad,
            chunk_bytes_by_peer,
        }
    }

    /// Records this node's addresses and labels in the replicated node table, unless they are
    /// already there.
    pub async fn announce(&self) -> Result<(), NodeError> {
        let info = self.core.info.clone();
        let known = self
            .read(Consistency::Stale, |app, txn| app.nodes(txn))
            .await?;
        if known.contains(&info) {
            return Ok(());
        }
        let actor = Actor {
            name: crate::auth::node_principal(info.node_id),
            authenticated: true,
        };
        self.propose(actor, Op::UpsertNode(info)).await?;
        Ok(())
    }

    /// Other nodes, nearest first: same region and zone, then same region, then the rest, each
    /// by node id.
    pub async fn peer_nodes(&self) -> Result<Vec<NodeInfo>, NodeError> {
        let nodes = self
            .read(Consistency::Stale, |app, txn| app.nodes(txn))
            .await?;
        Ok(self.nearest_first(nodes))
    }

    /// `nodes` without this one, nearest first (see [`Node::peer_nodes`]).
    fn nearest_first(&self, mut nodes: Vec<NodeInfo>) -> Vec<NodeInfo> {
        nodes.retain(|n| n.node_id != self.node_id());
        let (region, zone) = (&self.core.info.region, &self.core.info.zone);
        nodes.sort_by_key(|n| {
            let distance = match (&n.region == region, &n.zone == zone) {
                (true, true) => 0,
                (true, false) => 1,
                _ => 2,
            };
            (distance, n.node_id)
        });
        nodes
    }

    /// QUIC addresses of the other nodes, nearest first.
    pub async fn peer_chunk_addrs(&self) -> Result<Vec<SocketAddr>, NodeError> {
        Ok(chunk_addrs(&self.peer_nodes().await?))
    }

    /// Where an upload's chunks go: here plus every peer, acknowledged once W copies are
    /// durable.
    pub async fn chunk_sink(&self) -> Result<ChunkSink<S, P>, NodeError> {
        let targets = self.peer_chunk_addrs().await?;
        let cluster_size = targets.len() + 1;
        let copies_required = self
            .core
            .write_quorum
            .unwrap_or(if cluster_size >= 2 { 2 } else { 1 })
            .max(1);
        Ok(ChunkSink {
            store: self.chunks.clone(),
            peers: self.peers.clone(),
            targets,
            copies_required,
            background: self.background_pushes.clone(),
            planted: self.core.planted,
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

    /// `op` as `actor` would propose it through this node now: stamped with this node's time
    /// and a fresh request id, which every retry of the command keeps (decision 0009).
    pub fn stamp(&self, actor: Actor, op: Op) -> Command {
        Command {
            actor,
            at_ms: self.clock.now_ms(),
            request_id: Some(self.ids.next_id()),
            op,
        }
    }

    /// Proposes `op` as `actor` at the node's current time; returns the applied result, a
    /// rejection as [`NodeError::Rejected`]. A follower forwards the command to the leader.
    pub async fn propose(&self, actor: Actor, op: Op) -> Result<Response, NodeError> {
        self.propose_command(self.stamp(actor, op)).await
    }

    /// Proposes a command already stamped ([`Node::stamp`]); a client's retry of the same
    /// command through any node keeps its time and request id, so a copy that reaches the log
    /// twice answers once.
    pub async fn propose_command(&self, mut command: Command) -> Result<Response, NodeError> {
        // A request that fails a field check never reaches the log. (The planted bug that skips
        // name validation skips it here too, so that its bad names do reach apply.)
        if !self.core.planted_node.apply_skips_name_validation {
            command.op.check_fields().map_err(NodeError::Rejected)?;
        }
        // Who may propose it is checked here, where the request arrives (`crate::access`).
        // (The planted bug skips it on a follower, test-only, see `PlantedNodeBugs`.)
        let skipped = self.core.planted_node.follower_skips_role_check && !self.raft.is_leader();
        if !skipped {
            self.check_command(&command.actor, &command.op).await?;
        }
        if self.core.planted_node.forward_drops_request_id && !self.raft.is_leader() {
            // PLANTED BUG (test-only, see `PlantedNodeBugs`): the forwarded copy is a new request.
            command.request_id = Some(self.ids.next_id());
        }
        match self.raft.write(command).await? {
            Response::Rejected(e) => Err(NodeError::Rejected(e)),
            response => Ok(response),
        }
    }

    /// Runs a query against applied state, after a linearizability barrier (confirmed with the
    /// leader: a follower asks it for its read index) unless a stale read was asked for.
    pub async fn read<T>(
        &self,
        consistency: Consistency,
        query: impl FnOnce(&RegistryApp, &heed::RoTxn<'_>) -> AppResult<T>,
    ) -> Result<T, NodeError> {
        if consistency == Consistency::Linearizable {
            self.raft.linearizable_barrier().await?;
        }
        self.raft
            .read(|app, txn| Ok(query(app, txn)))
            .map_err(|e| NodeError::Storage(format!("read state: {e:#}")))?
            .map_err(NodeError::from)
    }

    /// One pass of repair: fetch every chunk of every READY version this node should hold and
    /// lacks; then one scrub step (`scrub_step`: re-verify held copies, `scrub_bytes_per_pass`
    /// at most; a rotten one is removed and fetched on the next pass).
    pub async fn repair_once(&self) -> Result<RepairPass, NodeError> {
        let (mut roots, nodes) = self
            .read(Consistency::Stale, |app, txn| {
                Ok((app.ready_manifest_roots(txn)?, app.nodes(txn)?))
            })
            .await?;
        roots.retain(|(_, _, root)| !self.repair_skipped.contains(root));
        let members: Vec<(u64, String)> = nodes
            .iter()
            .map(|n| (n.node_id, n.region.clone()))
            .collect();
        let sources = chunk_addrs(&self.nearest_first(nodes));
        let me = self.node_id();
        let mut pass = RepairPass::default();
        let held: Vec<String> = roots
            .iter()
            .filter(|(_, _, root)| should_hold(root, me, &members))
            .map(|(_, _, root)| root.clone())
            .collect();
        for (model, number, root) in &roots {
            if self.repair.is_complete(root) || !should_hold(root, me, &members) {
                continue;
            }
            let manifest = self
                .read(Consistency::Stale, |app, txn| app.manifest(txn, root))
                .await?;
            match repair_version(&self.chunks, &self.peers, &sources, manifest.chunk_refs()).await {
                Ok(Repaired::Complete { fetched_chunks }) => {
                    if fetched_chunks > 0 {
                        pass.fetched_chunks += fetched_chunks;
                        tracing::info!(version = %format!("{model}/{number}"), chunks = fetched_chunks, "repaired");
                    }
                    self.repair.mark_complete(root);
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
            Some(manifest.chunk_refs())
        };
        pass.scrubbed = scrub_step(
            &self.chunks,
            &self.repair,
            &held,
            chunks_of,
            self.core.scrub_bytes_per_pass,
        )
        .await;
        let mut summary = HeldSummary {
            at_ms: self.clock.now_ms(),
            ready_versions: roots.len(),
            held: held.len(),
            ..HeldSummary::default()
        };
        for (model, number, root) in roots {
            if !should_hold(&root, me, &members) {
                continue;
            }
            if self.repair.is_complete(&root) {
                summary.complete += 1;
            } else if summary.pending.len() < PENDING_LISTED_MAX {
                summary.pending.push((model, number));
            }
        }
        self.repair.set_last_pass(summary);
        Ok(pass)
    }

    /// Stops the repair loop, the chunk server (if any) and Raft, and releases storage.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        if let Some(host) = &self.host {
            host.chunk_server.shutdown().await;
        }
        self.raft.shutdown().await
    }
}

/// The QUIC addresses of `nodes`, in their order (an unparsable one is skipped).
fn chunk_addrs(nodes: &[NodeInfo]) -> Vec<SocketAddr> {
    nodes
        .iter()
        .filter_map(|n| n.quic_addr.parse().ok())
        .collect()
}

/// What the repair loop did since the node started.
#[derive(Debug, Default)]
pub struct RepairTotals {
    /// Chunks fetched from peers.
    pub fetched_chunks: AtomicU64,
    /// Held copies the scrub found rotten or gone.
    pub scrubbed_bad: AtomicU64,
}

impl RepairTotals {
    /// (chunks fetched, bad copies found) so far.
    pub fn load(&self) -> (u64, u64) {
        (
            self.fetched_chunks.load(Ordering::Relaxed),
            self.scrubbed_bad.load(Ordering::Relaxed),
        )
    }

    fn add(&self, pass: &RepairPass) {
        self.fetched_chunks
            .fetch_add(pass.fetched_chunks as u64, Ordering::Relaxed);
        self.scrubbed_bad
            .fetch_add(pass.scrubbed.bad.len() as u64, Ordering::Relaxed);
    }
}

/// What one repair pass did.
#[derive(Clone, Debug, Default)]
pub struct RepairPass {
    /// Chunks fetched from peers.
    pub fetched_chunks: usize,
    pub scrubbed: Scrubbed,
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

/// Collects unreferenced chunks every `grace` (`crate::gc`) until the node stops.
async fn chunk_gc_loop<S: ChunkSource + Clone, P: ChunkPeers>(
    node: Weak<Node<S, P>>,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = stop.changed() => return,
        }
        let Some(node) = node.upgrade() else { return };
        if *stop.borrow() {
            return;
        }
        if let Err(e) = node.collect_chunks_once().await {
            tracing::warn!(
                node_id = node.node_id(),
                "chunk collection pass skipped: {e}"
            );
        }
    }
}

async fn repair_loop<S: ChunkSource + Clone, P: ChunkPeers>(
    node: Weak<Node<S, P>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPAIR_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let Some(node) = node.upgrade() else { return };
        if *stop.borrow() {
            return;
        }
        match node.repair_once().await {
            Ok(pass) => node.repair_totals.add(&pass),
            Err(e) => tracing::debug!("repair pass failed: {e}"),
        }
    }
}
