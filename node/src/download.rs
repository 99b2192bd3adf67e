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
    /// Chunks (in manifest order) the client already holds: a resumed download skips them.
    skip: usize,
}

/// Why a resumed download cannot go on from where the client stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResumeRefused {
    #[error(
        "the version's files changed since the download began (its manifest root is now {now}, \
         the resumed download's is {was:?}): download it again from the start"
    )]
    RootChanged { now: String, was: String },
    #[error(
        "resume_from_chunk {asked} is past the version's last chunk (it has {chunks}): \
         resume from at most {chunks}, or download it again from the start"
    )]
    PastEnd { asked: u64, chunks: usize },
}

impl DownloadPlan {
    /// Whether the version is small and its chunks come from the state (decision 0010).
    pub fn is_inline(&self) -> bool {
        !self.inline.is_empty()
    }

    /// Chunks in the whole version, across its files.
    pub fn chunk_count(&self) -> usize {
        self.manifest.files.iter().map(|f| f.chunks.len()).sum()
    }

    /// Makes the download start at chunk `from` (manifest order, from 0), the client holding
    /// the ones before it from a download of the version whose manifest root is `root`. Chunk 0
    /// is always allowed and changes nothing.
    pub fn resume_from(&mut self, from: u64, root: &str) -> Result<(), ResumeRefused> {
        if from == 0 {
            self.skip = 0;
            return Ok(());
        }
        let now = self.version.manifest_root.clone();
        if root != now {
            return Err(ResumeRefused::RootChanged {
                now,
                was: root.chars().take(80).collect(),
            });
        }
        let chunks = self.chunk_count();
        match usize::try_from(from) {
            Ok(skip) if skip <= chunks => {
                self.skip = skip;
                Ok(())
            }
            _ => Err(ResumeRefused::PastEnd {
                asked: from,
                chunks,
            }),
        }
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
            skip: 0,
        })
    }

    /// The plan's chunks in manifest order (from the one it resumes from), [`DOWNLOAD_QUEUE_DEPTH`]
    /// read ahead; a chunk that cannot be had intact is an `Err` in its place.
    pub fn download_chunks(&self, plan: &DownloadPlan) -> impl Stream<Item = ChunkRead> + Send {
        self.read_files(
            &plan.manifest.files,
            plan.skip,
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
            0,
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
        Ok(self.read_files(std::slice::from_ref(file), 0, Arc::default(), sources))
    }

    /// The chunks of `files` in order, after the first `skip`.
    fn read_files(
        &self,
        files: &[FileEntry],
        skip: usize,
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
            .skip(skip)
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
    use quiver_transfer::FileEntry;

    fn plan(chunks_per_file: &[usize]) -> DownloadPlan {
        let files = chunks_per_file
            .iter()
            .enumerate()
            .map(|(i, &n)| FileEntry {
                path: format!("f{i}"),
                size_bytes: n as u64,
                mode: 0,
                chunks: (0..n)
                    .map(|c| ChunkRef {
                        hash: Hash::of(format!("{i}/{c}").as_bytes()),
                        size_bytes: 1,
                    })
                    .collect(),
            })
            .collect();
        let manifest = Manifest { files };
        let version = Version {
            model: "m".into(),
            number: 1,
            manifest_root: manifest.root().to_hex(),
            files: Vec::new(),
            total_size_bytes: 0,
            signature: Default::default(),
            metadata: Default::default(),
            created_by: crate::domain::Actor {
                name: "ci".into(),
                authenticated: true,
            },
            created_at_ms: 0,
            tags: Default::default(),
            stage: crate::domain::Stage::Experimental,
            status: VersionStatus::Ready,
            stage_history: Vec::new(),
        };
        DownloadPlan {
            version,
            manifest,
            inline: Arc::default(),
            sources: Vec::new(),
            skip: 0,
        }
    }

    #[test]
    fn a_resumed_download_skips_the_chunks_the_client_holds_of_the_same_root_only() {
        let mut p = plan(&[2, 0, 3]);
        let root = p.version.manifest_root.clone();
        assert_eq!(p.chunk_count(), 5);
        p.resume_from(0, "").unwrap();
        assert_eq!(p.skip, 0);
        p.resume_from(3, &root).unwrap();
        assert_eq!(p.skip, 3);
        p.resume_from(5, &root).unwrap();
        assert_eq!(p.skip, 5, "every chunk held: only the header is sent");
        for (from, was) in [
            (1, String::new()),
            (1, "x".repeat(100_000)),
            (2, "\0../".into()),
        ] {
            let refused = p.resume_from(from, &was).unwrap_err();
            assert!(
                matches!(refused, ResumeRefused::RootChanged { .. }),
                "{refused}"
            );
            assert!(
                refused.to_string().len() < 400,
                "the echoed root is cut short"
            );
        }
        for from in [6, u64::MAX] {
            assert_eq!(
                p.resume_from(from, &root),
                Err(ResumeRefused::PastEnd {
                    asked: from,
                    chunks: 5
                })
            );
        }
        assert_eq!(p.skip, 5, "a refused resume changes nothing");
    }

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
