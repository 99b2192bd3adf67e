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
//!   export from a real value, and a row it cannot decode later would stop Raft. It is built from
//!   an LMDB read transaction, i.e. a consistent view taken while `apply` keeps running (openraft
//!   builds snapshots concurrently with applying).
//! - Snapshots are streamed through files, never whole in memory (decision 0015): the export is
//!   written in pieces into a temp file (the frame's lengths and checksum are filled in at the
//!   end), fsynced and renamed into place; openraft sends it chunk by chunk from that file
//!   ([`SnapshotData`]); a follower receives it into a temp file, checks it whole by reading it
//!   through once (lengths, checksum, header against the meta), then the app imports it in
//!   pieces, and the file is renamed into place. What a snapshot costs in memory is a few
//!   buffers of [`COPY_BUFFER_BYTES`] and its header, whatever the size of the state.
//! - A snapshot build that fails (export, sync, writing the file) is logged and is not an error
//!   to openraft, which would stop the Raft core for it: the build answers with the current
//!   snapshot's meta, which openraft ignores as not newer (no purge), and the next build is tried
//!   after [`SNAPSHOT_RETRY_PAUSE_DEFAULT`] (`build_or_keep_current`).
//! - The current snapshot is kept as a file (`DIR/state/current.snapshot`: the snapshot data
//!   itself, whose header says its meta) so `get_current_snapshot` survives a restart and a
//!   leader can still feed a follower whose entries were already purged. It is replaced only by
//!   a synced file renamed over it (directory fsynced), and only ever moves forward (guarded by
//!   the cached meta of the file on disk). Temp files (`*.snapshot.tmp`) are removed at open.
//! - Sizes are bounded: a snapshot larger than [`SNAPSHOT_SIZE_BYTES_MAX`] is refused when built,
//!   received (a write past it fails), or read back; its header is bounded by
//!   `SNAPSHOT_HEADER_SIZE_BYTES_MAX`, the one part read into memory whole.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

use crate::snapshot_data::SnapshotData;
use crate::{any_error, app_error, open_env, App, EnvLease, NodeId, TypeConfig};

