//! The environment node code sees. Time, the randomness behind request ids, the chunk store and
//! the chunk peers reach a [`crate::Node`] only through the [`Env`] it is built with (and the
//! Raft network through its `RaftNode`'s `PeerTransport`), so the simulator builds the same
//! `Node` over its own.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::command::RequestId;

/// Wall-clock time in milliseconds since the Unix epoch, as stamped into commands by their
/// proposer.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// Where request ids come from (decision 0009): they must not repeat across nodes and restarts.
pub trait RequestIds: Send + Sync + 'static {
    fn next_id(&self) -> RequestId;
}

/// Ids from the operating system's randomness.
pub struct RandomIds;

impl RequestIds for RandomIds {
    fn next_id(&self) -> RequestId {
        RequestId::random()
    }
}

/// Everything a node takes from the world it runs in, but the Raft network (which its
/// `RaftNode` was started over). Production: the system clock, OS randomness, the on-disk
/// `ChunkStore` and QUIC's `PeerClient`; the simulator: its virtual clock, seeded ids, in-memory
/// stores and simulated chunk network.
pub struct Env<S, P> {
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn RequestIds>,
    pub chunks: S,
    pub peers: P,
}
