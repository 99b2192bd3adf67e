//! Conversions between the protobuf contract and the domain. This is the
//! only place that knows both; the domain derives no wire format.

use quiver_api::proto;

use crate::domain::{self, DomainError, DomainResult};
use crate::governance;

pub fn stage_from_proto(stage: proto::Stage) -> DomainResult<domain::Stage> {
    Ok(match stage {
        proto::Stage::Experimental => domain::Stage::Experimental,
        proto::Stage::Staging => domain::Stage::Staging,
        proto::Stage::Production => domain::Stage::Production,
        proto::Stage::Archived => domain::Stage::Archived,
        proto::Stage::Unspecified => {
            return Err(DomainError::invalid(
                "stage",
                "is required: one of experimental, staging, production, archived",
            ))
        }
    })
}

/// A reference parsed by the client crate, as the state resolves it.
pub fn reference_from_client(reference: quiver_api::Reference) -> DomainResult<domain::VersionRef> {
    let selector = match reference.selector {
        quiver_api::VersionSelector::Number(n) => domain::VersionSelector::Number(n),
        quiver_api::VersionSelector::Alias(alias) => domain::VersionSelector::Alias(alias),
        quiver_api::VersionSelector::Stage(stage) => {
            domain::VersionSelector::Stage(stage_from_proto(stage)?)
        }
    };
    Ok(domain::VersionRef {
        model: reference.model,
        selector,
    })
}

/// A stage given as an i32 on the wire; 0 (unspecified) means "none".
pub fn optional_stage(raw: i32) -> DomainResult<Option<domain::Stage>> {
    match proto::Stage::try_from(raw) {
        Ok(proto::Stage::Unspecified) => Ok(None),
        Ok(s) => stage_from_proto(s).map(Some),
        Err(_) => Err(DomainError::invalid(
            "stage",
            format!("unknown stage value {raw}"),
        )),
    }
}

pub fn required_stage(raw: i32) -> DomainResult<domain::Stage> {
    optional_stage(raw)?.ok_or_else(|| {
        DomainError::invalid(
            "stage",
            "is required: one of experimental, staging, production, archived",
        )
    })
}

pub fn stage_to_proto(stage: domain::Stage) -> proto::Stage {
    match stage {
        domain::Stage::Experimental => proto::Stage::Experimental,
        domain::Stage::Staging => proto::Stage::Staging,
        domain::Stage::Production => proto::Stage::Production,
        domain::Stage::Archived => proto::Stage::Archived,
    }
}

pub fn risk_tier_from_proto(raw: i32) -> DomainResult<domain::RiskTier> {
    match proto::RiskTier::try_from(raw) {
        Ok(proto::RiskTier::Unspecified) | Ok(proto::RiskTier::Low) => Ok(domain::RiskTier::Low),
        Ok(proto::RiskTier::Medium) => Ok(domain::RiskTier::Medium),
        Ok(proto::RiskTier::High) => Ok(domain::RiskTier::High),
        Err(_) => Err(DomainError::invalid(
            "risk_tier",
            format!("unknown risk tier value {raw}: use low, medium or high"),
        )),
    }
}

/// A risk tier as a search filter: unspecified means any.
pub fn optional_risk_tier(raw: i32) -> DomainResult<Option<domain::RiskTier>> {
    match proto::RiskTier::try_from(raw) {
        Ok(proto::RiskTier::Unspecified) => Ok(None),
        _ => risk_tier_from_proto(raw).map(Some),
    }
}

/// A metric range as sent (its name and bound are checked with the filter, `SearchFilter::check`).
pub fn metric_range_from_proto(
    m: &proto::MetricRange,
) -> DomainResult<crate::catalog::MetricRange> {
    use crate::catalog::{Comparison, MetricRange};
    let comparison = Comparison::parse(&m.comparison).ok_or_else(|| {
        DomainError::invalid(
            format!("metric.{}", domain::shown(&m.metric)),
            format!(
                "comparison {} is not one of >=, >, <=, <, =",
                domain::shown(&m.comparison)
            ),
        )
    })?;
    Ok(MetricRange {
        metric: m.metric.clone(),
        comparison,
        value: m.value,
    })
}

