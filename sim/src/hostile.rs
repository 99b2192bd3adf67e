//! Hostile requests: what a buggy or malicious client sends, mixed into the chaos workload.
//!
//! Pure: [`hostile_op`] draws one request from a catalogue of inputs every way in must refuse
//! (empty, over-long, NUL-containing, path-like, unicode and extreme fields; unknown models and
//! versions; a second model of a name in use; lineage entities that are not, quarantines of
//! versions that do not exist, lifts of what is not quarantined). The client shell hands it to a node's own
//! command path (`Node::propose`, the step after the gRPC edge's checks, so the state
//! machine's own validation is what is tested) and expects a rejection: an accepted one is a
//! violation, and a command that fails in apply stops Raft, which the node-fatal checker sees.

use std::collections::BTreeMap;

use quiver_node::auth::Role;
use quiver_node::command::Op;
use quiver_node::domain::{limits, RiskTier, Signature, Stage, VersionMetadata, VersionStatus};
use quiver_node::governance::{Gate, Policy, PolicyScope};
use quiver_node::lineage::{Entity, EntityKind};
use quiver_node::watch::WatchFilter;
use quiver_transfer::Manifest;
use rand::Rng;

/// Principals that hold only the reader role (granted at boot): every write of theirs must be
/// refused with `PermissionDenied`, and nothing they send may change the state.
pub const INTRUDER_PREFIX: &str = "intruder-";
/// The description an intruder's model update would set.
pub const INTRUDER_DESCRIPTION: &str = "written by an intruder";

/// A well-formed write on this pipeline's own `models` (or a new model), which its intruder's
/// role alone forbids: an update of a model's description, or a new model.
pub fn intruder_op(rng: &mut impl Rng, models: &[String], seq: u64) -> (String, Op) {
    let model = models[rng.gen_range(0..models.len())].clone();
    if rng.gen_bool(0.5) {
        (
            format!("intruder updates {model}"),
            Op::UpdateModel {
                name: model,
                description: Some(INTRUDER_DESCRIPTION.into()),
                set_tags: BTreeMap::new(),
                remove_tags: Vec::new(),
            },
        )
    } else {
        let name = format!("{model}-intruder-{seq}");
        (
            format!("intruder creates {name}"),
            Op::CreateModel {
                name,
                namespace: "hostile".into(),
                description: INTRUDER_DESCRIPTION.into(),
                risk_tier: RiskTier::Low,
                tags: BTreeMap::new(),
            },
        )
    }
}

/// A model name no pipeline uses (pipelines name theirs `p<id>-m<seq>`).
pub const UNKNOWN_MODEL: &str = "hostile-no-such-model";

/// Names every name field must refuse: empty, one byte over the limit, NUL, path-like (POSIX
/// and `C:`-style), unicode, upper case, a leading dot.
pub fn bad_names() -> Vec<String> {
    vec![
        String::new(),
        "a".repeat(limits::NAME_BYTES_MAX + 1),
        "bad\0name".into(),
        "../../etc/passwd".into(),
        "models/reco".into(),
        "C:\\models\\reco".into(),
        "модель-🚀".into(),
        "Reco".into(),
        ".hidden".into(),
    ]
}

