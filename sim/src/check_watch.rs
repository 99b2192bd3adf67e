//! Invariant checkers for watches (decision 0024, issue 15), over plain data: every node's kept
//! watch log and the final state ([`FinalState::watch`], read after convergence) and what each
//! simulated watcher received ([`WatcherLog`], recorded by [`crate::watchers`]).
//!
//! What is checked:
//! - each node's kept log is contiguous: revisions `1..=latest` while fewer than
//!   `WATCH_EVENTS_KEPT` were given, else the newest `WATCH_EVENTS_KEPT` (`watch-log-gap`); nodes
//!   agree on the event at every revision both keep (`watch-diverged`);
//! - a watcher's revisions strictly increase (`watch-repeated`), each event is the log's event at
//!   that revision (`watch-diverged`) and one its filter asks for (`watch-unasked`); every event
//!   its filter asks for between where its first watch started and the last revision it was told
//!   it had read through was delivered, across every move to another node (`watch-missed`); it is
//!   never told it fell behind while the log keeps everything (`watch-behind`);
//! - the log agrees with the final state: each alias's last set or removal is the alias table
//!   (`watch-stale-alias`), each version's last stage change its stage (`watch-stale-stage`), and
//!   every event names a model that exists (`watch-unknown-model`).

use std::collections::{BTreeMap, BTreeSet};

use quiver_node::domain::Stage;
use quiver_node::watch::{Change, WatchEvent, WatchFilter, WATCH_EVENTS_KEPT};

use crate::check::{FinalState, Violation};
use crate::schedule::NodeId;

/// Revisions a violation lists before it only counts the rest.
const REVISIONS_SHOWN_MAX: usize = 8;

/// What one simulated watcher saw, in the order it saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatcherLog {
    /// Its name in the trace and in violations (`w0 all`).
    pub name: String,
    pub filter: WatchFilter,
    /// The revision its first watch started after (`Node::watch_start` without a revision);
    /// `None` while no watch of it has started.
    pub started: Option<u64>,
    /// Every event it received, with the node that sent it.
    pub events: Vec<(NodeId, WatchEvent)>,
    /// The last revision a batch said it was read through: where it resumes.
    pub through: u64,
    /// Each time it was told it fell behind: the node, the oldest kept revision, the latest.
    pub behind: Vec<(NodeId, u64, u64)>,
}

impl WatcherLog {
    pub fn new(name: impl Into<String>, filter: WatchFilter) -> Self {
        WatcherLog {
            name: name.into(),
            filter,
            started: None,
            events: Vec::new(),
            through: 0,
            behind: Vec::new(),
        }
    }
}

/// Every watch check: the nodes' logs (`nodes`: each node's final state), the watchers against
/// them, and the first node's log against its state.
pub fn check_watch(nodes: &[(NodeId, &FinalState)], watchers: &[WatcherLog]) -> Vec<Violation> {
    let mut out = check_watch_logs(nodes);
    let log = merged_log(nodes);
    out.extend(check_watchers(&log, watchers));
    if let Some((_, state)) = nodes.first() {
        out.extend(check_watch_state(state));
    }
    out
}

/// Each node's kept log is contiguous and ends at its revision; nodes agree at every revision
/// both keep.
pub fn check_watch_logs(nodes: &[(NodeId, &FinalState)]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (id, state) in nodes {
        if let Some(problem) = log_gap(&state.watch, state.watch_revision) {
            out.push(Violation::new(
                "watch-log-gap",
                format!("n{id}'s kept watch log {problem}"),
            ));
        }
    }
    let mut first: BTreeMap<u64, (NodeId, &WatchEvent)> = BTreeMap::new();
    for (id, state) in nodes {
        for event in &state.watch {
            match first.get(&event.revision) {
                None => {
                    first.insert(event.revision, (*id, event));
                }
                Some((other, seen)) if *seen != event => out.push(Violation::new(
                    "watch-diverged",
                    format!(
                        "at revision {} n{other} keeps {} and n{id} {}",
                        event.revision,
                        show(seen),
                        show(event)
                    ),
                )),
                Some(_) => {}
            }
        }
    }
    out
}