/// Map size of the state environment: address space reserved, not disk used (see the log's).
pub const STATE_MAP_SIZE_BYTES: usize = 64 << 30;
/// Largest snapshot (app export plus header) this node builds, accepts or loads: a bound on disk,
/// not on memory (snapshots are streamed through files). Twice the state's map: an export may
/// spell each byte of the state as two hex digits.
pub const SNAPSHOT_SIZE_BYTES_MAX: u64 = 2 * STATE_MAP_SIZE_BYTES as u64;
/// How long after a failed snapshot build the next one is tried (builds asked for meanwhile keep
/// the current snapshot). Long enough that a full or failing disk is not made to write an
/// export after every commit; short next to the time a log takes to grow a snapshot interval.
pub const SNAPSHOT_RETRY_PAUSE_DEFAULT: Duration = Duration::from_secs(30);
/// Largest snapshot header (log ids and membership: a few KiB in practice), the one part of a
/// snapshot held in memory whole.
const SNAPSHOT_HEADER_SIZE_BYTES_MAX: usize = 1 << 20;
/// File name of the current snapshot inside the state directory: the snapshot data itself.
pub const SNAPSHOT_FILE_NAME: &str = "current.snapshot";
/// Every temp file of the state directory ends so (removed at open: a crash left it).
const TEMP_FILE_SUFFIX: &str = ".snapshot.tmp";
/// The snapshot being built.
const SNAPSHOT_TMP_FILE_NAME: &str = "current.snapshot.tmp";
/// Magic of the snapshot data that travels between nodes and is the current snapshot file.
const SNAPSHOT_DATA_MAGIC: &[u8; 8] = b"QVRSNAP2";
/// Magic of the first snapshot data format, the same frame without the checksum: still read (a
/// current snapshot file an older build left), never written.
const SNAPSHOT_DATA_MAGIC_UNCHECKED: &[u8; 8] = b"QVRSNAP1";
/// Magic of the current-snapshot file of older builds (meta, then the snapshot data): moved to
/// the current format at open (`migrate_wrapped_snapshot_file`), never written.
const SNAPSHOT_FILE_MAGIC_WRAPPED: &[u8; 8] = b"QVRSFIL1";
/// Buffer of every streamed read and write of snapshot data: what a snapshot costs in memory.
const COPY_BUFFER_BYTES: usize = 64 << 10;
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
    /// Numbers the temp files of snapshots being received.
    temp_files: AtomicU64,
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

        // Temp files are what a crash while building or receiving a snapshot leaves behind.
        remove_temp_files(dir)?;
        migrate_wrapped_snapshot_file(dir)?;
        let current = open_snapshot_file(&dir.join(SNAPSHOT_FILE_NAME), Verify::HeaderOnly)
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
                temp_files: AtomicU64::new(0),
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

    /// Build a snapshot now if the log has been purged (`log_purged`) and there is no snapshot,
    /// i.e. the snapshot file was lost; a failure is an error. openraft builds one at start in
    /// that case too, but through [`Self::build_or_keep_current`], which never fails: the node
    /// would start without the snapshot its log relies on, and the first follower needing it
    /// would stop the leader's core ("snapshot not found"). Called before Raft starts, so that
    /// the start fails instead.
    pub(crate) fn ensure_snapshot_behind_purged_log(&self, log_purged: bool) -> anyhow::Result<()> {
        if !log_purged || lock(&self.db.current_snapshot).is_some() {
            return Ok(());
        }
        tracing::warn!("the log is purged but there is no snapshot file: building one");
        self.build_snapshot_sync()
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("build the snapshot a purged log needs: {e}"))
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
            snapshot: Box::new(SnapshotData::nothing()),
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
        let write_error = |e: &anyhow::Error, doing: &str| {
            StorageError::from(StorageIOError::write_snapshot(None, app_error(e, doing)))
        };
        let (meta, temp, size_bytes) = {
            let rtxn = db.env.read_txn().map_err(|e| {
                StorageIOError::read_state_machine(any_error(&e, "begin snapshot read txn"))
            })?;
            // The log will be purged up to this snapshot: what it shows must survive a power
            // loss. A sync now covers every commit this view contains.
            self.sync().map_err(|e| {
                StorageIOError::write_snapshot(None, any_error(&e, "sync state env"))
            })?;
            let (last_applied, last_membership) = read_applied(&db.meta, &rtxn)?;
            let header = SnapshotHeader {
                last_applied,
                last_membership,
            };
            let header_bytes = serde_json::to_vec(&header).map_err(|e| {
                StorageIOError::write_snapshot(None, any_error(&e, "encode snapshot header"))
            })?;
            let mut temp = TempFile::create(db.dir.join(SNAPSHOT_TMP_FILE_NAME))
                .map_err(|e| write_error(&e, "create snapshot temp file"))?;
            let size_bytes =
                write_frame(&mut temp.file, SNAPSHOT_DATA_MAGIC, &header_bytes, |out| {
                    db.app.export(&rtxn, out).context("export app state")
                })
                .map_err(|e| write_error(&e, "write snapshot"))?;
            let meta = Meta {
                last_log_id: header.last_applied,
                last_membership: header.last_membership,
                snapshot_id: snapshot_id(header.last_applied),
            };
            (meta, temp, size_bytes)
        };
        temp.file
            .sync_all()
            .map_err(|e| write_error(&e.into(), "fsync snapshot temp file"))?;
        let file = self.make_current(&meta, temp)?;
        tracing::info!(snapshot = %meta, size_bytes, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::file(file)),
        })
    }

    /// A new temp file for a snapshot being received (or copied in to be installed).
    fn incoming_temp_file(&self) -> anyhow::Result<TempFile> {
        let n = self.db.temp_files.fetch_add(1, Ordering::Relaxed);
        TempFile::create(self.db.dir.join(format!("incoming-{n}{TEMP_FILE_SUFFIX}")))
    }

    fn begin_receiving_sync(&self) -> Result<SnapshotData> {
        let temp = self.incoming_temp_file().map_err(|e| {
            StorageIOError::write_snapshot(
                None,
                app_error(&e, "create a file to receive a snapshot"),
            )
        })?;
        let (file, path) = temp.into_parts();
        Ok(SnapshotData::temp(file, path, SNAPSHOT_SIZE_BYTES_MAX))
    }

    /// Install the snapshot in `file`: checked whole (lengths, checksum, header against `meta`)
    /// before the app sees a byte, imported in one transaction, synced, and then made the current
    /// snapshot. `temp_path`: where `file` is if it is this store's temp file (what openraft
    /// received), which is then renamed into place; any other file is copied in first.
    fn install_snapshot_sync(
        &self,
        meta: &Meta,
        file: File,
        temp_path: Option<PathBuf>,
    ) -> Result<()> {
        let sig = || Some(meta.signature());
        let read_error = |e: String| StorageIOError::read_snapshot(sig(), AnyError::error(e));
        let write_error = |e: &anyhow::Error, doing: &str| {
            StorageIOError::write_snapshot(sig(), app_error(e, doing))
        };
        let mut temp = match temp_path {
            Some(path) => TempFile::at(file, path),
            None => {
                let mut temp = self
                    .incoming_temp_file()
                    .map_err(|e| write_error(&e, "create a file to install a snapshot from"))?;
                copy_whole(&file, &mut temp.file)
                    .map_err(|e| write_error(&e.into(), "copy snapshot data"))?;
                temp
            }
        };
        let frame =
            check_frame(&mut temp.file, SNAPSHOT_DATA_MAGIC, Verify::Whole).map_err(read_error)?;
        let header: SnapshotHeader = serde_json::from_slice(&frame.header).map_err(|e| {
            StorageIOError::read_snapshot(sig(), any_error(&e, "decode snapshot header"))
        })?;
        if header.last_applied != meta.last_log_id || header.last_membership != meta.last_membership
        {
            return Err(read_error(format!(
                "snapshot data describes last_applied {:?} / membership {}, meta says {}",
                header.last_applied, header.last_membership, meta
            ))
            .into());
        }
        let db = &*self.db;
        let mut wtxn = db.env.write_txn().map_err(|e| {
            StorageIOError::write_snapshot(sig(), any_error(&e, "begin install txn"))
        })?;
        {
            let mut body = frame
                .body(&temp.file)
                .map_err(|e| write_error(&e.into(), "seek to the snapshot body"))?;
            db.app
                .import(&mut wtxn, &mut body)
                .map_err(|e| write_error(&e, "import app state from snapshot"))?;
        }
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
        temp.file
            .sync_all()
            .map_err(|e| write_error(&e.into(), "fsync received snapshot"))?;
        self.make_current(meta, temp)?;
        tracing::info!(snapshot = %meta, size_bytes = frame.len(), "installed snapshot");
        Ok(())
    }

    /// Make the synced snapshot in `temp` the current snapshot (rename it into place, fsync the
    /// directory) unless a newer one is already there, in which case `temp` is removed. Returns
    /// the file, still open, either way.
    fn make_current(&self, meta: &Meta, temp: TempFile) -> Result<File> {
        let write_error = |e: &std::io::Error, doing: String| {
            StorageIOError::write_snapshot(Some(meta.signature()), any_error(e, &doing))
        };
        let mut current = lock(&self.db.current_snapshot);
        let (file, tmp) = temp.into_parts();
        if current
            .as_ref()
            .is_some_and(|c| c.last_log_id > meta.last_log_id)
        {
            remove_or_warn(&tmp);
            return Ok(file);
        }
        let dir = &self.db.dir;
        let path = dir.join(SNAPSHOT_FILE_NAME);
        if let Err(e) = std::fs::rename(&tmp, &path) {
            remove_or_warn(&tmp);
            let doing = format!("rename {} to {}", tmp.display(), path.display());
            return Err(write_error(&e, doing).into());
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| write_error(&e, format!("fsync directory {}", dir.display())))?;
        *current = Some(meta.clone());
        Ok(file)
    }

    fn current_snapshot_sync(&self) -> Result<Option<Snapshot<TypeConfig<A>>>> {
        let path = self.db.dir.join(SNAPSHOT_FILE_NAME);
        let loaded = open_snapshot_file(&path, Verify::Whole)
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?;
        Ok(loaded.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::file(file)),
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

/// A file that is removed when dropped, unless taken with [`TempFile::into_parts`].
struct TempFile {
    file: File,
    path: RemoveOnDrop,
}

/// The path of a [`TempFile`] until it is taken.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            remove_or_warn(&path);
        }
    }
}

