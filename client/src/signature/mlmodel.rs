//! A signature from an MLflow `MLmodel` file. Its `signature:` block holds
//! `inputs:` and `outputs:`, each a JSON string: column-based
//! (`[{"name": "x", "type": "double", "required": true}]`) or tensor-based
//! (`[{"name": "x", "type": "tensor", "tensor-spec": {"dtype": "float32",
//! "shape": [-1, 4]}}]`). A column becomes a field of shape `[-1]` (one value
//! per row); `"required": false` makes it optional; an unnamed column or
//! tensor is named by its position (`"0"`, `"1"`, like pandas' default
//! column names). Types without a Quiver dtype (binary, datetime, nested
//! types, numpy `object`) are refused, naming the field.

use serde_json::{Map, Value};

use super::yaml_lines::signature_block;
use super::{SignatureError, SignatureJson, TensorJson};

/// Reads the signature of an `MLmodel` file's text and checks it.
pub fn parse_mlmodel(text: &str) -> Result<SignatureJson, SignatureError> {
    let Some(block) = signature_block(text)? else {
        return Err(SignatureError::Field {
            field: "signature".into(),
            reason: "the MLmodel file has no signature; log the model with one \
                     (signature=infer_signature(...)) or give a JSON signature file"
                .into(),
        });
    };
    let mut signature = SignatureJson::default();
    for (key, value) in block {
        let side = match key.as_str() {
            "inputs" => &mut signature.inputs,
            "outputs" => &mut signature.outputs,
            // Inference parameters are not part of a Quiver signature.
            _ => continue,
        };
        if let Some(json) = value {
            *side = tensors(&key, &json)?;
        }
    }
    signature.validate()?;
    Ok(signature)
}

fn tensors(side: &str, json: &str) -> Result<Vec<TensorJson>, SignatureError> {
    let at = format!("signature.{side}");
    let value: Value = serde_json::from_str(json)
        .map_err(|error| field(&at, format!("is not valid JSON: {error}")))?;
    let specs = match value {
        Value::Array(specs) => specs,
        Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(field(
                &at,
                "is not a JSON list of columns or tensors".into(),
            ))
        }
    };
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let at = format!("{at}[{index}]");
            let Value::Object(spec) = spec else {
                return Err(field(&at, "is not a JSON object".into()));
            };
            tensor(&at, index, spec)
        })
        .collect()
}

fn tensor(at: &str, index: usize, spec: &Map<String, Value>) -> Result<TensorJson, SignatureError> {
    let name = match spec.get("name") {
        None | Some(Value::Null) => index.to_string(),
        Some(Value::String(name)) => name.clone(),
        Some(_) => return Err(field(&format!("{at}.name"), "is not a string".into())),
    };
    let optional = match spec.get("required") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(required)) => !required,
        Some(_) => {
            return Err(field(
                &format!("{at}.required"),
                "is not true or false".into(),
            ))
        }
    };
    let Some(Value::String(kind)) = spec.get("type") else {
        return Err(field(
            &format!("{at}.type"),
            "is missing or not a string".into(),
        ));
    };
    let (dtype, shape) = if kind == "tensor" {
        tensor_spec(at, spec.get("tensor-spec"))?
    } else {
        (column_dtype(&format!("{at}.type"), kind)?, vec![-1])
    };
    Ok(TensorJson {
        name,
        dtype: dtype.to_string(),
        shape,
        optional,
    })
}

fn tensor_spec(at: &str, spec: Option<&Value>) -> Result<(&'static str, Vec<i64>), SignatureError> {
    let at = format!("{at}.tensor-spec");
    let Some(Value::Object(spec)) = spec else {
        return Err(field(&at, "is missing or not an object".into()));
    };
    let Some(Value::String(dtype)) = spec.get("dtype") else {
        return Err(field(
            &format!("{at}.dtype"),
            "is missing or not a string".into(),
        ));
    };
    let dtype = numpy_dtype(&format!("{at}.dtype"), dtype)?;
    let Some(Value::Array(sizes)) = spec.get("shape") else {
        return Err(field(
            &format!("{at}.shape"),
            "is missing or not a list".into(),
        ));
    };
    let shape = sizes
        .iter()
        .enumerate()
        .map(|(axis, size)| {
            size.as_i64()
                .ok_or_else(|| field(&format!("{at}.shape[{axis}]"), "is not an integer".into()))
        })
        .collect::<Result<_, _>>()?;
    Ok((dtype, shape))
}

/// MLflow's column types (`mlflow.types.DataType`) as Quiver dtypes.
fn column_dtype(at: &str, kind: &str) -> Result<&'static str, SignatureError> {
    Ok(match kind {
        "double" => "float64",
        "float" => "float32",
        "long" => "int64",
        "integer" => "int32",
        "boolean" => "bool",
        "string" => "string",
        "binary" => {
            return Err(field(
                at,
                "binary columns have no Quiver dtype; send the bytes base64-encoded as a \
                 string column and declare it string"
                    .into(),
            ))
        }
        "datetime" => {
            return Err(field(
                at,
                "datetime columns have no Quiver dtype; declare them as string (ISO 8601) \
                 or int64 (epoch time)"
                    .into(),
            ))
        }
        "array" | "object" | "map" | "any" => {
            return Err(field(
                at,
                format!("{kind} columns (nested types) are not supported; use a tensor spec"),
            ))
        }
        other => {
            return Err(field(
                at,
                format!(
                    "unknown MLflow column type {:?} (expected double, float, long, integer, \
                     boolean or string)",
                    other.chars().take(40).collect::<String>()
                ),
            ))
        }
    })
}

/// numpy dtype names in a tensor spec as Quiver dtypes.
fn numpy_dtype(at: &str, dtype: &str) -> Result<&'static str, SignatureError> {
    Ok(match dtype {
        "float16" => "float16",
        "float32" => "float32",
        "float64" => "float64",
        "int8" => "int8",
        "int16" => "int16",
        "int32" => "int32",
        "int64" => "int64",
        "uint8" => "uint8",
        "bool" => "bool",
        "str" => "string",
        other => {
            return Err(field(
                at,
                format!(
                    "numpy dtype {:?} has no Quiver dtype (expected float16, float32, float64, \
                     int8, int16, int32, int64, uint8, bool or str)",
                    other.chars().take(40).collect::<String>()
                ),
            ))
        }
    })
}

fn field(name: &str, reason: String) -> SignatureError {
    SignatureError::Field {
        field: name.to_string(),
        reason,
    }
}
