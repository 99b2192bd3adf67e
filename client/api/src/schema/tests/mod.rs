//! Tests of the schema module: compatibility rules, every violation kind,
//! hostile requests and seeded properties.

mod compat;
mod properties;
mod request;

use super::{Dtype, Field, Schema};

pub(super) fn field(name: &str, dtype: Dtype, shape: &[i64]) -> Field {
    Field {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        optional: false,
    }
}

pub(super) fn optional(name: &str, dtype: Dtype, shape: &[i64]) -> Field {
    Field {
        optional: true,
        ..field(name, dtype, shape)
    }
}

pub(super) fn schema(inputs: Vec<Field>, outputs: Vec<Field>) -> Schema {
    Schema { inputs, outputs }
}

#[test]
fn dtypes_round_trip_through_their_names_and_json() {
    for dtype in Dtype::ALL {
        assert_eq!(Dtype::parse(dtype.name()), Some(dtype));
        assert_eq!(
            serde_json::to_string(&dtype).unwrap(),
            format!("\"{}\"", dtype.name())
        );
    }
    assert_eq!(Dtype::parse("Float32"), None);
    assert_eq!(Dtype::parse("double"), None);
    assert!(Dtype::names().starts_with("float32, float16, bfloat16"));
}

#[test]
fn schema_json_is_the_signature_file_form() {
    let text = r#"{"inputs":[{"name":"x","dtype":"float32","shape":[-1,128],"optional":false}],
                   "outputs":[{"name":"score","dtype":"float32","shape":[-1]}]}"#;
    let parsed: Schema = serde_json::from_str(text).unwrap();
    assert_eq!(
        parsed,
        schema(
            vec![field("x", Dtype::Float32, &[-1, 128])],
            vec![field("score", Dtype::Float32, &[-1])]
        )
    );
    assert!(serde_json::from_str::<Schema>(r#"{"inputs":[],"extra":1}"#).is_err());
    assert!(serde_json::from_str::<Schema>(
        r#"{"inputs":[{"name":"x","dtype":"float","shape":[]}]}"#
    )
    .is_err());
}

#[test]
fn check_names_the_field_at_fault() {
    let bad = |inputs: Vec<Field>| schema(inputs, vec![]).check().unwrap_err();
    let error = bad(vec![field("", Dtype::Bool, &[])]);
    assert_eq!(error.field, "inputs[0].name");
    let error = bad(vec![field("a\0b", Dtype::Bool, &[])]);
    assert!(error.reason.contains("NUL"), "{error}");
    let error = bad(vec![field(&"n".repeat(257), Dtype::Bool, &[])]);
    assert!(error.reason.contains("256 bytes"), "{error}");
    let error = bad(vec![field("x", Dtype::Bool, &[-1, 0])]);
    assert_eq!(error.field, "inputs[0].shape[1]");
    let error = bad(vec![field("x", Dtype::Bool, &[1; 33])]);
    assert_eq!(error.field, "inputs[0].shape");
    let error = bad(vec![
        field("x", Dtype::Bool, &[]),
        field("x", Dtype::Int8, &[]),
    ]);
    assert_eq!(
        error.to_string(),
        "signature field inputs[1].name: \"x\" appears twice in inputs; names must be unique"
    );
    let many = (0..1025)
        .map(|i| field(&i.to_string(), Dtype::Bool, &[]))
        .collect();
    assert_eq!(bad(many).field, "inputs");
    schema(vec![field("名前 ✓", Dtype::String, &[-1])], vec![])
        .check()
        .unwrap();
}
