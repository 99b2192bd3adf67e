//! What the access checks (`crate::access`) remember between requests: token records, the
//! grants of principals and the namespaces of models, so that a request whose token, principal
//! and model were seen before decodes none of them from the state again.
//!
//! Freshness: every entry is tagged with the id of the state snapshot it was read from (the
//! LMDB read transaction's id, which is the id of the last write transaction committed before
//! it). Apply notes the id of every write transaction that changes tokens, grants or which
//! models exist *before* that transaction commits ([`AccessCache::note_change`], called by
//! `RegistryApp::apply` for the ops [`changes_access`] names, and by snapshot import). An entry
//! read from a snapshot older than the last noted change is never served. So a revocation is
//! refused on a node from the moment that node has applied it, exactly as without the cache:
//! when apply returns, the change is noted, and an entry read before it no longer counts.
//!
//! The cache holds records, never verdicts: the presented secret is hashed and compared, and the
//! token's revocation and expiry (against the node's clock) are checked on every request.
//!
//! Bounded: at most [`ENTRIES_PER_TABLE_MAX`] entries per table (a full table drops an arbitrary
//! entry for a new one), keys of at most [`KEY_BYTES_MAX`] bytes, and only tokens that exist are
//! remembered, so requests with random token ids or names grow nothing beyond the bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use heed::RoTxn;

use crate::auth::{Grant, TokenRecord};
use crate::command::Op;
use crate::domain::limits::NAME_BYTES_MAX;
use crate::state::{AppResult, RegistryApp};

/// Entries kept per table (token records, principals' grants, models' namespaces).
pub const ENTRIES_PER_TABLE_MAX: usize = 4096;
/// Longest key remembered: a name (model, principal) at most; token ids are shorter.
pub const KEY_BYTES_MAX: usize = NAME_BYTES_MAX;

/// Whether applying `op` may change what an access check reads: a token, a grant, or whether
/// a model exists (a model's namespace never changes once it is created). Exhaustive on
/// purpose: a new op must say whether it does.
pub fn changes_access(op: &Op) -> bool {
    match op {
        Op::CreateModel { .. }
        | Op::CreateToken { .. }
        | Op::RevokeToken { .. }
        | Op::GrantRole { .. }
        | Op::RevokeRole { .. }
        | Op::Bootstrap { .. } => true,
        Op::UpdateModel { .. }
        | Op::CreateVersion { .. }
        | Op::SetVersionStatus { .. }
        | Op::SetStage { .. }
        | Op::SetAlias { .. }
        | Op::DeleteAlias { .. }
        | Op::SetVersionTags { .. }
        | Op::UpsertNode(_)
        | Op::RemoveNode { .. }
        | Op::SetPolicy { .. }
        | Op::RecordEvaluation { .. }
        | Op::DecideReview { .. }
        | Op::AddLineageEdge { .. }
        | Op::Quarantine { .. }
        | Op::LiftQuarantine { .. }
        | Op::CreateDeployment { .. }
        | Op::SetTraffic { .. }
        | Op::StartRollout { .. }
        | Op::AdvanceRollout { .. }
        | Op::PauseRollout { .. }
        | Op::Rollback { .. }
        | Op::ReportServing { .. }
        | Op::CreateLoggedModel { .. }
        | Op::UpdateLoggedModel { .. }
        | Op::PutLoggedModelFile { .. } => false,
    }
}

/// Whose grants an access check needs, and how it knows the principal.
#[derive(Clone, Copy, Debug)]
pub enum Who<'a> {
    /// The principal of the token with this id (its record is needed too).
    Token(&'a str),
    /// A principal already authenticated.
    Principal(&'a str),
}

/// What one access check needs from the applied state.
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    pub who: Who<'a>,
    /// Whether the principal's grants are needed (authenticating a token alone needs none).
    pub grants: bool,
    /// The model whose namespace is needed, if the target is a model.
    pub model: Option<&'a str>,
}

