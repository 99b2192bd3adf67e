//! `CreateVersion`: registers a version of a model, numbered here, at apply. A small version
//! keeps its chunks in the state (decision 0010).

use std::collections::{BTreeMap, BTreeSet};

use quiver_transfer::{Hash, Manifest};

use super::{Applied, Write};
use crate::command::{InlineChunk, Response};
use crate::domain::{
    limits, DomainError, FileInfo, Signature, Stage, StageTransition, Version, VersionMetadata,
    VersionStatus,
};
use crate::state::tables::{decode_u64, encode, inline_key, key2, version_key, INLINE_BYTES_KEY};
use crate::state::AppResult;

/// The fields of `Op::CreateVersion`.
pub(super) struct NewVersion<'a> {
    pub model: &'a str,
    pub manifest: &'a Manifest,
    pub manifest_root: &'a str,
    pub signature: &'a Signature,
    pub metadata: &'a VersionMetadata,
    pub tags: &'a BTreeMap<String, String>,
    pub status: VersionStatus,
    pub inline_chunks: &'a [InlineChunk],
}

pub(super) fn create_version(w: &mut Write<'_, '_>, new: &NewVersion<'_>) -> AppResult<Applied> {
    let NewVersion {
        model,
        manifest,
        manifest_root,
        signature,
        metadata,
        tags,
        status,
        inline_chunks,
    } = *new;
    let tables = &w.app.tables;
    let mut m = w.app.get_model(w.wtxn, model)?;
    validate_inline_chunks(manifest, inline_chunks)?;
    let root = manifest.root().to_hex();
    if root != manifest_root {
        return Err(DomainError::invalid(
            "manifest_root",
            format!("{manifest_root} does not match the manifest (its root is {root})"),
        )
        .into());
    }
    let root_key = key2(model, root.as_bytes());
    if let Some(existing) = tables.roots.get(w.wtxn, &root_key)? {
        let number = decode_u64("roots table: malformed version number", existing)?;
        return Err(DomainError::DuplicateBundle {
            model: model.into(),
            number,
            root,
        }
        .into());
    }
    m.version_count += 1;
    let number = m.version_count;
    let version = Version {
        model: model.into(),
        number,
        manifest_root: root.clone(),
        files: manifest
            .files
            .iter()
            .map(|f| FileInfo {
                path: f.path.clone(),
                size_bytes: f.size_bytes,
                mode: f.mode,
                chunk_count: f.chunks.len() as u32,
            })
            .collect(),
        total_size_bytes: manifest.total_size_bytes(),
        signature: signature.clone(),
        metadata: metadata.clone(),
        created_by: w.actor.clone(),
        created_at_ms: w.at_ms,
        tags: tags.clone(),
        stage: Stage::Experimental,
        status,
        stage_history: vec![StageTransition {
            from: None,
            to: Stage::Experimental,
            actor: w.actor.clone(),
            at_ms: w.at_ms,
            reason: "registered".into(),
            gate_report: None,
        }],
    };
    tables.models.put(w.wtxn, model.as_bytes(), &encode(&m)?)?;
    tables
        .versions
        .put(w.wtxn, &version_key(model, number), &encode(&version)?)?;
    super::catalog::update(w, &m, super::catalog::Event::Registered(&version))?;
    let tables = &w.app.tables;
    tables.roots.put(w.wtxn, &root_key, &number.to_be_bytes())?;
    tables
        .manifests
        .put(w.wtxn, root.as_bytes(), &encode(manifest)?)?;
    if !inline_chunks.is_empty() {
        let mut added = 0u64;
        for chunk in inline_chunks {
            tables
                .inline_chunks
                .put(w.wtxn, &inline_key(&root, &chunk.hash), &chunk.data)?;
            added += chunk.data.len() as u64;
        }
        let total = w.app.inline_bytes(w.wtxn)? + added;
        tables
            .meta
            .put(w.wtxn, INLINE_BYTES_KEY, &total.to_be_bytes())?;
    }
    super::lineage::record_registration_edges(w, model, number, metadata, tags)?;
    w.changed(crate::watch::Change::VersionCreated {
        model: model.to_string(),
        number,
        status: version.status,
    });
    Ok((
        Response::Version(Box::new(version)),
        format!("{model}/{number}"),
    ))
}

/// A version's inline chunks are all of its chunks or none: each distinct chunk of the manifest
/// exactly once, with bytes that hash to it, `INLINE_VERSION_BYTES_MAX` bytes at most.
fn validate_inline_chunks(manifest: &Manifest, inline: &[InlineChunk]) -> Result<(), DomainError> {
    if inline.is_empty() {
        return Ok(());
    }
    let invalid = |message: String| DomainError::invalid("inline_chunks", message);
    let total: usize = inline.iter().map(|c| c.data.len()).sum();
    if total > limits::INLINE_VERSION_BYTES_MAX {
        return Err(invalid(format!(
            "{total} bytes inline; at most {} may travel in the command, send bigger versions \
             through the chunk stores",
            limits::INLINE_VERSION_BYTES_MAX
        )));
    }
    let wanted: BTreeSet<_> = manifest.chunk_hashes().collect();
    let mut seen = BTreeSet::new();
    for chunk in inline {
        if !wanted.contains(&chunk.hash) {
            return Err(invalid(format!(
                "chunk {} is not in the manifest",
                chunk.hash
            )));
        }
        if !seen.insert(chunk.hash) {
            return Err(invalid(format!("chunk {} is given twice", chunk.hash)));
        }
        let actual = Hash::of(&chunk.data);
        if actual != chunk.hash {
            return Err(invalid(format!(
                "the bytes given for chunk {} hash to {actual}",
                chunk.hash
            )));
        }
    }
    if seen.len() != wanted.len() {
        return Err(invalid(format!(
            "{} of the manifest's {} chunks are given; give all or none",
            seen.len(),
            wanted.len()
        )));
    }
    Ok(())
}
