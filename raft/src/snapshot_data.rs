//! [`SnapshotData`]: the snapshot bytes openraft moves around (to send, being received, just
//! built), always in a file of the state directory, never whole in memory.
//!
//! openraft 0.9 wants `AsyncRead + AsyncWrite + AsyncSeek + Unpin` and reads or writes the data
//! in chunks of `snapshot_max_chunk_size`; a file gives it that with memory that does not grow
//! with the state. Besides a file, the data can be *nothing*: what a snapshot build that failed
//! returns, so that it never needs a disk that may be the very thing failing (openraft drops a
//! built snapshot's data unread).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Snapshot data: a file, or nothing (see the module docs).
///
/// A file being received is a temporary file that is removed when this is dropped, unless the
/// state machine took it (`into_std`) to install it; writes to it past `size_bytes_max` fail,
/// so a sender cannot fill the disk.
pub struct SnapshotData {
    inner: Inner,
    /// Removed on drop: a temporary file nobody took.
    temp_path: Option<PathBuf>,
    /// Offset the next write goes to (tracked through seeks and writes).
    position: u64,
    /// Writes past this offset fail.
    size_bytes_max: u64,
}

enum Inner {
    File(tokio::fs::File),
    Nothing,
}

impl SnapshotData {
    /// Data in `file`, which outlives this (the current snapshot, a snapshot just built).
    pub(crate) fn file(file: std::fs::File) -> Self {
        SnapshotData {
            inner: Inner::File(tokio::fs::File::from_std(file)),
            temp_path: None,
            position: 0,
            size_bytes_max: 0,
        }
    }

    /// An empty temporary file at `path`, to be written (a snapshot being received) up to
    /// `size_bytes_max` bytes; removed on drop unless taken with [`SnapshotData::into_std`].
    pub(crate) fn temp(file: std::fs::File, path: PathBuf, size_bytes_max: u64) -> Self {
        SnapshotData {
            inner: Inner::File(tokio::fs::File::from_std(file)),
            temp_path: Some(path),
            position: 0,
            size_bytes_max,
        }
    }

    /// No data: what a snapshot build that did not happen returns.
    pub(crate) fn nothing() -> Self {
        SnapshotData {
            inner: Inner::Nothing,
            temp_path: None,
            position: 0,
            size_bytes_max: 0,
        }
    }

    /// Whether the data is in a file (it is, except for a build that failed).
    pub fn is_file(&self) -> bool {
        matches!(self.inner, Inner::File(_))
    }

    /// The file, once every pending operation on it is done, and its path if it is a temporary
    /// file (which is then the caller's to remove or keep). `None` if there is no data.
    pub(crate) async fn into_std(mut self) -> Option<(std::fs::File, Option<PathBuf>)> {
        let temp_path = self.temp_path.take();
        match std::mem::replace(&mut self.inner, Inner::Nothing) {
            Inner::File(file) => Some((file.into_std().await, temp_path)),
            Inner::Nothing => None,
        }
    }
}

impl Drop for SnapshotData {
    fn drop(&mut self) {
        if let Some(path) = self.temp_path.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "remove unused snapshot temp file");
            }
        }
    }
}

fn no_data() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "snapshot has no data")
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::File(file) => {
                let before = buf.filled().len();
                let read = Pin::new(file).poll_read(cx, buf);
                if let Poll::Ready(Ok(())) = &read {
                    this.position += (buf.filled().len() - before) as u64;
                }
                read
            }
            // Like an empty file.
            Inner::Nothing => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Inner::File(file) = &mut this.inner else {
            return Poll::Ready(Err(no_data()));
        };
        if this.position.saturating_add(buf.len() as u64) > this.size_bytes_max {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!(
                    "snapshot data would exceed {} bytes (write of {} at {})",
                    this.size_bytes_max,
                    buf.len(),
                    this.position
                ),
            )));
        }
        let written = Pin::new(file).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            this.position += *n as u64;
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::File(file) => Pin::new(file).poll_flush(cx),
            Inner::Nothing => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::File(file) => Pin::new(file).poll_shutdown(cx),
            Inner::Nothing => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        match &mut self.get_mut().inner {
            Inner::File(file) => Pin::new(file).start_seek(position),
            Inner::Nothing => match position {
                io::SeekFrom::Start(0) | io::SeekFrom::End(0) | io::SeekFrom::Current(0) => Ok(()),
                _ => Err(no_data()),
            },
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::File(file) => {
                let done = Pin::new(file).poll_complete(cx);
                if let Poll::Ready(Ok(at)) = &done {
                    this.position = *at;
                }
                done
            }
            Inner::Nothing => Poll::Ready(Ok(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_temp_file_is_bounded_and_removed_unless_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = |name: &str| {
            let path = dir.path().join(name);
            let file = std::fs::File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .expect("create");
            (file, path)
        };

        let (file, path) = open("dropped");
        let mut data = SnapshotData::temp(file, path.clone(), 8);
        data.write_all(b"12345678").await.expect("up to the bound");
        let refused = data.write_all(b"9").await.expect_err("past the bound");
        assert_eq!(refused.kind(), io::ErrorKind::FileTooLarge);
        // A seek back makes room again: the bound is on offsets, not on bytes written.
        data.seek(io::SeekFrom::Start(4)).await.expect("seek");
        data.write_all(b"abcd").await.expect("rewrite the end");
        data.flush().await.expect("flush");
        assert_eq!(std::fs::read(&path).expect("read"), b"1234abcd");
        drop(data);
        assert!(!path.exists(), "a temp file nobody took is removed");

        let (file, path) = open("taken");
        let data = SnapshotData::temp(file, path.clone(), 8);
        let (_file, taken) = data.into_std().await.expect("a file");
        assert_eq!(taken.as_deref(), Some(path.as_path()));
        assert!(path.exists(), "a taken temp file is the taker's");
    }

    #[tokio::test]
    async fn nothing_reads_empty_and_refuses_writes() {
        let mut data = SnapshotData::nothing();
        assert!(!data.is_file());
        assert_eq!(data.seek(io::SeekFrom::End(0)).await.expect("seek"), 0);
        let mut bytes = Vec::new();
        assert_eq!(data.read_to_end(&mut bytes).await.expect("read"), 0);
        assert!(data.write_all(b"x").await.is_err());
        assert!(data.into_std().await.is_none());
    }
}
