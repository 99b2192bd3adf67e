//! Registering a version: an upload's files arrive in pieces, are cut into chunks as they come,
//! and every chunk is made durable in W copies (here and on peers) by a writer behind a short
//! queue, so memory stays bounded whatever the artifact's size; then the manifest is checked and
//! `CreateVersion` proposed. The gRPC service feeds an [`Upload`] from its stream; nothing here
//! knows about protobuf.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use quiver_transfer::{
    validate_path, ChunkPeers, ChunkRef, ChunkSource, Chunker, FileEntry, Hash, Manifest,
    FILES_PER_MANIFEST_MAX,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::command::{InlineChunk, Op, Response};
use crate::domain::limits::{INLINE_STATE_BYTES_MAX, INLINE_VERSION_BYTES_MAX};
use crate::domain::{
    validate_metadata, validate_name, validate_signature, validate_tags, Actor, Signature, Version,
    VersionMetadata, VersionStatus,
};
use crate::error::NodeError;
use crate::gc::PinSet;
use crate::node::{Consistency, Node};
use crate::replication::ChunkSink;

/// Chunks of an upload being written (locally and to peers) at once. 16 was
/// measured no faster than 4 on the 3-node distribution benchmark (6.15 s vs
/// 6.06 s for 512 MiB) and costs 4x the memory per upload.
pub const WRITE_QUEUE_DEPTH: usize = 4;

/// What a registration declares before its files.
#[derive(Clone, Debug)]
pub struct UploadHeader {
    pub model: String,
    pub signature: Signature,
    pub metadata: VersionMetadata,
    pub tags: BTreeMap<String, String>,
}

/// One file of an upload, before its bytes.
#[derive(Clone, Debug)]
pub struct FileStart {
    pub path: String,
    pub size_bytes: u64,
    pub mode: u32,
}

/// Writes every chunk of `chunks` through `sink`, [`WRITE_QUEUE_DEPTH`] at a time; the first
/// failure ends it. The upload's writer, and the simulator's uploads of pre-chunked artifacts.
pub async fn write_chunks<S: ChunkSource + Clone, P: ChunkPeers>(
    sink: ChunkSink<S, P>,
    chunks: impl Stream<Item = (Hash, Bytes)>,
) -> Result<(), NodeError> {
    let writes = chunks
        .map(|(hash, data)| {
            let sink = sink.clone();
            async move { sink.put(hash, data).await }
        })
        .buffer_unordered(WRITE_QUEUE_DEPTH);
    let mut writes = std::pin::pin!(writes);
    while let Some(result) = writes.next().await {
        result?;
    }
    Ok(())
}

/// A registration in progress on a node (see the module docs): feed it files and their bytes,
/// then [`Upload::commit`].
pub struct Upload<S: ChunkSource + Clone, P: ChunkPeers> {
    header: UploadHeader,
    sink: ChunkSink<S, P>,
    ingest: Ingest,
    reserve: DiskReserve,
}

/// Bytes of the data disk an upload must leave free, so that the Raft log and the state can
/// still commit (`CoreConfig::disk_reserve_bytes`; 0 turns the check off).
#[derive(Clone, Copy, Debug)]
struct DiskReserve {
    node_id: u64,
    bytes: u64,
}