impl TempFile {
    /// Create (or truncate) the file at `path`, for reading and writing.
    fn create(path: PathBuf) -> anyhow::Result<TempFile> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        Ok(TempFile::at(file, path))
    }

    /// `file`, which is at `path`.
    fn at(file: File, path: PathBuf) -> TempFile {
        TempFile {
            file,
            path: RemoveOnDrop(Some(path)),
        }
    }

    /// The file and its path, which the caller now removes or keeps.
    fn into_parts(mut self) -> (File, PathBuf) {
        let path = self
            .path
            .0
            .take()
            .expect("a temp file has its path until it is taken");
        (self.file, path)
    }
}

fn remove_or_warn(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "remove snapshot temp file");
    }
}

/// Remove the temp files a crash while building or receiving a snapshot left in `dir`.
fn remove_temp_files(dir: &Path) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("list state directory {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("list state directory {}", dir.display()))?
            .path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(TEMP_FILE_SUFFIX))
        {
            std::fs::remove_file(&path)
                .with_context(|| format!("remove stale snapshot temp file {}", path.display()))?;
        }
    }
    Ok(())
}

/// Copy the whole of `from` (from its start) to `to`, in pieces, at most
/// [`SNAPSHOT_SIZE_BYTES_MAX`] + 1 bytes (one more than any snapshot, so that a longer one is
/// still refused by its length).
fn copy_whole(mut from: &File, to: &mut File) -> std::io::Result<u64> {
    from.seek(SeekFrom::Start(0))?;
    let mut from =
        BufReader::with_capacity(COPY_BUFFER_BYTES, from.take(SNAPSHOT_SIZE_BYTES_MAX + 1));
    let mut to = BufWriter::with_capacity(COPY_BUFFER_BYTES, to);
    let copied = std::io::copy(&mut from, &mut to)?;
    to.flush()?;
    Ok(copied)
}

