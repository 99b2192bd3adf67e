//! Test doubles shared by the replication unit tests.

use std::collections::BTreeSet as Set;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};

use quiver_transfer::{
    ChunkPeers, ChunkRef, ChunkSource, FetchError, Hash, MemoryChunkSource, StoreError,
};

/// Peers for the planted-bug tests: every push fails at once; every fetch returns `good`.
#[derive(Clone)]
pub(super) struct FakePeers {
    pub(super) good: Arc<Vec<u8>>,
}

impl ChunkPeers for FakePeers {
    fn fetch_raw(
        &self,
        _peer: SocketAddr,
        _chunk: &ChunkRef,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send {
        let good = self.good.to_vec();
        async move { Ok(good) }
    }

    async fn push(&self, peer: SocketAddr, _hash: &Hash, _data: &[u8]) -> Result<(), FetchError> {
        Err(FetchError::Connect {
            peer,
            detail: "down".into(),
        })
    }
}

/// A memory store whose copies of `rotten` chunks have a flipped first byte.
#[derive(Clone, Default)]
pub(super) struct RottenStore {
    inner: MemoryChunkSource,
    pub(super) rotten: Arc<StdMutex<Set<Hash>>>,
}

impl ChunkSource for RottenStore {
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        if self.rotten.lock().unwrap().contains(hash) {
            return Err(StoreError::Corrupt { hash: *hash });
        }
        self.inner.get(hash)
    }
    fn put(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        self.inner.put(hash, data)
    }
    fn contains(&self, hash: &Hash) -> bool {
        self.inner.contains(hash)
    }
    fn remove(&self, hash: &Hash) -> Result<(), StoreError> {
        self.rotten.lock().unwrap().remove(hash);
        self.inner.remove(hash)
    }
    fn get_unverified(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let mut data = self.inner.get(hash)?;
        if self.rotten.lock().unwrap().contains(hash) {
            data[0] ^= 0xff;
        }
        Ok(data)
    }
}

pub(super) fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
