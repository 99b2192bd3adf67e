//! The audit log: every accepted mutation appends a self-verifying record (`quiver_audit`,
//! decision 0019) whose hash covers its own fields and its predecessor's hash. The head of the
//! chain (count and last hash) is kept in `meta`, so a record cut from the end is found too.

use heed::{RoTxn, RwTxn};
use quiver_audit::{AuditBreak, AuditRecord, ChainHead, ChainVerifier};
use serde::{Deserialize, Serialize};

use super::tables::{decode, encode, AUDIT_HEAD_KEY};
use super::{AppResult, RegistryApp};
use crate::command::Command;
use crate::domain::limits;

/// The replicated audit record (the same type the client checks bundles with).
pub type AuditEntry = AuditRecord;

/// Most rows one page of [`RegistryApp::list_audit`] reads, matching or not: a filter that
/// matches rarely answers a short page and a token to go on rather than walk the whole log.
pub const AUDIT_SCAN_ROWS_MAX: usize = 10_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AuditHead {
    seq: u64,
    hash: String,
}

/// Which records a listing wants.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only records naming this model (empty: every record).
    pub model: String,
    /// Only records stamped at or after this time.
    pub since_ms: i64,
}

/// One page of a listing, and the sequence number to go on after (none: the log's end).
#[derive(Clone, Debug, Default)]
pub struct AuditPage {
    pub records: Vec<AuditEntry>,
    pub next_after: Option<u64>,
}

impl RegistryApp {
    /// Appends the record of accepted command `cmd`, applied at `log_index`, about `subject`.
    pub(super) fn append_audit(
        &self,
        wtxn: &mut RwTxn<'_>,
        log_index: u64,
        cmd: &Command,
        subject: String,
        detail: String,
    ) -> AppResult<()> {
        let head = self.audit_head_row(wtxn)?;
        let record = AuditRecord {
            seq: head.seq + 1,
            log_index,
            at_ms: cmd.at_ms,
            principal: cmd.actor.name.clone(),
            authenticated: cmd.actor.authenticated,
            kind: cmd.op.kind().into(),
            model: cmd.op.model_name().unwrap_or_default().into(),
            subject,
            reason: cmd.op.reason().unwrap_or_default().into(),
            detail,
            prev_hash: head.hash,
            hash: String::new(),
        }
        .sealed();
        self.tables
            .audit
            .put(wtxn, &record.seq.to_be_bytes(), &encode(&record)?)?;
        let head = AuditHead {
            seq: record.seq,
            hash: record.hash,
        };
        self.tables
            .meta
            .put(wtxn, AUDIT_HEAD_KEY, &encode(&head)?)?;
        Ok(())
    }

    fn audit_head_row(&self, rtxn: &RoTxn<'_>) -> AppResult<AuditHead> {
        Ok(match self.tables.meta.get(rtxn, AUDIT_HEAD_KEY)? {
            Some(bytes) => decode("audit head", bytes)?,
            None => AuditHead::default(),
        })
    }

    /// How many records the log holds and the last one's hash, as the state's head says.
    pub fn audit_head(&self, rtxn: &RoTxn<'_>) -> AppResult<ChainHead> {
        let head = self.audit_head_row(rtxn)?;
        Ok(ChainHead {
            count: head.seq,
            hash: head.hash,
        })
    }

    /// The audit log in order (for the simulator's checks and tests).
    pub fn audit_log(&self, rtxn: &RoTxn<'_>) -> AppResult<Vec<AuditEntry>> {
        self.audit_records(rtxn, 0, usize::MAX)
    }

    /// Up to `limit` records after seq `after`, in order.
    pub fn audit_records(
        &self,
        rtxn: &RoTxn<'_>,
        after: u64,
        limit: usize,
    ) -> AppResult<Vec<AuditEntry>> {
        let mut out = Vec::new();
        let Some(first) = after.checked_add(1) else {
            return Ok(out);
        };
        let from = first.to_be_bytes();
        let range = (
            std::ops::Bound::Included(&from[..]),
            std::ops::Bound::Unbounded,
        );
        for row in self.tables.audit.range(rtxn, &range)? {
            if out.len() == limit {
                break;
            }
            let (_, v) = row?;
            out.push(decode("audit entry", v)?);
        }
        Ok(out)
    }

