//! Signatures as people write them: a JSON file with `inputs` and `outputs`,
//! each tensor a name, a dtype, a shape (-1 = any size) and whether it is
//! optional. The same structs print a version's signature in `--output json`,
//! so what `quiver version show` prints can be fed back to `register`.
//!
//! ```json
//! {"inputs":[{"name":"x","dtype":"float32","shape":[-1,128],"optional":false}],
//!  "outputs":[{"name":"score","dtype":"float32","shape":[-1]}]}
//! ```
//!
//! An MLflow `MLmodel` file is read too (`mlmodel`); [`parse_signature_file`]
//! tells the two apart. [`SignatureJson::to_schema`] gives the plain
//! `quiver_api::schema::Schema` that compatibility and request validation take.

mod mlmodel;
#[cfg(test)]
mod mlmodel_tests;
mod yaml_lines;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::proto;
use quiver_api::schema::{Dtype, Field, Schema};

pub use mlmodel::parse_mlmodel;

/// Parses a signature file of either kind: an MLflow `MLmodel` file (named
/// `MLmodel`, or any file whose text does not start with `{`) or a JSON
/// signature file.
pub fn parse_signature_file(file_name: &str, text: &str) -> Result<SignatureJson, SignatureError> {
    if file_name == "MLmodel" || !text.trim_start().starts_with('{') {
        parse_mlmodel(text)
    } else {
        SignatureJson::parse(text)
    }
}

/// The dtypes a tensor may have (see `TensorSpec` in the proto).
pub const DTYPES: &[&str] = &[
    "float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "int64", "uint8",
    "bool", "string",
];

/// Most tensors on one side (inputs or outputs) of a signature.
pub const SIGNATURE_TENSORS_MAX: usize = 1024;
/// Most axes of one tensor.
pub const TENSOR_RANK_MAX: usize = 32;
/// Longest tensor name, in bytes.
pub const TENSOR_NAME_BYTES_MAX: usize = 256;
/// Largest signature file read, in bytes.
pub const SIGNATURE_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// A signature in its JSON form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureJson {
    #[serde(default)]
    pub inputs: Vec<TensorJson>,
    #[serde(default)]
    pub outputs: Vec<TensorJson>,
}

/// One tensor in JSON form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorJson {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
    #[serde(default)]
    pub optional: bool,
}

/// What is wrong with a signature, naming the field (`inputs[1].dtype`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signature is not valid JSON: {0}")]
    Json(String),
    #[error("signature field {field}: {reason}")]
    Field { field: String, reason: String },
}

impl SignatureJson {
    /// Parses and validates the JSON text of a signature file.
    pub fn parse(text: &str) -> Result<SignatureJson, SignatureError> {
        let signature: SignatureJson =
            serde_json::from_str(text).map_err(|error| SignatureError::Json(error.to_string()))?;
        signature.validate()?;
        Ok(signature)
    }