/// Writes through to `inner`, hashing what it writes and refusing to go past `size_bytes_max`.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    written_bytes: u64,
    size_bytes_max: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written_bytes.saturating_add(buf.len() as u64) > self.size_bytes_max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("snapshot exceeds its limit of {SNAPSHOT_SIZE_BYTES_MAX} bytes"),
            ));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Write a frame from the start of `out`, the body as `body` writes it, in pieces:
/// `magic (8) | header length (u64 BE) | body length (u64 BE) | blake3(header ‖ body) (32) |
/// header | body`. Both lengths are explicit so that a truncated or padded snapshot is detected,
/// not half-imported; the checksum catches a byte changed anywhere else. The lengths and the
/// checksum are known only at the end: the prefix is written as zeros first and filled in last
/// (a crash in between leaves a temp file, never a current snapshot). Returns the frame's length.
fn write_frame<W: Write + Seek>(
    out: &mut W,
    magic: &[u8; 8],
    header: &[u8],
    body: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    anyhow::ensure!(
        header.len() <= SNAPSHOT_HEADER_SIZE_BYTES_MAX,
        "snapshot header is {} bytes, limit {SNAPSHOT_HEADER_SIZE_BYTES_MAX}",
        header.len()
    );
    let prefix_len = (FRAME_PREFIX_SIZE_BYTES + FRAME_CHECKSUM_SIZE_BYTES) as u64;
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&[0; FRAME_PREFIX_SIZE_BYTES + FRAME_CHECKSUM_SIZE_BYTES])?;
    let (hasher, written_bytes) = {
        let mut hashing = HashingWriter {
            inner: BufWriter::with_capacity(COPY_BUFFER_BYTES, &mut *out),
            hasher: blake3::Hasher::new(),
            written_bytes: 0,
            size_bytes_max: SNAPSHOT_SIZE_BYTES_MAX - prefix_len,
        };
        hashing.write_all(header)?;
        body(&mut hashing)?;
        hashing.flush()?;
        (hashing.hasher, hashing.written_bytes)
    };
    let body_len = written_bytes - header.len() as u64;
    out.seek(SeekFrom::Start(0))?;
    out.write_all(magic)?;
    out.write_all(&(header.len() as u64).to_be_bytes())?;
    out.write_all(&body_len.to_be_bytes())?;
    out.write_all(hasher.finalize().as_bytes())?;
    out.flush()?;
    Ok(prefix_len + written_bytes)
}

