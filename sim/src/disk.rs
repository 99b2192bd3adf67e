//! The simulated disk under each node's Raft log: which writes a crash loses.
//!
//! The model. A simulated crash is a power loss of the node's machine: the process dies and so
//! does the page cache. What survives is what was durable:
//! - a write transaction committed with LMDB's full sync (the default, and what both of
//!   Quiver's environments use in production) is durable when `commit` returns: LMDB writes the
//!   data pages, fsyncs, then writes and fsyncs the meta page, so a crash leaves either the old
//!   or the new transaction, never half of one;
//! - a transaction committed with `MDB_NOSYNC` (only the planted bug [`Plant::DropLogFsync`]
//!   does this, through `quiver_raft::LogDisk::skip_fsync`) sits in the page cache until the
//!   kernel writes it back, or until a later synced commit flushes the file. On a power loss
//!   LMDB may then come back with any transaction since the last durable one, or even with a
//!   torn meta/data pair; this model takes the kindest of those outcomes: the log env exactly as
//!   it was at its last durable point. Writeback is a whole-file flush every
//!   [`DISK_WRITEBACK_INTERVAL_MS`] (Linux's flusher wakes every 5 s; it writes only pages dirty
//!   for 30 s, so the model loses less than a real kernel would, which makes a planted bug
//!   harder, not easier, to find).
//!
//! The state environment (applied state and `last_applied`, one transaction per applied batch)
//! is always fully synced, and the current-snapshot file is written to a temp file, fsynced,
//! renamed and its directory fsynced; so they lose nothing and the model leaves them alone. The
//! consequence under the planted bug is honest too: after a crash a node's state machine can be
//! ahead of its log (openraft then treats the applied prefix as purged), while its vote and its
//! log went back in time.
//!
//! How it is cheap: [`SimDisk`] is the `LogDisk` each node's log store is started with. As long
//! as every write is synced the durable state is simply the file on disk and nothing is copied.
//! Before the first unsynced write after a durable point it copies the log environment (LMDB's
//! own consistent copy) to an image file; a writeback drops the image; a crash, once the node
//! has shut down and closed its environments, puts the image back as the log's `data.mdb`. The
//! nodes' files live on a RAM disk, so the real fsyncs cost nothing; durability is this model's.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use quiver_raft::heed::{CompactionOption, Env};
use quiver_raft::LogDisk;

use crate::schedule::NodeId;

/// How often the simulated kernel writes a node's dirty log pages back (all of them).
pub const DISK_WRITEBACK_INTERVAL_MS: u64 = 5_000;
/// File name of LMDB's data file inside an environment directory.
const LMDB_DATA_FILE_NAME: &str = "data.mdb";
/// File name of LMDB's lock file inside an environment directory.
const LMDB_LOCK_FILE_NAME: &str = "lock.mdb";

#[derive(Debug, Default)]
struct DiskState {
    /// An image of the log env at its last durable point exists: some writes since are not
    /// durable.
    image: bool,
    /// Writes since the last durable point.
    unsynced_writes: u64,
    /// All writes the log store made, synced or not.
    writes: u64,
    /// A failure of the model itself (copying the image), reported by the next crash.
    error: Option<String>,
}

/// One node's log disk (see the module docs).
#[derive(Debug)]
pub struct SimDisk {
    node: NodeId,
    /// The log environment's directory (`<node dir>/log`).
    log_dir: PathBuf,
    /// Where the image of the last durable point is kept.
    image_path: PathBuf,
    /// The planted bug: the log store skips its fsyncs.
    skip_fsync: bool,
    state: Mutex<DiskState>,
}

/// What a power loss did to one node's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerLoss {
    /// Unsynced log writes that were lost.
    pub writes_lost: u64,
}

