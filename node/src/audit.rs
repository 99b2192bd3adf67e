//! The audit chain of a stopped node, checked offline (`quiver-node audit verify`); a running
//! node answers the Audit service's `VerifyAudit` from the same `RegistryApp::verify_audit`.

use std::path::Path;

use anyhow::Context as _;
use quiver_audit::{AuditBreak, ChainHead};

use crate::state::RegistryApp;

/// Verifies the audit chain stored in `data_dir`: its head, or the first break. Fails if the
/// node is running (it holds the data dir's lock) or the state cannot be opened.
pub fn verify_data_dir(data_dir: &Path) -> anyhow::Result<Result<ChainHead, AuditBreak>> {
    let _lock = crate::node::lock_data_dir(data_dir)?;
    let (_log, state) = quiver_raft::open_storage::<RegistryApp>(&data_dir.join("raft"))
        .with_context(|| {
            format!(
                "open the state in {} (stop the node first)",
                data_dir.display()
            )
        })?;
    let (_, verdict) = state.read_applied(|app, txn| {
        app.verify_audit(txn)
            .map_err(|e| anyhow::anyhow!("read the audit log: {e}"))
    })?;
    Ok(verdict)
}
