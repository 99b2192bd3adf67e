//! The table registry: every LMDB table of the state, named once. The [`tables!`] list below
//! generates the `Tables` struct, its `open` (which creates the named databases) and `all`, the
//! one walk over every table that snapshot export, import and the digest use. A table opened is
//! therefore always exported, imported and hashed: adding a table is one line in that list.
//!
//! Keys are bytes, values serde JSON unless noted; iteration is key order, so exports and digests
//! are deterministic:
//! - `models`:    name                      → Model
//! - `versions`:  model \0 number(be u64)   → Version (without its manifest)
//! - `manifests`: root hex                  → Manifest
//! - `roots`:     model \0 root hex         → number (be u64; a bundle registered twice is
//!   detected)
//! - `aliases`:   model \0 alias            → Alias
//! - `audit`:     seq(be u64)               → AuditEntry (blake3 hash chain)
//! - `meta`:      "audit_head"              → AuditHead;
//!   "inline_bytes"                         → total bytes in `inline_chunks` (be u64);
//!   "removed_node:" node id (be u64)       → when the node was last removed (ms, be i64): its
//!   certificates issued before then are refused by its peers (decision 0017; in `meta` rather
//!   than a table of its own so that the digest of a state without removals is unchanged)
//!   "logged_model:" id                     → LoggedModel (MLflow's logged models, likewise in
//!   `meta` so that the digest of a state without any is unchanged)
//! - `nodes`:     node id (be u64)          → NodeInfo
//! - `requests`:  request id                → what the request's first copy answered (a version
//!   by model and number)
//! - `request_log`: log index(be u64) request id → () (to forget ids older than
//!   `REQUEST_IDS_KEPT_ENTRIES` log entries)
//! - `inline_chunks`: root hex, chunk hash (32 bytes) → the chunk's raw bytes: every chunk of a
//!   small version (decision 0010)
//! - `tokens`:    token id (16 hex digits)  → TokenRecord (the secret's hash, never the secret)
//! - `grants`:    principal \0 scope (`*` or a namespace) → Grant
//! - `policies`:  `m` \0 model, or `n` \0 namespace \0 tier (`low`, `medium`, `high`, `*`) →
//!   Policy
//! - `evaluations`: model \0 number(be u64) seq(be u64) → Evaluation
//! - `reviews`:   id(be u64)                → Review (a stage change waiting for approvals)
//! - `open_reviews`: model \0 number(be u64) → id(be u64) of the version's open review (at most
//!   one)
//! - `lineage_down`: entity \0 blake3(other entity)[..16] → Edge, the edges leaving the entity
//!   (an entity is its text `kind:id`, without NUL; the other end is hashed so that a key of
//!   two 256-byte ids stays under LMDB's 511 bytes, and is whole in the value)
//! - `lineage_up`:  entity \0 blake3(other entity)[..16] → Edge, the edges arriving at it (the
//!   reverse index of `lineage_down`)
//! - `quarantines`: entity → Quarantine
//! - `catalog`:   model name                → CatalogEntry (what a search matches; derived from
//!   the model and its versions, written beside them by apply, decision 0023)
//! - `catalog_index`: kind byte, value, NUL, model name → () (`CatalogEntry::index_keys`: the
//!   model's namespace, owner, tier, stages held and words, so that a search reads only the
//!   models its filters name)
//! - `deployments`: endpoint              → Deployment (issue 15)
//! - `deployment_history`: endpoint \0 generation(be u64) → DeploymentRecord (the latest
//!   `DEPLOYMENT_HISTORY_KEPT` per endpoint)
//! - `serving_reports`: endpoint \0 agent   → AgentReport (each agent's latest)
//! - `watch`: revision(be u64)              → WatchEvent (the latest `WATCH_EVENTS_KEPT` changes
//!   for watchers; the latest revision is in `meta`, `watch_revision` (be u64), so that it
//!   survives the removal of old events; decision 0024)

use std::fmt;
use std::io::{Read, Write};

use anyhow::Context;
use heed::types::Bytes;
use heed::{Database, Env, RoTxn, RwTxn};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{AppError, AppResult};

pub(super) type Table = Database<Bytes, Bytes>;

