//! Simulated chunk stores and synthesized artifacts.
//!
//! **Scale.** A GB-scale artifact cannot be held (or hashed) hundreds of times in one test
//! process, so the simulator shrinks payloads by a fixed factor and keeps everything else real:
//! a [`Corpus`] chunk really is up to [`CHUNK_BYTES_REAL`] (4 KiB) of bytes drawn from the seed,
//! its hash really is the blake3 of those bytes, and every `put` and `get` really verifies them,
//! as do `fetch_all` and `read_chunk`. Each real byte stands for [`LOGICAL_BYTES_PER_BYTE`]
//! (1024) bytes of the artifact, so a 4 KiB chunk stands for a 4 MiB chunk (quiver's
//! `CHUNK_SIZE_BYTES`). The simulated network charges bandwidth for the logical size
//! ([`logical_bytes`]) and reports count logical bytes. What the scale does not model: the CPU
//! cost of hashing and copying 4 MiB chunks (zero virtual time in the simulator).
//!
//! **Stores.** [`SimStore`] is one node's (or one serving replica's) chunk store in memory,
//! implementing [`ChunkSource`] with the on-disk store's contract: `put` checks the bytes against
//! the hash and is durable once it returns, `get` verifies again and reports a bad copy as
//! [`StoreError::Corrupt`]. The simulator keeps a node's store across its crashes and restarts,
//! as a disk would be; [`SimStore::wipe`] models a lost disk. Bytes that equal the corpus's copy
//! are shared with it (reference-counted), so a hundred replicas holding the model cost the
//! corpus once plus the maps.
//!
//! **The disk.** A store sits on a disk of [`STORE_CAPACITY_BYTES`] logical bytes and counts
//! the logical size of what it holds; `free_bytes` reports the difference, which the node's
//! upload reserve reads. Faults, each mirroring what `ChunkStore` meets on a real disk:
//! - *Bit rot* ([`SimStore::corrupt`]) flips a byte of a held copy.
//! - *Full disk* ([`SimStore::fill`]) shrinks the capacity to what is held plus a little slack,
//!   until [`SimStore::free`]: a put that does not fit fails as `ENOSPC` does, with a
//!   [`StoreError::Io`] of kind [`std::io::ErrorKind::StorageFull`], and writes nothing.
//! - *Failed sync* ([`SimStore::set_sync_failing`]): while on, a put writes its copy and then
//!   fails its sync. The real store removes such a copy (its bytes and name are not known to be
//!   on disk) and so does this one; the put fails with an `Io` error.
//! - *Torn write* ([`SimStore::arm_tear`]): the next put is cut off as a write in flight at a
//!   power loss is: half its bytes reach the disk under the chunk's name and the put fails. The
//!   torn copy stays until something notices: `get` reports it `Corrupt` (read-through then
//!   replaces it), the node's scrub removes it so repair fetches it again, and a later put of the
//!   chunk must not count it. (Only a put in flight tears: tearing a copy whose put had returned
//!   would be a disk that lies about its syncs, which no number of acknowledged copies survives.)
//!
//! Crash model ([`SimStore::power_loss`], when the node crashes): a put that returned `Ok` is
//! durable, so a power loss takes nothing back, except under the planted bug
//! [`PlantedStoreBugs::keep_unsynced_copy`], where a copy whose sync failed stays in place, is
//! counted by later puts of the same chunk, and is gone after the next power loss. A put that finds the chunk already held counts that copy only if it is durable
//! and intact: a torn or rotten copy is replaced by the bytes in hand.
//! Checkers count only durable intact copies ([`SimStore::holds_intact`]).
//!
//! Everything is ordered (`BTreeMap`); a store is cheap to clone and clones share the chunks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use quiver_transfer::collect::PutEpochs;
use quiver_transfer::{
    ChunkRef, ChunkSource, Collected, FileEntry, Hash, Manifest, ManifestError, StoreError,
    CHUNKS_PER_MANIFEST_MAX, CHUNK_SIZE_BYTES_MAX,
};