/// A catalog search as sent, checked.
pub fn search_filter_from_proto(
    r: &proto::SearchModelsRequest,
) -> DomainResult<crate::catalog::SearchFilter> {
    use crate::catalog::SearchFilter;
    let present = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let metrics = r
        .metrics
        .iter()
        .map(metric_range_from_proto)
        .collect::<DomainResult<Vec<_>>>()?;
    let quarantined = match proto::QuarantineFilter::try_from(r.quarantined) {
        Ok(proto::QuarantineFilter::Any) => None,
        Ok(proto::QuarantineFilter::Only) => Some(true),
        Ok(proto::QuarantineFilter::None) => Some(false),
        Err(_) => {
            return Err(DomainError::invalid(
                "quarantined",
                format!("unknown quarantine filter value {}", r.quarantined),
            ))
        }
    };
    let filter = SearchFilter {
        words: SearchFilter::words_of(&r.query)?,
        namespace: present(&r.namespace),
        risk_tier: optional_risk_tier(r.risk_tier)?,
        stage: optional_stage(r.stage)?,
        owner: present(&r.owner),
        metrics,
        quarantined,
    };
    filter.check()?;
    Ok(filter)
}

/// A search's hit; `filter` says which metrics it shows.
pub fn catalog_hit_to_proto(
    hit: &crate::state::CatalogHit,
    filter: &crate::catalog::SearchFilter,
) -> proto::CatalogHit {
    let metrics = match filter.stage {
        Some(domain::Stage::Production) => &hit.entry.production_metrics,
        _ => &hit.entry.latest_metrics,
    };
    proto::CatalogHit {
        model: Some(model_to_proto(&hit.model)),
        stage_counts: hit
            .entry
            .stages
            .iter()
            .map(|(s, n)| (domain::stage_label(*s).to_string(), *n))
            .collect(),
        production_version: hit.entry.production_version.unwrap_or(0),
        metrics: metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        quarantined: hit.quarantined,
    }
}

fn risk_tier_to_proto(tier: domain::RiskTier) -> proto::RiskTier {
    match tier {
        domain::RiskTier::Low => proto::RiskTier::Low,
        domain::RiskTier::Medium => proto::RiskTier::Medium,
        domain::RiskTier::High => proto::RiskTier::High,
    }
}

fn status_to_proto(status: domain::VersionStatus) -> proto::VersionStatus {
    match status {
        domain::VersionStatus::Pending => proto::VersionStatus::Pending,
        domain::VersionStatus::Ready => proto::VersionStatus::Ready,
        domain::VersionStatus::Failed => proto::VersionStatus::Failed,
    }
}

pub fn model_to_proto(m: &domain::Model) -> proto::Model {
    proto::Model {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        description: m.description.clone(),
        risk_tier: risk_tier_to_proto(m.risk_tier) as i32,
        tags: m.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        created_by: m.created_by.name.clone(),
        created_by_authenticated: m.created_by.authenticated,
        created_at_ms: m.created_at_ms,
        version_count: m.version_count,
        latest_version: m.version_count,
    }
}

fn tensor_to_proto(t: &domain::TensorSpec) -> proto::TensorSpec {
    proto::TensorSpec {
        name: t.name.clone(),
        dtype: t.dtype.clone(),
        shape: t.shape.clone(),
        optional: t.optional,
    }
}

fn tensor_from_proto(t: &proto::TensorSpec) -> domain::TensorSpec {
    domain::TensorSpec {
        name: t.name.clone(),
        dtype: t.dtype.clone(),
        shape: t.shape.clone(),
        optional: t.optional,
    }
}

pub fn signature_from_proto(s: Option<&proto::Signature>) -> domain::Signature {
    s.map(|s| domain::Signature {
        inputs: s.inputs.iter().map(tensor_from_proto).collect(),
        outputs: s.outputs.iter().map(tensor_from_proto).collect(),
    })
    .unwrap_or_default()
}

pub fn metadata_from_proto(m: Option<&proto::VersionMetadata>) -> domain::VersionMetadata {
    m.map(|m| domain::VersionMetadata {
        data_snapshot_id: m.data_snapshot_id.clone(),
        code_commit: m.code_commit.clone(),
        pipeline_run_id: m.pipeline_run_id.clone(),
        hyperparameters: m
            .hyperparameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        metrics: m.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    })
    .unwrap_or_default()
}

