use super::super::{compatibility, ChangeKind, Dtype, Side};
use super::{field, optional, schema};

fn base() -> super::Schema {
    schema(
        vec![
            field("x", Dtype::Float32, &[-1, 4]),
            optional("mask", Dtype::Bool, &[-1]),
        ],
        vec![field("score", Dtype::Float32, &[-1])],
    )
}

/// The (side, field, kind, breaking) of every change, in order.
fn changes(old: &super::Schema, new: &super::Schema) -> Vec<(Side, String, ChangeKind, bool)> {
    compatibility(old, new)
        .changes
        .into_iter()
        .map(|change| (change.side, change.field, change.kind, change.breaking))
        .collect()
}

#[test]
fn equal_schemas_have_no_changes() {
    let report = compatibility(&base(), &base());
    assert!(report.changes.is_empty());
    assert!(!report.is_breaking());
}

#[test]
fn an_added_optional_input_is_compatible_and_a_required_one_breaks() {
    let mut new = base();
    new.inputs.push(optional("lang", Dtype::String, &[]));
    let report = compatibility(&base(), &new);
    assert!(!report.is_breaking());
    assert_eq!(
        changes(&base(), &new),
        [(Side::Input, "lang".into(), ChangeKind::Added, false)]
    );
    assert!(report.changes[0]
        .detail
        .contains("requests without it still work"));

    new.inputs[2].optional = false;
    assert_eq!(
        changes(&base(), &new),
        [(Side::Input, "lang".into(), ChangeKind::Added, true)]
    );
}

#[test]
fn a_removed_or_renamed_input_breaks() {
    let mut new = base();
    new.inputs.remove(1);
    assert_eq!(
        changes(&base(), &new),
        [(Side::Input, "mask".into(), ChangeKind::Removed, true)]
    );

    let mut renamed = base();
    renamed.inputs[0].name = "features".into();
    assert_eq!(
        changes(&base(), &renamed),
        [
            (Side::Input, "features".into(), ChangeKind::Added, true),
            (Side::Input, "x".into(), ChangeKind::Removed, true),
        ]
    );
    let report = compatibility(&base(), &renamed);
    assert!(
        report.changes[1]
            .detail
            .contains("a rename counts as a removal"),
        "{:?}",
        report
    );
}

#[test]
fn a_retyped_input_breaks_naming_both_dtypes() {
    let mut new = base();
    new.inputs[0].dtype = Dtype::Float64;
    let report = compatibility(&base(), &new);
    assert_eq!(report.changes.len(), 1);
    assert_eq!(report.changes[0].kind, ChangeKind::DtypeChanged);
    assert!(report.is_breaking());
    assert_eq!(
        report.changes[0].detail,
        "input \"x\" changed dtype from float32 to float64"
    );
}

#[test]
fn input_shapes_widen_compatibly_and_narrow_or_change_with_a_break() {
    let shape = |old: &[i64], new: &[i64]| {
        let mut before = base();
        before.inputs[0].shape = old.to_vec();
        let mut after = base();
        after.inputs[0].shape = new.to_vec();
        let report = compatibility(&before, &after);
        assert_eq!(report.changes.len(), 1, "{report:?}");
        assert_eq!(report.changes[0].kind, ChangeKind::ShapeChanged);
        (report.is_breaking(), report.changes[0].detail.clone())
    };
    let (breaking, detail) = shape(&[-1, 4], &[-1, -1]);
    assert!(!breaking);
    assert!(
        detail.contains("axis 1 4 → any size (compatible)"),
        "{detail}"
    );
    let (breaking, detail) = shape(&[-1, 4], &[8, 4]);
    assert!(breaking);
    assert!(
        detail.contains("axis 0 any size → 8 (breaking)"),
        "{detail}"
    );
    let (breaking, detail) = shape(&[-1, 4], &[-1, 5]);
    assert!(breaking);
    assert!(detail.contains("axis 1 4 → 5"), "{detail}");
    let (breaking, detail) = shape(&[-1, 4], &[-1, 4, 1]);
    assert!(breaking);
    assert!(detail.contains("rank 2 → 3"), "{detail}");
}

#[test]
fn optionality_changes_of_inputs() {
    let mut new = base();
    new.inputs[1].optional = false;
    assert_eq!(
        changes(&base(), &new),
        [(Side::Input, "mask".into(), ChangeKind::BecameRequired, true)]
    );
    let mut old = base();
    old.inputs[1].optional = false;
    assert_eq!(
        changes(&old, &base()),
        [(
            Side::Input,
            "mask".into(),
            ChangeKind::BecameOptional,
            false
        )]
    );
}

#[test]
fn a_moved_input_breaks_positional_callers() {
    let mut new = base();
    new.inputs.swap(0, 1);
    assert_eq!(
        changes(&base(), &new),
        [
            (Side::Input, "mask".into(), ChangeKind::Moved, true),
            (Side::Input, "x".into(), ChangeKind::Moved, true),
        ]
    );
    let report = compatibility(&base(), &new);
    assert!(
        report.changes[1].detail.contains("from position 0 to 1"),
        "{report:?}"
    );
}

#[test]
fn every_output_change_breaks() {
    let output_change = |edit: &dyn Fn(&mut super::Schema)| {
        let mut new = base();
        edit(&mut new);
        let report = compatibility(&base(), &new);
        assert!(report.is_breaking(), "{report:?}");
        assert!(report
            .changes
            .iter()
            .all(|c| c.side == Side::Output && c.breaking));
        report.changes[0].kind
    };
    assert_eq!(output_change(&|s| s.outputs.clear()), ChangeKind::Removed);
    assert_eq!(
        output_change(&|s| s.outputs.push(optional("extra", Dtype::Bool, &[]))),
        ChangeKind::Added
    );
    assert_eq!(
        output_change(&|s| s.outputs[0].dtype = Dtype::Float16),
        ChangeKind::DtypeChanged
    );
    assert_eq!(
        output_change(&|s| s.outputs[0].shape = vec![-1, 1]),
        ChangeKind::ShapeChanged
    );
    assert_eq!(
        output_change(&|s| s.outputs[0].shape = vec![3]),
        ChangeKind::ShapeChanged
    );
    assert_eq!(
        output_change(&|s| s.outputs[0].optional = true),
        ChangeKind::BecameOptional
    );
    let mut fixed = base();
    fixed.outputs[0].shape = vec![3];
    let mut widened = fixed.clone();
    widened.outputs[0].shape = vec![-1];
    assert!(compatibility(&fixed, &widened).is_breaking());
}

#[test]
fn findings_are_sorted_and_list_every_change() {
    let old = base();
    let new = schema(
        vec![
            field("x", Dtype::Int64, &[-1, 3]),
            field("b", Dtype::Bool, &[]),
        ],
        vec![],
    );
    let found = changes(&old, &new);
    assert_eq!(
        found,
        [
            (Side::Input, "b".into(), ChangeKind::Added, true),
            (Side::Input, "mask".into(), ChangeKind::Removed, true),
            (Side::Input, "x".into(), ChangeKind::DtypeChanged, true),
            (Side::Input, "x".into(), ChangeKind::ShapeChanged, true),
            (Side::Output, "score".into(), ChangeKind::Removed, true),
        ]
    );
    let report = compatibility(&old, &new);
    assert_eq!(report.breaking().count(), 5);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["changes"][0]["kind"], "added");
    assert_eq!(json["changes"][0]["side"], "input");
}
