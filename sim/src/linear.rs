//! A linearizability check of the clients' history, in the style of Knossos and Porcupine (the
//! Wing–Gong search with Lowe's memoisation).
//!
//! Every client op on a model — model creation, version creation, stage and alias changes, and
//! the linearizable reads of a model, a version's stage or an alias, served by any node — is
//! recorded with the virtual time it was sent and the time its answer arrived. The check asks
//! whether some order of the ops, each placed between its send and its answer, explains every
//! answer when replayed on a sequential model of one registered model ([`ModelState`]). An op
//! whose answer never came (a timeout, a node that went down) may take effect at any point after
//! it was sent, or never.
//!
//! Ops on different models touch disjoint state, so each model's history is checked alone
//! (Herlihy and Wing's locality). The search is bounded ([`SEARCH_STEPS_MAX`]); a history it
//! cannot settle in time is reported as unchecked, never as a violation.

use std::collections::{BTreeMap, HashSet};

use quiver_node::domain::Stage;

/// Most search steps spent on one model's history.
pub const SEARCH_STEPS_MAX: u64 = 2_000_000;

/// The sequential model of one registered model: what the checked ops can observe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelState {
    pub exists: bool,
    pub stages: BTreeMap<u64, Stage>,
    pub aliases: BTreeMap<String, u64>,
}

impl std::hash::Hash for ModelState {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.exists.hash(state);
        for (number, stage) in &self.stages {
            (number, *stage as u8).hash(state);
        }
        self.aliases.hash(state);
    }
}

/// One op on a model, as a client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinOp {
    CreateModel,
    /// A version creation whose answer named its number (only those are recorded: nobody can
    /// refer to a version whose number was never told).
    CreateVersion {
        number: u64,
    },
    SetStage {
        number: u64,
        stage: Stage,
    },
    SetAlias {
        alias: String,
        number: u64,
    },
    ReadModel,
    ReadStage {
        number: u64,
    },
    ReadAlias {
        alias: String,
    },
}

/// What the client was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinOut {
    /// Applied.
    Ok,
    /// Applied and refused by the state machine (no change).
    Rejected,
    /// Whether the model exists.
    Model(bool),
    /// The version's stage, `None` if it does not exist.
    Stage(Option<Stage>),
    /// The version the alias names, `None` if it is not set.
    Alias(Option<u64>),
    /// No answer: the op may have taken effect or not.
    Unknown,
}

/// One op of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub client: usize,
    /// The node the client sent it to.
    pub node: u64,
    pub model: String,
    pub op: LinOp,
    pub out: LinOut,
    /// Virtual µs since the run's start when it was sent.
    pub call_us: u64,
    /// When the answer arrived; `None` for [`LinOut::Unknown`].
    pub ret_us: Option<u64>,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ret = self
            .ret_us
            .map_or("never".to_string(), |r| format!("{:.3} ms", r as f64 / 1e3));
        write!(
            f,
            "client {} via n{}: {:?} on '{}' -> {:?} (sent {:.3} ms, answered {ret})",
            self.client,
            self.node,
            self.op,
            self.model,
            self.out,
            self.call_us as f64 / 1e3
        )
    }
}

/// The state after `op` answered `out` on `state`, or `None` if `out` cannot be its answer
/// there. [`LinOut::Unknown`]: the op's effect, whatever it answered.
pub fn step(state: &ModelState, op: &LinOp, out: &LinOut) -> Option<ModelState> {
    let unknown = *out == LinOut::Unknown;
    let mut next = state.clone();
    match op {
        LinOp::CreateModel => match out {
            LinOut::Ok if !state.exists => next.exists = true,
            LinOut::Rejected if state.exists => {}
            LinOut::Unknown => next.exists = true,
            _ => return None,
        },
        LinOp::CreateVersion { number } => {
            if !state.exists || state.stages.contains_key(number) {
                return None;
            }
            match out {
                LinOut::Ok | LinOut::Unknown => {
                    next.stages.insert(*number, Stage::Experimental);
                }
                _ => return None,
            }
        }
        LinOp::SetStage { number, stage } => {
            let Some(current) = state.stages.get(number) else {
                return (matches!(out, LinOut::Rejected) || unknown).then_some(next);
            };
            let applies = current != stage;
            match (out, applies) {
                (LinOut::Ok, true) | (LinOut::Unknown, true) => {
                    if *stage == Stage::Production {
                        for s in next.stages.values_mut() {
                            if *s == Stage::Production {
                                *s = Stage::Archived;
                            }
                        }
                    }
                    next.stages.insert(*number, *stage);
                }
                (LinOut::Rejected, false) | (LinOut::Unknown, false) => {}
                _ => return None,
            }
        }
        LinOp::SetAlias { alias, number } => {
            let applies = state.stages.contains_key(number);
            match (out, applies) {
                (LinOut::Ok, true) | (LinOut::Unknown, true) => {
                    next.aliases.insert(alias.clone(), *number);
                }
                (LinOut::Rejected, false) | (LinOut::Unknown, false) => {}
                _ => return None,
            }
        }
        LinOp::ReadModel => {
            if *out != LinOut::Model(state.exists) {
                return None;
            }
        }
        LinOp::ReadStage { number } => {
            if *out != LinOut::Stage(state.stages.get(number).copied()) {
                return None;
            }
        }
        LinOp::ReadAlias { alias } => {
            if *out != LinOut::Alias(state.aliases.get(alias).copied()) {
                return None;
            }
        }
    }
    Some(next)
}

