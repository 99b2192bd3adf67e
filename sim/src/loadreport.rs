//! What the `load` scenario reports: model load times by region for Quiver's pull path and for
//! the naive baseline, bytes moved inside and across regions, and how the model got there; as a
//! table, as JSON (serde) and as an SVG chart of the load-time distribution.
//!
//! Plain data, statistics and formatting only; `load.rs` fills a [`LoadReport`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::chunknet::Traffic;
use crate::report::percentile;

/// Load-time statistics of a set of replicas (nearest-rank percentiles, in virtual ms).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LoadTimes {
    pub replicas: usize,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl LoadTimes {
    pub fn of(times_ms: &[u64]) -> LoadTimes {
        LoadTimes {
            replicas: times_ms.len(),
            p50_ms: percentile(times_ms, 50.0).unwrap_or(0),
            p95_ms: percentile(times_ms, 95.0).unwrap_or(0),
            p99_ms: percentile(times_ms, 99.0).unwrap_or(0),
            max_ms: times_ms.iter().max().copied().unwrap_or(0),
        }
    }
}

/// One replica's pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaLoad {
    pub replica: u32,
    pub region: String,
    /// From the replica's start until its last chunk was verified.
    pub model_load_time_ms: u64,
    /// Distinct chunks fetched and verified by `fetch_all` (in its last attempt or, when an
    /// attempt failed midway, an earlier one).
    pub chunks_verified: usize,
    /// Every chunk of the manifest held and intact at the end (checked again).
    pub complete: bool,
    /// Nodes it pulled from, nearest first.
    pub sources: Vec<u64>,
}

/// One way of serving the fleet.
#[derive(Clone, Debug, Serialize)]
pub struct StrategyReport {
    pub name: String,
    pub description: String,
    pub overall: LoadTimes,
    pub by_region: BTreeMap<String, LoadTimes>,
    /// Logical bytes, node to node and node to replica together.
    pub bytes: Traffic,
    /// Of which node to node (uploads, repair, read-through).
    pub bytes_between_nodes: Traffic,
    /// Node-to-node bytes whose chunk the receiver already held on arrival (see
    /// `NetStats::redundant_between_nodes_bytes`).
    pub redundant_bytes_between_nodes: u64,
    pub replicas: Vec<ReplicaLoad>,
}

impl StrategyReport {
    pub fn new(
        name: &str,
        description: &str,
        replicas: Vec<ReplicaLoad>,
        bytes: Traffic,
        bytes_between_nodes: Traffic,
    ) -> Self {
        let all: Vec<u64> = replicas.iter().map(|r| r.model_load_time_ms).collect();
        let mut regions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for r in &replicas {
            regions
                .entry(r.region.clone())
                .or_default()
                .push(r.model_load_time_ms);
        }
        StrategyReport {
            name: name.into(),
            description: description.into(),
            overall: LoadTimes::of(&all),
            by_region: regions
                .iter()
                .map(|(region, times)| (region.clone(), LoadTimes::of(times)))
                .collect(),
            bytes,
            bytes_between_nodes,
            redundant_bytes_between_nodes: 0,
            replicas,
        }
    }
}

/// The run's shape, as the report header states it.
#[derive(Clone, Debug, Serialize)]
pub struct LoadSetup {
    pub seed: u64,
    pub nodes: usize,
    pub regions: Vec<String>,
    pub replicas: usize,
    /// The model's logical size.
    pub model_bytes: u64,
    pub chunks: usize,
    /// Logical bytes per real simulated byte (see `chunkstore`).
    pub scale: u64,
    pub real_chunk_bytes: usize,
    /// Write quorum of the registration.
    pub write_quorum: usize,
    pub arrival: String,
    pub network: String,
}

/// How the model got onto the cluster.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Registration {
    pub origin_node: u64,
    /// Chunk upload through `ChunkSink` until W copies of every chunk were durable.
    pub upload_ms: u64,
    /// Virtual time (since the run's start) at which the version was READY.
    pub ready_at_ms: u64,
    /// Nodes whose replication target includes the version (`should_hold`).
    pub holders: Vec<u64>,
    /// Virtual time at which the last holder's repair completed, if it did.
    pub repaired_at_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub setup: LoadSetup,
    pub registration: Registration,
    pub quiver: StrategyReport,
    pub baseline: StrategyReport,
    /// Baseline over Quiver, overall.
    pub ratio_p50: f64,
    pub ratio_p95: f64,
    pub ratio_p99: f64,
    pub version_count: u64,
    pub sim_ms: u64,
    pub wall_ms: u64,
    pub trace_events: u64,
    pub trace_hash: String,
    /// What went wrong (a replica that did not load, a holder that never completed, ...).
    pub violations: Vec<String>,
    #[serde(skip)]
    pub trace_lines: Vec<String>,
}

fn ratio(baseline: u64, quiver: u64) -> f64 {
    if quiver == 0 {
        return 0.0;
    }
    baseline as f64 / quiver as f64
}

