//! The Audit service: list the log, verify a node's chain, export it as a signed bundle.

use std::io::Write;

use futures::StreamExt as _;
use tonic::transport::Channel;

use super::{Client, ClientError, MESSAGE_BYTES_MAX};
use crate::audit_bundle::{header_from_proto, record_from_proto, write_line};
use crate::proto::audit_client::AuditClient;
use crate::proto::{
    export_audit_chunk, ExportAuditRequest, ListAuditRequest, ListAuditResponse,
    VerifyAuditRequest, VerifyAuditResponse,
};

/// What an export wrote.
#[derive(Debug)]
pub struct ExportSummary {
    pub node_id: u64,
    pub count: u64,
    pub head_hash: String,
}

impl Client {
    fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel.clone()).max_decoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub async fn list_audit(
        &self,
        request: ListAuditRequest,
    ) -> Result<ListAuditResponse, ClientError> {
        let request = self.request(request)?;
        Ok(self.audit().list_audit(request).await?.into_inner())
    }

    /// The answering node's verdict on its own stored chain.
    pub async fn verify_audit(&self) -> Result<VerifyAuditResponse, ClientError> {
        let request = self.request(VerifyAuditRequest {})?;
        Ok(self.audit().verify_audit(request).await?.into_inner())
    }

    /// Streams the node's signed export into `out` as a bundle (JSON lines: the header, then
    /// one record per line). Checks only that the node sent what its header announced; the
    /// bundle's own check is `audit_bundle::verify_bundle`.
    pub async fn export_audit(&self, out: &mut impl Write) -> Result<ExportSummary, ClientError> {
        let io = |e: std::io::Error| ClientError::io("write the audit bundle", e);
        let request = self.request(ExportAuditRequest {})?;
        let mut stream = self.audit().export_audit(request).await?.into_inner();
        let protocol = |what: &str| ClientError::Verify(format!("audit export: {what}"));
        let header = match stream.next().await {
            Some(Ok(chunk)) => match chunk.part {
                Some(export_audit_chunk::Part::Header(h)) => header_from_proto(h),
                _ => return Err(protocol("the first message is not the header")),
            },
            Some(Err(status)) => return Err(status.into()),
            None => return Err(protocol("the node sent nothing")),
        };
        write_line(out, &header).map_err(io)?;
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let Some(export_audit_chunk::Part::Records(batch)) = chunk?.part else {
                return Err(protocol("a second header"));
            };
            for record in batch.records {
                written += 1;
                if written > header.count {
                    return Err(protocol("more records than the header announced"));
                }
                write_line(out, &record_from_proto(record)).map_err(io)?;
            }
        }
        if written != header.count {
            return Err(protocol(&format!(
                "{written} records of the {} the header announced",
                header.count
            )));
        }
        out.flush().map_err(io)?;
        Ok(ExportSummary {
            node_id: header.node_id,
            count: header.count,
            head_hash: header.head_hash,
        })
    }
}