/// What is wrong with a kept log whose latest revision is `latest`, if anything.
fn log_gap(events: &[WatchEvent], latest: u64) -> Option<String> {
    let oldest = latest.saturating_sub(WATCH_EVENTS_KEPT) + 1;
    let expected = latest + 1 - oldest.min(latest + 1);
    for (i, event) in events.iter().enumerate() {
        let want = oldest + i as u64;
        if event.revision != want {
            return Some(format!(
                "has revision {} where {want} belongs (latest {latest})",
                event.revision
            ));
        }
    }
    (events.len() as u64 != expected).then(|| {
        format!(
            "holds {} events, {expected} expected (revisions {oldest}..={latest})",
            events.len()
        )
    })
}

/// Every revision any node keeps, the first node's event where they differ (which
/// [`check_watch_logs`] reports).
pub fn merged_log(nodes: &[(NodeId, &FinalState)]) -> BTreeMap<u64, WatchEvent> {
    let mut log = BTreeMap::new();
    for (_, state) in nodes {
        for event in &state.watch {
            log.entry(event.revision).or_insert_with(|| event.clone());
        }
    }
    log
}

/// Each watcher received, in order and once, exactly the log's events its filter asks for,
/// from where it started to where it was told it had read through.
pub fn check_watchers(log: &BTreeMap<u64, WatchEvent>, watchers: &[WatcherLog]) -> Vec<Violation> {
    let mut out = Vec::new();
    let latest = log.keys().next_back().copied().unwrap_or(0);
    for w in watchers {
        let mut repeated = Vec::new();
        let mut last: Option<u64> = None;
        for (node, event) in &w.events {
            let r = event.revision;
            if last.is_some_and(|l| r <= l) {
                repeated.push(r);
            }
            last = Some(last.map_or(r, |l| l.max(r)));
            match log.get(&r) {
                Some(kept) if kept == event => {}
                Some(kept) => out.push(Violation::new(
                    "watch-diverged",
                    format!(
                        "{} got {} from n{node}; the log has {} at that revision",
                        w.name,
                        show(event),
                        show(kept)
                    ),
                )),
                None => out.push(Violation::new(
                    "watch-diverged",
                    format!(
                        "{} got {} from n{node}, a revision no node keeps (latest {latest})",
                        w.name,
                        show(event)
                    ),
                )),
            }
            if !w.filter.matches(&event.change) {
                out.push(Violation::new(
                    "watch-unasked",
                    format!(
                        "{} ({:?}) got {} from n{node}",
                        w.name,
                        w.filter,
                        show(event)
                    ),
                ));
            }
        }
        if !repeated.is_empty() {
            out.push(Violation::new(
                "watch-repeated",
                format!(
                    "{} got {} events again or out of order: revisions {}",
                    w.name,
                    repeated.len(),
                    list(&repeated)
                ),
            ));
        }
        if let Some(started) = w.started.filter(|s| *s < w.through) {
            let got: BTreeSet<u64> = w.events.iter().map(|(_, e)| e.revision).collect();
            let missed: Vec<u64> = log
                .range(started + 1..=w.through)
                .filter(|(r, e)| w.filter.matches(&e.change) && !got.contains(r))
                .map(|(r, _)| *r)
                .collect();
            if !missed.is_empty() {
                out.push(Violation::new(
                    "watch-missed",
                    format!(
                        "{} started after revision {started} and read through {} but never got \
                         {} events its filter asks for: revisions {}",
                        w.name,
                        w.through,
                        missed.len(),
                        list(&missed)
                    ),
                ));
            }
        }
        for (node, oldest_kept, behind_latest) in &w.behind {
            if *behind_latest <= WATCH_EVENTS_KEPT {
                out.push(Violation::new(
                    "watch-behind",
                    format!(
                        "{} was told by n{node} that its events are no longer kept (oldest \
                         {oldest_kept}), with only {behind_latest} ever given",
                        w.name
                    ),
                ));
            }
        }
    }
    out
}

