//! A snapshot many times larger than the memory allowed for it is built, sent in chunks, received
//! and installed, and the heap never grows by more than that allowance: snapshot data goes
//! through files, never whole through memory.
//!
//! Its own test binary, with one test: it counts every heap allocation of the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use heed::byteorder::BigEndian;
use heed::types::{Str, U64};
use heed::{Database, Env, RoTxn, RwTxn};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use quiver_raft::{open_storage, App, TypeConfig, SNAPSHOT_CHUNK_SIZE_BYTES};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Counts the bytes allocated on the heap now, and the most since the last [`reset_peak`].
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE_BYTES.fetch_add(by, Ordering::SeqCst) + by;
    PEAK_BYTES.fetch_max(live, Ordering::SeqCst);
}

// SAFETY: every call is passed to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Start a new peak at what is allocated now; returns that.
fn reset_peak() -> usize {
    let live = LIVE_BYTES.load(Ordering::SeqCst);
    PEAK_BYTES.store(live, Ordering::SeqCst);
    live
}

/// How much the heap grew above `base` at its peak since [`reset_peak`].
fn peak_growth(base: usize) -> usize {
    PEAK_BYTES.load(Ordering::SeqCst).saturating_sub(base)
}

/// The snapshot's size: well over every bound below.
const SNAPSHOT_BYTES: u64 = 64 << 20;
/// How much the heap may grow while a snapshot is built or installed: buffers of the streamed
/// reads and writes (64 KiB each) and bookkeeping, not the snapshot.
const BUILD_OR_INSTALL_HEAP_BYTES_MAX: usize = 2 << 20;
/// While it is sent and received: one chunk (as openraft reads it), and the buffer tokio keeps
/// for each of the two files (at most 2 MiB: a tokio file reads and writes through a buffer
/// handed to its blocking pool), plus 1 MiB.
const TRANSFER_HEAP_BYTES_MAX: usize = SNAPSHOT_CHUNK_SIZE_BYTES + 2 * (2 << 20) + (1 << 20);
/// Piece in which the app writes and reads its export.
const PIECE_BYTES: usize = 64 << 10;

/// An app whose state is one number, `len`, and whose export is `len` bytes of a seeded
/// pseudo-random stream, generated as they are written; its import checks every byte as it is
/// read. Neither ever holds more than one piece.
struct Stream {
    len: Database<Str, U64<BigEndian>>,
}

const LEN_KEY: &str = "len";

/// xorshift64*: the export's bytes, a function of the seed alone.
struct Bytes(u64);

impl Bytes {
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bytes = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

const SEED: u64 = 0x5157_4552;

impl App for Stream {
    type Command = u64;
    type Response = ();
    const MAX_DBS: u32 = 1;

    fn open(env: &Env, wtxn: &mut RwTxn<'_>) -> anyhow::Result<Self> {
        Ok(Stream {
            len: env.create_database(wtxn, Some("stream_len"))?,
        })
    }

    fn apply(&self, wtxn: &mut RwTxn<'_>, _: u64, len: &u64) -> anyhow::Result<()> {
        Ok(self.len.put(wtxn, LEN_KEY, len)?)
    }

