//! Consensus glue for Quiver: openraft over LMDB (heed), generic over the application's state
//! machine.
//!
//! The registry (`quiver-node`) knows nothing about Raft internals: it implements [`App`] (open
//! its databases, apply one command, export/import its whole state) and talks to a [`RaftNode`].
//! Everything Raft needs to be durable lives here:
//!
//! - [`LogStore`] (`log_store.rs`): the Raft log and vote, an append-only file of checksummed
//!   records in segments (`DIR/log`), fdatasynced on every write, because a vote or an acknowledged entry that is lost
//!   on power failure breaks Raft's safety argument.
//! - [`LogDisk`] (`durability.rs`): the seam through which a test harness (the simulator's disk
//!   model) hears of every log write, and can plant a skipped fsync. Production has none.
//! - [`StateMachineStore`] (`state_store.rs`): the applied state in a second environment
//!   (`DIR/state`). The app's tables and Raft's `last_applied` are written in the *same*
//!   transaction, so after a crash the state is exactly "all entries up to `last_applied`", never
//!   half of a batch. Snapshots are the app's export plus that metadata.
//! - [`open_storage`] (`storage.rs`): both stores under one data dir.
//! - [`RaftNode`] (`node.rs`): the handle the node crate uses: start/resume, write, linearizable
//!   barrier, reads against applied state, shutdown. On a follower, writes and barriers are
//!   forwarded to the leader.
//! - `cluster.rs`: joining, adding and removing members, leadership transfer, cluster status.
//! - The peer RPC: every request a node sends to another (openraft's AppendEntries, Vote and
//!   InstallSnapshot through `PeerNetwork` in `network.rs`; forwarding, read index, membership,
//!   status and leadership transfer) goes through one seam, [`PeerTransport`] (`transport.rs`),
//!   and is served by [`RaftNode::handle_peer`] (`handler.rs`). The messages, [`WriteError`] and
//!   [`PeerRefusal`] are in `rpc.rs`, which both sides use and which uses neither. Production's
//!   transport is gRPC (`proto/quiver/raft/v1/peer.proto`, generated into [`proto`]; a cached
//!   tonic channel per peer; served by `server.rs`); the simulator carries the same bytes through
//!   its network. Peers authenticate each other with mutual TLS (`tls.rs`, [`PeerTls`]).
//! - [`QuiverRuntime`] (`runtime.rs`): openraft's async runtime — tokio, with an election-timeout
//!   RNG that is entropy-seeded per thread and can be re-seeded ([`seed_thread_rng`]) so the
//!   simulator's runs are a function of their seed.
//!
//! The log is not in LMDB (decision 0011): it is written in order and needs no B-tree, and one
//! fdatasync of pre-written space per append costs a fraction of an LMDB commit's two.
//!
//! All storage work is done inline on the calling task, not on `spawn_blocking`: transactions are
//! short, and keeping I/O on the task keeps a `current_thread` runtime (the simulator's) in
//! control of ordering.

// openraft's storage traits fix the error type to `StorageError` (~224 bytes); our helpers return
// it unboxed so `?` flows straight into the trait methods. Storage errors are rare and fatal.
#![allow(clippy::result_large_err)]

mod batch;
mod cluster;
mod durability;
mod handler;
mod log_store;
mod network;
mod node;
mod rpc;
mod runtime;
mod server;
mod snapshot_data;
mod state_store;
mod storage;
mod tls;
mod transport;

/// The generated peer RPC code (`proto/quiver/raft/v1/peer.proto`). Not a public API: exposed for
/// tests that talk to a node's peer port directly.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("quiver.raft.v1");
}

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

pub use heed;
pub use openraft;