/// Declares the state's tables. The order is part of the digest (tables are hashed in this
/// order) and of nothing else; the snapshot keys tables by name.
macro_rules! tables {
    ($($name:ident),+ $(,)?) => {
        /// Every table of the state, opened.
        pub(super) struct Tables {
            $(pub(super) $name: Table,)+
        }

        impl Tables {
            /// How many tables there are: the named databases the state env must allow.
            pub(super) const COUNT: usize = [$(stringify!($name)),+].len();

            /// Opens every table, creating those that do not exist yet.
            pub(super) fn open(env: &Env, wtxn: &mut RwTxn<'_>) -> anyhow::Result<Tables> {
                Ok(Tables {
                    $($name: open_table(env, wtxn, stringify!($name))?,)+
                })
            }

            /// Every table with its name, in registry order.
            pub(super) fn all(&self) -> [(&'static str, &Table); Self::COUNT] {
                [$((stringify!($name), &self.$name)),+]
            }
        }
    };
}

tables! {
    models,
    versions,
    manifests,
    roots,
    aliases,
    audit,
    meta,
    nodes,
    requests,
    request_log,
    inline_chunks,
    tokens,
    grants,
    policies,
    evaluations,
    reviews,
    open_reviews,
    lineage_down,
    lineage_up,
    quarantines,
    catalog,
    catalog_index,
    watch,
    deployments,
    deployment_history,
    serving_reports,
}

/// The `policies` key of a policy scope.
pub(super) fn policy_key(scope: &crate::governance::PolicyScope) -> Vec<u8> {
    use crate::domain::RiskTier;
    use crate::governance::PolicyScope;
    match scope {
        PolicyScope::Model(model) => [b"m\0".as_slice(), model.as_bytes()].concat(),
        PolicyScope::Namespace { namespace, tier } => {
            let tier: &[u8] = match tier {
                Some(RiskTier::Low) => b"low",
                Some(RiskTier::Medium) => b"medium",
                Some(RiskTier::High) => b"high",
                None => b"*",
            };
            [b"n\0".as_slice(), namespace.as_bytes(), b"\0", tier].concat()
        }
    }
}

/// The `lineage_down` key of `edge` under its start, or (`up`) its `lineage_up` key under its
/// end: the entity's key, NUL, the first 16 bytes of the other end's key's blake3.
pub(super) fn lineage_key(edge: &crate::lineage::Edge, up: bool) -> Vec<u8> {
    let (this, other) = match up {
        true => (&edge.to, &edge.from),
        false => (&edge.from, &edge.to),
    };
    let mut k = this.key();
    k.push(0);
    k.extend_from_slice(&blake3::hash(&other.key()).as_bytes()[..16]);
    k
}

/// The prefix of every `lineage_down` or `lineage_up` key of `entity`.
pub(super) fn lineage_prefix(entity: &crate::lineage::Entity) -> Vec<u8> {
    let mut k = entity.key();
    k.push(0);
    k
}

/// The `meta` key prefix of a removed node's removal time (decision 0017).
pub(super) const REMOVED_NODE_PREFIX: &[u8] = b"removed_node:";

/// The `meta` key of node `node_id`'s removal time.
/// Where the `meta` table keeps logged models: this prefix and the model's id.
pub(super) const LOGGED_MODEL_PREFIX: &[u8] = b"logged_model:";

pub(super) fn logged_model_key(id: &str) -> Vec<u8> {
    let mut key = LOGGED_MODEL_PREFIX.to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

pub(super) fn removed_node_key(node_id: u64) -> Vec<u8> {
    [REMOVED_NODE_PREFIX, &node_id.to_be_bytes()].concat()
}

fn open_table(env: &Env, wtxn: &mut RwTxn<'_>, name: &str) -> anyhow::Result<Table> {
    env.create_database(wtxn, Some(name))
        .with_context(|| format!("open state table {name}"))
}

/// A snapshot is JSON: an object of every table by name (in name order), each an array of its
/// rows in key order as `[hex key, hex value]`. It is written and read row by row, never held
/// whole: the state may be larger than memory.
impl Tables {
    /// Writes the snapshot of every table to `out`, row by row. The bytes are those of
    /// `serde_json` over a `BTreeMap<&str, Vec<(String, String)>>` (the first format, which
    /// built the whole map in memory): snapshots and their digests do not change.
    pub(super) fn export(&self, rtxn: &RoTxn<'_>, out: &mut dyn Write) -> anyhow::Result<()> {
        let mut tables = self.all();
        tables.sort_by_key(|(name, _)| *name);
        out.write_all(b"{")?;
        for (i, (name, table)) in tables.into_iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, name)?;
            out.write_all(b":[")?;
            for (j, row) in table.iter(rtxn)?.enumerate() {
                let (k, v) = row?;
                if j > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, &(hex::encode(k), hex::encode(v)))?;
            }
            out.write_all(b"]")?;
        }
        out.write_all(b"}")?;
        Ok(())
    }

    /// Replaces every table by its rows in `data`, read row by row (a table the snapshot lacks
    /// ends up empty). A snapshot naming a table this build does not have, or a table twice, is
    /// refused; the caller then drops the transaction, so nothing of it remains.
    pub(super) fn import(&self, wtxn: &mut RwTxn<'_>, data: &mut dyn Read) -> anyhow::Result<()> {
        for (_, table) in self.all() {
            table.clear(wtxn)?;
        }
        let mut failure = None;
        let mut json = serde_json::Deserializer::from_reader(std::io::BufReader::new(data));
        let decoded = ImportTables {
            tables: self,
            wtxn,
            failure: &mut failure,
        }
        .deserialize(&mut json)
        .and_then(|()| json.end());
        // A failure of our own (an unknown table, a bad hex string, LMDB) comes through serde
        // as a bare error: report it with its own message and context.
        if let Some(failure) = failure {
            return Err(failure);
        }
        decoded.context("decode registry snapshot")
    }

    /// blake3 over every table in registry order, rows in key order: equal on nodes with equal
    /// state.
    pub(super) fn digest(&self, rtxn: &RoTxn<'_>) -> AppResult<String> {
        let mut hasher = blake3::Hasher::new();
        for (name, table) in self.all() {
            hasher.update(name.as_bytes());
            for row in table.iter(rtxn)? {
                let (k, v) = row?;
                hasher.update(&(k.len() as u64).to_le_bytes());
                hasher.update(k);
                hasher.update(&(v.len() as u64).to_le_bytes());
                hasher.update(v);
            }
        }
        Ok(hasher.finalize().to_hex().to_string())
    }
}