    fn export(&self, rtxn: &RoTxn<'_>, out: &mut dyn Write) -> anyhow::Result<()> {
        let mut left = self.len.get(rtxn, LEN_KEY)?.unwrap_or(0);
        out.write_all(&left.to_be_bytes())?;
        let mut bytes = Bytes(SEED);
        let mut piece = vec![0u8; PIECE_BYTES];
        while left > 0 {
            let n = left.min(PIECE_BYTES as u64) as usize;
            bytes.fill(&mut piece[..n]);
            out.write_all(&piece[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    fn import(&self, wtxn: &mut RwTxn<'_>, data: &mut dyn Read) -> anyhow::Result<()> {
        let mut len = [0u8; 8];
        data.read_exact(&mut len)?;
        let len = u64::from_be_bytes(len);
        let mut left = len;
        let mut bytes = Bytes(SEED);
        let (mut want, mut got) = (vec![0u8; PIECE_BYTES], vec![0u8; PIECE_BYTES]);
        while left > 0 {
            let n = left.min(PIECE_BYTES as u64) as usize;
            bytes.fill(&mut want[..n]);
            data.read_exact(&mut got[..n])?;
            anyhow::ensure!(
                want[..n] == got[..n],
                "export differs {} bytes from its end",
                left
            );
            left -= n as u64;
        }
        anyhow::ensure!(data.read(&mut got)? == 0, "bytes after the export");
        Ok(self.len.put(wtxn, LEN_KEY, &len)?)
    }
}

#[test]
fn a_snapshot_larger_than_its_memory_bound_is_streamed_through_files() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    runtime.block_on(async {
        let (_log, mut leader) = open_storage::<Stream>(leader_dir.path()).expect("open leader");
        let (_log_f, mut follower) =
            open_storage::<Stream>(follower_dir.path()).expect("open follower");
        let entry = Entry::<TypeConfig<Stream>> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(vec![SNAPSHOT_BYTES]),
        };
        leader.apply([entry]).await.expect("apply");

        let base = reset_peak();
        let built = leader.build_snapshot().await.expect("build");
        let build_growth = peak_growth(base);
        assert!(built.snapshot.is_file());
        drop(built);

        // Sent as openraft sends it, one chunk read at a time, and received into the data the
        // follower gives for it.
        let base = reset_peak();
        let mut sent = leader
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("a snapshot");
        let end = sent
            .snapshot
            .seek(std::io::SeekFrom::End(0))
            .await
            .expect("seek");
        assert!(
            end > SNAPSHOT_BYTES,
            "the snapshot holds the whole export ({end} bytes)"
        );
        sent.snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .expect("seek");
        let mut received = follower.begin_receiving_snapshot().await.expect("begin");
        let mut offset = 0;
        while offset < end {
            let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK_SIZE_BYTES);
            while chunk.len() < chunk.capacity() {
                if sent.snapshot.read_buf(&mut chunk).await.expect("read") == 0 {
                    break;
                }
            }
            received.write_all(&chunk).await.expect("receive");
            offset += chunk.len() as u64;
        }
        received.shutdown().await.expect("finish receiving");
        let transfer_growth = peak_growth(base);
        let meta = sent.meta.clone();
        drop(sent);

        let base = reset_peak();
        follower
            .install_snapshot(&meta, received)
            .await
            .expect("install");
        let install_growth = peak_growth(base);

        // (Installing frees the received file's tokio buffer first, so the growth above may be
        // nothing.) Installed again, on another node, from a file opened afresh.
        let other_dir = tempfile::tempdir().expect("tempdir");
        let (_log_o, mut other) = open_storage::<Stream>(other_dir.path()).expect("open other");
        let current = leader
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("a snapshot");
        let base = reset_peak();
        other
            .install_snapshot(&current.meta, current.snapshot)
            .await
            .expect("install from a file");
        let copy_install_growth = peak_growth(base);

        for store in [&follower, &other] {
            let len = store
                .read(|app, rtxn| Ok(app.len.get(rtxn, LEN_KEY)?))
                .expect("read");
            assert_eq!(len, Some(SNAPSHOT_BYTES), "every byte was imported");
        }
        eprintln!(
            "heap growth for a {SNAPSHOT_BYTES}-byte snapshot: build {build_growth}, \
             transfer {transfer_growth}, install {install_growth}, install from a file \
             {copy_install_growth}"
        );
        assert!(
            copy_install_growth < BUILD_OR_INSTALL_HEAP_BYTES_MAX,
            "install from a file grew the heap by {copy_install_growth} bytes"
        );
        assert!(
            build_growth < BUILD_OR_INSTALL_HEAP_BYTES_MAX,
            "build grew the heap by {build_growth} bytes"
        );
        assert!(
            transfer_growth < TRANSFER_HEAP_BYTES_MAX,
            "transfer grew the heap by {transfer_growth} bytes"
        );
        assert!(
            install_growth < BUILD_OR_INSTALL_HEAP_BYTES_MAX,
            "install grew the heap by {install_growth} bytes"
        );
    });
}
