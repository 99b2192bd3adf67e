//! The log store's durability seam: how a test harness (the simulator's disk model) learns which
//! log writes are durable, and how it plants the one durability bug it must be able to detect.
//!
//! Production nodes have no [`LogDisk`] (`RaftNodeConfig::log_disk` is `None`, and nothing in
//! `quiver-node`'s CLI can set it): the log env is opened with LMDB's default flags, so every
//! write transaction is committed with a full sync before the store reports it done, and no one
//! is told anything.
//!
//! With a [`LogDisk`] attached, the log store calls [`LogDisk::before_write`] before it begins
//! each write transaction (append, truncate, purge, vote) and
//! [`LogDisk::after_write`] once the commit returned. A harness can therefore keep an image of
//! the log env as of its last durable point and, when it simulates a power loss, put that image
//! back (see `quiver-sim`'s `disk` module). `before_write` is called outside any write
//! transaction, so the harness may read or copy the environment there (LMDB's copy takes the
//! writer lock).
//!
//! The planted bug [`LogDisk::skip_fsync`] (asked once, when the env is opened) opens the log env
//! with `MDB_NOSYNC`: commits reach the page cache but are not fsynced, while the store still
//! reports every append flushed to openraft. It is exactly the shortcut the design forbids, put
//! on the real code path so the simulator can show that its checkers notice it.

use std::fmt;
use std::sync::Arc;

/// A test harness's view of the log env's writes (see the module docs).
pub trait LogDisk: Send + Sync + 'static {
    /// PLANTED BUG switch (test only): open the log env with `MDB_NOSYNC` so that no write is
    /// fsynced, yet report every write flushed. Asked once per open. Default: `false`.
    fn skip_fsync(&self) -> bool {
        false
    }

    /// A write transaction is about to begin on the log env `env`; its commit will be fsynced
    /// iff `synced`. No write transaction is open: `env` shows the result of every earlier write.
    fn before_write(&self, env: &heed::Env, synced: bool);

    /// The write transaction announced by the last `before_write` has committed (fsynced iff
    /// `synced`): when `synced`, everything written to the env so far is durable.
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
