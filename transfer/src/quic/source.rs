//! Where a chunk server gets bytes and where fetched chunks go.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::{ChunkStore, Collected, Hash, StoreError, CHUNK_SIZE_BYTES_MAX};

/// Chunk storage as the QUIC protocol sees it: the on-disk [`ChunkStore`] or, for benchmarks and
/// tests, a [`MemoryChunkSource`]. Calls block (disk I/O); async code calls them from
/// `spawn_blocking`.
pub trait ChunkSource: Send + Sync + 'static {
    /// The chunk's bytes, verified against `hash`: a copy that fails verification is
    /// [`StoreError::Corrupt`] and its bytes are not returned.
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError>;
    /// Stores the chunk after checking `data` against `hash`; durable before `Ok`. Returns
    /// whether it was written now (false: already present).
    fn put(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError>;
    /// `put` for bytes the caller has just checked against `hash` (it computed the hash, or
    /// verified a peer's bytes with [`crate::verify_chunk`]): a store may skip hashing them
    /// again. The default checks anyway.
    fn put_verified(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        self.put(hash, data)
    }
    /// Whether the chunk is present (not verified).
    fn contains(&self, hash: &Hash) -> bool;
    /// Removes the chunk (a corrupt copy, before a good one replaces it); absent is fine.
    fn remove(&self, hash: &Hash) -> Result<(), StoreError>;
    /// Bytes free (to an unprivileged writer) on the disk the store writes to, so that the
    /// node can keep a reserve for its log and state; `None` when the store cannot tell (the
    /// default).
    fn free_bytes(&self) -> Option<u64> {
        None
    }
    /// Hashes of every stored chunk: what collection looks at. The default lists none (a store
    /// that cannot list is never collected).
    fn list(&self) -> Result<Vec<Hash>, StoreError> {
        Ok(Vec::new())
    }
    /// Starts a new collection epoch (`crate::collect`); the default keeps none.
    fn start_gc_epoch(&self) {}
    /// Removes each of `hashes` that is idle (not put in this or the previous collection
    /// epoch), which the caller checked nothing refers to; returns what was removed. The default
    /// removes nothing.
    fn remove_idle(&self, hashes: &[Hash]) -> Result<Collected, StoreError> {
        let _ = hashes;
        Ok(Collected::default())
    }
    /// The chunk's bytes as stored, NOT verified. Only for the simulator's planted bug
    /// `skip-chunk-verify` (quiver-node's `PlantedBugs`); production code never calls it. The
    /// default verifies anyway (`get`): a store that can hand out rotten bytes overrides it.
    #[doc(hidden)]
    fn get_unverified(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        self.get(hash)
    }
}

impl ChunkSource for ChunkStore {
    fn free_bytes(&self) -> Option<u64> {
        ChunkStore::free_bytes(self).ok()
    }

    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        ChunkStore::get(self, hash)
    }

    fn put(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        ChunkStore::put(self, hash, data)
    }

    fn put_verified(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        ChunkStore::put_verified(self, hash, data)
    }

    fn contains(&self, hash: &Hash) -> bool {
        ChunkStore::contains(self, hash)
    }

    fn remove(&self, hash: &Hash) -> Result<(), StoreError> {
        ChunkStore::remove(self, hash)
    }

    fn list(&self) -> Result<Vec<Hash>, StoreError> {
        ChunkStore::list(self)
    }

    fn start_gc_epoch(&self) {
        ChunkStore::start_gc_epoch(self)
    }

    fn remove_idle(&self, hashes: &[Hash]) -> Result<Collected, StoreError> {
        ChunkStore::remove_idle(self, hashes)
    }
}

impl<S: ChunkSource + ?Sized> ChunkSource for Arc<S> {
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        (**self).get(hash)
    }

    fn put(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        (**self).put(hash, data)
    }

    fn put_verified(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        (**self).put_verified(hash, data)
    }

    fn contains(&self, hash: &Hash) -> bool {
        (**self).contains(hash)
    }

    fn remove(&self, hash: &Hash) -> Result<(), StoreError> {
        (**self).remove(hash)
    }

    fn free_bytes(&self) -> Option<u64> {
        (**self).free_bytes()
    }

    fn list(&self) -> Result<Vec<Hash>, StoreError> {
        (**self).list()
    }

    fn start_gc_epoch(&self) {
        (**self).start_gc_epoch()
    }

    fn remove_idle(&self, hashes: &[Hash]) -> Result<Collected, StoreError> {
        (**self).remove_idle(hashes)
    }

    fn get_unverified(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        (**self).get_unverified(hash)
    }
}

/// Chunks held in memory (a cache, or a benchmark's data). Same contract as the store: `put`
/// verifies, `get` verifies again. Not durable: `put` returns when the bytes are in memory.
/// Unbounded: the caller decides what goes in.
#[derive(Clone, Default)]
pub struct MemoryChunkSource {
    chunks: Arc<RwLock<HashMap<Hash, Arc<[u8]>>>>,
}

impl MemoryChunkSource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `data` under its own hash and returns the hash.
    pub fn insert(&self, data: &[u8]) -> Result<Hash, StoreError> {
        let hash = Hash::of(data);
        self.put(&hash, data)?;
        Ok(hash)
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Hash, Arc<[u8]>>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts).
        self.chunks.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl ChunkSource for MemoryChunkSource {
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let data = self
            .read()
            .get(hash)
            .cloned()
            .ok_or(StoreError::NotFound { hash: *hash })?;
        if Hash::of(&data) != *hash {
            return Err(StoreError::Corrupt { hash: *hash });
        }
        Ok(data.to_vec())
    }

    fn put(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        let actual = Hash::of(data);
        if actual != *hash {
            return Err(StoreError::HashMismatch {
                expected: *hash,
                actual,
            });
        }
        if data.len() > CHUNK_SIZE_BYTES_MAX {
            return Err(StoreError::Io {
                context: format!("store chunk {hash} in memory"),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "chunk is {} bytes, more than the limit of {CHUNK_SIZE_BYTES_MAX}",
                        data.len()
                    ),
                ),
            });
        }
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        if chunks.contains_key(hash) {
            return Ok(false);
        }
        chunks.insert(*hash, Arc::from(data));
        Ok(true)
    }

    fn contains(&self, hash: &Hash) -> bool {
        self.read().contains_key(hash)
    }

    fn remove(&self, hash: &Hash) -> Result<(), StoreError> {
        self.chunks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_source_verifies_on_put_and_reports_missing_chunks() {
        let source = MemoryChunkSource::new();
        let hash = source.insert(b"weights").expect("insert");
        assert!(source.contains(&hash));
        assert_eq!(source.get(&hash).expect("get"), b"weights");
        assert!(!source.put(&hash, b"weights").expect("second put"));
        assert!(matches!(
            source.put(&Hash::of(b"a"), b"b"),
            Err(StoreError::HashMismatch { .. })
        ));
        let absent = Hash::of(b"absent");
        assert!(!source.contains(&absent));
        assert!(
            matches!(source.get(&absent), Err(StoreError::NotFound { hash }) if hash == absent)
        );
        assert_eq!(source.len(), 1);
    }

    #[test]
    fn chunk_store_is_a_chunk_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ChunkStore::open(dir.path()).expect("open");
        let source: &dyn ChunkSource = &store;
        let hash = Hash::of(b"on disk");
        assert!(source.put(&hash, b"on disk").expect("put"));
        assert!(source.contains(&hash));
        assert_eq!(source.get(&hash).expect("get"), b"on disk");
    }
}