pub use batch::{BATCHES_IN_FLIGHT_MAX, BATCH_BYTES_MAX, COMMAND_BYTES_MAX, WRITE_BATCH_MAX};
pub use cluster::{
    ClusterStatus, MemberStatus, MembershipError, JOIN_SETTLE_TIMEOUT, JOIN_TIMEOUT,
    LEADER_TRANSFER_TIMEOUT, MEMBERSHIP_CHANGE_TIMEOUT, STATUS_TIMEOUT,
};
pub use durability::{LogDisk, LogDiskHandle};
pub use log_store::{LogOptions, LogStore, FILL_STEP_BYTES, SEGMENT_BYTES_TARGET_DEFAULT};
pub use network::{APPEND_ENTRIES_BYTES_MAX, PEER_BACKOFF_MAX, PEER_BACKOFF_MIN};
pub use node::{
    PlantedRaftBugs, RaftNode, RaftNodeConfig, ELECTION_TIMEOUT_MAX_MS, ELECTION_TIMEOUT_MIN_MS,
    HEARTBEAT_INTERVAL_MS, HEARTBEAT_MS_RANGE, INSTALL_SNAPSHOT_TIMEOUT_MS, LEADER_ATTEMPTS_MAX,
    LEADER_RETRY_PAUSE_MAX, LOGS_TO_KEEP_AFTER_SNAPSHOT_DEFAULT, PEER_SERVER_STOP_TIMEOUT,
    PURGE_BATCH_SIZE_MAX, REPLICATION_TIMEOUT_HEARTBEATS, SNAPSHOT_LOGS_SINCE_LAST_DEFAULT,
    STORAGE_RELEASE_TIMEOUT, WRITE_TIMEOUT_DEFAULT,
};
pub use rpc::{PeerRefusal, WriteError};
pub use runtime::{seed_thread_rng, QuiverRuntime, ThreadRaftRng};
pub use server::{
    tls_incoming, tls_incoming_from, TlsIncoming, PEER_HANDSHAKES_MAX, PEER_HANDSHAKE_TIMEOUT,
};
pub use snapshot_data::SnapshotData;
pub use state_store::{
    StateMachineStore, SNAPSHOT_FILE_NAME, SNAPSHOT_RETRY_PAUSE_DEFAULT, SNAPSHOT_SIZE_BYTES_MAX,
    STATE_MAP_SIZE_BYTES,
};
pub use storage::{open_storage, open_storage_with};
pub use tls::{PeerGate, PeerIdentity, PeerTls, ALPN_H2, ALPN_HTTP1, PEER_TLS_SERVER_NAME};
pub use transport::{
    Body, CallError, Method, PeerCall, PeerTransport, PEER_CONNECT_TIMEOUT,
    PEER_HTTP2_WINDOW_BYTES, PEER_KEEPALIVE_INTERVAL, PEER_MESSAGE_SIZE_MAX_BYTES,
    PEER_REACHABLE_WINDOW, SNAPSHOT_CHUNK_SIZE_BYTES,
};

/// Raft node identifier, unique within a cluster and never reused.
pub type NodeId = u64;

/// Name of the log's directory under the node's data dir.
pub const LOG_DIR_NAME: &str = "log";
/// Name of the state-machine environment's directory under the node's data dir.
pub const STATE_DIR_NAME: &str = "state";
/// Reader slots per environment. Without `MDB_NOTLS` every OS thread that has ever read holds a
/// slot until it exits, so this must exceed the threads that may call `RaftNode::read`: tokio's
/// workers plus its blocking pool (512 by default). LMDB's default of 126 does not.
pub const ENV_MAX_READERS: u32 = 1024;

