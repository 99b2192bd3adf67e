//! Reads of governance: the policy set at a scope, the one that applies to a model, a version's
//! evaluation records, and the gates a version would meet now (the policy's, and lineage's
//! quarantine gate, which is always on).

use heed::RoTxn;
use serde::{Deserialize, Serialize};

use crate::domain::{Model, Stage, Version};
use crate::governance::{
    self, Approval, Evaluation, GateInput, GateReport, Policy, PolicyScope, Review, ReviewState,
    SignatureOverride,
};
use crate::state::tables::{decode, policy_key, version_key};
use crate::state::{AppResult, RegistryApp};

/// A `policies` row: the scope with its policy, so a listing needs no key parsing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub scope: PolicyScope,
    pub policy: Policy,
}

impl RegistryApp {
    /// The policy set at `scope`, if any.
    pub fn policy_at(&self, rtxn: &RoTxn<'_>, scope: &PolicyScope) -> AppResult<Option<Policy>> {
        match self.tables.policies.get(rtxn, &policy_key(scope))? {
            Some(bytes) => Ok(Some(decode::<StoredPolicy>("policy", bytes)?.policy)),
            None => Ok(None),
        }
    }

    /// Every policy set, in key order (models' first, then namespaces').
    pub fn policies(&self, rtxn: &RoTxn<'_>) -> AppResult<Vec<StoredPolicy>> {
        let mut out = Vec::new();
        for row in self.tables.policies.iter(rtxn)? {
            let (_, v) = row?;
            out.push(decode("policy", v)?);
        }
        Ok(out)
    }

