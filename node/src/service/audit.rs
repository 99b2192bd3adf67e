//! The Audit service (decision 0019): list the log, verify this node's stored chain, export it
//! signed by this node's key. Listing one model's records needs the reader role on its namespace;
//! the whole log, verification and export need the reader role cluster-wide (an auditor).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use quiver_api::proto::{self, audit_server::Audit};
use quiver_audit::{bundle_statement, AuditRecord, ChainVerifier, BUNDLE_FORMAT};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{caller_reading, caller_with, consistency};
use crate::access::Target;
use crate::auth::Role;
use crate::node::{Consistency, Node};
use crate::state::AuditFilter;

/// Records per message of an export.
pub const EXPORT_BATCH_RECORDS: usize = 256;
/// Messages an export queues ahead of the client.
pub const EXPORT_QUEUE_DEPTH: usize = 4;
/// How long an export waits for a client that reads nothing before it lets it go.
pub const EXPORT_SEND_TIMEOUT: Duration = Duration::from_secs(60);

pub struct AuditService {
    pub node: Arc<Node>,
}

pub fn record_to_proto(r: AuditRecord) -> proto::AuditRecord {
    proto::AuditRecord {
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

/// A listing's page token: the sequence number (or id) of the last record it read.
pub(super) fn parse_page_token(token: &str) -> Result<u64, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    match token.parse::<u64>() {
        Ok(after) if token.len() <= 20 && !token.starts_with('+') => Ok(after),
        _ => Err(Status::invalid_argument(format!(
            "page_token: not a token this node gave ({} bytes); list again without one",
            token.len()
        ))),
    }
}

fn data_loss(node_id: u64, e: &quiver_audit::AuditBreak) -> Status {
    Status::data_loss(super::bounded(format!(
        "node {node_id} will not sign its audit chain: {e}"
    )))
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn list_audit(
        &self,
        request: Request<proto::ListAuditRequest>,
    ) -> Result<Response<proto::ListAuditResponse>, Status> {
        let model = request.get_ref().model.clone();
        caller_reading(
            &self.node,
            &request,
            &model,
            "read the whole audit log (give a model to read only its records)",
            "read the audit log of model",
        )
        .await?;
        let r = request.into_inner();
        let after = parse_page_token(&r.page_token)?;
        let filter = AuditFilter {
            model,
            since_ms: r.since_ms,
        };
        let page = self
            .node
            .read(consistency(r.consistency), |app, txn| {
                if !filter.model.is_empty() {
                    app.get_model(txn, &filter.model)?;
                }
                app.list_audit(txn, &filter, r.page_size as usize, after)
            })
            .await?;
        Ok(Response::new(proto::ListAuditResponse {
            records: page.records.into_iter().map(record_to_proto).collect(),
            next_page_token: page.next_after.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn verify_audit(
        &self,
        request: Request<proto::VerifyAuditRequest>,
    ) -> Result<Response<proto::VerifyAuditResponse>, Status> {
        caller_with(
            &self.node,
            &request,
            Role::Reader,
            Target::Cluster,
            "verify the audit log",
        )
        .await?;
        let verdict = self
            .node
            .read(Consistency::Stale, |app, txn| app.verify_audit(txn))
            .await?;
        let node_id = self.node.node_id();
        Ok(Response::new(match verdict {
            Ok(head) => proto::VerifyAuditResponse {
                node_id,
                ok: true,
                count: head.count,
                head_hash: head.hash,
                ..Default::default()
            },
            Err(e) => {
                tracing::error!(node_id, "audit chain broken: {e}");
                proto::VerifyAuditResponse {
                    node_id,
                    ok: false,
                    break_kind: e.kind().into(),
                    break_seq: e.seq(),
                    break_message: super::bounded(e.to_string()),
                    ..Default::default()
                }
            }
        }))
    }

    type ExportAuditStream =
        Pin<Box<dyn Stream<Item = Result<proto::ExportAuditChunk, Status>> + Send>>;

    async fn export_audit(
        &self,
        request: Request<proto::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        caller_with(
            &self.node,
            &request,
            Role::Reader,
            Target::Cluster,
            "export the audit log",
        )
        .await?;
        let node_id = self.node.node_id();
        let Some(certs) = self.node.host_certs() else {
            return Err(Status::failed_precondition(format!(
                "node {node_id} has no certificate to sign an export with"
            )));
        };
        // The node signs only a chain it has verified: the head it signs commits to every record.
        let head = self
            .node
            .read(Consistency::Stale, |app, txn| app.verify_audit(txn))
            .await?
            .map_err(|e| data_loss(node_id, &e))?;
        let exported_at_ms = self.node.clock.now_ms();
        let statement = bundle_statement(node_id, exported_at_ms, head.count, &head.hash);
        let (certificate_pem, scheme, signature) = certs
            .identity
            .sign(&statement)
            .map_err(|e| Status::internal(format!("node {node_id}: {e:#}")))?;
        let header = proto::AuditBundleHeader {
            format: BUNDLE_FORMAT.into(),
            node_id,
            exported_at_ms,
            count: head.count,
            head_hash: head.hash.clone(),
            certificate_pem,
            signature_scheme: scheme.into(),
            signature,
        };
        let (tx, rx) = mpsc::channel(EXPORT_QUEUE_DEPTH);
        let header = proto::ExportAuditChunk {
            part: Some(proto::export_audit_chunk::Part::Header(header)),
        };
        tx.send(Ok(header))
            .await
            .map_err(|_| Status::cancelled("client went away"))?;
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut verifier = ChainVerifier::new();
            let mut after = 0;
            while after < head.count {
                let want = EXPORT_BATCH_RECORDS.min((head.count - after) as usize);
                let batch = node
                    .read(Consistency::Stale, |app, txn| {
                        app.audit_records(txn, after, want)
                    })
                    .await;
                // Checked again as it goes out: a record changed since the first pass is not sent.
                let message = batch.map_err(Status::from).and_then(|records| {
                    for r in &records {
                        verifier.push(r).map_err(|e| data_loss(node_id, &e))?;
                    }
                    after = verifier.head().count;
                    Ok(records)
                });
                let message = message.and_then(|records| {
                    if records.is_empty() {
                        return Err(data_loss(
                            node_id,
                            &quiver_audit::AuditBreak::Missing {
                                seq: after + 1,
                                next_found: None,
                            },
                        ));
                    }
                    Ok(proto::ExportAuditChunk {
                        part: Some(proto::export_audit_chunk::Part::Records(
                            proto::AuditRecordBatch {
                                records: records.into_iter().map(record_to_proto).collect(),
                            },
                        )),
                    })
                });
                let failed = message.is_err();
                match tokio::time::timeout(EXPORT_SEND_TIMEOUT, tx.send(message)).await {
                    Ok(Ok(())) if !failed => {}
                    _ => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
