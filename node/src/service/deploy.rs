//! The Deployments service (issue 15): endpoints, their traffic and rollouts. Every change is
//! an `Op` naming the endpoint's model (read here first), so the role check where the request
//! arrives reads that model's namespace (approver), and apply refuses a model that is not the
//! endpoint's.

use std::sync::Arc;

use quiver_api::proto::{self, deployments_server::Deployments};
use tonic::{Request, Response, Status};

use super::convert::{
    bounds_from_proto, deployment_record_to_proto, deployment_to_proto, plan_from_proto,
};
use super::{caller, caller_reading, caller_with, consistency, invalid};
use crate::access::Target;
use crate::auth::Role;
use crate::command::{Op, Response as Applied};
use crate::domain::validate_name;
use crate::node::{Consistency, Node};

/// Records one history page holds unless asked for fewer.
pub const HISTORY_PAGE_DEFAULT: usize = 50;
/// Most records one history page holds.
pub const HISTORY_PAGE_MAX: usize = 1000;

/// The model endpoint `endpoint` serves (this node's state, else the leader's).
pub(super) async fn endpoint_model(node: &Node, endpoint: &str) -> Result<String, Status> {
    validate_name("endpoint", endpoint).map_err(invalid)?;
    let name = endpoint.to_string();
    let here = node
        .read(Consistency::Stale, move |app, txn| {
            app.find_deployment(txn, &name)
        })
        .await?;
    if let Some(d) = here {
        return Ok(d.model);
    }
    let name = endpoint.to_string();
    let d = node
        .read(Consistency::Linearizable, move |app, txn| {
            app.get_deployment(txn, &name)
        })
        .await?;
    Ok(d.model)
}

pub struct DeployService {
    pub node: Arc<Node>,
}

impl DeployService {
    async fn model_of(&self, endpoint: &str) -> Result<String, Status> {
        endpoint_model(&self.node, endpoint).await
    }

    /// Checks that the caller may read `endpoint` (the reader role on its model's namespace);
    /// returns the model.
    async fn reader_of<T>(
        &self,
        request: &Request<T>,
        endpoint: &str,
        action: &str,
    ) -> Result<String, Status> {
        let model = self.model_of(endpoint).await?;
        caller_with(
            &self.node,
            request,
            Role::Reader,
            Target::Model(&model),
            action,
        )
        .await?;
        Ok(model)
    }

    /// Resolves a reference to (model, number) on current state.
    async fn resolve(&self, reference: &str) -> Result<(String, u64), Status> {
        super::resolve_version(&self.node, reference).await
    }

