use serde_json::{json, Value};

use super::super::{
    validate_request, Dtype, Schema, Violation, ViolationKind, REQUEST_DEPTH_MAX,
    REQUEST_ELEMENTS_MAX, VIOLATIONS_MAX,
};
use super::{field, optional, schema};

fn model() -> Schema {
    schema(
        vec![
            field("x", Dtype::Float32, &[-1, 2]),
            field("n", Dtype::Int8, &[-1]),
            optional("tag", Dtype::String, &[]),
        ],
        vec![field("score", Dtype::Float32, &[-1])],
    )
}

/// The (kind, field, path) of every violation.
fn found(schema: &Schema, request: Value) -> Vec<(ViolationKind, String, String)> {
    validate_request(schema, &request)
        .into_iter()
        .map(|v| (v.kind, v.field, v.path))
        .collect()
}

fn only(schema: &Schema, request: Value) -> Violation {
    let mut violations = validate_request(schema, &request);
    assert_eq!(violations.len(), 1, "{violations:#?}");
    violations.remove(0)
}

use ViolationKind::*;

#[test]
fn good_requests_in_every_form_have_no_violations() {
    let m = model();
    let ok = [
        json!({"inputs": {"x": [[1.0, 2.5]], "n": [3], "tag": "a"}}),
        json!({"inputs": {"x": [[1, 2], [3, 4]], "n": [-128, 127]}}),
        json!({"inputs": [[[1.0, 2.0]], [1]]}),
        json!({"instances": [[[1.0, 2.0]], [1], "t"]}),
        json!({"instances": {"x": [], "n": []}, "params": {"k": 1}}),
        json!({"dataframe_split": {"columns": ["x", "n"], "data": [[[1, 2], 5], [[3, 4], 6]]}}),
        json!({"dataframe_split": {"index": [0], "columns": ["x", "n", "tag"], "data": [[[1, 2], 1, "s"]]}}),
    ];
    for request in ok {
        assert_eq!(found(&m, request.clone()), [], "{request}");
    }
}

#[test]
fn malformed_bodies_say_which_forms_are_accepted() {
    let m = model();
    for request in [
        json!([1]),
        json!({}),
        json!({"input": {}}),
        json!({"inputs": 3}),
    ] {
        let violations = validate_request(&m, &request);
        assert!(
            violations.iter().all(|v| v.kind == Malformed),
            "{request}: {violations:?}"
        );
        assert!(!violations.is_empty());
    }
    let v = only(&m, json!({"inputs": {"x": [], "n": []}, "instances": []}));
    assert_eq!(
        v.message,
        "the body gives inputs and instances; give only one of them"
    );
    let v = only(&m, json!({"dataframe_split": []}));
    assert!(
        v.message.contains("an object with columns and data"),
        "{}",
        v.message
    );
    assert!(validate_request(&m, &json!("text"))[0]
        .message
        .contains("not a JSON object"));
}

#[test]
fn missing_and_unknown_inputs_in_every_form() {
    let m = model();
    assert_eq!(
        found(&m, json!({"inputs": {"x": [[1, 2]], "z": 1}})),
        [
            (UnknownInput, "z".into(), "inputs.z".into()),
            (MissingInput, "n".into(), "inputs".into()),
        ]
    );
    assert_eq!(
        found(&m, json!({"inputs": [[[1, 2]]]})),
        [(MissingInput, "n".into(), "inputs".into())]
    );
    assert_eq!(
        found(&m, json!({"instances": [[[1, 2]], [1], "t", 5]})),
        [(UnknownInput, "".into(), "instances[3]".into())]
    );
    assert_eq!(
        found(
            &m,
            json!({"dataframe_split": {"columns": ["x", "q"], "data": [[[1, 2], 0]]}})
        ),
        [
            (
                UnknownInput,
                "q".into(),
                "dataframe_split.columns[1]".into()
            ),
            (MissingInput, "n".into(), "dataframe_split.columns".into()),
        ]
    );
    let v = only(&m, json!({"inputs": {"x": [[1, 2]]}}));
    assert_eq!(v.message, "required input \"n\" (int8 [-1]) is missing");
}

