//! Downloading a version: resolve it (linearizably), then read its chunks in order, a few ahead
//! of the consumer, each verified: from the local store, from the state for a small version's
//! inline chunks (decision 0010), or read through from a peer for a chunk this node lacks or
//! holds corrupt. Memory stays bounded by [`DOWNLOAD_QUEUE_DEPTH`] chunks whatever the size.
//! The gRPC service turns the plan and the chunk stream into messages; nothing here knows about
//! protobuf.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use quiver_transfer::{ChunkPeers, ChunkRef, ChunkSource, FileEntry, Hash, Manifest, StoreError};

use crate::domain::{self, DomainError, Version, VersionRef, VersionStatus};
use crate::error::NodeError;
use crate::node::{Consistency, Node};
use crate::replication::read_chunk_with;

/// Chunks of a download read ahead of the network.
pub const DOWNLOAD_QUEUE_DEPTH: usize = 4;

/// What a download will send: the version, its manifest, and where its chunks come from.
pub struct DownloadPlan {
    pub version: Version,
    pub manifest: Manifest,
    /// A small version's chunks, from the state (at most `INLINE_VERSION_BYTES_MAX` bytes).
    inline: Arc<BTreeMap<Hash, Vec<u8>>>,
    /// Peers to read through from, nearest first.
    sources: Vec<SocketAddr>,
}

impl DownloadPlan {
    /// Whether the version is small and its chunks come from the state (decision 0010).
    pub fn is_inline(&self) -> bool {
        !self.inline.is_empty()
    }
}

/// One chunk of a download, in manifest order.
pub struct ChunkRead {
    pub file_index: usize,
    pub chunk_index: usize,
    pub path: String,
    pub chunk: ChunkRef,
    pub data: Result<Vec<u8>, StoreError>,
}

impl<S: ChunkSource + Clone, P: ChunkPeers> Node<S, P> {
    /// Resolves `reference` after a linearizable barrier; refuses a version that is not READY.
    pub async fn plan_download(&self, reference: &VersionRef) -> Result<DownloadPlan, NodeError> {
        let (version, manifest, inline) = self
            .read(Consistency::Linearizable, |app, txn| {
                let v = app.resolve(txn, reference)?;
                let m = app.manifest(txn, &v.manifest_root)?;
                let inline = app.inline_chunks(txn, &v.manifest_root)?;
                Ok((v, m, inline))
            })
            .await?;
        if version.status != VersionStatus::Ready {
            return Err(NodeError::Rejected(DomainError::NotReady {
                model: version.model.clone(),
                number: version.number,
                status: domain::status_label(version.status).into(),
            }));
        }
        let inline = inline
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.hash, c.data))
            .collect();
        Ok(DownloadPlan {
            version,
            manifest,
            inline: Arc::new(inline),
            sources: self.peer_chunk_addrs().await?,
        })
    }

    /// The plan's chunks in manifest order, [`DOWNLOAD_QUEUE_DEPTH`] read ahead; a chunk that
    /// cannot be had intact is an `Err` in its place.
    pub fn download_chunks(&self, plan: &DownloadPlan) -> impl Stream<Item = ChunkRead> + Send {
        self.read_files(
            &plan.manifest.files,
            plan.inline.clone(),
            plan.sources.clone(),
        )
    }

    /// The chunks of one file of the plan's version, read as [`Node::download_chunks`] reads
    /// them; `None` if the version has no file at `path`.
    pub fn download_file(
        &self,
        plan: &DownloadPlan,
        path: &str,
    ) -> Option<impl Stream<Item = ChunkRead> + Send> {
        let file = plan.manifest.files.iter().find(|f| f.path == path)?;
        Some(self.read_files(
            std::slice::from_ref(file),
            plan.inline.clone(),
            plan.sources.clone(),
        ))
    }

    /// The chunks of a file kept outside any version (an MLflow logged model's), each verified,
    /// from the local store or read through from a peer.
    pub async fn read_file(
        &self,
        file: &FileEntry,
    ) -> Result<impl Stream<Item = ChunkRead> + Send, NodeError> {
        let sources = self.peer_chunk_addrs().await?;
        Ok(self.read_files(std::slice::from_ref(file), Arc::default(), sources))
    }

    fn read_files(
        &self,
        files: &[FileEntry],
        inline: Arc<BTreeMap<Hash, Vec<u8>>>,
        sources: Vec<SocketAddr>,
    ) -> impl Stream<Item = ChunkRead> + Send {
        let chunks: Vec<(usize, usize, String, ChunkRef)> = files
            .iter()
            .enumerate()
            .flat_map(|(fi, file)| {
                file.chunks
                    .iter()
                    .enumerate()
                    .map(move |(ci, chunk)| (fi, ci, file.path.clone(), chunk.clone()))
            })
            .collect();
        let (store, peers) = (self.chunks.clone(), self.peers.clone());
        let read_throughs = self.read_throughs.clone();
        let planted = self.core.planted;
        futures::stream::iter(chunks)
            .map(move |(file_index, chunk_index, path, chunk)| {
                let (store, peers, sources) = (store.clone(), peers.clone(), sources.clone());
                let (inline, read_throughs) = (inline.clone(), read_throughs.clone());
                async move {
                    let data = match inline.get(&chunk.hash) {
                        Some(data) => inline_chunk(&chunk, data),
                        None => {
                            read_chunk_with(
                                &store,
                                &peers,
                                &sources,
                                &chunk,
                                &read_throughs,
                                planted,
                            )
                            .await
                        }
                    };
                    ChunkRead {
                        file_index,
                        chunk_index,
                        path,
                        chunk,
                        data,
                    }
                }
            })
            .buffered(DOWNLOAD_QUEUE_DEPTH)
    }
}

/// A chunk kept in the state, checked like a chunk read from a store: bytes that no longer hash
/// to the chunk are never served.
fn inline_chunk(chunk: &ChunkRef, data: &[u8]) -> Result<Vec<u8>, StoreError> {
    if Hash::of(data) != chunk.hash {
        return Err(StoreError::Corrupt { hash: chunk.hash });
    }
    Ok(data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inline_chunk_that_no_longer_matches_its_hash_is_not_served() {
        let chunk = ChunkRef {
            hash: Hash::of(b"config"),
            size_bytes: 6,
        };
        assert_eq!(inline_chunk(&chunk, b"config").unwrap(), b"config");
        assert!(matches!(
            inline_chunk(&chunk, b"cOnfig"),
            Err(StoreError::Corrupt { hash }) if hash == chunk.hash
        ));
    }
}
