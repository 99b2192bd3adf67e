//! The export bundle (decision 0019): a JSON-lines file whose first line is a [`BundleHeader`] and
//! whose every further line is one `AuditRecord`, seq 1 first. The header carries the answering
//! node's certificate and its signature over [`bundle_statement`], which names the chain's
//! length and last hash: the chain commits to every record before it, so the signature covers
//! the whole log however long it is, and the node can sign before it streams a single record.

use serde::{Deserialize, Serialize};

/// The `format` of every bundle this build writes and reads.
pub const BUNDLE_FORMAT: &str = "quiver-audit-bundle/1";

/// The first line of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleHeader {
    pub format: String,
    /// The node that answered, and signed; its certificate names it (`quiver-node-{id}`).
    pub node_id: u64,
    pub exported_at_ms: i64,
    /// How many records follow, and the last one's hash (empty for none).
    pub count: u64,
    pub head_hash: String,
    /// The node's certificate (PEM), issued by the cluster CA.
    pub certificate_pem: String,
    /// The signature's scheme (`ecdsa_p256_sha256` or `ed25519`) and the signature (hex).
    pub signature_scheme: String,
    pub signature: String,
}

/// The bytes a bundle's signature covers: a tag, then the node, the time, the count (u64 and
/// i64 little-endian) and the head hash's bytes.
pub fn bundle_statement(node_id: u64, exported_at_ms: i64, count: u64, head_hash: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(BUNDLE_FORMAT.len() + 25 + head_hash.len());
    out.extend_from_slice(BUNDLE_FORMAT.as_bytes());
    out.push(0);
    out.extend_from_slice(&node_id.to_le_bytes());
    out.extend_from_slice(&exported_at_ms.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(head_hash.as_bytes());
    out
}
