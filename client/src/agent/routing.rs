//! Which version answers a request: an endpoint's split as 100 buckets, one per percent, given
//! to the split's versions in ascending order, and a request's key hashed to a bucket. The same
//! key always lands in the same bucket (sticky), and since a newer version (a higher number)
//! takes the highest buckets, raising its share moves keys only from older versions to it,
//! never back: a user who met the canary keeps meeting it as the rollout goes on.

use crate::proto::Deployment;

/// Buckets of a split: one per percent.
pub const BUCKETS: usize = 100;

/// Why a deployment cannot be routed by: the node sent a split this agent will not trust.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("endpoint {endpoint}: its split's shares sum to {total}, not 100")]
    Shares { endpoint: String, total: u64 },
    #[error("endpoint {endpoint}: version {version} is named twice or is 0")]
    Version { endpoint: String, version: u64 },
    #[error("the registry sent endpoint {got}'s deployment to an agent of {expected}")]
    Endpoint { expected: String, got: String },
}

/// An endpoint's traffic as one agent routes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    pub endpoint: String,
    pub model: String,
    /// The endpoint's generation this routing follows.
    pub generation: u64,
    /// The version of each bucket.
    buckets: Vec<u64>,
    /// Versions receiving copies of every request.
    pub shadows: Vec<u64>,
}

impl Routing {
    /// The routing of `d`, checked: shares of distinct versions ≥ 1 summing to 100.
    pub fn from_deployment(d: &Deployment) -> Result<Routing, RoutingError> {
        let mut split: Vec<(u64, u32)> = d.split.iter().map(|s| (s.version, s.percent)).collect();
        split.sort_unstable();
        let total: u64 = split.iter().map(|(_, p)| u64::from(*p)).sum();
        if total != BUCKETS as u64 {
            return Err(RoutingError::Shares {
                endpoint: d.endpoint.clone(),
                total,
            });
        }
        for pair in split.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(RoutingError::Version {
                    endpoint: d.endpoint.clone(),
                    version: pair[0].0,
                });
            }
        }
        if let Some(&(0, _)) = split.first() {
            return Err(RoutingError::Version {
                endpoint: d.endpoint.clone(),
                version: 0,
            });
        }
        let mut buckets = Vec::with_capacity(BUCKETS);
        for (version, percent) in split {
            buckets.extend(std::iter::repeat_n(version, percent as usize));
        }
        Ok(Routing {
            endpoint: d.endpoint.clone(),
            model: d.model.clone(),
            generation: d.generation,
            buckets,
            shadows: d.shadows.clone(),
        })
    }

    /// The bucket of a request key (0..100): the same key, the same bucket, on every agent.
    pub fn bucket(key: &[u8]) -> usize {
        let hash = blake3::hash(key);
        let head = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or_default());
        (head % BUCKETS as u64) as usize
    }

    /// The version that answers a request with `key`.
    pub fn route(&self, key: &[u8]) -> u64 {
        self.buckets[Self::bucket(key)]
    }

    /// The split: each version with its share (percent), in version order.
    pub fn split(&self) -> Vec<(u64, u32)> {
        let mut split: Vec<(u64, u32)> = Vec::new();
        for &v in &self.buckets {
            match split.last_mut() {
                Some((last, share)) if *last == v => *share += 1,
                _ => split.push((v, 1)),
            }
        }
        split
    }

    /// Every version this routing sends requests or copies to.
    pub fn versions(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.buckets.iter().chain(&self.shadows).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::TrafficShare;
    use proptest::prelude::*;

    fn deployment(split: &[(u64, u32)], shadows: &[u64]) -> Deployment {
        Deployment {
            endpoint: "reco-prod".into(),
            model: "reco".into(),
            generation: 3,
            split: split
                .iter()
                .map(|&(version, percent)| TrafficShare { version, percent })
                .collect(),
            shadows: shadows.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_split_routes_its_share_of_keys_to_each_version() {
        let r = Routing::from_deployment(&deployment(&[(14, 95), (15, 5)], &[16])).unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..100_000u32 {
            *counts.entry(r.route(&i.to_le_bytes())).or_insert(0u32) += 1;
        }
        let canary = f64::from(counts[&15]) / 1000.0;
        assert!(
            (4.0..6.0).contains(&canary),
            "{canary}% of keys on the canary"
        );
        assert_eq!(counts.len(), 2);
        assert_eq!(r.versions(), [14, 15, 16]);
        assert_eq!(r.generation, 3);
    }

    #[test]
    fn a_split_the_agent_cannot_trust_is_refused() {
        for (split, e) in [
            (vec![(1, 50)], "sum to 50"),
            (vec![(1, 60), (2, 60)], "sum to 120"),
            (vec![(1, 50), (1, 50)], "named twice"),
            (vec![(0, 100)], "version 0"),
            (vec![], "sum to 0"),
            (vec![(1, u32::MAX), (2, 1)], "sum to 4294967296"),
        ] {
            let refused = Routing::from_deployment(&deployment(&split, &[])).unwrap_err();
            assert!(refused.to_string().contains(e), "{split:?}: {refused}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Raising the newer version's share never moves a key back to the older one, and a
        /// key routes the same way every time.
        #[test]
        fn raising_the_canary_share_moves_keys_only_to_the_canary(
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..64),
            low in 1u32..99,
            raise in 1u32..99,
        ) {
            let high = (low + raise).min(100);
            let before = Routing::from_deployment(&deployment(&[(14, 100 - low), (15, low)], &[])).unwrap();
            let after = match high {
                100 => Routing::from_deployment(&deployment(&[(15, 100)], &[])).unwrap(),
                h => Routing::from_deployment(&deployment(&[(14, 100 - h), (15, h)], &[])).unwrap(),
            };
            for key in &keys {
                prop_assert_eq!(before.route(key), before.route(key));
                if before.route(key) == 15 {
                    prop_assert_eq!(after.route(key), 15);
                }
            }
        }

        /// Any split a node might send is either refused or routes every key to one of its
        /// versions; nothing panics.
        #[test]
        fn any_split_is_refused_or_routes_to_its_own_versions(
            split in proptest::collection::vec((0u64..6, prop_oneof![0u32..120, Just(u32::MAX)]), 0..8),
            key in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            if let Ok(r) = Routing::from_deployment(&deployment(&split, &[])) {
                let version = r.route(&key);
                prop_assert!(split.iter().any(|(v, p)| *v == version && *p > 0));
            }
        }
    }
}