#[test]
fn wrong_dtypes_name_the_value_and_the_dtype() {
    let scalar = |dtype: Dtype, value: Value| {
        let s = schema(vec![field("v", dtype, &[])], vec![]);
        let violations = validate_request(&s, &json!({"inputs": {"v": value}}));
        violations.first().map(|v| {
            assert_eq!((v.kind, v.path.as_str()), (WrongDtype, "inputs.v"));
            v.message.clone()
        })
    };
    assert_eq!(
        scalar(Dtype::Float32, json!("1.0")).unwrap(),
        "\"1.0\" is not a number (float32)"
    );
    assert_eq!(
        scalar(Dtype::Int32, json!(1.5)).unwrap(),
        "1.5 is not a whole number (int32)"
    );
    assert_eq!(
        scalar(Dtype::Int8, json!(128)).unwrap(),
        "128 is out of range for int8 (-128 to 127)"
    );
    assert!(scalar(Dtype::Int8, json!(-129)).is_some());
    assert!(scalar(Dtype::Uint8, json!(-1))
        .unwrap()
        .contains("0 to 255"));
    assert!(scalar(Dtype::Uint8, json!(256)).is_some());
    assert!(scalar(Dtype::Int16, json!(40000)).is_some());
    assert!(scalar(Dtype::Int32, json!(3e9)).is_some());
    assert!(scalar(Dtype::Int64, json!(u64::MAX))
        .unwrap()
        .contains("out of range"));
    assert!(scalar(Dtype::Int64, json!(9.3e18))
        .unwrap()
        .contains("out of range"));
    assert!(scalar(Dtype::Int64, json!(i64::MAX)).is_none());
    assert!(scalar(Dtype::Int64, json!(i64::MIN)).is_none());
    assert!(scalar(Dtype::Int32, json!(2.0)).is_none());
    assert!(scalar(Dtype::Float16, json!(70000.0))
        .unwrap()
        .contains("out of range for float16"));
    assert!(scalar(Dtype::Float32, json!(1e39)).is_some());
    assert!(scalar(Dtype::Float64, json!(1e300)).is_none());
    assert!(scalar(Dtype::Bfloat16, json!(1e38)).is_none());
    assert_eq!(
        scalar(Dtype::Bool, json!(1)).unwrap(),
        "1 is not a bool (true or false)"
    );
    assert!(scalar(Dtype::Bool, json!("true")).is_some());
    assert!(scalar(Dtype::Bool, json!(true)).is_none());
    assert_eq!(
        scalar(Dtype::String, json!(5)).unwrap(),
        "5 is not a string"
    );
    assert!(scalar(Dtype::String, Value::Null).unwrap().contains("null"));
    assert!(scalar(Dtype::Int8, json!({"a": 1}))
        .unwrap()
        .contains("an object"));
}

#[test]
fn every_bad_element_is_reported_with_its_index_path() {
    let m = model();
    assert_eq!(
        found(
            &m,
            json!({"inputs": {"x": [[1, "a"], ["b", 2]], "n": [1, 2.5, 300]}})
        ),
        [
            (WrongDtype, "n".into(), "inputs.n[1]".into()),
            (WrongDtype, "n".into(), "inputs.n[2]".into()),
            (WrongDtype, "x".into(), "inputs.x[0][1]".into()),
            (WrongDtype, "x".into(), "inputs.x[1][0]".into()),
        ]
    );
}

#[test]
fn wrong_shapes_name_the_axis() {
    let m = model();
    let v = only(&m, json!({"inputs": {"x": [[1, 2, 3]], "n": [1]}}));
    assert_eq!((v.kind, v.path.as_str()), (WrongShape, "inputs.x[0]"));
    assert_eq!(v.message, "axis 1 has 3 values; shape [-1, 2] needs 2");
    let v = only(&m, json!({"inputs": {"x": [1], "n": [1]}}));
    assert_eq!(v.kind, WrongShape);
    assert_eq!(v.path, "inputs.x[0]");
    assert!(
        v.message.contains("expected a list for axis 1"),
        "{}",
        v.message
    );
    let v = only(&m, json!({"inputs": {"x": [[1, 2]], "n": 1}}));
    assert_eq!((v.kind, v.path.as_str()), (WrongShape, "inputs.n"));
    let v = only(&m, json!({"inputs": {"x": [[1, 2]], "n": [[1]]}}));
    assert_eq!((v.kind, v.path.as_str()), (WrongShape, "inputs.n[0]"));
    assert!(
        v.message.contains("nested deeper than shape [-1]"),
        "{}",
        v.message
    );
    let scalar = schema(vec![field("s", Dtype::Bool, &[])], vec![]);
    assert_eq!(
        only(&scalar, json!({"inputs": {"s": [true]}})).kind,
        WrongShape
    );
}

#[test]
fn ragged_arrays_are_found_at_any_axis() {
    let s = schema(vec![field("t", Dtype::Int32, &[-1, -1, -1])], vec![]);
    let v = only(&s, json!({"inputs": {"t": [[[1], [2]], [[3], [4, 5]]]}}));
    assert_eq!((v.kind, v.path.as_str()), (Ragged, "inputs.t[1][1]"));
    assert_eq!(
        v.message,
        "axis 2 has 2 values here but 1 at inputs.t[0][0]: nested lists must be rectangular"
    );
    let v = only(&s, json!({"inputs": {"t": [[[1]], [[2], [3]]]}}));
    assert_eq!((v.kind, v.path.as_str()), (Ragged, "inputs.t[1]"));
}

#[test]
fn swapped_positional_inputs_are_named() {
    let s = schema(
        vec![
            field("ids", Dtype::Int64, &[-1]),
            field("text", Dtype::String, &[-1]),
        ],
        vec![],
    );
    let violations = validate_request(&s, &json!({"inputs": [["a", "b"], [1, 2]]}));
    let order: Vec<&Violation> = violations.iter().filter(|v| v.kind == WrongOrder).collect();
    assert_eq!(order.len(), 1, "{violations:#?}");
    assert!(
        order[0]
            .message
            .starts_with("inputs[0] and inputs[1] fit inputs \"text\" and \"ids\""),
        "{}",
        order[0].message
    );
    assert_eq!(
        violations.iter().filter(|v| v.kind == WrongDtype).count(),
        4
    );
}

