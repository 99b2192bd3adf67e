//! Download: receives a version's manifest and chunks, and trusts nothing it
//! has not checked. The manifest must hash to the version's root; every chunk
//! must arrive in manifest order and hash to the manifest's entry before it
//! is written. Files are written beside their final names and renamed into
//! place only once the whole version has checked out, so an interrupted or
//! corrupt download leaves no file that looks complete.
//!
//! An interrupted download resumes: the output directory keeps the manifest
//! being downloaded ([`RESUME_FILE`]) beside the partial files until the
//! version is in place. The next download into that directory hashes what the
//! partial files hold against that manifest, keeps the chunks that check out
//! (cutting a file back to its last whole verified chunk) and asks the node
//! for the rest only, naming the manifest root it holds; a version whose root
//! has changed since (an alias that moved) starts again from the first chunk.
//!
//! Nothing is written through a symbolic link below the output directory
//! (the output directory itself may be one: that is the user's choice). A
//! link there, to a directory or at a file's final or partial name, could
//! put a version's bytes outside the directory, so the download refuses it
//! with [`ClientError::SymlinkInOutput`]; directories are created one
//! component at a time and partial files with `create_new`, which does not
//! follow a link at the name it creates.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quiver_transfer::{Hash, Manifest};
use tokio::sync::mpsc;

use super::{join_error, normalize_reference, Client, ClientError};
use crate::proto::download_message::Kind;
use crate::proto::{self, ChunkData, DownloadHeader, DownloadRequest, ModelVersion};

/// Suffix of a file still being downloaded, next to its final name.
pub const PARTIAL_SUFFIX: &str = ".quiver-partial";

/// A download's own record in its output directory, while it is in progress: the manifest
/// (protobuf) of the version being downloaded, so that an interrupted download resumes.
pub const RESUME_FILE: &str = ".quiver-download.quiver-partial";

/// Chunks received ahead of the disk writer. Bounds download memory to this
/// many chunks (each at most `CHUNK_SIZE_BYTES_MAX`).
pub const DOWNLOAD_QUEUE_DEPTH: usize = 4;

/// What a finished download produced.
#[derive(Clone, Debug)]
pub struct DownloadSummary {
    pub version: ModelVersion,
    pub file_count: usize,
    pub total_size_bytes: u64,
}