    /// The policy that applies to `model`, and where it was set (`None`: nowhere, no gates).
    pub fn applicable_policy(
        &self,
        rtxn: &RoTxn<'_>,
        model: &Model,
    ) -> AppResult<(Option<PolicyScope>, Policy)> {
        let mut failure = None;
        let found =
            governance::applicable(
                &model.name,
                &model.namespace,
                model.risk_tier,
                |s| match self.policy_at(rtxn, s) {
                    Ok(p) => p,
                    Err(e) => {
                        failure.get_or_insert(e);
                        None
                    }
                },
            );
        match failure {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    /// A version's evaluation records, oldest first.
    pub fn evaluations(
        &self,
        rtxn: &RoTxn<'_>,
        model: &str,
        number: u64,
    ) -> AppResult<Vec<Evaluation>> {
        let mut out = Vec::new();
        for row in self
            .tables
            .evaluations
            .prefix_iter(rtxn, &version_key(model, number))?
        {
            let (_, v) = row?;
            out.push(decode("evaluation", v)?);
        }
        Ok(out)
    }

    /// The gates `version` of `model` meets for entering `stage` under the policy that applies.
    pub fn gate_report(
        &self,
        rtxn: &RoTxn<'_>,
        model: &Model,
        version: &Version,
        stage: Stage,
    ) -> AppResult<GateReport> {
        let (_, policy) = self.applicable_policy(rtxn, model)?;
        let decided = match self.open_review(rtxn, &model.name, version.number)? {
            Some(r) if r.stage == stage => Decided {
                approvals: r.approvals,
                signature_override: r.signature_override,
            },
            _ => Decided::default(),
        };
        self.gate_report_with(rtxn, model, version, stage, &policy, &decided)
    }

    /// [`RegistryApp::gate_report`] under `policy` with `approvals`.
    pub(crate) fn gate_report_with(
        &self,
        rtxn: &RoTxn<'_>,
        model: &Model,
        version: &Version,
        stage: Stage,
        policy: &Policy,
        decided: &Decided,
    ) -> AppResult<GateReport> {
        let evaluations = self.evaluations(rtxn, &model.name, version.number)?;
        let production = match model.production_version.filter(|p| *p != version.number) {
            Some(number) => {
                let v = self.get_version(rtxn, &model.name, number)?;
                let evals = self.evaluations(rtxn, &model.name, number)?;
                Some((v, evals))
            }
            None => None,
        };
        let mut report = governance::evaluate(
            policy,
            stage,
            &GateInput {
                version,
                evaluations: &evaluations,
                production: production.as_ref().map(|(v, e)| (v, e.as_slice())),
                approvals: &decided.approvals,
                signature_override: decided.signature_override.as_ref(),
            },
        );
        // Lineage: always on for Staging and Production, whatever the policy; in the report
        // only when it fails (`lineage::quarantine_gate`).
        if matches!(stage, Stage::Staging | Stage::Production) {
            report
                .results
                .extend(self.quarantine_gate(rtxn, &model.name, version.number)?);
        }
        Ok(report)
    }
}

/// What people decided about a version's stage change: the approvals of its review and an
/// approver's signature override.
#[derive(Clone, Debug, Default)]
pub struct Decided {
    pub approvals: Vec<Approval>,
    pub signature_override: Option<SignatureOverride>,
}

/// Which reviews a listing shows.
#[derive(Clone, Debug, Default)]
pub struct ReviewFilter {
    pub model: Option<String>,
    /// Only open ones.
    pub open_only: bool,
    /// Reviews with an id above this (paging).
    pub after: u64,
    pub limit: usize,
}

impl RegistryApp {
    /// Review `id`, if any.
    pub fn review(&self, rtxn: &RoTxn<'_>, id: u64) -> AppResult<Option<Review>> {
        match self.tables.reviews.get(rtxn, &id.to_be_bytes())? {
            Some(bytes) => Ok(Some(decode("review", bytes)?)),
            None => Ok(None),
        }
    }

    /// The open review of version `number` of `model`, if any.
    pub fn open_review(
        &self,
        rtxn: &RoTxn<'_>,
        model: &str,
        number: u64,
    ) -> AppResult<Option<Review>> {
        match self
            .tables
            .open_reviews
            .get(rtxn, &version_key(model, number))?
        {
            Some(id) => {
                let id = u64::from_be_bytes(id.try_into().map_err(|_| {
                    crate::state::AppError::Storage(anyhow::anyhow!(
                        "open_reviews row of {model}/{number} is not a review id"
                    ))
                })?);
                self.review(rtxn, id)
            }
            None => Ok(None),
        }
    }

    /// Every open review of `model` (of any of its versions; of every model with `None`).
    pub fn open_reviews_of(&self, rtxn: &RoTxn<'_>, model: Option<&str>) -> AppResult<Vec<Review>> {
        // LMDB refuses an empty key, so every model's is a plain walk, not an empty prefix.
        let rows = match model {
            Some(model) => self
                .tables
                .open_reviews
                .prefix_iter(rtxn, &[model.as_bytes(), b"\0"].concat())?
                .collect::<Vec<_>>(),
            None => self.tables.open_reviews.iter(rtxn)?.collect(),
        };
        let mut ids = Vec::new();
        for row in rows {
            let (_, id) = row?;
            if let Ok(id) = <[u8; 8]>::try_from(id) {
                ids.push(u64::from_be_bytes(id));
            }
        }
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.review(rtxn, id)?);
        }
        Ok(out)
    }

    /// The id the next review gets: one above the highest so far.
    pub(crate) fn next_review_id(&self, rtxn: &RoTxn<'_>) -> AppResult<u64> {
        Ok(match self.tables.reviews.last(rtxn)? {
            Some((k, _)) => <[u8; 8]>::try_from(k).map_or(1, |k| u64::from_be_bytes(k) + 1),
            None => 1,
        })
    }

    /// Reviews in id order, filtered.
    pub fn reviews(&self, rtxn: &RoTxn<'_>, filter: &ReviewFilter) -> AppResult<Vec<Review>> {
        let mut out = Vec::new();
        let start = filter.after.saturating_add(1).to_be_bytes();
        let range = (
            std::ops::Bound::Included(start.as_slice()),
            std::ops::Bound::Unbounded,
        );
        for row in self.tables.reviews.range(rtxn, &range)? {
            if out.len() >= filter.limit {
                break;
            }
            let (_, v) = row?;
            let review: Review = decode("review", v)?;
            if filter.model.as_ref().is_some_and(|m| *m != review.model)
                || (filter.open_only && review.state != ReviewState::Open)
            {
                continue;
            }
            out.push(review);
        }
        Ok(out)
    }
}
