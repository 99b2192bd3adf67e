use std::fs;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use prost::Message;
use quiver_api::schema::{validate_request, Dtype, Field, Schema};
use serde_json::{json, Value};
use tempfile::TempDir;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

use super::example::{linear_model, signature_json, INPUT, OUTPUT};
use super::tensor::{Budget, Element, Input};
use super::{body::Source, OnnxModel, OnnxRuntime, MODEL_FILE};
use crate::agent::runtime::{LoadError, LoadedModel, PredictError, Runtime};
use crate::signature::parse_signature_file;

/// Weights, bias and rows whose scores f32 computes exactly.
const WEIGHTS: [f32; 3] = [1.0, 2.0, 3.0];
const BIAS: f32 = 0.5;

fn rows() -> Value {
    json!([[1, 1, 1], [0, 0, 0], [2.0, -1, 0.5], [10, 20, 30]])
}

fn scores() -> Value {
    json!([[6.5], [0.5], [2.0], [140.5]])
}

fn version_with(bytes: &[u8]) -> TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    fs::write(dir.path().join(MODEL_FILE), bytes).expect("write model.onnx");
    dir
}

fn linear_schema() -> Schema {
    parse_signature_file("signature.json", &signature_json(WEIGHTS.len()))
        .expect("the example signature parses")
        .to_schema()
        .expect("the example signature is a schema")
}

fn load(dir: &Path, schema: Option<&Schema>) -> Arc<dyn LoadedModel> {
    OnnxRuntime.load(dir, schema).expect("the model loads")
}

fn linear(schema: Option<&Schema>) -> (TempDir, Arc<dyn LoadedModel>) {
    let dir = version_with(&linear_model(&WEIGHTS, BIAS));
    let model = load(dir.path(), schema);
    (dir, model)
}

fn load_error(dir: &Path, schema: Option<&Schema>) -> String {
    match OnnxRuntime.load(dir, schema) {
        Ok(_) => panic!("the model loaded"),
        Err(LoadError(message)) => {
            assert!(message.contains(MODEL_FILE), "names the file: {message}");
            assert!(!message.contains("panicked"), "no panic: {message}");
            message
        }
    }
}

fn predict_error(model: &dyn LoadedModel, body: Value) -> String {
    match model.predict(&body) {
        Ok(answer) => panic!("{body} was answered {answer}"),
        Err(PredictError(message)) => {
            assert!(!message.contains("panicked"), "no panic: {message}");
            message
        }
    }
}

#[test]
fn the_example_signature_parses_to_the_models_inputs_and_outputs() {
    let schema = linear_schema();
    let field = |name: &str, width| Field {
        name: name.into(),
        dtype: Dtype::Float32,
        shape: vec![-1, width],
        optional: false,
    };
    assert_eq!(schema.inputs, vec![field(INPUT, 3)]);
    assert_eq!(schema.outputs, vec![field(OUTPUT, 1)]);
}

#[test]
fn accepts_a_version_whose_files_hold_model_onnx() {
    let dir = version_with(&linear_model(&WEIGHTS, BIAS));
    assert_eq!(OnnxRuntime.name(), "onnx");
    assert!(OnnxRuntime.accepts(dir.path()));
    let empty = tempfile::tempdir().unwrap();
    assert!(!OnnxRuntime.accepts(empty.path()));
    // A directory named model.onnx is not a model.
    fs::create_dir(empty.path().join(MODEL_FILE)).unwrap();
    assert!(!OnnxRuntime.accepts(empty.path()));
}

#[test]
fn every_request_form_gives_the_linear_scores() {
    let schema = linear_schema();
    let by_row = |row: &Value| json!({ INPUT: row });
    let records: Vec<Value> = rows().as_array().unwrap().iter().map(by_row).collect();
    let cells: Vec<Value> = rows()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| json!([row]))
        .collect();
    // The forms the validator takes, then MLflow's row forms it does not.
    let validated = [
        json!({"inputs": {INPUT: rows()}}),
        json!({"inputs": [rows()]}),
        json!({"instances": [rows()]}),
        json!({"instances": {INPUT: rows()}}),
        json!({"dataframe_split": {"columns": [INPUT], "data": cells}}),
        json!({"inputs": {INPUT: rows()}, "params": {"k": 1}}),
    ];
    let unvalidated = [json!({"instances": rows()}), json!({"instances": records})];
    for with_schema in [Some(&schema), None] {
        let (_dir, model) = linear(with_schema);
        for body in &validated {
            assert_eq!(validate_request(&schema, body), vec![], "{body}");
            assert_eq!(model.predict(body).unwrap(), scores(), "{body}");
        }
        for body in &unvalidated {
            assert_eq!(model.predict(body).unwrap(), scores(), "{body}");
        }
    }
}

