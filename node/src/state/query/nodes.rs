//! The cluster's nodes as the registry knows them.

use heed::RoTxn;

use crate::domain::{DomainError, NodeInfo};
use crate::state::tables::decode;
use crate::state::{AppResult, RegistryApp};

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
