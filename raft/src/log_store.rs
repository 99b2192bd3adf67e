//! The Raft log and vote: an append-only write-ahead log of segment files in `DIR/log`
//! (decision 0011).
//!
//! Why this shape:
//! - Raft's safety rests on "what I acknowledged is on disk": an entry reported appended, or a
//!   vote granted, must survive power loss. Every write here is therefore one `pwrite` of whole
//!   records followed by one `fdatasync` before the store reports it done. (An LMDB commit, which
//!   this store replaced, costs two fsyncs and rewrites B-tree pages: about 4× the time of this
//!   append on the benchmark machine, and the leader and then a follower pay it one after the
//!   other on every write.)
//! - The bytes an append overwrites were already written (zeros, see [`FILL_STEP_BYTES`]), so the
//!   file's size and extents do not change and `fdatasync` has no metadata to journal. The file
//!   is grown ahead, a step at a time, with zeros that are synced before any record lands on them.
//! - The zeros are written one page ([`FILL_WRITE_BYTES`]) per call, and a segment's cached pages
//!   are dropped after it is replayed. The page cache sizes its folios by the write (or the
//!   readahead) that creates them, and an append dirties a whole folio: after one 1 MiB write of
//!   zeros, every 1.5 KB append made `fdatasync` write 1 MiB back (kernel 6.18, ext4: 1 048 576
//!   bytes written per append against 5 595 with page-sized fills, 139 µs against 85 µs).
//! - A record is `len: u32 LE | kind: u8 | 3 zero bytes | sum: 8 bytes | payload (len bytes)`,
//!   where `sum` is blake3 over the previous record's sum, the kind, the length and the payload.
//!   Recovery stops at the first record whose sum does not follow (or a zero header, the fill).
//!   In the active segment that may be a torn tail: a crash during the last write leaves the
//!   sectors of it that did not reach the disk as they were, zeros, and may persist later ones
//!   (only the last write can be torn: each is synced before the next). Everything after the
//!   last good record is then zeroed and synced, and the next append goes there. A stale record
//!   could therefore not come back; the chain would refuse it anyway (its sum chains to the
//!   record it used to follow).
//! - A bad record that no torn write explains (every sector of it holds written bytes, or it
//!   claims more than the file holds) was changed on disk after it was written; the records
//!   after it may be acknowledged entries or the vote. The store refuses to open, in any
//!   segment, rather than drop them (the node is rejoined and copies the log from its peers).
//! - Only the active segment may end torn. A closed segment that does not end at the fill or at
//!   its end of file, or a gap in the segment numbers, is damage that would silently drop
//!   acknowledged entries: the store refuses to open and says how to recover.
//! - Kinds: an entry (its JSON), a truncation (`since`: entries at or after it are gone), a purge
//!   (the last purged log id; entries up to it are gone) and a vote. Replaying a segment's
//!   records in order rebuilds the in-memory index `log index → (segment, offset, length)`;
//!   entries are read back from the file on demand, never held in memory.
//! - Segments (`<sequence, 20 digits>.wal`) bound what a purge leaves on disk: a new segment is
//!   started once the active one holds [`SEGMENT_BYTES_TARGET_DEFAULT`], and it begins with the
//!   current vote and last purged id. It is written under a temporary name and renamed into place
//!   once that header is synced (then the directory is synced), so no segment without the vote
//!   can ever be the active one. An older segment is deleted once every entry it holds is purged,
//!   oldest first, each deletion synced; whatever it said about the vote or the purge point is
//!   repeated by a later segment.
//! - The committed index is not stored (`save_committed` keeps openraft's default, a no-op): the
//!   state machine is durable on its own (its apply transaction records the last applied id).
//! - The store is a faithful map from index to entry and does not police continuity: openraft's
//!   engine truncates conflicts before appending and never leaves holes, and its storage suite
//!   deliberately overwrites and skips indexes.
//! - One writer (openraft's core, through `&mut self`) and many readers (replication tasks
//!   through clones): the writer holds its own lock for the write and its fsync, and takes the
//!   index lock only to publish what it wrote, so readers never wait for a sync. Within one
//!   process the files are append-only, so a location a reader took stays valid while it reads,
//!   even if the segment is deleted meanwhile (the open file keeps it).
//! - A lock file (`LOCK`, `flock`) keeps a second store, in this process or another, off the
//!   directory.
//! - A log directory written by the LMDB store (`data.mdb`) is migrated once, at open: its vote,
//!   purge point and entries (the same JSON) are copied into a first segment, which is synced and
//!   renamed into place before the LMDB files are removed.
//! - A test harness can attach a [`crate::LogDisk`] (`durability.rs`): it is told before and
//!   after every write, and its planted bug turns the fsyncs off.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use anyhow::Context as _;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::Deserialize;

