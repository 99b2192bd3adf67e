//! The Governance service: policies, evaluation records, gate checks and review requests.

use tonic::transport::Channel;

use super::{Client, ClientError, MESSAGE_BYTES_MAX};
use crate::proto::governance_client::GovernanceClient;
use crate::proto::{
    CheckGatesRequest, DecideReviewRequest, GateReport, GetPolicyRequest, GetReviewRequest,
    ListEvaluationsRequest, ListEvaluationsResponse, ListPoliciesRequest, ListPoliciesResponse,
    ListReviewsRequest, ListReviewsResponse, PolicyScope, PolicyView, ReadConsistency,
    RecordEvaluationRequest, RecordEvaluationResponse, Review, ReviewDecision, SetPolicyRequest,
    Stage,
};

impl Client {
    fn governance(&self) -> GovernanceClient<Channel> {
        GovernanceClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Sets the policy at `scope` from its JSON document, or clears it (`None`).
    pub async fn set_policy(
        &self,
        scope: PolicyScope,
        policy_json: Option<String>,
    ) -> Result<PolicyView, ClientError> {
        let request = self.request(SetPolicyRequest {
            scope: Some(scope),
            clear: policy_json.is_none(),
            policy_json: policy_json.unwrap_or_default(),
        })?;
        Ok(self.governance().set_policy(request).await?.into_inner())
    }

    /// The policy set at `scope`; with `effective` (a model's scope), the one that applies.
    pub async fn get_policy(
        &self,
        scope: PolicyScope,
        effective: bool,
    ) -> Result<PolicyView, ClientError> {
        let request = self.request(GetPolicyRequest {
            scope: Some(scope),
            effective,
            consistency: ReadConsistency::Linearizable as i32,
        })?;
        Ok(self.governance().get_policy(request).await?.into_inner())
    }

    pub async fn list_policies(&self) -> Result<ListPoliciesResponse, ClientError> {
        let request = self.request(ListPoliciesRequest {
            consistency: ReadConsistency::Linearizable as i32,
        })?;
        Ok(self.governance().list_policies(request).await?.into_inner())
    }

    pub async fn record_evaluation(
        &self,
        request: RecordEvaluationRequest,
    ) -> Result<RecordEvaluationResponse, ClientError> {
        let request = self.request(request)?;
        Ok(self
            .governance()
            .record_evaluation(request)
            .await?
            .into_inner())
    }

    pub async fn list_evaluations(
        &self,
        reference: &str,
    ) -> Result<ListEvaluationsResponse, ClientError> {
        let request = self.request(ListEvaluationsRequest {
            reference: reference.into(),
            consistency: ReadConsistency::Linearizable as i32,
        })?;
        Ok(self
            .governance()
            .list_evaluations(request)
            .await?
            .into_inner())
    }

    /// What the gates say now about `reference` entering `stage`.
    pub async fn check_gates(
        &self,
        reference: &str,
        stage: Stage,
    ) -> Result<GateReport, ClientError> {
        let request = self.request(CheckGatesRequest {
            reference: reference.into(),
            stage: stage as i32,
            consistency: ReadConsistency::Linearizable as i32,
        })?;
        Ok(self.governance().check_gates(request).await?.into_inner())
    }

    pub async fn list_reviews(
        &self,
        mut request: ListReviewsRequest,
    ) -> Result<ListReviewsResponse, ClientError> {
        request.consistency = ReadConsistency::Linearizable as i32;
        let request = self.request(request)?;
        Ok(self.governance().list_reviews(request).await?.into_inner())
    }

    pub async fn get_review(&self, id: u64) -> Result<Review, ClientError> {
        let request = self.request(GetReviewRequest {
            id,
            consistency: ReadConsistency::Linearizable as i32,
        })?;
        Ok(self.governance().get_review(request).await?.into_inner())
    }

    /// Approves (`approve`) or rejects review `id`.
    pub async fn decide_review(
        &self,
        id: u64,
        approve: bool,
        comment: &str,
    ) -> Result<ReviewDecision, ClientError> {
        let request = self.request(DecideReviewRequest {
            id,
            approve,
            comment: comment.into(),
        })?;
        Ok(self.governance().decide_review(request).await?.into_inner())
    }
}
