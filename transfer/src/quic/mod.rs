//! Chunks between nodes over QUIC: a small request/response protocol on quinn, mutual TLS under
//! the cluster CA, and a multi-source fetch that verifies every chunk.
//!
//! Shape (pure core, thin I/O shell):
//! - `wire` (private) encodes and checks the frames; it performs no I/O and bounds every length.
//! - [`FetchScheduler`] decides which chunk to fetch next and from which peer, from events only
//!   (done, corrupt, not found, failed, timed out). [`fetch_all`] drives it with real requests.
//! - [`ChunkServer`] answers GET / HAVE / PUT from a [`ChunkSource`]; [`PeerClient`] asks, over a
//!   pool of one connection per peer.
//!
//! Protocol (ALPN [`ALPN_CHUNKS`]): one bidirectional stream per request. The client writes a
//! 37-byte header (op: u8, hash: 32 bytes, payload length: u32 big-endian) and the payload, then
//! finishes its side; the server answers with a 5-byte header (status: u8, length: u32
//! big-endian) and the payload. Status is Ok, NotFound, Corrupt or Error (payload: a short UTF-8
//! message). GET's payload is the chunk (at most [`crate::CHUNK_SIZE_BYTES`]); PUT's request
//! payload is the chunk and its Ok means "durable here"; HAVE's request payload is up to
//! [`HAVE_BATCH_MAX`] hashes and its answer one byte (0 or 1) per hash.
//!
//! Invariant (DESIGN.md): a chunk is never served or used unless its blake3 hash matches. The
//! server reads through [`ChunkSource::get`], which verifies (a corrupt chunk is answered
//! `Corrupt`, its bytes are never sent); the client verifies every chunk it receives before
//! returning it; a PUT is verified by the receiving store before it is acknowledged.
//!
//! Transport tuning (stream windows, congestion controller, UDP buffers) was chosen by measurement:
//! see `docs/decisions/0003-quic-transport.md` and [`TransportTuning::chosen`].

mod bench;
mod client;
mod config;
mod dev_tls;
mod fetch;
mod peers;
mod scheduler;
mod server;
mod source;
mod stats;
mod wire;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

use crate::{Hash, StoreError};

pub use bench::{
    bench_chunk_protocol, bench_quic_stream, bench_tcp_loopback, bench_transport,
    TransportBenchReport,
};
pub use client::PeerClient;
pub use config::{CongestionControl, PeerGate, QuicCerts, QuicTls, TransportTuning};
pub use fetch::{
    fetch_all, FetchOptions, FetchReport, FETCH_ATTEMPTS_PER_CHUNK_DEFAULT,
    FETCH_ATTEMPTS_PER_CHUNK_LIMIT, FETCH_CHUNK_TIMEOUT_DEFAULT, FETCH_PARALLELISM_DEFAULT,
    FETCH_PARALLELISM_MAX,
};
pub use peers::{verify_chunk, ChunkPeers};
pub use scheduler::{Assignment, FetchScheduler, GaveUp, Next, Outcome};
pub use server::ChunkServer;
pub use source::{ChunkSource, MemoryChunkSource};
pub use stats::{ChunkBytes, PeerLabel, TransferStats, TRANSFER_STATS_PEERS_MAX};