/// One hostile request, with a short label for the trace and the report. `models` are models
/// that exist (this pipeline's own), so that some requests reach the checks past the model's
/// lookup.
pub fn hostile_op(rng: &mut impl Rng, models: &[String]) -> (String, Op) {
    // The empty name, the request that once stopped every node, comes up a third of the time.
    let names = bad_names();
    let bad = if rng.gen_ratio(1, 3) {
        String::new()
    } else {
        names[rng.gen_range(0..names.len())].clone()
    };
    let label_of = |s: &str| {
        let shown: String = s.chars().take(16).collect();
        format!("{shown:?}{}", if s.len() > 16 { "…" } else { "" })
    };
    let model = models
        .get(rng.gen_range(0..models.len().max(1)))
        .cloned()
        .unwrap_or_else(|| UNKNOWN_MODEL.to_string());
    let huge = "x".repeat(limits::DESCRIPTION_BYTES_MAX + 1);
    let mut kind = rng.gen_range(0..24u32);
    if kind == 1 && models.is_empty() {
        // No model of its own to create twice yet (and the unknown name is a valid one).
        kind = 0;
    }
    match kind {
        0 => (
            format!("create model {}", label_of(&bad)),
            Op::CreateModel {
                name: bad,
                namespace: "hostile".into(),
                description: String::new(),
                risk_tier: RiskTier::Low,
                tags: BTreeMap::new(),
            },
        ),
        1 => (
            format!("create model {model} again"),
            Op::CreateModel {
                name: model,
                namespace: "hostile".into(),
                description: String::new(),
                risk_tier: RiskTier::High,
                tags: BTreeMap::new(),
            },
        ),
        2 => (
            format!("update model {}", label_of(&bad)),
            Op::UpdateModel {
                name: bad,
                description: Some("x".into()),
                set_tags: BTreeMap::new(),
                remove_tags: Vec::new(),
            },
        ),
        3 => (
            format!("update model {model} with a description over the limit"),
            Op::UpdateModel {
                name: model,
                description: Some(huge),
                set_tags: BTreeMap::new(),
                remove_tags: Vec::new(),
            },
        ),
        4 => (
            format!("set alias {} on {model}", label_of(&bad)),
            Op::SetAlias {
                model,
                alias: bad,
                number: 1,
            },
        ),
        5 => (
            format!("set alias on model {}", label_of(&bad)),
            Op::SetAlias {
                model: bad,
                alias: "champion".into(),
                number: 1,
            },
        ),
        6 => (
            format!("delete alias {} of {model}", label_of(&bad)),
            Op::DeleteAlias { model, alias: bad },
        ),
        7 => (
            format!("set stage of {model}/{}", u64::MAX),
            Op::SetStage {
                model,
                number: u64::MAX,
                stage: Stage::Production,
                reason: "hostile".into(),
                override_signature: false,
            },
        ),
        8 => (
            format!("set stage of {}/1", label_of(&bad)),
            Op::SetStage {
                model: bad,
                number: 1,
                stage: Stage::Staging,
                reason: "hostile".into(),
                override_signature: false,
            },
        ),
        9 => (
            format!("set status of {model}/0"),
            Op::SetVersionStatus {
                model,
                number: 0,
                status: VersionStatus::Failed,
            },
        ),
        10 => (
            format!("tag {model}/{} with a key {}", u64::MAX, label_of(&bad)),
            Op::SetVersionTags {
                model,
                number: u64::MAX,
                set_tags: BTreeMap::from([(bad, "v".into())]),
                remove_tags: Vec::new(),
            },
        ),
        12 => (
            format!("set the policy of model {}", label_of(&bad)),
            Op::SetPolicy {
                scope: PolicyScope::Model(bad),
                policy: Some(Policy::default()),
            },
        ),
        13 => (
            format!("set a policy asking {model} for 0 approvals by a reader"),
            Op::SetPolicy {
                scope: PolicyScope::Model(model),
                policy: Some(Policy {
                    production: vec![Gate::Approvals {
                        count: 0,
                        role: Role::Reader,
                    }],
                    ..Policy::default()
                }),
            },
        ),
        14 => (
            format!(
                "record an evaluation {} of {model}/{}",
                label_of(&bad),
                u64::MAX
            ),
            Op::RecordEvaluation {
                model,
                number: u64::MAX,
                kind: bad.clone(),
                metrics: BTreeMap::from([(bad, f64::NAN)]),
                summary: "x".repeat(limits::DESCRIPTION_BYTES_MAX + 1),
            },
        ),
        15 => (
            format!("approve review {} of {model}", u64::MAX),
            Op::DecideReview {
                model,
                id: u64::MAX,
                approve: true,
                comment: bad,
            },
        ),
        16 => (
            "clear a policy never set".to_string(),
            Op::SetPolicy {
                scope: PolicyScope::Namespace {
                    namespace: "hostile-no-policy".into(),
                    tier: None,
                },
                policy: None,
            },
        ),
        11 => (
            format!("register an empty version of {}", label_of(&bad)),
            Op::CreateVersion {
                model: bad,
                manifest: Manifest::default(),
                manifest_root: "not-a-root".into(),
                signature: Signature::default(),
                metadata: VersionMetadata::default(),
                tags: BTreeMap::new(),
                status: VersionStatus::Ready,
                inline_chunks: Vec::new(),
            },
        ),
        // Lineage: a version entity whose id is no version, a quarantine of a version that does
        // not exist (or of an empty id), a lift of what no one quarantined (the sim's workload
        // quarantines nothing) with a hostile reason.
        17 => (
            format!("lineage edge from version:{}", label_of(&bad)),
            Op::AddLineageEdge {
                from: Entity::new(EntityKind::Version, bad),
                to: Entity::new(EntityKind::Data, "hostile"),
            },
        ),
        18 => {
            let entity = match bad.is_empty() {
                true => Entity::new(EntityKind::Data, ""),
                false => Entity::version(&model, u64::MAX),
            };
            (
                format!("quarantine {entity}"),
                Op::Quarantine {
                    entity,
                    reason: "hostile".into(),
                },
            )
        }
        // MLflow's logged models (issue 16): a bad id, a bad experiment and name with hostile
        // params, an update of a logged model that does not exist, a file with a hostile path
        // and an impossible size.
        20 => (
            format!("create logged model {}", label_of(&bad)),
            Op::CreateLoggedModel {
                id: bad,
                experiment_id: "0".into(),
                name: "model".into(),
                model_type: String::new(),
                source_run_id: String::new(),
                params: BTreeMap::new(),
                tags: BTreeMap::new(),
            },
        ),
        21 => (
            format!("create a logged model in experiment {}", label_of(&bad)),
            Op::CreateLoggedModel {
                id: format!("m-{:032x}", rng.gen::<u128>()),
                experiment_id: bad.clone(),
                name: bad.clone(),
                model_type: huge.clone(),
                source_run_id: bad.clone(),
                params: BTreeMap::from([(bad, huge)]),
                tags: BTreeMap::new(),
            },
        ),
        22 => (
            format!(
                "update a logged model no one created, param {}",
                label_of(&bad)
            ),
            Op::UpdateLoggedModel {
                id: format!("m-{:032x}", 0),
                status: Some(quiver_node::logged_model::LoggedModelStatus::Ready),
                set_params: BTreeMap::from([(bad, "v".into())]),
                set_tags: BTreeMap::new(),
                remove_tags: Vec::new(),
            },
        ),
        23 => (
            format!("put logged-model file {}", label_of(&bad)),
            Op::PutLoggedModelFile {
                id: format!("m-{:032x}", 0),
                file: quiver_transfer::FileEntry {
                    path: bad,
                    size_bytes: u64::MAX,
                    mode: u32::MAX,
                    chunks: Vec::new(),
                },
            },
        ),
        _ => (
            format!("lift an unquarantined entity, reason {}", label_of(&bad)),
            Op::LiftQuarantine {
                entity: Entity::new(EntityKind::Data, "hostile-never-quarantined"),
                reason: bad,
            },
        ),
    }
}

