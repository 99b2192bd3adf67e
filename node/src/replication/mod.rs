//! Artifact replication between nodes: write-quorum pushes during upload,
//! read-through on download, and background repair.
//!
//! - Upload: every chunk is written locally and pushed over QUIC to every
//!   peer as it arrives; the upload waits only until W copies of each chunk
//!   are durable (the local one plus W−1 peers). Pushes beyond W finish in the
//!   background, bounded by `BACKGROUND_PUSHES_MAX` chunks in flight.
//! - Download: a chunk missing or corrupt locally is fetched from peers
//!   (verified) and stored before it is served; a corrupt local copy is
//!   removed first, so the bad bytes are never served and the copy is fixed.
//! - Repair: a loop walks every READY version and fetches what this node
//!   lacks from its peers, so every node converges to a full copy. A scrub
//!   re-verifies held copies a bounded number of bytes per pass, so a copy
//!   that rotted on disk is found, removed and fetched again.
//!
//! - `sink`: the upload side, [`ChunkSink`] (W copies before the ack);
//! - `read_through`: downloads, [`read_chunk`] and the shared in-flight fetches [`ReadThroughs`];
//! - `placement`: which nodes hold a full copy of a version, [`should_hold`];
//! - `repair`: [`RepairState`] and the per-version step [`repair_version`];
//! - `scrub`: re-verification of held copies, [`scrub_step`];
//! - `store_call`: blocking chunk-store calls, on tokio's pool or inline (the simulator).
//!
//! [`PlantedBugs`] are the simulator's test-only switches that break this
//! code on purpose (off by default, settable from no CLI or config).

mod placement;
mod read_through;
mod repair;
mod scrub;
mod sink;
mod store_call;
pub(crate) use store_call::StoreCall;
#[cfg(test)]
mod test_support;

pub use placement::{should_hold, FULL_REPLICATION_NODES_MAX};
pub use read_through::{read_chunk, read_chunk_with, ReadThroughs};
pub use repair::{
    missing_chunks, repair_version, HeldSummary, RepairState, Repaired, PENDING_LISTED_MAX,
    REPAIR_INTERVAL,
};
pub use scrub::{scrub_step, Scrubbed, SCRUB_BYTES_PER_PASS, SCRUB_CHUNKS_PER_PASS};
pub use sink::{ChunkSink, BACKGROUND_PUSHES_MAX};

/// Known bugs the simulator (quiver-sim) plants in this module's real code
/// paths, to show that its checkers notice them. Test-only: every switch is
/// off by default and production code never sets one (nothing in the
/// quiver-node CLI or config reaches them); only code that builds a
/// [`ChunkSink`] or calls [`read_chunk_with`] itself can.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// PLANTED BUG `ack-before-w-copies`: [`ChunkSink::put`] reports success
    /// once the local copy is durable; every push to a peer goes to the
    /// background, so a version can be READY with fewer than W copies.
    pub ack_before_w_copies: bool,
    /// PLANTED BUG `skip-chunk-verify`: [`read_chunk_with`] hands out the
    /// local copy without checking it (`ChunkSource::get_unverified`). (Bytes
    /// fetched from peers cannot be planted the same way: the store verifies
    /// them again on `put`.)
    pub skip_chunk_verify: bool,
}
