//! The applied state: the app's databases plus Raft's bookkeeping, in one LMDB environment
//! (`DIR/state`), and the current snapshot beside it.
//!
//! Why this shape:
//! - A batch of committed entries is applied in ONE write transaction that also records
//!   `last_applied` and the last membership. Either the whole batch is visible after a crash or
//!   none of it is, and `last_applied` always describes exactly the state on disk. Openraft then
//!   re-applies anything after `last_applied` from the log once it learns the commit index.
//! - Commits are made with `MDB_NOMETASYNC` (decision 0012): one fsync (the data pages) instead
//!   of two; the meta page that makes a commit current is written but synced only by the next
//!   commit or an explicit sync. A power loss can therefore take back the last applied batch,
//!   never corrupt the environment and never more than that batch. Nothing is lost with it: the
//!   entries are in the Raft log, which is synced before they are committed, and are applied
//!   again. The two places that let the log forget entries sync first: a snapshot is built only
//!   from a view that is synced (the log is purged up to it afterwards), and an installed snapshot
//!   is synced before install returns (openraft then drops the log behind it).
//! - An app error in `apply` aborts the transaction and is reported as a storage error, which
//!   stops the Raft node: a command the app cannot apply means this node's state can no longer
//!   follow the log, and continuing would diverge from its peers.
//! - A snapshot is `{header (last_applied, membership), App::export bytes}` in a small binary
//!   frame (magic, header and body lengths, blake3 of both, JSON header, raw app bytes) so the
//!   app's bytes are not re-encoded, and so that bytes damaged on a disk or on the way are
//!   refused before anything is imported: an app cannot tell a changed byte inside its own
//!   export from a real value, and a row it cannot decode later would stop Raft. It is built from an LMDB read transaction, i.e. a consistent view taken while
//!   `apply` keeps running (openraft builds snapshots concurrently with applying).
//! - A snapshot build that fails (export, sync, writing the file) is logged and is not an error
//!   to openraft, which would stop the Raft core for it: the build answers with the current
//!   snapshot's meta, which openraft ignores as not newer (no purge), and the next build is tried
//!   after [`SNAPSHOT_RETRY_PAUSE_DEFAULT`] (`build_or_keep_current`).
//! - The current snapshot is also kept as a file (`DIR/state/current.snapshot`, written to a
//!   temp file, fsynced, renamed, directory fsynced) so `get_current_snapshot` survives a restart
//!   and a leader can still feed a follower whose entries were already purged. The file only ever
//!   moves forward (guarded by the cached meta of the file on disk).
//! - Sizes are bounded: a snapshot larger than [`SNAPSHOT_SIZE_BYTES_MAX`] is refused when built,
//!   received, or read back, rather than exhausting memory (snapshots live in a `Vec<u8>`).

use std::fs::File;
use std::io::{Cursor, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use heed::types::{Bytes, Str};
use heed::{Database, Env, RoTxn, RwTxn};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{any_error, app_error, open_env, App, EnvLease, NodeId, TypeConfig};

/// Map size of the state environment: address space reserved, not disk used (see the log's).
pub const STATE_MAP_SIZE_BYTES: usize = 64 << 30;
/// Largest snapshot (app export plus header) this node builds, accepts or loads. Snapshots are
/// held in memory whole, so this is also a memory bound.
pub const SNAPSHOT_SIZE_BYTES_MAX: usize = 2 << 30;
/// How long after a failed snapshot build the next one is tried (builds asked for meanwhile keep
/// the current snapshot). Long enough that a full or failing disk is not made to write an
/// export after every commit; short next to the time a log takes to grow a snapshot interval.
pub const SNAPSHOT_RETRY_PAUSE_DEFAULT: Duration = Duration::from_secs(30);
/// Largest snapshot header / snapshot-file meta (log ids and membership: a few KiB in practice).
const SNAPSHOT_HEADER_SIZE_BYTES_MAX: usize = 1 << 20;
/// File name of the current snapshot inside the state directory.
pub const SNAPSHOT_FILE_NAME: &str = "current.snapshot";
const SNAPSHOT_TMP_FILE_NAME: &str = "current.snapshot.tmp";
/// Magic of the snapshot data that travels between nodes (and is kept in the snapshot file).
const SNAPSHOT_DATA_MAGIC: &[u8; 8] = b"QVRSNAP2";
/// Magic of the first snapshot data format, the same frame without the checksum: still read (a
/// current snapshot file an older build left), never written.
const SNAPSHOT_DATA_MAGIC_UNCHECKED: &[u8; 8] = b"QVRSNAP1";
/// Magic of the on-disk current-snapshot file (meta + snapshot data).
const SNAPSHOT_FILE_MAGIC: &[u8; 8] = b"QVRSFIL1";
/// Magic plus two u64 lengths.
const FRAME_PREFIX_SIZE_BYTES: usize = 24;
/// The blake3 of header and body that follows the prefix.
const FRAME_CHECKSUM_SIZE_BYTES: usize = 32;

/// Databases the raft crate itself opens in the state env (`meta`).
const STATE_OWN_DBS: u32 = 1;
const META_DB_NAME: &str = "raft_meta";
const LAST_APPLIED_KEY: &str = "last_applied";
const LAST_MEMBERSHIP_KEY: &str = "last_membership";

type MetaDb = Database<Str, Bytes>;
type Membership = StoredMembership<NodeId, BasicNode>;
type Meta = SnapshotMeta<NodeId, BasicNode>;
type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// What a snapshot says about Raft, in front of the app's bytes.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
}

