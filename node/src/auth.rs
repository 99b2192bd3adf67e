//! Who may do what: principals, API tokens, roles per namespace, and the one function that
//! decides whether a principal's grants allow an action ([`allows`]). Pure: the state stores
//! tokens and grants, the services authenticate a request and ask [`allows`] where it arrives,
//! and apply asks it again for every command, against the committed grants, so that a grant
//! revoked while a request was on its way is honoured on every node alike.
//!
//! - A **principal** is a name (`alice`, `ci-pipeline`): the rules of model names. Names with a
//!   `:` are the cluster's own (a node announcing itself is `node:3`) and cannot be granted.
//! - A **token** is `qvr_<id>_<secret>`: `id` is 16 hex digits, public, the key of its record;
//!   `secret` is 32 hex digits (128 random bits) of which the state keeps only the blake3 hash.
//!   It is shown once, when created.
//! - A **role** is held in a namespace or cluster-wide (`*`): reader < registrant < approver <
//!   admin, each allowing what the ones below it allow. Cluster operations (membership, step
//!   down, crash drills, tokens) need admin cluster-wide.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{validate_name, DomainError, DomainResult};

/// What a role allows, lowest first: each role allows everything the ones before it do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Read models, versions, aliases, downloads and cluster status.
    Reader,
    /// Create and update models, register versions, tag them.
    Registrant,
    /// Move versions between stages, set and delete aliases.
    Approver,
    /// Grant and revoke roles in the namespace; cluster-wide, also tokens and cluster operations.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reader, Role::Registrant, Role::Approver, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Registrant => "registrant",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> DomainResult<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| {
                DomainError::invalid(
                    "role",
                    format!(
                        "{} is not a role: use reader, registrant, approver or admin",
                        crate::domain::shown(text)
                    ),
                )
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a role is held: one namespace, or every namespace and the cluster itself.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    Cluster,
    Namespace(String),
}

impl Scope {
    /// `*` is the cluster; anything else names a namespace.
    pub fn parse(text: &str) -> DomainResult<Scope> {
        if text == "*" {
            return Ok(Scope::Cluster);
        }
        validate_name("namespace", text)?;
        Ok(Scope::Namespace(text.to_string()))
    }

    pub fn check(&self) -> DomainResult<()> {
        match self {
            Scope::Cluster => Ok(()),
            Scope::Namespace(ns) => validate_name("namespace", ns),
        }
    }

    /// The key part of a grant: `*` or the namespace.
    pub fn as_key(&self) -> &str {
        match self {
            Scope::Cluster => "*",
            Scope::Namespace(ns) => ns,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Cluster => f.write_str("the cluster"),
            Scope::Namespace(ns) => write!(f, "namespace '{ns}'"),
        }
    }
}

/// A role held by a principal in a scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub principal: String,
    pub scope: Scope,
    pub role: Role,
    pub granted_by: String,
    pub granted_at_ms: i64,
}

/// What an action needs: a role, in a scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub role: Role,
    pub scope: Scope,
}

impl Need {
    pub fn cluster(role: Role) -> Need {
        Need {
            role,
            scope: Scope::Cluster,
        }
    }

    pub fn namespace(role: Role, namespace: &str) -> Need {
        Need {
            role,
            scope: Scope::Namespace(namespace.to_string()),
        }
    }
}

/// Whether `grants` (one principal's) allow `need`: a role at least as high, held in the
/// needed namespace or cluster-wide.
pub fn allows(grants: &[Grant], need: &Need) -> bool {
    grants
        .iter()
        .any(|g| g.role >= need.role && (g.scope == Scope::Cluster || g.scope == need.scope))
}

/// Whether `actor` may read namespace `namespace`: it holds the reader role there, or it is the
/// node itself (an unauthenticated actor only ever comes from inside the node).
pub fn reads_namespace(actor: &crate::domain::Actor, grants: &[Grant], namespace: &str) -> bool {
    !actor.authenticated || allows(grants, &Need::namespace(Role::Reader, namespace))
}

/// The highest role `grants` (one principal's) hold in `namespace`, counting cluster-wide ones.
pub fn highest_role(grants: &[Grant], namespace: &str) -> Option<Role> {
    grants
        .iter()
        .filter(|g| match &g.scope {
            Scope::Cluster => true,
            Scope::Namespace(ns) => ns == namespace,
        })
        .map(|g| g.role)
        .max()
}

