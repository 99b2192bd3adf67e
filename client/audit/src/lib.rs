//! The audit log's records as an auditor checks them (decision 0019): the canonical encoding a
//! record's hash covers, the blake3 chain and [`verify_chain`], which names the first break, and
//! the export bundle's format. Pure: no I/O, no clock, no cryptography beyond blake3. The node
//! stores and hashes records with it; the `quiver` CLI checks an exported bundle with it offline.

mod bundle;

pub use bundle::{bundle_statement, BundleHeader, BUNDLE_FORMAT};

use serde::{Deserialize, Serialize};

/// The first bytes a record's hash covers: a change of the encoding is a new tag.
pub const RECORD_DOMAIN: &[u8] = b"quiver-audit-record/1\0";

/// One accepted mutation, as stored and as exported. `hash` is the blake3 (hex) of
/// [`canonical_bytes`], which covers every other field, `prev_hash` included; the first record's
/// `prev_hash` is empty and `seq` counts from 1 without gaps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// The Raft log index of the entry whose command this records.
    pub log_index: u64,
    /// When the proposer stamped the command (its clock, milliseconds since the epoch).
    pub at_ms: i64,
    pub principal: String,
    /// False for an anonymous principal (where a node allows anonymous requests).
    pub authenticated: bool,
    /// What was done: `create_model`, `set_stage`, … (`Op::kind`).
    pub kind: String,
    /// The model the command named, or empty.
    pub model: String,
    /// The object acted on: `reco`, `reco/3`, `reco@champion`, `token abc`, …
    pub subject: String,
    /// The command's reason, where it has one (stage changes), else empty.
    pub reason: String,
    /// More about the decision (a gate report), else empty.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// The record's fields sealed: `hash` set to [`record_hash`] of the rest.
    pub fn sealed(mut self) -> AuditRecord {
        self.hash = record_hash(&self);
        self
    }
}

/// The bytes a record's hash covers: [`RECORD_DOMAIN`], then every field but `hash` in a fixed
/// order, integers little-endian, each text as its length (u64 LE) and its UTF-8 bytes. The same
/// record gives the same bytes on every node and in every build that keeps the tag.
pub fn canonical_bytes(r: &AuditRecord) -> Vec<u8> {
    let texts = [
        &r.principal,
        &r.kind,
        &r.model,
        &r.subject,
        &r.reason,
        &r.detail,
        &r.prev_hash,
    ];
    let mut out = Vec::with_capacity(
        RECORD_DOMAIN.len() + 25 + texts.iter().map(|t| 8 + t.len()).sum::<usize>(),
    );
    out.extend_from_slice(RECORD_DOMAIN);
    out.extend_from_slice(&r.seq.to_le_bytes());
    out.extend_from_slice(&r.log_index.to_le_bytes());
    out.extend_from_slice(&r.at_ms.to_le_bytes());
    out.push(u8::from(r.authenticated));
    for text in texts {
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out
}

/// blake3 (hex) of [`canonical_bytes`].
pub fn record_hash(r: &AuditRecord) -> String {
    blake3::hash(&canonical_bytes(r)).to_hex().to_string()
}

/// The first place a chain is not what it claims, with the sequence number it concerns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditBreak {
    /// The record's fields do not hash to its stored hash: it was changed after it was written.
    #[error("audit record {seq} was altered: its fields hash to {computed}, it claims {stored}")]
    Altered {
        seq: u64,
        stored: String,
        computed: String,
    },
    /// A record is not there: the next one found is `next_found` (none: the chain ends early).
    #[error("audit record {seq} is missing ({})", match next_found {
        Some(next) => format!("the next record stored is {next}"),
        None => "the chain ends before it".to_string(),
    })]
    Missing { seq: u64, next_found: Option<u64> },
    /// A record came where a later one was due (repeated or reordered).
    #[error("audit record {seq} is out of order: record {expected} was due")]
    OutOfOrder { seq: u64, expected: u64 },
    /// The record does not name its predecessor's hash.
    #[error("audit record {seq} does not link to its predecessor: its prev_hash is {prev_hash:?}, the predecessor's hash is {expected:?}")]
    BrokenLink {
        seq: u64,
        prev_hash: String,
        expected: String,
    },
    /// The stored bytes of the record cannot be read as a record at all.
    #[error("audit record {seq} is unreadable: {error}")]
    Unreadable { seq: u64, error: String },
    /// The chain verifies but ends at another hash than the one it was claimed to end at
    /// (the store's head, a bundle's signed head).
    #[error(
        "the audit chain holds {computed} (its last is record {seq}), but its head claims {claimed}"
    )]
    HeadMismatch {
        seq: u64,
        claimed: String,
        computed: String,
    },
}

