//! `RaftNode`: the one handle the registry holds on consensus.
//!
//! It owns an `openraft::Raft` over the heed stores and translates openraft's error taxonomy into
//! the outcomes a caller acts on ([`WriteError`]): ask someone else (not the leader), try again
//! later (no quorum), cannot reach a peer, or give up (fatal). Reads go straight to the state env:
//! they see applied state only; callers that need linearizability call
//! [`RaftNode::linearizable_barrier`] first.
//!
//! In a cluster (started with [`RaftNode::start_with_listener`] or [`RaftNode::start_with_transport`]) every write and barrier may be
//! called on any member: a follower forwards it to the leader over the peer RPC, retrying across
//! leader changes until `write_timeout` runs out. Membership operations live in `cluster.rs`, the
//! peer server in `server.rs`.
//!
//! Shutdown is complete, not best-effort: it stops the peer server and openraft and then waits,
//! bounded by [`STORAGE_RELEASE_TIMEOUT`], until every task has dropped its handle on the LMDB
//! environments. Only then can the same directory be opened again in this process (LMDB refuses
//! a second open), which is what a restart in tests and in the simulator does.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use anyhow::Context as _;
use openraft::error::{CheckIsLeaderError, InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Raft, RaftMetrics, SnapshotPolicy};
use tokio::time::Instant;

use crate::batch::Batcher;
use crate::durability::LogDiskHandle;
use crate::log_store::LogOptions;
use crate::network::PeerNetwork;
use crate::rpc::{ForwardRequest, ReadIndexRequest, WriteError};
use crate::server::{PeerHandler, PeerServer};
use crate::state_store::{StateMachineStore, SNAPSHOT_RETRY_PAUSE_DEFAULT};
use crate::storage::open_storage_tracked;
use crate::tls::{PeerGate, PeerIdentity, PeerTls};
use crate::transport::{
    CallError, GrpcTransport, Method, NoPeers, PeerTransport, Peers, SNAPSHOT_CHUNK_SIZE_BYTES,
};
use crate::{App, EnvsReleased, NodeId, TypeConfig};

/// Name every Quiver cluster reports to openraft (it appears in its logs and errors).
const CLUSTER_NAME: &str = "quiver";
/// Leader heartbeat period.
pub const HEARTBEAT_INTERVAL_MS: u64 = 50;
/// Accepted values of [`RaftNodeConfig::heartbeat_ms`].
pub const HEARTBEAT_MS_RANGE: std::ops::RangeInclusive<u64> = 10..=10_000;
/// Election timeout range: followers wait a random time in [min, max) without hearing from a
/// leader before standing for election. At least 3 heartbeats, so one lost heartbeat does not
/// cause an election; the spread makes split votes unlikely.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 150;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 300;
/// How long a replication RPC (AppendEntries) may take, in heartbeats. openraft 0.9 times every
/// AppendEntries out after its `heartbeat_interval`, so with its own heartbeats a follower whose
/// disk stalls longer than one heartbeat (fsyncs of 30–80 ms were measured under the 64-client
/// metadata benchmark on a 2-core VM) counted as failed: the RPC was dropped and sent again,
/// adding load where there was too much. Quiver sends the heartbeats itself every
/// `heartbeat_ms` (`send_heartbeats`) and gives openraft `heartbeat_interval` = this many
/// heartbeats, which is then only the replication timeout: a busy follower has that long to
/// answer, a dead one is still found by its refused connection at once or by this timeout.
/// Below [`ELECTION_TIMEOUT_MIN_MS`] heartbeats, as openraft requires. (openraft's tick, which
/// also checks the election timer, runs every 1.5 `heartbeat_interval`.)
pub const REPLICATION_TIMEOUT_HEARTBEATS: u64 = 2;
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
/// Default bound on a write or a linearizable barrier, forwarding and retries included.
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// openraft's `install_snapshot_timeout`: how long one snapshot chunk may take to be sent and,
/// for the last one, installed (the app's import and an fsync) on the receiver.
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;
/// Most attempts one request makes to reach the leader (each after a leader change or a pause
/// of at most [`LEADER_RETRY_PAUSE_MAX`]); `write_timeout` usually ends it first.
pub const LEADER_ATTEMPTS_MAX: u32 = 32;
/// Longest pause before trying the same leader again after it could not be reached.
pub const LEADER_RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);
/// How long `shutdown` lets the peer server finish in-flight RPCs before dropping them.
pub const PEER_SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// A forwarded request asks the leader to finish this much before the caller's own deadline, so
/// the leader's answer (which says why it failed) arrives before the caller gives up.
pub(crate) const REPLY_MARGIN: Duration = Duration::from_millis(100);

