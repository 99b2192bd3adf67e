//! Checking who may do what where a request arrives (`crate::auth` holds the rules): a request's
//! bearer token names its principal ([`Node::authenticate`]), and every command proposed through
//! this node, and every read a service serves, is checked against the principal's roles in this
//! node's applied state ([`Node::check_access`]). A follower checks before it forwards; the
//! leader trusts a command forwarded by a peer, which holds a cluster certificate. A revoked
//! token or role is refused on a node once that node has applied the revocation. What the
//! checks read of the state (a token's record, a principal's grants, a model's namespace) comes
//! from the node's [`crate::access_cache`] while no access change was applied since it was read.

use quiver_transfer::quic::ChunkPeers;
use quiver_transfer::ChunkSource;

use crate::access_cache::{read_facts, Facts, Wanted, Who};
use crate::auth::{self, allows, Need, PresentedToken, Role, TokenRecord};
use crate::command::Op;
use crate::domain::Actor;
use crate::error::NodeError;
use crate::governance::PolicyScope;
use crate::node::{Consistency, Node};

/// The name a request without credentials acts as, where anonymous reads are allowed.
pub const ANONYMOUS: &str = "anonymous";

/// Built with the `insecure-benchmark-baseline` feature (never for use: the baseline of the
/// access benchmark, see the README's benchmarks): no request is authenticated or checked,
/// each acts as [`BASELINE_ACTOR`], and the client API is plaintext gRPC on loopback only.
pub const INSECURE_BASELINE: bool = cfg!(feature = "insecure-benchmark-baseline");

/// Who every request acts as in an [`INSECURE_BASELINE`] build: the first admin of
/// `quiver-node up`.
pub const BASELINE_ACTOR: &str = "admin";

/// The scheme of the client API's endpoints: `https`, or `http` in an [`INSECURE_BASELINE`]
/// build.
pub const API_SCHEME: &str = if INSECURE_BASELINE { "http" } else { "https" };

fn baseline_actor() -> Actor {
    Actor {
        name: BASELINE_ACTOR.into(),
        authenticated: true,
    }
}

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

impl<'a> Target<'a> {
    /// The model whose namespace decides, if the target is one.
    fn model(self) -> Option<&'a str> {
        match self {
            Target::Model(m) => Some(m),
            _ => None,
        }
    }
}

/// What a request presents to say who sent it: a bearer token (parsed once, where the request
/// arrives: [`parse_bearer`]), and the client certificate of its connection (DER, already
/// verified against the cluster CA at the TLS handshake). A token, when there is one, decides;
/// else the certificate; with neither the request is anonymous.
#[derive(Clone, Debug, Default)]
pub struct Credential {
    pub token: Option<PresentedToken>,
    pub certificate: Option<Vec<u8>>,
}

impl<S: ChunkSource + Clone, P: ChunkPeers> Node<S, P> {
    /// [`Node::authenticate`] and [`Node::check_access`] in one look-up of the applied state
    /// for a token (the path every read request takes).
    pub async fn authorize(
        &self,
        credential: &Credential,
        role: Role,
        target: Target<'_>,
        action: &str,
    ) -> Result<Actor, NodeError> {
        if INSECURE_BASELINE {
            return Ok(baseline_actor());
        }
        let Some(presented) = &credential.token else {
            let actor = self.authenticate(credential).await?;
            self.check_access(&actor, role, target, action).await?;
            return Ok(actor);
        };
        let facts = self
            .access_facts(Wanted {
                who: Who::Token(&presented.id),
                grants: true,
                model: target.model(),
            })
            .await?;
        let actor = self.accepted(presented, facts.token.as_deref())?;
        self.decide(&actor, role, target, action, &facts.grants, facts.namespace)
            .await?;
        Ok(actor)
    }