/// The log (of `state`'s node) agrees with `state`: aliases, stages, models.
pub fn check_watch_state(state: &FinalState) -> Vec<Violation> {
    let mut out = Vec::new();
    // Whether the log still holds revision 1: only then is a key with no event unchanged since
    // its creation.
    let whole = state.watch.first().is_none_or(|e| e.revision == 1);
    let mut aliases: BTreeMap<(&str, &str), Option<u64>> = BTreeMap::new();
    let mut stages: BTreeMap<(&str, u64), Stage> = BTreeMap::new();
    let mut created: BTreeSet<(&str, u64)> = BTreeSet::new();
    let mut unknown: BTreeMap<&str, u64> = BTreeMap::new();
    for event in &state.watch {
        let model = event.change.model();
        if !state.models.contains_key(model) {
            unknown.entry(model).or_insert(event.revision);
        }
        match &event.change {
            Change::AliasSet {
                model,
                alias,
                number,
            } => {
                aliases.insert((model, alias), Some(*number));
            }
            Change::AliasDeleted { model, alias, .. } => {
                aliases.insert((model, alias), None);
            }
            Change::Stage {
                model, number, to, ..
            } => {
                stages.insert((model, *number), *to);
            }
            Change::VersionCreated { model, number, .. } => {
                created.insert((model, *number));
            }
            _ => {}
        }
    }
    for (model, revision) in unknown {
        out.push(Violation::new(
            "watch-unknown-model",
            format!("revision {revision} names model {model:?}, which the state does not have"),
        ));
    }
    let table: BTreeMap<(&str, &str), u64> = state
        .aliases
        .iter()
        .map(|a| ((a.model.as_str(), a.alias.as_str()), a.version))
        .collect();
    let keys: BTreeSet<(&str, &str)> = aliases.keys().chain(table.keys()).copied().collect();
    for key in keys {
        let (Some(said), found) = (aliases.get(&key), table.get(&key).copied()) else {
            if whole {
                out.push(Violation::new(
                    "watch-stale-alias",
                    format!(
                        "{}@{} points at {} but no watch event ever set it",
                        key.0, key.1, table[&key]
                    ),
                ));
            }
            continue;
        };
        if *said != found {
            out.push(Violation::new(
                "watch-stale-alias",
                format!(
                    "the last watch event of {}@{} says {}, the alias table {}",
                    key.0,
                    key.1,
                    target(*said),
                    target(found)
                ),
            ));
        }
    }
    for ((model, number), v) in &state.versions {
        let said = match stages.get(&(model.as_str(), *number)) {
            Some(to) => *to,
            None if whole || created.contains(&(model.as_str(), *number)) => Stage::Experimental,
            None => continue,
        };
        if said != v.stage {
            out.push(Violation::new(
                "watch-stale-stage",
                format!(
                    "the watch events of {model}/{number} leave it in {said:?}, the state has \
                     {:?}",
                    v.stage
                ),
            ));
        }
    }
    out
}

fn target(number: Option<u64>) -> String {
    number.map_or_else(|| "removed".into(), |n| format!("version {n}"))
}

fn show(event: &WatchEvent) -> String {
    format!(
        "#{} {} (by {} at {})",
        event.revision,
        event.change.describe(),
        event.principal,
        event.at_ms
    )
}

