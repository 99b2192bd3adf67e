//! The cluster's nodes as the registry knows them.

use std::collections::BTreeMap;

use heed::RoTxn;

use crate::domain::{DomainError, NodeInfo};
use crate::state::tables::{decode, REMOVED_NODE_PREFIX};
use crate::state::{AppError, AppResult, RegistryApp};

impl RegistryApp {
    pub fn get_node(&self, rtxn: &RoTxn<'_>, node_id: u64) -> AppResult<NodeInfo> {
        match self.tables.nodes.get(rtxn, &node_id.to_be_bytes())? {
            Some(bytes) => decode("node", bytes),
            None => Err(DomainError::invalid(
                "node_id",
                format!("node {node_id} is not registered"),
            )
            .into()),
        }
    }

    /// Every node ever removed, with the time (ms) of its last removal.
    pub fn removed_nodes(&self, rtxn: &RoTxn<'_>) -> AppResult<BTreeMap<u64, i64>> {
        let mut out = BTreeMap::new();
        for row in self.tables.meta.prefix_iter(rtxn, REMOVED_NODE_PREFIX)? {
            let (k, v) = row?;
            let id = &k[REMOVED_NODE_PREFIX.len()..];
            let (Ok(k), Ok(v)) = (<[u8; 8]>::try_from(id), <[u8; 8]>::try_from(v)) else {
                return Err(AppError::Storage(anyhow::anyhow!(
                    "a removed node's row in the meta table is not its prefix + 8 bytes → 8 bytes"
                )));
            };
            out.insert(u64::from_be_bytes(k), i64::from_be_bytes(v));
        }
        Ok(out)
    }

    /// Every known node, by id.
    pub fn nodes(&self, rtxn: &RoTxn<'_>) -> AppResult<Vec<NodeInfo>> {
        let mut out = Vec::new();
        for row in self.tables.nodes.iter(rtxn)? {
            let (_, v) = row?;
            out.push(decode("node", v)?);
        }
        Ok(out)
    }
}
