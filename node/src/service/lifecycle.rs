//! The Lifecycle service: stage transitions, aliases and version tags —
//! the mutable things that live beside an immutable version.

use std::sync::Arc;

use quiver_api::proto::{self, lifecycle_server::Lifecycle};
use tonic::{Request, Response, Status};

use super::convert::{alias_to_proto, required_stage};
use super::versions::version_view;
use super::{caller, caller_with, consistency, invalid};
use crate::access::Target;
use crate::auth::Role;
use crate::command::{Op, Response as Applied};
use crate::node::{Consistency, Node};

pub struct LifecycleService {
    pub node: Arc<Node>,
}

impl LifecycleService {
    /// Resolves a reference to (model, number) on current state.
    async fn resolve(&self, reference: &str) -> Result<(String, u64), Status> {
        super::resolve_version(&self.node, reference).await
    }

    async fn applied_version(&self, applied: Applied) -> Result<proto::ModelVersion, Status> {
        match applied {
            Applied::Version(v) => version_view(&self.node, &v, Consistency::Stale).await,
            // The change waits for approvals: the version, unmoved, with its open review.
            Applied::Review(outcome) => {
                version_view(&self.node, &outcome.1, Consistency::Stale).await
            }
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }
}

fn expect_alias(applied: Applied) -> Result<proto::Alias, Status> {
    match applied {
        Applied::Alias(a) => Ok(alias_to_proto(&a)),
        other => Err(Status::internal(format!(
            "unexpected apply result {other:?}"
        ))),
    }
}

#[tonic::async_trait]
impl Lifecycle for LifecycleService {
    async fn set_stage(
        &self,
        request: Request<proto::SetStageRequest>,
    ) -> Result<Response<proto::ModelVersion>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let stage = required_stage(r.stage).map_err(invalid)?;
        let (model, number) = self.resolve(&r.reference).await?;
        let op = Op::SetStage {
            model,
            number,
            stage,
            reason: r.reason,
            override_signature: r.override_signature,
        };
        let applied = self.node.propose(actor, op).await.inspect_err(|e| {
            if let crate::error::NodeError::Rejected(crate::domain::DomainError::GatesFailed {
                stage,
                ..
            }) = e
            {
                self.node.metrics.gate_failure(stage);
            }
        })?;
        Ok(Response::new(self.applied_version(applied).await?))
    }

    async fn set_alias(
        &self,
        request: Request<proto::SetAliasRequest>,
    ) -> Result<Response<proto::Alias>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let op = Op::SetAlias {
            model: r.model,
            alias: r.alias,
            number: r.version,
        };
        Ok(Response::new(expect_alias(
            self.node.propose(actor, op).await?,
        )?))
    }

    async fn get_alias(
        &self,
        request: Request<proto::GetAliasRequest>,
    ) -> Result<Response<proto::Alias>, Status> {
        let model = request.get_ref().model.clone();
        let action = format!("read aliases of model {model}");
        caller_with(
            &self.node,
            &request,
            Role::Reader,
            Target::Model(&model),
            &action,
        )
        .await?;
        let r = request.into_inner();
        let alias = self
            .node
            .read(consistency(r.consistency), |app, txn| {
                app.get_alias(txn, &r.model, &r.alias)
            })
            .await?;
        Ok(Response::new(alias_to_proto(&alias)))
    }

    async fn delete_alias(
        &self,
        request: Request<proto::DeleteAliasRequest>,
    ) -> Result<Response<proto::Alias>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let op = Op::DeleteAlias {
            model: r.model,
            alias: r.alias,
        };
        Ok(Response::new(expect_alias(
            self.node.propose(actor, op).await?,
        )?))
    }

    async fn set_version_tags(
        &self,
        request: Request<proto::SetVersionTagsRequest>,
    ) -> Result<Response<proto::ModelVersion>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let (model, number) = self.resolve(&r.reference).await?;
        let op = Op::SetVersionTags {
            model,
            number,
            set_tags: r.set_tags.into_iter().collect(),
            remove_tags: r.remove_tags,
        };
        let applied = self.node.propose(actor, op).await?;
        Ok(Response::new(self.applied_version(applied).await?))
    }
}