use crate::durability::LogDiskHandle;
use crate::{App, EnvLease, NodeId, TypeConfig};

/// Default size at which the active segment is closed and a new one started.
pub const SEGMENT_BYTES_TARGET_DEFAULT: u64 = 64 << 20;
/// How far ahead of the write position the active segment is filled with synced zeros.
pub const FILL_STEP_BYTES: u64 = 1 << 20;
/// Bytes of zeros per write call while filling: one page, so that the page cache keeps page-sized
/// folios under the records to come (see the module docs).
pub const FILL_WRITE_BYTES: usize = 4096;
/// Bytes of a record's header.
const RECORD_HEADER_BYTES: usize = 16;
/// Bytes of a record's chained checksum.
const SUM_BYTES: usize = 8;
/// The unit a torn write is torn in: a sector either reaches the disk whole or not at all.
const SECTOR_BYTES: u64 = 512;
/// File name suffix of a segment.
const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of a segment being written by the LMDB migration.
const MIGRATION_SUFFIX: &str = ".wal.migrating";
/// Suffix of a new segment until its header is synced (then it is renamed into place).
const NEW_SEGMENT_SUFFIX: &str = ".wal.new";
/// Name of the lock file in the log directory.
const LOCK_FILE_NAME: &str = "LOCK";
/// Files of the LMDB log store this one replaced (migrated at open).
const LMDB_DATA_FILE_NAME: &str = "data.mdb";
const LMDB_LOCK_FILE_NAME: &str = "lock.mdb";
/// Map size to open an LMDB log with for its migration (what that store used).
const LMDB_LOG_MAP_SIZE_BYTES: usize = 64 << 30;

type LogEntry<A> = Entry<TypeConfig<A>>;
type Result<T> = std::result::Result<T, StorageError<NodeId>>;
type Sum = [u8; SUM_BYTES];

/// What a record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Entry = 1,
    Truncate = 2,
    Purge = 3,
    Vote = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Entry),
            2 => Some(Kind::Truncate),
            3 => Some(Kind::Purge),
            4 => Some(Kind::Vote),
            _ => None,
        }
    }
}

/// Options of the log store. The default suits production; tests shrink the segments.
#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    /// Size at which the active segment is closed and a new one started.
    pub segment_bytes_target: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes_target: SEGMENT_BYTES_TARGET_DEFAULT,
        }
    }
}

/// Where one entry's JSON lies.
#[derive(Clone, Copy, Debug)]
struct Loc {
    segment: u64,
    /// Offset of the payload in the segment file.
    offset: u64,
    len: u32,
    log_id: LogId<NodeId>,
}

/// What readers see: the live entries and the small metadata, as of the last completed write.
#[derive(Default)]
struct Index {
    entries: BTreeMap<u64, Loc>,
    files: BTreeMap<u64, Arc<File>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

/// The writer's position in the active segment, and what it needs to start and delete segments.
struct Writer {
    segment: u64,
    file: Arc<File>,
    /// Where the next record goes.
    write_at: u64,
    /// Bytes of the file already written (records or zeros); overwriting them changes no metadata.
    filled_to: u64,
    /// Sum of the last record of the active segment (the chain's seed in an empty one).
    prev_sum: Sum,
    /// Highest entry index each segment holds a record for (`None`: no entry record).
    max_entry: BTreeMap<u64, Option<u64>>,
}

struct Shared {
    dir: PathBuf,
    options: LogOptions,
    writer: Mutex<Writer>,
    index: RwLock<Index>,
    /// A test harness's disk model (`None` in production).
    disk: Option<LogDiskHandle>,
    /// Whether writes are fsynced: always, unless the harness planted `skip_fsync`.
    synced: bool,
    /// Holds the directory's `flock` while the store is open.
    _lock: File,
    /// Dropped with the store, so the node learns when its storage is closed.
    _lease: EnvLease,
}

/// Raft log storage (`RaftLogStorage` + `RaftLogReader`) over segment files. Cheap to clone;
/// clones share the files.
pub struct LogStore<A> {
    shared: Arc<Shared>,
    _app: PhantomData<fn() -> A>,
}

impl<A> Clone for LogStore<A> {
    fn clone(&self) -> Self {
        LogStore {
            shared: self.shared.clone(),
            _app: PhantomData,
        }
    }
}

/// One record to write: its kind, payload, and for an entry its log id.
struct Pending {
    kind: Kind,
    payload: Vec<u8>,
    log_id: Option<LogId<NodeId>>,
}

fn io_error(e: &std::io::Error, doing: impl std::fmt::Display) -> AnyError {
    AnyError::new(e).add_context(|| doing.to_string())
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SEGMENT_SUFFIX}"))
}