/// An endpoint name no deployer uses (deployers name theirs `dep<id>-ep`).
pub const UNKNOWN_ENDPOINT: &str = "hostile-no-such-endpoint";

/// One hostile deployment command (issue 15), with a short label: a bad endpoint or agent name,
/// a split that does not sum to 100 or names a version twice or also as a shadow, shares over
/// 100, bounds that are NaN or infinite, plans that decrease or do not end at 100%, a report of
/// generation 0 or `u64::MAX`, more errors than requests or a NaN p99, an unknown endpoint, a
/// model that is not the endpoint's (`other_model`, which exists), a step that is not in force.
/// `endpoint` serves `model` (or is about to); each of these must be refused.
pub fn hostile_deploy_op(
    rng: &mut impl Rng,
    endpoint: &str,
    model: &str,
    other_model: &str,
) -> (String, Op) {
    use quiver_node::deploy::{Bounds, Step, VersionStats};
    let names = bad_names();
    let bad = names[rng.gen_range(0..names.len())].clone();
    let label_of = |s: &str| {
        let shown: String = s.chars().take(16).collect();
        format!("{shown:?}{}", if s.len() > 16 { "…" } else { "" })
    };
    let (ep, m) = (endpoint.to_string(), model.to_string());
    let step = |percent, duration_ms| Step {
        percent,
        duration_ms,
    };
    let good_plan = vec![step(10, 1_000), step(100, 0)];
    let stats = |version, requests, errors, p99_ms| VersionStats {
        version,
        requests,
        errors,
        p99_ms,
    };
    let report = |agent: String, generation, stats: Vec<VersionStats>| Op::ReportServing {
        endpoint: ep.clone(),
        model: m.clone(),
        agent,
        generation,
        stats,
    };
    let set = |split: Vec<(u64, u32)>, shadows: Vec<u64>| Op::SetTraffic {
        endpoint: ep.clone(),
        model: m.clone(),
        split,
        shadows,
        reason: "hostile".into(),
    };
    let rollout = |plan: Vec<Step>, bounds: Bounds| Op::StartRollout {
        endpoint: ep.clone(),
        model: m.clone(),
        version: 2,
        plan,
        bounds,
        reason: "hostile".into(),
    };
    match rng.gen_range(0..16u32) {
        0 => (
            format!("create endpoint {}", label_of(&bad)),
            Op::CreateDeployment {
                endpoint: bad,
                model: m,
                version: 1,
                reason: "hostile".into(),
            },
        ),
        1 => (
            format!("create endpoint {ep} of version {}", u64::MAX),
            Op::CreateDeployment {
                endpoint: ep,
                model: m,
                version: u64::MAX,
                reason: "hostile".into(),
            },
        ),
        2 => {
            let split = match rng.gen_range(0..3) {
                0 => vec![(1, 50)],
                1 => vec![(1, 60), (2, 60)],
                _ => vec![],
            };
            (format!("set {ep} to {split:?}"), set(split, vec![]))
        }
        3 => {
            let share = [101, 255, 256, u32::MAX][rng.gen_range(0..4)];
            (
                format!("set {ep} to a share of {share}"),
                set(vec![(1, share)], vec![]),
            )
        }
        4 => (
            format!("set {ep} naming a version twice"),
            set(vec![(1, 50), (1, 50)], vec![]),
        ),
        5 => (
            format!("set {ep} with a shadow in the split"),
            set(vec![(1, 100)], vec![1]),
        ),
        6 => {
            let bad_f = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0][rng.gen_range(0..4)];
            let bounds = if rng.gen_bool(0.5) {
                Bounds {
                    error_rate_pct_max: bad_f,
                    ..Bounds::default()
                }
            } else {
                Bounds {
                    p99_ms_max: bad_f,
                    ..Bounds::default()
                }
            };
            (
                format!("roll out on {ep} with bounds {bounds:?}"),
                rollout(good_plan, bounds),
            )
        }
        7 => {
            let plan = match rng.gen_range(0..4) {
                0 => vec![step(50, 1_000), step(10, 1_000), step(100, 0)],
                1 => vec![step(10, 1_000), step(50, 0)],
                2 => vec![step(10, 1_000), step(0, 1_000), step(100, 0)],
                _ => vec![],
            };
            (
                format!("roll out on {ep} by plan {plan:?}"),
                rollout(plan, Bounds::default()),
            )
        }
        8 => {
            let generation = [0, u64::MAX][rng.gen_range(0..2)];
            (
                format!("report generation {generation} of {ep}"),
                report("agent-h".into(), generation, vec![stats(1, 10, 0, 5.0)]),
            )
        }
        9 => (
            format!("report more errors than requests on {ep}"),
            report("agent-h".into(), 1, vec![stats(1, 10, 11, 5.0)]),
        ),
        10 => {
            let p99 = [f64::NAN, f64::INFINITY, -1.0][rng.gen_range(0..3)];
            (
                format!("report a p99 of {p99} on {ep}"),
                report("agent-h".into(), 1, vec![stats(1, 10, 0, p99)]),
            )
        }
        11 => (
            format!("report as agent {} on {ep}", label_of(&bad)),
            report(bad, 1, vec![stats(1, 10, 0, 5.0)]),
        ),
        12 => {
            let op = match rng.gen_range(0..3) {
                0 => Op::Rollback {
                    endpoint: UNKNOWN_ENDPOINT.into(),
                    model: m,
                    reason: "hostile".into(),
                },
                1 => Op::PauseRollout {
                    endpoint: UNKNOWN_ENDPOINT.into(),
                    model: m,
                    pause: true,
                    reason: "hostile".into(),
                },
                _ => Op::ReportServing {
                    endpoint: UNKNOWN_ENDPOINT.into(),
                    model: m,
                    agent: "agent-h".into(),
                    generation: 1,
                    stats: vec![stats(1, 10, 0, 5.0)],
                },
            };
            (format!("{} on an unknown endpoint", op.kind()), op)
        }
        13 => {
            let op = match rng.gen_range(0..3) {
                0 => Op::Rollback {
                    endpoint: ep.clone(),
                    model: other_model.into(),
                    reason: "hostile".into(),
                },
                1 => Op::SetTraffic {
                    endpoint: ep.clone(),
                    model: other_model.into(),
                    split: vec![(1, 100)],
                    shadows: vec![],
                    reason: "hostile".into(),
                },
                _ => Op::StartRollout {
                    endpoint: ep.clone(),
                    model: other_model.into(),
                    version: 1,
                    plan: good_plan,
                    bounds: Bounds::default(),
                    reason: "hostile".into(),
                },
            };
            (
                format!("{} on {ep} naming model {other_model}", op.kind()),
                op,
            )
        }
        14 => {
            let op = if rng.gen_bool(0.5) {
                Op::Rollback {
                    endpoint: bad.clone(),
                    model: m,
                    reason: "hostile".into(),
                }
            } else {
                Op::PauseRollout {
                    endpoint: bad.clone(),
                    model: m,
                    pause: false,
                    reason: "hostile".into(),
                }
            };
            (format!("{} on endpoint {}", op.kind(), label_of(&bad)), op)
        }
        _ => (
            format!("advance {ep} from step {}", u32::MAX),
            Op::AdvanceRollout {
                endpoint: ep,
                model: m,
                from_step: u32::MAX,
            },
        ),
    }
}