#[test]
fn dataframes_check_column_order_rows_and_cells() {
    let m = model();
    let v = only(
        &m,
        json!({"dataframe_split": {"columns": ["n", "x"], "data": [[1, [1, 2]]]}}),
    );
    assert_eq!(
        (v.kind, v.path.as_str()),
        (WrongOrder, "dataframe_split.columns")
    );
    assert_eq!(
        v.message,
        "columns are in the order \"n\", \"x\"; the signature's order is \"x\", \"n\", \"tag\""
    );
    assert_eq!(
        found(
            &m,
            json!({"dataframe_split": {"columns": ["x", "n"], "data": [[[1, 2]], [[1, 2], 999], [[1], 1], 7]}})
        ),
        [
            (WrongShape, "".into(), "dataframe_split.data[0]".into()),
            (WrongDtype, "n".into(), "dataframe_split.data[1][1]".into()),
            (WrongShape, "x".into(), "dataframe_split.data[2][0]".into()),
            (WrongShape, "".into(), "dataframe_split.data[3]".into()),
        ]
    );
    let fixed = schema(vec![field("x", Dtype::Float64, &[2])], vec![]);
    let v = only(
        &fixed,
        json!({"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}),
    );
    assert_eq!(
        (v.kind, v.path.as_str()),
        (WrongShape, "dataframe_split.data")
    );
    assert!(
        v.message.contains("takes 2 rows; the dataframe has 1"),
        "{}",
        v.message
    );
    let v = only(
        &m,
        json!({"dataframe_split": {"columns": ["x", "n", "x"], "data": []}}),
    );
    assert_eq!(v.kind, Malformed);
    assert!(v.message.contains("appears twice"));
    let v = only(&m, json!({"dataframe_split": {"columns": ["x", "n"]}}));
    assert_eq!(
        (v.kind, v.path.as_str()),
        (Malformed, "dataframe_split.data")
    );
}

#[test]
fn too_many_violations_end_with_a_count_of_the_rest() {
    let s = schema(vec![field("v", Dtype::Bool, &[-1])], vec![]);
    let values: Vec<Value> = (0..VIOLATIONS_MAX + 7).map(|i| json!(i)).collect();
    let violations = validate_request(&s, &json!({"inputs": {"v": values}}));
    assert_eq!(violations.len(), VIOLATIONS_MAX + 1);
    let last = violations.last().unwrap();
    assert_eq!(last.kind, Truncated);
    assert!(
        last.message.starts_with("7 more violations"),
        "{}",
        last.message
    );
}

#[test]
fn deep_or_huge_bodies_get_one_violation() {
    let m = model();
    let mut deep = json!(1);
    for _ in 0..1_000 {
        deep = json!([deep]);
    }
    let v = only(&m, json!({"inputs": {"x": deep}}));
    assert_eq!(v.kind, TooLarge);
    assert!(v.message.contains(&REQUEST_DEPTH_MAX.to_string()));
    let mut at_limit = json!(1);
    for _ in 0..REQUEST_DEPTH_MAX - 3 {
        at_limit = json!([at_limit]);
    }
    let violations = validate_request(&m, &json!({"inputs": {"x": at_limit, "n": []}}));
    assert!(
        violations.iter().all(|v| v.kind == WrongShape),
        "{violations:?}"
    );
    assert_eq!(violations.len(), 2, "{violations:?}");

    let huge = Value::Array(vec![json!(0); REQUEST_ELEMENTS_MAX + 1]);
    let v = only(&m, json!({"inputs": {"n": huge}}));
    assert_eq!(v.kind, TooLarge);
    assert!(v.message.contains(&REQUEST_ELEMENTS_MAX.to_string()));
}

#[test]
fn hostile_names_and_values_are_quoted_bounded() {
    let m = model();
    let long = "é".repeat(100_000);
    let violations = validate_request(
        &m,
        &json!({"inputs": {"x": [], "n": [], long.clone(): 1, "": 2, "a\u{0}b": 3}}),
    );
    assert_eq!(violations.len(), 3);
    assert!(violations.iter().all(|v| v.kind == UnknownInput));
    for v in &violations {
        assert!(
            v.message.len() < 1024 && v.path.len() < 1024 && v.field.len() < 1024,
            "{v:?}"
        );
    }
    assert!(violations.iter().any(|v| v.message.contains("\\0")));
    let v = only(&m, json!({"inputs": {"x": [], "n": [long]}}));
    assert!(v.message.contains("(200000 bytes)"), "{}", v.message);
    // A schema the checker would refuse (zero and negative sizes) does not panic.
    let odd = schema(
        vec![
            field("", Dtype::Int8, &[0, -7]),
            field("", Dtype::Int8, &[]),
        ],
        vec![],
    );
    let _ = validate_request(&odd, &json!({"inputs": [[], 1]}));
    let _ = validate_request(
        &odd,
        &json!({"dataframe_split": {"columns": ["", ""], "data": [[1, 2]]}}),
    );
}