/// How a model's history fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the answers; the op whose answer could not be explained.
    Violation(String),
    /// The search ran out of steps.
    Unchecked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Call,
    Return,
}

/// Check one model's history (every event must name the same model).
pub fn check_model(events: &[Event]) -> Verdict {
    let n = events.len();
    // Calls before returns at the same instant: two ops that touch in time are concurrent.
    let mut entries: Vec<(u64, Kind, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in events.iter().enumerate() {
        entries.push((e.call_us, Kind::Call, i));
        entries.push((e.ret_us.unwrap_or(u64::MAX), Kind::Return, i));
    }
    entries.sort();
    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut lifted = vec![false; n];
    let mut state = ModelState::default();
    // (op, the state before it, the position of its call entry)
    let mut stack: Vec<(usize, ModelState, usize)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, ModelState)> = HashSet::new();
    // The most ops explained when some op's answer could not be, and that op.
    let mut deepest: Option<(usize, usize)> = None;
    let mut steps = 0u64;
    let mut i = 0;
    loop {
        steps += 1;
        if steps > SEARCH_STEPS_MAX {
            return Verdict::Unchecked;
        }
        while i < entries.len() && lifted[entries[i].2] {
            i += 1;
        }
        let Some(&(_, kind, op)) = entries.get(i) else {
            return Verdict::Linearizable;
        };
        match kind {
            Kind::Call => {
                let e = &events[op];
                if let Some(next) = step(&state, &e.op, &e.out) {
                    let mut bits = linearized.clone();
                    bits[op / 64] |= 1 << (op % 64);
                    if seen.insert((bits.clone(), next.clone())) {
                        stack.push((op, std::mem::replace(&mut state, next), i));
                        linearized = bits;
                        lifted[op] = true;
                        i = 0;
                        continue;
                    }
                }
                i += 1;
            }
            // Every op still open may never have happened: nothing left to explain.
            Kind::Return if events[op].ret_us.is_none() => return Verdict::Linearizable,
            Kind::Return => {
                if deepest.is_none_or(|(depth, _)| stack.len() >= depth) {
                    deepest = Some((stack.len(), op));
                }
                let Some((undo, before, at)) = stack.pop() else {
                    let (depth, blocked) = deepest.unwrap_or((0, op));
                    return Verdict::Violation(format!(
                        "{} (no order of the {n} ops on this model explains its answer; at \
                         most {depth} ops before it can be)",
                        events[blocked]
                    ));
                };
                lifted[undo] = false;
                linearized[undo / 64] &= !(1 << (undo % 64));
                state = before;
                i = at + 1;
            }
        }
    }
}

