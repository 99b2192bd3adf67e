//! Model signatures as plain data: a [`Schema`] of input and output
//! [`Field`]s, what changed between two of them ([`compatibility`]) and what
//! is wrong with a prediction request ([`validate_request`]).
//!
//! Pure code: no I/O, no protobuf, deterministic answers (findings sorted),
//! so the node's promotion gates, the serving agent and the CLI can share it.
//! The JSON form is the signature file's (`{"inputs": [{"name", "dtype",
//! "shape", "optional"}], "outputs": [...]}`).

mod compat;
mod request;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use compat::{compatibility, Change, ChangeKind, Compatibility, Side};
pub use request::{
    validate_request, Violation, ViolationKind, REQUEST_DEPTH_MAX, REQUEST_ELEMENTS_MAX,
    VIOLATIONS_MAX,
};

/// Most fields on one side (inputs or outputs) of a schema.
pub const SCHEMA_FIELDS_MAX: usize = 1024;
/// Most axes of one field.
pub const FIELD_RANK_MAX: usize = 32;
/// Longest field name, in bytes.
pub const FIELD_NAME_BYTES_MAX: usize = 256;

/// A shape dimension that accepts any size.
pub const ANY_SIZE: i64 = -1;

/// The element type of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Float32,
    Float16,
    Bfloat16,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint8,
    Bool,
    String,
}

impl Dtype {
    /// Every dtype, in the order the proto documents them.
    pub const ALL: [Dtype; 11] = [
        Dtype::Float32,
        Dtype::Float16,
        Dtype::Bfloat16,
        Dtype::Float64,
        Dtype::Int8,
        Dtype::Int16,
        Dtype::Int32,
        Dtype::Int64,
        Dtype::Uint8,
        Dtype::Bool,
        Dtype::String,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dtype::Float32 => "float32",
            Dtype::Float16 => "float16",
            Dtype::Bfloat16 => "bfloat16",
            Dtype::Float64 => "float64",
            Dtype::Int8 => "int8",
            Dtype::Int16 => "int16",
            Dtype::Int32 => "int32",
            Dtype::Int64 => "int64",
            Dtype::Uint8 => "uint8",
            Dtype::Bool => "bool",
            Dtype::String => "string",
        }
    }

    /// The dtype named `name` exactly (lower case), if there is one.
    pub fn parse(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|dtype| dtype.name() == name)
    }

    /// The names of every dtype, comma separated, for error messages.
    pub fn names() -> String {
        Dtype::ALL.map(Dtype::name).join(", ")
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One named tensor of a schema. `shape` lists each axis's size; -1
/// ([`ANY_SIZE`]) accepts any size, and an empty shape is a scalar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<i64>,
    #[serde(default)]
    pub optional: bool,
}

/// A model's signature: its inputs in order (positional requests follow this
/// order) and its outputs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    #[serde(default)]
    pub inputs: Vec<Field>,
    #[serde(default)]
    pub outputs: Vec<Field>,
}

/// What is wrong with a schema, naming the field (`inputs[1].shape[0]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signature field {field}: {reason}")]
pub struct SchemaError {
    pub field: String,
    pub reason: String,
}

impl Schema {
    /// Checks names (present, unique, bounded), shapes (positive sizes or
    /// -1, bounded rank) and the number of fields.
    pub fn check(&self) -> Result<(), SchemaError> {
        for (side, fields) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            if fields.len() > SCHEMA_FIELDS_MAX {
                return Err(error(
                    side,
                    format!(
                        "{} fields, more than the limit of {SCHEMA_FIELDS_MAX}",
                        fields.len()
                    ),
                ));
            }
            let mut names = BTreeSet::new();
            for (index, field) in fields.iter().enumerate() {
                let at = format!("{side}[{index}]");
                field.check(&at)?;
                if !names.insert(field.name.as_str()) {
                    return Err(error(
                        &format!("{at}.name"),
                        format!(
                            "{:?} appears twice in {side}; names must be unique",
                            field.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The input named `name`, with its position.
    pub fn input(&self, name: &str) -> Option<(usize, &Field)> {
        self.inputs
            .iter()
            .enumerate()
            .find(|(_, field)| field.name == name)
    }
}

impl Field {
    fn check(&self, at: &str) -> Result<(), SchemaError> {
        if self.name.trim().is_empty() {
            return Err(error(
                &format!("{at}.name"),
                "is empty; name every tensor".into(),
            ));
        }
        if self.name.len() > FIELD_NAME_BYTES_MAX {
            return Err(error(
                &format!("{at}.name"),
                format!("is longer than {FIELD_NAME_BYTES_MAX} bytes"),
            ));
        }
        if self.name.contains('\0') {
            return Err(error(
                &format!("{at}.name"),
                "contains a NUL character".into(),
            ));
        }
        if self.shape.len() > FIELD_RANK_MAX {
            return Err(error(
                &format!("{at}.shape"),
                format!("has {} axes, more than {FIELD_RANK_MAX}", self.shape.len()),
            ));
        }
        for (axis, size) in self.shape.iter().enumerate() {
            if *size < ANY_SIZE || *size == 0 {
                return Err(error(
                    &format!("{at}.shape[{axis}]"),
                    format!("{size} is not a size; use a positive size or -1 for any size"),
                ));
            }
        }
        Ok(())
    }
}

/// A shape as users write it: `[-1, 128]`, `[]` for a scalar.
pub fn shape_text(shape: &[i64]) -> String {
    let sizes: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", sizes.join(", "))
}

fn error(field: &str, reason: String) -> SchemaError {
    SchemaError {
        field: field.to_string(),
        reason,
    }
}
