//! The Governance service: policies (admins), evaluation records (registrants, e.g. an
//! evaluation pipeline's token), gate checks, and review requests (approvers). Writes go through
//! `Node::propose`, which checks the role where the request arrives; reads check the reader role
//! on the model's namespace (a listing across models keeps only the namespaces the caller reads).

use std::sync::Arc;

use quiver_api::proto::{self, governance_server::Governance};
use tonic::{Request, Response, Status};

use super::audit::parse_page_token;
use super::convert::{
    evaluation_to_proto, gate_report_to_proto, required_stage, review_to_proto, scope_from_proto,
    scope_to_proto,
};
use super::versions::version_view;
use super::{caller, caller_with, consistency, credential, invalid, parse_reference};
use crate::access::Target;
use crate::auth::{allows, Need, Role};
use crate::command::{Op, Response as Applied};
use crate::domain::{DomainError, Stage};
use crate::governance::{validate_policy, Policy, PolicyScope, Review};
use crate::node::{Consistency, Node};
use crate::state::ReviewFilter;

/// Longest policy document accepted (bytes of JSON).
pub const POLICY_JSON_BYTES_MAX: usize = 64 * 1024;
/// Reviews per page when the request names no page size, and the most a page holds.
pub const REVIEWS_PAGE_DEFAULT: usize = 100;
pub const REVIEWS_PAGE_MAX: usize = 1000;

pub struct GovernanceService {
    pub node: Arc<Node>,
}

/// A policy document from JSON, checked whole; the error names the field and the fix.
pub fn parse_policy(json: &str) -> Result<Policy, DomainError> {
    if json.len() > POLICY_JSON_BYTES_MAX {
        return Err(DomainError::invalid(
            "policy_json",
            format!(
                "{} bytes is over the limit of {POLICY_JSON_BYTES_MAX}",
                json.len()
            ),
        ));
    }
    let policy: Policy = serde_json::from_str(json).map_err(|e| {
        DomainError::invalid(
            "policy_json",
            format!(
                "{e}: a policy is {{\"staging\": [gates], \"production\": [gates], \
                 \"auto_promote\": bool}} (see `quiver policy set --help`)"
            ),
        )
    })?;
    validate_policy(&policy)?;
    Ok(policy)
}

pub fn policy_json(policy: &Policy) -> String {
    serde_json::to_string_pretty(policy).unwrap_or_default()
}

fn view(scope: Option<&PolicyScope>, policy: Option<&Policy>) -> proto::PolicyView {
    proto::PolicyView {
        scope: scope.map(scope_to_proto),
        policy_json: policy_json(policy.unwrap_or(&Policy::default())),
        set: policy.is_some(),
        scope_label: scope.map_or("no policy (no gates)".into(), |s| s.to_string()),
    }
}

impl GovernanceService {
    /// Resolves a reference to (model, number) on current state, for a caller who may read it.
    async fn resolve_readable<T>(
        &self,
        request: &Request<T>,
        reference: &str,
        read: Consistency,
    ) -> Result<(String, u64), Status> {
        let reference = parse_reference(reference)?;
        let action = format!("read the governance of model {}", reference.model);
        caller_with(
            &self.node,
            request,
            Role::Reader,
            Target::Model(&reference.model),
            &action,
        )
        .await?;
        let v = self
            .node
            .read(read, move |app, txn| app.resolve(txn, &reference))
            .await?;
        Ok((v.model, v.number))
    }

    /// A decision's answer: the review and its version as the command applied them (a re-read
    /// here could lag the leader on a follower, and show the version unmoved).
    async fn review_view(
        &self,
        review: &Review,
        version: &crate::domain::Version,
    ) -> Result<proto::ReviewDecision, Status> {
        Ok(proto::ReviewDecision {
            review: Some(review_to_proto(review)),
            version: Some(version_view(&self.node, version, Consistency::Stale).await?),
        })
    }
}