impl Client {
    /// Downloads `reference` into `out_dir`, verifying every chunk.
    /// `progress` is called with (bytes received, total bytes).
    pub async fn download_version(
        &self,
        reference: &str,
        out_dir: &Path,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<DownloadSummary, ClientError> {
        let held = tokio::task::spawn_blocking({
            let out_dir = out_dir.to_path_buf();
            move || Held::scan(&out_dir)
        })
        .await
        .map_err(join_error)??;
        let (version, manifest, mut stream, held) =
            self.open_resuming(reference, out_dir, held).await?;
        let summary = summary(version, &manifest);
        let total_bytes = summary.total_size_bytes;
        let held_bytes = held.as_ref().map_or(0, |held| held.bytes);
        progress(held_bytes.min(total_bytes), total_bytes);

        let manifest = Arc::new(manifest);
        let (sender, receiver) = mpsc::channel(DOWNLOAD_QUEUE_DEPTH);
        let writer = tokio::task::spawn_blocking({
            let manifest = Arc::clone(&manifest);
            let out_dir = out_dir.to_path_buf();
            move || write_version(&manifest, &out_dir, receiver, held)
        });

        let mut received_bytes: u64 = held_bytes;
        let streamed: Result<(), ClientError> = async {
            while let Some(message) = stream.message().await? {
                let chunk = expect_chunk(message)?;
                let chunk_bytes = chunk.data.len() as u64;
                if sender.send(WriteOp::Chunk(chunk)).await.is_err() {
                    // The writer stopped on an error; its result says which.
                    return Ok(());
                }
                received_bytes += chunk_bytes;
                progress(received_bytes.min(total_bytes), total_bytes);
            }
            // The writer may already have failed; then its result says why.
            let _ = sender.send(WriteOp::Finish).await;
            Ok(())
        }
        .await;
        drop(sender);
        let written = writer.await.map_err(join_error)?;
        match (written, streamed) {
            (Err(error), _) | (Ok(false), Err(error)) => Err(error),
            (Ok(true), _) => Ok(summary),
            (Ok(false), Ok(())) => Err(ClientError::Verify(format!(
                "download of '{reference}' stopped before it completed"
            ))),
        }
    }

    /// Downloads and verifies `reference` but hands the bytes to `sink`
    /// (file index, chunk bytes) instead of the disk: the benchmark measures
    /// the transfer without the writes.
    pub async fn download_to_sink(
        &self,
        reference: &str,
        mut sink: impl FnMut(u32, &[u8]),
    ) -> Result<DownloadSummary, ClientError> {
        let (version, manifest, mut stream) = self.open_download(reference, 0, "").await?;
        let mut cursor = ChunkCursor::new(&manifest);
        while let Some(message) = stream.message().await? {
            let chunk = expect_chunk(message)?;
            cursor.accept(&manifest, &chunk)?;
            sink(chunk.file_index, &chunk.data);
        }
        cursor.check_complete(&manifest)?;
        Ok(summary(version, &manifest))
    }

    /// Starts a download, from where `held` (an interrupted download's verified chunks) stops
    /// if the version's manifest is still the one `held` was checked against; otherwise
    /// from the first chunk, discarding what `held` kept and recording the new manifest.
    async fn open_resuming(
        &self,
        reference: &str,
        out_dir: &Path,
        held: Option<Held>,
    ) -> Result<
        (
            ModelVersion,
            Manifest,
            tonic::codec::Streaming<proto::DownloadMessage>,
            Option<Held>,
        ),
        ClientError,
    > {
        if let Some(held) = held {
            let root = held.manifest.root();
            match self
                .open_download(reference, held.chunks, &root.to_hex())
                .await
            {
                Ok((version, manifest, stream)) if manifest.root() == root => {
                    return Ok((version, manifest, stream, Some(held)));
                }
                // The version's files changed since: start again.
                Ok(_) => {}
                Err(ClientError::Status {
                    code: tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument,
                    ..
                }) => {}
                Err(error) => return Err(error),
            }
            let out_dir = out_dir.to_path_buf();
            tokio::task::spawn_blocking(move || held.discard(&out_dir))
                .await
                .map_err(join_error)?;
        }
        let (version, manifest, stream) = self.open_download(reference, 0, "").await?;
        Ok((version, manifest, stream, None))
    }

    /// Starts a download (from chunk `resume_from_chunk`, of the version whose manifest root
    /// is `resume_manifest_root`) and checks its header.
    async fn open_download(
        &self,
        reference: &str,
        resume_from_chunk: u64,
        resume_manifest_root: &str,
    ) -> Result<
        (
            ModelVersion,
            Manifest,
            tonic::codec::Streaming<proto::DownloadMessage>,
        ),
        ClientError,
    > {
        let reference = normalize_reference(reference)?;
        let request = self.request(DownloadRequest {
            reference: reference.clone(),
            resume_from_chunk,
            resume_manifest_root: resume_manifest_root.to_string(),
        })?;
        let mut stream = self
            .versions()
            .download_version(request)
            .await?
            .into_inner();
        match stream.message().await?.and_then(|message| message.kind) {
            Some(Kind::Header(header)) => {
                let (version, manifest) = check_header(&reference, header)?;
                Ok((version, manifest, stream))
            }
            _ => Err(ClientError::Verify(format!(
                "the node's download of '{reference}' did not start with a header"
            ))),
        }
    }
}

fn summary(version: ModelVersion, manifest: &Manifest) -> DownloadSummary {
    DownloadSummary {
        version,
        file_count: manifest.files.len(),
        total_size_bytes: manifest.total_size_bytes(),
    }
}

fn expect_chunk(message: proto::DownloadMessage) -> Result<ChunkData, ClientError> {
    match message.kind {
        Some(Kind::Chunk(chunk)) => Ok(chunk),
        _ => Err(ClientError::Verify(
            "the node sent a second header or an empty message inside a download".into(),
        )),
    }
}

/// Converts the header's manifest and checks it hashes to the version's root.
fn check_header(
    reference: &str,
    header: DownloadHeader,
) -> Result<(ModelVersion, Manifest), ClientError> {
    let broken = |what: &str| {
        ClientError::Verify(format!(
            "the node's download header for '{reference}' {what}"
        ))
    };
    let version = header.version.ok_or_else(|| broken("has no version"))?;
    let wire = header.manifest.ok_or_else(|| broken("has no manifest"))?;
    let manifest = crate::wire::manifest_from_proto(wire).map_err(|e| broken(&e))?;
    let expected: Hash = version.manifest_root.parse().map_err(|_| {
        broken(&format!(
            "has a malformed manifest root {:?}",
            version.manifest_root
        ))
    })?;
    let actual = manifest.root();
    if actual != expected {
        return Err(ClientError::Verify(format!(
            "manifest of '{reference}' failed verification: it hashes to {actual}, \
             the version's root is {expected}"
        )));
    }
    // Checked after the root so paths are those the registrant chose; this
    // also keeps every path inside the output directory.
    manifest
        .validate()
        .map_err(|error| broken(&format!("has an invalid manifest: {error}")))?;
    Ok((version, manifest))
}

/// Where the next chunk must come from. Pure: shared by the disk writer and
/// the benchmark's sink so both enforce the same rules.
#[derive(Debug)]
struct ChunkCursor {
    file: usize,
    chunk: usize,
}

impl ChunkCursor {
    fn new(manifest: &Manifest) -> Self {
        Self::at(manifest, 0)
    }

    /// The cursor after the first `held` chunks (manifest order, across files).
    fn at(manifest: &Manifest, held: u64) -> Self {
        let mut cursor = ChunkCursor { file: 0, chunk: 0 };
        let mut left = held;
        cursor.skip_finished(manifest);
        while left > 0 && cursor.file < manifest.files.len() {
            let in_file = (manifest.files[cursor.file].chunks.len() - cursor.chunk) as u64;
            let step = left.min(in_file);
            cursor.chunk += step as usize;
            left -= step;
            cursor.skip_finished(manifest);
        }
        cursor
    }

