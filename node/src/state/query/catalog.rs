//! Catalog search (`crate::catalog`): the `catalog` table scanned in name order, each entry
//! refused on its stored bytes when it lacks one of the filter's fragments, else decoded and
//! matched exactly.

use std::collections::BTreeSet;
use std::ops::Bound;

use heed::RoTxn;
use memchr::memmem;

use super::page_size;
use crate::catalog::{CatalogEntry, Posting, SearchFilter};
use crate::domain::{validate_name, DomainError, Model, Stage};
use crate::state::tables::decode;
use crate::state::{AppResult, RegistryApp};

/// Model names in order, to be walked together with others.
enum Source {
    /// The names after this prefix in `catalog_index`.
    Keys(Vec<u8>),
    Names(BTreeSet<String>),
}

impl Source {
    /// The first name at or after `from`.
    fn seek(&self, app: &RegistryApp, rtxn: &RoTxn<'_>, from: &str) -> AppResult<Option<String>> {
        match self {
            Source::Names(names) => Ok(names.range(from.to_string()..).next().cloned()),
            Source::Keys(prefix) => {
                let mut key = prefix.clone();
                key.extend_from_slice(from.as_bytes());
                let bounds = (Bound::Included(key.as_slice()), Bound::Unbounded);
                match app.tables.catalog_index.range(rtxn, &bounds)?.next() {
                    Some(row) => {
                        let (k, _) = row?;
                        Ok(k.strip_prefix(prefix.as_slice())
                            .map(|name| String::from_utf8_lossy(name).into_owned()))
                    }
                    None => Ok(None),
                }
            }
        }
    }
}

/// A model a search found.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogHit {
    pub model: Model,
    pub entry: CatalogEntry,
    /// A version of the model that is not archived is downstream of a quarantine.
    pub quarantined: bool,
}