/// One catalog search (`SearchModels`, as a client sends it) with hostile fields, or now and
/// then a well-formed one over `models`; with a short label. The shell converts it as the gRPC
/// edge does and runs it on a node: a refusal must name a field, an answer must be a page, and
/// nothing else (a storage error, no answer) is acceptable.
pub fn hostile_search(
    rng: &mut impl Rng,
    models: &[String],
) -> (String, quiver_client::proto::SearchModelsRequest) {
    use quiver_client::proto::{MetricRange, SearchModelsRequest};
    let names = bad_names();
    let bad = names[rng.gen_range(0..names.len())].clone();
    let huge = "w ".repeat(crate::hostile::SEARCH_WORDS_HOSTILE);
    let extreme = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, -0.0];
    let mut r = SearchModelsRequest::default();
    let label = match rng.gen_range(0..8u32) {
        0 => {
            r.query = [bad.as_str(), "\0", huge.as_str(), "../*", "*"][rng.gen_range(0..5)].into();
            "query"
        }
        1 => {
            r.namespace = bad;
            "namespace"
        }
        2 => {
            r.owner = [String::new(), "a\0b".into(), "o".repeat(300)][rng.gen_range(0..3)].clone();
            if r.owner.is_empty() {
                r.owner = "\u{1F600}".into();
            }
            "owner"
        }
        3 => {
            r.page_token = bad;
            r.page_size = u32::MAX;
            "page_token"
        }
        4 => {
            r.metrics = vec![MetricRange {
                metric: [String::new(), "auc".into(), "a=b".into()][rng.gen_range(0..3)].clone(),
                comparison: [">=", "=>", "", "<"][rng.gen_range(0..4)].into(),
                value: extreme[rng.gen_range(0..extreme.len())],
            }];
            "metric"
        }
        5 => {
            let e = [-1, 99, i32::MAX, i32::MIN][rng.gen_range(0..4)];
            (r.risk_tier, r.stage, r.quarantined) = (e, e, e);
            "enums"
        }
        _ => {
            // Well-formed: a word of one of its models, production, a metric range.
            r.query = models
                .get(rng.gen_range(0..models.len().max(1)))
                .cloned()
                .unwrap_or_default();
            r.stage = rng.gen_range(0..5);
            r.metrics = vec![MetricRange {
                metric: "auc".into(),
                comparison: ">=".into(),
                value: rng.gen_range(0.0..1.0),
            }];
            "well-formed"
        }
    };
    (format!("search {label}"), r)
}