    /// Moves past files with no chunks left (empty files have none).
    fn skip_finished(&mut self, manifest: &Manifest) {
        while self.file < manifest.files.len()
            && self.chunk >= manifest.files[self.file].chunks.len()
        {
            self.file += 1;
            self.chunk = 0;
        }
    }

    /// Checks that `chunk` is the next one expected and that its bytes hash
    /// to the manifest's entry.
    fn accept(&mut self, manifest: &Manifest, chunk: &ChunkData) -> Result<(), ClientError> {
        let Some(file) = manifest.files.get(self.file) else {
            return Err(ClientError::Verify(format!(
                "the node sent chunk {} of file index {} after the last chunk",
                chunk.chunk_index, chunk.file_index
            )));
        };
        if (chunk.file_index as usize, chunk.chunk_index as usize) != (self.file, self.chunk) {
            return Err(ClientError::Verify(format!(
                "download out of order: expected chunk {} of file '{}', got chunk {} of file \
                 index {}",
                self.chunk, file.path, chunk.chunk_index, chunk.file_index
            )));
        }
        let expected = &file.chunks[self.chunk];
        if chunk.data.len() != expected.size_bytes as usize
            || Hash::of(&chunk.data) != expected.hash
        {
            return Err(ClientError::Verify(format!(
                "chunk {} of file '{}' failed verification",
                expected.hash, file.path
            )));
        }
        self.chunk += 1;
        self.skip_finished(manifest);
        Ok(())
    }

    fn check_complete(&self, manifest: &Manifest) -> Result<(), ClientError> {
        match manifest.files.get(self.file) {
            None => Ok(()),
            Some(file) => Err(ClientError::Verify(format!(
                "download ended early, at chunk {} of {} of file '{}'",
                self.chunk,
                file.chunks.len(),
                file.path
            ))),
        }
    }
}

enum WriteOp {
    Chunk(ChunkData),
    /// The stream ended normally; anything missing now is an error.
    Finish,
}

/// Runs on a blocking thread. Returns `Ok(true)` when every file is in
/// place, `Ok(false)` when the stream was abandoned (the caller has the
/// reason). Unless it completed, the partial files written so far (every
/// byte of them verified) stay, with the manifest in [`RESUME_FILE`], for
/// the next download into `out_dir` to resume from; `held` is what an
/// earlier one left, which this one goes on from.
fn write_version(
    manifest: &Manifest,
    out_dir: &Path,
    mut receiver: mpsc::Receiver<WriteOp>,
    held: Option<Held>,
) -> Result<bool, ClientError> {
    let mut writer = PartialFiles::new(manifest, out_dir);
    let held_chunks = held.as_ref().map_or(0, |held| held.chunks);
    fs::create_dir_all(out_dir).map_err(|error| {
        ClientError::io(format!("create directory '{}'", out_dir.display()), error)
    })?;
    match held {
        Some(held) => writer.resume(&held)?,
        None => record_manifest(out_dir, manifest)?,
    }
    let mut cursor = ChunkCursor::at(manifest, held_chunks);
    while let Some(op) = receiver.blocking_recv() {
        match op {
            WriteOp::Chunk(chunk) => {
                cursor.accept(manifest, &chunk)?;
                writer.write(chunk.file_index as usize, &chunk.data)?;
            }
            WriteOp::Finish => {
                cursor.check_complete(manifest)?;
                writer.open_through(manifest.files.len())?;
                writer.commit()?;
                remove_regular_file(&out_dir.join(RESUME_FILE))?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Writes `manifest` to `out_dir`'s [`RESUME_FILE`] (durably), replacing an
/// earlier download's; a link at that name is refused, never followed.
fn record_manifest(out_dir: &Path, manifest: &Manifest) -> Result<(), ClientError> {
    let path = out_dir.join(RESUME_FILE);
    remove_regular_file(&path)?;
    let bytes = prost::Message::encode_to_vec(&crate::wire::manifest_to_proto(manifest));
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|error| ClientError::io(format!("create '{}'", path.display()), error))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| ClientError::io(format!("write '{}'", path.display()), error))?;
    sync_directory(out_dir)
}

/// Removes the regular file at `path` if there is one; a link there is
/// refused, anything else left for the next step to fail on clearly.
fn remove_regular_file(path: &Path) -> Result<(), ClientError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(symlink_in_output(path)),
        Ok(meta) if meta.is_file() => fs::remove_file(path)
            .map_err(|error| ClientError::io(format!("remove '{}'", path.display()), error)),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(ClientError::io(
            format!("inspect '{}'", path.display()),
            error,
        )),
    }
}

/// What an interrupted download left in its output directory that checks
/// out against the manifest it recorded.
#[derive(Debug)]
struct Held {
    manifest: Manifest,
    /// Leading files whose partial files are whole and verified.
    whole_files: usize,
    /// The verified length of the next file's partial file, if it has one.
    next_file_bytes: Option<u64>,
    /// Chunks held, in manifest order across files.
    chunks: u64,
    /// Bytes held.
    bytes: u64,
}

impl Held {
    /// Reads `out_dir`'s [`RESUME_FILE`] and hashes the partial files
    /// against it, cutting a partial file back to its last verified chunk.
    /// None when there is no record, or it is unreadable, invalid or leads
    /// through a symbolic link (the download then starts afresh and replaces
    /// it).
    fn scan(out_dir: &Path) -> Result<Option<Held>, ClientError> {
        let path = out_dir.join(RESUME_FILE);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            _ => return Ok(None),
        }
        let Ok(bytes) = fs::read(&path) else {
            return Ok(None);
        };
        let Ok(wire) = <proto::Manifest as prost::Message>::decode(bytes.as_slice()) else {
            return Ok(None);
        };
        let Ok(manifest) = crate::wire::manifest_from_proto(wire) else {
            return Ok(None);
        };
        if manifest.validate().is_err() {
            return Ok(None);
        }
        let mut held = Held {
            manifest,
            whole_files: 0,
            next_file_bytes: None,
            chunks: 0,
            bytes: 0,
        };
        let files = PartialFiles::new(&held.manifest, out_dir);
        for index in 0..held.manifest.files.len() {
            // Nothing is read or cut through a link: a record that leads through one is not
            // used (the download starts afresh, and refuses the link if it writes there).
            let partial = files.partial_path(index);
            if files.refuse_links(index).is_err() || refuse_link(&partial).is_err() {
                return Ok(None);
            }
            let Some((chunks, bytes)) = verify_partial(&partial, &held.manifest.files[index])?
            else {
                break;
            };
            held.chunks += chunks;
            held.bytes += bytes;
            if bytes == held.manifest.files[index].size_bytes {
                held.whole_files += 1;
            } else {
                held.next_file_bytes = Some(bytes);
                break;
            }
        }
        Ok(Some(held))
    }