// ------------------------------------------------------------ snapshot import

/// The snapshot's object of tables, each table's rows written as they are read.
struct ImportTables<'a, 't> {
    tables: &'a Tables,
    wtxn: &'a mut RwTxn<'t>,
    /// Why the import stopped, when it was not the JSON itself.
    failure: &'a mut Option<anyhow::Error>,
}

impl<'de> DeserializeSeed<'de> for ImportTables<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ImportTables<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of tables")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        let all = self.tables.all();
        let mut seen = [false; Tables::COUNT];
        while let Some(name) = map.next_key::<String>()? {
            let Some(at) = all.iter().position(|(known, _)| *known == name) else {
                *self.failure = Some(anyhow::anyhow!(
                    "registry snapshot has a table {} that this build does not know: it was \
                     made by another version of quiver-node; run the same version on every node",
                    crate::domain::shown(&name)
                ));
                return Err(de::Error::custom("unknown table"));
            };
            if std::mem::replace(&mut seen[at], true) {
                *self.failure = Some(anyhow::anyhow!("registry snapshot has table {name} twice"));
                return Err(de::Error::custom("table twice"));
            }
            let (name, table) = all[at];
            map.next_value_seed(ImportRows {
                name,
                table,
                wtxn: &mut *self.wtxn,
                failure: &mut *self.failure,
            })?;
        }
        Ok(())
    }
}

/// One table's array of `[hex key, hex value]` rows, each put as it is read.
struct ImportRows<'a, 't> {
    name: &'static str,
    table: &'a Table,
    wtxn: &'a mut RwTxn<'t>,
    failure: &'a mut Option<anyhow::Error>,
}

impl<'de> DeserializeSeed<'de> for ImportRows<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ImportRows<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of [key, value] rows")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut rows: S) -> Result<(), S::Error> {
        let name = self.name;
        while let Some((k, v)) = rows.next_element::<(String, String)>()? {
            let put = (|| {
                let k = hex::decode(&k).with_context(|| format!("snapshot table {name}: key"))?;
                let v = hex::decode(&v).with_context(|| format!("snapshot table {name}: value"))?;
                self.table.put(self.wtxn, &k, &v)?;
                anyhow::Ok(())
            })();
            if let Err(e) = put {
                *self.failure = Some(e);
                return Err(de::Error::custom("row refused"));
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------ keys

/// `a \0 b`: a model's rows (versions, roots, aliases) share the prefix `model \0`.
pub(super) fn key2(a: &str, b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b);
    k
}

pub(super) fn version_key(model: &str, number: u64) -> Vec<u8> {
    key2(model, &number.to_be_bytes())
}

/// `inline_chunks` key: the manifest root (64 hex digits), then the chunk's hash.
pub(super) fn inline_key(root: &str, hash: &quiver_transfer::Hash) -> Vec<u8> {
    let mut k = Vec::with_capacity(root.len() + 32);
    k.extend_from_slice(root.as_bytes());
    k.extend_from_slice(&hash.0);
    k
}

pub(super) const AUDIT_HEAD_KEY: &[u8] = b"audit_head";
pub(super) const INLINE_BYTES_KEY: &[u8] = b"inline_bytes";
pub(super) const WATCH_REVISION_KEY: &[u8] = b"watch_revision";

// ------------------------------------------------------------ values

pub(super) fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> AppResult<T> {
    serde_json::from_slice(bytes)
        .with_context(|| format!("decode {what} from state storage"))
        .map_err(AppError::Storage)
}

pub(super) fn encode<T: Serialize>(value: &T) -> AppResult<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

/// A big-endian u64 value (`roots`, `meta` "inline_bytes"); `malformed` says which if it is not
/// 8 bytes.
pub(super) fn decode_u64(malformed: &str, bytes: &[u8]) -> AppResult<u64> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| AppError::Storage(anyhow::anyhow!("{malformed}")))?;
    Ok(u64::from_be_bytes(bytes))
}
