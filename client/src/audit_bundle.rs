//! Audit bundles (decision 0019): written from a node's `ExportAudit` stream, and verified
//! offline against the cluster CA's certificate alone: the node's certificate chains to the CA
//! (at the export's time) and names the node, its signature covers the header's statement, and
//! the records form an unbroken chain ending at the signed head.

use std::io::{BufRead, Write};

use quiver_audit::{bundle_statement, AuditBreak, AuditRecord, BundleHeader, ChainVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::proto;

/// Longest line a bundle may hold (a header or one record).
pub const BUNDLE_LINE_BYTES_MAX: usize = 1 << 20;

/// Why a bundle does not verify.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not an audit bundle: {0}")]
    Format(String),
    #[error("the bundle's certificate is not a node certificate of this CA: {0}")]
    Certificate(String),
    #[error("the bundle's signature does not verify: {0}")]
    Signature(String),
    #[error("{0}")]
    Chain(AuditBreak),
    #[error("read the bundle: {0}")]
    Io(#[from] std::io::Error),
}

pub fn record_from_proto(r: proto::AuditRecord) -> AuditRecord {
    AuditRecord {
        seq: r.seq,
        log_index: r.log_index,
        at_ms: r.at_ms,
        principal: r.principal,
        authenticated: r.authenticated,
        kind: r.kind,
        model: r.model,
        subject: r.subject,
        reason: r.reason,
        detail: r.detail,
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

pub fn header_from_proto(h: proto::AuditBundleHeader) -> BundleHeader {
    BundleHeader {
        format: h.format,
        node_id: h.node_id,
        exported_at_ms: h.exported_at_ms,
        count: h.count,
        head_hash: h.head_hash,
        certificate_pem: h.certificate_pem,
        signature_scheme: h.signature_scheme,
        signature: hex::encode(h.signature),
    }
}

/// Writes one line of a bundle.
pub fn write_line<T: serde::Serialize>(out: &mut impl Write, value: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// What a verified bundle holds.
#[derive(Debug)]
pub struct VerifiedBundle {
    pub header: BundleHeader,
}

/// Reads one line of at most [`BUNDLE_LINE_BYTES_MAX`] bytes; `None` at the end.
fn next_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> Result<bool, BundleError> {
    line.clear();
    let read = std::io::Read::take(&mut *input, BUNDLE_LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', line)?;
    if line.len() > BUNDLE_LINE_BYTES_MAX {
        return Err(BundleError::Format(format!(
            "a line is longer than {BUNDLE_LINE_BYTES_MAX} bytes"
        )));
    }
    Ok(read > 0)
}

/// Verifies the bundle read from `input` against the CA certificate `ca_pem`: its certificate,
/// its signature and its chain of records, in constant memory.
pub fn verify_bundle(
    input: &mut impl BufRead,
    ca_pem: &str,
) -> Result<VerifiedBundle, BundleError> {
    let mut line = Vec::new();
    if !next_line(input, &mut line)? {
        return Err(BundleError::Format("the file is empty".into()));
    }
    let header: BundleHeader = serde_json::from_slice(&line)
        .map_err(|e| BundleError::Format(format!("its first line is not a header: {e}")))?;
    if header.format != quiver_audit::BUNDLE_FORMAT {
        return Err(BundleError::Format(format!(
            "format {:?}, this build reads {:?}",
            header.format,
            quiver_audit::BUNDLE_FORMAT
        )));
    }
    check_signature(&header, ca_pem)?;
    let mut verifier = ChainVerifier::new();
    while next_line(input, &mut line)? {
        let seq = verifier.head().count + 1;
        let record: AuditRecord = serde_json::from_slice(&line).map_err(|e| {
            BundleError::Chain(AuditBreak::Unreadable {
                seq,
                error: e.to_string(),
            })
        })?;
        verifier.push(&record).map_err(BundleError::Chain)?;
    }
    verifier
        .finish(header.count, &header.head_hash)
        .map_err(BundleError::Chain)?;
    Ok(VerifiedBundle { header })
}

/// The header's certificate chains to the CA, was valid when the bundle was exported, names the
/// node the header names, and signed the header's statement.
fn check_signature(header: &BundleHeader, ca_pem: &str) -> Result<(), BundleError> {
    let cert_error = |e: String| BundleError::Certificate(e);
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| cert_error(format!("the CA file holds no certificate: {e}")))?;
    let node = CertificateDer::from_pem_slice(header.certificate_pem.as_bytes())
        .map_err(|e| cert_error(format!("the bundle holds no certificate: {e}")))?;
    let anchor = webpki::anchor_from_trusted_cert(&ca)
        .map_err(|e| cert_error(format!("the CA certificate: {e}")))?;
    let end_entity = webpki::EndEntityCert::try_from(&node)
        .map_err(|e| cert_error(format!("the node certificate: {e}")))?;
    let at_secs = u64::try_from(header.exported_at_ms.div_euclid(1000))
        .map_err(|_| cert_error("the export time is before the epoch".into()))?;
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(at_secs)),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            cert_error(format!(
                "not issued by this CA or not valid at the export time: {e}"
            ))
        })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&node)
        .map_err(|e| cert_error(format!("the node certificate: {e}")))?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default();
    let expected = format!("quiver-node-{}", header.node_id);
    if name != expected {
        return Err(cert_error(format!(
            "it names {name:?}, the bundle says it comes from {expected:?}"
        )));
    }
    let algorithm: &dyn rustls_pki_types::SignatureVerificationAlgorithm =
        match header.signature_scheme.as_str() {
            "ecdsa_p256_sha256" => webpki::ring::ECDSA_P256_SHA256,
            "ecdsa_p384_sha384" => webpki::ring::ECDSA_P384_SHA384,
            "ed25519" => webpki::ring::ED25519,
            other => return Err(BundleError::Signature(format!("unknown scheme {other:?}"))),
        };
    let signature = hex::decode(&header.signature)
        .map_err(|e| BundleError::Signature(format!("not hex: {e}")))?;
    let statement = bundle_statement(
        header.node_id,
        header.exported_at_ms,
        header.count,
        &header.head_hash,
    );
    end_entity
        .verify_signature(algorithm, &statement, &signature)
        .map_err(|e| {
            BundleError::Signature(format!(
                "{e}: the header was changed or not signed by node {}",
                header.node_id
            ))
        })
}