    /// Removes what this record kept: its partial files and the record.
    fn discard(self, out_dir: &Path) {
        let files = PartialFiles::new(&self.manifest, out_dir);
        for index in 0..self.manifest.files.len() {
            if files.refuse_links(index).is_ok() {
                let _ = remove_regular_file(&files.partial_path(index));
            }
        }
        let _ = remove_regular_file(&out_dir.join(RESUME_FILE));
    }
}

/// Hashes the partial file at `path` chunk by chunk against `entry`: the
/// number of whole chunks that check out and their bytes, after cutting the
/// file back to them and syncing it. None when there is no such file.
fn verify_partial(
    path: &Path,
    entry: &quiver_transfer::FileEntry,
) -> Result<Option<(u64, u64)>, ClientError> {
    use std::io::Read;
    let context = |what: &str| format!("{what} '{}'", path.display());
    let mut file = match File::options().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(ClientError::io(context("open"), error)),
    };
    let length = file
        .metadata()
        .map_err(|error| ClientError::io(context("inspect"), error))?
        .len();
    let (mut chunks, mut bytes) = (0u64, 0u64);
    let mut buffer = Vec::new();
    for chunk in &entry.chunks {
        let size = u64::from(chunk.size_bytes);
        if bytes + size > length {
            break;
        }
        buffer.resize(chunk.size_bytes as usize, 0);
        file.read_exact(&mut buffer)
            .map_err(|error| ClientError::io(context("read"), error))?;
        if Hash::of(&buffer) != chunk.hash {
            break;
        }
        chunks += 1;
        bytes += size;
    }
    if bytes != length {
        file.set_len(bytes)
            .map_err(|error| ClientError::io(context("cut back"), error))?;
    }
    file.sync_all()
        .map_err(|error| ClientError::io(context("sync"), error))?;
    Ok(Some((chunks, bytes)))
}

/// The files of one download, written under temporary names in manifest order.
struct PartialFiles<'a> {
    manifest: &'a Manifest,
    out_dir: &'a Path,
    /// Partial files created so far, in manifest order.
    partials: Vec<PathBuf>,
    /// The file being written, and its bytes so far.
    current: Option<(File, u64)>,
}

impl<'a> PartialFiles<'a> {
    fn new(manifest: &'a Manifest, out_dir: &'a Path) -> Self {
        PartialFiles {
            manifest,
            out_dir,
            partials: Vec::new(),
            current: None,
        }
    }

    fn final_path(&self, index: usize) -> PathBuf {
        let mut path = self.out_dir.to_path_buf();
        path.extend(self.manifest.files[index].path.split('/'));
        path
    }

    fn partial_path(&self, index: usize) -> PathBuf {
        let mut path = self.final_path(index).into_os_string();
        path.push(PARTIAL_SUFFIX);
        PathBuf::from(path)
    }