impl SimDisk {
    pub fn new(node: NodeId, node_dir: &Path, skip_fsync: bool) -> Self {
        SimDisk {
            node,
            log_dir: node_dir.join(quiver_raft::LOG_DIR_NAME),
            image_path: node_dir.with_extension("durable-log.mdb"),
            skip_fsync,
            state: Mutex::new(DiskState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Log writes not yet durable.
    pub fn unsynced_writes(&self) -> u64 {
        self.lock().unsynced_writes
    }

    /// Every log write so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// The kernel wrote every dirty page back: all writes so far are durable. Returns how many
    /// writes that made durable.
    pub fn writeback(&self) -> u64 {
        let mut s = self.lock();
        s.image = false;
        std::mem::take(&mut s.unsynced_writes)
    }

    /// Power loss. Call once the node is shut down (its environments closed): the log env goes
    /// back to its last durable point. `Err` if the model could not do that (the node's files
    /// are then as the crash left them).
    pub fn power_loss(&self) -> anyhow::Result<PowerLoss> {
        let mut s = self.lock();
        if let Some(e) = s.error.take() {
            anyhow::bail!("n{}: the disk model failed earlier: {e}", self.node);
        }
        let lost = PowerLoss {
            writes_lost: s.unsynced_writes,
        };
        if s.image {
            let data = self.log_dir.join(LMDB_DATA_FILE_NAME);
            std::fs::rename(&self.image_path, &data).map_err(|e| {
                anyhow::anyhow!(
                    "n{}: put the durable log image {} back as {}: {e}",
                    self.node,
                    self.image_path.display(),
                    data.display()
                )
            })?;
            // The lock file holds only the reader table; LMDB rebuilds it. Removing it keeps a
            // stale reader slot from pinning pages of a file that no longer exists.
            let lock = self.log_dir.join(LMDB_LOCK_FILE_NAME);
            if lock.exists() {
                std::fs::remove_file(&lock).map_err(|e| {
                    anyhow::anyhow!("n{}: remove {}: {e}", self.node, lock.display())
                })?;
            }
        }
        s.image = false;
        s.unsynced_writes = 0;
        Ok(lost)
    }
}

impl LogDisk for SimDisk {
    fn skip_fsync(&self) -> bool {
        self.skip_fsync
    }

    fn before_write(&self, env: &Env, synced: bool) {
        let mut s = self.lock();
        if synced || s.image || s.error.is_some() {
            return;
        }
        // The first write since the last durable point that will not be durable: keep the env
        // as it is now, which is what a power loss must bring back.
        match env.copy_to_path(&self.image_path, CompactionOption::Disabled) {
            Ok(_file) => s.image = true,
            Err(e) => {
                s.error = Some(format!(
                    "copy the log env to {}: {e}",
                    self.image_path.display()
                ))
            }
        }
    }

    fn after_write(&self, synced: bool) {
        let mut s = self.lock();
        s.writes += 1;
        if synced {
            // A synced commit flushes the whole file: everything before it is durable too.
            s.image = false;
            s.unsynced_writes = 0;
        } else {
            s.unsynced_writes += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_raft::heed::types::Str;
    use quiver_raft::heed::{Database, EnvOpenOptions};

    type Db = Database<Str, Str>;

    fn open(log_dir: &Path) -> (Env, Db) {
        std::fs::create_dir_all(log_dir).expect("mkdir");
        // SAFETY: opened once at a time in this test, closed before reopening.
        let env = unsafe { EnvOpenOptions::new().max_dbs(1).open(log_dir) }.expect("open env");
        let mut wtxn = env.write_txn().expect("txn");
        let db: Db = env.create_database(&mut wtxn, Some("t")).expect("db");
        wtxn.commit().expect("commit");
        (env, db)
    }

    /// One write as the log store makes it: told before and after.
    fn put(disk: &SimDisk, env: &Env, db: &Db, key: &str, synced: bool) {
        disk.before_write(env, synced);
        let mut wtxn = env.write_txn().expect("txn");
        db.put(&mut wtxn, key, "v").expect("put");
        wtxn.commit().expect("commit");
        disk.after_write(synced);
    }

    fn keys(env: &Env, db: &Db) -> Vec<String> {
        let rtxn = env.read_txn().expect("rtxn");
        db.iter(&rtxn)
            .expect("iter")
            .map(|kv| kv.expect("kv").0.to_string())
            .collect()
    }

    fn close(env: Env) {
        env.prepare_for_closing().wait();
    }

    #[test]
    fn a_power_loss_takes_back_exactly_the_writes_since_the_last_durable_point() {
        let root = tempfile::tempdir().expect("tempdir");
        let node_dir = root.path().join("n1");
        let disk = SimDisk::new(1, &node_dir, true);
        let log_dir = node_dir.join(quiver_raft::LOG_DIR_NAME);

        let (env, db) = open(&log_dir);
        put(&disk, &env, &db, "a", true);
        put(&disk, &env, &db, "b", false);
        put(&disk, &env, &db, "c", false);
        assert_eq!(disk.unsynced_writes(), 2);
        close(env);
        assert_eq!(disk.power_loss().expect("power loss").writes_lost, 2);

        let (env, db) = open(&log_dir);
        assert_eq!(keys(&env, &db), ["a"], "b and c were never durable");
        put(&disk, &env, &db, "d", false);
        assert_eq!(disk.writeback(), 1, "d is written back");
        put(&disk, &env, &db, "e", false);
        put(&disk, &env, &db, "f", true);
        put(&disk, &env, &db, "g", false);
        close(env);
        assert_eq!(disk.power_loss().expect("power loss").writes_lost, 1);

        let (env, db) = open(&log_dir);
        assert_eq!(
            keys(&env, &db),
            ["a", "d", "e", "f"],
            "the synced f made e durable too; g was lost"
        );
        assert_eq!(disk.writes(), 7);
        close(env);
        assert_eq!(
            disk.power_loss().expect("nothing unsynced").writes_lost,
            0,
            "a crash with everything durable loses nothing"
        );
    }
}