/// Real bytes per synthesized chunk (the last chunk of a corpus may be shorter).
pub const CHUNK_BYTES_REAL: usize = 4 * 1024;
/// Logical (artifact) bytes each real byte stands for: a [`CHUNK_BYTES_REAL`] chunk stands for
/// a 4 MiB chunk.
pub const LOGICAL_BYTES_PER_BYTE: u64 = 1024;
/// Most chunks one simulated store holds (a bound on memory; a put beyond it fails).
pub const STORE_CHUNKS_MAX: usize = 1 << 20;
/// Logical capacity of a simulated store's disk when no fault has filled it: far more than a run
/// writes (a 30 s chaos run writes well under 10 GiB logical per node).
pub const STORE_CAPACITY_BYTES: u64 = 1 << 40;
/// The file name of a synthesized artifact's single file.
pub const CORPUS_FILE_PATH: &str = "model.safetensors";

const _: () = assert!(CHUNK_BYTES_REAL <= CHUNK_SIZE_BYTES_MAX);

/// The logical size of `real_bytes` of simulated payload.
pub fn logical_bytes(real_bytes: usize) -> u64 {
    real_bytes as u64 * LOGICAL_BYTES_PER_BYTE
}

/// A synthesized artifact: its chunks in file order and their bytes (see the module docs).
#[derive(Debug)]
pub struct Corpus {
    chunks: Vec<ChunkRef>,
    bytes: BTreeMap<Hash, Arc<[u8]>>,
    logical_bytes: u64,
}

impl Corpus {
    /// An artifact of `logical_bytes` (rounded up to a whole real byte), cut into chunks of
    /// [`CHUNK_BYTES_REAL`] real bytes whose contents are drawn from `seed`. The same seed and
    /// size give the same chunks. Errors name the size and the limit when the artifact would need
    /// more than `CHUNKS_PER_MANIFEST_MAX` chunks.
    pub fn synthesize(seed: u64, logical_bytes: u64) -> Result<Corpus, String> {
        if logical_bytes == 0 {
            return Err("artifact size is 0 bytes: give a size of at least 1 byte".into());
        }
        let real_total = logical_bytes.div_ceil(LOGICAL_BYTES_PER_BYTE);
        let count = real_total.div_ceil(CHUNK_BYTES_REAL as u64);
        if count > CHUNKS_PER_MANIFEST_MAX as u64 {
            return Err(format!(
                "artifact of {logical_bytes} bytes needs {count} simulated chunks, more than the \
                 limit of {CHUNKS_PER_MANIFEST_MAX}: use a smaller size"
            ));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut bytes = BTreeMap::new();
        let mut left = real_total;
        for index in 0..count {
            let len = left.min(CHUNK_BYTES_REAL as u64) as usize;
            left -= len as u64;
            let data = chunk_bytes(seed, index, len);
            let hash = Hash::of(&data);
            chunks.push(ChunkRef {
                hash,
                size_bytes: len as u32,
            });
            bytes.insert(hash, Arc::from(data));
        }
        assert_eq!(left, 0, "every real byte is in a chunk");
        Ok(Corpus {
            chunks,
            bytes,
            logical_bytes,
        })
    }

    /// The chunks in file order.
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// The correct bytes of `hash`, if it is one of this corpus's chunks.
    pub fn bytes(&self, hash: &Hash) -> Option<Arc<[u8]>> {
        self.bytes.get(hash).cloned()
    }

    /// The artifact's logical size, as asked for.
    pub fn logical_bytes(&self) -> u64 {
        self.logical_bytes
    }

    /// Real bytes held (the sum of the chunks' sizes).
    pub fn real_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.size_bytes as u64).sum()
    }

    /// A manifest of one file, [`CORPUS_FILE_PATH`], made of the corpus's chunks (its sizes are
    /// the real, scaled-down sizes; see the module docs).
    pub fn manifest(&self) -> Result<Manifest, ManifestError> {
        Manifest::from_files(vec![FileEntry {
            path: CORPUS_FILE_PATH.into(),
            size_bytes: self.real_bytes(),
            mode: 0o644,
            chunks: self.chunks.clone(),
        }])
    }
}

