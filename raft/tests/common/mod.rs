//! A small key-value [`App`] used by the raft crate's tests: one heed database of strings, plus a
//! record of the last log index `apply` saw (so tests can check what the raft crate passes in).

#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use heed::byteorder::BigEndian;
use heed::types::{Str, U64};
use heed::{Database, Env, RoTxn, RwTxn};
use quiver_raft::{App, NodeId, RaftNode, RaftNodeConfig};
use serde::{Deserialize, Serialize};

/// Bound for every wait in the tests: generous, since CI machines are slow, but finite.
pub const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum KvCommand {
    Set {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Makes `apply` fail as a storage failure would; for atomicity tests.
    FailStorage,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvResponse {
    pub previous: Option<String>,
}

pub struct KvApp {
    kv: Database<Str, Str>,
    last_index: Database<Str, U64<BigEndian>>,
}

const LAST_INDEX_KEY: &str = "last_index";
/// While this key is set, `export` fails as a snapshot build on a failing disk would.
pub const FAIL_EXPORT_KEY: &str = "fail-export";

#[derive(Serialize, Deserialize)]
struct Export {
    pairs: Vec<(String, String)>,
    last_index: Option<u64>,
}

impl App for KvApp {
    type Command = KvCommand;
    type Response = KvResponse;
    const MAX_DBS: u32 = 2;

    fn open(env: &Env, wtxn: &mut RwTxn<'_>) -> anyhow::Result<Self> {
        Ok(KvApp {
            kv: env.create_database(wtxn, Some("kv"))?,
            last_index: env.create_database(wtxn, Some("kv_last_index"))?,
        })
    }

    fn apply(
        &self,
        wtxn: &mut RwTxn<'_>,
        log_index: u64,
        cmd: &KvCommand,
    ) -> anyhow::Result<KvResponse> {
        let previous = match cmd {
            KvCommand::Set { key, value } => {
                let previous = self.kv.get(wtxn, key)?.map(str::to_string);
                self.kv.put(wtxn, key, value)?;
                previous
            }
            KvCommand::Delete { key } => {
                let previous = self.kv.get(wtxn, key)?.map(str::to_string);
                self.kv.delete(wtxn, key)?;
                previous
            }
            KvCommand::FailStorage => anyhow::bail!("injected storage failure"),
        };
        self.last_index.put(wtxn, LAST_INDEX_KEY, &log_index)?;
        Ok(KvResponse { previous })
    }

    fn export(&self, rtxn: &RoTxn<'_>, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
        if self.kv.get(rtxn, FAIL_EXPORT_KEY)?.is_some() {
            anyhow::bail!("injected export failure ({FAIL_EXPORT_KEY} is set)");
        }
        let pairs = self
            .kv
            .iter(rtxn)?
            .map(|r| r.map(|(k, v)| (k.to_string(), v.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let last_index = self.last_index.get(rtxn, LAST_INDEX_KEY)?;
        serde_json::to_writer(out, &Export { pairs, last_index })?;
        Ok(())
    }

    fn import(&self, wtxn: &mut RwTxn<'_>, data: &mut dyn std::io::Read) -> anyhow::Result<()> {
        let export: Export = serde_json::from_reader(data).context("decode kv export")?;
        self.kv.clear(wtxn)?;
        self.last_index.clear(wtxn)?;
        for (k, v) in &export.pairs {
            self.kv.put(wtxn, k, v)?;
        }
        if let Some(i) = export.last_index {
            self.last_index.put(wtxn, LAST_INDEX_KEY, &i)?;
        }
        Ok(())
    }
}

impl KvApp {
    pub fn get(&self, rtxn: &RoTxn<'_>, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self.kv.get(rtxn, key)?.map(str::to_string))
    }

    /// All pairs in key order.
    pub fn all(&self, rtxn: &RoTxn<'_>) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .kv
            .iter(rtxn)?
            .map(|r| r.map(|(k, v)| (k.to_string(), v.to_string())))
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// The log index of the last command `apply` saw.
    pub fn last_index(&self, rtxn: &RoTxn<'_>) -> anyhow::Result<Option<u64>> {
        Ok(self.last_index.get(rtxn, LAST_INDEX_KEY)?)
    }
}

pub fn set(i: usize) -> KvCommand {
    KvCommand::Set {
        key: key(i),
        value: value(i),
    }
}

pub fn key(i: usize) -> String {
    format!("key-{i:04}")
}

pub fn value(i: usize) -> String {
    format!("value-{i}")
}

pub fn config(id: NodeId, dir: &Path) -> RaftNodeConfig {
    RaftNodeConfig::new(id, dir.to_path_buf(), format!("127.0.0.1:{}", 7000 + id))
}

pub fn all_pairs(node: &RaftNode<KvApp>) -> anyhow::Result<Vec<(String, String)>> {
    node.read(|app, rtxn| app.all(rtxn))
}

pub fn expected_pairs(n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (key(i), value(i))).collect()
}
