//! The Raft log and vote, in an LMDB environment of their own (`DIR/log`).
//!
//! Why this shape:
//! - The committed index is not stored (`save_committed` keeps openraft's default, a no-op):
//!   openraft calls it on every commit, inside its core loop, and a synced LMDB commit there
//!   would cost every write one more fsync. The state machine is durable on its own (its apply
//!   transaction records the last applied id), so nothing needs it at restart.
//! - Every mutation is one write transaction committed with LMDB's default full sync. Raft's
//!   safety rests on "what I acknowledged is on disk": an entry reported appended, or a vote
//!   granted, must survive power loss. `MDB_NOSYNC` is therefore never used here, except by the
//!   simulator's planted bug through the durability seam (`durability.rs`, [`crate::LogDisk`]),
//!   which also tells a test harness about every write so it can model what a crash loses.
//! - Entries are keyed by big-endian `u64` index so LMDB's byte order is log order; range reads,
//!   "last entry", truncate and purge are plain cursor/range operations.
//! - Entries and the small metadata values (vote, last purged) are JSON. They are read
//!   back with checks (an entry's stored index must equal its key) and every decode failure
//!   becomes a `StorageError` naming what was read; nothing read from disk is unwrapped.
//! - The store is a faithful map from index to entry and does not police continuity: openraft's
//!   engine truncates conflicts before appending and never leaves holes, and its storage suite
//!   deliberately overwrites and skips indexes, which a continuity check would reject.
//! - The store is an `Arc` around the environment: openraft's replication tasks read through
//!   clones while the core task writes; LMDB's MVCC makes that safe without further locking.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, RoTxn, RwTxn, WithTls};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::durability::LogDiskHandle;
use crate::{any_error, open_env, App, EnvLease, NodeId, TypeConfig};

/// Map size of the log environment. LMDB reserves address space, not disk: the file grows with
/// the data, so a generous ceiling costs nothing on 64-bit hosts. Snapshots bound the live log
/// (`logs_to_keep_after_snapshot` + `snapshot_logs_since_last` entries) far below this.
pub const LOG_MAP_SIZE_BYTES: usize = 64 << 30;

/// `entries` and `meta`.
const LOG_MAX_DBS: u32 = 2;
const ENTRIES_DB_NAME: &str = "entries";
const META_DB_NAME: &str = "meta";
const VOTE_KEY: &str = "vote";
const LAST_PURGED_KEY: &str = "last_purged";

type EntriesDb = Database<U64<BigEndian>, Bytes>;
type MetaDb = Database<Str, Bytes>;
type LogEntry<A> = Entry<TypeConfig<A>>;
type Result<T> = std::result::Result<T, StorageError<NodeId>>;

struct LogDb {
    // Field order matters: the environment is closed before the lease is released.
    env: Env,
    entries: EntriesDb,
    meta: MetaDb,
    /// A test harness's disk model (`None` in production).
    disk: Option<LogDiskHandle>,
    /// Whether commits are fsynced: always, unless the harness planted `skip_fsync`.
    synced: bool,
    _lease: EnvLease,
}

/// Raft log storage (`RaftLogStorage` + `RaftLogReader`) over heed. Cheap to clone; clones share
/// the environment.
pub struct LogStore<A> {
    db: Arc<LogDb>,
    _app: PhantomData<fn() -> A>,
}

impl<A> Clone for LogStore<A> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            _app: PhantomData,
        }
    }
}

impl<A: App> LogStore<A> {
    pub(crate) fn open(
        path: &Path,
        lease: EnvLease,
        disk: Option<LogDiskHandle>,
    ) -> anyhow::Result<Self> {
        let synced = !disk.as_ref().is_some_and(|d| d.0.skip_fsync());
        let flags = if synced {
            heed::EnvFlags::empty()
        } else {
            // PLANTED BUG (test harness only, see `durability.rs`): commits are not fsynced.
            heed::EnvFlags::NO_SYNC
        };
        let env = open_env(path, LOG_MAP_SIZE_BYTES, LOG_MAX_DBS, flags)?;
        let mut wtxn = env
            .write_txn()
            .context("begin txn to create log databases")?;
        let entries = env
            .create_database(&mut wtxn, Some(ENTRIES_DB_NAME))
            .context("create log entries database")?;
        let meta = env
            .create_database(&mut wtxn, Some(META_DB_NAME))
            .context("create log meta database")?;
        wtxn.commit().context("commit log database creation")?;
        Ok(LogStore {
            db: Arc::new(LogDb {
                env,
                entries,
                meta,
                disk,
                synced,
                _lease: lease,
            }),
            _app: PhantomData,
        })
    }