/// Check a whole history, model by model; the verdicts that are not [`Verdict::Linearizable`],
/// by model.
pub fn check(history: &[Event]) -> BTreeMap<String, Verdict> {
    let mut by_model: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for e in history {
        by_model.entry(&e.model).or_default().push(e.clone());
    }
    by_model
        .into_iter()
        .map(|(model, events)| (model.to_string(), check_model(&events)))
        .filter(|(_, v)| *v != Verdict::Linearizable)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn ev(client: usize, op: LinOp, out: LinOut, call_us: u64, ret_us: Option<u64>) -> Event {
        Event {
            client,
            node: 1,
            model: "m".into(),
            op,
            out,
            call_us,
            ret_us,
        }
    }

    fn alias(number: u64) -> LinOp {
        LinOp::SetAlias {
            alias: "champion".into(),
            number,
        }
    }

    fn read_alias() -> LinOp {
        LinOp::ReadAlias {
            alias: "champion".into(),
        }
    }

    /// A model with versions 1 and 2, created before t = 100.
    fn setup() -> Vec<Event> {
        vec![
            ev(0, LinOp::CreateModel, LinOut::Ok, 0, Some(10)),
            ev(
                0,
                LinOp::CreateVersion { number: 1 },
                LinOut::Ok,
                20,
                Some(30),
            ),
            ev(
                0,
                LinOp::CreateVersion { number: 2 },
                LinOut::Ok,
                40,
                Some(50),
            ),
        ]
    }

    #[test]
    fn a_read_after_an_acknowledged_write_must_see_it() {
        let mut h = setup();
        h.push(ev(0, alias(1), LinOut::Ok, 100, Some(110)));
        h.push(ev(1, read_alias(), LinOut::Alias(Some(1)), 120, Some(130)));
        assert_eq!(check_model(&h), Verdict::Linearizable);
        // A stale read: the alias is not set yet in the follower's state.
        h.push(ev(2, read_alias(), LinOut::Alias(None), 140, Some(150)));
        assert!(matches!(check_model(&h), Verdict::Violation(m) if m.contains("client 2")));
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        let mut h = setup();
        h.push(ev(0, alias(1), LinOut::Ok, 100, Some(200)));
        h.push(ev(1, read_alias(), LinOut::Alias(None), 110, Some(120)));
        h.push(ev(2, read_alias(), LinOut::Alias(Some(1)), 130, Some(140)));
        assert_eq!(check_model(&h), Verdict::Linearizable);
        // But once one reader saw the new value, a later reader may not see the old one.
        h.push(ev(3, read_alias(), LinOut::Alias(None), 150, Some(160)));
        assert!(matches!(check_model(&h), Verdict::Violation(_)));
    }

    #[test]
    fn a_write_without_an_answer_may_take_effect_late_or_never() {
        let mut h = setup();
        h.push(ev(0, alias(2), LinOut::Unknown, 100, None));
        h.push(ev(1, read_alias(), LinOut::Alias(None), 300, Some(310)));
        h.push(ev(1, read_alias(), LinOut::Alias(Some(2)), 400, Some(410)));
        assert_eq!(check_model(&h), Verdict::Linearizable);
        // Never before it was sent.
        let mut early = setup();
        early.push(ev(1, read_alias(), LinOut::Alias(Some(2)), 60, Some(70)));
        early.push(ev(0, alias(2), LinOut::Unknown, 100, None));
        assert!(matches!(check_model(&early), Verdict::Violation(_)));
    }

    #[test]
    fn promoting_a_version_archives_the_one_in_production() {
        let mut h = setup();
        let promote = |number| LinOp::SetStage {
            number,
            stage: Stage::Production,
        };
        h.push(ev(0, promote(1), LinOut::Ok, 100, Some(110)));
        h.push(ev(0, promote(2), LinOut::Ok, 120, Some(130)));
        h.push(ev(
            1,
            LinOp::ReadStage { number: 1 },
            LinOut::Stage(Some(Stage::Archived)),
            140,
            Some(150),
        ));
        h.push(ev(0, promote(2), LinOut::Rejected, 160, Some(170)));
        assert_eq!(check_model(&h), Verdict::Linearizable);
        h.push(ev(
            1,
            LinOp::ReadStage { number: 1 },
            LinOut::Stage(Some(Stage::Production)),
            180,
            Some(190),
        ));
        assert!(matches!(check_model(&h), Verdict::Violation(_)));
    }

    #[test]
    fn a_rejection_must_match_the_state_it_was_applied_to() {
        let mut h = setup();
        h.push(ev(0, LinOp::CreateModel, LinOut::Rejected, 100, Some(110)));
        assert_eq!(check_model(&h), Verdict::Linearizable);
        let lone = vec![ev(0, LinOp::CreateModel, LinOut::Rejected, 0, Some(10))];
        assert!(matches!(check_model(&lone), Verdict::Violation(_)));
    }

    /// Histories made by running ops against one sequential register at random instants inside
    /// their intervals are always linearizable; moving one read's answer back to a value two
    /// writes older, after both wrote, never is.
    #[test]
    fn random_sequential_histories_pass_and_a_stale_read_in_them_fails() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut h = setup();
            let mut value = None;
            let mut t = 100u64;
            let mut writes = Vec::new();
            for k in 0..12 {
                // Each op takes effect at `t`, its interval straddles it.
                let call = t - rng.gen_range(0..5);
                let ret = t + rng.gen_range(0..5);
                let client = k % 3;
                if rng.gen_bool(0.5) {
                    let number = rng.gen_range(1..=2);
                    value = Some(number);
                    writes.push(t);
                    h.push(ev(client, alias(number), LinOut::Ok, call, Some(ret)));
                } else {
                    h.push(ev(
                        client,
                        read_alias(),
                        LinOut::Alias(value),
                        call,
                        Some(ret),
                    ));
                }
                t += 10;
            }
            assert_eq!(check_model(&h), Verdict::Linearizable, "seed {seed}");
            // A read after everything, answering "not set", although writes completed before.
            if !writes.is_empty() {
                h.push(ev(
                    9,
                    read_alias(),
                    LinOut::Alias(None),
                    t + 20,
                    Some(t + 30),
                ));
                assert!(
                    matches!(check_model(&h), Verdict::Violation(_)),
                    "seed {seed}"
                );
            }
        }
    }

    #[test]
    fn check_reports_only_the_models_that_fail() {
        let mut h = setup();
        let mut other: Vec<Event> = setup()
            .into_iter()
            .map(|mut e| {
                e.model = "other".into();
                e
            })
            .collect();
        other.push(Event {
            model: "other".into(),
            ..ev(1, LinOp::ReadModel, LinOut::Model(false), 60, Some(70))
        });
        h.extend(other);
        let verdicts = check(&h);
        assert_eq!(verdicts.len(), 1);
        assert!(matches!(verdicts.get("other"), Some(Verdict::Violation(_))));
    }
}
