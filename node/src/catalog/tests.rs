//! The catalog's matching: every filter part as examples; hostile filters (empty, over-long,
//! NUL, path-like, unicode, extreme numbers) refused naming the field; and, as a seeded
//! property, that the byte pre-check never refuses an entry the exact match accepts.

use proptest::prelude::*;

use super::*;
use crate::domain::Actor;

/// `auc>=0.8` as the CLI splits it and the node takes it, checked.
pub(crate) fn metric_range(text: &str) -> DomainResult<MetricRange> {
    let wire = quiver_api::search::parse_metric_range(text)
        .map_err(|why| DomainError::invalid("metric", why))?;
    let range = crate::service::convert::metric_range_from_proto(&wire)?;
    range.check()?;
    Ok(range)
}

fn model(name: &str, namespace: &str, description: &str, tags: &[(&str, &str)]) -> Model {
    Model {
        name: name.into(),
        namespace: namespace.into(),
        description: description.into(),
        risk_tier: RiskTier::High,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        created_by: Actor {
            name: "alice".into(),
            authenticated: true,
        },
        created_at_ms: 1,
        version_count: 3,
        production_version: Some(2),
    }
}

fn entry_of(m: &Model) -> CatalogEntry {
    let mut e = CatalogEntry::default();
    e.describe(m);
    e.count(Stage::Production, true);
    e.count(Stage::Staging, true);
    e.latest_metrics = [("auc".to_string(), 0.91)].into();
    e.production_metrics = [("auc".to_string(), 0.85)].into();
    e
}

/// Whether `filter` matches `entry` both exactly and through the stored bytes' pre-check.
fn found(filter: &SearchFilter, entry: &CatalogEntry, quarantined: bool) -> bool {
    let exact = filter.matches(entry, quarantined);
    let bytes = serde_json::to_vec(entry).unwrap();
    let pre = filter
        .fragments()
        .iter()
        .all(|f| memchr::memmem::find(&bytes, f).is_some());
    assert!(
        pre || !exact,
        "the pre-check refused a match: {filter:?} on {entry:?}"
    );
    exact
}

fn reco() -> CatalogEntry {
    entry_of(&model(
        "reco-ranker",
        "reco",
        "Ranks the Home feed",
        &[("team", "Feed"), ("endpoint", "reco-prod")],
    ))
}

#[test]
fn words_match_name_description_and_tags_without_case() {
    let e = reco();
    for query in [
        "ranker",
        "HOME feed",
        "team=feed",
        "reco-prod",
        "RECO ranks",
        "rank*",
        "feed* ho*",
    ] {
        let f = SearchFilter {
            words: SearchFilter::words_of(query).unwrap(),
            ..Default::default()
        };
        assert!(found(&f, &e, false), "{query}");
    }
    for query in ["fraud", "ranker fraud", "team=ads", "rank", "anker", "xy*"] {
        let f = SearchFilter {
            words: SearchFilter::words_of(query).unwrap(),
            ..Default::default()
        };
        assert!(!found(&f, &e, false), "{query}");
    }
}

#[test]
fn each_filter_part_narrows() {
    let e = reco();
    let all = SearchFilter::default();
    assert!(found(&all, &e, false));
    let cases: Vec<(SearchFilter, bool)> = vec![
        (
            SearchFilter {
                namespace: Some("reco".into()),
                ..all.clone()
            },
            true,
        ),
        (
            SearchFilter {
                namespace: Some("ads".into()),
                ..all.clone()
            },
            false,
        ),
        (
            SearchFilter {
                owner: Some("alice".into()),
                ..all.clone()
            },
            true,
        ),
        (
            SearchFilter {
                owner: Some("bob".into()),
                ..all.clone()
            },
            false,
        ),
        (
            SearchFilter {
                risk_tier: Some(RiskTier::High),
                ..all.clone()
            },
            true,
        ),
        (
            SearchFilter {
                risk_tier: Some(RiskTier::Low),
                ..all.clone()
            },
            false,
        ),
        (
            SearchFilter {
                stage: Some(Stage::Staging),
                ..all.clone()
            },
            true,
        ),
        (
            SearchFilter {
                stage: Some(Stage::Archived),
                ..all.clone()
            },
            false,
        ),
        (
            SearchFilter {
                quarantined: Some(false),
                ..all.clone()
            },
            true,
        ),
        (
            SearchFilter {
                quarantined: Some(true),
                ..all.clone()
            },
            false,
        ),
    ];
    for (f, want) in cases {
        assert_eq!(found(&f, &e, false), want, "{}", f.describe());
    }
    let q = SearchFilter {
        quarantined: Some(true),
        ..all
    };
    assert!(found(&q, &e, true));
}

#[test]
fn metric_ranges_read_the_production_version_only_with_the_production_stage() {
    let e = reco();
    let range = |text: &str| metric_range(text).unwrap();
    let latest = SearchFilter {
        metrics: vec![range("auc>=0.9")],
        ..Default::default()
    };
    assert!(found(&latest, &e, false));
    let production = SearchFilter {
        stage: Some(Stage::Production),
        ..latest.clone()
    };
    assert!(!found(&production, &e, false));
    for (text, want) in [
        ("auc > 0.84", true),
        ("auc<0.85", false),
        ("auc <= 0.85", true),
        ("auc=0.85", true),
        ("auc==0.85", true),
        ("ndcg>=0", false),
    ] {
        let f = SearchFilter {
            stage: Some(Stage::Production),
            metrics: vec![range(text)],
            ..Default::default()
        };
        assert_eq!(found(&f, &e, false), want, "{text}");
    }
}