impl LoadReport {
    /// Fills the ratios from the two strategies.
    pub fn with_ratios(mut self) -> Self {
        let (b, q) = (&self.baseline.overall, &self.quiver.overall);
        self.ratio_p50 = ratio(b.p50_ms, q.p50_ms);
        self.ratio_p95 = ratio(b.p95_ms, q.p95_ms);
        self.ratio_p99 = ratio(b.p99_ms, q.p99_ms);
        self
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The figures that must not change from run to run of one seed (everything but wall time).
    pub fn figures(&self) -> String {
        let mut r = self.clone();
        r.wall_ms = 0;
        r.trace_lines.clear();
        r.json()
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The table `quiver-sim run --scenario load` prints (trace line last).
    pub fn table(&self) -> String {
        let s0 = &self.setup;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "load: seed {}, {} nodes in {} regions ({}), {} serving replicas, one model of {}",
            s0.seed,
            s0.nodes,
            s0.regions.len(),
            s0.regions.join(", "),
            s0.replicas,
            gb(s0.model_bytes)
        );
        let _ = writeln!(
            s,
            "scale: {} chunks of {} logical; each simulated by {} real seeded bytes (1/{}), hashed and verified for real; bandwidth and bytes are logical",
            s0.chunks,
            mib(s0.real_chunk_bytes as u64 * s0.scale),
            s0.real_chunk_bytes,
            s0.scale
        );
        let _ = writeln!(s, "network: {}", s0.network);
        let _ = writeln!(s, "arrival: {}", s0.arrival);
        let r = &self.registration;
        let _ = writeln!(
            s,
            "registration: uploaded to n{} with W={} in {} ms, READY at {} ms; replication target (should_hold) {}, repaired by {}",
            r.origin_node,
            s0.write_quorum,
            r.upload_ms,
            r.ready_at_ms,
            r.holders
                .iter()
                .map(|h| format!("n{h}"))
                .collect::<Vec<_>>()
                .join(" "),
            r.repaired_at_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "never".into())
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<10} {:<12} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "strategy", "region", "replicas", "p50_ms", "p95_ms", "p99_ms", "max_ms"
        );
        for strategy in [&self.quiver, &self.baseline] {
            let rows = strategy
                .by_region
                .iter()
                .map(|(region, t)| (region.as_str(), t))
                .chain(std::iter::once(("all", &strategy.overall)));
            for (region, t) in rows {
                let _ = writeln!(
                    s,
                    "{:<10} {:<12} {:>8} {:>9} {:>9} {:>9} {:>9}",
                    strategy.name, region, t.replicas, t.p50_ms, t.p95_ms, t.p99_ms, t.max_ms
                );
            }
        }
        let _ = writeln!(
            s,
            "model_load_time_ms baseline/quiver (all replicas): p50 {:.2}x  p95 {:.2}x  p99 {:.2}x",
            self.ratio_p50, self.ratio_p95, self.ratio_p99
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<10} {:>16} {:>16}   of which node to node: {:>12} {:>12}",
            "bytes", "inside_regions", "across_regions", "inside", "across"
        );
        for strategy in [&self.quiver, &self.baseline] {
            let _ = writeln!(
                s,
                "{:<10} {:>16} {:>16}                          {:>12} {:>12}",
                strategy.name,
                gb(strategy.bytes.intra_region_bytes),
                gb(strategy.bytes.cross_region_bytes),
                gb(strategy.bytes_between_nodes.intra_region_bytes),
                gb(strategy.bytes_between_nodes.cross_region_bytes)
            );
        }
        for strategy in [&self.quiver, &self.baseline] {
            if strategy.redundant_bytes_between_nodes > 0 {
                let _ = writeln!(
                    s,
                    "{}: {} of the node-to-node bytes carried chunks the receiving node already held on arrival (concurrent read-throughs or pushes of one chunk)",
                    strategy.name,
                    gb(strategy.redundant_bytes_between_nodes)
                );
            }
        }
        for strategy in [&self.quiver, &self.baseline] {
            let _ = writeln!(s, "{}: {}", strategy.name, strategy.description);
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "version_count {}", self.version_count);
        let _ = writeln!(
            s,
            "simulated {:.1} s in {:.2} s wall; {} trace events",
            self.sim_ms as f64 / 1_000.0,
            self.wall_ms as f64 / 1_000.0,
            self.trace_events
        );
        if self.violations.is_empty() {
            let _ = writeln!(s, "result: every replica loaded and verified every chunk");
        } else {
            let _ = writeln!(s, "VIOLATIONS ({}):", self.violations.len());
            for v in &self.violations {
                let _ = writeln!(s, "  {v}");
            }
        }
        let _ = write!(s, "trace: {}", self.trace_hash);
        s
    }

    /// An SVG chart: the cumulative distribution of model_load_time_ms per region, Quiver solid,
    /// baseline dashed.
    pub fn svg(&self) -> String {
        const W: f64 = 760.0;
        const H: f64 = 440.0;
        const LEFT: f64 = 70.0;
        const RIGHT: f64 = 190.0;
        const TOP: f64 = 40.0;
        const BOTTOM: f64 = 60.0;
        const COLOURS: [&str; 8] = [
            "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
        ];
        let plot_w = W - LEFT - RIGHT;
        let plot_h = H - TOP - BOTTOM;
        let max_ms = [&self.quiver, &self.baseline]
            .iter()
            .flat_map(|st| st.replicas.iter().map(|r| r.model_load_time_ms))
            .max()
            .unwrap_or(1)
            .max(1);
        let x_max_s = nice_ceiling(max_ms as f64 / 1_000.0);
        let x = |ms: u64| LEFT + (ms as f64 / 1_000.0) / x_max_s * plot_w;
        let y = |frac: f64| TOP + (1.0 - frac) * plot_h;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="22" font-size="14">model_load_time_ms CDF: {} replicas, {}, seed {} (solid: quiver, dashed: baseline)</text>"#,
            self.setup.replicas,
            gb(self.setup.model_bytes),
            self.setup.seed
        );
        // Axes and grid.
        for i in 0..=5 {
            let frac = i as f64 / 5.0;
            let yy = y(frac);
            let _ = writeln!(
                s,
                "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>",
                LEFT + plot_w
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text>"#,
                LEFT - 6.0,
                yy + 4.0,
                frac * 100.0
            );
            let xs = x_max_s * frac;
            let xx = LEFT + frac * plot_w;
            let _ = writeln!(
                s,
                "<line x1=\"{xx:.1}\" y1=\"{TOP}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
                TOP + plot_h
            );
            let _ = writeln!(
                s,
                r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                TOP + plot_h + 18.0,
                trim_float(xs)
            );
        }
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">model load time (s, virtual)</text>"#,
            LEFT + plot_w / 2.0,
            H - 16.0
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">replicas loaded</text>"#,
            TOP + plot_h / 2.0,
            TOP + plot_h / 2.0
        );
        // One step line per (strategy, region).
        let regions: Vec<&String> = self.quiver.by_region.keys().collect();
        let mut legend_y = TOP + 10.0;
        for (strategy, dash) in [
            (&self.quiver, ""),
            (&self.baseline, r#" stroke-dasharray="6 4""#),
        ] {
            for (i, region) in regions.iter().enumerate() {
                let mut times: Vec<u64> = strategy
                    .replicas
                    .iter()
                    .filter(|r| &&r.region == region)
                    .map(|r| r.model_load_time_ms)
                    .collect();
                times.sort_unstable();
                if times.is_empty() {
                    continue;
                }
                let n = times.len() as f64;
                let mut points = format!("{:.1},{:.1}", x(0), y(0.0));
                for (k, t) in times.iter().enumerate() {
                    let _ = write!(
                        points,
                        " {:.1},{:.1} {:.1},{:.1}",
                        x(*t),
                        y(k as f64 / n),
                        x(*t),
                        y((k + 1) as f64 / n)
                    );
                }
                let colour = COLOURS[i % COLOURS.len()];
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{points}"/>"#
                );
                let lx = LEFT + plot_w + 14.0;
                let _ = writeln!(
                    s,
                    r#"<line x1="{lx:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="2"{dash}/>"#,
                    lx + 28.0
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}">{} {}</text>"#,
                    lx + 34.0,
                    legend_y + 4.0,
                    strategy.name,
                    region
                );
                legend_y += 18.0;
            }
        }
        let _ = writeln!(s, "</svg>");
        s
    }
}

