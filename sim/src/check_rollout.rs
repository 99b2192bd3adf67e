//! The rollout checker (issue 15), over plain data: what every simulated serving agent
//! answered and how its routing moved ([`AgentLog`], recorded by [`crate::agents`]), the
//! endpoint's history as the nodes hold it after convergence (the real history table, read as
//! [`crate::check_deploy`] reads it), and when each generation was first applied on some node
//! ([`RolloutRecord::committed_ms`], observed by [`crate::rollout`] every
//! [`crate::rollout::OBSERVE_INTERVAL`]: a commit is applied only once committed, so this is a
//! commit time late by at most that interval).
//!
//! What is checked:
//! - every answer names a generation of the history and a version of that generation's split
//!   (`answer-outside-split`, `answer-unknown-generation`);
//! - every answer's version is in the split of a generation in force when it was given, or
//!   superseded at most [`PROPAGATION_BOUND_MS`] before (`served-stale`). The bound's clock
//!   starts at the latest of the superseding commit, the end of the agent's last spell cut off
//!   from the registry (a fault of the run: an agent that reaches no node serves what it has,
//!   by design) and the end of the last spell in which the registry could not serve at all
//!   ([`RolloutRecord::unavailable_ms`]: no node can answer a linearizable read then);
//! - every rollback completes: each agent ends up routing by the rollback's generation (or a
//!   later one) with all of its split loaded, before the agents stop (`rollback-incomplete`),
//!   and within [`PROPAGATION_BOUND_MS`] by the same clock (`rollback-slow`). Rollbacks
//!   committed less than the bound before the agents stopped are not judged.
//!
//! Figures: per region, `rollback_time_ms` (from a rollback's commit to an agent routing by it,
//! over agents and rollbacks; agents cut off meanwhile are left out, registry outages are
//! counted in) and `model_load_time_ms`
//! (what `AgentCore::prepared` returned: from a version first wanted to loaded, retries
//! included); per rollback, the time to its last agent; the propagation of every generation.

use std::collections::{BTreeMap, BTreeSet};

use quiver_node::deploy::{ChangeKind, DeploymentRecord};
use serde::Serialize;

use crate::check::Violation;
use crate::report::percentile;

/// How long after a change commits an agent may still answer by the split it replaced
/// (virtual ms), counted from the later of the commit, the end of the agent's last spell cut
/// off and the end of the registry's last outage. What it covers: the agent's watch waiting on
/// a node that lost the leader (`agents::AGENT_WATCH_WAIT`, 1 s), its resync read there timing
/// out (`agents::AGENT_CALL_TIMEOUT`, 1 s), the other node of a cut-off region tried and timing
/// out (1 s), the pauses between tries (up to 250 ms each), a watch start and a read on a node
/// of another region (a cross-region round trip each, plus the leader's read index), and a new
/// leader's first commit reaching the followers. That adds up to about 4.3 s; a sweep of the
/// scenario (seeds 0..20) sees at most 3.5 s (`stale_answer_ms_max`).
pub const PROPAGATION_BOUND_MS: u64 = 6_000;
/// Most violations of one kind the checker lists per agent (all are counted in the detail of
/// the last one listed).
const VIOLATIONS_PER_AGENT_MAX: usize = 3;

/// One answered request: when, under which generation, by which version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub at_ms: u64,
    pub generation: u64,
    pub version: u64,
}

/// An agent's routing after a change: the generation it routes by, and whether every version
/// of that generation's split is loaded (so every key goes where the split says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutingChange {
    pub at_ms: u64,
    pub generation: u64,
    pub ready: bool,
}