impl DiskReserve {
    /// Refuses, naming the figures and the fix, while `store`'s disk has less than the reserve
    /// free.
    fn check<S: ChunkSource>(self, store: &S) -> Result<(), NodeError> {
        if self.bytes == 0 {
            return Ok(());
        }
        match store.free_bytes() {
            Some(free) if free < self.bytes => Err(NodeError::DiskFull(format!(
                "node {}'s data disk has {} free, under its reserve of {} \
                 (quiver-node serve --disk-reserve-bytes): uploads are refused until space is \
                 freed; reads and metadata changes go on",
                self.node_id,
                mib(free),
                mib(self.bytes)
            ))),
            _ => Ok(()),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

impl<S: ChunkSource + Clone, P: ChunkPeers> Node<S, P> {
    /// Starts registering a version of `header.model`: checks the header, and that the model
    /// exists, before taking any bytes (apply checks again).
    pub async fn begin_upload(&self, header: UploadHeader) -> Result<Upload<S, P>, NodeError> {
        validate_name("model", &header.model)?;
        validate_signature(&header.signature)?;
        validate_metadata(&header.metadata)?;
        validate_tags("tags", &header.tags)?;
        self.check_disk_reserve()?;
        let reserve = self.disk_reserve();
        let inline_bytes = self
            .read(Consistency::Stale, |app, txn| {
                app.get_model(txn, &header.model)?;
                app.inline_bytes(txn)
            })
            .await?;
        let sink = self.chunk_sink().await?;
        let inline = self.inline_keeps_w(&sink) && inline_bytes < INLINE_STATE_BYTES_MAX;
        let pins = PinSet::new(self.upload_pins.clone());
        let ingest = Ingest::new(sink.clone(), inline, pins);
        Ok(Upload {
            header,
            sink,
            ingest,
            reserve,
        })
    }

    /// Refuses with [`NodeError::DiskFull`] while this node's chunk disk has less free space
    /// than its reserve (`CoreConfig::disk_reserve_bytes`): what an upload checks before it
    /// takes any bytes, and again as they come.
    pub fn check_disk_reserve(&self) -> Result<(), NodeError> {
        self.disk_reserve().check(&self.chunks)
    }

    fn disk_reserve(&self) -> DiskReserve {
        DiskReserve {
            node_id: self.node_id(),
            bytes: self.core.disk_reserve_bytes,
        }
    }

    /// Whether a small version sent in its command is durable in W copies once committed: the
    /// commit quorum this node knows covers the write quorum (decision 0010).
    fn inline_keeps_w(&self, sink: &ChunkSink<S, P>) -> bool {
        sink.copies_required <= self.commit_quorum()
    }
}

impl<S: ChunkSource + Clone, P: ChunkPeers> Upload<S, P> {
    pub async fn start_file(&mut self, start: FileStart) -> Result<(), NodeError> {
        self.ingest.start_file(start).await
    }

    pub async fn data(&mut self, data: &[u8]) -> Result<(), NodeError> {
        self.reserve.check(&self.sink.store)?;
        self.ingest.data(data).await
    }

    /// Waits until every chunk is durable, checks the manifest (and, if the client sent one,
    /// that its root matches what arrived) and proposes `CreateVersion` through `node` as
    /// `actor`. Nothing is registered on any error.
    pub async fn commit(
        self,
        node: &Node<S, P>,
        actor: Actor,
        client_root: Option<&str>,
    ) -> Result<Version, NodeError> {
        let Upload {
            header,
            sink,
            ingest,
            reserve: _,
        } = self;
        // The pins keep what this upload wrote from the running collector until it returns.
        let (manifest, mut inline_chunks, mut pins) = ingest.finish().await?;
        if !inline_chunks.is_empty() && !node.inline_keeps_w(&sink) {
            // The membership changed during the upload: the log no longer makes W copies.
            for chunk in std::mem::take(&mut inline_chunks) {
                pins.pin(chunk.hash);
                sink.put(chunk.hash, Bytes::from(chunk.data)).await?;
            }
        }
        manifest.validate().map_err(|e| bad_upload(e.to_string()))?;
        let root = manifest.root().to_hex();
        if let Some(bad) = client_root.filter(|r| !r.is_empty() && !is_root_hex(r)) {
            let shown: String = bad.chars().take(80).collect();
            return Err(bad_upload(format!(
                "manifest_root {shown:?} is not a manifest root (64 lowercase hex digits, the \
                 blake3 root the client computed); send the root, or leave it empty"
            )));
        }
        if let Some(client_root) = client_root.filter(|r| !r.is_empty() && *r != root) {
            return Err(NodeError::DataLoss(format!(
                "upload rejected, nothing registered: the client computed manifest root \
                 {client_root} but the node received bytes with root {root}; the data changed in \
                 transit, retry the upload"
            )));
        }
        let op = Op::CreateVersion {
            model: header.model,
            manifest,
            manifest_root: root,
            signature: header.signature,
            metadata: header.metadata,
            tags: header.tags,
            status: VersionStatus::Ready,
            inline_chunks,
        };
        match node.propose(actor, op).await? {
            Response::Version(v) => Ok(*v),
            other => Err(NodeError::Storage(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }
}

/// An upload refused for what it sent; nothing is registered.
/// Whether `text` has the form of a manifest root: 64 lowercase hex digits.
fn is_root_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn bad_upload(message: impl Into<String>) -> NodeError {
    NodeError::Invalid(format!(
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
    writer: tokio::task::JoinHandle<Result<(), NodeError>>,
    /// Chunks held back while the version may still travel inline; `None` once it cannot.
    inline: Option<InlineHeld>,
    /// What was sent to the writer, kept from the running collector (`crate::gc`).
    pins: PinSet,
}

#[derive(Default)]
struct InlineHeld {
    chunks: BTreeMap<Hash, Bytes>,
    bytes: usize,
}

impl Ingest {
    /// `inline`: whether a small version may travel inside its command (the cluster's commit
    /// quorum makes at least W copies durable).
    fn new<S: ChunkSource + Clone, P: ChunkPeers>(
        sink: ChunkSink<S, P>,
        inline: bool,
        pins: PinSet,
    ) -> Self {
        let (to_writer, from_ingest) = mpsc::channel::<(Hash, Bytes)>(WRITE_QUEUE_DEPTH);
        let writer = tokio::spawn(write_chunks(sink, ReceiverStream::new(from_ingest)));
        Ingest {
            files: Vec::new(),
            paths: BTreeSet::new(),
            current: None,
            to_writer,
            writer,
            inline: inline.then(InlineHeld::default),
            pins,
        }
    }

    async fn start_file(&mut self, start: FileStart) -> Result<(), NodeError> {
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

    async fn data(&mut self, data: &[u8]) -> Result<(), NodeError> {
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
    async fn write(&mut self, ready: Vec<(ChunkRef, Bytes)>) -> Result<(), NodeError> {
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

    async fn send(&mut self, hash: Hash, bytes: Bytes) -> Result<(), NodeError> {
        self.pins.pin(hash);
        if self.to_writer.send((hash, bytes)).await.is_err() {
            return Err(self.writer_failure().await);
        }
        Ok(())
    }

    async fn close_file(&mut self) -> Result<(), NodeError> {
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

    async fn writer_failure(&mut self) -> NodeError {
        match (&mut self.writer).await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => NodeError::Storage("chunk writer stopped early".into()),
            Err(e) => NodeError::Storage(format!("chunk writer panicked: {e}")),
        }
    }

    /// Closes the last file and waits until every chunk is durable, or returns the chunks of a
    /// small version (all of them) to send inside its command.
    async fn finish(mut self) -> Result<(Manifest, Vec<InlineChunk>, PinSet), NodeError> {
        self.close_file().await?;
        drop(self.to_writer);
        match self.writer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(NodeError::Storage(format!("chunk writer panicked: {e}"))),
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
        Ok((Manifest { files }, inline, self.pins))
    }
}