fn list(revisions: &[u64]) -> String {
    let shown: Vec<String> = revisions
        .iter()
        .take(REVISIONS_SHOWN_MAX)
        .map(|r| r.to_string())
        .collect();
    let more = revisions.len().saturating_sub(REVISIONS_SHOWN_MAX);
    match more {
        0 => shown.join(", "),
        n => format!("{}, … and {n} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_node::domain::{Alias, VersionStatus};

    fn event(revision: u64, change: Change) -> WatchEvent {
        WatchEvent {
            revision,
            at_ms: 1_000 + revision as i64,
            principal: "pipeline-0".into(),
            change,
        }
    }

    fn model(name: &str) -> Change {
        Change::Model { model: name.into() }
    }

    fn created(name: &str, number: u64) -> Change {
        Change::VersionCreated {
            model: name.into(),
            number,
            status: VersionStatus::Ready,
        }
    }

    fn alias_set(name: &str, number: u64) -> Change {
        Change::AliasSet {
            model: name.into(),
            alias: "champion".into(),
            number,
        }
    }

    /// A history of two models: `a` with a version aliased, `b` with one created.
    fn log() -> Vec<WatchEvent> {
        vec![
            event(1, model("a")),
            event(2, created("a", 1)),
            event(3, model("b")),
            event(4, alias_set("a", 1)),
            event(5, created("b", 1)),
            event(6, created("a", 2)),
        ]
    }

    fn state(watch: Vec<WatchEvent>) -> FinalState {
        let mut s = FinalState::default();
        for name in ["a", "b"] {
            let m = quiver_node::domain::Model {
                name: name.into(),
                namespace: "team".into(),
                description: String::new(),
                risk_tier: quiver_node::domain::RiskTier::Low,
                tags: Default::default(),
                created_by: actor(),
                created_at_ms: 0,
                version_count: 0,
                production_version: None,
            };
            s.models.insert(name.into(), m);
        }
        s.aliases.push(Alias {
            model: "a".into(),
            alias: "champion".into(),
            version: 1,
            updated_by: actor(),
            updated_at_ms: 0,
        });
        s.watch_revision = watch.last().map_or(0, |e| e.revision);
        s.watch = watch;
        s
    }

    fn actor() -> quiver_node::domain::Actor {
        quiver_node::domain::Actor {
            name: "pipeline-0".into(),
            authenticated: true,
        }
    }

    /// A watcher of `filter` that started after `started` and got `revisions` of [`log`].
    fn watcher(filter: WatchFilter, started: u64, revisions: &[u64], through: u64) -> WatcherLog {
        let all = log();
        let mut w = WatcherLog::new("w", filter);
        w.started = Some(started);
        w.through = through;
        w.events = revisions
            .iter()
            .map(|r| (1, all[*r as usize - 1].clone()))
            .collect();
        w
    }

    fn kinds(violations: &[Violation]) -> Vec<&'static str> {
        violations.iter().map(|v| v.kind).collect()
    }

    fn check(watchers: &[WatcherLog]) -> Vec<Violation> {
        let (s1, s2) = (state(log()), state(log()));
        check_watch(&[(1, &s1), (2, &s2)], watchers)
    }

    #[test]
    fn a_clean_history_passes() {
        let all = watcher(WatchFilter::All, 1, &[2, 3, 4, 5, 6], 6);
        let of_b = watcher(WatchFilter::Model("b".into()), 0, &[3, 5], 6);
        // A watcher that has read through less than the log holds has missed nothing yet, nor
        // has one that stopped where it started.
        let behind = watcher(WatchFilter::All, 2, &[3], 3);
        let idle = watcher(WatchFilter::All, 6, &[], 6);
        let mut unstarted = watcher(WatchFilter::All, 0, &[], 0);
        unstarted.started = None;
        assert_eq!(check(&[all, of_b, behind, idle, unstarted]), vec![]);
    }

    #[test]
    fn a_gap_in_what_a_watcher_got_is_a_miss() {
        let all = watcher(WatchFilter::All, 1, &[2, 4, 5, 6], 6);
        let v = check(&[all]);
        assert_eq!(kinds(&v), vec!["watch-missed"]);
        assert!(v[0].detail.contains("revisions 3"), "{}", v[0].detail);
        // A model watcher misses only what its filter asks for: 5, not 4.
        let of_b = watcher(WatchFilter::Model("b".into()), 0, &[3], 6);
        let v = check(&[of_b]);
        assert_eq!(kinds(&v), vec!["watch-missed"]);
        assert!(v[0].detail.contains("revisions 5"), "{}", v[0].detail);
    }

    #[test]
    fn an_event_twice_is_a_repeat() {
        let all = watcher(WatchFilter::All, 1, &[2, 3, 3, 4, 5, 6], 6);
        assert_eq!(kinds(&check(&[all])), vec!["watch-repeated"]);
        let back = watcher(WatchFilter::All, 1, &[2, 3, 4, 2, 5, 6], 6);
        assert_eq!(kinds(&check(&[back])), vec!["watch-repeated"]);
    }

    #[test]
    fn a_watcher_told_something_else_than_the_log_diverged() {
        let mut all = watcher(WatchFilter::All, 1, &[2, 3, 4, 5, 6], 6);
        all.events[2].1.change = alias_set("a", 2);
        assert_eq!(kinds(&check(&[all])), vec!["watch-diverged"]);
        // One it did not ask for is named too.
        let mut of_b = watcher(WatchFilter::Model("b".into()), 0, &[3, 5], 6);
        of_b.events.push((1, log()[5].clone()));
        assert_eq!(kinds(&check(&[of_b])), vec!["watch-unasked"]);
    }

    #[test]
    fn nodes_whose_logs_disagree_or_have_holes_are_named() {
        let mut other = log();
        other[3].change = alias_set("a", 2);
        let (s1, s2) = (state(log()), state(other));
        let v = check_watch_logs(&[(1, &s1), (2, &s2)]);
        assert_eq!(kinds(&v), vec!["watch-diverged"]);
        assert!(v[0].detail.contains("n1") && v[0].detail.contains("n2"));
        let mut holed = log();
        holed.remove(2);
        let s3 = state(holed);
        assert_eq!(kinds(&check_watch_logs(&[(3, &s3)])), vec!["watch-log-gap"]);
        // Fewer events than the revision says (the newest lost).
        let mut short = state(log());
        short.watch.pop();
        assert_eq!(
            kinds(&check_watch_logs(&[(1, &short)])),
            vec!["watch-log-gap"]
        );
        assert_eq!(log_gap(&[], 0), None);
    }

    #[test]
    fn the_log_must_agree_with_the_alias_table_stages_and_models() {
        assert_eq!(check_watch_state(&state(log())), vec![]);
        let mut moved = state(log());
        moved.aliases[0].version = 2;
        assert_eq!(kinds(&check_watch_state(&moved)), vec!["watch-stale-alias"]);
        let mut removed = log();
        removed.push(event(
            7,
            Change::AliasDeleted {
                model: "a".into(),
                alias: "champion".into(),
                number: 1,
            },
        ));
        assert_eq!(
            kinds(&check_watch_state(&state(removed))),
            vec!["watch-stale-alias"]
        );
        let mut stray = log();
        stray.push(event(7, model("hostile-no-such-model")));
        assert_eq!(
            kinds(&check_watch_state(&state(stray))),
            vec!["watch-unknown-model"]
        );
    }

    #[test]
    fn the_log_must_leave_each_version_in_its_stage() {
        let mut s = state(log());
        s.versions
            .insert(("a".into(), 1), version("a", 1, Stage::Experimental));
        assert_eq!(check_watch_state(&s), vec![]);
        // Moved without an event.
        s.versions
            .insert(("a".into(), 1), version("a", 1, Stage::Staging));
        assert_eq!(kinds(&check_watch_state(&s)), vec!["watch-stale-stage"]);
        let mut promoted = log();
        promoted.push(event(
            7,
            Change::Stage {
                model: "a".into(),
                number: 1,
                from: Stage::Experimental,
                to: Stage::Staging,
            },
        ));
        s.watch = promoted;
        s.watch_revision = 7;
        assert_eq!(check_watch_state(&s), vec![]);
    }

    fn version(model: &str, number: u64, stage: Stage) -> quiver_node::domain::Version {
        quiver_node::domain::Version {
            model: model.into(),
            number,
            manifest_root: "aa".into(),
            files: vec![],
            total_size_bytes: 0,
            signature: Default::default(),
            metadata: Default::default(),
            created_by: actor(),
            created_at_ms: 0,
            tags: Default::default(),
            stage,
            status: VersionStatus::Ready,
            stage_history: vec![],
        }
    }

    #[test]
    fn being_told_to_fall_behind_while_everything_is_kept_is_named() {
        let mut all = watcher(WatchFilter::All, 1, &[2, 3, 4, 5, 6], 6);
        all.behind.push((2, 3, 6));
        assert_eq!(kinds(&check(&[all])), vec!["watch-behind"]);
    }
}
