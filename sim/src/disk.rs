//! The simulated disk under each node's Raft log: which writes a crash loses.
//!
//! The model. A simulated crash is a power loss of the node's machine: the process dies and so
//! does the page cache. What survives is what was durable:
//! - a log write (a `pwrite` of whole records to a segment file followed by `fdatasync`, what
//!   Quiver's log store does in production) is durable when it returns;
//! - a write made without that sync (only the planted bug [`Plant::DropLogFsync`] does this,
//!   through `quiver_raft::LogDisk::skip_fsync`) sits in the page cache until the kernel writes
//!   it back, or until a later synced write flushes the file. On a power loss the log may then
//!   come back with any subset of those pages; this model takes the kindest outcome: the log
//!   directory exactly as it was at its last durable point. Writeback is a whole-directory flush
//!   every [`DISK_WRITEBACK_INTERVAL_MS`] (Linux's flusher wakes every 5 s; it writes only pages
//!   dirty for 30 s, so the model loses less than a real kernel would, which makes a planted bug
//!   harder, not easier, to find).
//!
//! The state environment (applied state and `last_applied`, one LMDB transaction per applied
//! batch) is committed with `MDB_NOMETASYNC`: the data pages are synced, the meta page that makes
//! the commit current is synced only by the next commit or an explicit sync (decision 0012). A
//! power loss may therefore take back the last commit, and [`revert_last_state_commit`] always
//! does when the node says its last commit was not synced yet (the harshest outcome; a kernel
//! might have written the page back). The current-snapshot file (written to a temp file, fsynced,
//! renamed, its directory fsynced) loses nothing. The consequence under the planted bug is honest
//! too: after a crash a node's state machine can be ahead of its log (openraft then treats the
//! applied prefix as purged), while its vote and its log went back in time.
//!
//! How it is cheap: [`SimDisk`] is the `LogDisk` each node's log store is started with. As long
//! as every write is synced the durable state is simply the files on disk and nothing is copied.
//! Before the first unsynced write after a durable point it copies the log directory to an image
//! directory; a writeback drops the image; a crash, once the node has shut down and closed its
//! storage, puts the image back as the log directory. The nodes' files live on a RAM disk, so the
//! real fsyncs cost nothing; durability is this model's.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use quiver_raft::heed::types::{Bytes, Str};
use quiver_raft::heed::{Database, EnvFlags, EnvOpenOptions};
use quiver_raft::LogDisk;

use crate::schedule::NodeId;

/// How often the simulated kernel writes a node's dirty log pages back (all of them).
pub const DISK_WRITEBACK_INTERVAL_MS: u64 = 5_000;

#[derive(Debug, Default)]
struct DiskState {
    /// An image of the log directory at its last durable point exists: some writes since are
    /// not durable.
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
    /// The log's directory (`<node dir>/log`).
    log_dir: PathBuf,
    /// Where the image of the last durable point is kept (a directory).
    image_dir: PathBuf,
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
            image_dir: node_dir.with_extension("durable-log"),
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

    /// Power loss. Call once the node is shut down (its storage closed): the log directory goes
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
            std::fs::remove_dir_all(&self.log_dir).map_err(|e| {
                anyhow::anyhow!("n{}: remove {}: {e}", self.node, self.log_dir.display())
            })?;
            std::fs::rename(&self.image_dir, &self.log_dir).map_err(|e| {
                anyhow::anyhow!(
                    "n{}: put the durable log image {} back as {}: {e}",
                    self.node,
                    self.image_dir.display(),
                    self.log_dir.display()
                )
            })?;
        }
        s.image = false;
        s.unsynced_writes = 0;
        Ok(lost)
    }
}

/// Key written and deleted again in the state env's main database, only to dirty a page so that
/// the reverting commit writes a meta page.
const REVERT_KEY: &str = "quiver-sim power loss";

/// Power loss of a state environment whose last commit's meta page was not synced: open it on
/// its previous meta page (`MDB_PREVSNAPSHOT`, the state before that commit) and commit a write
/// so that LMDB keeps it. Call with the environment closed.
pub fn revert_last_state_commit(state_dir: &Path) -> anyhow::Result<()> {
    // SAFETY: the node has shut down and closed this environment; nothing else opens it until
    // this function has closed it again.
    let env = unsafe {
        EnvOpenOptions::new()
            .flags(EnvFlags::PREV_SNAPSHOT)
            .map_size(quiver_raft::STATE_MAP_SIZE_BYTES)
            .open(state_dir)
    }
    .with_context(|| format!("open {} on its previous commit", state_dir.display()))?;
    let mut wtxn = env.write_txn().context("begin the reverting txn")?;
    let main: Database<Str, Bytes> = env
        .open_database(&wtxn, None)
        .context("open the main database")?
        .context("the state env has a main database")?;
    main.put(&mut wtxn, REVERT_KEY, b"")
        .context("dirty a page")?;
    main.delete(&mut wtxn, REVERT_KEY).context("dirty a page")?;
    wtxn.commit().context("commit the reverting txn")?;
    env.prepare_for_closing().wait();
    Ok(())
}