/// What one simulated agent did (see [`crate::agents`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentLog {
    pub agent: String,
    pub region: usize,
    pub answers: Vec<Answer>,
    /// Every change of (generation, ready), in time order.
    pub routing: Vec<RoutingChange>,
    /// Spells (from, to) in which the agent could reach no node (a fault of the run).
    pub cut_off: Vec<(u64, u64)>,
    /// Each version's load time as `AgentCore::prepared` returned it.
    pub load_ms: Vec<u64>,
    /// Requests refused (503: none of the split loaded yet).
    pub not_ready: u64,
    pub reports: u64,
    pub reports_failed: u64,
    /// Watch starts tried (the first, and each after an error, a failed read or a stay).
    pub moves: u64,
    pub pulls_failed: u64,
    /// Deployments the planted `agent-ignores-rollback` dropped.
    pub rollbacks_ignored: u64,
}

/// Everything the checker reads.
pub struct RolloutRecord<'a> {
    pub history: &'a [DeploymentRecord],
    /// Generation → virtual ms at which some node had applied it first (see the module docs).
    pub committed_ms: &'a BTreeMap<u64, u64>,
    pub agents: &'a [AgentLog],
    /// Spells (from, to) in which the registry could not serve: no leader followed by a
    /// majority over uncut links (see `rollout::serving_leader`).
    pub unavailable_ms: &'a [(u64, u64)],
    pub regions: usize,
    /// When the agents stopped (virtual ms).
    pub agents_stopped_ms: u64,
}

/// p50, p99 and max of some samples (ms).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Dist {
    pub n: usize,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

impl Dist {
    pub fn of(samples: &[u64]) -> Dist {
        Dist {
            n: samples.len(),
            p50: percentile(samples, 50.0),
            p99: percentile(samples, 99.0),
            max: samples.iter().max().copied(),
        }
    }

    /// `p50 1200, p99 3400, max 3500 (n 12)`.
    pub fn text(&self) -> String {
        let o = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        format!(
            "p50 {}, p99 {}, max {} (n {})",
            o(self.p50),
            o(self.p99),
            o(self.max),
            self.n
        )
    }
}

/// One region's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RegionFigures {
    pub region: usize,
    pub agents: usize,
    pub rollback_time_ms: Dist,
    pub model_load_time_ms: Dist,
}

/// One rollback: its generation, whether apply made it (a serving report over the bounds) or a
/// person, its version, when it committed, and the time to its last agent not cut off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RollbackFigures {
    pub generation: u64,
    pub automatic: bool,
    pub version: u64,
    pub committed_ms: Option<u64>,
    /// Committed early enough before the agents stopped to be judged.
    pub judged: bool,
    /// From the commit to the last agent (not cut off meanwhile) routing by it.
    pub last_agent_ms: Option<u64>,
    /// Agents cut off between the commit and routing by it (left out of the figures).
    pub agents_cut_off: usize,
}

/// The rollout scenario's figures (also the `rollout` object of the JSON report).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RolloutFigures {
    pub agents: usize,
    pub propagation_bound_ms: u64,
    pub regions: Vec<RegionFigures>,
    pub rollback_time_ms: Dist,
    pub model_load_time_ms: Dist,
    /// From each generation's commit to each agent routing by it (or a later one).
    pub propagation_ms: Dist,
    /// The stalest answer: how long after its generation was superseded, by the bound's clock
    /// (compare with `propagation_bound_ms`).
    pub stale_answer_ms_max: u64,
    /// Spells in which the registry could not serve, and their total length.
    pub registry_unavailable_spells: u64,
    pub registry_unavailable_ms: u64,
    pub rollbacks: Vec<RollbackFigures>,
    pub generations: u64,
    pub rollouts_started: u64,
    pub rollouts_completed: u64,
    pub rollbacks_automatic: u64,
    pub rollbacks_manual: u64,
    pub answers: u64,
    pub not_ready: u64,
    pub reports: u64,
    pub reports_failed: u64,
    pub moves: u64,
    pub pulls_failed: u64,
    pub cut_off_spells: u64,
    pub rollbacks_ignored: u64,
}

/// Generation → (split's versions, commit ms).
struct Generations {
    split: BTreeMap<u64, BTreeSet<u64>>,
    committed: BTreeMap<u64, u64>,
}

