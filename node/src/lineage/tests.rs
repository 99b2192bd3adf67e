//! Entity references: parsing and validation at every edge (empty, over-long, NUL, path-like,
//! unicode, extreme numbers), as examples and as a seeded property; the walk over cycles and
//! at its cap; the quarantine gate's text.

use proptest::prelude::*;

use super::*;

fn e(text: &str) -> Entity {
    Entity::parse("entity", text).unwrap()
}

fn edge(from: &str, to: &str) -> Edge {
    Edge {
        from: e(from),
        to: e(to),
        source: EdgeSource::Explicit,
        by: "alice".into(),
        at_ms: 1,
    }
}

#[test]
fn references_parse_into_kinds_and_canonical_versions() {
    assert_eq!(e("data:47"), Entity::new(EntityKind::Data, "47"));
    assert_eq!(
        e("features:user-features@12"),
        Entity::new(EntityKind::Features, "user-features@12")
    );
    assert_eq!(e("code:abc123").kind, EntityKind::Code);
    assert_eq!(e("run:r-9").kind, EntityKind::Run);
    assert_eq!(e("deployment:reco-prod").kind, EntityKind::Deployment);
    // Ids may hold ':' and '/' (only the first ':' separates the kind).
    assert_eq!(e("data:s3://bucket/snap:47").id, "s3://bucket/snap:47");
    assert_eq!(e("data:снимок-47 🚀").id, "снимок-47 🚀");
    // A version's number is canonical: leading zeros go.
    assert_eq!(e("version:reco/014"), Entity::version("reco", 14));
    assert_eq!(e("version:reco/14").as_version(), Some(("reco", 14)));
    assert_eq!(e("version:reco/14").to_string(), "version:reco/14");
    assert_eq!(
        e(&format!("version:reco/{}", u64::MAX)).as_version(),
        Some(("reco", u64::MAX))
    );
}

#[test]
fn bad_references_are_refused_naming_the_field_and_the_fix() {
    let max = "x".repeat(ENTITY_ID_BYTES_MAX);
    e(&format!("data:{max}"));
    for (text, expected) in [
        ("", "is not an entity: write KIND:ID"),
        ("47", "is not an entity: write KIND:ID"),
        (
            "snapshot:47",
            "is not an entity kind: use one of data, features",
        ),
        ("Data:47", "is not an entity kind"),
        ("data:", "has an empty id"),
        ("data:   ", "has an empty id"),
        ("data:4\u{0}7", "has control characters"),
        ("data:a\nb", "has control characters"),
        (
            "version:reco",
            "is not a version: write version:MODEL/NUMBER",
        ),
        ("version:reco/0", "is not a version"),
        ("version:reco/-1", "is not a version"),
        ("version:reco/+1", "is not a version"),
        ("version:reco/18446744073709551616", "is not a version"),
        ("version:reco/1/2", "is not a valid name"),
        ("version:../etc/1", "is not a valid name"),
        ("version:C:\\models/1", "is not a valid name"),
        ("version:/1", "is not a valid name"),
        ("deployment:Prod", "is not a valid name"),
    ] {
        let error = Entity::parse("entity", text).unwrap_err().to_string();
        assert!(
            error.starts_with("invalid entity: ") && error.contains(expected),
            "{text:?}: {error}"
        );
    }
    let long = format!("data:{}x", "x".repeat(ENTITY_ID_BYTES_MAX));
    let error = Entity::parse("from", &long).unwrap_err().to_string();
    assert!(
        error.contains("257 bytes, over the limit of 256") && error.len() < 400,
        "{error}"
    );
    // A stored entity is checked again (it may come from a decoded command).
    let forged = Entity::new(EntityKind::Version, "reco/07");
    assert!(forged
        .check("to")
        .unwrap_err()
        .to_string()
        .contains("is not canonical"));
}

#[test]
fn an_edge_needs_two_distinct_valid_ends() {
    check_edge(&e("data:47"), &e("version:reco/1")).unwrap();
    assert!(check_edge(&e("data:47"), &e("data:47"))
        .unwrap_err()
        .to_string()
        .contains("does not come from itself"));
    assert!(check_edge(&Entity::new(EntityKind::Run, ""), &e("data:47"))
        .unwrap_err()
        .to_string()
        .starts_with("invalid from: "));
}

