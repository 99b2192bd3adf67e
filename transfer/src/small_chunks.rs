//! Small chunks packed into one LMDB environment, written with group commit.
//!
//! A chunk of at most [`SMALL_CHUNK_BYTES_MAX`] bytes (a small file, or the tail of a larger one)
//! is a key-value pair here instead of a file of its own: creating a file costs an inode, a
//! directory entry and a rename, which on this project's test machines (ext4) took ~0.6 ms of
//! kernel time per file, more than the fsync that follows it. Concurrent puts share one write
//! transaction and its commit, so N writers cost one commit (two fdatasyncs), not N.
//! Decision: docs/decisions/0007-small-chunks-in-lmdb.md.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use heed::types::Bytes;

use crate::Hash;

/// Largest chunk kept in the pack; larger ones are files.
pub const SMALL_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Upper bound of the pack's memory map (the file grows as needed). When it is full, new small
/// chunks are written as files instead.
const SMALL_MAP_SIZE_BYTES: usize = 16 << 30;
/// Reader slots: one per thread that reads (tokio's blocking pool can run hundreds).
const SMALL_MAX_READERS: u32 = 1024;

/// Why a put into the pack failed.
#[derive(Clone, Debug)]
pub(crate) enum PackError {
    /// The pack's map is full: store the chunk as a file.
    Full,
    Io(String),
}

type Pending = (Hash, Vec<u8>, u64);

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<Pending>,
    /// Tickets handed out so far.
    requested: u64,
    /// Every ticket up to this one is committed (or failed, see `failed`).
    completed: u64,
    running: bool,
    failed: HashMap<u64, PackError>,
}

pub(crate) struct SmallChunks {
    env: heed::Env,
    db: heed::Database<Bytes, Bytes>,
    queue: Mutex<Queue>,
    done: Condvar,
}

impl std::fmt::Debug for SmallChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmallChunks")
            .field("path", &self.env.path())
            .finish_non_exhaustive()
    }
}

fn heed_err(context: &str) -> impl FnOnce(heed::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::other(format!("{context}: {e}"))
}

impl SmallChunks {
    fn new(env: heed::Env, db: heed::Database<Bytes, Bytes>) -> SmallChunks {
        SmallChunks {
            env,
            db,
            queue: Mutex::new(Queue::default()),
            done: Condvar::new(),
        }
    }