    async fn change<T>(
        &self,
        request: &Request<T>,
        op: Op,
    ) -> Result<Response<proto::Deployment>, Status> {
        let actor = caller(&self.node, request).await?;
        match self.node.propose(actor, op).await? {
            Applied::Deployment(d) => Ok(Response::new(deployment_to_proto(&d))),
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl Deployments for DeployService {
    async fn create_deployment(
        &self,
        request: Request<proto::CreateDeploymentRequest>,
    ) -> Result<Response<proto::Deployment>, Status> {
        let r = request.get_ref();
        validate_name("endpoint", &r.endpoint).map_err(invalid)?;
        let (model, version) = self.resolve(&r.reference).await?;
        let op = Op::CreateDeployment {
            endpoint: r.endpoint.clone(),
            model,
            version,
            reason: r.reason.clone(),
        };
        self.change(&request, op).await
    }

    async fn set_traffic(
        &self,
        request: Request<proto::SetTrafficRequest>,
    ) -> Result<Response<proto::Deployment>, Status> {
        let r = request.get_ref();
        let model = self.model_of(&r.endpoint).await?;
        let op = Op::SetTraffic {
            endpoint: r.endpoint.clone(),
            model,
            split: r.split.iter().map(|s| (s.version, s.percent)).collect(),
            shadows: r.shadows.clone(),
            reason: r.reason.clone(),
        };
        self.change(&request, op).await
    }

    async fn start_rollout(
        &self,
        request: Request<proto::StartRolloutRequest>,
    ) -> Result<Response<proto::Deployment>, Status> {
        let r = request.get_ref();
        let model = self.model_of(&r.endpoint).await?;
        let (of, version) = self.resolve(&r.reference).await?;
        if of != model {
            return Err(Status::invalid_argument(super::bounded(format!(
                "invalid reference: endpoint {} serves model {model}, not {of}",
                r.endpoint
            ))));
        }
        let op = Op::StartRollout {
            endpoint: r.endpoint.clone(),
            model,
            version,
            plan: plan_from_proto(&r.plan).map_err(invalid)?,
            bounds: bounds_from_proto(r.bounds.as_ref()),
            reason: r.reason.clone(),
        };
        self.change(&request, op).await
    }

    async fn advance_rollout(
        &self,
        request: Request<proto::AdvanceRolloutRequest>,
    ) -> Result<Response<proto::Deployment>, Status> {
        let r = request.get_ref();
        let endpoint = r.endpoint.clone();
        let model = self.model_of(&endpoint).await?;
        let from_step = match r.from_step {
            Some(step) => step,
            None => {
                let name = endpoint.clone();
                let d = self
                    .node
                    .read(Consistency::Linearizable, move |app, txn| {
                        app.get_deployment(txn, &name)
                    })
                    .await?;
                match d.rollout {
                    Some(rollout) => rollout.step as u32,
                    None => {
                        return Err(invalid(crate::domain::DomainError::DeploymentState {
                            endpoint,
                            message: "no rollout is in progress".into(),
                        }))
                    }
                }
            }
        };
        let op = Op::AdvanceRollout {
            endpoint: r.endpoint.clone(),
            model,
            from_step,
        };
        self.change(&request, op).await
    }

    async fn pause_rollout(
        &self,
        request: Request<proto::PauseRolloutRequest>,
    ) -> Result<Response<proto::Deployment>, Status> {
        let r = request.get_ref();
        let model = self.model_of(&r.endpoint).await?;
        let op = Op::PauseRollout {
            endpoint: r.endpoint.clone(),
            model,
            pause: r.pause,
            reason: r.reason.clone(),
        };
        self.change(&request, op).await
    }

    async fn rollback(
        &self,
        request: Request<proto::RollbackRequest>,
    ) -> Result<Response<proto::Deployment>, Status> {
        let r = request.get_ref();
        let model = self.model_of(&r.endpoint).await?;
        let op = Op::Rollback {
            endpoint: r.endpoint.clone(),
            model,
            reason: r.reason.clone(),
        };
        self.change(&request, op).await
    }

    async fn report_serving(
        &self,
        request: Request<proto::ReportServingRequest>,
    ) -> Result<Response<proto::ReportServingResponse>, Status> {
        let r = request.get_ref();
        let model = self.model_of(&r.endpoint).await?;
        let op = Op::ReportServing {
            endpoint: r.endpoint.clone(),
            model,
            agent: r.agent.clone(),
            generation: r.generation,
            stats: r
                .stats
                .iter()
                .map(|s| crate::deploy::VersionStats {
                    version: s.version,
                    requests: s.requests,
                    errors: s.errors,
                    p99_ms: s.p99_ms,
                })
                .collect(),
        };
        let actor = caller(&self.node, &request).await?;
        match self.node.propose(actor, op).await? {
            Applied::ServingReport(taken) => {
                let (d, rolled_back) = *taken;
                Ok(Response::new(proto::ReportServingResponse {
                    deployment: Some(deployment_to_proto(&d)),
                    rolled_back,
                }))
            }
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    async fn get_deployment(
        &self,
        request: Request<proto::GetDeploymentRequest>,
    ) -> Result<Response<proto::Deployment>, Status> {
        let endpoint = request.get_ref().endpoint.clone();
        self.reader_of(&request, &endpoint, &format!("read endpoint {endpoint}"))
            .await?;
        let r = request.into_inner();
        let d = self
            .node
            .read(consistency(r.consistency), move |app, txn| {
                app.get_deployment(txn, &r.endpoint)
            })
            .await?;
        Ok(Response::new(deployment_to_proto(&d)))
    }

    async fn list_deployments(
        &self,
        request: Request<proto::ListDeploymentsRequest>,
    ) -> Result<Response<proto::ListDeploymentsResponse>, Status> {
        let model = request.get_ref().model.clone();
        caller_reading(
            &self.node,
            &request,
            &model,
            "list every endpoint (give a model to list only its endpoints)",
            "list the endpoints of model",
        )
        .await?;
        let r = request.into_inner();
        if !r.page_token.is_empty() {
            validate_name("page_token", &r.page_token).map_err(invalid)?;
        }
        let (page, next) = self
            .node
            .read(consistency(r.consistency), move |app, txn| {
                let model = (!r.model.is_empty()).then_some(r.model.as_str());
                app.list_deployments(txn, model, &r.page_token, r.page_size as usize)
            })
            .await?;
        Ok(Response::new(proto::ListDeploymentsResponse {
            deployments: page.iter().map(deployment_to_proto).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn deployment_history(
        &self,
        request: Request<proto::DeploymentHistoryRequest>,
    ) -> Result<Response<proto::DeploymentHistoryResponse>, Status> {
        let endpoint = request.get_ref().endpoint.clone();
        let action = format!("read the history of endpoint {endpoint}");
        let model = self.reader_of(&request, &endpoint, &action).await?;
        let r = request.into_inner();
        let limit = match r.limit as usize {
            0 => HISTORY_PAGE_DEFAULT,
            n => n.min(HISTORY_PAGE_MAX),
        };
        let records = self
            .node
            .read(consistency(r.consistency), move |app, txn| {
                app.deployment_history(txn, &r.endpoint, r.before_generation, limit)
            })
            .await?;
        Ok(Response::new(proto::DeploymentHistoryResponse {
            records: records
                .iter()
                .map(|rec| deployment_record_to_proto(&model, rec))
                .collect(),
        }))
    }
}