    /// Takes up the partial files `held` kept: its whole files, and the
    /// next one opened to append after its verified bytes.
    fn resume(&mut self, held: &Held) -> Result<(), ClientError> {
        self.partials = (0..held.whole_files)
            .map(|index| self.partial_path(index))
            .collect();
        if let Some(bytes) = held.next_file_bytes {
            let index = held.whole_files;
            let partial = self.partial_path(index);
            let file = File::options()
                .append(true)
                .open(&partial)
                .map_err(|error| ClientError::io(format!("open '{}'", partial.display()), error))?;
            self.partials.push(partial);
            self.current = Some((file, bytes));
        }
        Ok(())
    }

    fn write(&mut self, index: usize, data: &[u8]) -> Result<(), ClientError> {
        self.open_through(index + 1)?;
        let path = &self.manifest.files[index].path;
        let Some((file, written)) = self.current.as_mut() else {
            unreachable!("open_through opened file {index}");
        };
        file.write_all(data)
            .map_err(|error| ClientError::io(format!("write '{path}'"), error))?;
        *written += data.len() as u64;
        Ok(())
    }

    /// Makes files `0..count` exist, finishing every one before the last;
    /// files skipped over are empty ones.
    fn open_through(&mut self, count: usize) -> Result<(), ClientError> {
        while self.partials.len() < count {
            self.finish_current()?;
            let index = self.partials.len();
            self.make_parents(index)?;
            refuse_link(&self.final_path(index))?;
            let partial = self.partial_path(index);
            // A partial file left by an interrupted download is replaced; a
            // link at that name is refused, never followed.
            match fs::symlink_metadata(&partial) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(symlink_in_output(&partial));
                }
                Ok(meta) if meta.is_file() => fs::remove_file(&partial).map_err(|error| {
                    ClientError::io(
                        format!("remove stale partial file '{}'", partial.display()),
                        error,
                    )
                })?,
                // Anything else there makes `create_new` fail with a clear error.
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(ClientError::io(
                        format!("inspect '{}'", partial.display()),
                        error,
                    ))
                }
            }
            // `create_new` (O_CREAT | O_EXCL) fails on any existing name,
            // a link included, instead of following it.
            let file = File::options()
                .write(true)
                .create_new(true)
                .open(&partial)
                .map_err(|error| {
                    ClientError::io(format!("create '{}'", partial.display()), error)
                })?;
            self.partials.push(partial);
            self.current = Some((file, 0));
        }
        Ok(())
    }

    /// Creates file `index`'s directories below the output directory one
    /// component at a time, refusing any that is a symbolic link.
    fn make_parents(&self, index: usize) -> Result<(), ClientError> {
        let path = &self.manifest.files[index].path;
        let Some((parents, _name)) = path.rsplit_once('/') else {
            return Ok(());
        };
        let mut directory = self.out_dir.to_path_buf();
        for component in parents.split('/') {
            directory.push(component);
            match fs::symlink_metadata(&directory) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(symlink_in_output(&directory));
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(ClientError::io(
                        format!("create directory '{}'", directory.display()),
                        io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "a file of that name is in the way",
                        ),
                    ))
                }
                // `create_dir` makes a real directory or fails: it follows no link.
                Err(error) if error.kind() == io::ErrorKind::NotFound => fs::create_dir(&directory)
                    .map_err(|error| {
                        ClientError::io(
                            format!("create directory '{}'", directory.display()),
                            error,
                        )
                    })?,
                Err(error) => {
                    return Err(ClientError::io(
                        format!("inspect '{}'", directory.display()),
                        error,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Refuses a symbolic link at any existing component of file `index`
    /// below the output directory, its final name included.
    fn refuse_links(&self, index: usize) -> Result<(), ClientError> {
        let mut path = self.out_dir.to_path_buf();
        for component in self.manifest.files[index].path.split('/') {
            path.push(component);
            refuse_link(&path)?;
        }
        Ok(())
    }

    /// Checks and syncs the file being written.
    fn finish_current(&mut self) -> Result<(), ClientError> {
        let Some((file, written)) = self.current.take() else {
            return Ok(());
        };
        let index = self.partials.len() - 1;
        let entry = &self.manifest.files[index];
        if written != entry.size_bytes {
            return Err(ClientError::Verify(format!(
                "file '{}' received {written} bytes, the manifest says {}",
                entry.path, entry.size_bytes
            )));
        }
        file.sync_all()
            .map_err(|error| ClientError::io(format!("sync '{}'", entry.path), error))
    }

    /// Moves every verified file to its final name.
    fn commit(&mut self) -> Result<(), ClientError> {
        self.finish_current()?;
        assert_eq!(self.partials.len(), self.manifest.files.len());
        let mut directories = BTreeSet::new();
        for index in 0..self.partials.len() {
            // Checked again: the download took time, and a rename through a
            // linked directory would move the file out of the output directory.
            self.refuse_links(index)?;
            let (partial, target) = (self.partial_path(index), self.final_path(index));
            set_mode(&partial, self.manifest.files[index].mode)?;
            fs::rename(&partial, &target).map_err(|error| {
                ClientError::io(format!("move into place '{}'", target.display()), error)
            })?;
            if let Some(parent) = target.parent() {
                directories.insert(parent.to_path_buf());
            }
        }
        self.partials.clear();
        for directory in directories {
            sync_directory(&directory)?;
        }
        Ok(())
    }
}

/// Refuses `path` if it is a symbolic link; a missing path is fine.
fn refuse_link(path: &Path) -> Result<(), ClientError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(symlink_in_output(path)),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(ClientError::io(
            format!("inspect '{}'", path.display()),
            error,
        )),
    }
}