/// How much of a frame [`check_frame`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    /// Prefix, lengths and header only (a file this node wrote and synced, whose meta it needs).
    HeaderOnly,
    /// Also every byte of the body against the checksum.
    Whole,
}

/// Where a checked frame's parts are.
#[derive(Debug)]
struct Frame {
    header: Vec<u8>,
    body_start: u64,
    body_len: u64,
}

impl Frame {
    fn len(&self) -> u64 {
        self.body_start + self.body_len
    }

    /// A reader of the body, in pieces.
    fn body<'f>(&self, mut file: &'f File) -> std::io::Result<impl Read + 'f> {
        file.seek(SeekFrom::Start(self.body_start))?;
        Ok(BufReader::with_capacity(
            COPY_BUFFER_BYTES,
            file.take(self.body_len),
        ))
    }
}

/// Inverse of [`write_frame`], reading `r` in pieces: checks magic, exact lengths (against the
/// whole of `r`) and, with [`Verify::Whole`], the checksum; returns the header and where the body
/// is. Snapshot data in the first format ([`SNAPSHOT_DATA_MAGIC_UNCHECKED`], no checksum) is
/// read too.
fn check_frame<R: Read + Seek>(
    r: &mut R,
    magic: &[u8; 8],
    verify: Verify,
) -> std::result::Result<Frame, String> {
    let io = |what: &str, e: std::io::Error| format!("{what} snapshot data: {e}");
    let len = r.seek(SeekFrom::End(0)).map_err(|e| io("measure", e))?;
    if len > SNAPSHOT_SIZE_BYTES_MAX {
        return Err(format!(
            "snapshot is {len} bytes, limit {SNAPSHOT_SIZE_BYTES_MAX}"
        ));
    }
    r.seek(SeekFrom::Start(0)).map_err(|e| io("seek", e))?;
    let mut prefix = [0u8; FRAME_PREFIX_SIZE_BYTES + FRAME_CHECKSUM_SIZE_BYTES];
    let start = &mut prefix[..FRAME_PREFIX_SIZE_BYTES.min(len as usize)];
    r.read_exact(start).map_err(|e| io("read", e))?;
    let checksum_len = if start.starts_with(magic) {
        FRAME_CHECKSUM_SIZE_BYTES
    } else if magic == SNAPSHOT_DATA_MAGIC && start.starts_with(SNAPSHOT_DATA_MAGIC_UNCHECKED) {
        0
    } else {
        return Err(format!(
            "snapshot data of {len} bytes does not start with magic {:?}",
            String::from_utf8_lossy(magic)
        ));
    };
    let prefix_len = FRAME_PREFIX_SIZE_BYTES + checksum_len;
    if len < prefix_len as u64 {
        return Err(format!(
            "snapshot data of {len} bytes is shorter than its frame's {prefix_len}-byte prefix"
        ));
    }
    r.read_exact(&mut prefix[FRAME_PREFIX_SIZE_BYTES..prefix_len])
        .map_err(|e| io("read", e))?;
    let header_len = decode_len(&prefix[8..16], SNAPSHOT_HEADER_SIZE_BYTES_MAX as u64)?;
    let body_len = decode_len(&prefix[16..24], SNAPSHOT_SIZE_BYTES_MAX)?;
    let want = prefix_len as u64 + header_len + body_len;
    if len != want {
        return Err(format!(
            "snapshot data is {len} bytes but its frame says {want} (header {header_len}, body {body_len})"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header).map_err(|e| io("read", e))?;
    if verify == Verify::Whole && checksum_len > 0 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header);
        let hashed = std::io::copy(
            &mut BufReader::with_capacity(COPY_BUFFER_BYTES, &mut *r).take(body_len),
            &mut hasher,
        )
        .map_err(|e| io("read", e))?;
        if hashed != body_len
            || prefix[FRAME_PREFIX_SIZE_BYTES..prefix_len] != *hasher.finalize().as_bytes()
        {
            return Err(format!(
                "snapshot data of {len} bytes fails its checksum: it was damaged on a disk or on the way"
            ));
        }
    }
    Ok(Frame {
        header,
        body_start: prefix_len as u64 + header_len,
        body_len,
    })
}