impl AuditBreak {
    /// The sequence number the break names.
    pub fn seq(&self) -> u64 {
        match self {
            AuditBreak::Altered { seq, .. }
            | AuditBreak::Missing { seq, .. }
            | AuditBreak::OutOfOrder { seq, .. }
            | AuditBreak::BrokenLink { seq, .. }
            | AuditBreak::Unreadable { seq, .. }
            | AuditBreak::HeadMismatch { seq, .. } => *seq,
        }
    }

    /// A short name of the kind of break (`altered`, `missing`, …), for the API and scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditBreak::Altered { .. } => "altered",
            AuditBreak::Missing { .. } => "missing",
            AuditBreak::OutOfOrder { .. } => "out_of_order",
            AuditBreak::BrokenLink { .. } => "broken_link",
            AuditBreak::Unreadable { .. } => "unreadable",
            AuditBreak::HeadMismatch { .. } => "head_mismatch",
        }
    }
}

/// Where a verified chain ends: how many records and the last one's hash (empty for none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainHead {
    pub count: u64,
    pub hash: String,
}

/// Checks a chain one record at a time, in order, from seq 1, holding only the last hash: a
/// store or a bundle of any length is verified in constant memory.
#[derive(Clone, Debug, Default)]
pub struct ChainVerifier {
    head: ChainHead,
}

impl ChainVerifier {
    pub fn new() -> ChainVerifier {
        ChainVerifier::default()
    }

    /// Checks the next record: its seq is the next one, its fields hash to its hash, and it
    /// names its predecessor's hash.
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), AuditBreak> {
        let expected = self.head.count + 1;
        if r.seq > expected {
            return Err(AuditBreak::Missing {
                seq: expected,
                next_found: Some(r.seq),
            });
        }
        if r.seq < expected {
            return Err(AuditBreak::OutOfOrder {
                seq: r.seq,
                expected,
            });
        }
        let computed = record_hash(r);
        if computed != r.hash {
            return Err(AuditBreak::Altered {
                seq: r.seq,
                stored: r.hash.clone(),
                computed,
            });
        }
        if r.prev_hash != self.head.hash {
            return Err(AuditBreak::BrokenLink {
                seq: r.seq,
                prev_hash: r.prev_hash.clone(),
                expected: self.head.hash.clone(),
            });
        }
        self.head = ChainHead {
            count: r.seq,
            hash: r.hash.clone(),
        };
        Ok(())
    }

    /// Records checked so far and the last one's hash.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// Ends the check against the head the chain was claimed to have (`count` records, the last
    /// hashing to `hash`): fewer records is a missing one, another hash a mismatch.
    pub fn finish(self, count: u64, hash: &str) -> Result<ChainHead, AuditBreak> {
        if count > self.head.count {
            return Err(AuditBreak::Missing {
                seq: self.head.count + 1,
                next_found: None,
            });
        }
        if count < self.head.count || hash != self.head.hash {
            return Err(AuditBreak::HeadMismatch {
                seq: self.head.count,
                claimed: format!("{count} records ending at {hash:?}"),
                computed: format!("{} records ending at {:?}", self.head.count, self.head.hash),
            });
        }
        Ok(self.head)
    }
}

/// Verifies a whole chain in memory (seq 1 first); the head it ends at, or the first break.
pub fn verify_chain(records: &[AuditRecord]) -> Result<ChainHead, AuditBreak> {
    let mut verifier = ChainVerifier::new();
    for r in records {
        verifier.push(r)?;
    }
    Ok(verifier.head)
}

#[cfg(test)]
mod tests;