/// The name in every node certificate's SAN (DNS), and the name a client verifies a peer against.
pub const PEER_TLS_SERVER_NAME: &str = "quiver.cluster";
/// ALPN protocol id of the chunk protocol; a new wire format gets a new id.
pub const ALPN_CHUNKS: &[u8] = b"quiver-chunks/1";
/// Upper bound on the number of hashes in one HAVE request. [`PeerClient::have`] splits longer
/// lists into batches of at most this many.
pub const HAVE_BATCH_MAX: usize = 1024;
/// Upper bound on the length of an error message in an Error response, in bytes.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;
/// Concurrent requests (bidirectional streams) a peer may have open on one connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 64;
/// Established connections a [`ChunkServer`] keeps at once, counted once their handshake (and
/// the client's certificate) succeeded; one more is closed at once with
/// [`CLOSE_AT_CONNECTION_LIMIT`]. Peers are cluster nodes; with the chosen send window (32 MiB)
/// this bounds a server's send buffering to 2 GiB.
pub const SERVER_CONNECTIONS_MAX: usize = 64;
/// Handshakes a [`ChunkServer`] runs at once; beyond it a connection attempt is refused before
/// any cryptography. Each is bounded by [`SERVER_HANDSHAKE_TIMEOUT`], and only attempts from a
/// validated address (a stateless retry proves the client receives at the address it sends
/// from) get this far, so spoofed or stalled attempts cannot hold the slots.
pub const SERVER_HANDSHAKES_MAX: usize = 32;
/// How long a [`ChunkServer`] gives one handshake.
pub const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The QUIC application close code of a connection refused at [`SERVER_CONNECTIONS_MAX`].
pub const CLOSE_AT_CONNECTION_LIMIT: u32 = 0x51;
/// The QUIC application close code of a connection whose client certificate the server's
/// [`PeerGate`] refuses (a removed node's, or one that expired while connected).
pub const CLOSE_REFUSED_PEER: u32 = 0x52;
/// Connections a [`PeerClient`] keeps to each peer and spreads requests over. Two measured
/// faster than one for bulk transfers (docs/decisions/0003); each costs a handshake and a
/// connection's buffers on both sides.
pub const CONNECTIONS_PER_PEER: usize = 2;
/// Connections a [`PeerClient`] keeps pooled (all peers); beyond it, the pool evicts closed
/// connections first, then an arbitrary one.
pub const CLIENT_POOL_CONNECTIONS_MAX: usize = 1024;
/// How long [`PeerClient`] waits for a QUIC + TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on one request made by [`PeerClient`] (after connecting). [`fetch_all`] applies
/// its own, usually shorter, per-chunk timeout on top.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server gives one request (read the request, do the store I/O, send the answer).
pub const SERVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection with no packets from the peer for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive interval, so a pooled idle connection does not hit [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(3);
/// How long [`ChunkServer::shutdown`] waits for connections to finish closing.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A request to a peer failed. Every variant names the peer, and the chunk where there is one.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The peer reported its copy corrupt, or sent bytes that fail verification (or have the
    /// wrong length), or rejected pushed bytes as not matching the hash.
    #[error("peer {peer} has no valid copy of chunk {hash}: it reported its copy corrupt or sent bytes that do not match the hash")]
    Corrupt { peer: SocketAddr, hash: Hash },
    #[error("peer {peer} does not have chunk {hash}")]
    NotFound { peer: SocketAddr, hash: Hash },
    #[error("peer {peer} did not answer for chunk {hash} in time")]
    Timeout { peer: SocketAddr, hash: Hash },
    /// No connection: unreachable, handshake timed out, TLS rejected (either side), or the
    /// connection was lost mid-request.
    #[error("connection to peer {peer} failed: {detail}")]
    Connect { peer: SocketAddr, detail: String },
    /// The peer broke the protocol, reported an error, or a local argument is out of bounds.
    #[error("chunk protocol error with peer {peer}: {detail}")]
    Protocol { peer: SocketAddr, detail: String },
    /// [`fetch_all`] had no peer left to try for a chunk (none given, or all banned for serving
    /// corrupt data before any attempt on this chunk failed).
    #[error("no usable peer to fetch chunk {hash} from ({peers} given, {banned} banned for serving corrupt data)")]
    NoPeers {
        hash: Hash,
        peers: usize,
        banned: usize,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Setting up an endpoint failed: TLS material, socket, runtime. Messages say what was being done.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("TLS configuration: {context}: {detail}")]
    Tls { context: String, detail: String },
    #[error("bind QUIC endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a QUIC endpoint needs a tokio runtime: call this from within one")]
    NoRuntime,
    #[error("transport setting out of range: {0}")]
    Config(String),
    #[error("benchmark: {0}")]
    Bench(String),
    #[error("benchmark: {0}")]
    Fetch(#[from] FetchError),
}