    /// Checks dtypes, shapes, names and limits.
    pub fn validate(&self) -> Result<(), SignatureError> {
        for (side, tensors) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            if tensors.len() > SIGNATURE_TENSORS_MAX {
                return Err(field(
                    side,
                    format!(
                        "{} tensors, more than the limit of {SIGNATURE_TENSORS_MAX}",
                        tensors.len()
                    ),
                ));
            }
            let mut names = BTreeSet::new();
            for (index, tensor) in tensors.iter().enumerate() {
                let at = format!("{side}[{index}]");
                tensor.validate(&at)?;
                if !names.insert(tensor.name.as_str()) {
                    return Err(field(
                        &format!("{at}.name"),
                        format!(
                            "{:?} appears twice in {side}; names must be unique",
                            tensor.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The signature as a schema; checks it first.
    pub fn to_schema(&self) -> Result<Schema, SignatureError> {
        self.validate()?;
        let fields = |side: &str, tensors: &[TensorJson]| {
            tensors
                .iter()
                .enumerate()
                .map(|(index, tensor)| {
                    let dtype = Dtype::parse(&tensor.dtype).ok_or_else(|| {
                        field(
                            &format!("{side}[{index}].dtype"),
                            format!("unknown dtype {:?}", tensor.dtype),
                        )
                    })?;
                    Ok(Field {
                        name: tensor.name.clone(),
                        dtype,
                        shape: tensor.shape.clone(),
                        optional: tensor.optional,
                    })
                })
                .collect::<Result<Vec<Field>, SignatureError>>()
        };
        Ok(Schema {
            inputs: fields("inputs", &self.inputs)?,
            outputs: fields("outputs", &self.outputs)?,
        })
    }

    pub fn to_proto(&self) -> proto::Signature {
        proto::Signature {
            inputs: self.inputs.iter().map(TensorJson::to_proto).collect(),
            outputs: self.outputs.iter().map(TensorJson::to_proto).collect(),
        }
    }

    pub fn from_proto(signature: &proto::Signature) -> SignatureJson {
        SignatureJson {
            inputs: signature
                .inputs
                .iter()
                .map(TensorJson::from_proto)
                .collect(),
            outputs: signature
                .outputs
                .iter()
                .map(TensorJson::from_proto)
                .collect(),
        }
    }
}

impl TensorJson {
    fn validate(&self, at: &str) -> Result<(), SignatureError> {
        if self.name.trim().is_empty() {
            return Err(field(
                &format!("{at}.name"),
                "is empty; name every tensor".into(),
            ));
        }
        if self.name.len() > TENSOR_NAME_BYTES_MAX {
            return Err(field(
                &format!("{at}.name"),
                format!("is longer than {TENSOR_NAME_BYTES_MAX} bytes"),
            ));
        }
        if !DTYPES.contains(&self.dtype.as_str()) {
            return Err(field(
                &format!("{at}.dtype"),
                format!(
                    "unknown dtype {:?} (expected one of {})",
                    self.dtype,
                    DTYPES.join(", ")
                ),
            ));
        }
        if self.shape.len() > TENSOR_RANK_MAX {
            return Err(field(
                &format!("{at}.shape"),
                format!("has {} axes, more than {TENSOR_RANK_MAX}", self.shape.len()),
            ));
        }
        for (axis, size) in self.shape.iter().enumerate() {
            if *size < -1 || *size == 0 {
                return Err(field(
                    &format!("{at}.shape[{axis}]"),
                    format!("{size} is not a size; use a positive size or -1 for any size"),
                ));
            }
        }
        Ok(())
    }

    fn to_proto(&self) -> proto::TensorSpec {
        proto::TensorSpec {
            name: self.name.clone(),
            dtype: self.dtype.clone(),
            shape: self.shape.clone(),
            optional: self.optional,
        }
    }

    fn from_proto(tensor: &proto::TensorSpec) -> TensorJson {
        TensorJson {
            name: tensor.name.clone(),
            dtype: tensor.dtype.clone(),
            shape: tensor.shape.clone(),
            optional: tensor.optional,
        }
    }
}

fn field(name: &str, reason: String) -> SignatureError {
    SignatureError::Field {
        field: name.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form_into_the_proto() {
        let text = r#"{"inputs":[{"name":"x","dtype":"float32","shape":[-1,128],"optional":false}],
                       "outputs":[{"name":"score","dtype":"float32","shape":[-1]}]}"#;
        let signature = SignatureJson::parse(text).unwrap().to_proto();
        assert_eq!(signature.inputs.len(), 1);
        assert_eq!(signature.inputs[0].shape, vec![-1, 128]);
        assert_eq!(signature.outputs[0].name, "score");
        assert!(!signature.outputs[0].optional);
        // Round trip through the proto gives the same JSON.
        let back = SignatureJson::from_proto(&signature);
        assert_eq!(back, SignatureJson::parse(text).unwrap());
    }

    #[test]
    fn errors_name_the_field() {
        let error = SignatureJson::parse(
            r#"{"inputs":[{"name":"x","dtype":"float32","shape":[1]},{"name":"y","dtype":"float","shape":[1]}]}"#,
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("signature field inputs[1].dtype: unknown dtype \"float\""),
            "{error}"
        );

        let error =
            SignatureJson::parse(r#"{"outputs":[{"name":"y","dtype":"int64","shape":[-1,0]}]}"#)
                .unwrap_err();
        assert_eq!(
            error,
            SignatureError::Field {
                field: "outputs[0].shape[1]".into(),
                reason: "0 is not a size; use a positive size or -1 for any size".into()
            }
        );

        let error = SignatureJson::parse(
            r#"{"inputs":[{"name":"x","dtype":"bool","shape":[]},{"name":"x","dtype":"bool","shape":[]}]}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("inputs[1].name"), "{error}");

        let error = SignatureJson::parse(r#"{"inputs":[{"name":" ","dtype":"bool","shape":[]}]}"#)
            .unwrap_err();
        assert!(
            error.to_string().contains("inputs[0].name: is empty"),
            "{error}"
        );
    }

    #[test]
    fn json_errors_name_missing_and_unknown_fields() {
        let error = SignatureJson::parse(r#"{"inputs":[{"name":"x","shape":[1]}]}"#).unwrap_err();
        assert!(
            error.to_string().contains("missing field `dtype`"),
            "{error}"
        );
        let error = SignatureJson::parse(r#"{"input":[]}"#).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `input`"),
            "{error}"
        );
        let error = SignatureJson::parse("not json").unwrap_err();
        assert!(matches!(error, SignatureError::Json(_)));
    }
}