impl RegistryApp {
    /// The models `filter` matches whose namespace `visible` accepts, in name order, from after
    /// `page_token` (a model name, from the previous page); and the next page's token (empty
    /// after the last page).
    pub fn search_models(
        &self,
        rtxn: &RoTxn<'_>,
        filter: &SearchFilter,
        visible: &dyn Fn(&str) -> bool,
        page_size_requested: usize,
        page_token: &str,
    ) -> AppResult<(Vec<CatalogHit>, String)> {
        if !page_token.is_empty() {
            validate_name("page_token", page_token).map_err(|_| {
                DomainError::invalid(
                    "page_token",
                    "not a token this node issued: pass the next_page_token of the previous page",
                )
            })?;
        }
        let size = page_size(page_size_requested);
        let quarantined = self.quarantined_models(rtxn)?;
        let fragments = filter.fragments();
        let finders: Vec<memmem::Finder<'_>> = fragments.iter().map(memmem::Finder::new).collect();
        let mut out: Vec<CatalogHit> = Vec::new();
        // Whether the entry of model `name`, stored as `bytes`, is a hit; true when the page is
        // full and `name` starts the next one.
        let mut consider = |name: &[u8], bytes: &[u8]| -> AppResult<bool> {
            if !finders.iter().all(|f| f.find(bytes).is_some()) {
                return Ok(false);
            }
            let entry: CatalogEntry = decode("catalog entry", bytes)?;
            let name = String::from_utf8_lossy(name).into_owned();
            let is_quarantined = quarantined.contains(&name);
            if !filter.matches(&entry, is_quarantined) || !visible(&entry.namespace) {
                return Ok(false);
            }
            if out.len() == size {
                return Ok(true);
            }
            out.push(CatalogHit {
                model: self.get_model(rtxn, &name)?,
                entry,
                quarantined: is_quarantined,
            });
            Ok(false)
        };
        let next = |out: &[CatalogHit]| out.last().expect("page is not empty").model.name.clone();

        let mut sources: Vec<Source> = filter
            .postings()
            .into_iter()
            .map(|p| self.source(rtxn, p))
            .collect::<AppResult<_>>()?;
        if filter.quarantined == Some(true) {
            sources.push(Source::Names(quarantined.clone()));
        }
        if sources.is_empty() {
            // Nothing to narrow by: every entry, refused on its bytes where it can be.
            let start = match page_token {
                "" => Bound::Unbounded,
                token => Bound::Excluded(token.as_bytes()),
            };
            for row in self
                .tables
                .catalog
                .range(rtxn, &(start, Bound::Unbounded))?
            {
                let (name, bytes) = row?;
                if consider(name, bytes)? {
                    let token = next(&out);
                    return Ok((out, token));
                }
            }
            return Ok((out, String::new()));
        }
        let mut from = match page_token {
            "" => String::new(),
            token => format!("{token}\0"),
        };
        if let [Source::Keys(prefix)] = sources.as_slice() {
            // One source: its keys in one walk.
            let mut key = prefix.clone();
            key.extend_from_slice(from.as_bytes());
            let bounds = (Bound::Included(key.as_slice()), Bound::Unbounded);
            for row in self.tables.catalog_index.range(rtxn, &bounds)? {
                let (k, _) = row?;
                let Some(name) = k.strip_prefix(prefix.as_slice()) else {
                    break;
                };
                if let Some(bytes) = self.tables.catalog.get(rtxn, name)? {
                    if consider(name, bytes)? {
                        let token = next(&out);
                        return Ok((out, token));
                    }
                }
            }
            return Ok((out, String::new()));
        }
        // The names in every source, in order: each source in turn skips to the candidate
        // (the first name at or after it), until all agree.
        'names: loop {
            let Some(mut candidate) = sources[0].seek(self, rtxn, &from)? else {
                break;
            };
            let (mut agreed, mut i) = (1, 1 % sources.len());
            while agreed < sources.len() {
                let Some(name) = sources[i].seek(self, rtxn, &candidate)? else {
                    break 'names;
                };
                if name == candidate {
                    agreed += 1;
                } else {
                    (candidate, agreed) = (name, 1);
                }
                i = (i + 1) % sources.len();
            }
            if let Some(bytes) = self.tables.catalog.get(rtxn, candidate.as_bytes())? {
                if consider(candidate.as_bytes(), bytes)? {
                    let token = next(&out);
                    return Ok((out, token));
                }
            }
            // The smallest name after the candidate (names hold no NUL).
            from = format!("{candidate}\0");
        }
        Ok((out, String::new()))
    }

    /// Where a posting's names come from.
    fn source(&self, rtxn: &RoTxn<'_>, posting: Posting) -> AppResult<Source> {
        Ok(match posting {
            Posting::Exact(prefix) => Source::Keys(prefix),
            Posting::Prefix(start) => {
                let mut names = BTreeSet::new();
                for row in self.tables.catalog_index.prefix_iter(rtxn, &start)? {
                    let (key, _) = row?;
                    if let Some(at) = key.iter().position(|b| *b == 0) {
                        names.insert(String::from_utf8_lossy(&key[at + 1..]).into_owned());
                    }
                }
                Source::Names(names)
            }
        })
    }

    /// Model `name`'s catalog entry, if it has one.
    pub fn catalog_entry(&self, rtxn: &RoTxn<'_>, name: &str) -> AppResult<Option<CatalogEntry>> {
        if validate_name("model", name).is_err() {
            return Ok(None);
        }
        self.tables
            .catalog
            .get(rtxn, name.as_bytes())?
            .map(|bytes| decode("catalog entry", bytes))
            .transpose()
    }

    /// The models with a version that is not archived downstream of a quarantine in force (as
    /// far as each bounded impact walk reaches).
    pub fn quarantined_models(&self, rtxn: &RoTxn<'_>) -> AppResult<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        if self.tables.quarantines.is_empty(rtxn)? {
            return Ok(out);
        }
        for q in self.quarantines(rtxn)? {
            let graph = self.lineage_impact(rtxn, &q.entity)?;
            out.extend(
                graph
                    .versions
                    .into_iter()
                    .filter(|v| v.stage != Stage::Archived)
                    .map(|v| v.model),
            );
        }
        Ok(out)
    }
}
