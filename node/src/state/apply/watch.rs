//! The watch log (decision 0024): an accepted command's changes get the next revisions and are
//! kept for watchers; the oldest beyond `WATCH_EVENTS_KEPT` are removed in the same step, so the
//! table stays bounded and every node keeps the same events.

use heed::RwTxn;

use crate::command::Command;
use crate::state::tables::{decode_u64, encode, WATCH_REVISION_KEY};
use crate::state::{AppResult, RegistryApp};
use crate::watch::{Change, WatchEvent, WATCH_EVENTS_KEPT};

impl RegistryApp {
    /// Appends `changes`, made by accepted command `cmd`, with the next revisions.
    pub(in crate::state) fn append_watch(
        &self,
        wtxn: &mut RwTxn<'_>,
        cmd: &Command,
        changes: Vec<Change>,
    ) -> AppResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut revision = self.watch_revision(wtxn)?;
        for change in changes {
            revision += 1;
            let event = WatchEvent {
                revision,
                at_ms: cmd.at_ms,
                principal: cmd.actor.name.clone(),
                change,
            };
            self.tables
                .watch
                .put(wtxn, &revision.to_be_bytes(), &encode(&event)?)?;
            if revision > WATCH_EVENTS_KEPT {
                let dropped = revision - WATCH_EVENTS_KEPT;
                self.tables.watch.delete(wtxn, &dropped.to_be_bytes())?;
            }
        }
        self.tables
            .meta
            .put(wtxn, WATCH_REVISION_KEY, &revision.to_be_bytes())?;
        Ok(())
    }

    /// The latest revision given to a change (0: none yet).
    pub fn watch_revision(&self, txn: &heed::RoTxn<'_>) -> AppResult<u64> {
        match self.tables.meta.get(txn, WATCH_REVISION_KEY)? {
            Some(bytes) => decode_u64("watch revision", bytes),
            None => Ok(0),
        }
    }
}

/// Shorthands for the handlers.
impl super::Write<'_, '_> {
    pub(super) fn changed(&mut self, change: Change) {
        self.changes.push(change);
    }
}
