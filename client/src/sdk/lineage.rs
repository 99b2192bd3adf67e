//! The Lineage service: record edges, walk upstream of a version and downstream of an entity
//! (impact), quarantine an entity and lift it (decision 0021). Entities are text, `KIND:ID`
//! (`data:47`, `version:reco/14`); the node parses and checks them.

use tonic::transport::Channel;

use super::{Client, ClientError, MESSAGE_BYTES_MAX};
use crate::proto::lineage_client::LineageClient;
use crate::proto::{
    AddLineageEdgeRequest, LiftQuarantineRequest, LineageEdge, LineageGraph, LineageImpactRequest,
    LineageUpstreamRequest, ListQuarantinesRequest, QuarantineRecord, QuarantineRequest,
    ReadConsistency,
};

impl Client {
    fn lineage(&self) -> LineageClient<Channel> {
        LineageClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Records that `from` went into `to`.
    pub async fn add_lineage_edge(&self, from: &str, to: &str) -> Result<LineageEdge, ClientError> {
        let request = self.request(AddLineageEdgeRequest {
            from: from.into(),
            to: to.into(),
        })?;
        Ok(self.lineage().add_lineage_edge(request).await?.into_inner())
    }

    /// Everything the version `reference` (`name/3`, `name@alias`, `name:stage`) came from.
    pub async fn lineage_upstream(
        &self,
        reference: &str,
        consistency: ReadConsistency,
    ) -> Result<LineageGraph, ClientError> {
        let request = self.request(LineageUpstreamRequest {
            reference: reference.into(),
            consistency: consistency as i32,
        })?;
        Ok(self.lineage().upstream(request).await?.into_inner())
    }

    /// Everything that came from `entity`: which versions, in which stages.
    pub async fn lineage_impact(
        &self,
        entity: &str,
        consistency: ReadConsistency,
    ) -> Result<LineageGraph, ClientError> {
        let request = self.request(LineageImpactRequest {
            entity: entity.into(),
            consistency: consistency as i32,
        })?;
        Ok(self.lineage().impact(request).await?.into_inner())
    }

    /// Blocks promotion of everything downstream of `entity`.
    pub async fn quarantine(
        &self,
        entity: &str,
        reason: &str,
    ) -> Result<QuarantineRecord, ClientError> {
        let request = self.request(QuarantineRequest {
            entity: entity.into(),
            reason: reason.into(),
        })?;
        Ok(self.lineage().quarantine(request).await?.into_inner())
    }

    /// Lifts `entity`'s quarantine; returns the quarantine lifted.
    pub async fn lift_quarantine(
        &self,
        entity: &str,
        reason: &str,
    ) -> Result<QuarantineRecord, ClientError> {
        let request = self.request(LiftQuarantineRequest {
            entity: entity.into(),
            reason: reason.into(),
        })?;
        Ok(self.lineage().lift_quarantine(request).await?.into_inner())
    }

    /// The quarantines in force.
    pub async fn list_quarantines(
        &self,
        consistency: ReadConsistency,
    ) -> Result<Vec<QuarantineRecord>, ClientError> {
        let request = self.request(ListQuarantinesRequest {
            consistency: consistency as i32,
        })?;
        Ok(self
            .lineage()
            .list_quarantines(request)
            .await?
            .into_inner()
            .quarantines)
    }
}