    /// One page of the records after seq `after` that pass `filter`: at most `page_size`
    /// (0: the default, capped at the maximum) of them, reading at most
    /// [`AUDIT_SCAN_ROWS_MAX`] rows.
    pub fn list_audit(
        &self,
        rtxn: &RoTxn<'_>,
        filter: &AuditFilter,
        page_size_requested: usize,
        after: u64,
    ) -> AppResult<AuditPage> {
        let size = match page_size_requested {
            0 => limits::PAGE_SIZE_DEFAULT,
            n => n.min(limits::PAGE_SIZE_MAX),
        };
        let mut page = AuditPage::default();
        let Some(first) = after.checked_add(1) else {
            return Ok(page);
        };
        let from = first.to_be_bytes();
        let range = (
            std::ops::Bound::Included(&from[..]),
            std::ops::Bound::Unbounded,
        );
        // A record of another model is passed over on its bytes, undecoded (model names need
        // no escaping in JSON).
        let model_field = format!("\"model\":\"{}\"", filter.model);
        let other_model = memchr::memmem::Finder::new(model_field.as_bytes());
        let mut last_seen = after;
        // Rows are read only until the page is full or the scan's bound is met.
        for (scanned, row) in self.tables.audit.range(rtxn, &range)?.enumerate() {
            if page.records.len() == size || scanned == AUDIT_SCAN_ROWS_MAX {
                page.next_after = Some(last_seen);
                return Ok(page);
            }
            let (key, v) = row?;
            if !filter.model.is_empty() && other_model.find(v).is_none() {
                if let Ok(seq) = <[u8; 8]>::try_from(key) {
                    last_seen = u64::from_be_bytes(seq);
                    continue;
                }
            }
            let record: AuditEntry = decode("audit entry", v)?;
            last_seen = record.seq;
            let wanted = (filter.model.is_empty() || record.model == filter.model)
                && record.at_ms >= filter.since_ms;
            if wanted {
                page.records.push(record);
            }
        }
        Ok(page)
    }

    /// Verifies the chain this state holds, record by record in constant memory, and its end
    /// against the stored head: the head (count and last hash), or the first break. A row
    /// whose bytes are not a record, or whose key is not its seq, is a break, not an error.
    pub fn verify_audit(&self, rtxn: &RoTxn<'_>) -> AppResult<Result<ChainHead, AuditBreak>> {
        let mut verifier = ChainVerifier::new();
        for row in self.tables.audit.iter(rtxn)? {
            let (key, value) = row?;
            let key_seq = <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes);
            let seq = key_seq.unwrap_or(verifier.head().count + 1);
            let record: AuditRecord = match serde_json::from_slice(value) {
                Ok(record) => record,
                Err(e) => {
                    return Ok(Err(AuditBreak::Unreadable {
                        seq,
                        error: e.to_string(),
                    }))
                }
            };
            if key_seq != Some(record.seq) {
                return Ok(Err(AuditBreak::Unreadable {
                    seq,
                    error: format!(
                        "stored under key {seq}, it says it is record {}",
                        record.seq
                    ),
                }));
            }
            if let Err(e) = verifier.push(&record) {
                return Ok(Err(e));
            }
        }
        let head = self.audit_head(rtxn)?;
        Ok(verifier.finish(head.count, &head.hash))
    }
}

/// What an audit record adds beside its subject: the gate report of the stage change this
/// command made (or of the review it opened or decided), so the log shows what allowed it.
pub(super) fn audit_detail(cmd: &Command, response: &crate::command::Response) -> String {
    use crate::command::Response;
    let (version, review) = match response {
        Response::Version(v) => (v.as_ref(), None),
        Response::Evaluation(e) => (&e.1, None),
        Response::Review(r) => (&r.1, Some(&r.0)),
        Response::Deployment(d) => return format!("traffic: {}", d.describe_traffic()),
        Response::ServingReport(r) if r.1 => {
            return format!("rolled back; traffic: {}", r.0.describe_traffic())
        }
        _ => return String::new(),
    };
    let moved = version
        .stage_history
        .last()
        .filter(|t| t.at_ms == cmd.at_ms && t.actor == cmd.actor)
        .and_then(|t| t.gate_report.as_ref());
    match (moved, review) {
        (Some(report), _) => report.summary(),
        (None, Some(review)) => format!("review #{} waits: {}", review.id, review.report.summary()),
        (None, None) => String::new(),
    }
}