/// Whether `actor` (holding `grants`) reads namespace `ns` (`None`: a model gone since); an
/// anonymous reader, where allowed, reads every namespace.
fn readable(actor: &crate::domain::Actor, grants: &[crate::auth::Grant], ns: Option<&str>) -> bool {
    !actor.authenticated || ns.is_some_and(|ns| allows(grants, &Need::namespace(Role::Reader, ns)))
}

/// The reviews `filter` selects that `actor` may read (its role in each review's namespace), read
/// at `read`, and the id to page on from when the page was full (the last review read, readable
/// or not): the gRPC service's and the web UI's review queue.
pub async fn readable_reviews<S, P>(
    node: &crate::node::Node<S, P>,
    actor: &crate::domain::Actor,
    filter: ReviewFilter,
    read: Consistency,
) -> Result<(Vec<Review>, Option<u64>), crate::error::NodeError>
where
    S: quiver_transfer::ChunkSource + Clone,
    P: quiver_transfer::quic::ChunkPeers,
{
    let principal = actor.name.clone();
    let limit = filter.limit;
    let (reviews, grants, namespaces) = node
        .read(read, move |app, txn| {
            if let Some(m) = &filter.model {
                app.get_model(txn, m)?;
            }
            let reviews = app.reviews(txn, &filter)?;
            let mut namespaces = Vec::with_capacity(reviews.len());
            for review in &reviews {
                namespaces.push(app.find_model(txn, &review.model)?.map(|m| m.namespace));
            }
            Ok((reviews, app.grants_of(txn, &principal)?, namespaces))
        })
        .await?;
    let next = match reviews.len() == limit {
        true => reviews.last().map(|r| r.id),
        false => None,
    };
    let readable = reviews
        .into_iter()
        .zip(namespaces)
        .filter(|(_, ns)| readable(actor, &grants, ns.as_deref()))
        .map(|(review, _)| review)
        .collect();
    Ok((readable, next))
}

/// Approves or rejects review `id` as `actor`: the checks made where the request arrives, then
/// the command proposed (the gRPC service and the web UI both decide reviews through here).
///
/// Checked here like a role: the review is open and, for an approval, the caller is not the
/// registrant, has not approved it, and holds the role the approvals gate counts (a refusal
/// proposes nothing). Apply checks all of it again against the committed state, whoever
/// proposed it.
pub async fn decide_review<S, P>(
    node: &crate::node::Node<S, P>,
    actor: crate::domain::Actor,
    id: u64,
    approve: bool,
    comment: String,
) -> Result<Applied, crate::error::NodeError>
where
    S: quiver_transfer::ChunkSource + Clone,
    P: quiver_transfer::quic::ChunkPeers,
{
    let principal = actor.name.clone();
    let model = node
        .read(Consistency::Linearizable, move |app, txn| {
            let review = app
                .review(txn, id)?
                .ok_or(DomainError::ReviewNotFound { id })?;
            if approve {
                let m = app.get_model(txn, &review.model)?;
                let v = app.get_version(txn, &review.model, review.number)?;
                let (_, policy) = app.applicable_policy(txn, &m)?;
                let grants = app.grants_of(txn, &principal)?;
                let gates = match review.stage {
                    Stage::Staging => &policy.staging,
                    Stage::Production => &policy.production,
                    Stage::Experimental | Stage::Archived => &Vec::new(),
                };
                crate::governance::may_approve(
                    &review,
                    &v.created_by.name,
                    &principal,
                    crate::auth::highest_role(&grants, &m.namespace),
                    gates,
                )?;
            } else if review.state != crate::governance::ReviewState::Open {
                return Err(DomainError::ReviewClosed {
                    id,
                    state: review.state.label().into(),
                }
                .into());
            }
            Ok(review.model)
        })
        .await?;
    let op = Op::DecideReview {
        model,
        id,
        approve,
        comment,
    };
    node.propose(actor, op).await
}

