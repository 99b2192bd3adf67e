//! Models, versions and aliases, listed in pages, and references resolved to one version.

use std::ops::Bound;

use heed::RoTxn;

use super::{page_size, tag_filter, tags_match};
use crate::domain::{
    stage_label, validate_name, Alias, DomainError, Model, Stage, Version, VersionRef,
    VersionSelector,
};
use crate::state::tables::{decode, key2, version_key};
use crate::state::{AppResult, RegistryApp};

impl RegistryApp {
    pub fn get_model(&self, rtxn: &RoTxn<'_>, name: &str) -> AppResult<Model> {
        // A name no model can have is refused before it reaches LMDB, which cannot look up an
        // empty or over-long key (unless the test-only plant turns the name checks off).
        if !self.names_on_trust() {
            validate_name("model", name)?;
        }
        match self.tables.models.get(rtxn, name.as_bytes())? {
            Some(bytes) => decode("model", bytes),
            None => Err(DomainError::ModelNotFound { name: name.into() }.into()),
        }
    }

    /// The model named `name`, or `None` when there is none (or the name is not one a model
    /// can have).
    pub fn find_model(&self, rtxn: &RoTxn<'_>, name: &str) -> AppResult<Option<Model>> {
        if validate_name("model", name).is_err() {
            return Ok(None);
        }
        self.tables
            .models
            .get(rtxn, name.as_bytes())?
            .map(|bytes| decode("model", bytes))
            .transpose()
    }

    /// Models in name order, from after `page_token`.
    pub fn list_models(
        &self,
        rtxn: &RoTxn<'_>,
        name_prefix: &str,
        tag: &str,
        page_size_requested: usize,
        page_token: &str,
    ) -> AppResult<(Vec<Model>, String)> {
        let size = page_size(page_size_requested);
        let filter = tag_filter(tag);
        let mut out: Vec<Model> = Vec::new();
        // LMDB refuses an empty key, so "no prefix" walks the whole table.
        type Rows<'t> = Box<dyn Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>> + 't>;
        let rows: Rows<'_> = if name_prefix.is_empty() {
            Box::new(self.tables.models.iter(rtxn)?)
        } else {
            Box::new(
                self.tables
                    .models
                    .prefix_iter(rtxn, name_prefix.as_bytes())?,
            )
        };
        for row in rows {
            let (k, v) = row?;
            if !page_token.is_empty() && k <= page_token.as_bytes() {
                continue;
            }
            let model: Model = decode("model", v)?;
            if !tags_match(&model.tags, filter) {
                continue;
            }
            if out.len() == size {
                let next = out.last().expect("page is not empty").name.clone();
                return Ok((out, next));
            }
            out.push(model);
        }
        Ok((out, String::new()))
    }

    pub fn get_version(&self, rtxn: &RoTxn<'_>, model: &str, number: u64) -> AppResult<Version> {
        match self
            .tables
            .versions
            .get(rtxn, &version_key(model, number))?
        {
            Some(bytes) => decode("version", bytes),
            None => {
                let m = self.get_model(rtxn, model)?;
                Err(DomainError::VersionNotFound {
                    model: model.into(),
                    number,
                    count: m.version_count,
                }
                .into())
            }
        }
    }

    /// Resolves `name/3`, `name@alias` or `name:stage` to one version. A
    /// stage holding several versions resolves to the newest.
    pub fn resolve(&self, rtxn: &RoTxn<'_>, reference: &VersionRef) -> AppResult<Version> {
        let model = &reference.model;
        match &reference.selector {
            VersionSelector::Number(n) => self.get_version(rtxn, model, *n),
            VersionSelector::Alias(alias) => {
                let a = self.get_alias(rtxn, model, alias)?;
                self.get_version(rtxn, model, a.version)
            }
            VersionSelector::Stage(stage) => {
                let stage = *stage;
                let m = self.get_model(rtxn, model)?;
                if stage == Stage::Production {
                    if let Some(n) = m.production_version {
                        return self.get_version(rtxn, model, n);
                    }
                } else {
                    let prefix = key2(model, &[]);
                    for row in self.tables.versions.rev_prefix_iter(rtxn, &prefix)? {
                        let (_, v) = row?;
                        let v: Version = decode("version", v)?;
                        if v.stage == stage {
                            return Ok(v);
                        }
                    }
                }
                Err(DomainError::StageEmpty {
                    model: model.clone(),
                    stage: stage_label(stage).into(),
                }
                .into())
            }
        }
    }

    /// Versions of a model in number order, from after `page_token`.
    pub fn list_versions(
        &self,
        rtxn: &RoTxn<'_>,
        model: &str,
        stage: Option<Stage>,
        tag: &str,
        page_size_requested: usize,
        page_token: &str,
    ) -> AppResult<(Vec<Version>, String)> {
        self.get_model(rtxn, model)?;
        let after: u64 = if page_token.is_empty() {
            0
        } else {
            page_token
                .parse()
                .map_err(|_| DomainError::invalid("page_token", "not a token this node issued"))?
        };
        let size = page_size(page_size_requested);
        let filter = tag_filter(tag);
        let start = version_key(model, after.saturating_add(1));
        let end = version_key(model, u64::MAX);
        let mut out: Vec<Version> = Vec::new();
        for row in self.tables.versions.range(
            rtxn,
            &(
                Bound::Included(start.as_slice()),
                Bound::Included(end.as_slice()),
            ),
        )? {
            let (_, v) = row?;
            let v: Version = decode("version", v)?;
            if stage.is_some_and(|s| s != v.stage) || !tags_match(&v.tags, filter) {
                continue;
            }
            if out.len() == size {
                let last = out.last().expect("page is not empty").number;
                return Ok((out, last.to_string()));
            }
            out.push(v);
        }
        Ok((out, String::new()))
    }

    pub fn get_alias(&self, rtxn: &RoTxn<'_>, model: &str, alias: &str) -> AppResult<Alias> {
        if !self.names_on_trust() {
            validate_name("model", model)?;
            validate_name("alias", alias)?;
        }
        match self
            .tables
            .aliases
            .get(rtxn, &key2(model, alias.as_bytes()))?
        {
            Some(bytes) => decode("alias", bytes),
            None => {
                self.get_model(rtxn, model)?;
                Err(DomainError::AliasNotFound {
                    model: model.into(),
                    alias: alias.into(),
                }
                .into())
            }
        }
    }

    /// Aliases of a model, keyed by alias name.
    pub fn aliases_of_model(&self, rtxn: &RoTxn<'_>, model: &str) -> AppResult<Vec<Alias>> {
        let mut out = Vec::new();
        for row in self.tables.aliases.prefix_iter(rtxn, &key2(model, &[]))? {
            let (_, v) = row?;
            out.push(decode("alias", v)?);
        }
        Ok(out)
    }

    pub(in crate::state) fn alias_count(&self, rtxn: &RoTxn<'_>, model: &str) -> AppResult<usize> {
        Ok(self
            .tables
            .aliases
            .prefix_iter(rtxn, &key2(model, &[]))?
            .count())
    }
}