/// Decode a big-endian u64 length field and check it against `limit` before anything is
/// allocated for it.
fn decode_len(raw: &[u8], limit: u64) -> std::result::Result<u64, String> {
    let raw: [u8; 8] = raw
        .try_into()
        .map_err(|_| format!("snapshot length field is {} bytes, want 8", raw.len()))?;
    let len = u64::from_be_bytes(raw);
    if len > limit {
        return Err(format!("snapshot length field {len} exceeds limit {limit}"));
    }
    Ok(len)
}

/// Open the current snapshot file and check its frame (how much: `verify`); its meta is what
/// its header says. `Ok(None)` if there is no snapshot yet.
fn open_snapshot_file(
    path: &Path,
    verify: Verify,
) -> std::result::Result<Option<(Meta, File)>, String> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let frame = check_frame(&mut file, SNAPSHOT_DATA_MAGIC, verify)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let header: SnapshotHeader = serde_json::from_slice(&frame.header)
        .map_err(|e| format!("decode snapshot header of {}: {e}", path.display()))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| format!("seek {}: {e}", path.display()))?;
    let meta = Meta {
        last_log_id: header.last_applied,
        last_membership: header.last_membership,
        snapshot_id: snapshot_id(header.last_applied),
    };
    Ok(Some((meta, file)))
}