#[test]
fn batches_of_one_and_none() {
    let schema = linear_schema();
    let (_dir, model) = linear(Some(&schema));
    let one = json!({"inputs": {INPUT: [[0.25, 0.5, 1]]}});
    assert_eq!(model.predict(&one).unwrap(), json!([[4.75]]));
    // A whole number beyond f32's exact integers is read to f32's precision.
    let large = json!({"inputs": {INPUT: [[4611686018427387904u64, 0, 0]]}});
    assert_eq!(
        model.predict(&large).unwrap(),
        json!([[4611686018427387904.0]])
    );
    let row = json!({"instances": [[0.25, 0.5, 1]]});
    assert_eq!(model.predict(&row).unwrap(), json!([[4.75]]));
    for empty in [
        json!({"inputs": {INPUT: []}}),
        json!({"instances": []}),
        json!({"dataframe_split": {"columns": [INPUT], "data": []}}),
    ] {
        assert_eq!(model.predict(&empty).unwrap(), json!([]), "{empty}");
    }
}

#[test]
fn a_missing_or_corrupt_model_is_a_load_error() {
    let schema = linear_schema();
    let empty = tempfile::tempdir().unwrap();
    assert!(load_error(empty.path(), Some(&schema)).contains("no such file"));
    let mut noise = [0u8; 4096];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in noise.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let whole = linear_model(&WEIGHTS, BIAS);
    for bytes in [
        &[][..],
        &noise[..],
        &whole[..whole.len() / 2],
        b"not a model",
    ] {
        let dir = version_with(bytes);
        load_error(dir.path(), Some(&schema));
        load_error(dir.path(), None);
    }
}

#[test]
fn a_signature_that_does_not_fit_the_model_is_a_load_error() {
    let dir = version_with(&linear_model(&WEIGHTS, BIAS));
    let with = |edit: &dyn Fn(&mut Field)| {
        let mut schema = linear_schema();
        edit(&mut schema.inputs[0]);
        load_error(dir.path(), Some(&schema))
    };
    assert!(with(&|field| field.name = "x".into()).contains("\"x\" is not an input of the model"));
    assert!(with(&|field| field.dtype = Dtype::String).contains("does not take"));
    with(&|field| field.dtype = Dtype::Float64);
    with(&|field| field.shape = vec![-1, 4]);
    // A required input the model lacks.
    let mut schema = linear_schema();
    schema.inputs.push(Field {
        name: "extra".into(),
        dtype: Dtype::Float32,
        shape: vec![-1],
        optional: false,
    });
    assert!(load_error(dir.path(), Some(&schema)).contains("\"extra\""));
    // An optional one is left out, also by position.
    schema.inputs[1].optional = true;
    let model = load(dir.path(), Some(&schema));
    let body = json!({"inputs": [rows(), [1.0, 2.0, 3.0, 4.0]]});
    assert_eq!(model.predict(&body).unwrap(), scores());
}

#[test]
fn bodies_that_do_not_fit_are_predict_errors() {
    let schema = linear_schema();
    for with_schema in [Some(&schema), None] {
        let (_dir, model) = linear(with_schema);
        let model = model.as_ref();
        let error = |body| predict_error(model, body);
        assert!(error(json!({"inputs": {INPUT: [[1, 2]]}})).contains("axis 1 has length 2, not 3"));
        assert!(error(json!({"inputs": {INPUT: [["a", "b", "c"]]}})).contains("float32"));
        assert!(error(json!({"inputs": {INPUT: [[1, 2, 3], [4, 5]]}})).contains("rectangular"));
        assert!(error(json!({"inputs": {INPUT: [1, 2, 3]}})).contains("needs a list"));
        assert!(error(json!({"inputs": {INPUT: [[[1], [2], [3]]]}})).contains("nested deeper"));
        assert!(error(json!({"inputs": {INPUT: [[1e300, 0, 0]]}})).contains("1e+300 is not one"));
        assert!(error(json!({"inputs": {INPUT: [[true, null, {}]]}})).contains("float32"));
        assert!(error(json!({"inputs": {"x": [[1, 2, 3]]}})).contains("missing"));
        assert!(error(json!({"inputs": []})).contains("missing"));
        assert!(error(json!({"inputs": [rows(), rows()]})).contains("2 values"));
        assert!(error(json!({"inputs": 3})).contains("inputs is 3"));
        assert!(error(json!({"inputs": "x"})).contains("\"x\""));
        assert!(error(json!({"instances": [{INPUT: [1, 2, 3]}, {}]})).contains("instances[1]"));
        assert!(
            error(json!({"dataframe_split": {"columns": ["x"], "data": []}})).contains("no column")
        );
        assert!(
            error(json!({"dataframe_split": {"columns": [INPUT], "data": [[]]}}))
                .contains("0 values for 1 columns")
        );
        assert!(
            error(json!({"dataframe_split": {"columns": [INPUT], "data": [3]}}))
                .contains("not a list")
        );
        assert!(error(json!({"dataframe_split": []})).contains("columns and data"));
        assert!(error(json!({"inputs": {}, "instances": []})).contains("more than one"));
        assert!(error(json!({"params": {}})).contains("no inputs"));
        assert!(error(json!([1, 2])).contains("not a JSON object"));
        assert!(error(Value::Null).contains("not a JSON object"));
    }
}