/// Words in the over-long hostile query (over `catalog::QUERY_WORDS_MAX`).
pub const SEARCH_WORDS_HOSTILE: usize = 40;

/// How far beyond the latest revision a node has applied a hostile watch asks to resume: more
/// events than any simulated run gives, so that the cluster's latest cannot have reached it.
pub const WATCH_AHEAD_HOSTILE: u64 = 1_000_000;

/// One watch start that must be refused, with a short label: a filter with a hostile name (model,
/// alias, endpoint), or of a model that does not exist, or a revision to resume after that is
/// beyond `latest` (the latest a node has applied) or is `u64::MAX`. `models` exist (acknowledged
/// creations), so that a bad alias or revision is what is refused.
pub fn hostile_watch(
    rng: &mut impl Rng,
    models: &[String],
    latest: u64,
) -> (String, WatchFilter, Option<u64>) {
    let names = bad_names();
    let bad = names[rng.gen_range(0..names.len())].clone();
    let shown: String = bad.chars().take(16).collect();
    let model = models
        .get(rng.gen_range(0..models.len().max(1)))
        .cloned()
        .unwrap_or_else(|| UNKNOWN_MODEL.to_string());
    let stage = [Stage::Staging, Stage::Production][rng.gen_range(0..2)];
    let beyond = [
        u64::MAX,
        u64::MAX - 1,
        1 << 63,
        latest.saturating_add(WATCH_AHEAD_HOSTILE),
    ][rng.gen_range(0..4)];
    let (label, filter, after) = match rng.gen_range(0..9u32) {
        0 => ("model", WatchFilter::Model(bad), None),
        1 => (
            "alias",
            WatchFilter::Alias {
                model: model.clone(),
                alias: bad,
            },
            None,
        ),
        2 => (
            "alias of model",
            WatchFilter::Alias {
                model: bad,
                alias: "champion".into(),
            },
            None,
        ),
        3 => (
            "stage of model",
            WatchFilter::Stage { model: bad, stage },
            None,
        ),
        4 => ("endpoint", WatchFilter::Endpoint(bad), None),
        5 => (
            "unknown model",
            WatchFilter::Model(UNKNOWN_MODEL.into()),
            None,
        ),
        6 => (
            "stage of unknown model",
            WatchFilter::Stage {
                model: UNKNOWN_MODEL.into(),
                stage,
            },
            Some(0),
        ),
        7 => ("everything after", WatchFilter::All, Some(beyond)),
        _ => ("model after", WatchFilter::Model(model), Some(beyond)),
    };
    let shown = match (&filter, after) {
        (_, Some(after)) if after > 0 => format!("revision {after}"),
        (WatchFilter::Model(m) | WatchFilter::Stage { model: m, .. }, _) if m == UNKNOWN_MODEL => {
            m.clone()
        }
        _ => format!("{shown:?}"),
    };
    (format!("watch {label} {shown}"), filter, after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_node::domain::validate_name;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn every_bad_name_is_refused_by_the_name_rule() {
        for name in bad_names() {
            assert!(validate_name("model", &name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn every_hostile_watch_names_a_bad_name_an_unknown_model_or_a_revision_ahead() {
        let models = vec!["p0-m1".to_string()];
        let mut rng = StdRng::seed_from_u64(4);
        let mut labels = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let (label, filter, after) = hostile_watch(&mut rng, &models, 40);
            let unknown = filter.model() == Some(UNKNOWN_MODEL);
            let ahead = after.is_some_and(|a| a > 40 + WATCH_AHEAD_HOSTILE / 2);
            assert!(
                filter.check().is_err() || unknown || ahead,
                "{label}: {filter:?} after {after:?} would be a valid watch"
            );
            labels.insert(label.split(' ').nth(1).map(str::to_string));
        }
        assert!(labels.len() >= 6, "{labels:?}");
    }

    #[test]
    fn the_catalogue_is_drawn_from_the_seed_and_covers_every_kind() {
        let models = vec!["p0-m1".to_string()];
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200)
                .map(|_| hostile_op(&mut rng, &models).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        let mut rng = StdRng::seed_from_u64(3);
        let kinds: std::collections::BTreeSet<&str> = (0..500)
            .map(|_| hostile_op(&mut rng, &models).1.kind())
            .collect();
        // 14 of the registry's kinds and the three logged-model commands of the MLflow API.
        assert_eq!(kinds.len(), 17, "{kinds:?}");
    }

    #[test]
    fn every_hostile_deployment_op_is_refused_by_its_fields_or_names_what_is_not() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut kinds = std::collections::BTreeSet::new();
        let mut refused_by_fields = 0;
        for _ in 0..400 {
            let (label, op) = hostile_deploy_op(&mut rng, "dep0-ep", "dep0-m", "dep1-m");
            kinds.insert(op.kind());
            match op.check_fields() {
                Err(_) => refused_by_fields += 1,
                // The rest need the state: an endpoint, version or step that is not, or
                // another model.
                Ok(()) => assert!(
                    label.contains("unknown endpoint")
                        || label.contains("dep1-m")
                        || label.contains(&u64::MAX.to_string())
                        || label.contains(&u32::MAX.to_string()),
                    "{label}: {op:?} would pass its field checks"
                ),
            }
        }
        assert_eq!(kinds.len(), 8, "{kinds:?}");
        assert!(refused_by_fields > 200, "{refused_by_fields}");
    }
}