pub fn version_to_proto(v: &domain::Version, aliases: Vec<String>) -> proto::ModelVersion {
    proto::ModelVersion {
        model: v.model.clone(),
        version: v.number,
        manifest_root: v.manifest_root.clone(),
        files: v
            .files
            .iter()
            .map(|f| proto::FileInfo {
                path: f.path.clone(),
                size_bytes: f.size_bytes,
                mode: f.mode,
                chunk_count: f.chunk_count,
            })
            .collect(),
        total_size_bytes: v.total_size_bytes,
        signature: Some(proto::Signature {
            inputs: v.signature.inputs.iter().map(tensor_to_proto).collect(),
            outputs: v.signature.outputs.iter().map(tensor_to_proto).collect(),
        }),
        metadata: Some(proto::VersionMetadata {
            data_snapshot_id: v.metadata.data_snapshot_id.clone(),
            code_commit: v.metadata.code_commit.clone(),
            pipeline_run_id: v.metadata.pipeline_run_id.clone(),
            hyperparameters: v
                .metadata
                .hyperparameters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            metrics: v
                .metadata
                .metrics
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }),
        tags: v.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        stage: stage_to_proto(v.stage) as i32,
        status: status_to_proto(v.status) as i32,
        aliases,
        created_by: v.created_by.name.clone(),
        created_by_authenticated: v.created_by.authenticated,
        created_at_ms: v.created_at_ms,
        stage_history: v
            .stage_history
            .iter()
            .map(|t| proto::StageTransition {
                from: t.from.map(|s| stage_to_proto(s) as i32).unwrap_or(0),
                to: stage_to_proto(t.to) as i32,
                actor: t.actor.name.clone(),
                actor_authenticated: t.actor.authenticated,
                at_ms: t.at_ms,
                reason: t.reason.clone(),
                gate_report: t.gate_report.as_ref().map(gate_report_to_proto),
            })
            .collect(),
        pending_review: None,
        // Filled in by the services that read the lineage (`lineage::flagged`).
        quarantined_by: Vec::new(),
    }
}

pub fn gate_report_to_proto(r: &governance::GateReport) -> proto::GateReport {
    proto::GateReport {
        stage: stage_to_proto(r.stage) as i32,
        passed: r.passed(),
        results: r
            .results
            .iter()
            .map(|g| proto::GateResult {
                gate: g.gate.clone(),
                passed: g.passed,
                detail: g.detail.clone(),
            })
            .collect(),
    }
}

fn approval_to_proto(a: &governance::Approval) -> proto::Approval {
    proto::Approval {
        principal: a.principal.clone(),
        role: a.role.to_string(),
        at_ms: a.at_ms,
        comment: a.comment.clone(),
    }
}

pub fn review_to_proto(r: &governance::Review) -> proto::Review {
    proto::Review {
        id: r.id,
        model: r.model.clone(),
        version: r.number,
        stage: stage_to_proto(r.stage) as i32,
        requested_by: r.requested_by.clone(),
        requested_at_ms: r.requested_at_ms,
        reason: r.reason.clone(),
        state: r.state.label().to_string(),
        approvals: r.approvals.iter().map(approval_to_proto).collect(),
        voided: r
            .voided
            .iter()
            .map(|v| proto::VoidedApprovals {
                approvals: v.approvals.iter().map(approval_to_proto).collect(),
                reason: v.reason.clone(),
                at_ms: v.at_ms,
            })
            .collect(),
        closed_by: r.closed_by.clone().unwrap_or_default(),
        closed_at_ms: r.closed_at_ms.unwrap_or_default(),
        closing_comment: r.closing_comment.clone(),
        report: Some(gate_report_to_proto(&r.report)),
    }
}

pub fn evaluation_to_proto(e: &governance::Evaluation) -> proto::Evaluation {
    proto::Evaluation {
        seq: e.seq,
        kind: e.kind.clone(),
        metrics: e.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        summary: e.summary.clone(),
        recorded_by: e.recorded_by.clone(),
        at_ms: e.at_ms,
    }
}

/// A policy scope from the wire: exactly one of model and namespace; a tier only with a
/// namespace.
pub fn scope_from_proto(
    scope: Option<&proto::PolicyScope>,
) -> DomainResult<governance::PolicyScope> {
    let Some(scope) = scope else {
        return Err(DomainError::invalid(
            "scope",
            "is required: a model, or a namespace (and optionally a risk tier)",
        ));
    };
    let scope = match (scope.model.is_empty(), scope.namespace.is_empty()) {
        (false, true) if scope.tier.is_empty() => {
            governance::PolicyScope::Model(scope.model.clone())
        }
        (false, true) => {
            return Err(DomainError::invalid(
                "scope.tier",
                "a risk tier goes with a namespace, not a model",
            ))
        }
        (true, false) => governance::PolicyScope::Namespace {
            namespace: scope.namespace.clone(),
            tier: match scope.tier.as_str() {
                "" => None,
                "low" => Some(domain::RiskTier::Low),
                "medium" => Some(domain::RiskTier::Medium),
                "high" => Some(domain::RiskTier::High),
                other => {
                    return Err(DomainError::invalid(
                        "scope.tier",
                        format!(
                            "{} is not a risk tier: use low, medium or high",
                            domain::shown(other)
                        ),
                    ))
                }
            },
        },
        _ => {
            return Err(DomainError::invalid(
                "scope",
                "name exactly one of a model and a namespace",
            ))
        }
    };
    governance::validate_scope(&scope)?;
    Ok(scope)
}

