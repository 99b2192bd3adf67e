//! Manifests and chunks: what downloads stream, what repair should hold, what chunk GC keeps.

use std::collections::BTreeSet;

use heed::RoTxn;
use quiver_transfer::{Hash, Manifest};

use crate::command::InlineChunk;
use crate::domain::{DomainError, Version, VersionStatus};
use crate::logged_model::LoggedModel;
use crate::state::tables::{
    decode, decode_u64, logged_model_key, INLINE_BYTES_KEY, LOGGED_MODEL_PREFIX,
};
use crate::state::{AppError, AppResult, RegistryApp};

impl RegistryApp {
    /// A logged model (MLflow's), by id.
    pub fn get_logged_model(&self, rtxn: &RoTxn<'_>, id: &str) -> AppResult<LoggedModel> {
        crate::logged_model::validate_id("model_id", id)?;
        match self.tables.meta.get(rtxn, &logged_model_key(id))? {
            Some(bytes) => decode("logged model", bytes),
            None => Err(DomainError::LoggedModelNotFound { id: id.into() }.into()),
        }
    }

    pub fn manifest(&self, rtxn: &RoTxn<'_>, root: &str) -> AppResult<Manifest> {
        match self.tables.manifests.get(rtxn, root.as_bytes())? {
            Some(bytes) => decode("manifest", bytes),
            None => Err(AppError::Storage(anyhow::anyhow!(
                "manifest {root} is missing from state"
            ))),
        }
    }

    /// Every READY version's manifest root whose chunks live in the chunk stores, for repair:
    /// what this node should hold. Small versions whose chunks are in the state itself
    /// (`inline_chunks`) are not listed: every node has them once it has applied them. In key
    /// order, so repair walks versions deterministically.
    pub fn ready_manifest_roots(&self, rtxn: &RoTxn<'_>) -> AppResult<Vec<(String, u64, String)>> {
        let mut out = Vec::new();
        for row in self.tables.versions.iter(rtxn)? {
            let (_, v) = row?;
            let v: Version = decode("version", v)?;
            if v.status == VersionStatus::Ready
                && self
                    .tables
                    .inline_chunks
                    .prefix_iter(rtxn, v.manifest_root.as_bytes())?
                    .next()
                    .is_none()
            {
                out.push((v.model, v.number, v.manifest_root));
            }
        }
        Ok(out)
    }

    /// The chunks of the version with manifest `root` when they are kept in the state (a small
    /// version, decision 0010); `None` when they are in the chunk stores.
    pub fn inline_chunks(
        &self,
        rtxn: &RoTxn<'_>,
        root: &str,
    ) -> AppResult<Option<Vec<InlineChunk>>> {
        let mut chunks = Vec::new();
        for row in self
            .tables
            .inline_chunks
            .prefix_iter(rtxn, root.as_bytes())?
        {
            let (key, data) = row?;
            let hash = key
                .get(root.len()..)
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| {
                    AppError::Storage(anyhow::anyhow!("inline_chunks table: malformed key"))
                })?;
            chunks.push(InlineChunk {
                hash: Hash(hash),
                data: data.to_vec(),
            });
        }
        Ok((!chunks.is_empty()).then_some(chunks))
    }

    /// Bytes of every small version's chunks kept in the state (they count against the
    /// snapshot's size; proposers stop inlining at `INLINE_STATE_BYTES_MAX`).
    pub fn inline_bytes(&self, rtxn: &RoTxn<'_>) -> AppResult<u64> {
        Ok(match self.tables.meta.get(rtxn, INLINE_BYTES_KEY)? {
            Some(bytes) => decode_u64("meta table: malformed inline_bytes", bytes)?,
            None => 0,
        })
    }

    /// Every chunk some version's manifest refers to (what chunk GC keeps).
    pub fn referenced_chunks(&self, rtxn: &RoTxn<'_>) -> AppResult<BTreeSet<Hash>> {
        let mut out = BTreeSet::new();
        for row in self.tables.manifests.iter(rtxn)? {
            let (_, v) = row?;
            let manifest: Manifest = decode("manifest", v)?;
            out.extend(manifest.chunk_hashes());
        }
        // Logged models' files, which no version may reference yet.
        for row in self.tables.meta.prefix_iter(rtxn, LOGGED_MODEL_PREFIX)? {
            let (_, v) = row?;
            let model: LoggedModel = decode("logged model", v)?;
            out.extend(model.chunk_hashes());
        }
        Ok(out)
    }
}