/// What the state says for a [`Wanted`].
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The token's record (`Who::Token`), if the token exists.
    pub token: Option<Arc<TokenRecord>>,
    /// The principal's grants (empty when not wanted, or when the token does not exist).
    pub grants: Arc<[Grant]>,
    /// The model's namespace, if it was wanted and the model exists.
    pub namespace: Option<String>,
}

/// Reads `wanted` from the applied state in `txn`: what [`AccessCache::remember`] takes, with
/// the id of the snapshot it came from.
pub fn read_facts(
    app: &RegistryApp,
    txn: &RoTxn<'_>,
    wanted: &Wanted<'_>,
) -> AppResult<(u64, Facts)> {
    let read_at = txn.id() as u64;
    let token = match wanted.who {
        Who::Token(id) => app.token(txn, id)?.map(Arc::new),
        Who::Principal(_) => None,
    };
    let principal = match wanted.who {
        Who::Token(_) => token.as_ref().map(|r| r.principal.as_str()),
        Who::Principal(name) => Some(name),
    };
    let grants = match principal {
        Some(name) if wanted.grants => app.grants_of(txn, name)?.into(),
        _ => Arc::from([]),
    };
    let namespace = match wanted.model {
        Some(model) => app.find_model(txn, model)?.map(|m| m.namespace),
        None => None,
    };
    Ok((
        read_at,
        Facts {
            token,
            grants,
            namespace,
        },
    ))
}

/// See the module docs.
pub struct AccessCache {
    /// The id of the latest write transaction that changed access (noted before it commits):
    /// an entry read from an older snapshot is stale.
    changed_at: AtomicU64,
    tables: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    tokens: Table<Arc<TokenRecord>>,
    grants: Table<Arc<[Grant]>>,
    /// `None`: the model did not exist in the snapshot read.
    namespaces: Table<Option<String>>,
}

/// Sizes of the cache's tables, for tests and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    pub tokens: usize,
    pub principals: usize,
    pub models: usize,
}

impl Default for AccessCache {
    fn default() -> Self {
        AccessCache {
            changed_at: AtomicU64::new(0),
            tables: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for AccessCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessCache")
            .field("changed_at", &self.changed_at.load(Ordering::SeqCst))
            .field("sizes", &self.sizes())
            .finish()
    }
}

impl AccessCache {
    /// A cache that never serves an entry, for a node that cannot reach its state machine's
    /// (whose changes it would not see).
    pub fn never() -> AccessCache {
        AccessCache {
            changed_at: AtomicU64::new(u64::MAX),
            tables: Mutex::default(),
        }
    }

    /// Notes that write transaction `txn_id` changes access; call it before the transaction
    /// commits. Every entry read from an older snapshot is stale from now on.
    pub fn note_change(&self, txn_id: u64) {
        self.changed_at.fetch_max(txn_id, Ordering::SeqCst);
    }

    /// `wanted`, if every part of it is cached and fresh.
    pub fn look_up(&self, wanted: &Wanted<'_>) -> Option<Facts> {
        let changed_at = self.changed_at.load(Ordering::SeqCst);
        let tables = self.lock();
        let token = match wanted.who {
            Who::Token(id) => Some(tables.tokens.get(id, changed_at)?),
            Who::Principal(_) => None,
        };
        let principal = match (wanted.who, &token) {
            (Who::Token(_), Some(record)) => record.principal.as_str(),
            (Who::Principal(name), _) => name,
            // Unknown tokens are never cached.
            (Who::Token(_), None) => return None,
        };
        let grants = match wanted.grants {
            true => tables.grants.get(principal, changed_at)?,
            false => Arc::from([]),
        };
        let namespace = match wanted.model {
            Some(model) => tables.namespaces.get(model, changed_at)?,
            None => None,
        };
        Some(Facts {
            token,
            grants,
            namespace,
        })
    }