#[test]
fn the_entry_follows_stage_moves_and_forgets_production_metrics_without_production() {
    let mut m = model("m", "ns", "", &[]);
    let mut e = entry_of(&m);
    e.count(Stage::Production, false);
    e.count(Stage::Archived, true);
    m.production_version = None;
    e.describe(&m);
    assert_eq!(e.stages.get(&Stage::Production), None);
    assert_eq!(e.stages.get(&Stage::Archived), Some(&1));
    assert!(e.production_metrics.is_empty());
    e.count(Stage::Experimental, false);
    assert_eq!(e.stages.get(&Stage::Experimental), None, "never below zero");
}

#[test]
fn hostile_filters_are_refused_naming_the_field() {
    let refused = |f: SearchFilter, field: &str| {
        let e = f.check().unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    };
    for query in [
        "a\0b".to_string(),
        "tab\there".into(),
        "y".repeat(QUERY_BYTES_MAX + 1),
    ] {
        let e = SearchFilter::words_of(&query).unwrap_err().to_string();
        assert!(e.contains("query"), "{e}");
    }
    refused(
        SearchFilter {
            words: SearchFilter::words_of(&"x ".repeat(QUERY_WORDS_MAX + 1)).unwrap(),
            ..Default::default()
        },
        "query",
    );
    // Words as sent by a client that did not split them, and a start too short to narrow.
    for word in [
        "",
        "*",
        "a*",
        "a b",
        "a/b",
        "../etc",
        &"y".repeat(WORD_BYTES_MAX + 1),
    ] {
        refused(
            SearchFilter {
                words: vec![word.to_string()],
                ..Default::default()
            },
            "query",
        );
    }
    for ns in ["", "../etc", "Ünïcode", "a/b", &"n".repeat(65), "a\0"] {
        refused(
            SearchFilter {
                namespace: Some(ns.into()),
                ..Default::default()
            },
            "namespace",
        );
    }
    for owner in ["", "a\0b", &"o".repeat(300)] {
        refused(
            SearchFilter {
                owner: Some(owner.into()),
                ..Default::default()
            },
            "owner",
        );
    }
    for text in [
        "",
        "auc",
        "auc>=",
        "auc>=x",
        ">=0.5",
        "auc=>0.5",
        "auc>=NaN",
        "auc<=inf",
        "auc>=1e999",
        "a=b>=1",
        "a\0>=1",
    ] {
        let e = metric_range(text).unwrap_err().to_string();
        assert!(e.contains("metric"), "{text}: {e}");
    }
    refused(
        SearchFilter {
            metrics: vec![metric_range("auc>=0.5").unwrap(); METRIC_RANGES_MAX + 1],
            ..Default::default()
        },
        "metric",
    );
    // Unicode and path-like words are fine: they are only looked for.
    let words = SearchFilter::words_of("Ünïcode 模型 ../etc/passwd \u{1F600} ranks*").unwrap();
    assert_eq!(words, ["ünïcode", "模型", "etc", "passwd", "ranks*"]);
    SearchFilter {
        words,
        owner: Some("ünï".into()),
        ..Default::default()
    }
    .check()
    .unwrap();
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,6}",
        "[A-Za-zÀ-ÿ\"\\\\ =/.-]{0,12}",
        any::<String>().prop_map(|s| s.chars().filter(|c| !c.is_control()).collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x4341_5441),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever the model and the filter: the pre-check on stored bytes never refuses an entry
    /// the exact match accepts (`found` asserts it), and a word taken from the model's own
    /// text always finds it.
    #[test]
    fn the_byte_pre_check_never_hides_a_match(
        description in text(),
        tag_value in text(),
        query in text().prop_map(|q| q.chars().filter(|c| !c.is_control()).collect::<String>()),
        owner in text(),
        metric in "[a-z\"\\\\]{1,4}",
        bound in -2.0f64..2.0,
        stage in prop::sample::select(vec![
            None, Some(Stage::Experimental), Some(Stage::Staging), Some(Stage::Production),
        ]),
    ) {
        let mut m = model("m1", "ns", &description, &[("k\"", &tag_value)]);
        m.created_by.name = owner.clone();
        let mut e = entry_of(&m);
        e.latest_metrics.insert(metric.clone(), bound);
        let f = SearchFilter {
            words: SearchFilter::words_of(&query).unwrap(),
            owner: (!owner.is_empty()).then_some(owner),
            stage,
            metrics: vec![MetricRange {
                metric,
                comparison: Comparison::AtMost,
                value: bound,
            }],
            ..Default::default()
        };
        found(&f, &e, false);
        f.check().unwrap();
        // Every word of the model finds it, whole and by its start, through its own posting.
        let keys = e.index_keys("m1");
        for word in e.words() {
            let start: String = word.chars().take(PREFIX_CHARS_MIN).collect();
            let mut forms = vec![word.clone()];
            if start.chars().count() == PREFIX_CHARS_MIN {
                forms.push(format!("{start}*"));
            }
            for w in forms {
                let by_word = SearchFilter { words: vec![w], ..Default::default() };
                prop_assert!(found(&by_word, &e, false));
                for posting in by_word.postings() {
                    let (Posting::Exact(p) | Posting::Prefix(p)) = posting;
                    prop_assert!(keys.iter().any(|k| k.starts_with(&p)), "{:?}", word);
                }
            }
        }
    }
}
