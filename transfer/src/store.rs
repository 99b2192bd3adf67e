//! The content-addressed chunk store: one file per chunk, named by its blake3 hash, except small
//! chunks, which share one LMDB pack.
//!
//! Layout under the store's directory: `ab/cdef…` (the first byte of the hash, in hex, as a
//! fan-out directory, so that no directory holds more than 1/256 of the chunks), `tmp/` for
//! writes in progress and `small/`, the pack of chunks of at most [`SMALL_CHUNK_BYTES_MAX`] bytes
//! (`crate::small_chunks`; a file per 1 KiB chunk cost more than its fsync).
//!
//! Why this shape: a chunk is immutable and named by its content, so identical chunks are stored
//! once and a write never needs to update a file in place. A write goes to `tmp/`, is fsynced,
//! renamed into place and the directory fsynced: after a crash a chunk is either absent or complete,
//! and leftovers in `tmp/` are removed at the next `open`. On Linux the two syncs are group
//! commits (`GroupSync`): concurrent writers share one `syncfs(2)` of the store's filesystem
//! instead of each fsyncing its file and directory, which on ext4 costs one journal commit per
//! call. The ordering guarantee is the same: data durable before the rename, the rename durable
//! before `put` returns. A copy whose sync failed is removed: neither its bytes nor its name are
//! known to be on disk, and a later `put` must not find it and count it. A `put` that finds the
//! chunk already stored counts that copy only once it is durable and intact: it waits for a sync
//! that started after the call (the copy may have been renamed into place by a write whose own
//! sync is still running, or by a process that died before syncing) and re-reads it; a rotten
//! copy is replaced by the bytes in hand. Writes of one chunk's file are serialized (by a lock
//! striped over the hash), so a put never counts a copy that a failing writer is about to
//! remove. Small chunks in the pack need no sync: a pack entry is visible only once the LMDB
//! commit that wrote it is durable. Every read is verified against the hash
//! (DESIGN.md: a chunk is never served or used unless its blake3 hash matches); a chunk that rotted
//! on disk is reported as `Corrupt`, never returned.
//!
//! One process opens a store directory once and shares the handle (it is `Clone`): `open` clears
//! `tmp/`, which would break writes in flight from another handle on the same directory.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::collect::{CollectLock, Collected};
pub use crate::small_chunks::SMALL_CHUNK_BYTES_MAX;
use crate::small_chunks::{PackError, SmallChunks};
use crate::{Chunker, FileEntry, Hash, CHUNK_SIZE_BYTES_MAX};

/// Name of the directory for writes in progress; not a valid fan-out name (two hex digits).
const TMP_DIR: &str = "tmp";
/// Name of the small-chunk pack's directory; not a valid fan-out name either.
const SMALL_DIR: &str = "small";
/// Read size used by [`ingest_reader`].
const INGEST_READ_BYTES: usize = 1024 * 1024;

/// Distinguishes temp files of concurrent writes in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
/// Locks that serialize writes of one chunk's file (a chunk's lock is picked by its hash's
/// first byte): enough that writes of different chunks rarely wait for each other.
const WRITE_LOCK_STRIPES: usize = 64;
/// Chunks [`ChunkStore::remove_idle`] removes while puts wait.
const REMOVE_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {hash} is corrupt on disk: its bytes no longer match its blake3 hash")]
    Corrupt { hash: Hash },
    #[error("chunk {hash} not found in the chunk store")]
    NotFound { hash: Hash },
    #[error("chunk data does not match its claimed hash {expected} (got {actual})")]
    HashMismatch { expected: Hash, actual: Hash },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Content-addressed on-disk chunk store. Cheap to clone; clones share the directory.
#[derive(Clone, Debug)]
pub struct ChunkStore {
    dir: PathBuf,
    sync: std::sync::Arc<GroupSync>,
    small: std::sync::Arc<SmallChunks>,
    /// Whether chunk files are written with direct I/O (until the filesystem refuses it).
    direct: std::sync::Arc<AtomicBool>,
    /// [`WRITE_LOCK_STRIPES`] locks; see the module docs.
    write_locks: std::sync::Arc<[std::sync::Mutex<()>]>,
    /// Orders puts against collection while the node runs (`crate::collect`).
    collect: std::sync::Arc<CollectLock>,
}

/// Group commit of the store's writes: every caller of `sync` returns only
/// after a filesystem sync that started after its call. Concurrent callers
/// share syncs, so N writers cost about two syncs, not N.
#[derive(Debug)]
struct GroupSync {
    dir: File,
    state: std::sync::Mutex<SyncState>,
    done: std::sync::Condvar,
    /// Test-only: the first sync that covers this ticket fails with EIO instead of syncing.
    #[cfg(test)]
    fail_ticket: AtomicU64,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Tickets handed out so far.
    requested: u64,
    /// Every ticket up to this one is durable.
    completed: u64,
    running: bool,
}

impl GroupSync {
    fn new(dir: &Path) -> io::Result<GroupSync> {
        Ok(GroupSync {
            dir: File::open(dir)?,
            state: std::sync::Mutex::new(SyncState::default()),
            done: std::sync::Condvar::new(),
            #[cfg(test)]
            fail_ticket: AtomicU64::new(0),
        })
    }