struct StateDb<A> {
    // Field order matters: the environment is closed before the lease is released.
    env: Env,
    meta: MetaDb,
    app: A,
    dir: PathBuf,
    /// Meta of the snapshot file on disk; the lock also serialises writers of that file.
    current_snapshot: Mutex<Option<Meta>>,
    /// Whether the last commit's meta page may not be synced yet (see the module docs): a
    /// power loss now could take that commit back. Shared with the node, which outlives the env,
    /// so a test harness can ask after shutdown.
    unsynced: Arc<AtomicBool>,
    /// Failed snapshot builds, and when the last one failed (see [`BuildRetry`]).
    build_retry: Mutex<BuildRetry>,
    /// How many snapshot builds have failed since the store was opened.
    build_failures: tokio::sync::watch::Sender<u64>,
    _lease: EnvLease,
}

/// A failed snapshot build is not retried before `pause` has passed since it failed: openraft
/// asks for a new build after every commit while its policy says one is due, and a disk that is
/// full or failing would otherwise be made to write a whole export each time.
struct BuildRetry {
    pause: Duration,
    failed_at: Option<tokio::time::Instant>,
}

/// Raft state machine storage (`RaftStateMachine` + `RaftSnapshotBuilder`) over heed. Cheap to
/// clone; clones share the environment and the app.
pub struct StateMachineStore<A> {
    db: Arc<StateDb<A>>,
    _app: PhantomData<fn() -> A>,
}

impl<A> Clone for StateMachineStore<A> {
    fn clone(&self) -> Self {
        StateMachineStore {
            db: self.db.clone(),
            _app: PhantomData,
        }
    }
}

impl<A: App> StateMachineStore<A> {
    pub(crate) fn open(dir: &Path, lease: EnvLease) -> anyhow::Result<Self> {
        let env = open_env(
            dir,
            STATE_MAP_SIZE_BYTES,
            A::MAX_DBS + STATE_OWN_DBS,
            heed::EnvFlags::NO_META_SYNC,
        )?;
        let mut wtxn = env
            .write_txn()
            .context("begin txn to open state databases")?;
        let meta = env
            .create_database(&mut wtxn, Some(META_DB_NAME))
            .context("create raft meta database in state env")?;
        let app = A::open(&env, &mut wtxn).context("open app databases in state env")?;
        wtxn.commit().context("commit state database creation")?;
        // Start from a synced environment (the creation above may have written a meta page).
        env.force_sync().context("sync the state env")?;

        // A temp file is what a crash in the middle of writing a snapshot leaves behind.
        let tmp = dir.join(SNAPSHOT_TMP_FILE_NAME);
        if tmp.exists() {
            std::fs::remove_file(&tmp)
                .with_context(|| format!("remove stale snapshot temp file {}", tmp.display()))?;
        }
        let current = read_snapshot_file(&dir.join(SNAPSHOT_FILE_NAME), false)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("load current snapshot meta from {}", dir.display()))?
            .map(|(meta, _)| meta);

