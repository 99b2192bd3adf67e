//! The Deployments service (issue 15): endpoints, their traffic split and shadows, rollouts,
//! rollbacks, and their history. Versions are given as references (`name/3`, `name@alias`,
//! `name:stage`), which the node resolves.

use tonic::transport::Channel;

use super::{Client, ClientError, MESSAGE_BYTES_MAX};
use crate::proto::deployments_client::DeploymentsClient;
use crate::proto::{
    AdvanceRolloutRequest, CreateDeploymentRequest, Deployment, DeploymentHistoryRequest,
    DeploymentRecord, GetDeploymentRequest, ListDeploymentsRequest, ListDeploymentsResponse,
    PauseRolloutRequest, ReadConsistency, ReportServingRequest, ReportServingResponse,
    RollbackRequest, RolloutBounds, RolloutStep, SetTrafficRequest, StartRolloutRequest,
    TrafficShare, VersionServingStats,
};

impl Client {
    fn deployments(&self) -> DeploymentsClient<Channel> {
        DeploymentsClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Creates `endpoint` with all traffic on `reference` (a Production version).
    pub async fn create_deployment(
        &self,
        endpoint: &str,
        reference: &str,
        reason: &str,
    ) -> Result<Deployment, ClientError> {
        let request = self.request(CreateDeploymentRequest {
            endpoint: endpoint.into(),
            reference: reference.into(),
            reason: reason.into(),
        })?;
        Ok(self
            .deployments()
            .create_deployment(request)
            .await?
            .into_inner())
    }

    /// Sets `endpoint`'s split (version, percent) and shadows by hand.
    pub async fn set_traffic(
        &self,
        endpoint: &str,
        split: &[(u64, u32)],
        shadows: &[u64],
        reason: &str,
    ) -> Result<Deployment, ClientError> {
        let request = self.request(SetTrafficRequest {
            endpoint: endpoint.into(),
            split: split
                .iter()
                .map(|&(version, percent)| TrafficShare { version, percent })
                .collect(),
            shadows: shadows.to_vec(),
            reason: reason.into(),
        })?;
        Ok(self.deployments().set_traffic(request).await?.into_inner())
    }

    /// Starts moving `endpoint`'s traffic to `reference` by `plan`, within `bounds` (none: the
    /// node's defaults).
    pub async fn start_rollout(
        &self,
        endpoint: &str,
        reference: &str,
        plan: Vec<RolloutStep>,
        bounds: Option<RolloutBounds>,
        reason: &str,
    ) -> Result<Deployment, ClientError> {
        let request = self.request(StartRolloutRequest {
            endpoint: endpoint.into(),
            reference: reference.into(),
            plan,
            bounds,
            reason: reason.into(),
        })?;
        Ok(self
            .deployments()
            .start_rollout(request)
            .await?
            .into_inner())
    }

    /// Moves `endpoint`'s rollout from `from_step` (none: the step in force) to the next.
    pub async fn advance_rollout(
        &self,
        endpoint: &str,
        from_step: Option<u32>,
    ) -> Result<Deployment, ClientError> {
        let request = self.request(AdvanceRolloutRequest {
            endpoint: endpoint.into(),
            from_step,
        })?;
        Ok(self
            .deployments()
            .advance_rollout(request)
            .await?
            .into_inner())
    }

    /// Pauses (`pause`) or resumes `endpoint`'s rollout.
    pub async fn pause_rollout(
        &self,
        endpoint: &str,
        pause: bool,
        reason: &str,
    ) -> Result<Deployment, ClientError> {
        let request = self.request(PauseRolloutRequest {
            endpoint: endpoint.into(),
            pause,
            reason: reason.into(),
        })?;
        Ok(self
            .deployments()
            .pause_rollout(request)
            .await?
            .into_inner())
    }

    /// Routes all of `endpoint`'s traffic back to the version that served before.
    pub async fn rollback(&self, endpoint: &str, reason: &str) -> Result<Deployment, ClientError> {
        let request = self.request(RollbackRequest {
            endpoint: endpoint.into(),
            reason: reason.into(),
        })?;
        Ok(self.deployments().rollback(request).await?.into_inner())
    }

    pub async fn get_deployment(
        &self,
        endpoint: &str,
        consistency: ReadConsistency,
    ) -> Result<Deployment, ClientError> {
        let request = self.request(GetDeploymentRequest {
            endpoint: endpoint.into(),
            consistency: consistency as i32,
        })?;
        Ok(self
            .deployments()
            .get_deployment(request)
            .await?
            .into_inner())
    }

    /// One page of endpoints (of `model` only, if not empty).
    pub async fn list_deployments(
        &self,
        model: &str,
        page_token: &str,
        consistency: ReadConsistency,
    ) -> Result<ListDeploymentsResponse, ClientError> {
        let request = self.request(ListDeploymentsRequest {
            model: model.into(),
            page_size: 0,
            page_token: page_token.into(),
            consistency: consistency as i32,
        })?;
        Ok(self
            .deployments()
            .list_deployments(request)
            .await?
            .into_inner())
    }

    /// `endpoint`'s latest changes, newest first (`limit` 0: the node's default).
    pub async fn deployment_history(
        &self,
        endpoint: &str,
        limit: u32,
        consistency: ReadConsistency,
    ) -> Result<Vec<DeploymentRecord>, ClientError> {
        let request = self.request(DeploymentHistoryRequest {
            endpoint: endpoint.into(),
            limit,
            before_generation: 0,
            consistency: consistency as i32,
        })?;
        Ok(self
            .deployments()
            .deployment_history(request)
            .await?
            .into_inner()
            .records)
    }

    /// A serving agent's counts per version since `generation` of `endpoint`.
    pub async fn report_serving(
        &self,
        endpoint: &str,
        agent: &str,
        generation: u64,
        stats: Vec<VersionServingStats>,
    ) -> Result<ReportServingResponse, ClientError> {
        let request = self.request(ReportServingRequest {
            endpoint: endpoint.into(),
            agent: agent.into(),
            generation,
            stats,
        })?;
        Ok(self
            .deployments()
            .report_serving(request)
            .await?
            .into_inner())
    }
}
