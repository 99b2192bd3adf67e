//! The registry's replicated state machine: LMDB tables inside the raft
//! crate's state environment, and `apply`, a pure function of (state,
//! command). No clock, randomness or I/O beyond the write transaction it is
//! handed; the actor and time come in the command.
//!
//! - `tables`: the table registry (open, snapshot export and import, digest), key layouts and
//!   value encoding;
//! - `apply`: the command dispatcher and one handler per command (`apply/*`);
//! - `requests`: request-id deduplication (decision 0009);
//! - `audit`: the audit hash chain;
//! - `query`: reads (models, versions, aliases, references, nodes, chunks, watch events).

mod apply;
mod audit;
mod query;
mod requests;
mod tables;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

use heed::{Env, RoTxn, RwTxn};

use crate::access_cache::{changes_access, AccessCache};
use crate::command::{Command, Response};
use crate::domain::DomainError;

pub use audit::{AuditEntry, AuditFilter, AuditPage, AUDIT_SCAN_ROWS_MAX};
pub use query::{
    tag_filter, CatalogHit, Decided, LineageGraph, LineageVersion, ReviewFilter, StoredPolicy,
};
pub use requests::{REQUEST_IDS_KEPT_ENTRIES, REQUEST_ID_BYTES_MAX};
use tables::Tables;

/// An error reading state: either the request names something that is not
/// there (a domain error) or storage failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("state storage: {0:#}")]
    Storage(#[from] anyhow::Error),
}

impl From<heed::Error> for AppError {
    fn from(e: heed::Error) -> Self {
        AppError::Storage(e.into())
    }
}

impl From<serde_json::Error> for AppError {
    fn from(e: serde_json::Error) -> Self {
        AppError::Storage(e.into())
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// The registry state machine (see `tables` for what each table holds).
pub struct RegistryApp {
    tables: Tables,
    /// What the access checks remember of tokens, grants and models: every write transaction
    /// that changes them is noted in it before it commits (see `crate::access_cache`).
    access: Arc<AccessCache>,
    /// PLANTED BUG `apply-skips-name-validation` (test only, set through `PlantedNodeBugs`):
    /// apply skips its field checks (`Op::check_fields`) and takes a command's model name and
    /// other fields on trust, so an empty name reaches LMDB as a key and fails there with a
    /// storage error, which stops Raft.
    skip_name_validation: std::sync::atomic::AtomicBool,
    /// PLANTED BUG `registrant-approval-counts` (test only, set through `PlantedNodeBugs`):
    /// a review decision does not know who registered the version, so the registrant's own
    /// approval passes the four-eyes check and counts.
    registrant_approves: std::sync::atomic::AtomicBool,
    /// PLANTED BUG `controller-skips-step` (test only, set through `PlantedNodeBugs`): a
    /// controller's `AdvanceRollout` moves two steps at once when the plan has them.
    controller_skips_step: std::sync::atomic::AtomicBool,
}

impl RegistryApp {
    /// The cache of what access checks read, kept fresh by this state's apply and import.
    pub fn access_cache(&self) -> Arc<AccessCache> {
        self.access.clone()
    }

    /// Plants the test-only bug `apply-skips-name-validation` (see the field).
    pub fn plant_skip_name_validation(&self, planted: bool) {
        self.skip_name_validation
            .store(planted, std::sync::atomic::Ordering::Relaxed);
    }

    /// Plants the test-only bug `registrant-approval-counts` (see the field).
    pub fn plant_registrant_approval_counts(&self, planted: bool) {
        self.registrant_approves
            .store(planted, std::sync::atomic::Ordering::Relaxed);
    }

    /// Plants the test-only bug `controller-skips-step` (see the field).
    pub fn plant_controller_skips_step(&self, planted: bool) {
        self.controller_skips_step
            .store(planted, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the planted bug has a controller's advance skip a step.
    pub(crate) fn controller_skips_step(&self) -> bool {
        self.controller_skips_step
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the planted bug lets a registrant approve.
    pub(crate) fn registrant_approves(&self) -> bool {
        self.registrant_approves
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the planted bug has the state take names on trust.
    pub(crate) fn names_on_trust(&self) -> bool {
        self.skip_name_validation
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl quiver_raft::App for RegistryApp {
    type Command = Command;
    type Response = Response;
    const MAX_DBS: u32 = Tables::COUNT as u32;

    fn open(env: &Env, wtxn: &mut RwTxn<'_>) -> anyhow::Result<Self> {
        let app = RegistryApp {
            tables: Tables::open(env, wtxn)?,
            access: Arc::default(),
            skip_name_validation: Default::default(),
            registrant_approves: Default::default(),
            controller_skips_step: Default::default(),
        };
        app.fill_catalog_if_missing(wtxn)
            .map_err(|e| anyhow::anyhow!("fill the catalog: {e}"))?;
        Ok(app)
    }

    fn apply(
        &self,
        wtxn: &mut RwTxn<'_>,
        log_index: u64,
        cmd: &Command,
    ) -> anyhow::Result<Response> {
        // Before anything is written: the note must precede the commit (whether this command
        // is then accepted, rejected or a retried copy does not matter; a note too many only
        // costs the cache a read).
        if changes_access(&cmd.op) {
            self.access.note_change(wtxn.id() as u64);
        }
        let storage = |e: AppError| anyhow::anyhow!("request ids: {e}");
        self.forget_old_requests(wtxn, log_index).map_err(storage)?;
        if let Some(id) = &cmd.request_id {
            // An id that cannot be a key is rejected before it is looked up or remembered.
            if let Err(e) = requests::check_request_id(id) {
                return Ok(Response::Rejected(e));
            }
            if let Some(first) = self.answered(wtxn, id).map_err(storage)? {
                // A retried copy of a request already applied: answer as the first copy did.
                return Ok(first);
            }
        }
        let response = match self.execute(wtxn, cmd) {
            Ok((response, subject, changes)) => {
                let detail = audit::audit_detail(cmd, &response);
                self.append_audit(wtxn, log_index, cmd, subject, detail)
                    .map_err(|e| anyhow::anyhow!("append audit entry: {e}"))?;
                self.append_watch(wtxn, cmd, changes)
                    .map_err(|e| anyhow::anyhow!("append watch events: {e}"))?;
                response
            }
            Err(AppError::Domain(e)) => Response::Rejected(e),
            Err(AppError::Storage(e)) => return Err(e),
        };
        if let Some(id) = &cmd.request_id {
            self.remember(wtxn, log_index, id, &response)
                .map_err(storage)?;
        }
        Ok(response)
    }

    fn export(&self, rtxn: &RoTxn<'_>, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
        self.tables.export(rtxn, out)
    }

    fn import(&self, wtxn: &mut RwTxn<'_>, data: &mut dyn std::io::Read) -> anyhow::Result<()> {
        // The whole state is replaced: whatever was remembered of the old one is stale.
        self.access.note_change(wtxn.id() as u64);
        self.tables.import(wtxn, data)?;
        self.fill_catalog_if_missing(wtxn)
            .map_err(|e| anyhow::anyhow!("fill the catalog: {e}"))
    }
}

impl RegistryApp {
    /// blake3 over every table in key order: equal on nodes with equal state.
    pub fn digest(&self, rtxn: &RoTxn<'_>) -> AppResult<String> {
        self.tables.digest(rtxn)
    }
}
