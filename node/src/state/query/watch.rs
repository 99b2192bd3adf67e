//! Reads of the watch log (decision 0024): the kept events after a revision that a filter asks
//! for, or word that they are no longer kept.

use std::ops::Bound;

use heed::RoTxn;

use crate::state::tables::decode;
use crate::state::{AppResult, RegistryApp};
use crate::watch::{
    WatchEvent, WatchFilter, WatchRead, WATCH_BATCH_EVENTS_MAX, WATCH_SCAN_EVENTS_MAX,
};

impl RegistryApp {
    /// (versions, deployment endpoints, the latest watch revision): what a metrics scrape
    /// shows of the state (table sizes are read from LMDB's own counts, not by a walk).
    pub fn counts(&self, rtxn: &RoTxn<'_>) -> AppResult<(u64, u64, u64)> {
        Ok((
            self.tables.versions.len(rtxn)?,
            self.tables.deployments.len(rtxn)?,
            self.watch_revision(rtxn)?,
        ))
    }

    /// The events after revision `after` that `filter` matches, at most
    /// `WATCH_BATCH_EVENTS_MAX`, reading at most `WATCH_SCAN_EVENTS_MAX` kept events; or
    /// `Behind` when some event after `after` is no longer kept. A revision beyond the latest
    /// reads nothing (a node behind another catches up; the service refuses such a revision
    /// once a linearizable read shows it is beyond the cluster's).
    pub fn watch_read(
        &self,
        rtxn: &RoTxn<'_>,
        filter: &WatchFilter,
        after: u64,
    ) -> AppResult<WatchRead> {
        let latest = self.watch_revision(rtxn)?;
        if after >= latest {
            return Ok(WatchRead::Events {
                events: Vec::new(),
                through: after,
            });
        }
        let oldest_kept = match self.tables.watch.first(rtxn)? {
            Some((k, _)) => crate::state::tables::decode_u64("watch revision key", k)?,
            None => latest + 1,
        };
        if after + 1 < oldest_kept {
            return Ok(WatchRead::Behind {
                oldest_kept,
                latest,
            });
        }
        let start = (after + 1).to_be_bytes();
        let bounds = (Bound::Included(&start[..]), Bound::Unbounded);
        let mut events = Vec::new();
        let mut through = after;
        for (scanned, row) in self.tables.watch.range(rtxn, &bounds)?.enumerate() {
            if scanned == WATCH_SCAN_EVENTS_MAX || events.len() == WATCH_BATCH_EVENTS_MAX {
                return Ok(WatchRead::Events { events, through });
            }
            let (_, bytes) = row?;
            let event: WatchEvent = decode("watch event", bytes)?;
            through = event.revision;
            if filter.matches(&event.change) {
                events.push(event);
            }
        }
        Ok(WatchRead::Events {
            events,
            through: latest,
        })
    }
}
