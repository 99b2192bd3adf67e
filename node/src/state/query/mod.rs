//! Reads of the state: models, versions, aliases and references (`models`), the cluster's
//! nodes (`nodes`), manifests and chunks for downloads, repair and GC (`chunks`), tokens and
//! roles (`access`), policies, evaluations and gate reports (`governance`).

mod access;
mod catalog;
mod chunks;
mod deploy;
mod governance;
mod lineage;
mod models;
mod watch;

pub use catalog::CatalogHit;
pub use governance::{Decided, ReviewFilter, StoredPolicy};
pub use lineage::{LineageGraph, LineageVersion};
mod nodes;

use std::collections::BTreeMap;

use crate::domain::limits;

/// Parses a tag filter `key` or `key=value`.
pub fn tag_filter(filter: &str) -> Option<(&str, Option<&str>)> {
    if filter.is_empty() {
        return None;
    }
    Some(match filter.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (filter, None),
    })
}

fn tags_match(tags: &BTreeMap<String, String>, filter: Option<(&str, Option<&str>)>) -> bool {
    match filter {
        None => true,
        Some((k, None)) => tags.contains_key(k),
        Some((k, Some(v))) => tags.get(k).is_some_and(|t| t == v),
    }
}

fn page_size(requested: usize) -> usize {
    match requested {
        0 => limits::PAGE_SIZE_DEFAULT,
        n => n.min(limits::PAGE_SIZE_MAX),
    }
}
