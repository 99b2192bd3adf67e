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
    let mut kind = rng.gen_range(0..20u32);
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
        _ => (
            format!("lift an unquarantined entity, reason {}", label_of(&bad)),
            Op::LiftQuarantine {
                entity: Entity::new(EntityKind::Data, "hostile-never-quarantined"),
                reason: bad,
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
        assert_eq!(kinds.len(), 14, "{kinds:?}");
    }
}