/// Why `principal` may not do `action`: names the principal, the action, the role that would
/// allow it and what the principal holds.
pub fn denied(principal: &str, action: &str, need: &Need, grants: &[Grant]) -> String {
    let held = if grants.is_empty() {
        "no roles".to_string()
    } else {
        grants
            .iter()
            .map(|g| format!("{} in {}", g.role, g.scope))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let grant_hint = match &need.scope {
        Scope::Cluster => format!("quiver role grant {principal} {} --cluster", need.role),
        Scope::Namespace(ns) => format!(
            "quiver role grant {principal} {} --namespace {ns}",
            need.role
        ),
    };
    format!(
        "{principal} may not {action}: that needs the {} role in {} (or cluster-wide); \
         {principal} has {held}. An admin can allow it with `{grant_hint}`",
        need.role, need.scope
    )
}

/// Principals of the cluster itself (`node:3`), never of a user.
pub fn is_system_principal(name: &str) -> bool {
    name.contains(':')
}

/// The principal a node acts as for what it proposes on its own (announcing itself).
pub fn node_principal(node_id: u64) -> String {
    format!("node:{node_id}")
}

/// Checks a principal's name: the rules of model names.
pub fn validate_principal(name: &str) -> DomainResult<()> {
    validate_name("principal", name)
}

/// Hex digits in a token's public id and in its secret.
pub const TOKEN_ID_HEX: usize = 16;
pub const TOKEN_SECRET_HEX: usize = 32;
const TOKEN_PREFIX: &str = "qvr_";

/// A stored token: never its secret, only the secret's blake3 hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub principal: String,
    pub description: String,
    /// blake3 of the secret, 64 hex digits.
    pub secret_hash: String,
    pub created_by: String,
    pub created_at_ms: i64,
    /// Refused from this time on; `None`: never expires.
    pub expires_at_ms: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoked_at_ms: Option<i64>,
}

/// A token's parts, as a client presents it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentedToken {
    pub id: String,
    pub secret: String,
}

impl PresentedToken {
    /// A fresh token (random id and secret).
    pub fn random() -> PresentedToken {
        let bits: u128 = rand::random();
        let id: u64 = rand::random();
        PresentedToken {
            id: format!("{id:0width$x}", width = TOKEN_ID_HEX),
            secret: format!("{bits:0width$x}", width = TOKEN_SECRET_HEX),
        }
    }