        Ok(StateMachineStore {
            db: Arc::new(StateDb {
                env,
                meta,
                app,
                dir: dir.to_path_buf(),
                unsynced: Arc::new(AtomicBool::new(false)),
                current_snapshot: Mutex::new(current),
                build_retry: Mutex::new(BuildRetry {
                    pause: SNAPSHOT_RETRY_PAUSE_DEFAULT,
                    failed_at: None,
                }),
                build_failures: tokio::sync::watch::Sender::new(0),
                _lease: lease,
            }),
            _app: PhantomData,
        })
    }

    /// Run `f` against the app and a read transaction of the state env. Reads see only applied
    /// state (a committed transaction), never a batch in progress.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&A, &RoTxn<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let rtxn = self
            .db
            .env
            .read_txn()
            .context("begin read txn on state env")?;
        f(&self.db.app, &rtxn)
    }

    /// Like [`StateMachineStore::read`], and also returns the index of the last applied entry
    /// as recorded in the *same* read transaction: the state `f` sees is exactly "everything up
    /// to that index". (openraft's metrics report `last_applied` only after the apply
    /// transaction has committed, so pairing them with a separate read can disagree.)
    pub fn read_applied<T>(
        &self,
        f: impl FnOnce(&A, &RoTxn<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<(Option<u64>, T)> {
        let rtxn = self
            .db
            .env
            .read_txn()
            .context("begin read txn on state env")?;
        let (last_applied, _) =
            read_applied(&self.db.meta, &rtxn).map_err(|e| anyhow::anyhow!("{e}"))?;
        let value = f(&self.db.app, &rtxn)?;
        Ok((last_applied.map(|l| l.index), value))
    }

    /// PLANTED BUG (test only, feature `planted-bugs`): apply `cmd` to this node's state machine
    /// in its own write transaction, as if it were the entry after `last_applied`, without it
    /// being in the log and without moving `last_applied`. A follower doing this has applied a
    /// command no other node will ever apply: its state diverges from its peers' at the same
    /// applied index. The simulator plants it to show its digest checker notices.
    #[cfg(feature = "planted-bugs")]
    pub fn apply_without_consensus(&self, cmd: &A::Command) -> anyhow::Result<A::Response> {
        let db = &*self.db;
        let mut wtxn = db.env.write_txn().context("begin unreplicated apply txn")?;
        let (last_applied, _) =
            read_applied(&db.meta, &wtxn).map_err(|e| anyhow::anyhow!("{e}"))?;
        let index = last_applied.map(|l| l.index + 1).unwrap_or(1);
        let response = db
            .app
            .apply(&mut wtxn, index, cmd)
            .context("app apply (unreplicated)")?;
        wtxn.commit().context("commit unreplicated apply txn")?;
        db.unsynced.store(true, Ordering::SeqCst);
        Ok(response)
    }

    /// Sync the environment: every commit so far is durable, its meta page included.
    fn sync(&self) -> heed::Result<()> {
        // Cleared first: a commit racing with the sync sets it again.
        self.db.unsynced.store(false, Ordering::SeqCst);
        let synced = self.db.env.force_sync();
        if synced.is_err() {
            self.db.unsynced.store(true, Ordering::SeqCst);
        }
        synced
    }

    /// The flag telling whether the last commit may not survive a power loss yet (shared; it
    /// outlives the environment).
    pub(crate) fn unsynced_flag(&self) -> Arc<AtomicBool> {
        self.db.unsynced.clone()
    }

    /// How long after a failed snapshot build the next one is attempted.
    pub(crate) fn set_snapshot_retry_pause(&self, pause: Duration) {
        lock(&self.db.build_retry).pause = pause;
    }

    /// The number of failed snapshot builds since the store was opened, as it changes.
    pub fn snapshot_build_failures(&self) -> tokio::sync::watch::Receiver<u64> {
        self.db.build_failures.subscribe()
    }

    /// Build a snapshot, or, if that fails (or a failure is too recent to try again), say that
    /// the current one stays. Never an error: openraft 0.9 stops the Raft core on any error from
    /// its snapshot-building task, and a node that cannot write a snapshot can still apply and
    /// serve; only its log grows until a build succeeds.
    ///
    /// What openraft does with the answer (`Engine::finish_building_snapshot`): it clears its
    /// "building" flag, and only if the returned meta is newer than its own snapshot's does it
    /// take it and purge the log behind it. The current snapshot's meta (or none) is never
    /// newer than a snapshot that is on disk, so nothing is purged that a durable snapshot does
    /// not cover. The data returned is dropped unread (openraft's `sm::Worker::build_snapshot`
    /// keeps only the meta); peers are sent what [`Self::current_snapshot_sync`] reads.
    fn build_or_keep_current(&self) -> Snapshot<TypeConfig<A>> {
        let retry_at = {
            let retry = lock(&self.db.build_retry);
            retry.failed_at.map(|at| at + retry.pause)
        };
        if let Some(retry_at) = retry_at.filter(|&at| tokio::time::Instant::now() < at) {
            let kept = self.unchanged_snapshot();
            tracing::debug!(snapshot = %kept.meta, ?retry_at, "snapshot build skipped: the last one failed");
            return kept;
        }
        match self.build_snapshot_sync() {
            Ok(snapshot) => {
                lock(&self.db.build_retry).failed_at = None;
                snapshot
            }
            Err(error) => {
                let pause = {
                    let mut retry = lock(&self.db.build_retry);
                    retry.failed_at = Some(tokio::time::Instant::now());
                    retry.pause
                };
                self.db.build_failures.send_modify(|n| *n += 1);
                let kept = self.unchanged_snapshot();
                tracing::error!(
                    %error,
                    kept = %kept.meta,
                    ?pause,
                    "snapshot build failed: the current snapshot stays and the log is kept \
                     behind it; the next build is tried after the pause"
                );
                kept
            }
        }
    }

    /// What a build that did not happen returns: the current snapshot's meta, or, with no
    /// snapshot yet, a meta with no log id (older than any snapshot openraft could know), and no
    /// data.
    fn unchanged_snapshot(&self) -> Snapshot<TypeConfig<A>> {
        let current = lock(&self.db.current_snapshot).clone();
        let meta = current.unwrap_or_else(|| Meta {
            last_log_id: None,
            last_membership: self
                .applied_state_sync()
                .map(|(_, membership)| membership)
                .unwrap_or_default(),
            snapshot_id: snapshot_id(None),
        });
        Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        }
    }

    fn applied_state_sync(&self) -> Result<(Option<LogId<NodeId>>, Membership)> {
        let rtxn = self
            .db
            .env
            .read_txn()
            .map_err(|e| StorageIOError::read_state_machine(any_error(&e, "begin read txn")))?;
        let (last_applied, membership) = read_applied(&self.db.meta, &rtxn)?;
        Ok((last_applied, membership))
    }

    fn apply_sync<I>(&self, entries: I) -> Result<Vec<Vec<A::Response>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig<A>>>,
    {
        let db = &*self.db;
        let mut wtxn = db
            .env
            .write_txn()
            .map_err(|e| StorageIOError::write_state_machine(any_error(&e, "begin apply txn")))?;
        let (mut last_applied, mut membership) = read_applied(&db.meta, &wtxn)?;
        let mut responses = Vec::new();
        let mut applied_any = false;
        for entry in entries {
            // openraft applies committed entries in order, each exactly once.
            if last_applied.is_some_and(|l| entry.log_id.index <= l.index) {
                return Err(StorageIOError::apply(
                    entry.log_id,
                    AnyError::error(format!(
                        "entry {} is not after last applied {last_applied:?}",
                        entry.log_id
                    )),
                )
                .into());
            }
            let response = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(cmds) => {
                    let mut batch = Vec::with_capacity(cmds.len());
                    for cmd in cmds {
                        batch.push(db.app.apply(&mut wtxn, entry.log_id.index, cmd).map_err(
                            |e| StorageIOError::apply(entry.log_id, app_error(&e, "app apply")),
                        )?);
                    }
                    batch
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Vec::new()
                }
            };
            responses.push(response);
            last_applied = Some(entry.log_id);
            applied_any = true;
        }
        if !applied_any {
            return Ok(responses);
        }
        put_json(&db.meta, &mut wtxn, LAST_APPLIED_KEY, &last_applied)
            .map_err(StorageIOError::write_state_machine)?;
        put_json(&db.meta, &mut wtxn, LAST_MEMBERSHIP_KEY, &membership)
            .map_err(StorageIOError::write_state_machine)?;
        wtxn.commit()
            .map_err(|e| StorageIOError::write_state_machine(any_error(&e, "commit apply txn")))?;
        db.unsynced.store(true, Ordering::SeqCst);
        Ok(responses)
    }

    fn build_snapshot_sync(&self) -> Result<Snapshot<TypeConfig<A>>> {
        let db = &*self.db;
        let (header, app_bytes) = {
            let rtxn = db.env.read_txn().map_err(|e| {
                StorageIOError::read_state_machine(any_error(&e, "begin snapshot read txn"))
            })?;
            // The log will be purged up to this snapshot: what it shows must survive a power
            // loss. A sync now covers every commit this view contains.
            self.sync().map_err(|e| {
                StorageIOError::write_snapshot(None, any_error(&e, "sync state env"))
            })?;
            let (last_applied, last_membership) = read_applied(&db.meta, &rtxn)?;
            let app_bytes = db.app.export(&rtxn).map_err(|e| {
                StorageIOError::read_state_machine(app_error(&e, "export app state for snapshot"))
            })?;
            let header = SnapshotHeader {
                last_applied,
                last_membership,
            };
            (header, app_bytes)
        };
        let header_bytes = serde_json::to_vec(&header).map_err(|e| {
            StorageIOError::write_snapshot(None, any_error(&e, "encode snapshot header"))
        })?;
        let data = frame(SNAPSHOT_DATA_MAGIC, &header_bytes, &app_bytes)
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::error(e)))?;
        let meta = Meta {
            last_log_id: header.last_applied,
            last_membership: header.last_membership,
            snapshot_id: snapshot_id(header.last_applied),
        };
        self.persist_current_snapshot(&meta, &data)?;
        tracing::info!(snapshot = %meta, size_bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    fn install_snapshot_sync(&self, meta: &Meta, data: Vec<u8>) -> Result<()> {
        let sig = || Some(meta.signature());
        let (header_bytes, app_bytes) = unframe(SNAPSHOT_DATA_MAGIC, &data)
            .map_err(|e| StorageIOError::read_snapshot(sig(), AnyError::error(e)))?;
        let header: SnapshotHeader = serde_json::from_slice(header_bytes).map_err(|e| {
            StorageIOError::read_snapshot(sig(), any_error(&e, "decode snapshot header"))
        })?;
        if header.last_applied != meta.last_log_id || header.last_membership != meta.last_membership
        {
            return Err(StorageIOError::read_snapshot(
                sig(),
                AnyError::error(format!(
                    "snapshot data describes last_applied {:?} / membership {}, meta says {}",
                    header.last_applied, header.last_membership, meta
                )),
            )
            .into());
        }
        let db = &*self.db;
        let mut wtxn = db.env.write_txn().map_err(|e| {
            StorageIOError::write_snapshot(sig(), any_error(&e, "begin install txn"))
        })?;
        db.app.import(&mut wtxn, app_bytes).map_err(|e| {
            StorageIOError::write_snapshot(sig(), app_error(&e, "import app state from snapshot"))
        })?;
        put_json(&db.meta, &mut wtxn, LAST_APPLIED_KEY, &meta.last_log_id)
            .map_err(|e| StorageIOError::write_snapshot(sig(), e))?;
        put_json(
            &db.meta,
            &mut wtxn,
            LAST_MEMBERSHIP_KEY,
            &meta.last_membership,
        )
        .map_err(|e| StorageIOError::write_snapshot(sig(), e))?;
        wtxn.commit().map_err(|e| {
            StorageIOError::write_snapshot(sig(), any_error(&e, "commit install txn"))
        })?;
        // openraft drops the log behind the snapshot once this returns: it must be durable.
        self.sync()
            .map_err(|e| StorageIOError::write_snapshot(sig(), any_error(&e, "sync state env")))?;
        // State first, file second: a crash in between leaves an older current snapshot, which
        // is harmless; the reverse order could advertise a snapshot the state does not contain.
        self.persist_current_snapshot(meta, &data)?;
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    /// Make `meta`/`data` the current snapshot on disk unless a newer one is already there.
    fn persist_current_snapshot(&self, meta: &Meta, data: &[u8]) -> Result<()> {
        let sig = || Some(meta.signature());
        let mut current =
            self.db.current_snapshot.lock().map_err(|_| {
                StorageIOError::write_snapshot(sig(), AnyError::error("lock poisoned"))
            })?;
        if current
            .as_ref()
            .is_some_and(|c| c.last_log_id > meta.last_log_id)
        {
            return Ok(());
        }
        write_snapshot_file(&self.db.dir, meta, data).map_err(|e| {
            StorageIOError::write_snapshot(sig(), app_error(&e, "write snapshot file"))
        })?;
        *current = Some(meta.clone());
        Ok(())
    }

    fn current_snapshot_sync(&self) -> Result<Option<Snapshot<TypeConfig<A>>>> {
        let path = self.db.dir.join(SNAPSHOT_FILE_NAME);
        let loaded = read_snapshot_file(&path, true)
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Lock `mutex`, also if a panic poisoned it: what it guards (metas, times) is replaced whole,
/// never left half-changed.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Snapshot id: a function of the last applied log id alone. The export is deterministic, so
/// two snapshots at the same log id hold the same bytes and may share an id; no clock or random
/// number is needed.
fn snapshot_id(last_applied: Option<LogId<NodeId>>) -> String {
    match last_applied {
        None => "empty".to_string(),
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
    }
}

fn read_applied(meta: &MetaDb, rtxn: &RoTxn<'_>) -> Result<(Option<LogId<NodeId>>, Membership)> {
    let last_applied: Option<Option<LogId<NodeId>>> =
        get_json(meta, rtxn, LAST_APPLIED_KEY).map_err(StorageIOError::read_state_machine)?;
    let membership: Option<Membership> =
        get_json(meta, rtxn, LAST_MEMBERSHIP_KEY).map_err(StorageIOError::read_state_machine)?;
    Ok((last_applied.flatten(), membership.unwrap_or_default()))
}

fn get_json<T: DeserializeOwned>(
    db: &MetaDb,
    rtxn: &RoTxn<'_>,
    key: &str,
) -> std::result::Result<Option<T>, AnyError> {
    let Some(bytes) = db
        .get(rtxn, key)
        .map_err(|e| any_error(&e, &format!("read state meta {key:?}")))?
    else {
        return Ok(None);
    };
    let value = serde_json::from_slice(bytes)
        .map_err(|e| any_error(&e, &format!("decode state meta {key:?}")))?;
    Ok(Some(value))
}

fn put_json<T: Serialize>(
    db: &MetaDb,
    wtxn: &mut RwTxn<'_>,
    key: &str,
    value: &T,
) -> std::result::Result<(), AnyError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| any_error(&e, &format!("encode state meta {key:?}")))?;
    db.put(wtxn, key, &bytes)
        .map_err(|e| any_error(&e, &format!("write state meta {key:?}")))
}

/// `magic (8) | header length (u64 BE) | body length (u64 BE) | blake3(header ‖ body) (32) |
/// header | body`. Both lengths are explicit so that a truncated or padded snapshot is detected,
/// not half-imported; the checksum catches a byte changed anywhere else.
fn frame(magic: &[u8; 8], header: &[u8], body: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if header.len() > SNAPSHOT_HEADER_SIZE_BYTES_MAX {
        return Err(format!(
            "snapshot header is {} bytes, limit {SNAPSHOT_HEADER_SIZE_BYTES_MAX}",
            header.len()
        ));
    }
    let total = FRAME_PREFIX_SIZE_BYTES + FRAME_CHECKSUM_SIZE_BYTES + header.len() + body.len();
    if total > SNAPSHOT_SIZE_BYTES_MAX {
        return Err(format!(
            "snapshot is {total} bytes, limit {SNAPSHOT_SIZE_BYTES_MAX}"
        ));
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(magic);
    out.extend_from_slice(&(header.len() as u64).to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(frame_checksum(header, body).as_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    Ok(out)
}

fn frame_checksum(header: &[u8], body: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(header);
    hasher.update(body);
    hasher.finalize()
}

/// Inverse of [`frame`]: checks magic, exact lengths and the checksum, returns (header, body).
/// Snapshot data in the first format ([`SNAPSHOT_DATA_MAGIC_UNCHECKED`], no checksum) is read
/// too.
fn unframe<'a>(
    magic: &[u8; 8],
    bytes: &'a [u8],
) -> std::result::Result<(&'a [u8], &'a [u8]), String> {
    if bytes.len() > SNAPSHOT_SIZE_BYTES_MAX {
        return Err(format!(
            "snapshot is {} bytes, limit {SNAPSHOT_SIZE_BYTES_MAX}",
            bytes.len()
        ));
    }
    let checksum_len = if bytes.starts_with(magic) {
        FRAME_CHECKSUM_SIZE_BYTES
    } else if magic == SNAPSHOT_DATA_MAGIC && bytes.starts_with(SNAPSHOT_DATA_MAGIC_UNCHECKED) {
        0
    } else {
        return Err(format!(
            "snapshot data of {} bytes does not start with magic {:?}",
            bytes.len(),
            String::from_utf8_lossy(magic)
        ));
    };
    let prefix_len = FRAME_PREFIX_SIZE_BYTES + checksum_len;
    if bytes.len() < prefix_len {
        return Err(format!(
            "snapshot data of {} bytes is shorter than its frame's {prefix_len}-byte prefix",
            bytes.len()
        ));
    }
    let header_len = decode_len(&bytes[8..16], SNAPSHOT_HEADER_SIZE_BYTES_MAX)?;
    let body_len = decode_len(&bytes[16..24], SNAPSHOT_SIZE_BYTES_MAX)?;
    let want = prefix_len + header_len + body_len;
    if bytes.len() != want {
        return Err(format!(
            "snapshot data is {} bytes but its frame says {want} (header {header_len}, body {body_len})",
            bytes.len()
        ));
    }
    let body_start = prefix_len + header_len;
    let (header, body) = (&bytes[prefix_len..body_start], &bytes[body_start..]);
    if checksum_len > 0
        && bytes[FRAME_PREFIX_SIZE_BYTES..prefix_len] != *frame_checksum(header, body).as_bytes()
    {
        return Err(format!(
            "snapshot data of {} bytes fails its checksum: it was damaged on a disk or on the way",
            bytes.len()
        ));
    }
    Ok((header, body))
}

/// Decode a big-endian u64 length field and check it against `limit` before anything is
/// allocated for it.
fn decode_len(raw: &[u8], limit: usize) -> std::result::Result<usize, String> {
    let raw: [u8; 8] = raw
        .try_into()
        .map_err(|_| format!("snapshot length field is {} bytes, want 8", raw.len()))?;
    let len = u64::from_be_bytes(raw);
    if len > limit as u64 {
        return Err(format!("snapshot length field {len} exceeds limit {limit}"));
    }
    Ok(len as usize)
}

/// Write the current snapshot atomically: temp file, fsync, rename, fsync the directory.
fn write_snapshot_file(dir: &Path, meta: &Meta, data: &[u8]) -> anyhow::Result<()> {
    let meta_bytes = serde_json::to_vec(meta).context("encode snapshot meta")?;
    anyhow::ensure!(
        meta_bytes.len() <= SNAPSHOT_HEADER_SIZE_BYTES_MAX,
        "snapshot meta is {} bytes, limit {SNAPSHOT_HEADER_SIZE_BYTES_MAX}",
        meta_bytes.len()
    );
    let tmp = dir.join(SNAPSHOT_TMP_FILE_NAME);
    let path = dir.join(SNAPSHOT_FILE_NAME);
    {
        let mut f = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(SNAPSHOT_FILE_MAGIC)?;
        f.write_all(&(meta_bytes.len() as u64).to_be_bytes())?;
        f.write_all(&meta_bytes)?;
        f.write_all(data)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))?;
    Ok(())
}

/// Read the current snapshot file: its meta, and the snapshot data if `with_data`.
/// `Ok(None)` if there is no snapshot yet.
fn read_snapshot_file(
    path: &Path,
    with_data: bool,
) -> std::result::Result<Option<(Meta, Vec<u8>)>, String> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let ctx = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let file_len = f.metadata().map_err(|e| ctx("stat", e))?.len();
    let mut prefix = [0u8; 16];
    f.read_exact(&mut prefix)
        .map_err(|e| ctx("read snapshot file header of", e))?;
    if &prefix[..8] != SNAPSHOT_FILE_MAGIC {
        return Err(format!(
            "{} is not a snapshot file (bad magic)",
            path.display()
        ));
    }
    let meta_len = decode_len(&prefix[8..], SNAPSHOT_HEADER_SIZE_BYTES_MAX)?;
    let data_len = file_len
        .checked_sub(16 + meta_len as u64)
        .ok_or_else(|| format!("{} is truncated inside its meta", path.display()))?;
    if data_len > SNAPSHOT_SIZE_BYTES_MAX as u64 {
        return Err(format!(
            "{} holds {data_len} bytes of snapshot, limit {SNAPSHOT_SIZE_BYTES_MAX}",
            path.display()
        ));
    }
    let mut meta_bytes = vec![0u8; meta_len];
    f.read_exact(&mut meta_bytes)
        .map_err(|e| ctx("read snapshot meta of", e))?;
    let meta: Meta = serde_json::from_slice(&meta_bytes)
        .map_err(|e| format!("decode snapshot meta of {}: {e}", path.display()))?;
    let mut data = Vec::new();
    if with_data {
        data.reserve_exact(data_len as usize);
        f.read_to_end(&mut data)
            .map_err(|e| ctx("read snapshot data of", e))?;
        if data.len() as u64 != data_len {
            return Err(format!(
                "{} changed while being read: expected {data_len} data bytes, got {}",
                path.display(),
                data.len()
            ));
        }
        // The data must itself be a well-formed snapshot; catch corruption before sending it.
        unframe(SNAPSHOT_DATA_MAGIC, &data)?;
    }
    Ok(Some((meta, data)))
}

impl<A: App> RaftSnapshotBuilder<TypeConfig<A>> for StateMachineStore<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig<A>>> {
        Ok(self.build_or_keep_current())
    }
}

