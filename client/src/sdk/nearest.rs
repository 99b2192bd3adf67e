//! Nearest-node choice for pulls: serving fleets read from the closest
//! member. Candidates come from the cluster's member list; the choice is a
//! pure function of their labels and measured round-trip times.

use std::time::{Duration, Instant};

use super::{Client, ClientError};

/// Round trips measured per candidate; the minimum is used.
pub const RTT_SAMPLES: usize = 3;
/// A candidate slower than this to answer is skipped.
pub const RTT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A member that could serve a pull, as measured from here.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub node_id: u64,
    pub api_addr: String,
    pub region: String,
    pub zone: String,
    pub rtt: Option<Duration>,
}

/// Picks the nearest reachable candidate: same region and zone as the
/// caller first, then same region, then anywhere; within a tier the lowest
/// RTT, then the lowest node id. `None` if none answered.
pub fn choose_nearest(candidates: &[Candidate], region: &str, zone: &str) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.rtt.map(|rtt| (i, c, rtt)))
        .min_by_key(|(_, c, rtt)| {
            let tier = match (
                !region.is_empty() && c.region == region,
                !zone.is_empty() && c.zone == zone,
            ) {
                (true, true) => 0,
                (true, false) => 1,
                _ => 2,
            };
            (tier, *rtt, c.node_id)
        })
        .map(|(i, _, _)| i)
}

impl Client {
    /// A client for the nearest member of this client's cluster (by region
    /// and zone label, then measured RTT). Falls back to `self` when the
    /// cluster cannot be listed (a single node, or an older node).
    pub async fn nearest(
        &self,
        region: &str,
        zone: &str,
    ) -> Result<(Client, Vec<Candidate>), ClientError> {
        let Ok(status) = self.cluster_status().await else {
            return Ok((self.clone(), Vec::new()));
        };
        let mut candidates = Vec::new();
        for member in status.members.iter().filter(|m| !m.api_addr.is_empty()) {
            let rtt = match self.connect_to(&member.api_addr).await {
                Ok(client) => client.measure_rtt().await,
                Err(_) => None,
            };
            candidates.push(Candidate {
                node_id: member.node_id,
                api_addr: member.api_addr.clone(),
                region: member.region.clone(),
                zone: member.zone.clone(),
                rtt,
            });
        }
        match choose_nearest(&candidates, region, zone) {
            Some(i) => {
                let client = self.connect_to(&candidates[i].api_addr).await?;
                Ok((client, candidates))
            }
            None => Ok((self.clone(), candidates)),
        }
    }

    /// The smallest of a few NodeStatus round trips, or None if it did not answer.
    async fn measure_rtt(&self) -> Option<Duration> {
        let mut best: Option<Duration> = None;
        for _ in 0..RTT_SAMPLES {
            let start = Instant::now();
            match tokio::time::timeout(RTT_PROBE_TIMEOUT, self.node_status()).await {
                Ok(Ok(_)) => {
                    let rtt = start.elapsed();
                    best = Some(best.map_or(rtt, |b| b.min(rtt)));
                }
                _ => return None,
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, region: &str, zone: &str, rtt_ms: Option<u64>) -> Candidate {
        Candidate {
            node_id: id,
            api_addr: format!("127.0.0.1:{}", 7400 + id),
            region: region.into(),
            zone: zone.into(),
            rtt: rtt_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn labels_come_before_rtt_and_unreachable_nodes_are_skipped() {
        let all = [
            c(1, "eu", "a", Some(1)),
            c(2, "us", "b", Some(9)),
            c(3, "us", "c", Some(5)),
            c(4, "us", "b", None),
        ];
        assert_eq!(choose_nearest(&all, "us", "b"), Some(1));
        assert_eq!(choose_nearest(&all, "us", "z"), Some(2));
        assert_eq!(choose_nearest(&all, "", ""), Some(0));
        assert_eq!(choose_nearest(&all[3..], "us", "b"), None);
    }

    #[test]
    fn ties_go_to_the_lowest_node_id() {
        let all = [c(5, "", "", Some(2)), c(2, "", "", Some(2))];
        assert_eq!(choose_nearest(&all, "", ""), Some(1));
    }
}