    /// Returns once everything written before this call is durable.
    fn sync(&self) -> io::Result<()> {
        let lock_err = || io::Error::other("chunk store sync state poisoned");
        let mut state = self.state.lock().map_err(|_| lock_err())?;
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.completed >= ticket {
                return Ok(());
            }
            if state.running {
                state = self.done.wait(state).map_err(|_| lock_err())?;
                continue;
            }
            // This sync starts after every ticket handed out so far.
            let covers = state.requested;
            let from = state.completed + 1;
            state.running = true;
            drop(state);
            let result = self.sync_covering(from..=covers);
            state = self.state.lock().map_err(|_| lock_err())?;
            state.running = false;
            if result.is_ok() {
                state.completed = state.completed.max(covers);
            }
            self.done.notify_all();
            result?;
        }
    }
}

impl GroupSync {
    /// One filesystem sync, for the callers holding `tickets`.
    fn sync_covering(&self, tickets: std::ops::RangeInclusive<u64>) -> io::Result<()> {
        #[cfg(test)]
        if tickets.contains(&self.fail_ticket.load(Ordering::SeqCst)) {
            self.fail_ticket.store(0, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let _ = tickets;
        sync_filesystem(&self.dir)
    }
}

/// Makes every write on the filesystem holding `dir` durable.
#[cfg(target_os = "linux")]
fn sync_filesystem(dir: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs takes a file descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_filesystem(_dir: &File) -> io::Result<()> {
    // No syncfs: fall back to a whole-system sync, still one per group.
    std::process::Command::new("sync").status().map(|_| ())
}

impl ChunkStore {
    /// Bytes free to an unprivileged writer on the filesystem of the store's directory.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Opens (creating if needed) the store at `dir` and removes temp files left by a crash.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        let tmp = dir.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(io_err(format!(
            "create chunk store directory {}",
            tmp.display()
        )))?;
        let store = ChunkStore::with_pack(dir, SmallChunks::open)?;
        store.remove_temp_files()?;
        Ok(store)
    }

    /// Opens an existing store to look at it while the node that owns it runs: nothing is
    /// cleaned up and the pack is opened read-only, so `put` and `remove` of small chunks fail.
    /// For tests and inspection tools.
    pub fn open_read_only(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        ChunkStore::with_pack(dir.into(), SmallChunks::open_read_only)
    }

    fn with_pack(
        dir: PathBuf,
        open_pack: impl FnOnce(&Path) -> io::Result<SmallChunks>,
    ) -> Result<Self, StoreError> {
        let sync = GroupSync::new(&dir).map_err(io_err(format!(
            "open chunk store directory {}",
            dir.display()
        )))?;
        let small = open_pack(&dir.join(SMALL_DIR)).map_err(io_err(format!(
            "open the small-chunk pack in {}",
            dir.display()
        )))?;
        Ok(ChunkStore {
            dir,
            sync: std::sync::Arc::new(sync),
            small: std::sync::Arc::new(small),
            direct: std::sync::Arc::new(AtomicBool::new(true)),
            write_locks: (0..WRITE_LOCK_STRIPES)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
            collect: std::sync::Arc::default(),
        })
    }

    fn remove_temp_files(&self) -> Result<(), StoreError> {
        let tmp = self.dir.join(TMP_DIR);
        let entries =
            fs::read_dir(&tmp).map_err(io_err(format!("list temp directory {}", tmp.display())))?;
        let mut removed = 0usize;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("list temp directory {}", tmp.display())))?;
            let path = entry.path();
            let result = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result.map_err(io_err(format!(
                "remove leftover temp file {}",
                path.display()
            )))?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(removed, dir = %tmp.display(), "removed leftover temp files of interrupted chunk writes");
        }
        Ok(())
    }

    /// Where the chunk `hash` lives if it is a file: `DIR/ab/cdef…` (chunks of at most
    /// [`SMALL_CHUNK_BYTES_MAX`] bytes live in the pack instead).
    pub fn path_of(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(&hex[2..])
    }

    /// Verifies that `blake3(data) == hash`, then stores the chunk durably unless a durable,
    /// intact copy is already present. Returns whether it was written now (false: an existing
    /// copy counts; see the module docs). An existing copy that no longer verifies is replaced.
    /// On an error no copy of the chunk is left that was not durable before the call.
    pub fn put(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        let actual = Hash::of(data);
        if actual != *hash {
            return Err(StoreError::HashMismatch {
                expected: *hash,
                actual,
            });
        }
        self.put_verified(hash, data)
    }

    /// [`ChunkStore::put`] for bytes the caller has just checked against `hash` (it computed the
    /// hash itself, or verified a peer's bytes): stores them without hashing them again.
    pub fn put_verified(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        debug_assert_eq!(Hash::of(data), *hash, "put_verified with unverified bytes");
        // Counted as recent, and not collected until this put is over (`crate::collect`).
        let _collect = self.collect.put(*hash);
        if data.len() > CHUNK_SIZE_BYTES_MAX {
            return Err(StoreError::Io {
                context: format!("store chunk {hash}"),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "chunk is {} bytes, more than the limit of {CHUNK_SIZE_BYTES_MAX}",
                        data.len()
                    ),
                ),
            });
        }
        if self.small.contains(hash) {
            // Committed, hence durable (see the module docs); count it only if intact.
            match self.get(hash) {
                Ok(_) => return Ok(false),
                Err(StoreError::Corrupt { .. }) => {
                    tracing::warn!(%hash, "a put found the stored chunk corrupt; writing it again");
                    self.remove(hash)?;
                }
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if data.len() <= SMALL_CHUNK_BYTES_MAX {
            // A small chunk stored as a file (while the pack was full) counts like any file.
            if self.path_of(hash).is_file() {
                let _writing = self.write_lock(hash);
                if self.count_existing_file(hash)? {
                    return Ok(false);
                }
            }
            match self.small.put(hash, data) {
                Ok(()) => return Ok(true),
                Err(PackError::Full) => {
                    tracing::warn!(%hash, dir = %self.dir.display(), "small-chunk pack is full; storing the chunk as a file");
                }
                Err(PackError::Io(message)) => {
                    return Err(StoreError::Io {
                        context: format!("store chunk {hash} in {}", self.dir.display()),
                        source: io::Error::other(message),
                    })
                }
            }
        }
        self.put_file(hash, data)
    }

    /// The lock that serializes writes of `hash`'s file (see the module docs).
    fn write_lock(&self, hash: &Hash) -> std::sync::MutexGuard<'_, ()> {
        self.write_locks[hash.0[0] as usize % self.write_locks.len()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores the chunk as a file: written to `tmp/`, synced, renamed into place, synced again;
    /// an existing file counts once [`ChunkStore::count_existing_file`] says so.
    fn put_file(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        // Held until this chunk's file is durable or removed.
        let _writing = self.write_lock(hash);
        if self.path_of(hash).is_file() && self.count_existing_file(hash)? {
            return Ok(false);
        }
        let path = self.path_of(hash);
        let fan_out = path.parent().unwrap_or(&self.dir);
        if !fan_out.is_dir() {
            fs::create_dir_all(fan_out)
                .map_err(io_err(format!("create directory {}", fan_out.display())))?;
        }

        let tmp = self.dir.join(TMP_DIR).join(format!(
            "{}.{}.{}",
            hash.to_hex(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = write_new(&tmp, data, &self.direct)
            .and_then(|()| self.sync.sync())
            .map_err(io_err(format!("write chunk {hash} to {}", tmp.display())));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(source) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io {
                context: format!("move chunk {hash} into place at {}", path.display()),
                source,
            });
        }
        if let Err(source) = self.sync.sync() {
            // The rename is not known to be durable: a later put must not count this copy.
            let _ = fs::remove_file(&path);
            return Err(StoreError::Io {
                context: format!(
                    "sync chunk {hash} at {} (the copy was removed)",
                    path.display()
                ),
                source,
            });
        }
        Ok(true)
    }

    /// Whether the chunk file found at `hash`'s path counts as a durable copy: true once a sync
    /// that started after this call succeeded and the file still verifies. A copy that fails
    /// the sync is removed (error); a corrupt one is removed (false: write it again). The
    /// caller holds the chunk's write lock.
    fn count_existing_file(&self, hash: &Hash) -> Result<bool, StoreError> {
        let path = self.path_of(hash);
        if let Err(source) = self.sync.sync() {
            let _ = fs::remove_file(&path);
            return Err(StoreError::Io {
                context: format!(
                    "sync the existing copy of chunk {hash} at {} (the copy was removed)",
                    path.display()
                ),
                source,
            });
        }
        match self.get(hash) {
            Ok(_) => Ok(true),
            Err(StoreError::Corrupt { .. }) => {
                tracing::warn!(%hash, path = %path.display(), "a put found the stored chunk corrupt; writing it again");
                fs::remove_file(&path).map_err(io_err(format!(
                    "remove corrupt chunk {hash} at {}",
                    path.display()
                )))?;
                Ok(false)
            }
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads the chunk and verifies its hash.
    pub fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        // A pack that cannot be read must not hide the chunk files: try the file, and report
        // the pack's error only if there is no file either.
        let (packed, pack_error) = match self.small.get(hash) {
            Ok(packed) => (packed, None),
            Err(e) => (None, Some(e)),
        };
        if let Some(data) = packed {
            if Hash::of(&data) != *hash {
                return Err(StoreError::Corrupt { hash: *hash });
            }
            return Ok(data);
        }
        let path = self.path_of(hash);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(match pack_error {
                    Some(e) => io_err(format!("read chunk {hash}"))(e),
                    None => StoreError::NotFound { hash: *hash },
                })
            }
            Err(e) => {
                return Err(io_err(format!("open chunk {hash} at {}", path.display()))(
                    e,
                ))
            }
        };
        // A chunk is at most CHUNK_SIZE_BYTES_MAX bytes; a longer file is corrupt, and is not
        // read past that bound.
        let mut data = Vec::new();
        file.take(CHUNK_SIZE_BYTES_MAX as u64 + 1)
            .read_to_end(&mut data)
            .map_err(io_err(format!("read chunk {hash} at {}", path.display())))?;
        if data.len() > CHUNK_SIZE_BYTES_MAX || Hash::of(&data) != *hash {
            return Err(StoreError::Corrupt { hash: *hash });
        }
        Ok(data)
    }

    /// Whether the chunk is stored (its bytes are not verified).
    pub fn contains(&self, hash: &Hash) -> bool {
        self.small.contains(hash) || self.path_of(hash).is_file()
    }

    /// The stored size of the chunk in bytes, if it is stored (not verified).
    pub fn size_of(&self, hash: &Hash) -> Option<u64> {
        match self.small.size_of(hash) {
            Ok(Some(size)) => Some(size),
            _ => fs::metadata(self.path_of(hash)).ok().map(|m| m.len()),
        }
    }

    /// Replaces the chunk's stored bytes with `data` without checking them, wherever it lives:
    /// tests use it to plant rot. Never called by the node.
    #[doc(hidden)]
    pub fn overwrite_unchecked(&self, hash: &Hash, data: &[u8]) -> Result<(), StoreError> {
        if self.small.contains(hash) {
            return self
                .small
                .overwrite_unchecked(hash, data)
                .map_err(io_err(format!("overwrite chunk {hash}")));
        }
        let path = self.path_of(hash);
        fs::write(&path, data).map_err(io_err(format!(
            "overwrite chunk {hash} at {}",
            path.display()
        )))
    }

    /// Removes the chunk. Removing an absent chunk succeeds (garbage collection may race).
    pub fn remove(&self, hash: &Hash) -> Result<(), StoreError> {
        let packed = self
            .small
            .size_of(hash)
            .map_err(io_err(format!("remove chunk {hash}")))?;
        if packed.is_some() {
            self.small
                .remove(hash)
                .map_err(io_err(format!("remove chunk {hash}")))?;
        }
        let path = self.path_of(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("remove chunk {hash} at {}", path.display()))(e)),
        }
    }

    /// Starts a new collection epoch (`crate::collect`): chunks last put before the previous
    /// epoch began become idle.
    pub fn start_gc_epoch(&self) {
        self.collect.advance();
    }

    /// Removes each of `hashes` that is idle (not put in this or the previous epoch; see
    /// `crate::collect`), and returns what was removed. The caller has checked that nothing
    /// refers to them. Puts wait while a batch of [`REMOVE_BATCH`] is removed.
    pub fn remove_idle(&self, hashes: &[Hash]) -> Result<Collected, StoreError> {
        let mut collected = Collected::default();
        for batch in hashes.chunks(REMOVE_BATCH) {
            let (_order, epochs) = self.collect.removing();
            for hash in batch.iter().filter(|h| epochs.is_idle(h)) {
                let Some(size) = self.size_of(hash) else {
                    continue;
                };
                self.remove(hash)?;
                collected.chunks += 1;
                collected.bytes += size;
            }
        }
        Ok(collected)
    }

    /// Hashes of all stored chunks, sorted. Files whose names are not chunk names are skipped
    /// with a warning.
    pub fn list(&self) -> Result<Vec<Hash>, StoreError> {
        let context = || format!("list chunk store {}", self.dir.display());
        let mut hashes = self.small.list().map_err(io_err(context()))?;
        for entry in fs::read_dir(&self.dir).map_err(io_err(context()))? {
            let entry = entry.map_err(io_err(context()))?;
            let name = entry.file_name();
            let Some(prefix) = name.to_str().filter(|n| is_fan_out_name(n)) else {
                if name != TMP_DIR && name != SMALL_DIR {
                    tracing::warn!(path = %entry.path().display(), "unexpected entry in chunk store, skipped");
                }
                continue;
            };
            let fan_out = entry.path();
            let context = || format!("list chunk directory {}", fan_out.display());
            for chunk in fs::read_dir(&fan_out).map_err(io_err(context()))? {
                let chunk = chunk.map_err(io_err(context()))?;
                let name = chunk.file_name();
                match name
                    .to_str()
                    .map(|rest| format!("{prefix}{rest}").parse::<Hash>())
                {
                    Some(Ok(hash)) => hashes.push(hash),
                    _ => {
                        tracing::warn!(path = %chunk.path().display(), "unexpected file in chunk store, skipped")
                    }
                }
            }
        }
        hashes.sort();
        hashes.dedup();
        Ok(hashes)
    }
}