/// The chain's seed of a segment: its first record's "previous sum".
fn segment_seed(segment: u64) -> Sum {
    let mut h = blake3::Hasher::new();
    h.update(b"quiver raft log segment");
    h.update(&segment.to_le_bytes());
    truncated_sum(&h)
}

fn truncated_sum(h: &blake3::Hasher) -> Sum {
    let mut out = [0u8; SUM_BYTES];
    out.copy_from_slice(&h.finalize().as_bytes()[..SUM_BYTES]);
    out
}

fn record_sum(prev: &Sum, kind: u8, payload: &[u8]) -> Sum {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&[kind]);
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    truncated_sum(&h)
}

/// Append one record to `buf`, chained to `prev` (updated). Returns the payload's offset in `buf`.
fn encode_record(buf: &mut Vec<u8>, prev: &mut Sum, kind: Kind, payload: &[u8]) -> usize {
    let sum = record_sum(prev, kind as u8, payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[kind as u8, 0, 0, 0]);
    buf.extend_from_slice(&sum);
    let at = buf.len();
    buf.extend_from_slice(payload);
    *prev = sum;
    at
}

/// Ask the kernel to drop `file`'s cached pages (all clean after a replay), so that the large
/// folios the replay's readahead created do not sit under the appends to come (see the module
/// docs). Advice only: a failure changes nothing but speed.
fn drop_cached_pages(file: &File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: posix_fadvise only reads its arguments; the descriptor is open for the call.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        tracing::debug!(
            errno = rc,
            "posix_fadvise(DONTNEED) on a log segment failed"
        );
    }
}