pub fn scope_to_proto(scope: &governance::PolicyScope) -> proto::PolicyScope {
    match scope {
        governance::PolicyScope::Model(m) => proto::PolicyScope {
            model: m.clone(),
            ..Default::default()
        },
        governance::PolicyScope::Namespace { namespace, tier } => proto::PolicyScope {
            namespace: namespace.clone(),
            tier: match tier {
                None => String::new(),
                Some(domain::RiskTier::Low) => "low".into(),
                Some(domain::RiskTier::Medium) => "medium".into(),
                Some(domain::RiskTier::High) => "high".into(),
            },
            ..Default::default()
        },
    }
}

pub fn alias_to_proto(a: &domain::Alias) -> proto::Alias {
    proto::Alias {
        model: a.model.clone(),
        alias: a.alias.clone(),
        version: a.version,
        updated_by: a.updated_by.name.clone(),
        updated_by_authenticated: a.updated_by.authenticated,
        updated_at_ms: a.updated_at_ms,
    }
}

/// A watch request's filter: at most one of a model, a reference (`name@alias`, `name:stage`)
/// and an endpoint; none watches everything.
pub fn watch_filter_from_proto(r: &proto::WatchRequest) -> DomainResult<crate::watch::WatchFilter> {
    use crate::watch::WatchFilter;
    let given = [&r.model, &r.reference, &r.endpoint]
        .iter()
        .filter(|f| !f.is_empty())
        .count();
    if given > 1 {
        return Err(DomainError::invalid(
            "model",
            "give at most one of model, reference and endpoint (none watches every change)",
        ));
    }
    let filter = if !r.model.is_empty() {
        WatchFilter::Model(r.model.clone())
    } else if !r.endpoint.is_empty() {
        WatchFilter::Endpoint(r.endpoint.clone())
    } else if !r.reference.is_empty() {
        let reference = r
            .reference
            .parse::<quiver_api::Reference>()
            .map_err(|e| DomainError::invalid("reference", e.to_string()))?;
        match reference_from_client(reference)? {
            domain::VersionRef {
                model,
                selector: domain::VersionSelector::Alias(alias),
            } => WatchFilter::Alias { model, alias },
            domain::VersionRef {
                model,
                selector: domain::VersionSelector::Stage(stage),
            } => WatchFilter::Stage { model, stage },
            domain::VersionRef { .. } => {
                return Err(DomainError::invalid(
                    "reference",
                    "a watch follows an alias (name@alias) or a stage (name:stage); to follow \
                     every change of a model give the model instead",
                ))
            }
        }
    } else {
        WatchFilter::All
    };
    filter.check()?;
    Ok(filter)
}

pub fn watch_event_to_proto(e: &crate::watch::WatchEvent) -> proto::WatchEvent {
    use crate::watch::Change;
    let mut out = proto::WatchEvent {
        revision: e.revision,
        at_ms: e.at_ms,
        principal: e.principal.clone(),
        kind: e.change.kind().into(),
        model: e.change.model().into(),
        version: e.change.number().unwrap_or(0),
        description: e.change.describe(),
        ..Default::default()
    };
    match &e.change {
        Change::Stage { from, to, .. } => {
            out.from_stage = stage_to_proto(*from) as i32;
            out.to_stage = stage_to_proto(*to) as i32;
        }
        Change::AliasSet { alias, .. } | Change::AliasDeleted { alias, .. } => {
            out.alias = alias.clone();
        }
        Change::VersionCreated { status, .. } | Change::VersionStatus { status, .. } => {
            out.status = status_to_proto(*status) as i32;
        }
        Change::Deployment {
            endpoint,
            generation,
            ..
        } => {
            out.endpoint = endpoint.clone();
            out.generation = *generation;
        }
        Change::Model { .. } | Change::VersionTags { .. } => {}
    }
    out
}

