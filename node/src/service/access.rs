//! The Access service: tokens and roles (`crate::auth`). Creating a token draws its secret here,
//! on the node that answers; the command carries only the secret's hash.

use std::sync::Arc;

use quiver_api::proto::{self, access_server::Access};
use tonic::{Request, Response, Status};

use super::{caller, caller_with, invalid};
use crate::access::Target;
use crate::auth::{Grant, PresentedToken, Role, Scope, TokenRecord};
use crate::command::{Op, Response as Applied};
use crate::node::{Consistency, Node};

pub struct AccessService {
    pub node: Arc<Node>,
}

/// Longest lifetime a token may be given: about 100 years.
const TOKEN_LIFETIME_SECS_MAX: u64 = 100 * 365 * 24 * 3600;

pub fn token_to_proto(t: &TokenRecord) -> proto::Token {
    proto::Token {
        id: t.id.clone(),
        principal: t.principal.clone(),
        description: t.description.clone(),
        created_by: t.created_by.clone(),
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
        revoked_by: t.revoked_by.clone(),
        revoked_at_ms: t.revoked_at_ms,
    }
}

pub fn grant_to_proto(g: &Grant) -> proto::RoleGrant {
    proto::RoleGrant {
        principal: g.principal.clone(),
        scope: g.scope.as_key().to_string(),
        role: g.role.as_str().to_string(),
        granted_by: g.granted_by.clone(),
        granted_at_ms: g.granted_at_ms,
    }
}

fn expect_token(applied: Applied) -> Result<TokenRecord, Status> {
    match applied {
        Applied::Token(t) => Ok(*t),
        other => Err(Status::internal(format!(
            "unexpected apply result {other:?}"
        ))),
    }
}

fn expect_grant(applied: Applied) -> Result<proto::RoleGrant, Status> {
    match applied {
        Applied::Grant(g) => Ok(grant_to_proto(&g)),
        other => Err(Status::internal(format!(
            "unexpected apply result {other:?}"
        ))),
    }
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let actor = caller(&self.node, &request).await?;
        let principal = actor.name.clone();
        let grants = self
            .node
            .read(Consistency::Stale, move |app, txn| {
                app.grants_of(txn, &principal)
            })
            .await?;
        Ok(Response::new(proto::WhoAmIResponse {
            principal: actor.name,
            authenticated: actor.authenticated,
            grants: grants.iter().map(grant_to_proto).collect(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let expires_at_ms = match r.expires_in_secs {
            None => None,
            Some(0) => {
                return Err(Status::invalid_argument(
                    "expires_in_secs: 0 would expire at once; give a lifetime, or none for a \
                     token that never expires",
                ))
            }
            Some(secs) if secs > TOKEN_LIFETIME_SECS_MAX => {
                return Err(Status::invalid_argument(format!(
                    "expires_in_secs: {secs} is over the limit of {TOKEN_LIFETIME_SECS_MAX} \
                     (about 100 years); leave it unset for a token that never expires"
                )))
            }
            Some(secs) => Some(self.node.clock.now_ms().saturating_add(secs as i64 * 1000)),
        };
        let token = PresentedToken::random();
        let op = Op::CreateToken {
            id: token.id.clone(),
            principal: r.principal,
            description: r.description,
            secret_hash: token.secret_hash(),
            expires_at_ms,
        };
        let record = expect_token(self.node.propose(actor, op).await?)?;
        Ok(Response::new(proto::CreateTokenResponse {
            token: Some(token_to_proto(&record)),
            secret_token: token.to_string(),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        caller_with(
            &self.node,
            &request,
            Role::Admin,
            Target::Cluster,
            "list tokens",
        )
        .await?;
        let principal = request.into_inner().principal;
        let tokens = self
            .node
            .read(Consistency::Linearizable, |app, txn| app.tokens(txn))
            .await?;
        Ok(Response::new(proto::ListTokensResponse {
            tokens: tokens
                .iter()
                .filter(|t| principal.is_empty() || t.principal == principal)
                .map(token_to_proto)
                .collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::Token>, Status> {
        let actor = caller(&self.node, &request).await?;
        let op = Op::RevokeToken {
            id: request.into_inner().id,
        };
        let record = expect_token(self.node.propose(actor, op).await?)?;
        Ok(Response::new(token_to_proto(&record)))
    }

    async fn grant_role(
        &self,
        request: Request<proto::GrantRoleRequest>,
    ) -> Result<Response<proto::RoleGrant>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let op = Op::GrantRole {
            principal: r.principal,
            scope: Scope::parse(&r.scope).map_err(invalid)?,
            role: Role::parse(&r.role).map_err(invalid)?,
        };
        Ok(Response::new(expect_grant(
            self.node.propose(actor, op).await?,
        )?))
    }

    async fn revoke_role(
        &self,
        request: Request<proto::RevokeRoleRequest>,
    ) -> Result<Response<proto::RoleGrant>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let op = Op::RevokeRole {
            principal: r.principal,
            scope: Scope::parse(&r.scope).map_err(invalid)?,
        };
        Ok(Response::new(expect_grant(
            self.node.propose(actor, op).await?,
        )?))
    }

    async fn list_roles(
        &self,
        request: Request<proto::ListRolesRequest>,
    ) -> Result<Response<proto::ListRolesResponse>, Status> {
        let actor = caller(&self.node, &request).await?;
        let principal = request.into_inner().principal;
        if principal != actor.name || !actor.authenticated {
            let action = if principal.is_empty() {
                "list every principal's roles".to_string()
            } else {
                format!("list the roles of {principal}")
            };
            self.node
                .check_access(&actor, Role::Admin, Target::Cluster, &action)
                .await?;
        }
        let grants = self
            .node
            .read(Consistency::Linearizable, |app, txn| app.grants(txn))
            .await?;
        Ok(Response::new(proto::ListRolesResponse {
            grants: grants
                .iter()
                .filter(|g| principal.is_empty() || g.principal == principal)
                .map(grant_to_proto)
                .collect(),
        }))
    }
}
