//! Tokens and roles as the state holds them.

use heed::RoTxn;

use crate::auth::{Grant, Role, Scope, TokenRecord};
use crate::state::tables::{decode, key2};
use crate::state::{AppResult, RegistryApp};

impl RegistryApp {
    pub fn token(&self, rtxn: &RoTxn<'_>, id: &str) -> AppResult<Option<TokenRecord>> {
        self.tables
            .tokens
            .get(rtxn, id.as_bytes())?
            .map(|v| decode("token", v))
            .transpose()
    }

    /// Every token, by id.
    pub fn tokens(&self, rtxn: &RoTxn<'_>) -> AppResult<Vec<TokenRecord>> {
        let mut out = Vec::new();
        for row in self.tables.tokens.iter(rtxn)? {
            let (_, v) = row?;
            out.push(decode("token", v)?);
        }
        Ok(out)
    }

    pub fn grant(
        &self,
        rtxn: &RoTxn<'_>,
        principal: &str,
        scope: &Scope,
    ) -> AppResult<Option<Grant>> {
        self.tables
            .grants
            .get(rtxn, &key2(principal, scope.as_key().as_bytes()))?
            .map(|v| decode("grant", v))
            .transpose()
    }

    /// The roles `principal` holds.
    pub fn grants_of(&self, rtxn: &RoTxn<'_>, principal: &str) -> AppResult<Vec<Grant>> {
        let prefix = key2(principal, b"");
        let mut out = Vec::new();
        for row in self.tables.grants.prefix_iter(rtxn, &prefix)? {
            let (_, v) = row?;
            out.push(decode("grant", v)?);
        }
        Ok(out)
    }

    /// Every grant, by principal and scope.
    pub fn grants(&self, rtxn: &RoTxn<'_>) -> AppResult<Vec<Grant>> {
        let mut out = Vec::new();
        for row in self.tables.grants.iter(rtxn)? {
            let (_, v) = row?;
            out.push(decode("grant", v)?);
        }
        Ok(out)
    }

    /// Whether anyone holds a role (the founding node bootstraps only while no one does).
    pub fn any_grant(&self, rtxn: &RoTxn<'_>) -> AppResult<bool> {
        Ok(!self.tables.grants.is_empty(rtxn)?)
    }

    /// How many principals are admin cluster-wide.
    pub fn cluster_admins(&self, rtxn: &RoTxn<'_>) -> AppResult<usize> {
        Ok(self
            .grants(rtxn)?
            .iter()
            .filter(|g| g.scope == Scope::Cluster && g.role == Role::Admin)
            .count())
    }
}