/// An older build kept the current snapshot as `QVRSFIL1 | meta length (u64 BE) | meta (JSON) |
/// snapshot data`. The data alone is the file now (its header says what the meta said): copy
/// it out, check it whole, and put it in the file's place.
fn migrate_wrapped_snapshot_file(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(SNAPSHOT_FILE_NAME);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let mut prefix = [0u8; 16];
    if file.read_exact(&mut prefix).is_err() || &prefix[..8] != SNAPSHOT_FILE_MAGIC_WRAPPED {
        // Not the old format (a damaged file is reported by the caller's check).
        return Ok(());
    }
    let meta_len = decode_len(&prefix[8..], SNAPSHOT_HEADER_SIZE_BYTES_MAX as u64)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut data = file.try_clone()?;
    data.seek(SeekFrom::Start(16 + meta_len))?;
    let mut temp = TempFile::create(dir.join(SNAPSHOT_TMP_FILE_NAME))?;
    std::io::copy(
        &mut BufReader::with_capacity(COPY_BUFFER_BYTES, data.take(SNAPSHOT_SIZE_BYTES_MAX + 1)),
        &mut BufWriter::with_capacity(COPY_BUFFER_BYTES, &mut temp.file),
    )
    .with_context(|| format!("copy the snapshot data out of {}", path.display()))?;
    check_frame(&mut temp.file, SNAPSHOT_DATA_MAGIC, Verify::Whole).map_err(|e| {
        anyhow::anyhow!(
            "the snapshot data in {} (an older build's): {e}",
            path.display()
        )
    })?;
    temp.file.sync_all()?;
    let (_, tmp) = temp.into_parts();
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))?;
    tracing::info!(path = %path.display(), "snapshot file moved to the unwrapped format");
    Ok(())
}

impl<A: App> RaftSnapshotBuilder<TypeConfig<A>> for StateMachineStore<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig<A>>> {
        Ok(crate::blocking(|| self.build_or_keep_current()))
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>> {
        Ok(Box::new(self.begin_receiving_sync()?))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<SnapshotData>) -> Result<()> {
        let Some((file, temp_path)) = snapshot.into_std().await else {
            return Err(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error("the snapshot to install has no data"),
            )
            .into());
        };
        crate::blocking(|| self.install_snapshot_sync(meta, file, temp_path))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig<A>>>> {
        crate::blocking(|| self.current_snapshot_sync())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// `header` and `body` framed by [`write_frame`], in memory.
    fn frame(magic: &[u8; 8], header: &[u8], body: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let mut out = Cursor::new(Vec::new());
        write_frame(&mut out, magic, header, |w| Ok(w.write_all(body)?))
            .map_err(|e| format!("{e:#}"))?;
        Ok(out.into_inner())
    }

    /// The header and body of `bytes`, as [`check_frame`] finds them.
    fn unframe<'a>(
        magic: &[u8; 8],
        bytes: &'a [u8],
    ) -> std::result::Result<(&'a [u8], &'a [u8]), String> {
        let frame = check_frame(&mut Cursor::new(bytes), magic, Verify::Whole)?;
        let body_start = frame.body_start as usize;
        let header = &bytes[body_start - frame.header.len()..body_start];
        assert_eq!(header, frame.header);
        assert_eq!(frame.len(), bytes.len() as u64);
        Ok((header, &bytes[body_start..]))
    }

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
        assert!(unframe(SNAPSHOT_FILE_MAGIC_WRAPPED, &framed).is_err());
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
        assert!(unframe(SNAPSHOT_FILE_MAGIC_WRAPPED, &v1).is_err());
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
        assert!(open_snapshot_file(&path, Verify::Whole)
            .expect("absent is ok")
            .is_none());