    /// The actor a request's credential names. A token names its principal; a client
    /// certificate (without a token) the principal in its common name, while it is valid. No
    /// credential: anonymous where this node allows anonymous reads, else refused. An unknown,
    /// wrong, revoked or expired token, and a node's or an expired certificate, are refused,
    /// never treated as anonymous.
    pub async fn authenticate(&self, credential: &Credential) -> Result<Actor, NodeError> {
        if INSECURE_BASELINE {
            return Ok(baseline_actor());
        }
        if let Some(presented) = &credential.token {
            let facts = self
                .access_facts(Wanted {
                    who: Who::Token(&presented.id),
                    grants: false,
                    model: None,
                })
                .await?;
            return self.accepted(presented, facts.token.as_deref());
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

    /// `wanted` as this node's applied state has it: from the access cache where what it
    /// remembers is fresh (`crate::access_cache`), else read (and remembered).
    async fn access_facts(&self, wanted: Wanted<'_>) -> Result<Facts, NodeError> {
        if let Some(facts) = self.access_cache.look_up(&wanted) {
            return Ok(facts);
        }
        let (read_at, facts) = self
            .read(Consistency::Stale, |app, txn| read_facts(app, txn, &wanted))
            .await?;
        self.access_cache.remember(read_at, &wanted, &facts);
        Ok(facts)
    }

    /// The actor a client certificate names, if it is a client's and valid now (the handshake
    /// checked it then; a connection may outlive it).
    fn certificate_actor(&self, der: &[u8]) -> Result<Actor, NodeError> {
        let identity = self
            .client_certs
            .read(der, crate::tls::client_cert_identity)
            .map_err(|why| {
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

    /// The actor `presented` names if `record` (its stored record, if any) accepts it now: the
    /// secret, the revocation and the expiry are checked on every request, cached record or not.
    fn accepted(
        &self,
        presented: &PresentedToken,
        record: Option<&TokenRecord>,
    ) -> Result<Actor, NodeError> {
        if let Some(why) = auth::token_refusal(presented, record, self.clock.now_ms()) {
            return Err(NodeError::Unauthenticated(why));
        }
        Ok(Actor {
            name: record.map(|r| r.principal.clone()).unwrap_or_default(),
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
        if INSECURE_BASELINE {
            return Ok(());
        }
        if !actor.authenticated {
            if self.core.allow_anonymous_reads && role == Role::Reader {
                return Ok(());
            }
            return Err(NodeError::Unauthenticated(format!(
                "{action} needs credentials: pass --token or set QUIVER_TOKEN, or connect with a \
                 client certificate"
            )));
        }
        let facts = self
            .access_facts(Wanted {
                who: Who::Principal(&actor.name),
                grants: true,
                model: target.model(),
            })
            .await?;
        self.decide(actor, role, target, action, &facts.grants, facts.namespace)
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
                // The rollout controller, on the leader, moves rollouts on.
                Op::UpsertNode(_) | Op::Bootstrap { .. } | Op::AdvanceRollout { .. } => Ok(()),
                other => Err(NodeError::PermissionDenied(format!(
                    "{} may not {}: a node's own principal only announces the node and moves \
                     rollouts on",
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

/// Parses a request's bearer token (`qvr_<id>_<secret>`); a malformed one is refused, never
/// echoed.
pub fn parse_bearer(text: &str) -> Result<PresentedToken, NodeError> {
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
        // Routing traffic is an approver's, like a promotion, on the endpoint model's namespace.
        Op::CreateDeployment { model, .. }
        | Op::SetTraffic { model, .. }
        | Op::StartRollout { model, .. }
        | Op::AdvanceRollout { model, .. }
        | Op::PauseRollout { model, .. }
        | Op::Rollback { model, .. }
        | Op::ReportServing { model, .. } => (Role::Approver, Target::Model(model)),
        // A logged model belongs to no namespace until it is registered as a version (which
        // then needs the registrant role on the model's namespace): logging one needs the
        // registrant role cluster-wide.
        Op::CreateLoggedModel { .. }
        | Op::UpdateLoggedModel { .. }
        | Op::PutLoggedModelFile { .. } => (Role::Registrant, Target::Cluster),
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

#[cfg(test)]
mod tests {
    //! The access cache on a real node (one Raft member on loopback, a clock of the test's):
    //! what a revocation, an expiry or a wrong secret must refuse is refused on the next request
    //! after a cached success, and the cache answers only what its state would.

    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::*;
    use crate::access_cache::ENTRIES_PER_TABLE_MAX;
    use crate::auth::Scope;
    use crate::command::Op;
    use crate::domain::RiskTier;
    use crate::test_node::{one_node, OneNode, TestClock, TestNode};

    const START_MS: i64 = 1_800_000_000_000;

    struct Harness {
        node: Arc<TestNode>,
        clock: Arc<TestClock>,
        admin: Actor,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        /// A one-node cluster with a first admin, a model `reco` in namespace `search`.
        async fn start() -> Harness {
            let OneNode {
                node,
                clock,
                admin,
                dir,
                ..
            } = one_node(START_MS).await;
            let harness = Harness {
                node,
                clock,
                admin,
                _dir: dir,
            };
            harness
                .admin(Op::CreateModel {
                    name: "reco".into(),
                    namespace: "search".into(),
                    description: String::new(),
                    risk_tier: RiskTier::Low,
                    tags: Default::default(),
                })
                .await;
            harness
        }

        async fn admin(&self, op: Op) {
            self.node
                .propose(self.admin.clone(), op)
                .await
                .expect("an admin's command");
        }

        /// A new token of `principal`'s, expiring at `expires_at_ms`, as its credential.
        async fn token(&self, principal: &str, expires_at_ms: Option<i64>) -> Credential {
            let token = PresentedToken::random();
            self.admin(Op::CreateToken {
                id: token.id.clone(),
                principal: principal.into(),
                description: String::new(),
                secret_hash: token.secret_hash(),
                expires_at_ms,
            })
            .await;
            Credential {
                token: Some(token),
                certificate: None,
            }
        }

        async fn grant(&self, principal: &str, role: Role) {
            self.admin(Op::GrantRole {
                principal: principal.into(),
                scope: Scope::Namespace("search".into()),
                role,
            })
            .await;
        }

        /// Reads model `reco` with `credential`, as `GetModel` checks it.
        async fn read_reco(&self, credential: &Credential) -> Result<Actor, NodeError> {
            self.node
                .authorize(credential, Role::Reader, Target::Model("reco"), "read reco")
                .await
        }

        /// Whether what `read_reco` needs of `credential` is served from the cache now.
        fn cached(&self, credential: &Credential) -> bool {
            let id = &credential.token.as_ref().expect("a token").id;
            self.node
                .access_cache
                .look_up(&Wanted {
                    who: Who::Token(id),
                    grants: true,
                    model: Some("reco"),
                })
                .is_some()
        }
    }

    #[tokio::test]
    async fn a_token_revoked_after_a_cached_success_is_refused_on_the_next_request() {
        let h = Harness::start().await;
        let alice = h.token("alice", None).await;
        h.grant("alice", Role::Reader).await;
        assert_eq!(h.read_reco(&alice).await.expect("allowed").name, "alice");
        assert!(h.cached(&alice), "the success was cached");
        assert_eq!(
            h.read_reco(&alice).await.expect("allowed again").name,
            "alice"
        );
        // A write that changes no access keeps the entry.
        h.admin(Op::UpdateModel {
            name: "reco".into(),
            description: Some("ranking".into()),
            set_tags: Default::default(),
            remove_tags: Vec::new(),
        })
        .await;
        assert!(h.cached(&alice), "kept across an unrelated write");

        let id = alice.token.as_ref().expect("a token").id.clone();
        h.admin(Op::RevokeToken { id }).await;
        let refused = h.read_reco(&alice).await.expect_err("revoked");
        assert!(
            matches!(&refused, NodeError::Unauthenticated(why) if why.contains("revoked by root")),
            "{refused:?}"
        );
        let refused = h.node.authenticate(&alice).await.expect_err("revoked");
        assert!(
            matches!(refused, NodeError::Unauthenticated(_)),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_role_revoked_after_a_cached_success_is_refused_on_the_next_request() {
        let h = Harness::start().await;
        let alice = h.token("alice", None).await;
        h.grant("alice", Role::Registrant).await;
        let actor = h.read_reco(&alice).await.expect("allowed");
        // The check a command proposed through this node gets (by principal, not token).
        let update = Op::UpdateModel {
            name: "reco".into(),
            description: None,
            set_tags: Default::default(),
            remove_tags: Vec::new(),
        };
        h.node
            .check_command(&actor, &update)
            .await
            .expect("a registrant updates");
        assert!(h.cached(&alice));

        h.admin(Op::RevokeRole {
            principal: "alice".into(),
            scope: Scope::Namespace("search".into()),
        })
        .await;
        let refused = h.read_reco(&alice).await.expect_err("role revoked");
        assert!(
            matches!(&refused, NodeError::PermissionDenied(why) if why.contains("alice has no roles")),
            "{refused:?}"
        );
        let refused = h
            .node
            .check_command(&actor, &update)
            .await
            .expect_err("role revoked");
        assert!(
            matches!(refused, NodeError::PermissionDenied(_)),
            "{refused:?}"
        );
        // Granted again: allowed again.
        h.grant("alice", Role::Reader).await;
        h.read_reco(&alice).await.expect("allowed again");
    }

    #[tokio::test]
    async fn a_token_cached_before_its_expiry_is_refused_from_its_expiry_on() {
        let h = Harness::start().await;
        let expires_at_ms = START_MS + 60_000;
        let alice = h.token("alice", Some(expires_at_ms)).await;
        h.grant("alice", Role::Reader).await;
        h.read_reco(&alice).await.expect("allowed");
        assert!(h.cached(&alice));
        h.clock.0.store(expires_at_ms - 1, Ordering::SeqCst);
        h.read_reco(&alice).await.expect("allowed until it expires");
        h.clock.0.store(expires_at_ms, Ordering::SeqCst);
        let refused = h.read_reco(&alice).await.expect_err("expired");
        assert!(
            matches!(&refused, NodeError::Unauthenticated(why) if why.contains("expired")),
            "{refused:?}"
        );
        assert!(h.node.authenticate(&alice).await.is_err(), "expired");
    }

    #[tokio::test]
    async fn a_wrong_secret_for_a_cached_token_id_is_refused() {
        let h = Harness::start().await;
        let alice = h.token("alice", None).await;
        h.grant("alice", Role::Reader).await;
        h.read_reco(&alice).await.expect("allowed");
        assert!(h.cached(&alice));
        let real = alice.token.clone().expect("a token");
        let forged = Credential {
            token: Some(PresentedToken {
                id: real.id.clone(),
                secret: PresentedToken::random().secret,
            }),
            certificate: None,
        };
        for refused in [
            h.read_reco(&forged).await.expect_err("wrong secret"),
            h.node
                .authenticate(&forged)
                .await
                .expect_err("wrong secret"),
        ] {
            assert!(
                matches!(&refused, NodeError::Unauthenticated(why) if why.contains("wrong secret")),
                "{refused:?}"
            );
        }
        h.read_reco(&alice)
            .await
            .expect("the real secret still works");
    }

    #[tokio::test]
    async fn unknown_token_ids_are_refused_and_grow_no_cache() {
        let h = Harness::start().await;
        let alice = h.token("alice", None).await;
        h.grant("alice", Role::Reader).await;
        h.read_reco(&alice).await.expect("allowed");
        let before = h.node.access_cache.sizes();
        assert_eq!(before.tokens, 1);
        for _ in 0..ENTRIES_PER_TABLE_MAX + 100 {
            let stranger = Credential {
                token: Some(PresentedToken::random()),
                certificate: None,
            };
            let refused = h.read_reco(&stranger).await.expect_err("unknown");
            assert!(
                matches!(&refused, NodeError::Unauthenticated(why) if why.contains("not known")),
                "{refused:?}"
            );
        }
        assert_eq!(h.node.access_cache.sizes(), before);
        assert!(h.cached(&alice), "alice's entry was not pushed out");
    }
}