/// Write zeros over `[from, to)` of `file`, one page per call (see [`FILL_WRITE_BYTES`]).
fn zero_range(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = [0u8; FILL_WRITE_BYTES];
    let mut at = from;
    while at < to {
        let n = (to - at).min(FILL_WRITE_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Forget the entries at or below `upto`.
fn purge_entries(entries: &mut BTreeMap<u64, Loc>, upto: u64) {
    let mut rest = entries.split_off(&upto);
    rest.remove(&upto);
    *entries = rest;
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Sequence numbers of the segments in `dir`, ascending.
fn list_segments(dir: &Path) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let name = item
            .with_context(|| format!("list {}", dir.display()))?
            .file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name.strip_suffix(SEGMENT_SUFFIX) {
            if let Ok(seq) = seq.parse::<u64>() {
                out.push(seq);
            }
        } else if name.ends_with(MIGRATION_SUFFIX) || name.ends_with(NEW_SEGMENT_SUFFIX) {
            // An interrupted migration (the LMDB files are still there; it starts again) or a
            // segment that was being started (nothing was written to it but its header).
            let path = dir.join(name);
            std::fs::remove_file(&path)
                .with_context(|| format!("remove the unfinished {}", path.display()))?;
        }
    }
    out.sort_unstable();
    // Segments are created one after the other and deleted oldest first, each step made durable
    // before the next: a gap means a segment file was lost, and with it acknowledged entries.
    if let Some(pair) = out.windows(2).find(|p| p[1] != p[0] + 1) {
        anyhow::bail!(
            "the Raft log in {} is damaged: segment {} is missing between {} and {}; this \
             node's log cannot be trusted (remove the node from the cluster, clear its data \
             directory and join it again)",
            dir.display(),
            pair[0] + 1,
            pair[0],
            pair[1]
        );
    }
    Ok(out)
}

/// The id of an entry, read from its JSON without decoding the command.
#[derive(Deserialize)]
struct EntryHead {
    log_id: LogId<NodeId>,
}

/// What replaying one segment found.
struct Replayed {
    /// Where the valid records end: the next write goes here.
    end: u64,
    /// What follows them.
    tail: Tail,
    /// Sum of the last valid record (the seed if none).
    last_sum: Sum,
    max_entry: Option<u64>,
}

/// What follows the last valid record of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tail {
    /// The zero fill, or the end of the file: nothing was lost.
    Clean,
    /// What a crash during the last write leaves: that write's sectors that did not reach the
    /// disk still hold the zeros of the fill, and later sectors of it may have. Nothing after
    /// it was acknowledged (the store syncs each write before the next).
    Torn,
    /// A record that no crash can explain (every sector of it holds written bytes, or it claims
    /// more than the file holds): the disk changed it after it was written, and what follows it
    /// may be acknowledged. Says where and why.
    Damaged(String),
}

/// Whether a record whose bytes (`record`, from file offset `at`) fail their checksum can be
/// the torn last write: some sector holds none of its bytes, only zeros. A bit flipped in a
/// record that was written whole cannot look like that (a record's header and JSON payload
/// hold no run of zeros that fills its share of a sector, bar a share of a byte or two at a
/// sector's edge).
fn torn_write_explains(at: u64, record: &[u8]) -> bool {
    let end = at + record.len() as u64;
    let mut from = at;
    while from < end {
        let sector_end = (from / SECTOR_BYTES + 1) * SECTOR_BYTES;
        let to = sector_end.min(end);
        let part = &record[(from - at) as usize..(to - at) as usize];
        if part.iter().all(|b| *b == 0) {
            return true;
        }
        from = to;
    }
    false
}

/// Whether `file` holds only zeros from `from` to `len`.
fn zeros_to_end(file: &File, path: &Path, from: u64, len: u64) -> anyhow::Result<bool> {
    let mut buf = vec![0u8; 1 << 16];
    let mut at = from;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)
            .with_context(|| format!("read {} at {at}", path.display()))?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Replay the records of `segment` into `index`, stopping at the fill or at the first record
/// that does not follow the chain, and say what follows the last good one ([`Tail`]).
fn replay_segment(
    file: &File,
    path: &Path,
    segment: u64,
    index: &mut Index,
) -> anyhow::Result<Replayed> {
    let len = file
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut at = 0u64;
    let mut prev = segment_seed(segment);
    let mut max_entry = None;
    let mut payload = Vec::new();
    let tail;
    loop {
        if at + RECORD_HEADER_BYTES as u64 > len {
            // A header cut by the end of the file (a file written without a fill).
            tail = if zeros_to_end(file, path, at, len)? {
                Tail::Clean
            } else {
                Tail::Torn
            };
            break;
        }
        let mut header = [0u8; RECORD_HEADER_BYTES];
        reader
            .read_exact(&mut header)
            .with_context(|| format!("read {} at {at}", path.display()))?;
        let rec_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let kind_byte = header[4];
        if rec_len == 0 && kind_byte == 0 {
            // The zero fill ends what was written; written bytes after it are a later part of
            // the torn last write (this record's sector never reached the disk).
            tail = if zeros_to_end(file, path, at, len)? {
                Tail::Clean
            } else {
                Tail::Torn
            };
            break;
        }
        let payload_at = at + RECORD_HEADER_BYTES as u64;
        if payload_at + u64::from(rec_len) > len {
            // The file is filled ahead of every write, so no record ever claimed this much:
            // its length was changed on disk.
            tail = Tail::Damaged(format!(
                "the record at offset {at} claims {rec_len} bytes, past the end of the file                  ({len} bytes)"
            ));
            break;
        }
        payload.resize(rec_len as usize, 0);
        reader
            .read_exact(&mut payload)
            .with_context(|| format!("read {} at {payload_at}", path.display()))?;
        let sum: Sum = header[8..16].try_into().expect("8 bytes");
        if record_sum(&prev, kind_byte, &payload) != sum {
            let record = [&header[..], &payload[..]].concat();
            tail = if torn_write_explains(at, &record) {
                Tail::Torn
            } else {
                Tail::Damaged(format!(
                    "the record at offset {at} ({} bytes, every sector of it written) does not                      match its checksum",
                    record.len()
                ))
            };
            break;
        }
        let kind = Kind::from_byte(kind_byte).with_context(|| {
            format!(
                "{} at {at}: record kind {kind_byte} is unknown (written by a newer Quiver?)",
                path.display()
            )
        })?;
        let what = || format!("{} at {at}: decode {kind:?} record", path.display());
        match kind {
            Kind::Entry => {
                let head: EntryHead = serde_json::from_slice(&payload).with_context(what)?;
                let i = head.log_id.index;
                index.entries.insert(
                    i,
                    Loc {
                        segment,
                        offset: payload_at,
                        len: rec_len,
                        log_id: head.log_id,
                    },
                );
                max_entry = max_entry.max(Some(i));
            }
            Kind::Truncate => {
                let since: u64 = serde_json::from_slice(&payload).with_context(what)?;
                index.entries.split_off(&since);
            }
            Kind::Purge => {
                let upto: LogId<NodeId> = serde_json::from_slice(&payload).with_context(what)?;
                purge_entries(&mut index.entries, upto.index);
                index.last_purged = Some(upto);
            }
            Kind::Vote => {
                index.vote = Some(serde_json::from_slice(&payload).with_context(what)?);
            }
        }
        prev = sum;
        at = payload_at + u64::from(rec_len);
    }
    Ok(Replayed {
        end: at,
        tail,
        last_sum: prev,
        max_entry,
    })
}

/// Copy an LMDB log (vote, purge point, entries) into segment 1: written under a temporary name,
/// synced, renamed into place, and only then are the LMDB files removed.
fn migrate_lmdb(dir: &Path) -> anyhow::Result<()> {
    use heed::byteorder::BigEndian;
    use heed::types::{Bytes, Str, U64};
    let tmp = dir.join(format!("{:020}{MIGRATION_SUFFIX}", 1));
    {
        let env = crate::open_env(dir, LMDB_LOG_MAP_SIZE_BYTES, 2, heed::EnvFlags::empty())
            .context("open the LMDB log to migrate it")?;
        let rtxn = env.read_txn().context("read the LMDB log")?;
        let entries: Option<heed::Database<U64<BigEndian>, Bytes>> = env
            .open_database(&rtxn, Some("entries"))
            .context("open the LMDB log's entries")?;
        let meta: Option<heed::Database<Str, Bytes>> = env
            .open_database(&rtxn, Some("meta"))
            .context("open the LMDB log's meta")?;
        let file = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        let mut out = BufWriter::new(&file);
        let mut prev = segment_seed(1);
        let mut buf = Vec::new();
        let mut put = |kind: Kind, payload: &[u8], out: &mut BufWriter<&File>| {
            buf.clear();
            encode_record(&mut buf, &mut prev, kind, payload);
            out.write_all(&buf)
        };
        if let Some(meta) = meta {
            for (key, kind) in [("vote", Kind::Vote), ("last_purged", Kind::Purge)] {
                if let Some(v) = meta.get(&rtxn, key).context("read the LMDB log's meta")? {
                    put(kind, v, &mut out).with_context(|| format!("write {}", tmp.display()))?;
                }
            }
        }
        if let Some(entries) = entries {
            for item in entries.iter(&rtxn).context("read the LMDB log's entries")? {
                let (_, bytes) = item.context("read the LMDB log's entries")?;
                put(Kind::Entry, bytes, &mut out)
                    .with_context(|| format!("write {}", tmp.display()))?;
            }
        }
        out.flush()
            .with_context(|| format!("write {}", tmp.display()))?;
        drop(out);
        file.sync_all()
            .with_context(|| format!("sync {}", tmp.display()))?;
        drop(rtxn);
        env.prepare_for_closing().wait();
    }
    let path = segment_path(dir, 1);
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    sync_dir(dir).with_context(|| format!("sync {}", dir.display()))?;
    remove_lmdb_files(dir)
}

fn remove_lmdb_files(dir: &Path) -> anyhow::Result<()> {
    for name in [LMDB_DATA_FILE_NAME, LMDB_LOCK_FILE_NAME] {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("remove the migrated {}", path.display()))?;
        }
    }
    Ok(())
}

