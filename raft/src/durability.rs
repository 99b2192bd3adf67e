//! The log store's durability seam: how a test harness (the simulator's disk model) learns which
//! log writes are durable, and how it plants the one durability bug it must be able to detect.
//!
//! Production nodes have no [`LogDisk`] (`RaftNodeConfig::log_disk` is `None`, and nothing in
//! `quiver-node`'s CLI can set it): every write to the log's segment files is fdatasynced before
//! the store reports it done, and no one is told anything.
//!
//! With a [`LogDisk`] attached, the log store calls [`LogDisk::before_write`] before each write
//! (append, truncate, purge, vote) and [`LogDisk::after_write`] once it returned. A harness can
//! therefore keep an image of the log directory as of its last durable point and, when it
//! simulates a power loss, put that image back (see `quiver-sim`'s `disk` module).
//! `before_write` is called before the store touches any file for that write, so the harness may
//! copy the directory there.
//!
//! The planted bug [`LogDisk::skip_fsync`] (asked once, when the store is opened) turns every
//! fdatasync of the log off: writes reach the page cache only, while the store still reports
//! every append flushed to openraft. It is exactly the shortcut the design forbids, put on the
//! real code path so the simulator can show that its checkers notice it.

use std::fmt;
use std::sync::Arc;

/// A test harness's view of the log's writes (see the module docs).
pub trait LogDisk: Send + Sync + 'static {
    /// PLANTED BUG switch (test only): fsync no write of the log, yet report every write
    /// flushed. Asked once per open. Default: `false`.
    fn skip_fsync(&self) -> bool {
        false
    }

    /// A write is about to be made to the log in `log_dir`; it will be fsynced iff `synced`.
    /// The directory's files show the result of every earlier write.
    fn before_write(&self, log_dir: &std::path::Path, synced: bool);

    /// The write announced by the last `before_write` has returned (fsynced iff `synced`): when
    /// `synced`, everything written to the log so far is durable.
    fn after_write(&self, synced: bool);
}

/// A shareable [`LogDisk`], as carried by `RaftNodeConfig::log_disk`.
#[derive(Clone)]
pub struct LogDiskHandle(pub Arc<dyn LogDisk>);

impl fmt::Debug for LogDiskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogDiskHandle")
    }
}
