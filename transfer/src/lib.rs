//! Artifacts as bytes: chunking, manifests, blake3 verification, the content-addressed chunk
//! store, and the QUIC peer protocol with multi-source fetch ([`quic`]).
//!
//! A model version's files are cut into chunks ([`Chunker`]), each named by its blake3 [`Hash`]
//! and stored once in a [`ChunkStore`]. A [`Manifest`] lists the files and their chunks; the
//! blake3 hash of its canonical encoding ([`Manifest::root`]) identifies the version. Any chunk
//! can be verified alone against its hash, so a chunk from any peer is usable once it checks out.
//!
//! Chunk boundaries are content-defined (a gear rolling hash, FastCDC-style), so a fine-tuned
//! model whose header grew by a few bytes still shares most chunks with its base: see
//! `docs/decisions/0001-chunking.md` for the measurement behind that choice and its parameters.
//!
//! Everything here streams: memory is bounded by one chunk of at most [`CHUNK_SIZE_BYTES_MAX`].

mod chunker;
pub mod collect;
mod hash;
mod manifest;
mod small_chunks;
mod store;

pub mod quic;

pub use chunker::Chunker;
pub use collect::Collected;
pub use hash::{Hash, ParseHashError};
pub use manifest::{validate_path, ChunkRef, FileEntry, Manifest, ManifestError};
pub use store::{ingest_reader, ChunkStore, StoreError, SMALL_CHUNK_BYTES_MAX};

pub use quic::{
    bench_transport, fetch_all, verify_chunk, ChunkBytes, ChunkPeers, ChunkServer, ChunkSource,
    FetchError, FetchOptions, FetchReport, FetchScheduler, MemoryChunkSource, PeerClient, PeerGate,
    PeerLabel, QuicCerts, QuicTls, TransferError, TransferStats, TransportBenchReport,
    TransportTuning, HAVE_BATCH_MAX, PEER_TLS_SERVER_NAME,
};

/// Upper bound on the size of any chunk: buffers and frames that carry one chunk need this many
/// bytes. Chunk boundaries are content-defined (see [`Chunker`]), so chunks are NOT all this size:
/// a file's chunks are between [`CHUNK_SIZE_BYTES_MIN`] and this many bytes (the last may be
/// shorter), about [`CHUNK_SIZE_BYTES_AVG`] on average. Compute a chunk's offset in its file by
/// summing the sizes of the chunks before it, never as index * a constant.
pub const CHUNK_SIZE_BYTES: usize = 4 * 1024 * 1024;
/// Same as [`CHUNK_SIZE_BYTES`], for code that wants to say "max".
pub const CHUNK_SIZE_BYTES_MAX: usize = CHUNK_SIZE_BYTES;
/// The chunker's target average chunk size.
pub const CHUNK_SIZE_BYTES_AVG: usize = 1024 * 1024;
/// No chunk except a file's last is shorter than this.
pub const CHUNK_SIZE_BYTES_MIN: usize = 256 * 1024;
/// Upper bound on the number of files in one manifest (one model version).
pub const FILES_PER_MANIFEST_MAX: usize = 10_000;
/// Upper bound on the length of one file path, in bytes of UTF-8.
pub const PATH_BYTES_MAX: usize = 1024;
/// Upper bound on the number of chunks in one manifest, summed over its files.
pub const CHUNKS_PER_MANIFEST_MAX: usize = 262_144;

const _: () = assert!(CHUNK_SIZE_BYTES_MIN < CHUNK_SIZE_BYTES_AVG);
const _: () = assert!(CHUNK_SIZE_BYTES_AVG < CHUNK_SIZE_BYTES_MAX);
// Downstream code (frames, buffers) assumes a chunk fits in 16 MiB, and ChunkRef sizes are u32.
const _: () = assert!(CHUNK_SIZE_BYTES_MAX <= 16 * 1024 * 1024);

/// The configuration of this crate's property tests: a fixed seed, so that every run draws the
/// same cases and a failure reproduces, and no failure files written beside the sources.
#[cfg(test)]
pub(crate) fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5157_4552),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
