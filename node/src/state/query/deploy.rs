//! Reads of deployments: one endpoint, a page of endpoints, an endpoint's history.

use std::ops::Bound;

use heed::RoTxn;

use crate::deploy::{AgentReport, Deployment, DeploymentRecord};
use crate::domain::DomainError;
use crate::state::tables::{decode, key2};
use crate::state::{AppResult, RegistryApp};

impl RegistryApp {
    pub fn find_deployment(
        &self,
        rtxn: &RoTxn<'_>,
        endpoint: &str,
    ) -> AppResult<Option<Deployment>> {
        match self.tables.deployments.get(rtxn, endpoint.as_bytes())? {
            Some(bytes) => Ok(Some(decode("deployment", bytes)?)),
            None => Ok(None),
        }
    }

    pub fn get_deployment(&self, rtxn: &RoTxn<'_>, endpoint: &str) -> AppResult<Deployment> {
        self.find_deployment(rtxn, endpoint)?.ok_or_else(|| {
            DomainError::DeploymentNotFound {
                endpoint: endpoint.into(),
            }
            .into()
        })
    }

    /// Endpoints after `after` in name order (of `model` only, if given), at most `page_size`
    /// (0: the default).
    pub fn list_deployments(
        &self,
        rtxn: &RoTxn<'_>,
        model: Option<&str>,
        after: &str,
        page_size: usize,
    ) -> AppResult<(Vec<Deployment>, Option<String>)> {
        let size = super::page_size(page_size);
        // LMDB refuses an empty key, even as a bound.
        let lower = match after {
            "" => Bound::Unbounded,
            after => Bound::Excluded(after.as_bytes()),
        };
        let bounds = (lower, Bound::Unbounded);
        let mut out = Vec::new();
        for row in self.tables.deployments.range(rtxn, &bounds)? {
            let (_, bytes) = row?;
            let d: Deployment = decode("deployment", bytes)?;
            if model.is_some_and(|m| m != d.model) {
                continue;
            }
            if out.len() == size {
                let next = out.last().map(|d: &Deployment| d.endpoint.clone());
                return Ok((out, next));
            }
            out.push(d);
        }
        Ok((out, None))
    }

    /// The endpoint's history, newest first, at most `limit` records before generation
    /// `before` (0: from the newest).
    pub fn deployment_history(
        &self,
        rtxn: &RoTxn<'_>,
        endpoint: &str,
        before: u64,
        limit: usize,
    ) -> AppResult<Vec<DeploymentRecord>> {
        self.get_deployment(rtxn, endpoint)?;
        let start = key2(endpoint, &0u64.to_be_bytes());
        let end = key2(
            endpoint,
            &match before {
                0 => u64::MAX,
                b => b - 1,
            }
            .to_be_bytes(),
        );
        let bounds = (Bound::Included(&start[..]), Bound::Included(&end[..]));
        let mut out = Vec::new();
        for row in self.tables.deployment_history.rev_range(rtxn, &bounds)? {
            if out.len() == limit {
                break;
            }
            let (_, bytes) = row?;
            out.push(decode("deployment record", bytes)?);
        }
        Ok(out)
    }

    /// The latest report of each agent of `endpoint`, by agent name.
    pub fn serving_reports(&self, rtxn: &RoTxn<'_>, endpoint: &str) -> AppResult<Vec<AgentReport>> {
        let prefix = key2(endpoint, b"");
        let mut out = Vec::new();
        for row in self.tables.serving_reports.prefix_iter(rtxn, &prefix)? {
            let (_, bytes) = row?;
            out.push(decode("serving report", bytes)?);
        }
        Ok(out)
    }
}
