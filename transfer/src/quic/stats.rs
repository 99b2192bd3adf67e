//! Bytes of chunk data moved with each peer, counted by the endpoints themselves: a
//! [`ChunkServer`](super::ChunkServer) counts what it served (GET answered) and received (PUT
//! stored), a [`PeerClient`](super::PeerClient) what it fetched (GET answers read) and pushed
//! (PUT acknowledged). Plain atomics, no metrics library: the node reads
//! [`TransferStats::totals`] at each scrape and renders them itself.
//!
//! A peer is named by the node id its certificate names when the endpoint has a
//! [`PeerGate`](super::PeerGate) to read it, else by its address. The set of names is bounded
//! ([`TRANSFER_STATS_PEERS_MAX`]); bytes of any further peer are counted under
//! [`PeerLabel::Other`]. Counters are resolved once per connection, so a request costs one
//! atomic add.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Distinct peers one [`TransferStats`] names; the bytes of any further peer are counted under
/// [`PeerLabel::Other`].
pub const TRANSFER_STATS_PEERS_MAX: usize = 256;

/// Who the bytes were moved with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerLabel {
    /// The node its certificate names.
    Node(u64),
    /// Its address, where no gate names its node.
    Addr(SocketAddr),
    /// Any peer beyond the first [`TRANSFER_STATS_PEERS_MAX`].
    Other,
}

impl fmt::Display for PeerLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerLabel::Node(id) => write!(f, "{id}"),
            PeerLabel::Addr(addr) => write!(f, "{addr}"),
            PeerLabel::Other => f.write_str("other"),
        }
    }
}

/// Bytes of chunk data moved with one peer since the endpoint started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkBytes {
    /// Sent in answers to the peer's GETs (by a server).
    pub served_bytes: u64,
    /// Taken from the peer's PUTs: verified and stored (by a server).
    pub received_bytes: u64,
    /// Read from the peer's answers to GETs, before the caller verifies them (by a client).
    pub fetched_bytes: u64,
    /// Sent in PUTs the peer acknowledged as verified and durable (by a client).
    pub pushed_bytes: u64,
}

impl ChunkBytes {
    /// Adds `other`'s counts to these (a node sums its server's and its client's).
    pub fn add(&mut self, other: &ChunkBytes) {
        self.served_bytes += other.served_bytes;
        self.received_bytes += other.received_bytes;
        self.fetched_bytes += other.fetched_bytes;
        self.pushed_bytes += other.pushed_bytes;
    }
}

/// One peer's counters, shared by every connection with it.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    served_bytes: AtomicU64,
    received_bytes: AtomicU64,
    fetched_bytes: AtomicU64,
    pushed_bytes: AtomicU64,
}

impl PeerCounters {
    pub(crate) fn served(&self, bytes: usize) {
        self.served_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, bytes: usize) {
        self.received_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn fetched(&self, bytes: usize) {
        self.fetched_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn pushed(&self, bytes: usize) {
        self.pushed_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn load(&self) -> ChunkBytes {
        ChunkBytes {
            served_bytes: self.served_bytes.load(Ordering::Relaxed),
            received_bytes: self.received_bytes.load(Ordering::Relaxed),
            fetched_bytes: self.fetched_bytes.load(Ordering::Relaxed),
            pushed_bytes: self.pushed_bytes.load(Ordering::Relaxed),
        }
    }
}

/// One endpoint's [`ChunkBytes`] per peer; see the module docs.
#[derive(Debug, Default)]
pub struct TransferStats {
    /// At most [`TRANSFER_STATS_PEERS_MAX`] entries, never removed (the counts are totals).
    peers: Mutex<HashMap<PeerLabel, Arc<PeerCounters>>>,
    other: Arc<PeerCounters>,
}

impl TransferStats {
    /// The counters of `label`: its own while fewer than [`TRANSFER_STATS_PEERS_MAX`] peers
    /// are named, else those of [`PeerLabel::Other`].
    pub(crate) fn peer(&self, label: PeerLabel) -> Arc<PeerCounters> {
        if label == PeerLabel::Other {
            return self.other.clone();
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counters) = peers.get(&label) {
            return counters.clone();
        }
        if peers.len() >= TRANSFER_STATS_PEERS_MAX {
            return self.other.clone();
        }
        let counters = Arc::new(PeerCounters::default());
        peers.insert(label, counters.clone());
        debug_assert!(peers.len() <= TRANSFER_STATS_PEERS_MAX);
        counters
    }

    /// Every named peer's bytes in label order, then [`PeerLabel::Other`]'s if it has any.
    pub fn totals(&self) -> Vec<(PeerLabel, ChunkBytes)> {
        let mut totals: Vec<(PeerLabel, ChunkBytes)> = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(label, counters)| (*label, counters.load()))
            .collect();
        totals.sort_by_key(|(label, _)| *label);
        let other = self.other.load();
        if other != ChunkBytes::default() {
            totals.push((PeerLabel::Other, other));
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_beyond_the_limit_are_counted_as_other() {
        let stats = TransferStats::default();
        assert!(stats.totals().is_empty());
        for id in 0..TRANSFER_STATS_PEERS_MAX as u64 {
            stats.peer(PeerLabel::Node(id)).served(1);
        }
        // The same peer again: its own counters, not a new entry.
        stats.peer(PeerLabel::Node(7)).fetched(10);
        let beyond = PeerLabel::Addr(SocketAddr::from(([127, 0, 0, 1], 9)));
        stats.peer(beyond).pushed(5);
        stats.peer(PeerLabel::Node(u64::MAX)).received(3);
        let totals = stats.totals();
        assert_eq!(totals.len(), TRANSFER_STATS_PEERS_MAX + 1);
        assert_eq!(
            totals[7],
            (
                PeerLabel::Node(7),
                ChunkBytes {
                    served_bytes: 1,
                    fetched_bytes: 10,
                    ..ChunkBytes::default()
                }
            )
        );
        assert_eq!(
            totals.last(),
            Some(&(
                PeerLabel::Other,
                ChunkBytes {
                    pushed_bytes: 5,
                    received_bytes: 3,
                    ..ChunkBytes::default()
                }
            ))
        );
        assert!(!totals.iter().any(|(label, _)| *label == beyond));
        assert_eq!(PeerLabel::Other.to_string(), "other");
        assert_eq!(beyond.to_string(), "127.0.0.1:9");
        assert_eq!(PeerLabel::Node(3).to_string(), "3");
    }
}