fn shares_to_proto(split: &crate::deploy::Split) -> Vec<proto::TrafficShare> {
    split
        .iter()
        .map(|(version, percent)| proto::TrafficShare {
            version: *version,
            percent: u32::from(*percent),
        })
        .collect()
}

pub fn step_to_proto(step: &crate::deploy::Step) -> proto::RolloutStep {
    proto::RolloutStep {
        percent: u32::from(step.percent),
        duration_ms: step.duration_ms,
    }
}

/// A plan from the wire: a share over 255 cannot be a step's (`check_plan` names the limit).
pub fn plan_from_proto(plan: &[proto::RolloutStep]) -> DomainResult<Vec<crate::deploy::Step>> {
    plan.iter()
        .enumerate()
        .map(|(i, s)| {
            let percent = u8::try_from(s.percent).map_err(|_| {
                DomainError::invalid(
                    "plan",
                    format!("step {} gives {}%; at most 100", i + 1, s.percent),
                )
            })?;
            Ok(crate::deploy::Step {
                percent,
                duration_ms: s.duration_ms,
            })
        })
        .collect()
}

pub fn bounds_from_proto(b: Option<&proto::RolloutBounds>) -> crate::deploy::Bounds {
    b.map_or_else(crate::deploy::Bounds::default, |b| crate::deploy::Bounds {
        error_rate_pct_max: b.error_rate_pct_max,
        p99_ms_max: b.p99_ms_max,
        min_requests: b.min_requests,
    })
}

pub fn deployment_to_proto(d: &crate::deploy::Deployment) -> proto::Deployment {
    proto::Deployment {
        endpoint: d.endpoint.clone(),
        model: d.model.clone(),
        namespace: d.namespace.clone(),
        split: shares_to_proto(&d.split),
        shadows: d.shadows.iter().copied().collect(),
        stable: d.stable,
        previous: d.previous,
        rollout: d.rollout.as_ref().map(|r| proto::Rollout {
            target: r.target,
            plan: r.plan.iter().map(step_to_proto).collect(),
            step: r.step as u32,
            step_started_ms: r.step_started_ms,
            paused: r.paused,
            bounds: Some(proto::RolloutBounds {
                error_rate_pct_max: r.bounds.error_rate_pct_max,
                p99_ms_max: r.bounds.p99_ms_max,
                min_requests: r.bounds.min_requests,
            }),
        }),
        generation: d.generation,
        created_by: d.created_by.clone(),
        created_at_ms: d.created_at_ms,
        updated_by: d.updated_by.clone(),
        updated_at_ms: d.updated_at_ms,
        traffic: d.describe_traffic(),
    }
}

pub fn deployment_record_to_proto(
    model: &str,
    r: &crate::deploy::DeploymentRecord,
) -> proto::DeploymentRecord {
    proto::DeploymentRecord {
        generation: r.generation,
        kind: r.kind.as_str().into(),
        principal: r.principal.clone(),
        at_ms: r.at_ms,
        reason: r.reason.clone(),
        split: shares_to_proto(&r.split),
        shadows: r.shadows.iter().copied().collect(),
        traffic: crate::deploy::describe_traffic(model, &r.split, &r.shadows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_in_the_client_syntax_convert_to_the_domain() {
        let cases = [
            ("reco/3", domain::VersionSelector::Number(3)),
            (
                "reco@champion",
                domain::VersionSelector::Alias("champion".into()),
            ),
            (
                "reco:production",
                domain::VersionSelector::Stage(domain::Stage::Production),
            ),
            (
                "reco:STAGE_ARCHIVED",
                domain::VersionSelector::Stage(domain::Stage::Archived),
            ),
        ];
        for (text, selector) in cases {
            let parsed: quiver_api::Reference = text.parse().unwrap();
            let expected = domain::VersionRef {
                model: "reco".into(),
                selector,
            };
            assert_eq!(reference_from_client(parsed).unwrap(), expected, "{text}");
        }
        // The parser never yields an unspecified stage; were one built by hand, it is refused.
        let unspecified = quiver_api::Reference {
            model: "reco".into(),
            selector: quiver_api::VersionSelector::Stage(proto::Stage::Unspecified),
        };
        assert!(matches!(
            reference_from_client(unspecified),
            Err(DomainError::Invalid { ref field, .. }) if field == "stage"
        ));
    }
}