/// How to run one Raft node.
#[derive(Clone, Debug)]
pub struct RaftNodeConfig {
    pub node_id: NodeId,
    /// The log lives in `data_dir/log`, the state machine in `data_dir/state`.
    pub data_dir: PathBuf,
    /// Advertised address (`host:port`) of this node's peer listener, stored in its `BasicNode`:
    /// the address peers connect to.
    pub addr: String,
    /// Build a snapshot after this many entries have been applied since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot.
    pub logs_to_keep_after_snapshot: u64,
    /// Mutual TLS among peers. `None` = plaintext (tests only); `Some` = mTLS required both ways.
    pub tls: Option<PeerTls>,
    /// With `tls`: the certificate this node presents, renewable while it runs (decision
    /// 0015). `None`: `tls`'s certificate for the node's life.
    pub identity: Option<Arc<PeerIdentity>>,
    /// With `tls`: what the peer server admits beyond the CA, and which node each request
    /// comes from (decision 0017). `None`: any certificate under the CA, sender unchecked.
    pub gate: Option<Arc<dyn PeerGate>>,
    /// Address (`host:port`) of any existing member to join through. Used only while this node is
    /// not yet a voter of a cluster (first start, or an interrupted join); ignored afterwards.
    pub join: Option<String>,
    /// A write or linearizable barrier not done in time fails with [`WriteError::NoQuorum`].
    pub write_timeout: Duration,
    /// A test harness's disk model, told about every log write (`durability.rs`). Always `None`
    /// in production: no CLI flag or config file sets it.
    pub log_disk: Option<LogDiskHandle>,
    /// The log store's options (segment size); the default suits production, a test harness
    /// shrinks the segments so that rollover and deletion happen under its faults.
    pub log_options: LogOptions,
    /// Leader heartbeat interval; the election timeout (3–6 heartbeats, decision 0004) and the
    /// replication RPC timeout ([`REPLICATION_TIMEOUT_HEARTBEATS`]) scale with it. Default [`HEARTBEAT_INTERVAL_MS`], a LAN
    /// value: clusters whose nodes are further apart need at least their largest round trip.
    pub heartbeat_ms: u64,
    /// After a snapshot build fails, the next one is tried only this much later (default
    /// [`SNAPSHOT_RETRY_PAUSE_DEFAULT`]); the node keeps applying meanwhile.
    pub snapshot_retry_pause: Duration,
    /// Bugs a test harness plants to show its checkers catch them. Always off in production: no
    /// CLI flag or config file sets them.
    pub planted: PlantedRaftBugs,
}

/// Bugs the simulator plants in this crate's code (see [`RaftNodeConfig::planted`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedRaftBugs {
    /// A follower answers a linearizable read from its own applied state, without asking the
    /// leader for its read index: a read can miss a write acknowledged before it began.
    pub stale_follower_reads: bool,
}

impl RaftNodeConfig {
    pub fn new(node_id: NodeId, data_dir: PathBuf, addr: String) -> Self {
        RaftNodeConfig {
            node_id,
            data_dir,
            addr,
            snapshot_logs_since_last: SNAPSHOT_LOGS_SINCE_LAST_DEFAULT,
            logs_to_keep_after_snapshot: LOGS_TO_KEEP_AFTER_SNAPSHOT_DEFAULT,
            tls: None,
            identity: None,
            gate: None,
            join: None,
            write_timeout: WRITE_TIMEOUT_DEFAULT,
            log_disk: None,
            log_options: LogOptions::default(),
            heartbeat_ms: HEARTBEAT_INTERVAL_MS,
            snapshot_retry_pause: SNAPSHOT_RETRY_PAUSE_DEFAULT,
            planted: PlantedRaftBugs::default(),
        }
    }

    /// The openraft configuration for this node, validated.
    pub fn raft_config(&self) -> anyhow::Result<openraft::Config> {
        anyhow::ensure!(
            self.snapshot_logs_since_last > 0,
            "snapshot_logs_since_last must be at least 1"
        );
        anyhow::ensure!(
            HEARTBEAT_MS_RANGE.contains(&self.heartbeat_ms),
            "heartbeat interval {} ms is out of range: use {} to {} ms (at least the largest round trip between nodes)",
            self.heartbeat_ms,
            HEARTBEAT_MS_RANGE.start(),
            HEARTBEAT_MS_RANGE.end()
        );
        let config = openraft::Config {
            cluster_name: CLUSTER_NAME.to_string(),
            // Not the heartbeat period: the replication RPC timeout (see
            // REPLICATION_TIMEOUT_HEARTBEATS); `send_heartbeats` sends the heartbeats.
            heartbeat_interval: self.heartbeat_ms * REPLICATION_TIMEOUT_HEARTBEATS,
            enable_heartbeat: false,
            election_timeout_min: self.heartbeat_ms * ELECTION_TIMEOUT_MIN_MS
                / HEARTBEAT_INTERVAL_MS,
            election_timeout_max: self.heartbeat_ms * ELECTION_TIMEOUT_MAX_MS
                / HEARTBEAT_INTERVAL_MS,
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_SIZE_BYTES as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_to_keep_after_snapshot,
            purge_batch_size: PURGE_BATCH_SIZE_MAX.min(self.snapshot_logs_since_last),
            ..Default::default()
        };
        config.validate().context("validate openraft config")
    }
}