    /// Parses `qvr_<id>_<secret>`; `None` for anything else (the caller says the token is
    /// malformed without echoing it).
    pub fn parse(text: &str) -> Option<PresentedToken> {
        let rest = text.strip_prefix(TOKEN_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        (is_hex(id, TOKEN_ID_HEX) && is_hex(secret, TOKEN_SECRET_HEX)).then(|| PresentedToken {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    pub fn secret_hash(&self) -> String {
        blake3::hash(self.secret.as_bytes()).to_hex().to_string()
    }

    /// Whether this token's secret is the one `record` was created with (compared in constant
    /// time).
    pub fn matches(&self, record: &TokenRecord) -> bool {
        let Ok(stored) = blake3::Hash::from_hex(&record.secret_hash) else {
            return false;
        };
        blake3::hash(self.secret.as_bytes()) == stored
    }
}

impl fmt::Display for PresentedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}_{}", self.id, self.secret)
    }
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a token id: [`TOKEN_ID_HEX`] lowercase hex digits.
pub fn validate_token_id(id: &str) -> DomainResult<()> {
    if is_hex(id, TOKEN_ID_HEX) {
        return Ok(());
    }
    Err(DomainError::invalid(
        "token id",
        format!(
            "{} is not a token id: {TOKEN_ID_HEX} lowercase hex digits, as `quiver token list` \
             shows them",
            crate::domain::shown(id)
        ),
    ))
}

/// Checks a stored secret hash: 64 lowercase hex digits.
pub fn validate_secret_hash(hash: &str) -> DomainResult<()> {
    if is_hex(hash, 64) {
        return Ok(());
    }
    Err(DomainError::invalid(
        "secret_hash",
        "must be the blake3 hash of the token's secret, 64 lowercase hex digits",
    ))
}

/// Why a presented token is refused, or `None` when `record` accepts it at `now_ms`.
pub fn token_refusal(
    presented: &PresentedToken,
    record: Option<&TokenRecord>,
    now_ms: i64,
) -> Option<String> {
    let id = &presented.id;
    let Some(record) = record else {
        return Some(format!("token {id} is not known to this cluster"));
    };
    if !presented.matches(record) {
        return Some(format!("token {id}: wrong secret"));
    }
    if let (Some(by), Some(at)) = (&record.revoked_by, record.revoked_at_ms) {
        return Some(format!(
            "token {id} of {} was revoked by {by} at {}",
            record.principal,
            utc_text(at)
        ));
    }
    if let Some(expires) = record.expires_at_ms.filter(|&e| now_ms >= e) {
        return Some(format!(
            "token {id} of {} expired at {}: ask an admin for a new one \
             (`quiver token create --principal {}`)",
            record.principal,
            utc_text(expires),
            record.principal
        ));
    }
    None
}

/// `ms` since the epoch as RFC 3339 UTC to the second (`2026-12-03T20:53:17Z`), or the number
/// of milliseconds when it is out of range.
pub fn utc_text(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{ms} ms since the epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role, scope: Scope) -> Grant {
        Grant {
            principal: "alice".into(),
            scope,
            role,
            granted_by: "root".into(),
            granted_at_ms: 1,
        }
    }

    #[test]
    fn a_role_allows_what_the_lower_ones_do_in_its_scope_and_cluster_roles_everywhere() {
        let search = || Scope::Namespace("search".into());
        let grants = [grant(Role::Approver, search())];
        for role in Role::ALL {
            let need = Need::namespace(role, "search");
            assert_eq!(allows(&grants, &need), role <= Role::Approver, "{role}");
            assert!(
                !allows(&grants, &Need::namespace(role, "ads")),
                "{role} in ads"
            );
            assert!(
                !allows(&grants, &Need::cluster(role)),
                "{role} cluster-wide"
            );
        }
        let admin = [grant(Role::Admin, Scope::Cluster)];
        for role in Role::ALL {
            assert!(allows(&admin, &Need::namespace(role, "any")));
            assert!(allows(&admin, &Need::cluster(role)));
        }
        let reader = [grant(Role::Reader, Scope::Cluster)];
        assert!(allows(&reader, &Need::namespace(Role::Reader, "ads")));
        assert!(!allows(&reader, &Need::namespace(Role::Registrant, "ads")));
        assert!(!allows(&[], &Need::namespace(Role::Reader, "ads")));
    }

    #[test]
    fn a_refusal_names_the_principal_the_action_the_role_and_the_fix() {
        let grants = [grant(Role::Registrant, Scope::Namespace("search".into()))];
        let text = denied(
            "alice",
            "set the stage of reco/1",
            &Need::namespace(Role::Approver, "search"),
            &grants,
        );
        for part in [
            "alice may not set the stage of reco/1",
            "approver role in namespace 'search'",
            "registrant in namespace 'search'",
            "quiver role grant alice approver --namespace search",
        ] {
            assert!(text.contains(part), "{part:?} in {text}");
        }
    }

    #[test]
    fn tokens_round_trip_and_malformed_ones_are_refused() {
        let token = PresentedToken::random();
        let text = token.to_string();
        assert_eq!(PresentedToken::parse(&text), Some(token.clone()));
        for bad in [
            "",
            "qvr_",
            "qvr__",
            &text[..text.len() - 1],
            &format!("{text}0"),
            &text.to_uppercase(),
            &text.replace("qvr_", "qvx_"),
            "qvr_0123456789abcdef_0123456789abcdef0123456789abcde\0",
            "qvr_../../etc/passwd_0123456789abcdef0123456789abcdef",
            "qvr_０１２３_0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(PresentedToken::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times_read_as_utc_and_out_of_range_ones_as_milliseconds() {
        assert_eq!(utc_text(1_796_331_203_503), "2026-12-03T20:53:23Z");
        assert_eq!(utc_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc_text(i64::MAX),
            format!("{} ms since the epoch", i64::MAX)
        );
        assert_eq!(
            utc_text(i64::MIN),
            format!("{} ms since the epoch", i64::MIN)
        );
    }

    #[test]
    fn a_token_is_refused_when_unknown_wrong_revoked_or_expired() {
        let token = PresentedToken::random();
        let mut record = TokenRecord {
            id: token.id.clone(),
            principal: "alice".into(),
            description: String::new(),
            secret_hash: token.secret_hash(),
            created_by: "root".into(),
            created_at_ms: 0,
            expires_at_ms: Some(1000),
            revoked_by: None,
            revoked_at_ms: None,
        };
        assert_eq!(token_refusal(&token, Some(&record), 999), None);
        let expired = token_refusal(&token, Some(&record), 1000).expect("expired");
        assert!(expired.contains("expired"), "{expired}");
        assert!(token_refusal(&token, None, 0)
            .expect("unknown")
            .contains("not known"));
        let other = PresentedToken {
            id: token.id.clone(),
            secret: PresentedToken::random().secret,
        };
        assert!(token_refusal(&other, Some(&record), 0)
            .expect("wrong secret")
            .contains("wrong secret"));
        record.revoked_by = Some("root".into());
        record.revoked_at_ms = Some(5);
        assert!(token_refusal(&token, Some(&record), 0)
            .expect("revoked")
            .contains("revoked by root"));
    }
}