/// Chunk `index` of the artifact drawn from `seed`: `len` bytes of blake3 output keyed by both.
fn chunk_bytes(seed: u64, index: u64, len: usize) -> Vec<u8> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"quiver-sim chunk\0");
    hasher.update(&seed.to_le_bytes());
    hasher.update(&index.to_le_bytes());
    let mut data = vec![0u8; len];
    hasher.finalize_xof().fill(&mut data);
    data
}

/// What a store has done, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Puts that wrote a chunk (not already present).
    pub writes: u64,
    /// Gets that returned verified bytes.
    pub verified_reads: u64,
    /// Gets that found the held copy corrupt.
    pub corrupt_reads: u64,
    /// Puts refused because the bytes did not match the hash.
    pub rejected_puts: u64,
    /// Puts refused because the chunk did not fit on the disk.
    pub full_puts: u64,
    /// Puts whose sync failed (their copy removed, unless the planted bug keeps it).
    pub failed_syncs: u64,
    /// Puts cut off by a torn write, leaving a truncated copy.
    pub torn_copies: u64,
    /// Puts that found a torn or rotten copy and wrote the chunk again.
    pub replaced_bad_copies: u64,
    /// Copies a power loss took back (only under the planted bug: none are unsynced otherwise).
    pub unsynced_lost: u64,
    /// Chunks the node's running collector removed (unreferenced and idle).
    pub collected: u64,
}

/// Known bugs the simulator can plant in its store (test-only; off by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedStoreBugs {
    /// PLANTED BUG `keep-unsynced-chunk`: a put whose sync failed leaves its copy in place (what
    /// `ChunkStore::put_verified` did when the sync after the rename failed), and a later put of
    /// the same chunk counts that copy without making it durable.
    pub keep_unsynced_copy: bool,
}

/// One held copy.
struct Held {
    data: Arc<[u8]>,
    /// Survives a power loss. False only for a copy whose sync failed and that the planted bug
    /// kept.
    durable: bool,
}

struct StoreState {
    chunks: BTreeMap<Hash, Held>,
    /// Logical bytes of the held copies.
    used_bytes: u64,
    /// Logical bytes the disk can hold now ([`STORE_CAPACITY_BYTES`] unless filled).
    capacity_bytes: u64,
    sync_failing: bool,
    /// The next put is torn.
    tear_armed: bool,
    planted: PlantedStoreBugs,
    stats: StoreStats,
    /// Which chunks were put recently, as `ChunkStore` tracks them for the running collector;
    /// in memory, so a power loss forgets them as a restart of the real store does.
    epochs: PutEpochs,
}

impl Default for StoreState {
    fn default() -> Self {
        StoreState {
            chunks: BTreeMap::new(),
            used_bytes: 0,
            capacity_bytes: STORE_CAPACITY_BYTES,
            sync_failing: false,
            tear_armed: false,
            planted: PlantedStoreBugs::default(),
            stats: StoreStats::default(),
            epochs: PutEpochs::default(),
        }
    }
}

impl StoreState {
    fn insert(&mut self, hash: Hash, data: Arc<[u8]>, durable: bool) {
        self.used_bytes += logical_bytes(data.len());
        if let Some(old) = self.chunks.insert(hash, Held { data, durable }) {
            self.used_bytes -= logical_bytes(old.data.len());
        }
    }

    fn remove(&mut self, hash: &Hash) -> Option<Held> {
        let held = self.chunks.remove(hash)?;
        self.used_bytes -= logical_bytes(held.data.len());
        Some(held)
    }

    fn free_bytes(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.used_bytes)
    }
}

/// One simulated chunk store (see the module docs). Cheap to clone; clones share the chunks.
#[derive(Clone)]
pub struct SimStore {
    state: Arc<Mutex<StoreState>>,
    /// Bytes equal to the corpus's are shared with it rather than copied.
    corpus: Option<Arc<Corpus>>,
}

impl SimStore {
    /// An empty store; chunks of `corpus` are held by reference to its bytes.
    pub fn new(corpus: Option<Arc<Corpus>>) -> Self {
        SimStore {
            state: Arc::default(),
            corpus,
        }
    }