fn is_fan_out_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Writes a new file; durability comes from the store's group sync. Uses direct I/O where the
/// filesystem supports it (see [`write_new_direct`]); `direct` turns false, for the store's
/// lifetime, the first time the filesystem refuses it.
fn write_new(path: &Path, data: &[u8], direct: &AtomicBool) -> io::Result<()> {
    write_new_with(path, data, direct, write_new_direct)
}

fn write_new_with(
    path: &Path,
    data: &[u8],
    direct: &AtomicBool,
    write_direct: impl Fn(&Path, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    if direct.load(Ordering::Relaxed) {
        match write_direct(path, data) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = fs::remove_file(path);
                if direct.swap(false, Ordering::Relaxed) {
                    tracing::info!(dir = %path.display(), "the filesystem refuses direct I/O; chunk files are written through the page cache");
                }
            }
            Err(e) => return Err(e),
        }
    }
    let mut file = File::options().write(true).create_new(true).open(path)?;
    file.write_all(data)
}

/// Alignment of direct I/O buffers, offsets and lengths (the largest logical block size in use).
#[cfg(target_os = "linux")]
const DIRECT_IO_ALIGN: usize = 4096;

#[cfg(target_os = "linux")]
thread_local! {
    /// Reused per writing thread: allocating a fresh multi-MiB buffer per chunk would fault in
    /// its pages every time, the very cost direct I/O avoids.
    static DIRECT_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `data` with `O_DIRECT`: padded to [`DIRECT_IO_ALIGN`] from an aligned buffer, then
/// truncated to its length. A chunk is written once and read rarely, so it need not pass
/// through the page cache, and on the machines we measured a buffered 1 GiB write+fsync cost
/// 1.4–2.5 s of kernel CPU against 0.4 s direct (`dd … conv=fdatasync` with and without
/// `oflag=direct`), which made replication CPU-bound (docs/decisions/0008).
#[cfg(target_os = "linux")]
fn write_new_direct(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let padded = data.len().div_ceil(DIRECT_IO_ALIGN) * DIRECT_IO_ALIGN;
    DIRECT_BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        if buffer.len() < padded + DIRECT_IO_ALIGN {
            buffer.resize(padded + DIRECT_IO_ALIGN, 0);
        }
        let start = buffer.as_ptr().align_offset(DIRECT_IO_ALIGN);
        let region = &mut buffer[start..start + padded];
        region[..data.len()].copy_from_slice(data);
        region[data.len()..].fill(0);
        file.write_all(region)
    })?;
    file.set_len(data.len() as u64)
}