/// Copy the files of `from` into a fresh directory `to`.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for item in std::fs::read_dir(from)? {
        let item = item?;
        if item.file_type()?.is_file() {
            std::fs::copy(item.path(), to.join(item.file_name()))?;
        }
    }
    Ok(())
}

impl LogDisk for SimDisk {
    fn skip_fsync(&self) -> bool {
        self.skip_fsync
    }

    fn before_write(&self, log_dir: &Path, synced: bool) {
        let mut s = self.lock();
        if synced || s.image || s.error.is_some() {
            return;
        }
        // The first write since the last durable point that will not be durable: keep the log
        // as it is now, which is what a power loss must bring back.
        match copy_dir(log_dir, &self.image_dir) {
            Ok(()) => s.image = true,
            Err(e) => {
                s.error = Some(format!(
                    "copy the log directory {} to {}: {e}",
                    log_dir.display(),
                    self.image_dir.display()
                ))
            }
        }
    }

    fn after_write(&self, synced: bool) {
        let mut s = self.lock();
        s.writes += 1;
        if synced {
            // A synced write flushes the file: everything before it is durable too (the model's
            // log is one file at a time; a new segment is started only after a synced write).
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

    /// One write as the log store makes it: told before and after; each write is a file.
    fn put(disk: &SimDisk, log_dir: &Path, key: &str, synced: bool) {
        disk.before_write(log_dir, synced);
        std::fs::write(log_dir.join(key), "v").expect("write");
        disk.after_write(synced);
    }

    fn keys(log_dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(log_dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn reverting_the_state_env_takes_back_exactly_its_last_commit() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path();
        let open = || {
            // SAFETY: opened once at a time in this test, closed before reopening.
            unsafe {
                EnvOpenOptions::new()
                    .flags(EnvFlags::NO_META_SYNC)
                    .max_dbs(1)
                    .open(dir)
            }
            .expect("open env")
        };
        let put = |env: &quiver_raft::heed::Env, key: &str| {
            let mut wtxn = env.write_txn().expect("txn");
            let db: Database<Str, Str> = env.create_database(&mut wtxn, Some("t")).expect("db");
            db.put(&mut wtxn, key, "v").expect("put");
            wtxn.commit().expect("commit");
        };
        let keys = |env: &quiver_raft::heed::Env| -> Vec<String> {
            let rtxn = env.read_txn().expect("rtxn");
            let db: Database<Str, Str> =
                env.open_database(&rtxn, Some("t")).expect("db").expect("t");
            db.iter(&rtxn)
                .expect("iter")
                .map(|kv| kv.expect("kv").0.to_string())
                .collect()
        };
        let env = open();
        put(&env, "a");
        put(&env, "b");
        env.prepare_for_closing().wait();
        revert_last_state_commit(dir).expect("revert");
        let env = open();
        assert_eq!(keys(&env), ["a"], "b was the last commit");
        put(&env, "c");
        env.prepare_for_closing().wait();
        let env = open();
        assert_eq!(
            keys(&env),
            ["a", "c"],
            "the revert stuck; later commits are kept"
        );
        env.prepare_for_closing().wait();
    }

    #[test]
    fn a_power_loss_takes_back_exactly_the_writes_since_the_last_durable_point() {
        let root = tempfile::tempdir().expect("tempdir");
        let node_dir = root.path().join("n1");
        let disk = SimDisk::new(1, &node_dir, true);
        let log_dir = node_dir.join(quiver_raft::LOG_DIR_NAME);
        std::fs::create_dir_all(&log_dir).expect("mkdir");

        put(&disk, &log_dir, "a", true);
        put(&disk, &log_dir, "b", false);
        put(&disk, &log_dir, "c", false);
        assert_eq!(disk.unsynced_writes(), 2);
        assert_eq!(disk.power_loss().expect("power loss").writes_lost, 2);
        assert_eq!(keys(&log_dir), ["a"], "b and c were never durable");

        put(&disk, &log_dir, "d", false);
        assert_eq!(disk.writeback(), 1, "d is written back");
        put(&disk, &log_dir, "e", false);
        put(&disk, &log_dir, "f", true);
        put(&disk, &log_dir, "g", false);
        assert_eq!(disk.power_loss().expect("power loss").writes_lost, 1);
        assert_eq!(
            keys(&log_dir),
            ["a", "d", "e", "f"],
            "the synced f made e durable too; g was lost"
        );
        assert_eq!(disk.writes(), 7);
        assert_eq!(
            disk.power_loss().expect("nothing unsynced").writes_lost,
            0,
            "a crash with everything durable loses nothing"
        );
        assert_eq!(keys(&log_dir), ["a", "d", "e", "f"]);
    }
}