impl<A: App> RaftStateMachine<TypeConfig<A>> for StateMachineStore<A> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership)> {
        self.applied_state_sync()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<A::Response>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig<A>>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        crate::blocking(|| self.apply_sync(entries))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        self.install_snapshot_sync(meta, snapshot.into_inner())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig<A>>>> {
        self.current_snapshot_sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips_and_rejects_damage() {
        let framed = frame(SNAPSHOT_DATA_MAGIC, b"{}", b"body").expect("frame");
        let (h, b) = unframe(SNAPSHOT_DATA_MAGIC, &framed).expect("unframe");
        assert_eq!((h, b), (&b"{}"[..], &b"body"[..]));

        // Truncated (by one byte, or inside the header) or padded.
        assert!(unframe(SNAPSHOT_DATA_MAGIC, &framed[..framed.len() - 1]).is_err());
        assert!(unframe(SNAPSHOT_DATA_MAGIC, &framed[..framed.len() - 5]).is_err());
        let mut padded = framed.clone();
        padded.push(0);
        assert!(unframe(SNAPSHOT_DATA_MAGIC, &padded).is_err());
        // Wrong magic.
        assert!(unframe(SNAPSHOT_FILE_MAGIC, &framed).is_err());
        // Too short to hold the prefix.
        assert!(unframe(SNAPSHOT_DATA_MAGIC, &framed[..20]).is_err());
        // A header length beyond the limit is refused before any allocation.
        let mut huge = framed.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(unframe(SNAPSHOT_DATA_MAGIC, &huge).is_err());
    }

    /// Regression (found by the node's snapshot import property): a byte changed inside the
    /// app's bytes was installed as is, and a row the app could not decode then stopped Raft at
    /// the next apply that read it. The checksum refuses it first.
    #[test]
    fn a_byte_changed_anywhere_fails_the_checksum() {
        let framed = frame(SNAPSHOT_DATA_MAGIC, b"{\"h\":1}", b"app bytes").expect("frame");
        for at in FRAME_PREFIX_SIZE_BYTES..framed.len() {
            let mut damaged = framed.clone();
            damaged[at] ^= 0x20;
            let error = unframe(SNAPSHOT_DATA_MAGIC, &damaged).expect_err("damaged");
            assert!(error.contains("fails its checksum"), "byte {at}: {error}");
        }
    }

    #[test]
    fn data_in_the_first_format_without_a_checksum_is_still_read() {
        let mut v1 = SNAPSHOT_DATA_MAGIC_UNCHECKED.to_vec();
        v1.extend_from_slice(&2u64.to_be_bytes());
        v1.extend_from_slice(&3u64.to_be_bytes());
        v1.extend_from_slice(b"{}app");
        assert_eq!(
            unframe(SNAPSHOT_DATA_MAGIC, &v1),
            Ok((&b"{}"[..], &b"app"[..]))
        );
        assert!(unframe(SNAPSHOT_DATA_MAGIC, &v1[..v1.len() - 1]).is_err());
        // Only snapshot data has a first format.
        assert!(unframe(SNAPSHOT_FILE_MAGIC, &v1).is_err());
    }

    #[test]
    fn frame_refuses_oversized_header() {
        let header = vec![b' '; SNAPSHOT_HEADER_SIZE_BYTES_MAX + 1];
        assert!(frame(SNAPSHOT_DATA_MAGIC, &header, b"").is_err());
    }

    #[test]
    fn snapshot_file_absent_truncated_and_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SNAPSHOT_FILE_NAME);
        assert!(read_snapshot_file(&path, true)
            .expect("absent is ok")
            .is_none());