    /// This store with `planted` switched on (test-only).
    pub fn with_planted(self, planted: PlantedStoreBugs) -> Self {
        self.lock().planted = planted;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreState> {
        // Every update is a single insert or removal: a panic cannot leave it half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fault: flips the first byte of the held copy of `hash`, so the next `get` fails its hash
    /// check. False if the chunk is not held.
    pub fn corrupt(&self, hash: &Hash) -> bool {
        let mut state = self.lock();
        let Some(held) = state.chunks.get_mut(hash) else {
            return false;
        };
        let mut bad = held.data.to_vec();
        if let Some(first) = bad.first_mut() {
            *first ^= 0xff;
        }
        held.data = Arc::from(bad);
        true
    }

    /// Fault: the disk is full but for `slack_bytes` (logical) until [`SimStore::free`].
    pub fn fill(&self, slack_bytes: u64) {
        let mut state = self.lock();
        state.capacity_bytes = state.used_bytes.saturating_add(slack_bytes);
    }

    /// The disk has its whole capacity again.
    pub fn free(&self) {
        self.lock().capacity_bytes = STORE_CAPACITY_BYTES;
    }

    /// Fault: while `failing`, every put's sync fails (see the module docs).
    pub fn set_sync_failing(&self, failing: bool) {
        self.lock().sync_failing = failing;
    }

    /// Fault: the next put that writes is torn (see the module docs).
    pub fn arm_tear(&self) {
        self.lock().tear_armed = true;
    }

    /// Every disk fault ends: full capacity, working syncs, no tear armed.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.capacity_bytes = STORE_CAPACITY_BYTES;
        state.sync_failing = false;
        state.tear_armed = false;
    }

    /// The node's machine lost power (the node is down): copies that were never durable are
    /// gone. Returns how many.
    pub fn power_loss(&self) -> usize {
        let mut state = self.lock();
        let unsynced: Vec<Hash> = state
            .chunks
            .iter()
            .filter(|(_, held)| !held.durable)
            .map(|(hash, _)| *hash)
            .collect();
        for hash in &unsynced {
            state.remove(hash);
        }
        state.stats.unsynced_lost += unsynced.len() as u64;
        state.epochs = PutEpochs::default();
        unsynced.len()
    }

    /// Fault: the disk is lost; every chunk is gone.
    pub fn wipe(&self) {
        let mut state = self.lock();
        state.chunks.clear();
        state.used_bytes = 0;
    }

    /// Chunks held (verified or not, durable or not).
    pub fn len(&self) -> usize {
        self.lock().chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every chunk in `chunks` is held durably and still verifies (a full check, not
    /// counted in the stats). What the checkers count as a copy.
    pub fn holds_intact(&self, chunks: &[ChunkRef]) -> bool {
        let state = self.lock();
        chunks.iter().all(|c| {
            state
                .chunks
                .get(&c.hash)
                .is_some_and(|held| held.durable && Hash::of(&held.data) == c.hash)
        })
    }

    pub fn stats(&self) -> StoreStats {
        self.lock().stats
    }
}

impl ChunkSource for SimStore {
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let held = self
            .lock()
            .chunks
            .get(hash)
            .map(|held| held.data.clone())
            .ok_or(StoreError::NotFound { hash: *hash })?;
        // Verified on every read, outside the lock, as the on-disk store does.
        let intact = Hash::of(&held) == *hash;
        let mut state = self.lock();
        if !intact {
            state.stats.corrupt_reads += 1;
            return Err(StoreError::Corrupt { hash: *hash });
        }
        state.stats.verified_reads += 1;
        Ok(held.to_vec())
    }

    fn put(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        let actual = Hash::of(data);
        if actual != *hash {
            self.lock().stats.rejected_puts += 1;
            return Err(StoreError::HashMismatch {
                expected: *hash,
                actual,
            });
        }
        if data.len() > CHUNK_SIZE_BYTES_MAX {
            return Err(io_error(
                hash,
                std::io::ErrorKind::InvalidInput,
                format!(
                    "chunk is {} bytes, more than the limit of {CHUNK_SIZE_BYTES_MAX}",
                    data.len()
                ),
            ));
        }
        let shared = self
            .corpus
            .as_ref()
            .and_then(|c| c.bytes(hash))
            .filter(|bytes| **bytes == *data)
            .unwrap_or_else(|| Arc::from(data));
        let mut state = self.lock();
        state.epochs.record(*hash);
        if let Some(held) = state.chunks.get(hash) {
            // An existing copy counts only if it is durable and intact, as `ChunkStore` checks.
            let trusted = state.planted.keep_unsynced_copy || held.durable;
            if trusted && Hash::of(&held.data) == *hash {
                return Ok(false);
            }
            // Torn or rotten (or never durable, which only the plant leaves): write it again.
            state.stats.replaced_bad_copies += 1;
            state.remove(hash);
        }
        if state.chunks.len() >= STORE_CHUNKS_MAX {
            return Err(io_error(
                hash,
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the simulated store holds {STORE_CHUNKS_MAX} chunks, its limit: \
                     simulate a smaller artifact"
                ),
            ));
        }
        let size = logical_bytes(data.len());
        if size > state.free_bytes() {
            state.stats.full_puts += 1;
            return Err(io_error(
                hash,
                std::io::ErrorKind::StorageFull,
                format!(
                    "no space left on device: the chunk needs {size} bytes, {} are free",
                    state.free_bytes()
                ),
            ));
        }
        if std::mem::take(&mut state.tear_armed) {
            let torn: Arc<[u8]> = Arc::from(&data[..data.len() / 2]);
            state.insert(*hash, torn, true);
            state.stats.torn_copies += 1;
            return Err(io_error(
                hash,
                std::io::ErrorKind::Other,
                format!(
                    "write cut off by a power loss: {} of {} bytes reached the disk",
                    data.len() / 2,
                    data.len()
                ),
            ));
        }
        state.insert(*hash, shared, false);
        if state.sync_failing {
            state.stats.failed_syncs += 1;
            if !state.planted.keep_unsynced_copy {
                // Neither its bytes nor its name are known to be on disk: not a copy.
                state.remove(hash);
            }
            return Err(io_error(
                hash,
                std::io::ErrorKind::Other,
                "sync failed: input/output error".into(),
            ));
        }
        if let Some(held) = state.chunks.get_mut(hash) {
            held.durable = true;
        }
        state.stats.writes += 1;
        Ok(true)
    }

    fn contains(&self, hash: &Hash) -> bool {
        self.lock().chunks.contains_key(hash)
    }

    fn remove(&self, hash: &Hash) -> Result<(), StoreError> {
        self.lock().remove(hash);
        Ok(())
    }

    fn free_bytes(&self) -> Option<u64> {
        Some(self.lock().free_bytes())
    }

    fn list(&self) -> Result<Vec<Hash>, StoreError> {
        Ok(self.lock().chunks.keys().copied().collect())
    }

    fn start_gc_epoch(&self) {
        self.lock().epochs.advance();
    }

    /// As `ChunkStore::remove_idle`: one lock orders it against puts.
    fn remove_idle(&self, hashes: &[Hash]) -> Result<Collected, StoreError> {
        let mut state = self.lock();
        let mut collected = Collected::default();
        for hash in hashes {
            if !state.epochs.is_idle(hash) {
                continue;
            }
            if let Some(held) = state.remove(hash) {
                collected.chunks += 1;
                collected.bytes += logical_bytes(held.data.len());
            }
        }
        state.stats.collected += collected.chunks;
        Ok(collected)
    }

    /// The held bytes, unchecked: only the planted bug `skip-chunk-verify` reads this way.
    fn get_unverified(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        self.lock()
            .chunks
            .get(hash)
            .map(|held| held.data.to_vec())
            .ok_or(StoreError::NotFound { hash: *hash })
    }
}

fn io_error(hash: &Hash, kind: std::io::ErrorKind, detail: String) -> StoreError {
    StoreError::Io {
        context: format!("store chunk {hash} in the simulated store"),
        source: std::io::Error::new(kind, detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corpus_is_seeded_scaled_and_valid() {
        let a = Corpus::synthesize(7, 10 * 1024 * 1024 + 1).unwrap();
        let b = Corpus::synthesize(7, 10 * 1024 * 1024 + 1).unwrap();
        let c = Corpus::synthesize(8, 10 * 1024 * 1024 + 1).unwrap();
        assert_eq!(a.chunks(), b.chunks());
        assert_ne!(a.chunks(), c.chunks());
        // 10 MiB + 1 logical bytes need 10 KiB + 1 real bytes (rounded up): two full chunks and one
        // of 2049 bytes.
        let sizes: Vec<u32> = a.chunks().iter().map(|c| c.size_bytes).collect();
        assert_eq!(sizes, vec![4096, 4096, 2049]);
        assert_eq!(a.real_bytes(), 10 * 1024 + 1);
        for chunk in a.chunks() {
            assert_eq!(Hash::of(&a.bytes(&chunk.hash).unwrap()), chunk.hash);
        }
        let manifest = a.manifest().unwrap();
        assert_eq!(manifest.chunk_count(), 3);
        assert!(Corpus::synthesize(1, 0).unwrap_err().contains("0 bytes"));
        assert!(Corpus::synthesize(1, u64::MAX / 2)
            .unwrap_err()
            .contains("limit"));
    }

    #[test]
    fn puts_verify_gets_verify_and_corruption_is_reported() {
        let corpus = Arc::new(Corpus::synthesize(1, 8 * 1024 * 1024).unwrap());
        let store = SimStore::new(Some(corpus.clone()));
        let chunk = corpus.chunks()[0].clone();
        let data = corpus.bytes(&chunk.hash).unwrap();
        let mut wrong = data.to_vec();
        wrong[10] ^= 1;
        assert!(matches!(
            store.put(&chunk.hash, &wrong),
            Err(StoreError::HashMismatch { .. })
        ));
        assert!(!store.contains(&chunk.hash));
        assert!(store.put(&chunk.hash, &data).unwrap());
        assert!(!store.put(&chunk.hash, &data).unwrap());
        assert_eq!(store.get(&chunk.hash).unwrap(), data.to_vec());
        assert!(store.holds_intact(&corpus.chunks()[..1]));

        assert!(store.corrupt(&chunk.hash));
        assert!(matches!(
            store.get(&chunk.hash),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!store.holds_intact(&corpus.chunks()[..1]));
        // The corpus itself is untouched: corruption copies on write.
        assert_eq!(Hash::of(&corpus.bytes(&chunk.hash).unwrap()), chunk.hash);
        store.remove(&chunk.hash).unwrap();
        assert!(matches!(
            store.get(&chunk.hash),
            Err(StoreError::NotFound { .. })
        ));
        assert!(!store.corrupt(&chunk.hash));
        let stats = store.stats();
        assert_eq!(
            (stats.writes, stats.verified_reads, stats.corrupt_reads),
            (1, 1, 1)
        );
        assert_eq!(stats.rejected_puts, 1);
    }

    #[test]
    fn clones_share_chunks_and_wipe_loses_them() {
        let corpus = Arc::new(Corpus::synthesize(2, 4 * 1024 * 1024).unwrap());
        let store = SimStore::new(None);
        let other = store.clone();
        let chunk = &corpus.chunks()[0];
        store
            .put(&chunk.hash, &corpus.bytes(&chunk.hash).unwrap())
            .unwrap();
        assert!(other.contains(&chunk.hash));
        other.wipe();
        assert!(store.is_empty());
    }

    /// The two chunks of an 8 MiB artifact, with their bytes.
    fn two_chunks() -> Vec<(Hash, Arc<[u8]>)> {
        let corpus = Corpus::synthesize(3, 8 * 1024 * 1024).unwrap();
        corpus
            .chunks()
            .iter()
            .map(|c| (c.hash, corpus.bytes(&c.hash).unwrap()))
            .collect()
    }

    #[test]
    fn a_full_disk_refuses_puts_as_enospc_and_free_bytes_says_so_until_space_returns() {
        let chunks = two_chunks();
        let store = SimStore::new(None);
        assert_eq!(store.free_bytes(), Some(STORE_CAPACITY_BYTES));
        let (a, a_bytes) = &chunks[0];
        store.put(a, a_bytes).unwrap();
        let a_logical = logical_bytes(a_bytes.len());
        assert_eq!(store.free_bytes(), Some(STORE_CAPACITY_BYTES - a_logical));

        // One byte short of the next chunk.
        let (b, b_bytes) = &chunks[1];
        store.fill(logical_bytes(b_bytes.len()) - 1);
        assert_eq!(store.free_bytes(), Some(logical_bytes(b_bytes.len()) - 1));
        let err = store.put(b, b_bytes).unwrap_err();
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull),
            "{err:?}"
        );
        assert!(!store.contains(b), "a refused put writes nothing");
        assert!(
            !store.put(a, a_bytes).unwrap(),
            "a held chunk needs no space"
        );
        // Removing a chunk frees its space.
        store.remove(a).unwrap();
        assert!(store.put(b, b_bytes).unwrap());
        store.free();
        assert!(store.put(a, a_bytes).unwrap());
        assert_eq!(store.stats().full_puts, 1);
    }

    #[test]
    fn a_copy_whose_sync_failed_is_removed_unless_the_bug_is_planted() {
        let chunks = two_chunks();
        let (a, bytes) = &chunks[0];
        let one = [ChunkRef {
            hash: *a,
            size_bytes: bytes.len() as u32,
        }];

        let store = SimStore::new(None);
        store.set_sync_failing(true);
        assert!(matches!(store.put(a, bytes), Err(StoreError::Io { .. })));
        assert!(!store.contains(a), "the unsynced copy is gone");
        assert_eq!(store.free_bytes(), Some(STORE_CAPACITY_BYTES));
        store.set_sync_failing(false);
        assert!(store.put(a, bytes).unwrap(), "written again, durably");
        assert!(store.holds_intact(&one));
        assert_eq!(store.power_loss(), 0);
        assert!(
            store.holds_intact(&one),
            "a durable copy survives power loss"
        );

        let planted = SimStore::new(None).with_planted(PlantedStoreBugs {
            keep_unsynced_copy: true,
        });
        planted.set_sync_failing(true);
        assert!(planted.put(a, bytes).is_err());
        planted.set_sync_failing(false);
        assert!(planted.contains(a), "the bug keeps the copy");
        assert!(!planted.holds_intact(&one), "which is not durable");
        assert!(!planted.put(a, bytes).unwrap(), "and counts it");
        assert_eq!(planted.power_loss(), 1);
        assert!(!planted.contains(a), "power loss takes it");
        assert_eq!(planted.stats().unsynced_lost, 1);
    }

    #[test]
    fn a_torn_write_fails_leaves_a_copy_that_reads_corrupt_and_the_next_put_replaces_it() {
        let chunks = two_chunks();
        let store = SimStore::new(None);
        let (first, first_bytes) = &chunks[0];
        store.put(first, first_bytes).unwrap();
        store.arm_tear();
        assert!(
            !store.put(first, first_bytes).unwrap(),
            "a held chunk writes nothing"
        );
        let (torn, bytes) = &chunks[1];
        assert!(matches!(store.put(torn, bytes), Err(StoreError::Io { .. })));
        assert!(store.contains(torn), "the torn copy is on disk");
        assert!(matches!(store.get(torn), Err(StoreError::Corrupt { .. })));
        assert_eq!(store.power_loss(), 0, "and stays there");
        assert!(matches!(store.get(torn), Err(StoreError::Corrupt { .. })));
        // A put that finds the torn copy does not count it: it writes the chunk again.
        assert!(store.put(torn, bytes).unwrap(), "one tear per arming");
        assert_eq!(store.get(torn).unwrap(), bytes.to_vec());
        // So does one that finds a rotten copy.
        store.corrupt(torn);
        assert!(store.put(torn, bytes).unwrap());
        let stats = store.stats();
        assert_eq!((stats.torn_copies, stats.replaced_bad_copies), (1, 2));
        let held: u64 = chunks.iter().map(|(_, b)| logical_bytes(b.len())).sum();
        assert_eq!(store.free_bytes(), Some(STORE_CAPACITY_BYTES - held));
    }
}
