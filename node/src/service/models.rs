//! The Models service: create, get, list and update registered models.

use std::sync::Arc;

use quiver_api::proto::{self, models_server::Models};
use tonic::{Request, Response, Status};

use super::convert::{
    catalog_hit_to_proto, model_to_proto, risk_tier_from_proto, search_filter_from_proto,
};
use super::{caller, caller_with, consistency, invalid};
use crate::access::Target;
use crate::auth::{allows, Need, Role};
use crate::command::{Op, Response as Applied};
use crate::domain::validate_name;
use crate::node::Node;

pub struct ModelsService {
    pub node: Arc<Node>,
}

fn expect_model(applied: Applied) -> Result<proto::Model, Status> {
    match applied {
        Applied::Model(m) => Ok(model_to_proto(&m)),
        other => Err(Status::internal(format!(
            "unexpected apply result {other:?}"
        ))),
    }
}

#[tonic::async_trait]
impl Models for ModelsService {
    async fn create_model(
        &self,
        request: Request<proto::CreateModelRequest>,
    ) -> Result<Response<proto::Model>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let namespace = if r.namespace.is_empty() {
            "default".to_string()
        } else {
            r.namespace
        };
        // Checked here for a fast answer and again in apply.
        validate_name("name", &r.name).map_err(invalid)?;
        let op = Op::CreateModel {
            name: r.name,
            namespace,
            description: r.description,
            risk_tier: risk_tier_from_proto(r.risk_tier).map_err(invalid)?,
            tags: r.tags.into_iter().collect(),
        };
        let applied = self.node.propose(actor, op).await?;
        Ok(Response::new(expect_model(applied)?))
    }

    async fn get_model(
        &self,
        request: Request<proto::GetModelRequest>,
    ) -> Result<Response<proto::Model>, Status> {
        let model = request.get_ref().name.clone();
        let action = format!("read model {model}");
        caller_with(
            &self.node,
            &request,
            Role::Reader,
            Target::Model(&model),
            &action,
        )
        .await?;
        let r = request.into_inner();
        let model = self
            .node
            .read(consistency(r.consistency), |app, txn| {
                app.get_model(txn, &r.name)
            })
            .await?;
        Ok(Response::new(model_to_proto(&model)))
    }

    async fn list_models(
        &self,
        request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let principal = actor.name.clone();
        let (mut models, next, grants) = self
            .node
            .read(consistency(r.consistency), |app, txn| {
                let (models, next) = app.list_models(
                    txn,
                    &r.name_prefix,
                    &r.tag,
                    r.page_size as usize,
                    &r.page_token,
                )?;
                Ok((models, next, app.grants_of(txn, &principal)?))
            })
            .await?;
        // Only the models of namespaces the caller may read (anonymous readers, where allowed,
        // read every namespace).
        if actor.authenticated {
            models.retain(|m| allows(&grants, &Need::namespace(Role::Reader, &m.namespace)));
        }
        Ok(Response::new(proto::ListModelsResponse {
            models: models.iter().map(model_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn search_models(
        &self,
        request: Request<proto::SearchModelsRequest>,
    ) -> Result<Response<proto::SearchModelsResponse>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let filter = search_filter_from_proto(&r).map_err(invalid)?;
        let principal = actor.name.clone();
        let (hits, next) = self
            .node
            .read(consistency(r.consistency), |app, txn| {
                let grants = app.grants_of(txn, &principal)?;
                // Only the models of namespaces the caller may read (anonymous readers, where
                // allowed, read every namespace); filtered before paging, so pages are full.
                let visible = |namespace: &str| {
                    !actor.authenticated
                        || allows(&grants, &Need::namespace(Role::Reader, namespace))
                };
                app.search_models(txn, &filter, &visible, r.page_size as usize, &r.page_token)
            })
            .await?;
        Ok(Response::new(proto::SearchModelsResponse {
            hits: hits
                .iter()
                .map(|h| catalog_hit_to_proto(h, &filter))
                .collect(),
            next_page_token: next,
        }))
    }

    async fn update_model(
        &self,
        request: Request<proto::UpdateModelRequest>,
    ) -> Result<Response<proto::Model>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let op = Op::UpdateModel {
            name: r.name,
            description: r.description,
            set_tags: r.set_tags.into_iter().collect(),
            remove_tags: r.remove_tags,
        };
        let applied = self.node.propose(actor, op).await?;
        Ok(Response::new(expect_model(applied)?))
    }
}
