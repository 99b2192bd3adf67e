//! Checking who may do what where a request arrives (`crate::auth` holds the rules): a request's
//! bearer token names its principal ([`Node::authenticate`]), and every command proposed through
//! this node, and every read a service serves, is checked against the principal's roles in this
//! node's applied state ([`Node::check_access`]). A follower checks before it forwards; the
//! leader trusts a command forwarded by a peer, which holds a cluster certificate. A revoked
//! token or role is refused on a node once that node has applied the revocation.

use quiver_transfer::quic::ChunkPeers;
use quiver_transfer::ChunkSource;

use crate::auth::{self, allows, Need, PresentedToken, Role, TokenRecord};
use crate::command::Op;
use crate::domain::Actor;
use crate::error::NodeError;
use crate::governance::PolicyScope;
use crate::node::{Consistency, Node};

/// The name a request without credentials acts as, where anonymous reads are allowed.
pub const ANONYMOUS: &str = "anonymous";

/// What a request acts on, for its role check.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// The cluster itself: membership, tokens, drills.
    Cluster,
    /// A namespace (a model being created in it, a grant in it).
    Namespace(&'a str),
    /// A model, in whatever namespace it is. A read of a model that does not exist needs no
    /// role (it answers not found); a write to one this node does not know is checked against
    /// the leader's state, and one that does not exist there needs the role cluster-wide.
    Model(&'a str),
    /// Anything any authenticated principal may see (cluster and node status).
    Anyone,
}

/// What a request presents to say who sent it: a bearer token, and the client certificate of
/// its connection (DER, already verified against the cluster CA at the TLS handshake). A
/// token, when there is one, decides; else the certificate; with neither the request is
/// anonymous.
#[derive(Clone, Debug, Default)]
pub struct Credential {
    pub bearer: Option<String>,
    pub certificate: Option<Vec<u8>>,
}

impl<S: ChunkSource + Clone, P: ChunkPeers> Node<S, P> {
    /// [`Node::authenticate`] and [`Node::check_access`] in one read of the applied state for a
    /// token (the path every read request takes).
    pub async fn authorize(
        &self,
        credential: &Credential,
        role: Role,
        target: Target<'_>,
        action: &str,
    ) -> Result<Actor, NodeError> {
        let Some(text) = &credential.bearer else {
            let actor = self.authenticate(credential).await?;
            self.check_access(&actor, role, target, action).await?;
            return Ok(actor);
        };
        let presented = parse_bearer(text)?;
        let id = presented.id.clone();
        let model = match target {
            Target::Model(m) => Some(m.to_string()),
            _ => None,
        };
        let (record, grants, namespace) = self
            .read(Consistency::Stale, move |app, txn| {
                let record = app.token(txn, &id)?;
                let grants = match &record {
                    Some(r) => app.grants_of(txn, &r.principal)?,
                    None => Vec::new(),
                };
                let namespace = match model {
                    Some(m) => app.find_model(txn, &m)?.map(|m| m.namespace),
                    None => None,
                };
                Ok((record, grants, namespace))
            })
            .await?;
        let actor = self.accepted(&presented, record)?;
        self.decide(&actor, role, target, action, &grants, namespace)
            .await?;
        Ok(actor)
    }

    /// The actor a request's credential names. A token names its principal; a client
    /// certificate (without a token) the principal in its common name, while it is valid. No
    /// credential: anonymous where this node allows anonymous reads, else refused. An unknown,
    /// wrong, revoked or expired token, and a node's or an expired certificate, are refused,
    /// never treated as anonymous.
    pub async fn authenticate(&self, credential: &Credential) -> Result<Actor, NodeError> {
        if let Some(text) = &credential.bearer {
            let presented = parse_bearer(text)?;
            let id = presented.id.clone();
            let record = self
                .read(Consistency::Stale, move |app, txn| app.token(txn, &id))
                .await?;
            return self.accepted(&presented, record);
        }
        if let Some(der) = &credential.certificate {
            return self.certificate_actor(der);
        }
        if self.core.allow_anonymous_reads {
            return Ok(Actor {
                name: ANONYMOUS.into(),
                authenticated: false,
            });
        }
        Err(NodeError::Unauthenticated(
            "the request carries no token: pass --token or set QUIVER_TOKEN, or connect with a \
             client certificate (--cert/--key). A local cluster started with `quiver-node up` \
             keeps its admin's token in .quiver/admin.token, which the CLI finds when run beside \
             it"
            .into(),
        ))
    }

    /// The actor a client certificate names, if it is a client's and valid now (the handshake
    /// checked it then; a connection may outlive it).
    fn certificate_actor(&self, der: &[u8]) -> Result<Actor, NodeError> {
        let identity = crate::tls::client_cert_identity(der).map_err(|why| {
            NodeError::Unauthenticated(format!("the client certificate is refused: {why}"))
        })?;
        let now = self.clock.now_ms();
        if now > identity.not_after_ms || now < identity.not_before_ms {
            return Err(NodeError::Unauthenticated(format!(
                "the client certificate of {} is valid from {} to {}, not now: ask an operator \
                 for a new one (`quiver-node cert issue --client {}`)",
                identity.principal,
                auth::utc_text(identity.not_before_ms),
                auth::utc_text(identity.not_after_ms),
                identity.principal
            )));
        }
        Ok(Actor {
            name: identity.principal,
            authenticated: true,
        })
    }

    /// The actor `presented` names if `record` (its stored record, if any) accepts it now.
    fn accepted(
        &self,
        presented: &PresentedToken,
        record: Option<TokenRecord>,
    ) -> Result<Actor, NodeError> {
        if let Some(why) = auth::token_refusal(presented, record.as_ref(), self.clock.now_ms()) {
            return Err(NodeError::Unauthenticated(why));
        }
        Ok(Actor {
            name: record.map(|r| r.principal).unwrap_or_default(),
            authenticated: true,
        })
    }

    /// Refuses with [`NodeError::PermissionDenied`] unless `actor` holds `role` for `target`
    /// in this node's applied state. `action` says what was asked, for the message.
    pub async fn check_access(
        &self,
        actor: &Actor,
        role: Role,
        target: Target<'_>,
        action: &str,
    ) -> Result<(), NodeError> {
        if !actor.authenticated {
            if self.core.allow_anonymous_reads && role == Role::Reader {
                return Ok(());
            }
            return Err(NodeError::Unauthenticated(format!(
                "{action} needs credentials: pass --token or set QUIVER_TOKEN, or connect with a \
                 client certificate"
            )));
        }
        let principal = actor.name.clone();
        let model = match target {
            Target::Model(m) => Some(m.to_string()),
            _ => None,
        };
        let (grants, namespace) = self
            .read(Consistency::Stale, move |app, txn| {
                let grants = app.grants_of(txn, &principal)?;
                let namespace = match model {
                    Some(m) => app.find_model(txn, &m)?.map(|m| m.namespace),
                    None => None,
                };
                Ok((grants, namespace))
            })
            .await?;
        self.decide(actor, role, target, action, &grants, namespace)
            .await
    }

    /// Whether `actor`, holding `grants`, may act as `role` on `target`; `namespace` is the
    /// target model's namespace in this node's applied state, if it knows the model.
    async fn decide(
        &self,
        actor: &Actor,
        role: Role,
        target: Target<'_>,
        action: &str,
        grants: &[auth::Grant],
        namespace: Option<String>,
    ) -> Result<(), NodeError> {
        let need = match target {
            Target::Cluster => Need::cluster(role),
            Target::Namespace(ns) => Need::namespace(role, ns),
            Target::Model(m) => match namespace {
                Some(ns) => Need::namespace(role, &ns),
                // Not (yet) known here: this node may lag behind the leader, which may have the
                // model by now. Ask the leader's state; a model that still does not exist can
                // only be written by a principal with the role cluster-wide (a write to it fails
                // as not found anyway, and a model created meanwhile must not take a write that
                // no role in its namespace allowed).
                None => {
                    let name = m.to_string();
                    let confirmed = self
                        .read(Consistency::Linearizable, move |app, txn| {
                            Ok(app.find_model(txn, &name)?.map(|m| m.namespace))
                        })
                        .await?;
                    match confirmed {
                        Some(ns) => Need::namespace(role, &ns),
                        None if role == Role::Reader => return Ok(()),
                        None => Need::cluster(role),
                    }
                }
            },
            Target::Anyone => return Ok(()),
        };
        if allows(grants, &need) {
            return Ok(());
        }
        Err(NodeError::PermissionDenied(auth::denied(
            &actor.name,
            action,
            &need,
            grants,
        )))
    }

    /// The role check of a command proposed through this node (see the module docs). A node's
    /// own principal may only announce the node and bootstrap access.
    pub async fn check_command(&self, actor: &Actor, op: &Op) -> Result<(), NodeError> {
        if auth::is_system_principal(&actor.name) && actor.authenticated {
            return match op {
                Op::UpsertNode(_) | Op::Bootstrap { .. } => Ok(()),
                other => Err(NodeError::PermissionDenied(format!(
                    "{} may not {}: a node's own principal only announces the node",
                    actor.name,
                    other.kind()
                ))),
            };
        }
        let (role, target) = need_of(op);
        let action = match op.model_name() {
            Some(model) => format!("{} on model {model}", op.kind()),
            None => op.kind().to_string(),
        };
        self.check_access(actor, role, target, &action).await
    }
}

fn parse_bearer(text: &str) -> Result<PresentedToken, NodeError> {
    PresentedToken::parse(text).ok_or_else(|| {
        NodeError::Unauthenticated(
            "the token is malformed: a token looks like qvr_<16 hex digits>_<32 hex digits>, as \
             `quiver token create` prints it"
                .into(),
        )
    })
}

/// The role a command needs, and on what.
pub fn need_of(op: &Op) -> (Role, Target<'_>) {
    match op {
        Op::CreateModel { namespace, .. } => (Role::Registrant, Target::Namespace(namespace)),
        Op::UpdateModel { name, .. } => (Role::Registrant, Target::Model(name)),
        Op::CreateVersion { model, .. }
        | Op::SetVersionStatus { model, .. }
        | Op::SetVersionTags { model, .. } => (Role::Registrant, Target::Model(model)),
        Op::SetStage { model, .. } | Op::SetAlias { model, .. } | Op::DeleteAlias { model, .. } => {
            (Role::Approver, Target::Model(model))
        }
        Op::GrantRole { scope, .. } | Op::RevokeRole { scope, .. } => match scope {
            auth::Scope::Cluster => (Role::Admin, Target::Cluster),
            auth::Scope::Namespace(ns) => (Role::Admin, Target::Namespace(ns)),
        },
        Op::UpsertNode(_)
        | Op::RemoveNode { .. }
        | Op::CreateToken { .. }
        | Op::RevokeToken { .. }
        | Op::Bootstrap { .. } => (Role::Admin, Target::Cluster),
        // Policies are admins': a model's needs its namespace's admin, a namespace's too.
        Op::SetPolicy { scope, .. } => match scope {
            PolicyScope::Model(model) => (Role::Admin, Target::Model(model)),
            PolicyScope::Namespace { namespace, .. } => (Role::Admin, Target::Namespace(namespace)),
        },
        // An evaluation pipeline records results with the registrant's role; what it may
        // promote is the policy's business.
        Op::RecordEvaluation { model, .. } => (Role::Registrant, Target::Model(model)),
        // Approving needs what the policy's approvals gate asks for (apply checks that against
        // the committed grants); approver at least.
        Op::DecideReview { model, .. } => (Role::Approver, Target::Model(model)),
        // Lineage (decision 0021): an edge into (else out of) a version needs the registrant
        // role on its model's namespace; a quarantine the approver role there, its lift the
        // admin role. Data snapshots, feature sets, commits, runs and deployments belong to no
        // namespace: an op that names no version needs its role cluster-wide.
        Op::AddLineageEdge { .. } | Op::Quarantine { .. } | Op::LiftQuarantine { .. } => {
            let role = match op {
                Op::AddLineageEdge { .. } => Role::Registrant,
                Op::Quarantine { .. } => Role::Approver,
                _ => Role::Admin,
            };
            match op.model_name() {
                Some(model) => (role, Target::Model(model)),
                None => (role, Target::Cluster),
            }
        }
    }
}
