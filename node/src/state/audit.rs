//! The audit log: every accepted mutation appends an entry whose hash chains to the one before
//! (`prev_hash` → `hash`), with its actor. The head of the chain is kept in `meta`.

use heed::{RoTxn, RwTxn};
use serde::{Deserialize, Serialize};

use super::tables::{decode, encode, AUDIT_HEAD_KEY};
use super::{AppResult, RegistryApp};
use crate::command::Command;
use crate::domain::Actor;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub log_index: u64,
    pub actor: Actor,
    pub at_ms: i64,
    pub kind: String,
    pub subject: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AuditHead {
    seq: u64,
    hash: String,
}

impl RegistryApp {
    /// Appends the entry of accepted command `cmd`, applied at `log_index`, about `subject`.
    pub(super) fn append_audit(
        &self,
        wtxn: &mut RwTxn<'_>,
        log_index: u64,
        cmd: &Command,
        subject: String,
    ) -> AppResult<()> {
        let head: AuditHead = match self.tables.meta.get(wtxn, AUDIT_HEAD_KEY)? {
            Some(bytes) => decode("audit head", bytes)?,
            None => AuditHead::default(),
        };
        let seq = head.seq + 1;
        let mut hasher = blake3::Hasher::new();
        hasher.update(head.hash.as_bytes());
        hasher.update(&log_index.to_le_bytes());
        hasher.update(&encode(cmd)?);
        let hash = hasher.finalize().to_hex().to_string();
        let entry = AuditEntry {
            seq,
            log_index,
            actor: cmd.actor.clone(),
            at_ms: cmd.at_ms,
            kind: cmd.op.kind().into(),
            subject,
            prev_hash: head.hash,
            hash: hash.clone(),
        };
        self.tables
            .audit
            .put(wtxn, &seq.to_be_bytes(), &encode(&entry)?)?;
        self.tables
            .meta
            .put(wtxn, AUDIT_HEAD_KEY, &encode(&AuditHead { seq, hash })?)?;
        Ok(())
    }

    /// The audit log in order (for verification and tests).
    pub fn audit_log(&self, rtxn: &RoTxn<'_>) -> AppResult<Vec<AuditEntry>> {
        let mut out = Vec::new();
        for row in self.tables.audit.iter(rtxn)? {
            let (_, v) = row?;
            out.push(decode("audit entry", v)?);
        }
        Ok(out)
    }
}