#[test]
fn a_request_holding_too_many_elements_is_refused_before_it_is_built() {
    let input = Input::new(
        "x".into(),
        Element::F32,
        vec![None, Some(3)],
        vec!["N".into(), "3".into()],
    );
    let rows = json!([[1, 2, 3], [4, 5, 6]]);
    assert!(input
        .tensor(&Source::Whole(&rows), &mut Budget::new(6))
        .is_ok());
    let mut budget = Budget::new(5);
    let refused = input
        .tensor(&Source::Whole(&rows), &mut budget)
        .unwrap_err();
    assert!(refused.contains("more than 5 elements"), "{refused}");
    // The allowance is for the whole request: a second input takes what the first left.
    let mut budget = Budget::new(9);
    input.tensor(&Source::Whole(&rows), &mut budget).unwrap();
    assert!(input.tensor(&Source::Whole(&rows), &mut budget).is_err());
}

/// An ONNX model of `inputs` (name, dtype, rank; axis 0 is `N`, the others each their own
/// size) and `nodes` (op, inputs,
/// output); its outputs are `outputs`.
fn graph_model(
    inputs: &[(&str, DataType, usize)],
    nodes: &[(&str, &[&str], &str)],
    outputs: &[&str],
) -> Vec<u8> {
    let info = |name: &str, elem_type: Option<DataType>, rank: usize| ValueInfoProto {
        name: name.into(),
        r#type: elem_type.map(|elem_type| TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem_type as i32,
                shape: Some(TensorShapeProto {
                    dim: (0..rank)
                        .map(|axis| Dimension {
                            value: Some(dimension::Value::DimParam(match axis {
                                0 => "N".into(),
                                _ => format!("{name}_{axis}"),
                            })),
                            ..Dimension::default()
                        })
                        .collect(),
                }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    };
    ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(GraphProto {
            node: nodes
                .iter()
                .map(|(op, inputs, output)| NodeProto {
                    op_type: (*op).into(),
                    input: inputs.iter().map(|&name| name.into()).collect(),
                    output: vec![(*output).into()],
                    ..NodeProto::default()
                })
                .collect(),
            input: inputs
                .iter()
                .map(|&(name, elem_type, rank)| info(name, Some(elem_type), rank))
                .collect(),
            output: outputs.iter().map(|name| info(name, None, 0)).collect(),
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    }
    .encode_to_vec()
}

#[test]
fn integer_and_double_inputs_and_several_outputs() {
    for (elem_type, dtype, value, twice) in [
        (
            DataType::Int32,
            Dtype::Int32,
            json!([[1, -2], [1073741823, 0]]),
            json!([[2, -4], [2147483646, 0]]),
        ),
        (
            DataType::Int64,
            Dtype::Int64,
            json!([[3.0, -9007199254740993i64]]),
            json!([[6, -18014398509481986i64]]),
        ),
        (
            DataType::Double,
            Dtype::Float64,
            json!([[0.1, 1e300]]),
            json!([[0.2, 2e300]]),
        ),
    ] {
        let bytes = graph_model(
            &[("x", elem_type, 2)],
            &[("Add", &["x", "x"], "twice"), ("Identity", &["x"], "same")],
            &["twice", "same"],
        );
        let dir = version_with(&bytes);
        let schema = Schema {
            inputs: vec![Field {
                name: "x".into(),
                dtype,
                shape: vec![-1, -1],
                optional: false,
            }],
            outputs: vec![],
        };
        for with_schema in [Some(&schema), None] {
            let model = load(dir.path(), with_schema);
            let answer = model.predict(&json!({"inputs": {"x": value}})).unwrap();
            let same = if dtype == Dtype::Int64 {
                json!([[3, -9007199254740993i64]])
            } else {
                value.clone()
            };
            assert_eq!(answer, json!({"twice": twice, "same": same}), "{dtype}");
            let message = predict_error(model.as_ref(), json!({"inputs": {"x": [["a"]]}}));
            assert!(message.contains(dtype.name()), "{message}");
            if dtype != Dtype::Float64 {
                let message = predict_error(model.as_ref(), json!({"inputs": {"x": [[0.5]]}}));
                assert!(message.contains("0.5"), "{message}");
            }
        }
    }
}

#[test]
fn positional_values_follow_the_signatures_order() {
    let bytes = graph_model(
        &[("a", DataType::Float, 1), ("b", DataType::Float, 1)],
        &[("Sub", &["a", "b"], "difference")],
        &["difference"],
    );
    let dir = version_with(&bytes);
    let field = |name: &str| Field {
        name: name.into(),
        dtype: Dtype::Float32,
        shape: vec![-1],
        optional: false,
    };
    let reversed = Schema {
        inputs: vec![field("b"), field("a")],
        outputs: vec![],
    };
    let body = json!({"inputs": [[1.0, 2.0], [10.0, 20.0]]});
    let model = load(dir.path(), Some(&reversed));
    assert_eq!(model.predict(&body).unwrap(), json!([9.0, 18.0]));
    let model = load(dir.path(), None);
    assert_eq!(model.predict(&body).unwrap(), json!([-9.0, -18.0]));
    let frame = json!({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 10], [2, 20]]}});
    assert_eq!(model.predict(&frame).unwrap(), json!([-9.0, -18.0]));
    let records = json!({"instances": [{"a": 1, "b": 10}, {"b": 20, "a": 2}]});
    assert_eq!(model.predict(&records).unwrap(), json!([-9.0, -18.0]));
    // Batches of different sizes share the batch symbol: the model refuses, no panic.
    let loaded = OnnxModel::load(&dir.path().join(MODEL_FILE), Some(&reversed)).unwrap();
    assert_eq!(loaded.input_names().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(loaded.output_names().collect::<Vec<_>>(), ["difference"]);
    predict_error(&loaded, json!({"inputs": {"a": [1.0], "b": [1.0, 2.0]}}));
}