/// The application's state machine, applied by the raft crate inside the state env's write
/// transaction.
pub trait App: Send + Sync + Sized + 'static {
    type Command: Clone
        + fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static;
    type Response: Clone
        + fmt::Debug
        + Default
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static;
    /// How many named LMDB databases the app opens in the state env.
    const MAX_DBS: u32;
    /// Create/open the app's databases. Called once per process start.
    ///
    /// The app must not keep a clone of `env`: the raft crate closes the environment on shutdown
    /// and a retained clone would keep it open (and block a restart in the same process).
    fn open(env: &heed::Env, wtxn: &mut heed::RwTxn<'_>) -> anyhow::Result<Self>;
    /// Apply one committed command. Pure function of (state, command): no clock, no randomness,
    /// no I/O except this txn. Domain rejections are encoded in Response; Err only for storage
    /// failure.
    fn apply(
        &self,
        wtxn: &mut heed::RwTxn<'_>,
        log_index: u64,
        cmd: &Self::Command,
    ) -> anyhow::Result<Self::Response>;
    /// Serialise the whole app state deterministically into `out` (a snapshot's body). Write it
    /// as it is read, in pieces: the state may be larger than memory. `out` goes to a file.
    fn export(&self, rtxn: &heed::RoTxn<'_>, out: &mut dyn std::io::Write) -> anyhow::Result<()>;
    /// Replace the whole app state with what `export` wrote, read from `data` in pieces (it
    /// comes from a file, and ends where the export ended). The bytes passed a checksum before
    /// this is called; an error drops the transaction, so a refused import leaves no trace.
    fn import(
        &self,
        wtxn: &mut heed::RwTxn<'_>,
        data: &mut dyn std::io::Read,
    ) -> anyhow::Result<()>;
}

/// openraft type configuration for an [`App`].
///
/// Written by hand rather than with `declare_raft_types!` because it is generic over `A`, and
/// the derives openraft requires (`Copy`, `Ord`, ...) must not demand them of `A`.
pub struct TypeConfig<A>(PhantomData<A>);

impl<A> fmt::Debug for TypeConfig<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypeConfig")
    }
}
impl<A> Clone for TypeConfig<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for TypeConfig<A> {}
impl<A> Default for TypeConfig<A> {
    fn default() -> Self {
        TypeConfig(PhantomData)
    }
}
impl<A> PartialEq for TypeConfig<A> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<A> Eq for TypeConfig<A> {}
impl<A> PartialOrd for TypeConfig<A> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<A> Ord for TypeConfig<A> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<A: App> openraft::RaftTypeConfig for TypeConfig<A> {
    /// A batch of commands: concurrent writes share one entry (see `batch`).
    type D = Vec<A::Command>;
    /// One response per command of the batch, in order.
    type R = Vec<A::Response>;
    type NodeId = NodeId;
    type Node = openraft::BasicNode;
    type Entry = openraft::Entry<Self>;
    /// A file in the state directory (see `snapshot_data.rs`): snapshots are never whole in
    /// memory.
    type SnapshotData = SnapshotData;
    type AsyncRuntime = QuiverRuntime;
    type Responder = openraft::impls::OneshotResponder<Self>;
}

/// Runs blocking storage work (an LMDB commit with its fsync) from async code. On a
/// multi-threaded runtime through `block_in_place`, so that the worker's other tasks move to
/// another thread meanwhile: without it, a task the blocked worker had just woken (openraft's
/// core, woken by the state machine worker) waits in that worker's LIFO slot for the whole
/// fsync, and client writes end up serialised one sync at a time. Inline on a current-thread
/// runtime (the simulator), where nothing else could run anyway.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Held next to every open LMDB environment of one node. It carries no data: its only job is to
/// be dropped together with the environment, so that [`EnvsReleased`] learns when the last one
/// is closed.
#[derive(Clone)]
pub(crate) struct EnvLease {
    _tx: tokio::sync::mpsc::Sender<()>,
}

/// Resolves once every [`EnvLease`] of the same pair has been dropped.
pub(crate) struct EnvsReleased {
    rx: tokio::sync::mpsc::Receiver<()>,
}

impl EnvsReleased {
    /// Wait until all environments are closed. Nothing is ever sent on the channel; `recv`
    /// returns `None` exactly when the last sender (lease) is dropped.
    pub(crate) async fn wait(mut self) {
        while self.rx.recv().await.is_some() {}
    }
}

fn env_lease() -> (EnvLease, EnvsReleased) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    (EnvLease { _tx: tx }, EnvsReleased { rx })
}

/// Convert a library error into openraft's error payload, saying what was being done.
fn any_error(e: &(impl std::error::Error + 'static), doing: &str) -> openraft::AnyError {
    openraft::AnyError::new(e).add_context(|| doing.to_string())
}

/// Same for an app error (`anyhow`), keeping its whole context chain.
fn app_error(e: &anyhow::Error, doing: &str) -> openraft::AnyError {
    openraft::AnyError::error(format!("{doing}: {e:#}"))
}

/// Open an LMDB environment (the state's, or an old log's to migrate it) with `flags`.
fn open_env(
    path: &Path,
    map_size_bytes: usize,
    max_dbs: u32,
    flags: heed::EnvFlags,
) -> anyhow::Result<heed::Env> {
    use anyhow::Context as _;
    std::fs::create_dir_all(path)
        .with_context(|| format!("create LMDB directory {}", path.display()))?;
    // SAFETY: heed requires that the environment is not opened twice in one process (it checks
    // and returns `EnvAlreadyOpened`) and that the files are not modified by anything but LMDB.
    // No flags are set: in particular not NO_SYNC / NO_META_SYNC, so each commit is durable.
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .flags(flags)
            .map_size(map_size_bytes)
            .max_dbs(max_dbs)
            .max_readers(ENV_MAX_READERS)
            .open(path)
    }
    .with_context(|| format!("open LMDB environment {}", path.display()))?;
    Ok(env)
}