        let data = frame(SNAPSHOT_DATA_MAGIC, b"{}", b"app").expect("frame");
        let meta = Meta::default();
        write_snapshot_file(dir.path(), &meta, &data).expect("write");
        let (m, d) = read_snapshot_file(&path, true)
            .expect("read")
            .expect("present");
        assert_eq!((m, d), (meta, data.clone()));
        assert!(!dir.path().join(SNAPSHOT_TMP_FILE_NAME).exists());

        let bytes = std::fs::read(&path).expect("read raw");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).expect("truncate");
        assert!(read_snapshot_file(&path, true).is_err(), "truncated data");
        std::fs::write(&path, &bytes[..12]).expect("truncate");
        assert!(
            read_snapshot_file(&path, false).is_err(),
            "truncated prefix"
        );
        std::fs::write(&path, b"not a snapshot file at all").expect("corrupt");
        assert!(read_snapshot_file(&path, false).is_err(), "bad magic");
    }

    /// An app whose export is a fixed blob, for store tests that need no app state.
    struct Blob;

    impl App for Blob {
        type Command = ();
        type Response = ();
        const MAX_DBS: u32 = 0;
        fn open(_: &heed::Env, _: &mut RwTxn<'_>) -> anyhow::Result<Self> {
            Ok(Blob)
        }
        fn apply(&self, _: &mut RwTxn<'_>, _: u64, _: &()) -> anyhow::Result<()> {
            Ok(())
        }
        fn export(&self, _: &RoTxn<'_>) -> anyhow::Result<Vec<u8>> {
            Ok(b"blob".to_vec())
        }
        fn import(&self, _: &mut RwTxn<'_>, _: &[u8]) -> anyhow::Result<()> {
            Ok(())
        }
    }

    fn blank(index: u64) -> Entry<TypeConfig<Blob>> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// The snapshot file cannot be written (a directory stands where its temp file goes; as
    /// root, permissions would not stop the write): the build is not an error and changes
    /// nothing on disk, and once the way is clear the next build writes the file.
    #[test]
    fn a_snapshot_file_that_cannot_be_written_fails_the_build_not_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (lease, _released) = crate::env_lease();
        let store = StateMachineStore::<Blob>::open(dir.path(), lease).expect("open");
        store.set_snapshot_retry_pause(Duration::ZERO);
        store.apply_sync([blank(1)]).expect("apply");
        let first = store.build_or_keep_current();
        assert_eq!(first.meta.last_log_id, Some(blank(1).log_id));

        store.apply_sync([blank(2)]).expect("apply");
        let blocker = dir.path().join(SNAPSHOT_TMP_FILE_NAME);
        std::fs::create_dir(&blocker).expect("block the temp file");
        let kept = store.build_or_keep_current();
        assert_eq!(kept.meta, first.meta);
        assert_eq!(*store.snapshot_build_failures().borrow(), 1);
        let on_disk = store
            .current_snapshot_sync()
            .expect("read")
            .expect("present");
        assert_eq!(on_disk.meta, first.meta);

        std::fs::remove_dir(&blocker).expect("unblock");
        let built = store.build_or_keep_current();
        assert_eq!(built.meta.last_log_id, Some(blank(2).log_id));
        let on_disk = store
            .current_snapshot_sync()
            .expect("read")
            .expect("present");
        assert_eq!(on_disk.meta, built.meta);
    }

    mod properties {
        //! Property tests of the snapshot frame, the first thing a received or loaded snapshot
        //! meets: arbitrary bytes never panic, and only an exact, undamaged frame is accepted.

        use super::*;
        use proptest::prelude::*;

        fn config(cases: u32) -> proptest::test_runner::Config {
            proptest::test_runner::Config {
                cases,
                rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
                rng_seed: proptest::test_runner::RngSeed::Fixed(0x5157_4552),
                failure_persistence: None,
                ..proptest::test_runner::Config::default()
            }
        }

        /// Bytes that often start like a frame: the magic, then lengths near the real ones.
        fn frame_like() -> impl Strategy<Value = Vec<u8>> {
            let len = prop_oneof![
                0u64..40,
                any::<u64>(),
                Just(SNAPSHOT_HEADER_SIZE_BYTES_MAX as u64 + 1)
            ];
            let magic = prop_oneof![
                Just(SNAPSHOT_DATA_MAGIC),
                Just(SNAPSHOT_DATA_MAGIC_UNCHECKED)
            ];
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                (
                    magic,
                    len.clone(),
                    len,
                    prop::collection::vec(any::<u8>(), 0..96)
                )
                    .prop_map(|(magic, header_len, body_len, rest)| {
                        let mut bytes = magic.to_vec();
                        bytes.extend_from_slice(&header_len.to_be_bytes());
                        bytes.extend_from_slice(&body_len.to_be_bytes());
                        bytes.extend_from_slice(&rest);
                        bytes
                    }),
            ]
        }

        proptest! {
            #![proptest_config(config(2_000))]

            #[test]
            fn unframe_accepts_only_an_exact_frame(bytes in frame_like()) {
                if let Ok((header, body)) = unframe(SNAPSHOT_DATA_MAGIC, &bytes) {
                    prop_assert!(header.len() <= SNAPSHOT_HEADER_SIZE_BYTES_MAX);
                    if bytes.starts_with(SNAPSHOT_DATA_MAGIC) {
                        prop_assert_eq!(frame(SNAPSHOT_DATA_MAGIC, header, body), Ok(bytes.clone()));
                    } else {
                        prop_assert!(bytes.starts_with(SNAPSHOT_DATA_MAGIC_UNCHECKED));
                        prop_assert_eq!(FRAME_PREFIX_SIZE_BYTES + header.len() + body.len(), bytes.len());
                    }
                }
            }

            #[test]
            fn decode_len_checks_width_and_limit(
                raw in prop::collection::vec(any::<u8>(), 0..12),
                limit in prop_oneof![0usize..300, Just(usize::MAX)],
            ) {
                match decode_len(&raw, limit) {
                    Ok(len) => {
                        prop_assert_eq!(raw.len(), 8);
                        prop_assert!(len <= limit);
                        prop_assert_eq!(len as u64, u64::from_be_bytes(raw[..].try_into().unwrap()));
                    }
                    Err(_) => prop_assert!(
                        raw.len() != 8 || u64::from_be_bytes(raw[..].try_into().unwrap()) > limit as u64
                    ),
                }
            }

            #[test]
            fn a_frame_cut_padded_or_with_any_byte_changed_is_refused(
                header in prop::collection::vec(any::<u8>(), 0..40),
                body in prop::collection::vec(any::<u8>(), 0..80),
                cut in any::<prop::sample::Index>(),
                padding in prop::collection::vec(any::<u8>(), 1..8),
                flip in (any::<prop::sample::Index>(), 1u8..),
            ) {
                let framed = frame(SNAPSHOT_DATA_MAGIC, &header, &body).expect("frame");
                prop_assert_eq!(
                    unframe(SNAPSHOT_DATA_MAGIC, &framed),
                    Ok((&header[..], &body[..]))
                );
                let cut = cut.index(framed.len());
                prop_assert!(unframe(SNAPSHOT_DATA_MAGIC, &framed[..cut]).is_err());
                let mut padded = framed.clone();
                padded.extend_from_slice(&padding);
                prop_assert!(unframe(SNAPSHOT_DATA_MAGIC, &padded).is_err());
                let mut flipped = framed;
                let at = flip.0.index(flipped.len());
                flipped[at] ^= flip.1;
                prop_assert!(unframe(SNAPSHOT_DATA_MAGIC, &flipped).is_err());
            }
        }
    }
}