impl<A: App> LogStore<A> {
    pub(crate) fn open(
        dir: &Path,
        lease: EnvLease,
        disk: Option<LogDiskHandle>,
        options: LogOptions,
    ) -> anyhow::Result<Self> {
        let synced = !disk.as_ref().is_some_and(|d| d.0.skip_fsync());
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create the log directory {}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("open {}", lock_path.display()))?;
        lock.try_lock().map_err(|e| {
            anyhow::anyhow!(
                "the Raft log at {} is already open ({e}): another quiver-node, or this process, \
                 uses this data directory",
                dir.display()
            )
        })?;

        let mut segments = list_segments(dir)?;
        if segments.is_empty() && dir.join(LMDB_DATA_FILE_NAME).exists() {
            migrate_lmdb(dir)?;
            segments = list_segments(dir)?;
        } else if !segments.is_empty() {
            // A migration that renamed its segment but did not get to remove the LMDB files.
            remove_lmdb_files(dir)?;
        }
        if segments.is_empty() {
            let path = segment_path(dir, 1);
            File::create(&path).with_context(|| format!("create {}", path.display()))?;
            sync_dir(dir).with_context(|| format!("sync {}", dir.display()))?;
            segments.push(1);
        }

        let mut index = Index::default();
        let mut max_entry = BTreeMap::new();
        let mut last = None;
        for &segment in &segments {
            let path = segment_path(dir, segment);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("open {}", path.display()))?;
            let replayed = replay_segment(&file, &path, segment, &mut index)?;
            if let Tail::Damaged(why) = &replayed.tail {
                // A record changed after it was written, in any segment: the entries after it
                // may have been acknowledged, and dropping them would break the promise.
                anyhow::bail!(
                    "the Raft log in {} is damaged: segment {segment}: {why}; the records after                      it may hold acknowledged entries, so this node refuses to start rather than                      drop them (remove the node from the cluster, clear its data directory and                      join it again: it copies the log from its peers)",
                    dir.display(),
                );
            }
            if replayed.tail != Tail::Clean && Some(&segment) != segments.last() {
                // Only the active segment can end in a torn write (a new one is started after a
                // synced write, and a torn tail is cleared at open, below): this is damage, and
                // the entries after it would silently be missing.
                anyhow::bail!(
                    "the Raft log in {} is damaged: segment {} has a bad record at offset {} \
                     followed by more segments; this node's log cannot be trusted (remove the \
                     node from the cluster, clear its data directory and join it again)",
                    dir.display(),
                    segment,
                    replayed.end
                );
            }
            drop_cached_pages(&file);
            max_entry.insert(segment, replayed.max_entry);
            let file = Arc::new(file);
            index.files.insert(segment, file.clone());
            last = Some((segment, file, replayed));
        }
        let (segment, file, replayed) = last.expect("at least one segment");
        let path = segment_path(dir, segment);
        let filled_to = file
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        if replayed.tail == Tail::Torn {
            // A torn tail: zero everything after the last good record, so that the segment ends
            // cleanly once it is closed, whatever the next writes leave of the torn bytes.
            zero_range(&file, replayed.end, filled_to)
                .and_then(|()| file.sync_data())
                .with_context(|| format!("clear the torn tail of {}", path.display()))?;
        }
        let writer = Writer {
            segment,
            file,
            write_at: replayed.end,
            filled_to,
            prev_sum: replayed.last_sum,
            max_entry,
        };
        Ok(LogStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                options,
                writer: Mutex::new(writer),
                index: RwLock::new(index),
                disk,
                synced,
                _lock: lock,
                _lease: lease,
            }),
            _app: PhantomData,
        })
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while writing leaves the position at the last complete write; carry on.
        self.shared
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.shared
            .index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn index_mut(&self) -> RwLockWriteGuard<'_, Index> {
        self.shared
            .index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sync_dir(&self) -> std::result::Result<(), AnyError> {
        if self.shared.synced {
            sync_dir(&self.shared.dir)
                .map_err(|e| io_error(&e, format!("sync {}", self.shared.dir.display())))?;
        }
        Ok(())
    }

    fn sync(&self, file: &File, what: &str) -> std::result::Result<(), AnyError> {
        if self.shared.synced {
            file.sync_data()
                .map_err(|e| io_error(&e, format!("fdatasync the Raft log ({what})")))?;
        }
        Ok(())
    }

    /// Write `records` at the end of the log and make them durable, then publish them to the
    /// index with `publish`. A harness disk, if any, is told before and after.
    fn write(
        &self,
        records: Vec<Pending>,
        publish: impl FnOnce(&mut Index),
    ) -> std::result::Result<(), AnyError> {
        if records.is_empty() {
            publish(&mut self.index_mut());
            return Ok(());
        }
        if let Some(disk) = &self.shared.disk {
            disk.0.before_write(&self.shared.dir, self.shared.synced);
        }
        let mut w = self.writer();
        if w.write_at >= self.shared.options.segment_bytes_target {
            self.start_segment(&mut w)?;
        }
        let bytes: u64 = records
            .iter()
            .map(|r| (RECORD_HEADER_BYTES + r.payload.len()) as u64)
            .sum();
        let end = w.write_at + bytes;
        self.fill_ahead(&mut w, end)?;
        let mut buf = Vec::with_capacity(bytes as usize);
        let mut prev = w.prev_sum;
        let mut locs = Vec::new();
        for r in &records {
            let at = encode_record(&mut buf, &mut prev, r.kind, &r.payload);
            if let Some(log_id) = r.log_id {
                locs.push(Loc {
                    segment: w.segment,
                    offset: w.write_at + at as u64,
                    len: r.payload.len() as u32,
                    log_id,
                });
            }
        }
        w.file
            .write_all_at(&buf, w.write_at)
            .map_err(|e| io_error(&e, "write to the Raft log"))?;
        self.sync(&w.file, "append")?;
        w.write_at += bytes;
        w.prev_sum = prev;
        let segment = w.segment;
        let top = locs.iter().map(|l| l.log_id.index).max();
        if let Some(max) = w.max_entry.get_mut(&segment) {
            *max = (*max).max(top);
        }
        {
            let mut index = self.index_mut();
            for loc in locs {
                index.entries.insert(loc.log_id.index, loc);
            }
            publish(&mut index);
        }
        drop(w);
        if let Some(disk) = &self.shared.disk {
            disk.0.after_write(self.shared.synced);
        }
        Ok(())
    }

    /// Write one record that is not an entry (`value` as JSON) and publish it with `publish`.
    fn write_meta(
        &self,
        kind: Kind,
        value: &impl serde::Serialize,
        publish: impl FnOnce(&mut Index),
    ) -> std::result::Result<(), AnyError> {
        let payload = serde_json::to_vec(value)
            .map_err(|e| AnyError::new(&e).add_context(|| format!("encode a {kind:?} record")))?;
        self.write(
            vec![Pending {
                kind,
                payload,
                log_id: None,
            }],
            publish,
        )
    }

    /// Make sure the active segment's bytes up to `end` are written (zeros if nothing else), so
    /// that records overwrite them without changing the file's size.
    fn fill_ahead(&self, w: &mut Writer, end: u64) -> std::result::Result<(), AnyError> {
        if end <= w.filled_to {
            return Ok(());
        }
        let target = end.div_ceil(FILL_STEP_BYTES) * FILL_STEP_BYTES;
        zero_range(&w.file, w.filled_to, target)
            .map_err(|e| io_error(&e, "fill the Raft log's segment ahead"))?;
        self.sync(&w.file, "fill ahead")?;
        w.filled_to = target;
        Ok(())
    }

    /// Close the active segment and start the next one with the current vote and purge point,
    /// so that older segments can go once their entries are purged.
    fn start_segment(&self, w: &mut Writer) -> std::result::Result<(), AnyError> {
        // Built under a temporary name and renamed into place once its header is synced: a crash
        // in between must not leave a segment without the vote (older segments, which hold it,
        // may be deleted while this one is active).
        let segment = w.segment + 1;
        let path = segment_path(&self.shared.dir, segment);
        let tmp = self
            .shared
            .dir
            .join(format!("{segment:020}{NEW_SEGMENT_SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_error(&e, format!("create {}", tmp.display())))?;
        let mut buf = Vec::new();
        let mut prev = segment_seed(segment);
        {
            let index = self.index();
            if let Some(vote) = &index.vote {
                let json = serde_json::to_vec(vote).map_err(|e| AnyError::new(&e))?;
                encode_record(&mut buf, &mut prev, Kind::Vote, &json);
            }
            if let Some(purged) = &index.last_purged {
                let json = serde_json::to_vec(purged).map_err(|e| AnyError::new(&e))?;
                encode_record(&mut buf, &mut prev, Kind::Purge, &json);
            }
        }
        let file = Arc::new(file);
        let mut next = Writer {
            segment,
            file: file.clone(),
            write_at: 0,
            filled_to: 0,
            prev_sum: prev,
            max_entry: BTreeMap::new(),
        };
        self.fill_ahead(&mut next, buf.len() as u64)?;
        next.file
            .write_all_at(&buf, 0)
            .map_err(|e| io_error(&e, format!("write {}", tmp.display())))?;
        self.sync(&next.file, "segment start")?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            io_error(
                &e,
                format!("rename {} to {}", tmp.display(), path.display()),
            )
        })?;
        self.sync_dir()?;
        next.write_at = buf.len() as u64;
        // Nothing can fail any more: the segment map moves over.
        next.max_entry = std::mem::take(&mut w.max_entry);
        next.max_entry.insert(segment, None);
        self.index_mut().files.insert(segment, file);
        *w = next;
        Ok(())
    }

    /// Delete the oldest segments whose entries are all purged (never the active one).
    fn drop_purged_segments(&self, purged: u64) -> std::result::Result<(), AnyError> {
        let mut w = self.writer();
        while let Some((&segment, &max)) = w.max_entry.first_key_value() {
            if segment == w.segment || max.is_some_and(|m| m > purged) {
                break;
            }
            let path = segment_path(&self.shared.dir, segment);
            std::fs::remove_file(&path)
                .map_err(|e| io_error(&e, format!("remove the purged {}", path.display())))?;
            // Durable before the next one goes: segments stay a consecutive run after a crash.
            self.sync_dir()?;
            w.max_entry.remove(&segment);
            self.index_mut().files.remove(&segment);
        }
        Ok(())
    }

    fn read_entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<LogEntry<A>>> {
        let wanted: Vec<(Loc, Arc<File>)> = {
            let index = self.index();
            index
                .entries
                .range(range)
                .map(|(_, loc)| {
                    let file = index.files.get(&loc.segment).cloned().ok_or_else(|| {
                        StorageIOError::read_log_at_index(
                            loc.log_id.index,
                            AnyError::error(format!(
                                "entry {} points at segment {} which is not open",
                                loc.log_id, loc.segment
                            )),
                        )
                    })?;
                    Ok((*loc, file))
                })
                .collect::<Result<_>>()?
        };
        let mut out = Vec::with_capacity(wanted.len());
        let mut buf = Vec::new();
        for (loc, file) in wanted {
            let index = loc.log_id.index;
            buf.resize(loc.len as usize, 0);
            file.read_exact_at(&mut buf, loc.offset).map_err(|e| {
                StorageIOError::read_log_at_index(
                    index,
                    io_error(&e, format!("read segment {}", loc.segment)),
                )
            })?;
            let entry: LogEntry<A> = serde_json::from_slice(&buf).map_err(|e| {
                StorageIOError::read_log_at_index(
                    index,
                    AnyError::new(&e).add_context(|| "decode log entry JSON".to_string()),
                )
            })?;
            if entry.log_id != loc.log_id {
                return Err(StorageIOError::read_log_at_index(
                    index,
                    AnyError::error(format!(
                        "entry indexed as {} reads back as {}",
                        loc.log_id, entry.log_id
                    )),
                )
                .into());
            }
            out.push(entry);
        }
        Ok(out)
    }
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
        let index = self.index();
        let last_purged_log_id = index.last_purged;
        let last_log_id = index
            .entries
            .last_key_value()
            .map(|(_, loc)| loc.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let vote = *vote;
        self.write_meta(Kind::Vote, &vote, |index| index.vote = Some(vote))
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        Ok(self.index().vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig<A>>) -> Result<()>
    where
        I: IntoIterator<Item = LogEntry<A>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        for entry in entries {
            let payload = serde_json::to_vec(&entry).map_err(|e| {
                StorageIOError::write_log_entry(
                    entry.log_id,
                    AnyError::new(&e).add_context(|| "encode log entry".to_string()),
                )
            })?;
            records.push(Pending {
                kind: Kind::Entry,
                payload,
                log_id: Some(entry.log_id),
            });
        }
        self.write(records, |_| {})
            .map_err(StorageIOError::write_logs)?;
        // Written and fdatasynced: the entries are durable. (Unless the planted `skip_fsync` bug
        // is on: then this report is the lie the simulator must catch.)
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        tracing::debug!(%log_id, "truncate log since (inclusive)");
        let since = log_id.index;
        self.write_meta(Kind::Truncate, &since, |index| {
            index.entries.split_off(&since);
        })
        .map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        tracing::debug!(%log_id, "purge log up to (inclusive)");
        // Purging never moves backwards; openraft only purges forward.
        let last_purged = self.index().last_purged;
        if last_purged.is_some_and(|p| p.index > log_id.index) {
            return Err(StorageIOError::write_logs(AnyError::error(format!(
                "purge up to {log_id} would move last purged back from {last_purged:?}"
            )))
            .into());
        }
        self.write_meta(Kind::Purge, &log_id, |index| {
            purge_entries(&mut index.entries, log_id.index);
            index.last_purged = Some(log_id);
        })
        .map_err(StorageIOError::write_logs)?;
        self.drop_purged_segments(log_id.index)
            .map_err(|e| StorageIOError::write_logs(e).into())
    }
}