#[test]
fn reasons_are_required_bounded_and_free_of_control_characters() {
    check_reason("label leak in snapshot 47").unwrap();
    for bad in [
        String::new(),
        "  ".into(),
        "a\0b".into(),
        "x".repeat(limits::REASON_BYTES_MAX + 1),
    ] {
        assert!(check_reason(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("invalid reason: "));
    }
}

#[test]
fn registration_names_its_data_code_run_and_feature_set() {
    let metadata = VersionMetadata {
        data_snapshot_id: "47".into(),
        code_commit: "abc".into(),
        pipeline_run_id: "r-9".into(),
        ..Default::default()
    };
    let tags = BTreeMap::from([(FEATURE_SET_TAG.to_string(), "user@12".to_string())]);
    let names: Vec<String> = registration_sources(&metadata, &tags)
        .into_iter()
        .map(|(_, e)| e.to_string())
        .collect();
    assert_eq!(
        names,
        ["data:47", "code:abc", "run:r-9", "features:user@12"]
    );
    check_registration(&metadata, &tags).unwrap();
    let mut bad = metadata.clone();
    bad.data_snapshot_id = "a\tb".into();
    assert!(check_registration(&bad, &tags)
        .unwrap_err()
        .to_string()
        .starts_with("invalid metadata.data_snapshot_id: "));
    let long = BTreeMap::from([(FEATURE_SET_TAG.to_string(), "f".repeat(300))]);
    assert!(check_registration(&metadata, &long)
        .unwrap_err()
        .to_string()
        .starts_with("invalid tags.feature_set: "));
}

fn graph<'a>(edges: &'a [(&'a str, &'a str)]) -> impl FnMut(&Entity) -> Result<Vec<Edge>, ()> + 'a {
    move |at: &Entity| {
        Ok(edges
            .iter()
            .filter(|(from, _)| e(from) == *at)
            .map(|(from, to)| edge(from, to))
            .collect())
    }
}

#[test]
fn a_walk_visits_each_entity_once_through_cycles_with_depths() {
    let edges = [
        ("data:47", "data:48"),
        ("data:48", "data:47"),
        ("data:47", "version:reco/1"),
        ("data:48", "version:reco/1"),
        ("version:reco/1", "version:reco-small/1"),
    ];
    let w = walk(&e("data:47"), Direction::Downstream, 100, graph(&edges)).unwrap();
    let nodes: Vec<(String, u32)> = w.nodes.iter().map(|(n, d)| (n.to_string(), *d)).collect();
    assert_eq!(
        nodes,
        [
            ("data:47".to_string(), 0),
            ("data:48".to_string(), 1),
            ("version:reco/1".to_string(), 1),
            ("version:reco-small/1".to_string(), 2),
        ]
    );
    assert_eq!(w.edges.len(), edges.len());
    assert!(!w.truncated);

    let cut = walk(&e("data:47"), Direction::Downstream, 2, graph(&edges)).unwrap();
    assert_eq!(cut.nodes.len(), 2);
    assert!(cut.truncated);
    // Edges are reported only between entities the walk reached.
    let reached: Vec<&Entity> = cut.nodes.iter().map(|(n, _)| n).collect();
    assert!(cut
        .edges
        .iter()
        .all(|x| reached.contains(&&x.from) && reached.contains(&&x.to)));
}

#[test]
fn the_quarantine_gate_names_the_entity_the_reason_and_the_fix() {
    assert_eq!(quarantine_gate(&[], false), None);
    let q = Quarantine {
        entity: e("data:47"),
        reason: "label leak".into(),
        by: "carol".into(),
        at_ms: 5,
    };
    let gate = quarantine_gate(&[q], false).unwrap();
    assert!(!gate.passed);
    assert!(
        gate.detail.contains("data:47 (by carol: label leak)")
            && gate.detail.contains("quiver lineage lift data:47")
            && gate.detail.contains("not trained on it"),
        "{}",
        gate.detail
    );
    let too_big = quarantine_gate(&[], true).unwrap();
    assert!(!too_big.passed && too_big.detail.contains("more than 10000"));
}

/// Entity text: mostly well-formed, often hostile.
fn entity_text() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        prop::sample::select(vec![
            "data",
            "features",
            "code",
            "run",
            "version",
            "deployment"
        ])
        .prop_map(String::from),
        "[A-Za-z]{0,9}",
    ];
    let id = prop_oneof![
        "[a-z0-9._-]{1,12}",
        "[a-z]{1,8}/[0-9]{1,22}",
        Just(String::new()),
        Just("x".repeat(ENTITY_ID_BYTES_MAX + 1)),
        Just("a\0b".to_owned()),
        Just("../../etc/passwd".to_owned()),
        Just("C:\\x\\y".to_owned()),
        Just("модель/1".to_owned()),
        any::<String>(),
    ];
    prop_oneof![
        4 => (kind, id).prop_map(|(k, i)| format!("{k}:{i}")),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x4c49_4e45),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever the text: parsing never panics; what parses passes its own check, has a key
    /// without NUL that fits LMDB with another entity's hash, and parses back from its text to
    /// itself; what is refused is refused naming the field.
    #[test]
    fn parsing_is_total_and_round_trips(text in entity_text()) {
        match Entity::parse("entity", &text) {
            Ok(entity) => {
                prop_assert!(entity.check("entity").is_ok());
                let key = entity.key();
                prop_assert!(!key.contains(&0));
                prop_assert!(key.len() + 1 + 16 <= 511);
                prop_assert_eq!(Entity::parse("entity", &entity.to_string()).unwrap(), entity);
            }
            Err(error) => prop_assert!(error.to_string().starts_with("invalid entity: ")),
        }
    }
}
