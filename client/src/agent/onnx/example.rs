//! A small ONNX model built in code, and its signature: the model a README walkthrough can
//! register and serve (the CLI writes both to files) and the one the runtime's tests load.
//! Built from tract's own ONNX protobuf types, so the bytes are ones tract reads.

use prost::Message;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::signature::{SignatureJson, TensorJson};

/// The linear model's input: float32 `[N, K]`, one row per example.
pub const INPUT: &str = "features";
/// The linear model's output: float32 `[N, 1]`, one score per example.
pub const OUTPUT: &str = "score";
/// The ONNX IR version the model declares (ONNX 1.7's; tract reads it).
const IR_VERSION: i64 = 7;
/// The ONNX operator set the model uses (tract is tested against 9 to 18).
const OPSET_VERSION: i64 = 13;

/// The ONNX bytes of a linear scorer: `score[N, 1] = features[N, K] · weights[K, 1] + bias`,
/// with K = `weights.len()` and N any batch size. Panics if `weights` is empty: a model needs
/// at least one feature.
pub fn linear_model(weights: &[f32], bias: f32) -> Vec<u8> {
    assert!(
        !weights.is_empty(),
        "a linear model needs at least one weight"
    );
    let features = i64::try_from(weights.len()).expect("a slice's length fits an i64");
    let float = DataType::Float as i32;
    let graph = GraphProto {
        name: "linear".into(),
        node: vec![
            node("MatMul", &[INPUT, "weights"], "product"),
            node("Add", &["product", "bias"], OUTPUT),
        ],
        initializer: vec![
            TensorProto {
                name: "weights".into(),
                data_type: float,
                dims: vec![features, 1],
                float_data: weights.to_vec(),
                ..TensorProto::default()
            },
            TensorProto {
                name: "bias".into(),
                data_type: float,
                dims: vec![1],
                float_data: vec![bias],
                ..TensorProto::default()
            },
        ],
        input: vec![value_info(INPUT, float, &[None, Some(features)])],
        output: vec![value_info(OUTPUT, float, &[None, Some(1)])],
        ..GraphProto::default()
    };
    ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET_VERSION,
        }],
        producer_name: "quiver".into(),
        graph: Some(graph),
        ..ModelProto::default()
    }
    .encode_to_vec()
}

/// The signature file (JSON) of [`linear_model`] with `features` weights: float32
/// `features [-1, K]` in, float32 `score [-1, 1]` out. Panics if `features` is 0.
pub fn signature_json(features: usize) -> String {
    assert!(features > 0, "a linear model needs at least one feature");
    let tensor = |name: &str, width: usize| TensorJson {
        name: name.into(),
        dtype: "float32".into(),
        shape: vec![
            -1,
            i64::try_from(width).expect("a feature count fits an i64"),
        ],
        optional: false,
    };
    let signature = SignatureJson {
        inputs: vec![tensor(INPUT, features)],
        outputs: vec![tensor(OUTPUT, 1)],
    };
    serde_json::to_string_pretty(&signature).expect("a signature serializes") + "\n"
}

fn node(op_type: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        name: output.into(),
        op_type: op_type.into(),
        input: inputs.iter().map(|&input| input.into()).collect(),
        output: vec![output.into()],
        ..NodeProto::default()
    }
}

/// A tensor's name and type; `None` in `dims` is the batch size `N`.
fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|size| Dimension {
            value: Some(match size {
                Some(size) => dimension::Value::DimValue(*size),
                None => dimension::Value::DimParam("N".into()),
            }),
            ..Dimension::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}