    pub(crate) fn open(dir: &Path) -> std::io::Result<SmallChunks> {
        std::fs::create_dir_all(dir)?;
        // SAFETY: the pack's directory belongs to one chunk store, which a process opens once
        // (see the store's module docs); heed refuses a second open of the same path.
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .map_size(SMALL_MAP_SIZE_BYTES)
                .max_dbs(1)
                .max_readers(SMALL_MAX_READERS)
                .open(dir)
        }
        .map_err(heed_err("open the small-chunk pack"))?;
        let mut wtxn = env
            .write_txn()
            .map_err(heed_err("open the small-chunk pack"))?;
        let db = env
            .create_database(&mut wtxn, Some("chunks"))
            .map_err(heed_err("open the small-chunk pack"))?;
        wtxn.commit()
            .map_err(heed_err("open the small-chunk pack"))?;
        Ok(SmallChunks::new(env, db))
    }

    /// `f` of the stored bytes, if the chunk is in the pack (inside one read transaction).
    fn with_value<T>(&self, hash: &Hash, f: impl FnOnce(&[u8]) -> T) -> std::io::Result<Option<T>> {
        let rtxn = self
            .env
            .read_txn()
            .map_err(heed_err("read a small chunk"))?;
        let value = self
            .db
            .get(&rtxn, &hash.0[..])
            .map_err(heed_err("read a small chunk"))?;
        Ok(value.map(f))
    }

    /// Opens an existing pack for reading only, beside the process that writes it (LMDB
    /// coordinates readers across processes); for inspecting a running node's store.
    pub(crate) fn open_read_only(dir: &Path) -> std::io::Result<SmallChunks> {
        // SAFETY: as in `open`; this process opens the pack once, read-only.
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .map_size(SMALL_MAP_SIZE_BYTES)
                .max_dbs(1)
                .max_readers(SMALL_MAX_READERS)
                .flags(heed::EnvFlags::READ_ONLY)
                .open(dir)
        }
        .map_err(heed_err("open the small-chunk pack read-only"))?;
        let rtxn = env
            .read_txn()
            .map_err(heed_err("open the small-chunk pack read-only"))?;
        let db = env
            .open_database(&rtxn, Some("chunks"))
            .map_err(heed_err("open the small-chunk pack read-only"))?
            .ok_or_else(|| std::io::Error::other("the small-chunk pack has no chunk table"))?;
        // Committed, not dropped: LMDB closes a table handle opened in an aborted transaction.
        rtxn.commit()
            .map_err(heed_err("open the small-chunk pack read-only"))?;
        Ok(SmallChunks::new(env, db))
    }

    pub(crate) fn get(&self, hash: &Hash) -> std::io::Result<Option<Vec<u8>>> {
        self.with_value(hash, <[u8]>::to_vec)
    }

    pub(crate) fn size_of(&self, hash: &Hash) -> std::io::Result<Option<u64>> {
        self.with_value(hash, |v| v.len() as u64)
    }

    /// Whether the chunk is in the pack; a read error counts as absent, and is logged.
    pub(crate) fn contains(&self, hash: &Hash) -> bool {
        match self.size_of(hash) {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::warn!(%hash, "small-chunk pack: {e}");
                false
            }
        }
    }

    pub(crate) fn remove(&self, hash: &Hash) -> std::io::Result<()> {
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(heed_err("remove a small chunk"))?;
        self.db
            .delete(&mut wtxn, &hash.0[..])
            .map_err(heed_err("remove a small chunk"))?;
        wtxn.commit().map_err(heed_err("remove a small chunk"))
    }

    pub(crate) fn list(&self) -> std::io::Result<Vec<Hash>> {
        let rtxn = self.env.read_txn().map_err(heed_err("list small chunks"))?;
        let mut hashes = Vec::new();
        for entry in self.db.iter(&rtxn).map_err(heed_err("list small chunks"))? {
            let (key, _) = entry.map_err(heed_err("list small chunks"))?;
            match <[u8; 32]>::try_from(key) {
                Ok(bytes) => hashes.push(Hash(bytes)),
                Err(_) => tracing::warn!(
                    key = %hex::encode(key),
                    "unexpected key in the small-chunk pack, skipped"
                ),
            }
        }
        Ok(hashes)
    }

    /// Overwrites the stored bytes without checking them: tests use it to plant rot.
    pub(crate) fn overwrite_unchecked(&self, hash: &Hash, data: &[u8]) -> std::io::Result<()> {
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(heed_err("overwrite a small chunk"))?;
        self.db
            .put(&mut wtxn, &hash.0[..], data)
            .map_err(heed_err("overwrite a small chunk"))?;
        wtxn.commit().map_err(heed_err("overwrite a small chunk"))
    }

    /// Stores the chunk durably (the caller has verified it). Returns once a commit that
    /// includes it is durable; concurrent callers share commits.
    pub(crate) fn put(&self, hash: &Hash, data: &[u8]) -> Result<(), PackError> {
        let poisoned = || PackError::Io("small-chunk pack queue poisoned".into());
        let mut queue = self.queue.lock().map_err(|_| poisoned())?;
        queue.requested += 1;
        let ticket = queue.requested;
        queue.pending.push((*hash, data.to_vec(), ticket));
        loop {
            if queue.completed >= ticket {
                return match queue.failed.remove(&ticket) {
                    Some(error) => Err(error),
                    None => Ok(()),
                };
            }
            if queue.running {
                queue = self.done.wait(queue).map_err(|_| poisoned())?;
                continue;
            }
            // Commit everything queued so far, this caller's chunk included.
            let batch = std::mem::take(&mut queue.pending);
            let covers = queue.requested;
            queue.running = true;
            drop(queue);
            // A panic inside the commit must not leave `running` set, or every later put
            // would wait forever: it fails this batch instead.
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit(&batch)))
                    .unwrap_or_else(|_| Err(PackError::Io("small-chunk commit panicked".into())));
            queue = self.queue.lock().map_err(|_| poisoned())?;
            queue.running = false;
            queue.completed = covers;
            if let Err(error) = result {
                for (_, _, t) in &batch {
                    queue.failed.insert(*t, error.clone());
                }
            }
            self.done.notify_all();
        }
    }

    fn commit(&self, batch: &[Pending]) -> Result<(), PackError> {
        let io = |e: heed::Error| match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => PackError::Full,
            other => PackError::Io(format!("write small chunks: {other}")),
        };
        let mut wtxn = self.env.write_txn().map_err(io)?;
        for (hash, data, _) in batch {
            self.db.put(&mut wtxn, &hash.0[..], data).map_err(io)?;
        }
        wtxn.commit().map_err(io)
    }
}