/// The linear model, loaded once for the property tests (with the signature, or not). The
/// model keeps nothing of its file once loaded, so the directory goes at once.
fn shared_linear(with_schema: bool) -> &'static dyn LoadedModel {
    static MODELS: OnceLock<[Arc<dyn LoadedModel>; 2]> = OnceLock::new();
    let models = MODELS.get_or_init(|| {
        let schema = linear_schema();
        [linear(Some(&schema)).1, linear(None).1]
    });
    models[usize::from(!with_schema)].as_ref()
}

#[test]
fn a_panic_inside_tract_is_a_predict_error_and_the_model_still_answers() {
    // tract divides integers with Rust's `/`, which panics on a zero divisor.
    let bytes = graph_model(
        &[("x", DataType::Int32, 1)],
        &[("Div", &["x", "x"], "one")],
        &["one"],
    );
    let dir = version_with(&bytes);
    let model = load(dir.path(), None);
    let error = model
        .predict(&json!({"inputs": {"x": [4, 0]}}))
        .unwrap_err();
    assert!(error.0.contains("panicked"), "{error}");
    assert_eq!(
        model.predict(&json!({"inputs": {"x": [4, -2]}})).unwrap(),
        json!([1, 1])
    );
}

/// Any JSON value, biased towards the keys and shapes the runtime looks for.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e40f64..1e40).prop_map(Value::from),
        Just(json!(1e300)),
        (-4i32..40).prop_map(Value::from),
        "[a-z]{0,3}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        Just("inputs".to_string()),
        Just("instances".to_string()),
        Just("dataframe_split".to_string()),
        Just("columns".to_string()),
        Just("data".to_string()),
        Just(INPUT.to_string()),
        Just("params".to_string()),
        "[a-z]{1,2}",
    ];
    leaf.prop_recursive(6, 96, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever the body, `predict` answers or refuses; it never panics.
    #[test]
    fn predict_is_total(
        body in any_json(),
        form in 0usize..4,
        with_schema in any::<bool>(),
    ) {
        let model = shared_linear(with_schema);
        let body = match form {
            0 => body,
            1 => json!({"inputs": {INPUT: body}}),
            2 => json!({"instances": body}),
            _ => json!({"dataframe_split": {"columns": [INPUT], "data": body}}),
        };
        if let Err(PredictError(message)) = model.predict(&body) {
            prop_assert!(!message.contains("panicked"), "{}", message);
        }
    }

    /// Rows of small whole numbers score exactly what the weights say, in every batch size.
    #[test]
    fn scores_are_exact(rows in proptest::collection::vec([-64i32..64, -64i32..64, -64i32..64], 0..16)) {
        let model = shared_linear(true);
        let expected: Vec<Value> = rows
            .iter()
            .map(|row| {
                let sum: f32 = row.iter().zip(WEIGHTS).map(|(&x, w)| x as f32 * w).sum();
                json!([sum + BIAS])
            })
            .collect();
        let answer = model.predict(&json!({"inputs": {INPUT: rows}})).unwrap();
        prop_assert_eq!(answer, Value::Array(expected));
    }
}