fn symlink_in_output(path: &Path) -> ClientError {
    ClientError::SymlinkInOutput {
        path: path.display().to_string(),
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), ClientError> {
    use std::os::unix::fs::PermissionsExt;
    if mode == 0 {
        // Registered where modes do not exist: keep the local default.
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777))
        .map_err(|error| ClientError::io(format!("set mode of '{}'", path.display()), error))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), ClientError> {
    Ok(())
}

/// Makes renames durable: on Linux a rename is only on disk once its
/// directory is synced.
#[cfg(unix)]
fn sync_directory(directory: &Path) -> Result<(), ClientError> {
    File::open(directory)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| {
            ClientError::io(format!("sync directory '{}'", directory.display()), error)
        })
}

#[cfg(not(unix))]
fn sync_directory(_directory: &Path) -> Result<(), ClientError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_transfer::{ChunkRef, FileEntry};

    /// A manifest of the given files, each cut into chunks of `chunk_bytes`.
    pub(crate) fn manifest_of(files: &[(&str, &[u8])], chunk_bytes: usize) -> Manifest {
        Manifest {
            files: files
                .iter()
                .map(|(path, bytes)| FileEntry {
                    path: path.to_string(),
                    size_bytes: bytes.len() as u64,
                    mode: 0o640,
                    chunks: bytes
                        .chunks(chunk_bytes)
                        .map(|piece| ChunkRef {
                            hash: Hash::of(piece),
                            size_bytes: piece.len() as u32,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn chunk(file_index: u32, chunk_index: u32, data: &[u8]) -> ChunkData {
        ChunkData {
            file_index,
            chunk_index,
            data: data.to_vec(),
        }
    }

    #[test]
    fn cursor_accepts_chunks_in_order_and_skips_empty_files() {
        let manifest = manifest_of(&[("a", b"abcdef"), ("b", b""), ("c", b"xy")], 4);
        let mut cursor = ChunkCursor::new(&manifest);
        cursor.accept(&manifest, &chunk(0, 0, b"abcd")).unwrap();
        assert!(cursor.check_complete(&manifest).is_err());
        cursor.accept(&manifest, &chunk(0, 1, b"ef")).unwrap();
        cursor.accept(&manifest, &chunk(2, 0, b"xy")).unwrap();
        cursor.check_complete(&manifest).unwrap();
        let error = cursor.accept(&manifest, &chunk(2, 1, b"z")).unwrap_err();
        assert!(
            error.to_string().contains("after the last chunk"),
            "{error}"
        );
    }

    #[test]
    fn cursor_names_the_chunk_and_file_that_fail_verification() {
        let manifest = manifest_of(&[("weights.bin", b"abcdef")], 4);
        let mut cursor = ChunkCursor::new(&manifest);
        let error = cursor.accept(&manifest, &chunk(0, 0, b"abcX")).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "chunk {} of file 'weights.bin' failed verification",
                Hash::of(b"abcd")
            )
        );
        let error = cursor.accept(&manifest, &chunk(0, 1, b"ef")).unwrap_err();
        assert!(error.to_string().contains("out of order"), "{error}");
    }

    #[test]
    fn header_must_match_the_version_root() {
        let manifest = manifest_of(&[("a", b"hello")], 4);
        let wire = crate::wire::manifest_to_proto(&manifest);
        let header = |root: String| DownloadHeader {
            version: Some(ModelVersion {
                manifest_root: root,
                ..Default::default()
            }),
            manifest: Some(wire.clone()),
        };
        let (_, checked) = check_header("m/1", header(manifest.root().to_hex())).unwrap();
        assert_eq!(checked, manifest);
        let error = check_header("m/1", header(Hash::of(b"other").to_hex())).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("manifest of 'm/1' failed verification"),
            "{error}"
        );
        assert!(check_header("m/1", header("zz".into())).is_err());
    }

    fn run_writer(
        manifest: &Manifest,
        out_dir: &Path,
        ops: Vec<WriteOp>,
    ) -> Result<bool, ClientError> {
        let (sender, receiver) = mpsc::channel(ops.len() + 1);
        for op in ops {
            sender.try_send(op).ok().unwrap();
        }
        drop(sender);
        let held = Held::scan(out_dir)?;
        write_version(manifest, out_dir, receiver, held)
    }

    #[test]
    fn writer_puts_verified_files_in_place_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest_of(&[("a/x.bin", b"abcdef"), ("b/empty", b""), ("c", b"xy")], 4);
        let ops = vec![
            WriteOp::Chunk(chunk(0, 0, b"abcd")),
            WriteOp::Chunk(chunk(0, 1, b"ef")),
            WriteOp::Chunk(chunk(2, 0, b"xy")),
            WriteOp::Finish,
        ];
        assert!(run_writer(&manifest, dir.path(), ops).unwrap());
        assert_eq!(fs::read(dir.path().join("a/x.bin")).unwrap(), b"abcdef");
        assert_eq!(fs::read(dir.path().join("b/empty")).unwrap(), b"");
        assert_eq!(fs::read(dir.path().join("c")).unwrap(), b"xy");
        assert!(!dir.path().join(format!("c{PARTIAL_SUFFIX}")).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("c"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o640);
        }
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_download_leaves_only_verified_partial_files_and_the_next_one_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest_of(&[("a", b"abcdef"), ("b", b"xy"), ("c", b"1234567")], 4);
        // A bad chunk in file b: a's two chunks are kept, b's is never written.
        let ops = vec![
            WriteOp::Chunk(chunk(0, 0, b"abcd")),
            WriteOp::Chunk(chunk(0, 1, b"ef")),
            WriteOp::Chunk(chunk(1, 0, b"xz")),
        ];
        let error = run_writer(&manifest, dir.path(), ops).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("of file 'b' failed verification"),
            "{error}"
        );
        let partial = |name: &str| format!("{name}{PARTIAL_SUFFIX}");
        assert_eq!(names(dir.path()), [RESUME_FILE.to_string(), partial("a")]);
        let held = Held::scan(dir.path()).unwrap().unwrap();
        assert_eq!((held.whole_files, held.next_file_bytes), (1, None));
        assert_eq!((held.chunks, held.bytes), (2, 6));

        // Bytes that no longer check out are cut back to the last whole verified chunk:
        // c's partial holds its first chunk, then garbage.
        fs::write(dir.path().join(partial("b")), b"xy").unwrap();
        fs::write(dir.path().join(partial("c")), b"1234XXXXXXXXX").unwrap();
        let held = Held::scan(dir.path()).unwrap().unwrap();
        assert_eq!((held.whole_files, held.next_file_bytes), (2, Some(4)));
        assert_eq!((held.chunks, held.bytes), (4, 12));
        assert_eq!(fs::read(dir.path().join(partial("c"))).unwrap(), b"1234");

        // The next download goes on from chunk 4 (the second of c) and completes.
        let ops = vec![WriteOp::Chunk(chunk(2, 1, b"567")), WriteOp::Finish];
        assert!(run_writer(&manifest, dir.path(), ops).unwrap());
        assert_eq!(names(dir.path()), ["a", "b", "c"]);
        assert_eq!(fs::read(dir.path().join("c")).unwrap(), b"1234567");

        // An early end keeps what arrived; an abandoned stream (no Finish) too, with no error
        // of its own.
        let other = tempfile::tempdir().unwrap();
        let ops = vec![WriteOp::Chunk(chunk(0, 0, b"abcd")), WriteOp::Finish];
        let error = run_writer(&manifest, other.path(), ops).unwrap_err();
        assert!(error.to_string().contains("ended early"), "{error}");
        let ops = vec![WriteOp::Chunk(chunk(0, 1, b"ef"))];
        assert!(!run_writer(&manifest, other.path(), ops).unwrap());
        let held = Held::scan(other.path()).unwrap().unwrap();
        assert_eq!((held.chunks, held.bytes), (2, 6));
        assert!(names(other.path())
            .iter()
            .all(|n| n.ends_with(PARTIAL_SUFFIX)));
    }

    #[test]
    fn a_garbled_or_missing_record_means_a_fresh_download() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Held::scan(dir.path()).unwrap().is_none());
        for garbage in [&b""[..], b"\0\0\0", b"\xff\xff\xff\xff\xff", &[0x0a; 4096]] {
            fs::write(dir.path().join(RESUME_FILE), garbage).unwrap();
            // An empty record decodes to an empty manifest; anything else is refused.
            if let Some(held) = Held::scan(dir.path()).unwrap() {
                assert_eq!((held.chunks, held.manifest.files.len()), (0, 0));
            }
        }
        // A record naming a path outside the directory is invalid, never followed.
        let mut evil = manifest_of(&[("a", b"abcd")], 4);
        evil.files[0].path = "../outside".into();
        let bytes = prost::Message::encode_to_vec(&crate::wire::manifest_to_proto(&evil));
        fs::write(dir.path().join(RESUME_FILE), bytes).unwrap();
        assert!(Held::scan(dir.path()).unwrap().is_none());
        // A fresh download replaces it and completes.
        let manifest = manifest_of(&[("a", b"abcd")], 4);
        let ops = vec![WriteOp::Chunk(chunk(0, 0, b"abcd")), WriteOp::Finish];
        assert!(run_writer(&manifest, dir.path(), ops).unwrap());
        assert_eq!(names(dir.path()), ["a"]);
    }

    #[test]
    fn the_cursor_resumes_after_the_chunks_held_across_files() {
        let manifest = manifest_of(&[("a", b"abcdef"), ("e", b""), ("c", b"xy")], 4);
        let at = |held| {
            let c = ChunkCursor::at(&manifest, held);
            (c.file, c.chunk)
        };
        assert_eq!(at(0), (0, 0));
        assert_eq!(at(1), (0, 1));
        assert_eq!(at(2), (2, 0), "the empty file is stepped over");
        assert_eq!(at(3), (3, 0), "past the last file: complete");
        assert_eq!(at(u64::MAX), (3, 0));
        ChunkCursor::at(&manifest, 3)
            .check_complete(&manifest)
            .unwrap();
    }

    /// The three ways a link below the output directory could take a
    /// version's bytes elsewhere, each refused with the link named and
    /// nothing written outside.
    #[cfg(unix)]
    mod symlinks {
        use super::*;
        use std::os::unix::fs::symlink;

        /// An output directory and a directory outside it holding one file
        /// that must survive untouched.
        fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
            let root = tempfile::tempdir().unwrap();
            let (out, outside) = (root.path().join("out"), root.path().join("outside"));
            fs::create_dir(&out).unwrap();
            fs::create_dir(&outside).unwrap();
            fs::write(outside.join("precious"), b"precious").unwrap();
            (root, out, outside)
        }

        fn download(out: &Path, path: &str) -> Result<bool, ClientError> {
            let manifest = manifest_of(&[(path, b"evil bytes")], 4);
            let ops = vec![
                WriteOp::Chunk(chunk(0, 0, b"evil")),
                WriteOp::Chunk(chunk(0, 1, b" byt")),
                WriteOp::Chunk(chunk(0, 2, b"es")),
                WriteOp::Finish,
            ];
            run_writer(&manifest, out, ops)
        }

        /// `outside` still holds exactly its one untouched file.
        fn assert_untouched(outside: &Path) {
            let names: Vec<_> = fs::read_dir(outside)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["precious"]);
            assert_eq!(fs::read(outside.join("precious")).unwrap(), b"precious");
        }

        fn assert_refused(result: Result<bool, ClientError>, link: &Path) {
            let error = result.unwrap_err();
            assert!(
                matches!(&error, ClientError::SymlinkInOutput { path } if Path::new(path) == link),
                "{error:?}"
            );
            assert_eq!(
                error.to_string(),
                format!(
                    "'{}' is a symbolic link inside the output directory, and a download never \
                     writes through one: remove the link, or download into a directory without \
                     links",
                    link.display()
                )
            );
        }

        #[test]
        fn a_directory_link_to_outside_is_refused() {
            let (_root, out, outside) = dirs();
            symlink(&outside, out.join("sub")).unwrap();
            assert_refused(download(&out, "sub/x"), &out.join("sub"));
            assert_untouched(&outside);
            // Deeper: a link in the middle of the path.
            fs::create_dir(out.join("a")).unwrap();
            symlink(&outside, out.join("a/b")).unwrap();
            assert_refused(download(&out, "a/b/c/x"), &out.join("a/b"));
            assert_untouched(&outside);
            assert!(!outside.join("c").exists());
        }

        #[test]
        fn a_link_at_the_final_name_is_refused_and_left_alone() {
            let (_root, out, outside) = dirs();
            symlink(outside.join("precious"), out.join("x")).unwrap();
            assert_refused(download(&out, "x"), &out.join("x"));
            assert_untouched(&outside);
            assert!(fs::symlink_metadata(out.join("x"))
                .unwrap()
                .file_type()
                .is_symlink());
            // A dangling link is no different.
            symlink(outside.join("new"), out.join("y")).unwrap();
            assert_refused(download(&out, "y"), &out.join("y"));
            assert_untouched(&outside);
        }

        #[test]
        fn a_link_at_the_partial_name_is_refused() {
            let (_root, out, outside) = dirs();
            let partial = out.join(format!("x{PARTIAL_SUFFIX}"));
            symlink(outside.join("precious"), &partial).unwrap();
            assert_refused(download(&out, "x"), &partial);
            assert_untouched(&outside);
            let dangling = out.join(format!("y{PARTIAL_SUFFIX}"));
            symlink(outside.join("new"), &dangling).unwrap();
            assert_refused(download(&out, "y"), &dangling);
            assert_untouched(&outside);
            assert!(!out.join("x").exists() && !out.join("y").exists());
        }

        #[test]
        fn a_stale_partial_file_is_replaced_and_a_linked_output_dir_is_used() {
            let (root, out, outside) = dirs();
            fs::create_dir(out.join("d")).unwrap();
            fs::write(out.join(format!("d/x{PARTIAL_SUFFIX}")), b"left by a crash").unwrap();
            assert!(download(&out, "d/x").unwrap());
            assert_eq!(fs::read(out.join("d/x")).unwrap(), b"evil bytes");
            assert!(!out.join(format!("d/x{PARTIAL_SUFFIX}")).exists());

            // The output directory itself may be a link: the user chose it.
            let linked = root.path().join("linked-out");
            symlink(&outside, &linked).unwrap();
            assert!(download(&linked, "new/x").unwrap());
            assert_eq!(fs::read(outside.join("new/x")).unwrap(), b"evil bytes");
        }
    }
}