    fn read_txn(&self) -> std::result::Result<RoTxn<'_, WithTls>, AnyError> {
        let rtxn = self
            .db
            .env
            .read_txn()
            .map_err(|e| any_error(&e, "begin read txn on log env"))?;
        Ok(rtxn)
    }

    /// Run `f` in one write transaction and commit it (fsync) before returning. A harness disk,
    /// if any, is told before the transaction begins and after it committed.
    fn write<T>(
        &self,
        f: impl FnOnce(&LogDb, &mut RwTxn<'_>) -> std::result::Result<T, StorageError<NodeId>>,
    ) -> std::result::Result<T, StorageError<NodeId>> {
        if let Some(disk) = &self.db.disk {
            disk.0.before_write(&self.db.env, self.db.synced);
        }
        let mut wtxn =
            self.db.env.write_txn().map_err(|e| {
                StorageIOError::write_logs(any_error(&e, "begin write txn on log env"))
            })?;
        let out = f(&self.db, &mut wtxn)?;
        wtxn.commit()
            .map_err(|e| StorageIOError::write_logs(any_error(&e, "commit log txn")))?;
        if let Some(disk) = &self.db.disk {
            disk.0.after_write(self.db.synced);
        }
        Ok(out)
    }

    fn read_entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<LogEntry<A>>> {
        let rtxn = self.read_txn().map_err(StorageIOError::read_logs)?;
        let iter = self
            .db
            .entries
            .range(&rtxn, &range)
            .map_err(|e| StorageIOError::read_logs(any_error(&e, "open log range cursor")))?;
        let mut out = Vec::new();
        for item in iter {
            let (index, bytes) = item
                .map_err(|e| StorageIOError::read_logs(any_error(&e, "step log range cursor")))?;
            out.push(decode_entry::<A>(index, bytes)?);
        }
        Ok(out)
    }

    fn last_entry_id(&self, rtxn: &RoTxn<'_>) -> Result<Option<LogId<NodeId>>> {
        let last = self
            .db
            .entries
            .last(rtxn)
            .map_err(|e| StorageIOError::read_logs(any_error(&e, "read last log entry")))?;
        match last {
            None => Ok(None),
            Some((index, bytes)) => Ok(Some(decode_entry::<A>(index, bytes)?.log_id)),
        }
    }
}

/// Decode one stored entry and check that it is stored under its own index.
fn decode_entry<A: App>(index: u64, bytes: &[u8]) -> Result<LogEntry<A>> {
    let entry: LogEntry<A> = serde_json::from_slice(bytes).map_err(|e| {
        StorageIOError::read_log_at_index(index, any_error(&e, "decode log entry JSON"))
    })?;
    if entry.log_id.index != index {
        return Err(StorageIOError::read_log_at_index(
            index,
            AnyError::error(format!(
                "entry stored under index {index} carries log id {}",
                entry.log_id
            )),
        )
        .into());
    }
    Ok(entry)
}

fn get_meta<T: DeserializeOwned>(
    meta: &MetaDb,
    rtxn: &RoTxn<'_>,
    key: &str,
) -> std::result::Result<Option<T>, AnyError> {
    let Some(bytes) = meta
        .get(rtxn, key)
        .map_err(|e| any_error(&e, &format!("read log meta {key:?}")))?
    else {
        return Ok(None);
    };
    let value = serde_json::from_slice(bytes)
        .map_err(|e| any_error(&e, &format!("decode log meta {key:?}")))?;
    Ok(Some(value))
}

fn put_meta<T: Serialize>(
    meta: &MetaDb,
    wtxn: &mut RwTxn<'_>,
    key: &str,
    value: &T,
) -> std::result::Result<(), AnyError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| any_error(&e, &format!("encode log meta {key:?}")))?;
    meta.put(wtxn, key, &bytes)
        .map_err(|e| any_error(&e, &format!("write log meta {key:?}")))
}

impl<A: App> RaftLogReader<TypeConfig<A>> for LogStore<A> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry<A>>> {
        self.read_entries(range)
    }
}

impl<A: App> RaftLogStorage<TypeConfig<A>> for LogStore<A> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig<A>>> {
        let rtxn = self.read_txn().map_err(StorageIOError::read_logs)?;
        let last_purged_log_id: Option<LogId<NodeId>> =
            get_meta(&self.db.meta, &rtxn, LAST_PURGED_KEY).map_err(StorageIOError::read_logs)?;
        let last_log_id = self.last_entry_id(&rtxn)?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.write(|db, wtxn| {
            put_meta(&db.meta, wtxn, VOTE_KEY, vote)
                .map_err(|e| StorageIOError::write_vote(e).into())
        })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        let rtxn = self.read_txn().map_err(StorageIOError::read_vote)?;
        Ok(get_meta(&self.db.meta, &rtxn, VOTE_KEY).map_err(StorageIOError::read_vote)?)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig<A>>) -> Result<()>
    where
        I: IntoIterator<Item = LogEntry<A>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.write(|db, wtxn| {
            for entry in entries {
                let bytes = serde_json::to_vec(&entry).map_err(|e| {
                    StorageIOError::write_log_entry(entry.log_id, any_error(&e, "encode log entry"))
                })?;
                db.entries
                    .put(wtxn, &entry.log_id.index, &bytes)
                    .map_err(|e| {
                        StorageIOError::write_log_entry(
                            entry.log_id,
                            any_error(&e, "put log entry"),
                        )
                    })?;
            }
            Ok(())
        })?;
        // The transaction is committed and synced: the entries are durable. (Unless the planted
        // `skip_fsync` bug is on: then this report is the lie the simulator must catch.)
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        tracing::debug!(%log_id, "truncate log since (inclusive)");
        self.write(|db, wtxn| {
            db.entries
                .delete_range(wtxn, &(log_id.index..))
                .map_err(|e| StorageIOError::write_logs(any_error(&e, "truncate log")))?;
            Ok(())
        })
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        tracing::debug!(%log_id, "purge log up to (inclusive)");
        self.write(|db, wtxn| {
            let last_purged: Option<LogId<NodeId>> =
                get_meta(&db.meta, wtxn, LAST_PURGED_KEY).map_err(StorageIOError::read_logs)?;
            // Purging never moves backwards; openraft only purges forward.
            if last_purged.is_some_and(|p| p.index > log_id.index) {
                return Err(StorageIOError::write_logs(AnyError::error(format!(
                    "purge up to {log_id} would move last purged back from {last_purged:?}"
                )))
                .into());
            }
            put_meta(&db.meta, wtxn, LAST_PURGED_KEY, &log_id)
                .map_err(StorageIOError::write_logs)?;
            db.entries
                .delete_range(wtxn, &(..=log_id.index))
                .map_err(|e| StorageIOError::write_logs(any_error(&e, "purge log")))?;
            Ok(())
        })
    }
}