fn unexpected(applied: Applied) -> Status {
    Status::internal(format!("unexpected apply result {applied:?}"))
}

#[tonic::async_trait]
impl Governance for GovernanceService {
    async fn set_policy(
        &self,
        request: Request<proto::SetPolicyRequest>,
    ) -> Result<Response<proto::PolicyView>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let scope = scope_from_proto(r.scope.as_ref()).map_err(invalid)?;
        let policy = match r.clear {
            true => None,
            false => Some(parse_policy(&r.policy_json).map_err(invalid)?),
        };
        match self
            .node
            .propose(actor, Op::SetPolicy { scope, policy })
            .await?
        {
            Applied::Policy(p) => Ok(Response::new(view(Some(&p.0), p.1.as_ref()))),
            other => Err(unexpected(other)),
        }
    }

    async fn get_policy(
        &self,
        request: Request<proto::GetPolicyRequest>,
    ) -> Result<Response<proto::PolicyView>, Status> {
        let scope = scope_from_proto(request.get_ref().scope.as_ref()).map_err(invalid)?;
        let (target, action) = match &scope {
            PolicyScope::Model(m) => (Target::Model(m), format!("read the policy of model {m}")),
            PolicyScope::Namespace { namespace, .. } => (
                Target::Namespace(namespace),
                format!("read the policies of namespace {namespace}"),
            ),
        };
        caller_with(&self.node, &request, Role::Reader, target, &action).await?;
        let r = request.into_inner();
        let effective = r.effective;
        if effective && !matches!(scope, PolicyScope::Model(_)) {
            return Err(invalid(DomainError::invalid(
                "effective",
                "the effective policy is a model's: name a model",
            )));
        }
        let (at, policy) = self
            .node
            .read(consistency(r.consistency), move |app, txn| match &scope {
                PolicyScope::Model(m) if effective => {
                    let model = app.get_model(txn, m)?;
                    let (at, policy) = app.applicable_policy(txn, &model)?;
                    Ok((at.clone(), at.map(|_| policy)))
                }
                _ => Ok((Some(scope.clone()), app.policy_at(txn, &scope)?)),
            })
            .await?;
        Ok(Response::new(view(at.as_ref(), policy.as_ref())))
    }

    async fn list_policies(
        &self,
        request: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesResponse>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let principal = actor.name.clone();
        let (rows, grants, namespaces) = self
            .node
            .read(consistency(r.consistency), move |app, txn| {
                let rows = app.policies(txn)?;
                let mut namespaces = Vec::with_capacity(rows.len());
                for row in &rows {
                    namespaces.push(match &row.scope {
                        PolicyScope::Model(m) => app.find_model(txn, m)?.map(|m| m.namespace),
                        PolicyScope::Namespace { namespace, .. } => Some(namespace.clone()),
                    });
                }
                Ok((rows, app.grants_of(txn, &principal)?, namespaces))
            })
            .await?;
        let policies = rows
            .iter()
            .zip(namespaces)
            .filter(|(_, ns)| readable(&actor, &grants, ns.as_deref()))
            .map(|(row, _)| view(Some(&row.scope), Some(&row.policy)))
            .collect();
        Ok(Response::new(proto::ListPoliciesResponse { policies }))
    }

    async fn record_evaluation(
        &self,
        request: Request<proto::RecordEvaluationRequest>,
    ) -> Result<Response<proto::RecordEvaluationResponse>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let reference = parse_reference(&r.reference)?;
        let v = self
            .node
            .read(Consistency::Linearizable, move |app, txn| {
                app.resolve(txn, &reference)
            })
            .await?;
        let before = v.stage;
        let op = Op::RecordEvaluation {
            model: v.model,
            number: v.number,
            kind: r.kind,
            metrics: r.metrics.into_iter().collect(),
            summary: r.summary,
        };
        match self.node.propose(actor, op).await? {
            Applied::Evaluation(outcome) => {
                let (evaluation, version) = *outcome;
                Ok(Response::new(proto::RecordEvaluationResponse {
                    evaluation: Some(evaluation_to_proto(&evaluation)),
                    promoted: version.stage != before && version.stage == Stage::Staging,
                    version: Some(version_view(&self.node, &version, Consistency::Stale).await?),
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn list_evaluations(
        &self,
        request: Request<proto::ListEvaluationsRequest>,
    ) -> Result<Response<proto::ListEvaluationsResponse>, Status> {
        let read = consistency(request.get_ref().consistency);
        let reference = request.get_ref().reference.clone();
        let (model, number) = self.resolve_readable(&request, &reference, read).await?;
        let evaluations = self
            .node
            .read(read, move |app, txn| app.evaluations(txn, &model, number))
            .await?;
        Ok(Response::new(proto::ListEvaluationsResponse {
            evaluations: evaluations.iter().map(evaluation_to_proto).collect(),
        }))
    }

    async fn check_gates(
        &self,
        request: Request<proto::CheckGatesRequest>,
    ) -> Result<Response<proto::GateReport>, Status> {
        let stage = required_stage(request.get_ref().stage).map_err(invalid)?;
        let read = consistency(request.get_ref().consistency);
        let reference = request.get_ref().reference.clone();
        let (model, number) = self.resolve_readable(&request, &reference, read).await?;
        let report = self
            .node
            .read(read, move |app, txn| {
                let m = app.get_model(txn, &model)?;
                let v = app.get_version(txn, &model, number)?;
                app.gate_report(txn, &m, &v, stage)
            })
            .await?;
        Ok(Response::new(gate_report_to_proto(&report)))
    }

    async fn list_reviews(
        &self,
        request: Request<proto::ListReviewsRequest>,
    ) -> Result<Response<proto::ListReviewsResponse>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        if !r.model.is_empty() {
            crate::domain::validate_name("model", &r.model).map_err(invalid)?;
        }
        let after = parse_page_token(&r.page_token)?;
        let limit = match r.page_size as usize {
            0 => REVIEWS_PAGE_DEFAULT,
            n => n.min(REVIEWS_PAGE_MAX),
        };
        let filter = ReviewFilter {
            model: (!r.model.is_empty()).then(|| r.model.clone()),
            open_only: !r.all,
            after,
            limit,
        };
        let (reviews, next) =
            readable_reviews(&self.node, &actor, filter, consistency(r.consistency)).await?;
        let next = next.map(|id| id.to_string()).unwrap_or_default();
        let reviews = reviews.iter().map(review_to_proto).collect();
        Ok(Response::new(proto::ListReviewsResponse {
            reviews,
            next_page_token: next,
        }))
    }

    async fn get_review(
        &self,
        request: Request<proto::GetReviewRequest>,
    ) -> Result<Response<proto::Review>, Status> {
        // Authenticated before the review is read, checked for its model after: one parse.
        let credential = credential(&request)?;
        self.node.authenticate(&credential).await?;
        let r = request.get_ref();
        let id = r.id;
        let review = self
            .node
            .read(consistency(r.consistency), move |app, txn| {
                app.review(txn, id)?
                    .ok_or_else(|| DomainError::ReviewNotFound { id }.into())
            })
            .await?;
        let action = format!("read review #{id}");
        self.node
            .authorize(
                &credential,
                Role::Reader,
                Target::Model(&review.model),
                &action,
            )
            .await?;
        Ok(Response::new(review_to_proto(&review)))
    }

    async fn decide_review(
        &self,
        request: Request<proto::DecideReviewRequest>,
    ) -> Result<Response<proto::ReviewDecision>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        match decide_review(&self.node, actor, r.id, r.approve, r.comment).await? {
            Applied::Review(outcome) => Ok(Response::new(
                self.review_view(&outcome.0, &outcome.1).await?,
            )),
            other => Err(unexpected(other)),
        }
    }
}
