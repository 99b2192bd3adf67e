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
//! [`StoreError::Corrupt`]. Crash model: there is no unsynced state, so a crashed node keeps
//! every chunk whose `put` returned (the simulator keeps the store across the node's restart);
//! [`SimStore::wipe`] models a lost disk. Faults: [`SimStore::corrupt`] flips a byte of the held
//! copy, so the next `get` fails the real hash check. Bytes that equal the corpus's copy are
//! shared with it (reference-counted), so a hundred replicas holding the model cost the corpus
//! once plus the maps.
//!
//! Everything is ordered (`BTreeMap`); a store is cheap to clone and clones share the chunks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use quiver_transfer::{
    ChunkRef, ChunkSource, FileEntry, Hash, Manifest, ManifestError, StoreError,
    CHUNKS_PER_MANIFEST_MAX, CHUNK_SIZE_BYTES_MAX,
};

/// Real bytes per synthesized chunk (the last chunk of a corpus may be shorter).
pub const CHUNK_BYTES_REAL: usize = 4 * 1024;
/// Logical (artifact) bytes each real byte stands for: a [`CHUNK_BYTES_REAL`] chunk stands for
/// a 4 MiB chunk.
pub const LOGICAL_BYTES_PER_BYTE: u64 = 1024;
/// Most chunks one simulated store holds (a bound on memory; a put beyond it fails).
pub const STORE_CHUNKS_MAX: usize = 1 << 20;
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
}

#[derive(Default)]
struct StoreState {
    chunks: BTreeMap<Hash, Arc<[u8]>>,
    stats: StoreStats,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreState> {
        // Every update is a single insert or removal: a panic cannot leave it half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fault: flips the first byte of the held copy of `hash`, so the next `get` fails its hash
    /// check. False if the chunk is not held.
    pub fn corrupt(&self, hash: &Hash) -> bool {
        let mut state = self.lock();
        let Some(held) = state.chunks.get(hash) else {
            return false;
        };
        let mut bad = held.to_vec();
        if let Some(first) = bad.first_mut() {
            *first ^= 0xff;
        }
        state.chunks.insert(*hash, Arc::from(bad));
        true
    }

    /// Fault: the disk is lost; every chunk is gone.
    pub fn wipe(&self) {
        self.lock().chunks.clear();
    }

    /// Chunks held (verified or not).
    pub fn len(&self) -> usize {
        self.lock().chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every chunk in `chunks` is held and still verifies (a full check, not counted in
    /// the stats).
    pub fn holds_intact(&self, chunks: &[ChunkRef]) -> bool {
        let state = self.lock();
        chunks.iter().all(|c| {
            state
                .chunks
                .get(&c.hash)
                .is_some_and(|data| Hash::of(data) == c.hash)
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
            .cloned()
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
        if state.chunks.contains_key(hash) {
            return Ok(false);
        }
        if state.chunks.len() >= STORE_CHUNKS_MAX {
            return Err(io_error(
                hash,
                format!(
                    "the simulated store holds {STORE_CHUNKS_MAX} chunks, its limit: \
                     simulate a smaller artifact"
                ),
            ));
        }
        state.chunks.insert(*hash, shared);
        state.stats.writes += 1;
        Ok(true)
    }

    fn contains(&self, hash: &Hash) -> bool {
        self.lock().chunks.contains_key(hash)
    }

    fn remove(&self, hash: &Hash) -> Result<(), StoreError> {
        self.lock().chunks.remove(hash);
        Ok(())
    }

    /// The held bytes, unchecked: only the planted bug `skip-chunk-verify` reads this way.
    fn get_unverified(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        self.lock()
            .chunks
            .get(hash)
            .map(|held| held.to_vec())
            .ok_or(StoreError::NotFound { hash: *hash })
    }
}

fn io_error(hash: &Hash, detail: String) -> StoreError {
    StoreError::Io {
        context: format!("store chunk {hash} in the simulated store"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, detail),
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
}