#[cfg(not(target_os = "linux"))]
fn write_new_direct(_path: &Path, _data: &[u8]) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// Chunks everything `reader` yields into `store`, streaming (memory: one read buffer and one
/// chunk), and returns the file's entry with the given `path` and `mode`. The path is not
/// validated here; [`crate::Manifest::validate`] does that for the whole manifest.
pub fn ingest_reader(
    store: &ChunkStore,
    path: &str,
    mode: u32,
    mut reader: impl Read,
) -> Result<FileEntry, StoreError> {
    let mut chunks = Vec::new();
    let mut size_bytes: u64 = 0;
    let mut chunker = Chunker::new();
    let mut put = |chunk: crate::ChunkRef, bytes: &[u8]| {
        store.put(&chunk.hash, bytes)?;
        chunks.push(chunk);
        Ok::<(), StoreError>(())
    };
    let mut buf = vec![0u8; INGEST_READ_BYTES];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(format!("read file {path:?} to store it"))(e)),
        };
        size_bytes += n as u64;
        chunker.push(&buf[..n], &mut put)?;
    }
    chunker.finish(&mut put)?;
    let entry = FileEntry {
        path: path.to_owned(),
        size_bytes,
        mode,
        chunks,
    };
    debug_assert_eq!(
        entry
            .chunks
            .iter()
            .map(|c| u64::from(c.size_bytes))
            .sum::<u64>(),
        entry.size_bytes
    );
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn open_temp() -> (tempfile::TempDir, ChunkStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ChunkStore::open(dir.path().join("chunks")).expect("open");
        (dir, store)
    }

    #[test]
    fn small_chunks_go_to_the_pack_not_to_files() {
        let (_dir, store) = open_temp();
        for len in [1, 1000, SMALL_CHUNK_BYTES_MAX] {
            let data = vec![5u8; len];
            let hash = Hash::of(&data);
            assert!(!store.contains(&hash));
            assert!(store.put(&hash, &data).expect("put"));
            assert!(store.contains(&hash));
            assert!(!store.path_of(&hash).exists(), "{len} bytes: no file");
            assert_eq!(store.get(&hash).expect("get"), data);
            assert_eq!(store.size_of(&hash), Some(len as u64));
            assert!(!store.put(&hash, &data).expect("second put"));
        }
        assert_eq!(store.list().expect("list").len(), 3);
        // Survives reopening.
        let dir = store.dir.clone();
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(store.list().expect("list").len(), 3);
    }

    #[test]
    fn a_read_only_handle_reads_both_kinds_and_refuses_writes() {
        // (heed refuses a second open of one env in a process: the writer is another process
        // in real use, see tests/tests/cluster.rs; here it is closed first.)
        let (_dir, store) = open_temp();
        let small = b"tokenizer".to_vec();
        let large = vec![4u8; SMALL_CHUNK_BYTES_MAX + 10];
        store.put(&Hash::of(&small), &small).expect("put small");
        store.put(&Hash::of(&large), &large).expect("put large");
        let dir = store.dir.clone();
        drop(store);
        let reader = ChunkStore::open_read_only(dir).expect("open read-only");
        assert_eq!(reader.get(&Hash::of(&small)).expect("small"), small);
        assert_eq!(reader.get(&Hash::of(&large)).expect("large"), large);
        assert_eq!(reader.list().expect("list").len(), 2);
        let tiny = b"x".to_vec();
        assert!(reader.put(&Hash::of(&tiny), &tiny).is_err(), "read-only");
    }

    #[test]
    fn put_get_round_trip_and_layout() {
        let (_dir, store) = open_temp();
        let data = vec![9u8; SMALL_CHUNK_BYTES_MAX + 1];
        let hash = Hash::of(&data);
        assert!(!store.contains(&hash));
        assert!(store.put(&hash, &data).expect("put"));
        assert!(store.contains(&hash));
        assert_eq!(store.get(&hash).expect("get"), data);
        let hex = hash.to_hex();
        let path = store.path_of(&hash);
        assert!(path.ends_with(format!("{}/{}", &hex[..2], &hex[2..])));
        assert_eq!(fs::read(&path).expect("read file"), data);
        // Nothing left behind in tmp/.
        let tmp = store.dir.join(TMP_DIR);
        assert_eq!(fs::read_dir(tmp).expect("tmp").count(), 0);
    }

    #[test]
    fn identical_chunks_are_stored_once() {
        let (_dir, store) = open_temp();
        let data = vec![7u8; 1000];
        let hash = Hash::of(&data);
        assert!(store.put(&hash, &data).expect("first put"));
        assert!(!store.put(&hash, &data).expect("second put"));
        assert_eq!(store.list().expect("list"), vec![hash]);
    }

    #[test]
    fn put_rejects_data_that_does_not_match_the_hash() {
        let (_dir, store) = open_temp();
        let claimed = Hash::of(b"right");
        let err = store.put(&claimed, b"wrong").expect_err("mismatch");
        match &err {
            StoreError::HashMismatch { expected, actual } => {
                assert_eq!(*expected, claimed);
                assert_eq!(*actual, Hash::of(b"wrong"));
            }
            other => panic!("expected HashMismatch, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "chunk data does not match its claimed hash {claimed} (got {})",
                Hash::of(b"wrong")
            )
        );
        assert!(!store.contains(&claimed));
    }

    #[test]
    fn put_rejects_chunks_over_the_size_limit() {
        let (_dir, store) = open_temp();
        let data = vec![1u8; CHUNK_SIZE_BYTES_MAX + 1];
        let hash = Hash::of(&data);
        let err = store.put(&hash, &data).expect_err("too large");
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidInput),
            "{err:?}"
        );
        assert!(!store.contains(&hash));
    }

    #[test]
    fn direct_and_buffered_writes_store_the_same_bytes_at_unaligned_lengths() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, len) in [1usize, 4095, 4096, 4097, (1 << 20) + 3]
            .into_iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
            for direct in [true, false] {
                let path = dir.path().join(format!("{len}-{direct}"));
                let flag = AtomicBool::new(direct);
                write_new(&path, &data, &flag).expect("write");
                assert_eq!(
                    fs::read(&path).expect("read"),
                    data,
                    "{len} bytes, direct {direct}"
                );
                assert_eq!(
                    flag.load(Ordering::Relaxed),
                    direct,
                    "the temp dir's filesystem took direct I/O (else this tests nothing)"
                );
            }
        }
    }

    #[test]
    fn a_filesystem_refusing_direct_io_gets_buffered_writes_from_then_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let direct = AtomicBool::new(true);
        let refused = std::sync::atomic::AtomicUsize::new(0);
        let refuse = |path: &Path, _: &[u8]| {
            refused.fetch_add(1, Ordering::Relaxed);
            // What a filesystem without O_DIRECT does: maybe creates the file, then EINVAL.
            fs::write(path, b"partial")?;
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        };
        for i in 0..2u8 {
            let path = dir.path().join(format!("chunk-{i}"));
            let data = vec![i; 5000];
            write_new_with(&path, &data, &direct, refuse).expect("falls back");
            assert_eq!(fs::read(&path).expect("read"), data);
        }
        assert!(!direct.load(Ordering::Relaxed));
        assert_eq!(
            refused.load(Ordering::Relaxed),
            1,
            "tried once, then buffered"
        );
        // Other errors are errors.
        let failing = AtomicBool::new(true);
        let err = write_new_with(
            &dir.path().join("x"),
            b"x",
            &failing,
            |_: &Path, _: &[u8]| Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        )
        .expect_err("ENOSPC is not a fallback");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert!(failing.load(Ordering::Relaxed));
    }

    #[test]
    fn flipped_bytes_in_the_pack_are_reported_corrupt() {
        let (_dir, store) = open_temp();
        let data = b"tensor bytes".to_vec();
        let hash = Hash::of(&data);
        store.put(&hash, &data).expect("put");
        let mut rotten = data.clone();
        rotten[3] ^= 0x01;
        store.overwrite_unchecked(&hash, &rotten).expect("rot");
        assert!(matches!(store.get(&hash), Err(StoreError::Corrupt { hash: h }) if h == hash));
        // The repair path: remove, then put again.
        store.remove(&hash).expect("remove");
        assert!(!store.contains(&hash));
        assert!(store.put(&hash, &data).expect("put again"));
        assert_eq!(store.get(&hash).expect("get"), data);
    }

    #[test]
    fn flipped_bytes_on_disk_are_reported_corrupt_with_the_hash() {
        let (_dir, store) = open_temp();
        let data = vec![3u8; SMALL_CHUNK_BYTES_MAX * 2];
        let hash = Hash::of(&data);
        store.put(&hash, &data).expect("put");
        let path = store.path_of(&hash);
        let mut on_disk = fs::read(&path).expect("read");
        on_disk[3] ^= 0x01;
        fs::write(&path, &on_disk).expect("corrupt it");
        let err = store.get(&hash).expect_err("corrupt");
        assert!(
            matches!(err, StoreError::Corrupt { hash: h } if h == hash),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("chunk {hash} is corrupt on disk: its bytes no longer match its blake3 hash")
        );
        // A truncated file is corrupt too.
        fs::write(&path, &data[..4]).expect("truncate");
        assert!(matches!(store.get(&hash), Err(StoreError::Corrupt { .. })));
    }

    /// The next sync the store starts (its `n`th from now, counting from 1) fails with EIO.
    fn fail_sync(store: &ChunkStore, n: u64) {
        let requested = store.sync.state.lock().unwrap().requested;
        store
            .sync
            .fail_ticket
            .store(requested + n, Ordering::SeqCst);
    }

    fn tmp_is_empty(store: &ChunkStore) -> bool {
        fs::read_dir(store.dir.join(TMP_DIR)).expect("tmp").count() == 0
    }

    #[test]
    fn a_copy_whose_sync_failed_is_removed_and_not_counted_later() {
        let (_dir, store) = open_temp();
        let data = vec![6u8; SMALL_CHUNK_BYTES_MAX + 100];
        let hash = Hash::of(&data);
        // The sync of the written temp file fails: nothing is renamed into place.
        fail_sync(&store, 1);
        let err = store.put(&hash, &data).expect_err("first sync fails");
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::EIO)),
            "{err:?}"
        );
        assert!(!store.contains(&hash) && tmp_is_empty(&store));
        // The sync after the rename fails: the renamed copy is removed again.
        fail_sync(&store, 2);
        let err = store.put(&hash, &data).expect_err("second sync fails");
        assert!(err.to_string().contains("the copy was removed"), "{err}");
        assert!(!store.contains(&hash), "no half-trusted copy is left");
        assert!(!store.path_of(&hash).exists() && tmp_is_empty(&store));
        // So the next put writes it (and counts it) for real.
        assert!(store.put(&hash, &data).expect("put"));
        assert_eq!(store.get(&hash).expect("get"), data);
    }

    #[test]
    fn a_put_that_finds_a_copy_counts_it_only_after_a_sync_and_a_check() {
        let (_dir, store) = open_temp();
        let data = vec![8u8; SMALL_CHUNK_BYTES_MAX + 7];
        let hash = Hash::of(&data);
        // A copy another process renamed into place and never synced (or one a concurrent
        // write is still syncing): the put that finds it syncs before counting it.
        fs::create_dir_all(store.path_of(&hash).parent().unwrap()).unwrap();
        fs::write(store.path_of(&hash), &data).unwrap();
        let before = store.sync.state.lock().unwrap().requested;
        assert!(!store.put(&hash, &data).expect("counted"));
        assert_eq!(
            store.sync.state.lock().unwrap().requested,
            before + 1,
            "one sync before counting the existing copy"
        );
        // A sync that fails then: not counted, and removed.
        fail_sync(&store, 1);
        assert!(store.put(&hash, &data).is_err());
        assert!(!store.contains(&hash));
        // A rotten copy is not counted: the put writes the chunk again.
        assert!(store.put(&hash, &data).expect("written"));
        let mut rotten = data.clone();
        rotten[0] ^= 1;
        store.overwrite_unchecked(&hash, &rotten).unwrap();
        assert!(store.put(&hash, &data).expect("rewritten"));
        assert_eq!(store.get(&hash).expect("get"), data);
        // A truncated (torn) copy likewise.
        fs::write(store.path_of(&hash), &data[..100]).unwrap();
        assert!(store.put(&hash, &data).expect("rewritten"));
        assert_eq!(store.get(&hash).expect("get"), data);
        // And a rotten small chunk in the pack.
        let small = b"small tensor".to_vec();
        let small_hash = Hash::of(&small);
        store.put(&small_hash, &small).unwrap();
        store
            .overwrite_unchecked(&small_hash, b"small tenso!")
            .unwrap();
        assert!(store.put(&small_hash, &small).expect("rewritten"));
        assert_eq!(store.get(&small_hash).expect("get"), small);
        assert!(!store.put(&small_hash, &small).expect("counted"));
    }

    #[test]
    fn missing_chunk_is_not_found() {
        let (_dir, store) = open_temp();
        let hash = Hash::of(b"absent");
        let err = store.get(&hash).expect_err("absent");
        assert!(matches!(err, StoreError::NotFound { hash: h } if h == hash));
        assert_eq!(
            err.to_string(),
            format!("chunk {hash} not found in the chunk store")
        );
    }

    #[test]
    fn remove_and_list() {
        let (_dir, store) = open_temp();
        let mut hashes: Vec<Hash> = (0..20u8)
            .map(|i| {
                // Half in the pack, half as files.
                let len = if i % 2 == 0 {
                    10
                } else {
                    SMALL_CHUNK_BYTES_MAX + 1
                };
                let data = vec![i; len + i as usize];
                let hash = Hash::of(&data);
                store.put(&hash, &data).expect("put");
                hash
            })
            .collect();
        hashes.sort();
        assert_eq!(store.list().expect("list"), hashes);
        for _ in 0..2 {
            let gone = hashes.remove(5);
            store.remove(&gone).expect("remove");
            assert!(!store.contains(&gone));
            assert!(matches!(store.get(&gone), Err(StoreError::NotFound { .. })));
            store.remove(&gone).expect("removing twice is fine");
        }
        assert_eq!(store.list().expect("list"), hashes);
    }

    /// Collection while the store is in use removes a chunk only once a whole epoch passed
    /// without a put of it; a put that finds the chunk present counts as a put.
    #[test]
    fn remove_idle_spares_chunks_put_in_this_or_the_previous_epoch() {
        let (_dir, store) = open_temp();
        // One packed and one file-sized chunk of each age.
        let data = |tag: u8, len: usize| vec![tag; len];
        let old = [data(1, 100), data(2, SMALL_CHUNK_BYTES_MAX + 1)];
        let young = [data(3, 100), data(4, SMALL_CHUNK_BYTES_MAX + 1)];
        let hashes = |chunks: &[Vec<u8>]| chunks.iter().map(|d| Hash::of(d)).collect::<Vec<_>>();
        for chunk in &old {
            store.put(&Hash::of(chunk), chunk).expect("put");
        }
        store.start_gc_epoch();
        for chunk in &young {
            store.put(&Hash::of(chunk), chunk).expect("put");
        }
        let all = [hashes(&old), hashes(&young)].concat();
        assert_eq!(
            store.remove_idle(&all).expect("collect"),
            Collected::default()
        );

        store.start_gc_epoch();
        let collected = store.remove_idle(&all).expect("collect");
        let old_bytes = old.iter().map(|d| d.len() as u64).sum::<u64>();
        assert_eq!(
            collected,
            Collected {
                chunks: 2,
                bytes: old_bytes
            }
        );
        assert!(hashes(&old).iter().all(|h| !store.contains(h)));
        assert!(hashes(&young).iter().all(|h| store.contains(h)));

        // Finding a chunk present renews it, as an upload that deduplicates against it does.
        store.start_gc_epoch();
        for chunk in &young {
            assert!(!store.put(&Hash::of(chunk), chunk).expect("put again"));
        }
        store.start_gc_epoch();
        assert_eq!(store.remove_idle(&all).expect("collect").chunks, 0);
        store.start_gc_epoch();
        assert_eq!(store.remove_idle(&all).expect("collect").chunks, 2);
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn open_removes_leftover_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("chunks");
        let store = ChunkStore::open(&root).expect("open");
        let data = b"kept".to_vec();
        let hash = Hash::of(&data);
        store.put(&hash, &data).expect("put");
        // Simulate a crash mid-write: half a chunk left in tmp/.
        let leftover = root.join(TMP_DIR).join(format!("{}.1.0", Hash::of(b"x")));
        fs::write(&leftover, b"half a chu").expect("leftover");
        fs::create_dir(root.join(TMP_DIR).join("stray-dir")).expect("stray dir");
        drop(store);
        let store = ChunkStore::open(&root).expect("reopen");
        assert!(!leftover.exists());
        assert_eq!(fs::read_dir(root.join(TMP_DIR)).expect("tmp").count(), 0);
        assert_eq!(store.get(&hash).expect("chunk survives reopen"), data);
        assert_eq!(store.list().expect("list"), vec![hash]);
    }

    #[test]
    fn ingest_reader_streams_into_the_store() {
        let (_dir, store) = open_temp();
        // Compressible and random parts, several chunks long.
        let mut data = vec![0u8; CHUNK_SIZE_BYTES_MAX + 3];
        let mut x = 1u32;
        data.extend((0..crate::CHUNK_SIZE_BYTES).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }));
        let entry =
            ingest_reader(&store, "w/model.bin", 0o640, Cursor::new(&data)).expect("ingest");
        assert_eq!(entry.path, "w/model.bin");
        assert_eq!(entry.mode, 0o640);
        assert_eq!(entry.size_bytes, data.len() as u64);
        assert!(entry.chunks.len() >= 2);
        let mut rebuilt = Vec::new();
        for c in &entry.chunks {
            let bytes = store.get(&c.hash).expect("chunk stored");
            assert_eq!(bytes.len(), c.size_bytes as usize);
            rebuilt.extend_from_slice(&bytes);
        }
        assert_eq!(rebuilt, data);
        let manifest = crate::Manifest { files: vec![entry] };
        assert_eq!(manifest.validate(), Ok(()));

        let empty = ingest_reader(&store, "empty", 0o644, Cursor::new(Vec::new())).expect("empty");
        assert_eq!((empty.size_bytes, empty.chunks.len()), (0, 0));
    }

    #[test]
    fn ingest_reader_reports_read_errors_with_the_path() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("device gone"))
            }
        }
        let (_dir, store) = open_temp();
        let err = ingest_reader(&store, "a.bin", 0o644, Failing).expect_err("fails");
        assert_eq!(
            err.to_string(),
            "read file \"a.bin\" to store it: device gone"
        );
    }
}

