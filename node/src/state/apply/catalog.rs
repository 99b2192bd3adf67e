//! Keeps a model's catalog entry (`crate::catalog`) current: every handler that writes a model
//! record, or moves a version between stages, calls [`update`] in the same transaction.

use heed::RwTxn;

use super::Write;
use crate::catalog::CatalogEntry;
use crate::domain::{Model, Stage, Version};
use crate::state::tables::{decode, encode, key2};
use crate::state::{AppResult, RegistryApp};

/// What happened to the model whose entry is updated.
pub(super) enum Event<'v> {
    /// The model's own fields changed (created, described, tagged, a version numbered).
    Described,
    /// Version `v` was registered (in its first stage).
    Registered(&'v Version),
    /// Version `v` moved from `from` to the stage it is in now.
    Moved { from: Stage, v: &'v Version },
}

/// Writes `m`'s entry as `m` is now, after `event`.
pub(super) fn update(w: &mut Write<'_, '_>, m: &Model, event: Event<'_>) -> AppResult<()> {
    let t = &w.app.tables;
    let mut entry: CatalogEntry = match t.catalog.get(w.wtxn, m.name.as_bytes())? {
        Some(bytes) => decode("catalog entry", bytes)?,
        None => CatalogEntry::default(),
    };
    let before = entry.index_keys(&m.name);
    match event {
        Event::Described => {}
        Event::Registered(v) => {
            entry.count(v.stage, true);
            entry.latest_metrics = v.metadata.metrics.clone();
        }
        Event::Moved { from, v } => {
            entry.count(from, false);
            entry.count(v.stage, true);
            if v.stage == Stage::Production {
                entry.production_metrics = v.metadata.metrics.clone();
            }
        }
    }
    entry.describe(m);
    let after = entry.index_keys(&m.name);
    for gone in before.difference(&after) {
        t.catalog_index.delete(w.wtxn, gone)?;
    }
    for new in after.difference(&before) {
        t.catalog_index.put(w.wtxn, new, &[])?;
    }
    t.catalog.put(w.wtxn, m.name.as_bytes(), &encode(&entry)?)?;
    Ok(())
}

impl RegistryApp {
    /// Fills the catalog from the models and versions when it is empty and they are not: a
    /// state written before the catalog existed (opened, or installed from such a snapshot).
    /// Every node derives the same entries from the same state.
    pub(in crate::state) fn fill_catalog_if_missing(&self, wtxn: &mut RwTxn<'_>) -> AppResult<()> {
        let t = &self.tables;
        if !t.catalog.is_empty(wtxn)? || t.models.is_empty(wtxn)? {
            return Ok(());
        }
        let mut entries = Vec::new();
        for row in t.models.iter(wtxn)? {
            let (_, bytes) = row?;
            let m: Model = decode("model", bytes)?;
            let mut entry = CatalogEntry::default();
            for row in t.versions.prefix_iter(wtxn, &key2(&m.name, &[]))? {
                let (_, bytes) = row?;
                let v: Version = decode("version", bytes)?;
                entry.count(v.stage, true);
                if v.number == m.version_count {
                    entry.latest_metrics = v.metadata.metrics.clone();
                }
                if Some(v.number) == m.production_version {
                    entry.production_metrics = v.metadata.metrics.clone();
                }
            }
            entry.describe(&m);
            entries.push((m.name, entry));
        }
        t.catalog_index.clear(wtxn)?;
        for (name, entry) in entries {
            for key in entry.index_keys(&name) {
                t.catalog_index.put(wtxn, &key, &[])?;
            }
            t.catalog.put(wtxn, name.as_bytes(), &encode(&entry)?)?;
        }
        Ok(())
    }
}
