//! Reads: listing in pages with filters.

use super::*;

#[test]
fn listing_pages_through_models_and_versions_with_filters() {
    let mut f = fixture();
    for name in ["a1", "a2", "a3", "b1"] {
        f.apply(create_model(name));
    }
    let (all, _) = f.read(|app, txn| app.list_models(txn, "", "", 0, "").unwrap());
    assert_eq!(all.len(), 4, "no prefix lists every model");
    let (page, next) = f.read(|app, txn| app.list_models(txn, "a", "", 2, "").unwrap());
    assert_eq!(
        page.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    assert_eq!(next, "a2");
    let (page, next) = f.read(|app, txn| app.list_models(txn, "a", "", 2, &next).unwrap());
    assert_eq!(
        page.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["a3"]
    );
    assert_eq!(next, "");
    for i in 0..5u8 {
        f.apply(create_version("a1", &[i]));
    }
    f.apply(Op::SetStage {
        model: "a1".into(),
        number: 4,
        stage: Stage::Staging,
        reason: String::new(),
        override_signature: false,
    });
    let (page, next) = f.read(|app, txn| app.list_versions(txn, "a1", None, "", 3, "").unwrap());
    assert_eq!(page.iter().map(|v| v.number).collect::<Vec<_>>(), [1, 2, 3]);
    let (page, _) = f.read(|app, txn| app.list_versions(txn, "a1", None, "", 3, &next).unwrap());
    assert_eq!(page.iter().map(|v| v.number).collect::<Vec<_>>(), [4, 5]);
    let (page, _) = f.read(|app, txn| {
        app.list_versions(txn, "a1", Some(Stage::Staging), "", 0, "")
            .unwrap()
    });
    assert_eq!(page.iter().map(|v| v.number).collect::<Vec<_>>(), [4]);
}

#[test]
fn search_filters_pages_and_flags_quarantined_models() {
    use crate::catalog::SearchFilter;
    use crate::lineage::{Entity, EntityKind};
    let mut f = fixture();
    for (name, namespace, description) in [
        ("ads-ctr", "ads", "Click-through rate"),
        ("reco-home", "reco", "Ranks the Home feed"),
        ("reco-search", "reco", "Ranks search results"),
        ("reco-video", "reco", "Ranks videos"),
    ] {
        f.apply(Op::CreateModel {
            name: name.into(),
            namespace: namespace.into(),
            description: description.into(),
            risk_tier: RiskTier::Low,
            tags: BTreeMap::from([("team".to_string(), namespace.to_string())]),
        });
    }
    for (model, auc, snapshot) in [
        ("reco-home", 0.81, "snap-47"),
        ("reco-home", 0.84, "snap-48"),
        ("reco-search", 0.70, "snap-48"),
    ] {
        let mut op = create_version(model, format!("{model}{auc}").as_bytes());
        if let Op::CreateVersion { metadata, .. } = &mut op {
            metadata.metrics.insert("auc".into(), auc);
            metadata.data_snapshot_id = snapshot.into();
        }
        version(f.apply(op));
    }
    version(f.apply(Op::SetStage {
        model: "reco-home".into(),
        number: 1,
        stage: Stage::Production,
        reason: String::new(),
        override_signature: false,
    }));
    let search = |f: &Fixture, filter: &SearchFilter, size: usize, token: &str| {
        f.read(|app, txn| {
            let (hits, next) = app
                .search_models(txn, filter, &|_| true, size, token)
                .unwrap();
            let names: Vec<String> = hits.iter().map(|h| h.model.name.clone()).collect();
            (names, next)
        })
    };
    let names = |f: &Fixture, filter: SearchFilter| search(f, &filter, 0, "").0;

    let ranks = SearchFilter {
        words: SearchFilter::words_of("RANKS").unwrap(),
        ..Default::default()
    };
    assert_eq!(
        names(&f, ranks.clone()),
        ["reco-home", "reco-search", "reco-video"]
    );
    let (page, next) = search(&f, &ranks, 2, "");
    assert_eq!(page, ["reco-home", "reco-search"]);
    assert_eq!(next, "reco-search");
    let (page, next) = search(&f, &ranks, 2, &next);
    assert_eq!(page, ["reco-video"]);
    assert_eq!(next, "");
    assert_eq!(
        names(
            &f,
            SearchFilter {
                namespace: Some("ads".into()),
                ..Default::default()
            }
        ),
        ["ads-ctr"]
    );
    assert_eq!(
        names(
            &f,
            SearchFilter {
                stage: Some(Stage::Production),
                ..Default::default()
            }
        ),
        ["reco-home"]
    );
    // The latest version of reco-home has auc 0.84; its Production version 0.81.
    let auc = |text: &str| vec![crate::catalog::tests::metric_range(text).unwrap()];
    assert_eq!(
        names(
            &f,
            SearchFilter {
                metrics: auc("auc>=0.8"),
                ..Default::default()
            }
        ),
        ["reco-home"]
    );
    assert!(names(
        &f,
        SearchFilter {
            stage: Some(Stage::Production),
            metrics: auc("auc>=0.82"),
            ..Default::default()
        }
    )
    .is_empty());
    assert_eq!(
        names(
            &f,
            SearchFilter {
                owner: Some("alice".into()),
                ..Default::default()
            }
        )
        .len(),
        4
    );
    assert!(names(
        &f,
        SearchFilter {
            owner: Some("bob".into()),
            ..Default::default()
        }
    )
    .is_empty());
    // Several postings walked together, a word's start, and a word no model has.
    let both = SearchFilter {
        words: SearchFilter::words_of("rank* feed").unwrap(),
        namespace: Some("reco".into()),
        owner: Some("alice".into()),
        ..Default::default()
    };
    assert_eq!(names(&f, both), ["reco-home"]);
    let (page, next) = search(
        &f,
        &SearchFilter {
            words: SearchFilter::words_of("reco").unwrap(),
            namespace: Some("reco".into()),
            ..Default::default()
        },
        1,
        "reco-home",
    );
    assert_eq!(
        (page, next.as_str()),
        (vec!["reco-search".to_string()], "reco-search")
    );
    assert!(names(
        &f,
        SearchFilter {
            words: vec!["nowhere".into()],
            ..Default::default()
        }
    )
    .is_empty());
    // Only the namespaces the caller may read; pages stay full.
    let (hits, _) = f.read(|app, txn| {
        app.search_models(txn, &SearchFilter::default(), &|ns| ns == "reco", 2, "")
            .unwrap()
    });
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.entry.namespace == "reco"));

    // Quarantining snapshot 48 flags the models trained on it.
    f.apply(Op::Quarantine {
        entity: Entity::new(EntityKind::Data, "snap-48"),
        reason: "leak".into(),
    });
    assert_eq!(
        names(
            &f,
            SearchFilter {
                quarantined: Some(true),
                ..Default::default()
            }
        ),
        ["reco-home", "reco-search"]
    );
    assert_eq!(
        names(
            &f,
            SearchFilter {
                quarantined: Some(false),
                ..Default::default()
            }
        ),
        ["ads-ctr", "reco-video"]
    );
    let refused = f.read(|app, txn| {
        app.search_models(txn, &SearchFilter::default(), &|_| true, 0, "../x")
            .unwrap_err()
            .to_string()
    });
    assert!(refused.contains("page_token"), "{refused}");
}
