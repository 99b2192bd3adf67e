use super::{parse_mlmodel, parse_signature_file, SignatureError, SignatureJson, TensorJson};

fn tensor(name: &str, dtype: &str, shape: &[i64], optional: bool) -> TensorJson {
    TensorJson {
        name: name.into(),
        dtype: dtype.into(),
        shape: shape.to_vec(),
        optional,
    }
}

fn field_of(error: SignatureError) -> (String, String) {
    match error {
        SignatureError::Field { field, reason } => (field, reason),
        other => panic!("not a field error: {other}"),
    }
}

/// As MLflow writes it (PyYAML `safe_dump`, 80 columns: long JSON strings
/// fold onto indented continuation lines).
const COLUMNS: &str = r#"artifact_path: model
flavors:
  python_function:
    env:
      conda: conda.yaml
    loader_module: mlflow.sklearn
    python_version: 3.11.4
  sklearn:
    serialization_format: cloudpickle
    sklearn_version: 1.3.0
mlflow_version: 2.9.2
model_uuid: 0f3c4c
signature:
  inputs: '[{"type": "double", "name": "sepal length (cm)", "required": true}, {"type":
    "double", "name": "sepal width (cm)", "required": true}, {"type": "string", "name":
    "it''s", "required": false}]'
  outputs: '[{"type": "long", "required": true}]'
  params: null
utc_time_created: '2024-01-01 00:00:00.000000'
"#;

#[test]
fn column_signatures_fold_and_map_types() {
    let signature = parse_mlmodel(COLUMNS).unwrap();
    assert_eq!(
        signature,
        SignatureJson {
            inputs: vec![
                tensor("sepal length (cm)", "float64", &[-1], false),
                tensor("sepal width (cm)", "float64", &[-1], false),
                tensor("it's", "string", &[-1], true),
            ],
            outputs: vec![tensor("0", "int64", &[-1], false)],
        }
    );
    assert_eq!(parse_signature_file("MLmodel", COLUMNS).unwrap(), signature);
    assert_eq!(
        parse_signature_file("model.yaml", COLUMNS).unwrap(),
        signature
    );
    signature.to_schema().unwrap();
}

#[test]
fn tensor_signatures_keep_dtype_and_shape() {
    let text = "signature:\n  inputs: '[{\"type\": \"tensor\", \"tensor-spec\": {\"dtype\": \"float32\", \"shape\": [-1, 4]}, \"name\": \"x\"}]'\n  outputs: '[{\"type\": \"tensor\", \"tensor-spec\": {\"dtype\": \"uint8\", \"shape\": [-1]}}]'\n";
    let signature = parse_mlmodel(text).unwrap();
    assert_eq!(signature.inputs, [tensor("x", "float32", &[-1, 4], false)]);
    assert_eq!(signature.outputs, [tensor("0", "uint8", &[-1], false)]);
    let types = [
        ("float", "float32"),
        ("integer", "int32"),
        ("long", "int64"),
        ("boolean", "bool"),
        ("string", "string"),
        ("double", "float64"),
    ];
    for (mlflow, ours) in types {
        let text =
            format!("signature:\n  inputs: '[{{\"type\": \"{mlflow}\", \"name\": \"c\"}}]'\n");
        assert_eq!(parse_mlmodel(&text).unwrap().inputs[0].dtype, ours);
    }
}

#[test]
fn double_quoted_and_null_values_are_read() {
    let text = "signature:\n  inputs: \"[{\\\"type\\\": \\\"boolean\\\", \\\"name\\\": \\\"\\u00e9\\\"}]\"\n  outputs: null\n";
    let signature = parse_mlmodel(text).unwrap();
    assert_eq!(signature.inputs, [tensor("é", "bool", &[-1], false)]);
    assert!(signature.outputs.is_empty());
}

#[test]
fn refusals_name_the_field() {
    let error = |inputs: &str| {
        field_of(parse_mlmodel(&format!("signature:\n  inputs: '{inputs}'\n")).unwrap_err())
    };
    let (field, reason) = error(r#"[{"type": "binary", "name": "img"}]"#);
    assert_eq!(field, "signature.inputs[0].type");
    assert!(
        reason.starts_with("binary columns have no Quiver dtype"),
        "{reason}"
    );
    let (field, _) =
        error(r#"[{"type": "double", "name": "a"}, {"type": "datetime", "name": "t"}]"#);
    assert_eq!(field, "signature.inputs[1].type");
    let (field, reason) =
        error(r#"[{"type": "tensor", "tensor-spec": {"dtype": "object", "shape": [-1]}}]"#);
    assert_eq!(field, "signature.inputs[0].tensor-spec.dtype");
    assert!(reason.contains("\"object\""), "{reason}");
    let (field, _) =
        error(r#"[{"type": "tensor", "tensor-spec": {"dtype": "int8", "shape": [-1, "x"]}}]"#);
    assert_eq!(field, "signature.inputs[0].tensor-spec.shape[1]");
    let (field, reason) = error("[{");
    assert_eq!(field, "signature.inputs");
    assert!(reason.starts_with("is not valid JSON"), "{reason}");
    let (field, _) = error(r#"[{"type": "double", "name": "a"}, {"type": "long", "name": "a"}]"#);
    assert_eq!(field, "inputs[1].name");
}

#[test]
fn files_without_a_usable_signature_block_are_refused() {
    for text in ["flavors:\n  x: 1\n", "signature: null\n", "", "\u{0}\u{0}"] {
        let (field, reason) = field_of(parse_mlmodel(text).unwrap_err());
        assert_eq!(field, "signature", "{text:?}");
        assert!(reason.contains("no signature"), "{reason}");
    }
    for (text, expected) in [
        ("signature:\n  inputs: [1, 2]\n", "not a quoted JSON string"),
        ("signature:\n  inputs: '[]\n", "not closed"),
        ("signature:\n  inputs: '[]\nother: 1\n", "not closed"),
        (
            "signature:\n  inputs: '[]' trailing\n",
            "text after its closing quote",
        ),
        (
            "signature:\n  inputs: |\n    []\n",
            "not a quoted JSON string",
        ),
        (
            "signature:\n    inputs: '[]'\n  outputs: '[]'\n",
            "indented",
        ),
        ("signature:\n  just text\n", "not `key: value`"),
        ("signature: '[]'\n", "expected its keys"),
    ] {
        let (field, reason) = field_of(parse_mlmodel(text).unwrap_err());
        assert_eq!(field, "signature");
        assert!(reason.contains(expected), "{text:?}: {reason}");
    }
}

#[test]
fn hostile_text_does_not_panic() {
    let long = "x".repeat(100_000);
    for text in [
        format!("signature:\n  inputs: '{long}"),
        format!("signature:\n  inputs: \"\\u{long}\"\n"),
        "signature:\n  inputs: \"\\\n".to_string(),
        "signature:\n  inputs: \"abc\\".to_string(),
        "signature:\n  é: 'ü\n\n\n    ö'\n".to_string(),
        "signature:\n".to_string() + &"  k: null\n".repeat(100),
        format!("signature:\n  inputs: '[{{\"type\": \"tensor\", \"tensor-spec\": {{\"dtype\": \"int8\", \"shape\": [{}]}}}}]'\n", i64::MAX),
    ] {
        let _ = parse_mlmodel(&text);
    }
    let text = "signature:\n  inputs: '[{\"type\": \"long\", \"name\": \"\"}]'\n";
    let (field, _) = field_of(parse_mlmodel(text).unwrap_err());
    assert_eq!(field, "inputs[0].name");
}