/// A running Raft node over an [`App`]. Cheap to clone; clones share the node.
pub struct RaftNode<A: App> {
    pub(crate) inner: Arc<Inner<A>>,
}

impl<A: App> Clone for RaftNode<A> {
    fn clone(&self) -> Self {
        RaftNode {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct Inner<A: App> {
    pub(crate) node_id: NodeId,
    pub(crate) addr: String,
    pub(crate) raft: Raft<TypeConfig<A>>,
    /// Where this node's proposals queue to share Raft entries.
    batcher: Batcher<A>,
    /// The task that sends this node's heartbeats while it leads.
    _heartbeats: AbortOnDrop,
    /// Our handle on the state env for reads; `None` once shut down.
    state: RwLock<Option<StateMachineStore<A>>>,
    /// Whether the state env's last commit may not survive a power loss yet.
    state_unsynced: Arc<std::sync::atomic::AtomicBool>,
    /// How many snapshot builds have failed (each is logged and retried later, not fatal).
    snapshot_build_failures: tokio::sync::watch::Receiver<u64>,
    /// Resolves when every storage handle is dropped; taken by the first `shutdown`.
    released: tokio::sync::Mutex<Option<EnvsReleased>>,
    /// The peer transport, for openraft's RPCs, forwarding to the leader and cluster operations.
    pub(crate) peers: Arc<Peers>,
    pub(crate) write_timeout: Duration,
    pub(crate) planted: PlantedRaftBugs,
    /// Serialises membership changes proposed by this node (while it is the leader).
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    /// The peer gRPC server, if this node runs one; taken by `shutdown`. Dropping it (with the
    /// last handle on the node) stops the server too.
    pub(crate) server: std::sync::Mutex<Option<PeerServer>>,
}

/// Where requests that need the leader go.
pub(crate) enum Route {
    Local,
    Remote { leader_id: NodeId, addr: String },
}

/// The result of one attempt at a request that needs the leader.
pub(crate) enum Attempt<E> {
    /// Settled: this is the answer.
    Final(E),
    /// Not settled (the leader moved, or could not be reached); try again, saying why.
    Retry(String),
}

/// How a request that needs the leader ended without success.
pub(crate) enum Outcome<E> {
    Final(E),
    Fatal(String),
    /// Out of time or attempts; the last problem seen.
    GaveUp(String),
}

impl<A: App> RaftNode<A> {
    pub(crate) fn from_inner(inner: Arc<Inner<A>>) -> Self {
        RaftNode { inner }
    }

    /// Open storage under `cfg.data_dir`, start Raft with a transport that reaches nobody and no
    /// peer server, and if the node has never been initialised, initialise a single-member
    /// cluster `{node_id: BasicNode{addr}}`. On restart it resumes from disk. For a member of a
    /// multi-node cluster use [`RaftNode::start_with_listener`].
    pub async fn start(cfg: RaftNodeConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cfg.join.is_none(),
            "node {}: joining a cluster needs a peer listener: use RaftNode::start_with_listener",
            cfg.node_id
        );
        let addr = cfg.addr.clone();
        let node = Self::start_inner(&cfg, Arc::new(NoPeers)).await?;
        if let Err(e) = node.initialize_single_member(addr).await {
            node.shutdown_after_failed_start().await;
            return Err(e);
        }
        Ok(node)
    }

    /// Start a member of a multi-node cluster: open storage, start Raft over the peer gRPC
    /// transport (mutual TLS if `cfg.tls` is set) and serve the peer RPC on `listener` (which
    /// should be bound to the address peers reach as `cfg.addr`). Then resume, initialise or join
    /// (`settle_membership`).
    pub async fn start_with_listener(
        cfg: RaftNodeConfig,
        listener: tokio::net::TcpListener,
    ) -> anyhow::Result<Self> {
        let tls = match &cfg.tls {
            Some(tls) => {
                tls.validate()
                    .with_context(|| format!("node {}: peer TLS material", cfg.node_id))?;
                let identity = match &cfg.identity {
                    Some(identity) => identity.clone(),
                    None => Arc::new(
                        PeerIdentity::new(&tls.cert_pem, &tls.key_pem)
                            .with_context(|| format!("node {}: peer TLS material", cfg.node_id))?,
                    ),
                };
                Some((tls.clone(), identity))
            }
            None => None,
        };
        let transport = Arc::new(GrpcTransport::new(tls.clone())?);
        let node = Self::start_inner(&cfg, transport).await?;
        let result = async {
            let handler = Arc::downgrade(&node.inner) as Weak<dyn PeerHandler>;
            let server_tls = tls
                .as_ref()
                .map(|(tls, identity)| crate::server::ServerTls {
                    tls,
                    identity: identity.clone(),
                    gate: cfg.gate.clone(),
                });
            let server = crate::server::spawn(node.node_id(), handler, listener, server_tls)?;
            *node.lock_server() = Some(server);
            node.settle_membership(&cfg).await
        }
        .await;
        if let Err(e) = result {
            node.shutdown_after_failed_start().await;
            return Err(e);
        }
        Ok(node)
    }

    /// Open storage and start Raft over `transport`, without a peer server and without settling
    /// membership: requests for this node arrive through [`RaftNode::handle_peer`], called by
    /// whoever owns the transport (the simulator's network). Initialise the cluster through
    /// [`RaftNode::raft`].
    pub async fn start_with_transport(
        cfg: RaftNodeConfig,
        transport: Arc<dyn PeerTransport>,
    ) -> anyhow::Result<Self> {
        Self::start_inner(&cfg, transport).await
    }

    async fn start_inner(
        cfg: &RaftNodeConfig,
        transport: Arc<dyn PeerTransport>,
    ) -> anyhow::Result<Self> {
        let config = Arc::new(cfg.raft_config()?);
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("create data dir {}", cfg.data_dir.display()))?;
        let (mut log, state, released) =
            open_storage_tracked::<A>(&cfg.data_dir, cfg.log_disk.clone(), cfg.log_options)
                .with_context(|| format!("open raft storage in {}", cfg.data_dir.display()))?;
        state.set_snapshot_retry_pause(cfg.snapshot_retry_pause);
        let log_purged = log
            .get_log_state()
            .await
            .context("read the log's state")?
            .last_purged_log_id
            .is_some();
        state
            .ensure_snapshot_behind_purged_log(log_purged)
            .with_context(|| format!("node {}: start", cfg.node_id))?;
        let peers = Arc::new(Peers::new(transport));
        let network = PeerNetwork::new(peers.clone());
        let raft = Raft::new(cfg.node_id, config, network, log, state.clone())
            .await
            .with_context(|| format!("start raft node {}", cfg.node_id))?;
        let batcher = Batcher::start(raft.clone());
        let heartbeats = AbortOnDrop(tokio::spawn(send_heartbeats(
            raft.clone(),
            Duration::from_millis(cfg.heartbeat_ms),
        )));
        tracing::info!(node_id = cfg.node_id, data_dir = %cfg.data_dir.display(), "raft node started");
        Ok(RaftNode {
            inner: Arc::new(Inner {
                node_id: cfg.node_id,
                addr: cfg.addr.clone(),
                raft,
                batcher,
                _heartbeats: heartbeats,
                state_unsynced: state.unsynced_flag(),
                snapshot_build_failures: state.snapshot_build_failures(),
                state: RwLock::new(Some(state)),
                released: tokio::sync::Mutex::new(Some(released)),
                peers,
                write_timeout: cfg.write_timeout,
                planted: cfg.planted,
                membership_lock: tokio::sync::Mutex::new(()),
                server: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Resume, initialise or join. If this node is already a voter (its data dir holds a
    /// cluster), resume; else with `cfg.join = None`, initialise a single-member cluster of
    /// itself; else ask the member at `cfg.join` to add it: the request is forwarded to the
    /// leader, which adds this node as a learner, waits until it has caught up (by log or
    /// snapshot) and promotes it to voter. Returns once this node sees itself as a voter; fails
    /// if that does not happen within [`crate::JOIN_TIMEOUT`].
    async fn settle_membership(&self, cfg: &RaftNodeConfig) -> anyhow::Result<()> {
        let initialized = self
            .inner
            .raft
            .is_initialized()
            .await
            .context("query raft initialisation")?;
        let voter = self.is_voter_here();
        match (&cfg.join, initialized) {
            (None, false) => self.initialize_single_member(cfg.addr.clone()).await,
            (None, true) => Ok(()),
            (Some(_), true) if voter => {
                tracing::info!(
                    node_id = self.inner.node_id,
                    "already a voter: resuming, the join address is not used"
                );
                Ok(())
            }
            (Some(via), _) => self.join(via).await,
        }
    }

    /// Whether this node's current membership config lists it as a voter.
    pub(crate) fn is_voter_here(&self) -> bool {
        let m = self.inner.raft.metrics().borrow().membership_config.clone();
        let id = self.inner.node_id;
        crate::cluster::is_settled_voter(m.membership(), id)
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

    async fn shutdown_after_failed_start(&self) {
        // Release the storage so the caller may retry in this process.
        if let Err(e) = self.shutdown().await {
            tracing::warn!(error = %format!("{e:#}"), "shutdown after failed start");
        }
    }

    pub(crate) fn lock_server(&self) -> std::sync::MutexGuard<'_, Option<PeerServer>> {
        self.inner
            .server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Propose a command; returns the app's response once committed and applied on the node
    /// that proposed it (the leader). On a follower the command is forwarded to the leader,
    /// retrying across leader changes; the whole call is bounded by `write_timeout`, after which
    /// it fails with [`WriteError::NoQuorum`] saying how many voters were reachable.
    ///
    /// A write that fails may still be applied later (it may have reached a leader that
    /// replicated it before losing leadership or before the caller gave up), and a write
    /// retried after a leader change may be applied twice: commands should be idempotent or
    /// carry an id the app deduplicates.
    pub async fn write(&self, cmd: A::Command) -> Result<A::Response, WriteError> {
        // Measured (and an oversized command refused) once, before it is forwarded or batched.
        let bytes = crate::batch::check_command_size(&cmd)?;
        let started = Instant::now();
        let deadline = started + self.inner.write_timeout;
        let result = self
            .via_leader(
                deadline,
                |deadline| {
                    let cmd = cmd.clone();
                    async move {
                        self.write_here(cmd, bytes, deadline)
                            .await
                            .map_err(write_attempt)
                    }
                },
                |leader_id, addr, deadline| {
                    let cmd = &cmd;
                    async move { self.forward_write(cmd, leader_id, &addr, deadline).await }
                },
            )
            .await;
        result.map_err(|o| self.settle("write", started, o))
    }

    /// Propose `cmd` (of `bytes` encoded bytes, from `check_command_size`) on this node, which
    /// must be the leader; bounded by `deadline`. The command shares a Raft entry with whatever
    /// else is proposed meanwhile (see `batch`).
    pub(crate) async fn write_here(
        &self,
        cmd: A::Command,
        bytes: usize,
        deadline: Instant,
    ) -> Result<A::Response, WriteError> {
        let waited = deadline.saturating_duration_since(Instant::now());
        let timed_out =
            || WriteError::NoQuorum(format!("not committed within {:.1}s", waited.as_secs_f64()));
        let answer =
            match tokio::time::timeout_at(deadline, self.inner.batcher.submit(cmd, bytes)).await {
                Err(_) => return Err(timed_out()),
                Ok(submitted) => submitted?,
            };
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(timed_out()),
            Ok(Err(_)) => Err(WriteError::Fatal("the raft node has stopped".into())),
            Ok(Ok(result)) => result,
        }
    }

    async fn forward_write(
        &self,
        cmd: &A::Command,
        leader_id: NodeId,
        addr: &str,
        deadline: Instant,
    ) -> Result<A::Response, Attempt<WriteError>> {
        let (leader_budget, rpc_timeout) = forward_budget(deadline);
        let req = ForwardRequest {
            cmd,
            timeout_ms: leader_budget.as_millis() as u64,
        };
        let reply: Result<Result<A::Response, WriteError>, CallError> = self
            .inner
            .peers
            .call(addr, Method::Forward, &req, rpc_timeout)
            .await;
        remote_attempt(reply, leader_id, addr)
    }

    /// Wait until this node can serve a linearizable read: the leader has confirmed its
    /// leadership with a quorum after this call began, and this node has applied everything the
    /// leader had committed by then. On a follower the leader is asked for its read index over
    /// the peer RPC. Bounded by `write_timeout` ([`WriteError::NoQuorum`] when it runs out).
    pub async fn linearizable_barrier(&self) -> Result<(), WriteError> {
        if self.inner.planted.stale_follower_reads
            && self.metrics().current_leader != Some(self.inner.node_id)
        {
            // PLANTED BUG: a follower reads its own applied state as if it were up to date.
            return Ok(());
        }
        let started = Instant::now();
        let deadline = started + self.inner.write_timeout;
        let read_index = self
            .via_leader(
                deadline,
                |deadline| async move {
                    self.read_index_here(deadline)
                        .await
                        .map_err(write_attempt)
                },
                |leader_id, addr, deadline| async move {
                    let (leader_budget, rpc_timeout) = forward_budget(deadline);
                    let req = ReadIndexRequest {
                        timeout_ms: leader_budget.as_millis() as u64,
                    };
                    let reply = self
                        .inner
                        .peers
                        .call(&addr, Method::ReadIndex, &req, rpc_timeout)
                        .await;
                    remote_attempt(reply, leader_id, &addr)
                },
            )
            .await
            .map_err(|o| self.settle("linearizable read barrier", started, o))?;
        self.wait_applied(read_index, deadline).await
    }

    /// The leader's read index: the log index a linearizable read must see applied. This node
    /// must be the leader; it confirms that with a quorum first.
    pub(crate) async fn read_index_here(
        &self,
        deadline: Instant,
    ) -> Result<Option<u64>, WriteError> {
        let waited = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout_at(deadline, self.inner.raft.get_read_log_id()).await {
            Err(_) => Err(WriteError::NoQuorum(format!(
                "leadership not confirmed by a quorum within {:.1}s",
                waited.as_secs_f64()
            ))),
            Ok(Ok((read_log_id, _applied))) => {
                // openraft's read log id is max(committed, this term's first entry). A leader
                // restored at restart (openraft 0.9 restores a leader whose vote was committed)
                // knows only the committed index its state machine kept, which may be below
                // entries it had committed and acknowledged before it stopped: its own later
                // entries of this term are the floor too. Every entry in a leader's log is
                // committed by it in time, so waiting for them is safe.
                let last = self.metrics().last_log_index;
                Ok(read_log_id.map(|l| l.index).max(last))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(WriteError::not_leader(f))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                Err(WriteError::NoQuorum(q.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(WriteError::Fatal(f.to_string())),
        }
    }

    /// Wait (until `deadline`) for this node to have applied `index`.
    async fn wait_applied(&self, index: Option<u64>, deadline: Instant) -> Result<(), WriteError> {
        let Some(index) = index else { return Ok(()) };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match self
            .inner
            .raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "apply up to the read index")
            .await
        {
            Ok(_) => Ok(()),
            Err(WaitError::Timeout(..)) => {
                let applied = self.metrics().last_applied.map(|l| l.index);
                Err(WriteError::NoQuorum(format!(
                    "node {} has applied up to {applied:?} but the read needs index {index}: \
                     not caught up in time",
                    self.inner.node_id
                )))
            }
            Err(WaitError::ShuttingDown) => Err(WriteError::Fatal(format!(
                "raft node {} is shutting down",
                self.inner.node_id
            ))),
        }
    }

    /// Run a request on the leader: `local` when this node is the leader, `remote` (with the
    /// leader's id and address) otherwise. Retries across leader changes until `deadline` or
    /// [`LEADER_ATTEMPTS_MAX`] attempts; each attempt is itself cut off at `deadline`.
    pub(crate) async fn via_leader<T, E, L, LF, R, RF>(
        &self,
        deadline: Instant,
        mut local: L,
        mut remote: R,
    ) -> Result<T, Outcome<E>>
    where
        E: From<WriteError>,
        L: FnMut(Instant) -> LF,
        LF: Future<Output = Result<T, Attempt<E>>>,
        R: FnMut(NodeId, String, Instant) -> RF,
        RF: Future<Output = Result<T, Attempt<E>>>,
    {
        let mut problem = String::from("no leader known");
        for _ in 0..LEADER_ATTEMPTS_MAX {
            let route = match self.route(deadline).await {
                Ok(route) => route,
                Err(RouteError::Fatal(m)) => return Err(Outcome::Fatal(m)),
                Err(RouteError::NoLeader) => {
                    return Err(Outcome::GaveUp(format!("no leader known ({problem})")))
                }
            };
            let (tried, attempt) = match route {
                Route::Local => {
                    let attempt = tokio::time::timeout_at(deadline, local(deadline)).await;
                    let attempt = attempt.unwrap_or_else(|_| {
                        Err(Attempt::Retry(
                            "this node (the leader) did not finish in time".to_string(),
                        ))
                    });
                    (self.inner.node_id, attempt)
                }
                Route::Remote { leader_id, addr } => {
                    let what = format!("leader node {leader_id} at {addr} did not answer in time");
                    let attempt =
                        tokio::time::timeout_at(deadline, remote(leader_id, addr, deadline)).await;
                    (
                        leader_id,
                        attempt.unwrap_or_else(|_| Err(Attempt::Retry(what))),
                    )
                }
            };
            match attempt {
                Ok(value) => return Ok(value),
                Err(Attempt::Final(e)) => return Err(Outcome::Final(e)),
                Err(Attempt::Retry(p)) => problem = p,
            }
            if Instant::now() >= deadline {
                break;
            }
            self.await_leader_change(Some(tried), deadline).await;
        }
        Err(Outcome::GaveUp(problem))
    }

    /// The leader to send requests to; waits until `deadline` for one to be known.
    pub(crate) async fn route(&self, deadline: Instant) -> Result<Route, RouteError> {
        let mut rx = self.inner.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if let Err(e) = &m.running_state {
                    return Err(RouteError::Fatal(e.to_string()));
                }
                if let Some(leader_id) = m.current_leader {
                    if leader_id == self.inner.node_id {
                        // After a restart the metrics name the leader of this node's last
                        // committed vote (maybe itself) before any leader is heard from.
                        if m.state == openraft::ServerState::Leader {
                            return Ok(Route::Local);
                        }
                    } else if let Some(node) = m.membership_config.membership().get_node(&leader_id)
                    {
                        return Ok(Route::Remote {
                            leader_id,
                            addr: node.addr.clone(),
                        });
                    }
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    return Err(RouteError::Fatal(format!(
                        "raft node {} has stopped",
                        self.inner.node_id
                    )))
                }
                Err(_) => return Err(RouteError::NoLeader),
            }
        }
    }

    /// Wait until the known leader is no longer `tried`, for at most [`LEADER_RETRY_PAUSE_MAX`]
    /// (and not past `deadline`).
    async fn await_leader_change(&self, tried: Option<NodeId>, deadline: Instant) {
        let until = deadline.min(Instant::now() + LEADER_RETRY_PAUSE_MAX);
        let mut rx = self.inner.raft.metrics();
        loop {
            if rx.borrow_and_update().current_leader != tried {
                return;
            }
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return,
            }
        }
    }

    /// Turn a failed request that needed the leader into the caller's error.
    pub(crate) fn settle(
        &self,
        what: &str,
        started: Instant,
        outcome: Outcome<WriteError>,
    ) -> WriteError {
        match outcome {
            Outcome::Final(e) => e,
            Outcome::Fatal(m) => WriteError::Fatal(m),
            Outcome::GaveUp(problem) => {
                WriteError::NoQuorum(self.no_quorum_message(what, started.elapsed(), &problem))
            }
        }
    }

    /// "`what` not done within ..: `problem`; k of n voters reachable ...": what this node knows
    /// about which voters answered recently.
    pub(crate) fn no_quorum_message(&self, what: &str, waited: Duration, problem: &str) -> String {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let mut reachable = Vec::new();
        let mut unreachable = Vec::new();
        for v in &voters {
            if *v == self.inner.node_id {
                reachable.push(format!("node {v} (this node)"));
                continue;
            }
            let addr = membership
                .get_node(v)
                .map(|n| n.addr.clone())
                .unwrap_or_default();
            match self.inner.peers.reachability(&addr) {
                Ok(()) => reachable.push(format!("node {v}")),
                Err(e) => unreachable.push(format!("node {v} at {addr}: {e}")),
            }
        }
        let mut msg = format!(
            "{what} not done within {:.1}s: {problem}; {} of {} voters reachable from node {} \
             ({})",
            waited.as_secs_f64(),
            reachable.len(),
            voters.len(),
            self.inner.node_id,
            reachable.join(", ")
        );
        if !unreachable.is_empty() {
            msg.push_str("; unreachable: ");
            msg.push_str(&unreachable.join("; "));
        }
        msg
    }

    /// The state store, unless the node has been shut down.
    fn state_store(&self) -> anyhow::Result<StateMachineStore<A>> {
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
        Ok(state)
    }

    /// Run `f` against the app and a read txn of the state env (reads see only applied state).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&A, &heed::RoTxn<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.state_store()?.read(f)
    }

    /// Run `f` against applied state and return it with the index of the last entry that state
    /// includes, both from one read transaction (see [`StateMachineStore::read_applied`]). For
    /// comparing nodes at equal applied index (the simulator's digest check).
    pub fn read_applied<T>(
        &self,
        f: impl FnOnce(&A, &heed::RoTxn<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<(Option<u64>, T)> {
        self.state_store()?.read_applied(f)
    }

    /// PLANTED BUG (test only, feature `planted-bugs`; see
    /// [`StateMachineStore::apply_without_consensus`]): apply `cmd` to this node's own state
    /// machine, skipping the leader and the log.
    #[cfg(feature = "planted-bugs")]
    pub fn apply_without_consensus(&self, cmd: &A::Command) -> anyhow::Result<A::Response> {
        self.state_store()?.apply_without_consensus(cmd)
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

    /// Resolves once this node's consensus has stopped on its own (a storage error it cannot
    /// get past, a panic of its core), with what stopped it; pending while it runs. A node in
    /// that state answers nothing correctly any more: the caller stops serving. Looks every
    /// [`FAULT_CHECK_INTERVAL`] rather than on every metrics change, which would wake it several
    /// times per write.
    pub async fn stopped_by_fault(&self) -> String {
        let rx = self.inner.raft.metrics();
        let mut every = tokio::time::interval(FAULT_CHECK_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = &rx.borrow().running_state {
                return e.to_string();
            }
            if rx.has_changed().is_err() {
                return "its Raft core task ended".to_string();
            }
        }
    }

    /// The number of snapshot builds that have failed since the node started, as it changes. A
    /// failed build is logged and tried again after [`RaftNodeConfig::snapshot_retry_pause`];
    /// the node keeps applying, and its log is not purged past the snapshot it still has.
    pub fn snapshot_build_failures(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.snapshot_build_failures.clone()
    }

    /// Whether the state env's last commit may not survive a power loss yet: its meta page is
    /// not synced (decision 0012). True means a power loss now would take the last applied batch
    /// back (the Raft log still has it). For a test harness's disk model; valid after shutdown.
    pub fn state_last_commit_unsynced(&self) -> bool {
        self.inner
            .state_unsynced
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn raft(&self) -> &Raft<TypeConfig<A>> {
        &self.inner.raft
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Advertised address of this node's peer listener (`cfg.addr`).
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Stop the peer server and Raft and release the storage. After it returns the data dir
    /// (and the peer listener's port) can be used again in this process. Idempotent; reads and
    /// writes fail afterwards.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        let node_id = self.inner.node_id;
        // Stop accepting peer connections first; in-flight RPCs fail fast once Raft is down.
        let server = self.lock_server().take();
        let server_task = server.map(PeerServer::stop);
        let raft_result = self.inner.raft.shutdown().await;
        if let Some(task) = server_task {
            crate::server::join(node_id, task, PEER_SERVER_STOP_TIMEOUT).await;
        }
        raft_result.map_err(|e| anyhow::anyhow!("raft core task of node {node_id} failed: {e}"))?;
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

/// A task that stops when its handle is dropped (with the node it works for).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every `period`, while this node leads, has openraft send a heartbeat to every follower
/// (openraft's own are off: see [`REPLICATION_TIMEOUT_HEARTBEATS`]). Ends when Raft stops.
async fn send_heartbeats<A: App>(raft: openraft::Raft<TypeConfig<A>>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !raft.metrics().borrow().state.is_leader() {
            continue;
        }
        if raft.trigger().heartbeat().await.is_err() {
            return;
        }
    }
}

/// How often [`RaftNode::stopped_by_fault`] looks at the Raft core.
pub const FAULT_CHECK_INTERVAL: Duration = Duration::from_millis(200);

pub(crate) enum RouteError {
    NoLeader,
    Fatal(String),
}

/// For a request forwarded to the leader with `deadline`: the time budget the leader gets (a
/// little less, so its answer arrives first) and the RPC's own timeout.
pub(crate) fn forward_budget(deadline: Instant) -> (Duration, Duration) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    (remaining.saturating_sub(REPLY_MARGIN), remaining)
}

/// Classify a local [`WriteError`] as an attempt: a leader change is retried, the rest settles.
pub(crate) fn write_attempt(e: WriteError) -> Attempt<WriteError> {
    match e {
        WriteError::NotLeader { .. } => Attempt::Retry(e.to_string()),
        // Quorum trouble may be a leader change in progress: try again until the deadline.
        WriteError::NoQuorum(m) => Attempt::Retry(m),
        e @ (WriteError::Fatal(_)
        | WriteError::Unreachable { .. }
        | WriteError::TooLarge { .. }) => Attempt::Final(e),
    }
}

/// Classify the reply to a request forwarded to leader `leader_id` at `addr`.
pub(crate) fn remote_attempt<T>(
    reply: Result<Result<T, WriteError>, CallError>,
    leader_id: NodeId,
    addr: &str,
) -> Result<T, Attempt<WriteError>> {
    match reply {
        Ok(Ok(value)) => Ok(value),
        // The leader ran out of the time we gave it: its explanation is the answer.
        Ok(Err(WriteError::NoQuorum(m))) => Err(Attempt::Final(WriteError::NoQuorum(format!(
            "leader node {leader_id}: {m}"
        )))),
        // It is no longer the leader, is shutting down, or could not reach someone itself.
        Ok(Err(e)) => Err(Attempt::Retry(format!(
            "leader node {leader_id} at {addr}: {e}"
        ))),
        Err(CallError::Failed(detail)) => Err(Attempt::Final(WriteError::Fatal(format!(
            "leader node {leader_id} at {addr} refused the request: {detail}"
        )))),
        Err(e) => Err(Attempt::Retry(format!(
            "cannot reach leader node {leader_id} at {addr}: {}",
            e.detail()
        ))),
    }
}
