//! What an agent counts per version for the registry: requests, errors and a latency
//! histogram since the endpoint's generation it routes by. The registry keeps each agent's
//! latest report and sums them (so a report is cumulative, and a lost one costs nothing), and
//! the rollout controller compares the sum with the plan's bounds.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::proto::VersionServingStats;

/// Largest latency the histogram tells apart (µs): a minute. Slower answers count as a minute.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// One version's counts.
#[derive(Clone, Debug)]
pub struct VersionCounts {
    pub requests: u64,
    pub errors: u64,
    latency_us: Histogram<u64>,
}

impl VersionCounts {
    fn new() -> VersionCounts {
        VersionCounts {
            requests: 0,
            errors: 0,
            // Three significant digits from 1 µs to a minute: a few tens of KiB per version.
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant bounds: 1 ≤ a minute, 3 significant digits"),
        }
    }

    /// p99 latency in ms (0 with no requests).
    pub fn p99_ms(&self) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        self.latency_us.value_at_quantile(0.99) as f64 / 1000.0
    }

    /// Error rate in percent (0 with no requests).
    pub fn error_rate_pct(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.errors as f64 * 100.0 / self.requests as f64
    }
}

/// Counts for one generation of an endpoint.
#[derive(Clone, Debug, Default)]
pub struct ServingStats {
    generation: u64,
    versions: BTreeMap<u64, VersionCounts>,
    /// Something was counted since the last report.
    dirty: bool,
}

impl ServingStats {
    /// The generation counted.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Starts counting `generation` afresh (counts of earlier generations are never mixed in:
    /// the registry judges a step by its own requests).
    pub fn restart(&mut self, generation: u64) {
        if generation != self.generation {
            self.generation = generation;
            self.versions.clear();
            self.dirty = true;
        }
    }

    /// Counts a request `version` answered (or, for a shadow, a copy it received) under
    /// `generation`; a request that began under another generation is left out.
    pub fn record(&mut self, generation: u64, version: u64, error: bool, latency_us: u64) {
        if generation != self.generation || version == 0 {
            return;
        }
        let counts = self
            .versions
            .entry(version)
            .or_insert_with(VersionCounts::new);
        counts.requests = counts.requests.saturating_add(1);
        counts.errors = counts.errors.saturating_add(u64::from(error));
        counts
            .latency_us
            .saturating_record(latency_us.clamp(1, LATENCY_US_MAX));
        self.dirty = true;
    }

    /// One version's counts.
    pub fn version(&self, version: u64) -> Option<&VersionCounts> {
        self.versions.get(&version)
    }

    /// The counts as a report, if anything changed since the last one: (generation, stats).
    pub fn take_report(&mut self) -> Option<(u64, Vec<VersionServingStats>)> {
        if !self.dirty || self.generation == 0 {
            return None;
        }
        self.dirty = false;
        Some((self.generation, self.stats()))
    }

    /// Marks the counts as not yet reported (a report that did not reach the registry).
    pub fn unreported(&mut self) {
        self.dirty = true;
    }

    /// The counts, version by version.
    pub fn stats(&self) -> Vec<VersionServingStats> {
        self.versions
            .iter()
            .map(|(&version, c)| VersionServingStats {
                version,
                requests: c.requests,
                errors: c.errors,
                p99_ms: c.p99_ms(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_belong_to_one_generation_and_are_reported_once_per_change() {
        let mut s = ServingStats::default();
        assert_eq!(
            s.take_report(),
            None,
            "nothing to report before a generation"
        );
        s.restart(3);
        for i in 0..100 {
            s.record(3, 14, false, 1_000 + i);
        }
        s.record(3, 15, true, 5_000);
        s.record(2, 15, true, 5_000); // began under the previous generation
        let (generation, stats) = s.take_report().unwrap();
        assert_eq!(generation, 3);
        assert_eq!(stats.len(), 2);
        assert_eq!(
            (stats[0].version, stats[0].requests, stats[0].errors),
            (14, 100, 0)
        );
        assert!((1.0..1.2).contains(&stats[0].p99_ms), "{}", stats[0].p99_ms);
        assert_eq!(
            (stats[1].version, stats[1].requests, stats[1].errors),
            (15, 1, 1)
        );
        assert_eq!(s.version(15).unwrap().error_rate_pct(), 100.0);
        assert_eq!(s.take_report(), None, "unchanged since the last report");
        s.unreported();
        assert!(s.take_report().is_some(), "a failed report is sent again");
        s.restart(4);
        let (generation, stats) = s.take_report().unwrap();
        assert_eq!(
            (generation, stats.len()),
            (4, 0),
            "a new generation starts from zero"
        );
    }

    #[test]
    fn extreme_latencies_are_clamped_not_lost() {
        let mut s = ServingStats::default();
        s.restart(1);
        for latency in [0, 1, u64::MAX, LATENCY_US_MAX + 1] {
            s.record(1, 1, false, latency);
        }
        s.record(1, 0, false, 1); // version 0 is nobody's
        let c = s.version(1).unwrap();
        assert_eq!(c.requests, 4);
        assert!(c.p99_ms() <= LATENCY_US_MAX as f64 / 1000.0 * 1.001);
        assert_eq!(s.stats().len(), 1);
    }
}
