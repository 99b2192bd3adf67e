//! Placement: which nodes keep a full copy of a version (the rest read through on demand).

/// Clusters up to this size keep a full copy of every version on every node.
pub const FULL_REPLICATION_NODES_MAX: usize = 5;

/// Whether node `me` should hold a full copy of the version with manifest
/// `root` (its repair target). Up to `FULL_REPLICATION_NODES_MAX` nodes:
/// every node. Beyond that: one node per region, chosen by rendezvous
/// hashing of (root, node id), so choices spread across nodes and agree on
/// every node without coordination. Other nodes read through on demand.
pub fn should_hold(root: &str, me: u64, nodes: &[(u64, String)]) -> bool {
    if nodes.len() <= FULL_REPLICATION_NODES_MAX {
        return true;
    }
    let Some((_, region)) = nodes.iter().find(|(id, _)| *id == me) else {
        return true;
    };
    let score = |id: u64| {
        let mut h = blake3::Hasher::new();
        h.update(root.as_bytes());
        h.update(&id.to_le_bytes());
        *h.finalize().as_bytes()
    };
    nodes
        .iter()
        .filter(|(_, r)| r == region)
        .max_by_key(|(id, _)| (score(*id), *id))
        .is_some_and(|(id, _)| *id == me)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(regions: &[&str]) -> Vec<(u64, String)> {
        regions
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 1, r.to_string()))
            .collect()
    }

    #[test]
    fn small_clusters_replicate_everywhere() {
        let all = nodes(&["eu", "eu", "us", "us", "ap"]);
        assert!((1..=5).all(|me| should_hold("root", me, &all)));
    }

    #[test]
    fn large_clusters_keep_exactly_one_full_copy_per_region() {
        let all = nodes(&["eu", "eu", "eu", "us", "us", "us", "ap"]);
        for root in ["a", "b", "c", "d"] {
            for region in ["eu", "us", "ap"] {
                let holders: Vec<u64> = all
                    .iter()
                    .filter(|(_, r)| r == region)
                    .map(|(id, _)| *id)
                    .filter(|&id| should_hold(root, id, &all))
                    .collect();
                assert_eq!(
                    holders.len(),
                    1,
                    "root {root}, region {region}: {holders:?}"
                );
            }
        }
        let spread: std::collections::BTreeSet<u64> = (0..32)
            .map(|i| format!("root-{i}"))
            .filter_map(|root| (1..=3).find(|&id| should_hold(&root, id, &all)))
            .collect();
        assert!(spread.len() > 1, "choices spread over the region's nodes");
    }
}