impl Generations {
    /// When `generation` stopped being in force (its successor's commit), if it did.
    fn superseded_ms(&self, generation: u64) -> Option<u64> {
        self.committed.get(&(generation + 1)).copied()
    }
}

/// The end of the last of `spells` that overlaps `[from, to]`, if one does.
fn spell_within(spells: &[(u64, u64)], from: u64, to: u64) -> Option<u64> {
    spells
        .iter()
        .filter(|(a, b)| *a <= to && *b >= from)
        .map(|(_, b)| *b)
        .max()
}

/// Whether `agent` itself was cut off at some moment in `[from, to]`, and until when.
fn cut_off_within(agent: &AgentLog, from: u64, to: u64) -> Option<u64> {
    spell_within(&agent.cut_off, from, to)
}

/// Where the bound's clock starts for a change committed at `committed` and an agent looked
/// at `at`: the commit, or the end of a spell since in which the agent was cut off or the
/// registry could not serve.
fn clock_start_ms(agent: &AgentLog, unavailable: &[(u64, u64)], committed: u64, at: u64) -> u64 {
    [
        Some(committed),
        cut_off_within(agent, committed, at),
        spell_within(unavailable, committed, at),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(committed)
}

/// Check the agents' answers and routing against the history (see the module docs); the
/// violations and the figures.
pub fn check_rollout(r: &RolloutRecord<'_>) -> (Vec<Violation>, RolloutFigures) {
    let gens = Generations {
        split: r
            .history
            .iter()
            .map(|h| (h.generation, h.split.keys().copied().collect()))
            .collect(),
        committed: r.committed_ms.clone(),
    };
    let mut out = Vec::new();
    let mut fig = RolloutFigures {
        agents: r.agents.len(),
        propagation_bound_ms: PROPAGATION_BOUND_MS,
        generations: r.history.last().map_or(0, |h| h.generation),
        registry_unavailable_spells: r.unavailable_ms.len() as u64,
        registry_unavailable_ms: r.unavailable_ms.iter().map(|(a, b)| b - a).sum(),
        ..RolloutFigures::default()
    };
    for h in r.history {
        match h.kind {
            ChangeKind::RolloutStart => fig.rollouts_started += 1,
            ChangeKind::RolloutComplete => fig.rollouts_completed += 1,
            ChangeKind::Rollback if h.reason.starts_with("automatic:") => {
                fig.rollbacks_automatic += 1
            }
            ChangeKind::Rollback => fig.rollbacks_manual += 1,
            _ => {}
        }
    }
    for a in r.agents {
        out.extend(check_answers(
            a,
            &gens,
            r.unavailable_ms,
            &mut fig.stale_answer_ms_max,
        ));
        fig.answers += a.answers.len() as u64;
        fig.not_ready += a.not_ready;
        fig.reports += a.reports;
        fig.reports_failed += a.reports_failed;
        fig.moves += a.moves;
        fig.pulls_failed += a.pulls_failed;
        fig.cut_off_spells += a.cut_off.len() as u64;
        fig.rollbacks_ignored += a.rollbacks_ignored;
    }
    let mut propagation = Vec::new();
    for (&generation, &committed) in &gens.committed {
        if committed.saturating_add(PROPAGATION_BOUND_MS) > r.agents_stopped_ms {
            continue;
        }
        for a in r.agents {
            let Some(t) = reached(a, generation, false, committed) else {
                continue;
            };
            if cut_off_within(a, committed, t).is_none() {
                propagation.push(t - committed);
            }
        }
    }
    fig.propagation_ms = Dist::of(&propagation);
    let regions = r.regions.max(1);
    let mut rollback_ms: Vec<Vec<u64>> = vec![Vec::new(); regions];
    for h in r.history.iter().filter(|h| h.kind == ChangeKind::Rollback) {
        let (f, times) = check_rollback(r, h, &mut out);
        for (region, ms) in times {
            rollback_ms[region % regions].push(ms);
        }
        fig.rollbacks.push(f);
    }
    for (region, times) in rollback_ms.iter().enumerate() {
        let loads: Vec<u64> = r
            .agents
            .iter()
            .filter(|a| a.region % regions == region)
            .flat_map(|a| a.load_ms.iter().copied())
            .collect();
        fig.regions.push(RegionFigures {
            region,
            agents: r
                .agents
                .iter()
                .filter(|a| a.region % regions == region)
                .count(),
            rollback_time_ms: Dist::of(times),
            model_load_time_ms: Dist::of(&loads),
        });
    }
    let all_rollbacks: Vec<u64> = rollback_ms.concat();
    fig.rollback_time_ms = Dist::of(&all_rollbacks);
    let all_loads: Vec<u64> = r.agents.iter().flat_map(|a| a.load_ms.clone()).collect();
    fig.model_load_time_ms = Dist::of(&all_loads);
    (out, fig)
}

/// One agent's answers: each in its generation's split, and none stale beyond the bound.
fn check_answers(
    a: &AgentLog,
    gens: &Generations,
    unavailable: &[(u64, u64)],
    stale_max: &mut u64,
) -> Vec<Violation> {
    let deadline = |superseded: u64, at: u64| {
        clock_start_ms(a, unavailable, superseded, at).saturating_add(PROPAGATION_BOUND_MS)
    };
    let mut out = Vec::new();
    let mut outside: Vec<&Answer> = Vec::new();
    let mut unknown: Vec<&Answer> = Vec::new();
    // Per superseded generation served too late: (first answer, last answer, count).
    let mut stale: BTreeMap<u64, (Answer, Answer, u64)> = BTreeMap::new();
    for answer in &a.answers {
        let Some(split) = gens.split.get(&answer.generation) else {
            unknown.push(answer);
            continue;
        };
        if !split.contains(&answer.version) {
            outside.push(answer);
            continue;
        }
        let Some(superseded) = gens.superseded_ms(answer.generation) else {
            continue;
        };
        if answer.at_ms <= superseded {
            continue;
        }
        let clock = clock_start_ms(a, unavailable, superseded, answer.at_ms);
        *stale_max = (*stale_max).max(answer.at_ms.saturating_sub(clock));
        if answer.at_ms <= deadline(superseded, answer.at_ms) {
            continue;
        }
        // Stale beyond the bound: allowed only if a generation fresh enough has this version.
        let fresh = gens.split.iter().any(|(&g, versions)| {
            versions.contains(&answer.version)
                && gens.committed.get(&g).is_some_and(|&c| c <= answer.at_ms)
                && gens
                    .superseded_ms(g)
                    .is_none_or(|s| answer.at_ms <= deadline(s, answer.at_ms))
        });
        if !fresh {
            let e = stale
                .entry(answer.generation)
                .or_insert((*answer, *answer, 0));
            e.1 = *answer;
            e.2 += 1;
        }
    }
    for (answers, kind) in [
        (&unknown, "answer-unknown-generation"),
        (&outside, "answer-outside-split"),
    ] {
        if let Some(first) = answers.first() {
            out.push(Violation::new(
                kind,
                format!(
                    "{} answered with version {} under generation {} at {} ms ({} such answers){}",
                    a.agent,
                    first.version,
                    first.generation,
                    first.at_ms,
                    answers.len(),
                    gens.split
                        .get(&first.generation)
                        .map(|s| format!(", whose split is {s:?}"))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    let total = stale.len();
    for (i, (generation, (first, last, n))) in stale.into_iter().enumerate() {
        if i == VIOLATIONS_PER_AGENT_MAX {
            out.push(Violation::new(
                "served-stale",
                format!(
                    "{}: {} more superseded generations served",
                    a.agent,
                    total - i
                ),
            ));
            break;
        }
        let superseded = gens.superseded_ms(generation).unwrap_or(0);
        out.push(Violation::new(
            "served-stale",
            format!(
                "{} answered {n} requests by generation {generation} (version {} first) from \
                 {} ms to {} ms, up to {} ms after generation {} committed at {superseded} ms, \
                 beyond the {PROPAGATION_BOUND_MS} ms bound; no generation in force then \
                 routes to that version",
                a.agent,
                first.version,
                first.at_ms,
                last.at_ms,
                last.at_ms - superseded,
                generation + 1
            ),
        ));
    }
    out
}

/// When `a` first routed by `generation` or a later one (with all of its split loaded if
/// `ready`) at or after `from`; `from` itself if it already did then.
fn reached(a: &AgentLog, generation: u64, ready: bool, from: u64) -> Option<u64> {
    let ok = |c: &RoutingChange| {
        c.generation > generation || (c.generation == generation && (c.ready || !ready))
    };
    let before = a.routing.iter().take_while(|c| c.at_ms <= from).last();
    if before.is_some_and(ok) {
        return Some(from);
    }
    a.routing
        .iter()
        .find(|c| c.at_ms > from && ok(c))
        .map(|c| c.at_ms)
}

/// One rollback: every agent completes it (see the module docs); its figures, and each
/// connected agent's (region, time to complete).
fn check_rollback(
    r: &RolloutRecord<'_>,
    h: &DeploymentRecord,
    out: &mut Vec<Violation>,
) -> (RollbackFigures, Vec<(usize, u64)>) {
    let version = match (h.split.len(), h.split.iter().next()) {
        (1, Some((&v, _))) => v,
        _ => 0,
    };
    let committed = r.committed_ms.get(&h.generation).copied();
    let mut f = RollbackFigures {
        generation: h.generation,
        automatic: h.reason.starts_with("automatic:"),
        version,
        committed_ms: committed,
        ..RollbackFigures::default()
    };
    let Some(committed) = committed else {
        return (f, Vec::new());
    };
    f.judged = committed.saturating_add(PROPAGATION_BOUND_MS) <= r.agents_stopped_ms;
    if !f.judged {
        return (f, Vec::new());
    }
    let mut times = Vec::new();
    let mut incomplete = Vec::new();
    let mut slow = Vec::new();
    for a in r.agents {
        let Some(done) = reached(a, h.generation, true, committed) else {
            incomplete.push(a.agent.as_str());
            continue;
        };
        let took = done - committed;
        if cut_off_within(a, committed, done).is_some() {
            f.agents_cut_off += 1;
            continue;
        }
        let late = done.saturating_sub(clock_start_ms(a, r.unavailable_ms, committed, done));
        if late > PROPAGATION_BOUND_MS {
            slow.push((a.agent.as_str(), late));
        }
        times.push((a.region, took));
    }
    f.last_agent_ms = times.iter().map(|(_, t)| *t).max();
    let what = format!(
        "the {} rollback to version {version} (generation {}, committed at {committed} ms)",
        if f.automatic { "automatic" } else { "hand" },
        h.generation
    );
    if !incomplete.is_empty() {
        out.push(Violation::new(
            "rollback-incomplete",
            format!(
                "{what}: {} agents never routed all traffic by it before they stopped at {} ms \
                 (first: {})",
                incomplete.len(),
                r.agents_stopped_ms,
                incomplete
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if let Some(&(agent, took)) = slow.iter().max_by_key(|(_, t)| *t) {
        out.push(Violation::new(
            "rollback-slow",
            format!(
                "{what}: {} agents took over {PROPAGATION_BOUND_MS} ms to route by it after they \
                 and the registry could ({agent}: {took} ms)",
                slow.len()
            ),
        ));
    }
    (f, times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_node::deploy::Split;

    fn record(
        generation: u64,
        kind: ChangeKind,
        reason: &str,
        split: &[(u64, u8)],
    ) -> DeploymentRecord {
        DeploymentRecord {
            generation,
            kind,
            principal: "p".into(),
            at_ms: 0,
            reason: reason.into(),
            split: split.iter().copied().collect::<Split>(),
            shadows: BTreeSet::new(),
        }
    }

    /// create v1 (at 0 ms); 5% of v2 (1 s); 25% (3 s); automatic rollback to v1 (5 s).
    fn history() -> (Vec<DeploymentRecord>, BTreeMap<u64, u64>) {
        use ChangeKind::*;
        (
            vec![
                record(1, Create, "create", &[(1, 100)]),
                record(2, RolloutStart, "round 1", &[(1, 95), (2, 5)]),
                record(3, RolloutStep, "step 2 of 3", &[(1, 75), (2, 25)]),
                record(4, Rollback, "automatic: error rate", &[(1, 100)]),
            ],
            BTreeMap::from([(1, 0), (2, 1_000), (3, 3_000), (4, 5_000)]),
        )
    }

    /// An agent that follows each generation `lag` ms after its commit, answering every
    /// 100 ms by the split it routes by ([`answer_by_routing`]).
    fn agent(name: &str, region: usize, lag: u64, committed: &BTreeMap<u64, u64>) -> AgentLog {
        let mut a = AgentLog {
            agent: name.into(),
            region,
            ..AgentLog::default()
        };
        for (&g, &c) in committed {
            a.routing.push(RoutingChange {
                at_ms: c + lag,
                generation: g,
                ready: true,
            });
        }
        a.load_ms = vec![400 + lag];
        answer_by_routing(&mut a);
        a
    }

    /// Answers every 100 ms for 20 s by the generation routed by then: under generations 2 and
    /// 3 every other answer is v2, else v1.
    fn answer_by_routing(a: &mut AgentLog) {
        a.answers.clear();
        for t in (0..20_000).step_by(100) {
            let g = a
                .routing
                .iter()
                .take_while(|c| c.at_ms <= t)
                .last()
                .map(|c| c.generation);
            let Some(g) = g else { continue };
            let version = if matches!(g, 2 | 3) && t % 200 == 0 {
                2
            } else {
                1
            };
            a.answers.push(Answer {
                at_ms: t,
                generation: g,
                version,
            });
        }
    }

    fn kinds(agents: &[AgentLog], stopped: u64) -> (Vec<&'static str>, RolloutFigures) {
        let (h, c) = history();
        let (v, f) = check_rollout(&RolloutRecord {
            history: &h,
            committed_ms: &c,
            agents,
            unavailable_ms: &[],
            regions: 3,
            agents_stopped_ms: stopped,
        });
        (v.into_iter().map(|v| v.kind).collect(), f)
    }

    #[test]
    fn agents_that_follow_within_the_bound_pass_and_give_per_region_figures() {
        let (_, c) = history();
        let agents: Vec<AgentLog> = (0..6)
            .map(|i| agent(&format!("a{i}"), i % 3, 200 * i as u64, &c))
            .collect();
        let (found, f) = kinds(&agents, 20_000);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(
            (f.rollbacks_automatic, f.rollouts_started, f.generations),
            (1, 1, 4)
        );
        assert_eq!(f.rollbacks.len(), 1);
        assert!(f.rollbacks[0].judged && f.rollbacks[0].automatic);
        assert_eq!(f.rollbacks[0].last_agent_ms, Some(1_000));
        assert_eq!(f.regions.len(), 3);
        // Region 1 holds agents 1 and 4: 200 ms and 800 ms behind.
        assert_eq!(f.regions[1].rollback_time_ms.max, Some(800));
        assert_eq!(f.regions[1].model_load_time_ms.n, 2);
        assert_eq!(f.rollback_time_ms.n, 6);
        assert!(
            f.stale_answer_ms_max >= 800 && f.stale_answer_ms_max <= 1_000,
            "{}",
            f.stale_answer_ms_max
        );
    }

    #[test]
    fn an_agent_serving_the_canary_after_the_rollback_beyond_the_bound_is_caught() {
        let (_, c) = history();
        let late = agent("late", 0, PROPAGATION_BOUND_MS + 500, &c);
        let (found, _) = kinds(&[late], 20_000);
        assert!(found.contains(&"served-stale"), "{found:?}");
        assert!(found.contains(&"rollback-slow"), "{found:?}");
        // Never routing by the rollback at all.
        let mut stuck = agent("stuck", 0, 0, &c);
        stuck.routing.pop();
        answer_by_routing(&mut stuck);
        let (found, _) = kinds(&[stuck], 20_000);
        assert!(found.contains(&"rollback-incomplete"), "{found:?}");
        assert!(found.contains(&"served-stale"), "{found:?}");
    }

    #[test]
    fn a_registry_outage_restarts_the_bounds_clock_for_every_agent() {
        let (h, c) = history();
        // The agent learns of every change 7 s late: too late, unless no leader could serve
        // from 0.8 s to 7 s (then the rollback committed at 5 s is judged from 7 s).
        let late = agent("late", 1, PROPAGATION_BOUND_MS + 1_000, &c);
        let run = |unavailable: &[(u64, u64)]| {
            let (v, f) = check_rollout(&RolloutRecord {
                history: &h,
                committed_ms: &c,
                agents: std::slice::from_ref(&late),
                unavailable_ms: unavailable,
                regions: 3,
                agents_stopped_ms: 20_000,
            });
            (v.into_iter().map(|v| v.kind).collect::<Vec<_>>(), f)
        };
        let (found, _) = run(&[]);
        assert!(found.contains(&"rollback-slow"), "{found:?}");
        // Generations 2 and 3, served stale during the outage, are judged from 7 s too: every
        // answer is within the bound of it.
        let (found, f) = run(&[(800, 7_000)]);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(f.registry_unavailable_ms, 6_200);
        assert_eq!(
            f.rollback_time_ms.max,
            Some(PROPAGATION_BOUND_MS + 1_000),
            "the outage counts in the figure"
        );
    }

    #[test]
    fn an_agent_cut_off_is_judged_from_its_return() {
        let (_, c) = history();
        // Cut off from 4.5 s to 9 s: it learns of the rollback at 9.5 s, 4.5 s late but 0.5 s
        // after it could reach a node again.
        let mut a = agent("cut", 2, 0, &c);
        a.cut_off = vec![(4_500, 9_000)];
        a.routing.last_mut().unwrap().at_ms = 9_500;
        answer_by_routing(&mut a);
        let (found, f) = kinds(std::slice::from_ref(&a), 20_000);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(f.rollbacks[0].agents_cut_off, 1);
        assert_eq!(f.rollback_time_ms.n, 0, "left out of the figures");
        // The same agent still on the old split long after its return is caught.
        a.routing.last_mut().unwrap().at_ms = 9_000 + PROPAGATION_BOUND_MS + 1_000;
        answer_by_routing(&mut a);
        let (found, _) = kinds(&[a], 20_000);
        assert!(found.contains(&"served-stale"), "{found:?}");
    }

    #[test]
    fn answers_outside_their_split_or_generation_and_late_rollbacks() {
        let (_, c) = history();
        let mut a = agent("a", 0, 0, &c);
        a.answers.push(Answer {
            at_ms: 6_000,
            generation: 4,
            version: 2,
        });
        a.answers.push(Answer {
            at_ms: 6_000,
            generation: 9,
            version: 1,
        });
        let (found, _) = kinds(&[a], 20_000);
        assert_eq!(found, ["answer-unknown-generation", "answer-outside-split"]);
        // Agents stopped 1 s after the rollback: it is not judged.
        let mut b = agent("b", 0, 0, &c);
        b.routing.pop();
        answer_by_routing(&mut b);
        b.answers.retain(|x| x.at_ms < 5_000);
        let (found, f) = kinds(&[b], 6_000);
        assert!(found.is_empty(), "{found:?}");
        assert!(!f.rollbacks[0].judged);
    }
}
