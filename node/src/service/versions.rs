//! The Versions service: register a version by client-streaming upload,
//! download it by server streaming, get and list versions.
//!
//! Both directions stream: an upload is cut into chunks as it arrives and
//! each chunk is written (fsynced) by a blocking writer behind a short queue;
//! a download reads and verifies one chunk at a time behind a short queue.
//! Memory per transfer is bounded by those queues, whatever the artifact's
//! size.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use quiver_api::proto::{self, upload_message::Kind, versions_server::Versions};
use quiver_api::wire::manifest_to_proto;
use quiver_transfer::{
    validate_path, ChunkRef, Chunker, FileEntry, Hash, Manifest, StoreError, FILES_PER_MANIFEST_MAX,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{metadata_from_proto, optional_stage, signature_from_proto, version_to_proto};
use super::{actor_of, consistency, invalid, parse_reference};
use crate::command::{InlineChunk, Op, Response as Applied};
use crate::domain::limits::{INLINE_STATE_BYTES_MAX, INLINE_VERSION_BYTES_MAX};
use crate::domain::{
    self, validate_metadata, validate_name, validate_signature, validate_tags, DomainError,
    VersionStatus,
};
use crate::node::{Consistency, Node};
use crate::replication::{read_chunk, ChunkSink};

/// Chunks of an upload being written (locally and to peers) at once. 16 was
/// measured no faster than 4 on the 3-node distribution benchmark (6.15 s vs
/// 6.06 s for 512 MiB) and costs 4x the memory per upload.
const WRITE_QUEUE_DEPTH: usize = 4;
/// Chunks of a download read ahead of the network.
const DOWNLOAD_QUEUE_DEPTH: usize = 4;

pub struct VersionsService {
    pub node: Arc<Node>,
}

/// A version as the API shows it: with the aliases that point at it.
pub async fn version_view(
    node: &Node,
    v: &domain::Version,
    consistency: Consistency,
) -> Result<proto::ModelVersion, Status> {
    let aliases = node
        .read(consistency, |app, txn| app.aliases_of_model(txn, &v.model))
        .await?;
    let names = aliases
        .into_iter()
        .filter(|a| a.version == v.number)
        .map(|a| a.alias)
        .collect();
    Ok(version_to_proto(v, names))
}

fn bad_upload(message: impl Into<String>) -> Status {
    Status::invalid_argument(format!(
        "upload rejected, nothing registered: {}",
        message.into()
    ))
}

struct OpenFile {
    path: String,
    size_bytes: u64,
    mode: u32,
    received_bytes: u64,
    chunker: Chunker,
    chunks: Vec<ChunkRef>,
}

/// Turns the upload's file and data messages into a manifest, with every
/// chunk durable in W copies (here and on peers) by the time `finish`
/// returns. Chunks are written concurrently, at most `WRITE_QUEUE_DEPTH`
/// in flight, so memory stays bounded.
///
/// A small version (chunks totalling at most `INLINE_VERSION_BYTES_MAX`) is
/// held back instead and handed to `finish`'s caller, to travel inside the
/// registration command (decision 0010); its first chunk past the limit
/// sends everything held so far to the writer, and the upload goes on as
/// any other.
struct Ingest {
    files: Vec<FileEntry>,
    paths: BTreeSet<String>,
    current: Option<OpenFile>,
    to_writer: mpsc::Sender<(Hash, Bytes)>,
    writer: tokio::task::JoinHandle<Result<(), Status>>,
    /// Chunks held back while the version may still travel inline; `None` once it cannot.
    inline: Option<InlineHeld>,
}

#[derive(Default)]
struct InlineHeld {
    chunks: BTreeMap<Hash, Bytes>,
    bytes: usize,
}

impl Ingest {
    /// `inline`: whether a small version may travel inside its command (the cluster's commit
    /// quorum makes at least W copies durable).
    fn new(sink: ChunkSink, inline: bool) -> Self {
        let (to_writer, from_ingest) = mpsc::channel::<(Hash, Bytes)>(WRITE_QUEUE_DEPTH);
        let writer = tokio::spawn(async move {
            let mut writes = ReceiverStream::new(from_ingest)
                .map(|(hash, data)| {
                    let sink = sink.clone();
                    async move { sink.put(hash, data).await }
                })
                .buffer_unordered(WRITE_QUEUE_DEPTH);
            while let Some(result) = writes.next().await {
                result?;
            }
            Ok(())
        });
        Ingest {
            files: Vec::new(),
            paths: BTreeSet::new(),
            current: None,
            to_writer,
            writer,
            inline: inline.then(InlineHeld::default),
        }
    }

    async fn start_file(&mut self, start: proto::FileStart) -> Result<(), Status> {
        self.close_file().await?;
        validate_path(&start.path).map_err(|e| bad_upload(e.to_string()))?;
        if self.paths.len() >= FILES_PER_MANIFEST_MAX {
            return Err(bad_upload(format!(
                "more than {FILES_PER_MANIFEST_MAX} files in one version"
            )));
        }
        if !self.paths.insert(start.path.clone()) {
            return Err(bad_upload(format!("file '{}' is sent twice", start.path)));
        }
        self.current = Some(OpenFile {
            path: start.path,
            size_bytes: start.size_bytes,
            mode: start.mode,
            received_bytes: 0,
            chunker: Chunker::new(),
            chunks: Vec::new(),
        });
        Ok(())
    }

    async fn data(&mut self, data: &[u8]) -> Result<(), Status> {
        let file = self
            .current
            .as_mut()
            .ok_or_else(|| bad_upload("data arrived before any FileStart"))?;
        file.received_bytes += data.len() as u64;
        if file.received_bytes > file.size_bytes {
            return Err(bad_upload(format!(
                "file '{}' sent more than its declared {} bytes",
                file.path, file.size_bytes
            )));
        }
        let mut ready = Vec::new();
        file.chunker
            .push(data, |c, bytes| {
                ready.push((c, Bytes::copy_from_slice(bytes)));
                Ok::<(), ()>(())
            })
            .expect("collecting chunks cannot fail");
        file.chunks.extend(ready.iter().map(|(c, _)| c.clone()));
        self.write(ready).await
    }

    /// Hands completed chunks to the writer (at most `WRITE_QUEUE_DEPTH` wait), or holds them
    /// back while the version is small enough to travel inline.
    async fn write(&mut self, ready: Vec<(ChunkRef, Bytes)>) -> Result<(), Status> {
        for (chunk, bytes) in ready {
            if let Some(held) = &mut self.inline {
                if held.chunks.contains_key(&chunk.hash) {
                    continue;
                }
                if held.bytes + bytes.len() <= INLINE_VERSION_BYTES_MAX {
                    held.bytes += bytes.len();
                    held.chunks.insert(chunk.hash, bytes);
                    continue;
                }
                // Too big to travel inline: what was held goes to the writer first.
                let held = std::mem::take(&mut held.chunks);
                self.inline = None;
                for (hash, bytes) in held {
                    self.send(hash, bytes).await?;
                }
            }
            self.send(chunk.hash, bytes).await?;
        }
        Ok(())
    }

    async fn send(&mut self, hash: Hash, bytes: Bytes) -> Result<(), Status> {
        if self.to_writer.send((hash, bytes)).await.is_err() {
            return Err(self.writer_failure().await);
        }
        Ok(())
    }

    async fn close_file(&mut self) -> Result<(), Status> {
        let Some(mut file) = self.current.take() else {
            return Ok(());
        };
        if file.received_bytes != file.size_bytes {
            return Err(bad_upload(format!(
                "file '{}' ended after {} of its declared {} bytes",
                file.path, file.received_bytes, file.size_bytes
            )));
        }
        let mut ready = Vec::new();
        let chunker = std::mem::replace(&mut file.chunker, Chunker::new());
        chunker
            .finish(|c, bytes| {
                ready.push((c, Bytes::copy_from_slice(bytes)));
                Ok::<(), ()>(())
            })
            .expect("collecting chunks cannot fail");
        file.chunks.extend(ready.iter().map(|(c, _)| c.clone()));
        self.write(ready).await?;
        self.files.push(FileEntry {
            path: file.path,
            size_bytes: file.size_bytes,
            mode: file.mode,
            chunks: file.chunks,
        });
        Ok(())
    }

    async fn writer_failure(&mut self) -> Status {
        match (&mut self.writer).await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => Status::internal("chunk writer stopped early"),
            Err(e) => Status::internal(format!("chunk writer panicked: {e}")),
        }
    }

    /// Closes the last file and waits until every chunk is durable, or returns the chunks of a
    /// small version (all of them) to send inside its command.
    async fn finish(mut self) -> Result<(Manifest, Vec<InlineChunk>), Status> {
        self.close_file().await?;
        drop(self.to_writer);
        match self.writer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Status::internal(format!("chunk writer panicked: {e}"))),
        }
        let mut files = self.files;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let inline = self
            .inline
            .map(|held| {
                held.chunks
                    .into_iter()
                    .map(|(hash, data)| InlineChunk {
                        hash,
                        data: data.to_vec(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok((Manifest { files }, inline))
    }
}

impl VersionsService {
    /// Whether a small version sent in its command is durable in W copies once committed: the
    /// commit quorum this node knows covers the write quorum (decision 0010).
    fn inline_keeps_w(&self, sink: &ChunkSink) -> bool {
        sink.copies_required <= self.node.commit_quorum()
    }
}

#[tonic::async_trait]
impl Versions for VersionsService {
    async fn register_version(
        &self,
        request: Request<Streaming<proto::UploadMessage>>,
    ) -> Result<Response<proto::ModelVersion>, Status> {
        let actor = actor_of(&request)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(proto::UploadMessage {
                kind: Some(Kind::Header(h)),
            }) => h,
            _ => return Err(bad_upload("the stream must begin with an UploadHeader")),
        };
        validate_name("model", &header.model).map_err(invalid)?;
        let signature = signature_from_proto(header.signature.as_ref());
        let metadata = metadata_from_proto(header.metadata.as_ref());
        let tags = header.tags.into_iter().collect();
        validate_signature(&signature).map_err(invalid)?;
        validate_metadata(&metadata).map_err(invalid)?;
        validate_tags("tags", &tags).map_err(invalid)?;
        // Fail before taking any bytes if the model is unknown; apply checks again.
        let inline_bytes = self
            .node
            .read(Consistency::Stale, |app, txn| {
                app.get_model(txn, &header.model)?;
                app.inline_bytes(txn)
            })
            .await?;

        let sink = self.node.chunk_sink().await?;
        let inline = self.inline_keeps_w(&sink) && inline_bytes < INLINE_STATE_BYTES_MAX;
        let mut ingest = Ingest::new(sink.clone(), inline);
        let mut commit = None;
        while let Some(message) = stream.message().await? {
            match message.kind {
                Some(Kind::File(start)) => ingest.start_file(start).await?,
                Some(Kind::Data(data)) => ingest.data(&data).await?,
                Some(Kind::Commit(c)) => {
                    commit = Some(c);
                    break;
                }
                Some(Kind::Header(_)) => return Err(bad_upload("a second UploadHeader")),
                None => return Err(bad_upload("an empty UploadMessage")),
            }
        }
        let commit = commit.ok_or_else(|| {
            Status::aborted("upload ended before its UploadCommit message; nothing was registered")
        })?;
        let (manifest, mut inline_chunks) = ingest.finish().await?;
        if !inline_chunks.is_empty() && !self.inline_keeps_w(&sink) {
            // The membership changed during the upload: the log no longer makes W copies.
            for chunk in std::mem::take(&mut inline_chunks) {
                sink.put(chunk.hash, Bytes::from(chunk.data)).await?;
            }
        }
        manifest.validate().map_err(|e| bad_upload(e.to_string()))?;
        let root = manifest.root().to_hex();
        if !commit.manifest_root.is_empty() && commit.manifest_root != root {
            return Err(Status::data_loss(format!(
                "upload rejected, nothing registered: the client computed manifest root {} but the node \
                 received bytes with root {root}; the data changed in transit, retry the upload",
                commit.manifest_root
            )));
        }
        let op = Op::CreateVersion {
            model: header.model,
            manifest,
            manifest_root: root,
            signature,
            metadata,
            tags,
            status: VersionStatus::Ready,
            inline_chunks,
        };
        match self.node.propose(actor, op).await? {
            Applied::Version(v) => Ok(Response::new(version_to_proto(&v, Vec::new()))),
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    async fn get_version(
        &self,
        request: Request<proto::GetVersionRequest>,
    ) -> Result<Response<proto::ModelVersion>, Status> {
        let r = request.into_inner();
        let reference = parse_reference(&r.reference)?;
        let c = consistency(r.consistency);
        let v = self
            .node
            .read(c, |app, txn| app.resolve(txn, &reference))
            .await?;
        Ok(Response::new(
            version_view(&self.node, &v, Consistency::Stale).await?,
        ))
    }

    async fn list_versions(
        &self,
        request: Request<proto::ListVersionsRequest>,
    ) -> Result<Response<proto::ListVersionsResponse>, Status> {
        let r = request.into_inner();
        let stage = optional_stage(r.stage).map_err(invalid)?;
        let (versions, aliases, next) = self
            .node
            .read(consistency(r.consistency), |app, txn| {
                let (versions, next) = app.list_versions(
                    txn,
                    &r.model,
                    stage,
                    &r.tag,
                    r.page_size as usize,
                    &r.page_token,
                )?;
                Ok((versions, app.aliases_of_model(txn, &r.model)?, next))
            })
            .await?;
        let versions = versions
            .iter()
            .map(|v| {
                let names = aliases
                    .iter()
                    .filter(|a| a.version == v.number)
                    .map(|a| a.alias.clone())
                    .collect();
                version_to_proto(v, names)
            })
            .collect();
        Ok(Response::new(proto::ListVersionsResponse {
            versions,
            next_page_token: next,
        }))
    }

    type DownloadVersionStream = ReceiverStream<Result<proto::DownloadMessage, Status>>;

    async fn download_version(
        &self,
        request: Request<proto::DownloadRequest>,
    ) -> Result<Response<Self::DownloadVersionStream>, Status> {
        let r = request.into_inner();
        let reference = parse_reference(&r.reference)?;
        let (version, manifest, inline) = self
            .node
            .read(Consistency::Linearizable, |app, txn| {
                let v = app.resolve(txn, &reference)?;
                let m = app.manifest(txn, &v.manifest_root)?;
                let inline = app.inline_chunks(txn, &v.manifest_root)?;
                Ok((v, m, inline))
            })
            .await?;
        // A small version's chunks are in the state (decision 0010): at most
        // INLINE_VERSION_BYTES_MAX bytes, served from memory.
        let inline: Arc<BTreeMap<Hash, Vec<u8>>> = Arc::new(
            inline
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.hash, c.data))
                .collect(),
        );
        if version.status != VersionStatus::Ready {
            return Err(invalid(DomainError::NotReady {
                model: version.model.clone(),
                number: version.number,
                status: domain::status_label(version.status).into(),
            }));
        }
        let header = proto::DownloadMessage {
            kind: Some(proto::download_message::Kind::Header(
                proto::DownloadHeader {
                    version: Some(version_view(&self.node, &version, Consistency::Stale).await?),
                    manifest: Some(manifest_to_proto(&manifest)),
                },
            )),
        };
        let (tx, rx) = mpsc::channel(DOWNLOAD_QUEUE_DEPTH);
        tx.send(Ok(header))
            .await
            .map_err(|_| Status::cancelled("client went away"))?;
        let store = self.node.chunks.clone();
        let peers = self.node.peers.clone();
        let read_throughs = self.node.read_throughs.clone();
        let sources = self.node.peer_chunk_addrs().await?;
        let node_id = self.node.config.node_id;
        let subject = format!("{}/{}", version.model, version.number);
        tokio::spawn(async move {
            let chunks: Vec<(usize, usize, String, ChunkRef)> = manifest
                .files
                .iter()
                .enumerate()
                .flat_map(|(fi, file)| {
                    file.chunks
                        .iter()
                        .enumerate()
                        .map(move |(ci, chunk)| (fi, ci, file.path.clone(), chunk.clone()))
                })
                .collect();
            // Read ahead a few chunks, in order: local reads (and, for a chunk
            // this node lacks or holds corrupt, a verified fetch from a peer)
            // overlap with sending.
            let mut reads = futures::stream::iter(chunks)
                .map(|(fi, ci, path, chunk)| {
                    let (store, peers, sources) = (store.clone(), peers.clone(), sources.clone());
                    let (inline, read_throughs) = (inline.clone(), read_throughs.clone());
                    async move {
                        let result = match inline.get(&chunk.hash) {
                            Some(data) => inline_chunk(&chunk, data),
                            None => {
                                read_chunk(&store, &peers, &sources, &chunk, &read_throughs).await
                            }
                        };
                        (fi, ci, path, chunk, result)
                    }
                })
                .buffered(DOWNLOAD_QUEUE_DEPTH);
            while let Some((fi, ci, path, chunk, result)) = reads.next().await {
                let message = match result {
                    Ok(data) => Ok(proto::DownloadMessage {
                        kind: Some(proto::download_message::Kind::Chunk(proto::ChunkData {
                            file_index: fi as u32,
                            chunk_index: ci as u32,
                            data,
                        })),
                    }),
                    Err(e) => {
                        tracing::error!(%subject, file = %path, chunk = %chunk.hash, "download failed: {e}");
                        Err(Status::data_loss(format!(
                            "download of {subject} failed: chunk {} (#{ci} of file '{path}') on node {node_id}: {e}",
                            chunk.hash
                        )))
                    }
                };
                let failed = message.is_err();
                if tx.send(message).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
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
