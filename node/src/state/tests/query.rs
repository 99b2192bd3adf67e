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