        let header = SnapshotHeader {
            last_applied: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 7)),
            last_membership: Membership::default(),
        };
        let header_bytes = serde_json::to_vec(&header).expect("header");
        let data = frame(SNAPSHOT_DATA_MAGIC, &header_bytes, b"app").expect("frame");
        std::fs::write(&path, &data).expect("write");
        let (meta, mut file) = open_snapshot_file(&path, Verify::Whole)
            .expect("read")
            .expect("present");
        assert_eq!(meta.last_log_id, header.last_applied);
        assert_eq!(meta.snapshot_id, "2-1-7");
        let mut read = Vec::new();
        file.read_to_end(&mut read).expect("read back");
        assert_eq!(read, data, "the file is handed out from its start");

        std::fs::write(&path, &data[..data.len() - 1]).expect("truncate");
        assert!(
            open_snapshot_file(&path, Verify::HeaderOnly).is_err(),
            "truncated data"
        );
        let mut flipped = data.clone();
        *flipped.last_mut().expect("a byte") ^= 1;
        std::fs::write(&path, &flipped).expect("flip");
        assert!(
            open_snapshot_file(&path, Verify::HeaderOnly).is_ok(),
            "the header is fine"
        );
        assert!(
            open_snapshot_file(&path, Verify::Whole).is_err(),
            "the body is not"
        );
        std::fs::write(&path, &data[..12]).expect("truncate");
        assert!(
            open_snapshot_file(&path, Verify::HeaderOnly).is_err(),
            "truncated prefix"
        );
        std::fs::write(&path, b"not a snapshot file at all").expect("corrupt");
        assert!(
            open_snapshot_file(&path, Verify::HeaderOnly).is_err(),
            "bad magic"
        );
    }

    /// A current snapshot file an older build wrote (meta, then the data) is moved to the
    /// current format at open: the same data, the same meta, and the file is the data alone.
    #[test]
    fn a_wrapped_snapshot_file_of_an_older_build_is_unwrapped_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let header = SnapshotHeader {
            last_applied: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 9)),
            last_membership: Membership::default(),
        };
        let data = frame(
            SNAPSHOT_DATA_MAGIC,
            &serde_json::to_vec(&header).expect("header"),
            b"blob",
        )
        .expect("frame");
        let old_meta = Meta {
            last_log_id: header.last_applied,
            last_membership: header.last_membership.clone(),
            snapshot_id: snapshot_id(header.last_applied),
        };
        let meta_bytes = serde_json::to_vec(&old_meta).expect("meta");
        let mut wrapped = SNAPSHOT_FILE_MAGIC_WRAPPED.to_vec();
        wrapped.extend_from_slice(&(meta_bytes.len() as u64).to_be_bytes());
        wrapped.extend_from_slice(&meta_bytes);
        wrapped.extend_from_slice(&data);
        std::fs::write(dir.path().join(SNAPSHOT_FILE_NAME), &wrapped).expect("write");

        let (lease, _released) = crate::env_lease();
        let store = StateMachineStore::<Blob>::open(dir.path(), lease).expect("open");
        let current = store
            .current_snapshot_sync()
            .expect("read")
            .expect("present");
        assert_eq!(current.meta, old_meta);
        assert_eq!(
            std::fs::read(dir.path().join(SNAPSHOT_FILE_NAME)).expect("read"),
            data
        );

        // A damaged one is refused, not taken for no snapshot.
        drop((store, current));
        let mut damaged = wrapped;
        *damaged.last_mut().expect("a byte") ^= 1;
        std::fs::write(dir.path().join(SNAPSHOT_FILE_NAME), &damaged).expect("write");
        let (lease, _released) = crate::env_lease();
        let error = StateMachineStore::<Blob>::open(dir.path(), lease)
            .err()
            .expect("a damaged old file is refused");
        assert!(
            format!("{error:#}").contains("fails its checksum"),
            "{error:#}"
        );
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
        fn export(&self, _: &RoTxn<'_>, out: &mut dyn Write) -> anyhow::Result<()> {
            Ok(out.write_all(b"blob")?)
        }
        fn import(&self, _: &mut RwTxn<'_>, data: &mut dyn Read) -> anyhow::Result<()> {
            let mut blob = Vec::new();
            data.read_to_end(&mut blob)?;
            anyhow::ensure!(blob == b"blob", "not the blob");
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
                limit in prop_oneof![0u64..300, Just(u64::MAX)],
            ) {
                match decode_len(&raw, limit) {
                    Ok(len) => {
                        prop_assert_eq!(raw.len(), 8);
                        prop_assert!(len <= limit);
                        prop_assert_eq!(len, u64::from_be_bytes(raw[..].try_into().unwrap()));
                    }
                    Err(_) => prop_assert!(
                        raw.len() != 8 || u64::from_be_bytes(raw[..].try_into().unwrap()) > limit
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