    /// Keeps `facts`, read for `wanted` from the snapshot with id `read_at` ([`read_facts`]),
    /// unless access changed since that snapshot.
    pub fn remember(&self, read_at: u64, wanted: &Wanted<'_>, facts: &Facts) {
        // Loaded before the lock, as in `look_up`: a change noted meanwhile is seen by the
        // next look-up, which then refuses what is put here.
        if read_at < self.changed_at.load(Ordering::SeqCst) {
            return;
        }
        let mut tables = self.lock();
        let principal = match (wanted.who, &facts.token) {
            (Who::Token(_), Some(record)) => {
                tables.tokens.put(&record.id, read_at, record.clone());
                Some(record.principal.as_str())
            }
            (Who::Token(_), None) => None,
            (Who::Principal(name), _) => Some(name),
        };
        if let (Some(name), true) = (principal, wanted.grants) {
            tables.grants.put(name, read_at, facts.grants.clone());
        }
        if let Some(model) = wanted.model {
            tables
                .namespaces
                .put(model, read_at, facts.namespace.clone());
        }
    }

    pub fn sizes(&self) -> CacheSizes {
        let tables = self.lock();
        CacheSizes {
            tokens: tables.tokens.rows.len(),
            principals: tables.grants.rows.len(),
            models: tables.namespaces.rows.len(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One table of the cache: key → (snapshot read from, value).
struct Table<V> {
    rows: HashMap<String, (u64, V)>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            rows: HashMap::new(),
        }
    }
}

impl<V: Clone> Table<V> {
    /// The value of `key` if it was read at or after `changed_at`.
    fn get(&self, key: &str, changed_at: u64) -> Option<V> {
        match self.rows.get(key) {
            Some((read_at, value)) if *read_at >= changed_at => Some(value.clone()),
            _ => None,
        }
    }

    /// Keeps `value` for `key` unless a newer read of it is kept already.
    fn put(&mut self, key: &str, read_at: u64, value: V) {
        if key.len() > KEY_BYTES_MAX {
            return;
        }
        match self.rows.get_mut(key) {
            Some(row) => {
                if row.0 <= read_at {
                    *row = (read_at, value);
                }
            }
            None => {
                if self.rows.len() >= ENTRIES_PER_TABLE_MAX {
                    let evicted = self.rows.keys().next().cloned();
                    if let Some(evicted) = evicted {
                        self.rows.remove(&evicted);
                    }
                }
                self.rows.insert(key.to_string(), (read_at, value));
            }
        }
        debug_assert!(self.rows.len() <= ENTRIES_PER_TABLE_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, Scope};

    fn record(id: &str, principal: &str) -> Arc<TokenRecord> {
        Arc::new(TokenRecord {
            id: id.into(),
            principal: principal.into(),
            description: String::new(),
            secret_hash: "00".repeat(32),
            created_by: "root".into(),
            created_at_ms: 0,
            expires_at_ms: None,
            revoked_by: None,
            revoked_at_ms: None,
        })
    }

    fn reader_in(principal: &str, namespace: &str) -> Arc<[Grant]> {
        Arc::from([Grant {
            principal: principal.into(),
            scope: Scope::Namespace(namespace.into()),
            role: Role::Reader,
            granted_by: "root".into(),
            granted_at_ms: 0,
        }])
    }

    const TOKEN: &str = "0123456789abcdef";

    fn authorize_wanted(model: &str) -> Wanted<'_> {
        Wanted {
            who: Who::Token(TOKEN),
            grants: true,
            model: Some(model),
        }
    }

    fn alice_facts() -> Facts {
        Facts {
            token: Some(record(TOKEN, "alice")),
            grants: reader_in("alice", "search"),
            namespace: Some("search".into()),
        }
    }

    #[test]
    fn an_entry_serves_until_a_later_transaction_changes_access() {
        let cache = AccessCache::default();
        let wanted = authorize_wanted("reco");
        assert!(cache.look_up(&wanted).is_none(), "empty");
        cache.note_change(5);
        cache.remember(7, &wanted, &alice_facts());
        let found = cache.look_up(&wanted).expect("cached");
        assert_eq!(found.token.expect("token").principal, "alice");
        assert_eq!(found.grants.len(), 1);
        assert_eq!(found.namespace.as_deref(), Some("search"));
        // A change in the very transaction the entry was read after: still fresh.
        cache.note_change(7);
        assert!(cache.look_up(&wanted).is_some());
        // A later one: stale, and a read from before it is not kept.
        cache.note_change(8);
        assert!(cache.look_up(&wanted).is_none());
        cache.remember(7, &wanted, &alice_facts());
        assert!(cache.look_up(&wanted).is_none());
        cache.remember(8, &wanted, &alice_facts());
        assert!(cache.look_up(&wanted).is_some());
        // Notes never move back.
        cache.note_change(3);
        assert!(cache.look_up(&wanted).is_some());
    }

    #[test]
    fn a_look_up_needs_every_part_fresh_and_unknown_tokens_are_not_kept() {
        let cache = AccessCache::default();
        let wanted = authorize_wanted("reco");
        let unknown = Facts {
            token: None,
            grants: Arc::from([]),
            namespace: Some("search".into()),
        };
        cache.remember(1, &wanted, &unknown);
        assert!(cache.look_up(&wanted).is_none(), "unknown token");
        assert_eq!(cache.sizes().tokens, 0);
        cache.remember(1, &wanted, &alice_facts());
        // Another model: its namespace is not known.
        assert!(cache.look_up(&authorize_wanted("other")).is_none());
        // The token alone, and the principal's grants alone, are.
        let token_only = Wanted {
            who: Who::Token(TOKEN),
            grants: false,
            model: None,
        };
        assert!(cache.look_up(&token_only).expect("token").grants.is_empty());
        let by_principal = Wanted {
            who: Who::Principal("alice"),
            grants: true,
            model: Some("reco"),
        };
        assert_eq!(
            cache.look_up(&by_principal).expect("grants").grants.len(),
            1
        );
        let bob = Wanted {
            who: Who::Principal("bob"),
            grants: true,
            model: None,
        };
        assert!(cache.look_up(&bob).is_none());
    }

    #[test]
    fn a_never_cache_serves_nothing() {
        let cache = AccessCache::never();
        let wanted = authorize_wanted("reco");
        cache.remember(u64::MAX - 1, &wanted, &alice_facts());
        assert!(cache.look_up(&wanted).is_none());
        assert_eq!(
            cache.sizes(),
            CacheSizes {
                tokens: 0,
                principals: 0,
                models: 0
            }
        );
    }

    #[test]
    fn the_tables_stay_bounded_under_many_distinct_keys() {
        let cache = AccessCache::default();
        let rounds = ENTRIES_PER_TABLE_MAX * 3;
        for n in 0..rounds {
            let id = format!("{n:016x}");
            let model = format!("model-{n}");
            let wanted = Wanted {
                who: Who::Token(&id),
                grants: true,
                model: Some(&model),
            };
            let facts = Facts {
                token: Some(record(&id, &format!("p{n}"))),
                grants: Arc::from([]),
                namespace: None,
            };
            cache.remember(1, &wanted, &facts);
            // What was just kept is served.
            assert!(cache.look_up(&wanted).is_some(), "{n}");
        }
        let sizes = cache.sizes();
        assert_eq!(
            sizes,
            CacheSizes {
                tokens: ENTRIES_PER_TABLE_MAX,
                principals: ENTRIES_PER_TABLE_MAX,
                models: ENTRIES_PER_TABLE_MAX,
            }
        );
        // Keys longer than any name are not kept at all.
        let long = "m".repeat(KEY_BYTES_MAX + 1);
        let wanted = Wanted {
            who: Who::Principal("alice"),
            grants: false,
            model: Some(&long),
        };
        cache.remember(1, &wanted, &Facts::default());
        assert!(cache.look_up(&wanted).is_none());
    }

    #[test]
    fn only_ops_on_tokens_grants_and_model_existence_change_access() {
        let token = Op::RevokeToken { id: TOKEN.into() };
        let role = Op::RevokeRole {
            principal: "alice".into(),
            scope: Scope::Cluster,
        };
        let alias = Op::DeleteAlias {
            model: "reco".into(),
            alias: "live".into(),
        };
        assert!(changes_access(&token));
        assert!(changes_access(&role));
        assert!(!changes_access(&alias));
    }
}
