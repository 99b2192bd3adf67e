//! Collecting a store's garbage while it is in use: which chunks were put recently.
//!
//! An upload that never commits leaves its chunks in the stores it wrote to (its own node's and
//! its peers'). While the node runs, a chunk may be removed only if no version refers to it and
//! nothing has put it for a while: an upload in flight puts its chunks (or finds them present,
//! which counts as a put too) before its version refers to them. Time is counted in *epochs*,
//! which the node's collector starts (`ChunkSource::start_gc_epoch`): a chunk put in the current
//! or the previous epoch is *recent*, any other is *idle*. With one epoch per grace period, a
//! chunk is idle at least one whole grace period after its last put.
//!
//! A put and a removal of the same chunk must not interleave: a put that found the chunk present
//! and counted it must not see it removed a moment later. [`CollectLock`] orders them: every
//! put holds it shared for its whole length, and a removal holds it exclusively while it checks
//! that the chunk is idle and removes it.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::Hash;

/// What one collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub chunks: u64,
    pub bytes: u64,
}

/// The last epoch in which each recently put chunk was put (see the module docs). Holds only
/// chunks put in the current or the previous epoch, so it stays as small as one grace period's
/// puts.
#[derive(Debug, Default)]
pub struct PutEpochs {
    epoch: u64,
    last_put: HashMap<Hash, u64>,
}

impl PutEpochs {
    /// `hash` was put (written, or found present and counted) now.
    pub fn record(&mut self, hash: Hash) {
        self.last_put.insert(hash, self.epoch);
    }

    /// Starts a new epoch: what was put two epochs ago or earlier becomes idle.
    pub fn advance(&mut self) {
        self.epoch += 1;
        let previous = self.epoch - 1;
        self.last_put.retain(|_, epoch| *epoch >= previous);
    }

    /// Whether `hash` was put in neither the current nor the previous epoch.
    pub fn is_idle(&self, hash: &Hash) -> bool {
        !self.last_put.contains_key(hash)
    }

    /// Chunks currently counted as recent.
    pub fn recent(&self) -> usize {
        self.last_put.len()
    }
}

/// Orders a store's puts against its collector's removals (see the module docs).
#[derive(Debug, Default)]
pub struct CollectLock {
    order: RwLock<()>,
    epochs: Mutex<PutEpochs>,
}

impl CollectLock {
    /// Records a put of `hash` and holds off removals until the returned guard is dropped.
    pub fn put(&self, hash: Hash) -> RwLockReadGuard<'_, ()> {
        let guard = self.order.read().unwrap_or_else(|p| p.into_inner());
        self.epochs().record(hash);
        guard
    }

    /// Starts a new epoch.
    pub fn advance(&self) {
        self.epochs().advance();
    }

    /// Waits for puts in flight, then holds off new ones while the caller removes what
    /// `is_idle` allows.
    pub fn removing(
        &self,
    ) -> (
        RwLockWriteGuard<'_, ()>,
        std::sync::MutexGuard<'_, PutEpochs>,
    ) {
        let guard = self.order.write().unwrap_or_else(|p| p.into_inner());
        (guard, self.epochs())
    }

    fn epochs(&self) -> std::sync::MutexGuard<'_, PutEpochs> {
        // A panic cannot leave the map half-updated (single inserts and a retain).
        self.epochs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_idle_once_a_whole_epoch_passed_without_a_put() {
        let (a, b) = (Hash::of(b"a"), Hash::of(b"b"));
        let mut epochs = PutEpochs::default();
        assert!(epochs.is_idle(&a), "never put: idle");
        epochs.record(a);
        assert!(!epochs.is_idle(&a));
        epochs.advance();
        assert!(!epochs.is_idle(&a), "put in the previous epoch: recent");
        epochs.record(b);
        epochs.advance();
        assert!(epochs.is_idle(&a), "put two epochs ago: idle");
        assert!(!epochs.is_idle(&b));
        epochs.record(a);
        assert!(!epochs.is_idle(&a), "a new put makes it recent again");
        epochs.advance();
        epochs.advance();
        assert!(epochs.is_idle(&a) && epochs.is_idle(&b));
        assert_eq!(epochs.recent(), 0, "idle chunks are forgotten");
    }
}
