//! Reads of governance: the policy set at a scope, the one that applies to a model, a version's
//! evaluation records, and the gates a version would meet now (the policy's, and lineage's
//! quarantine gate, which is always on).

use heed::RoTxn;
use serde::{Deserialize, Serialize};

use crate::domain::{Model, Stage, Version};
use crate::governance::{self, Evaluation, GateInput, GateReport, Policy, PolicyScope};
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
            &policy,
            stage,
            &GateInput {
                version,
                evaluations: &evaluations,
                production: production.as_ref().map(|(v, e)| (v, e.as_slice())),
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