/// The smallest of 1, 2, 5 × 10^k at or above `v` (an axis end).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mut base = 10f64.powf(v.log10().floor());
    loop {
        for m in [1.0, 2.0, 5.0] {
            if m * base >= v {
                return m * base;
            }
        }
        base *= 10.0;
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Logical bytes as decimal GB.
pub fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: u32, region: &str, ms: u64) -> ReplicaLoad {
        ReplicaLoad {
            replica: id,
            region: region.into(),
            model_load_time_ms: ms,
            chunks_verified: 3,
            complete: true,
            sources: vec![1],
        }
    }

    #[test]
    fn statistics_are_per_region_and_overall() {
        let replicas: Vec<ReplicaLoad> = (1..=100)
            .map(|i| replica(i, if i % 2 == 0 { "eu" } else { "us" }, i as u64 * 10))
            .collect();
        let st = StrategyReport::new("q", "", replicas, Traffic::default(), Traffic::default());
        assert_eq!(
            st.overall,
            LoadTimes {
                replicas: 100,
                p50_ms: 500,
                p95_ms: 950,
                p99_ms: 990,
                max_ms: 1000
            }
        );
        assert_eq!(st.by_region["eu"].replicas, 50);
        assert_eq!(st.by_region["eu"].max_ms, 1000);
        assert_eq!(st.by_region["us"].max_ms, 990);
    }

    #[test]
    fn axis_ends_are_round() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(37.0), 50.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert_eq!(nice_ceiling(500.0), 500.0);
    }
}