#[cfg(test)]
mod group_sync_tests {
    use super::*;

    /// Puts 16 distinct chunks of `base + i` bytes from 16 threads at once; their hashes.
    fn put_concurrently(store: &ChunkStore, base: usize) -> Vec<Hash> {
        let threads: Vec<_> = (0..16u8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let data = vec![i; base + i as usize];
                    let hash = Hash::of(&data);
                    assert!(store.put(&hash, &data).unwrap());
                    hash
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn concurrent_puts_share_syncs_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        for hash in put_concurrently(&store, SMALL_CHUNK_BYTES_MAX + 1) {
            assert_eq!(Hash::of(&store.get(&hash).unwrap()), hash);
        }
        let state = store.sync.state.lock().unwrap();
        assert_eq!(state.requested, 32, "two syncs requested per put");
        assert_eq!(state.completed, 32, "every request was covered by a sync");
        assert!(!state.running);
    }

    #[test]
    fn concurrent_small_puts_share_commits_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let hashes = put_concurrently(&store, 1000);
        drop(store);
        let store = ChunkStore::open(dir.path()).unwrap();
        for hash in &hashes {
            assert_eq!(Hash::of(&store.get(hash).unwrap()), *hash);
        }
        assert_eq!(store.list().unwrap().len(), 16);
        // No file was created for them.
        assert_eq!(
            fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| is_fan_out_name(&e.as_ref().unwrap().file_name().to_string_lossy()))
                .count(),
            0
        );
    }
}
