//! One input's value against its field: shape, raggedness, dtype.

use serde_json::Value;

use super::report::{kind_of, shown_value, Collector};
use super::ViolationKind;
use crate::schema::{shape_text, Dtype, Field, ANY_SIZE};

/// Walks one input's value against its field, remembering the first length
/// seen at each axis to find ragged arrays.
pub(super) struct Tensor<'a> {
    field: &'a Field,
    /// Per axis: the first length seen and where.
    lengths: Vec<Option<(usize, String)>>,
}

impl<'a> Tensor<'a> {
    pub(super) fn new(field: &'a Field) -> Tensor<'a> {
        Tensor {
            field,
            lengths: vec![None; field.shape.len()],
        }
    }

    pub(super) fn walk(
        &mut self,
        value: &Value,
        axis: usize,
        path: &mut String,
        out: &mut Collector,
    ) {
        if out.stop() {
            return;
        }
        let field = self.field;
        let shape = &field.shape;
        if axis >= shape.len() {
            match value {
                Value::Array(_) => out.push(ViolationKind::WrongShape, &field.name, path, || {
                    format!(
                        "{} is nested deeper than shape {} (rank {}) allows",
                        kind_of(value),
                        shape_text(shape),
                        shape.len()
                    )
                }),
                _ => {
                    if let Some(reason) = dtype_mismatch(field.dtype, value) {
                        out.push(ViolationKind::WrongDtype, &field.name, path, || reason);
                    }
                }
            }
            return;
        }
        let Value::Array(items) = value else {
            out.push(ViolationKind::WrongShape, &field.name, path, || {
                format!(
                    "expected a list for axis {axis} of shape {} (rank {}), found {}",
                    shape_text(shape),
                    shape.len(),
                    kind_of(value)
                )
            });
            return;
        };
        let expected = shape[axis];
        if expected != ANY_SIZE && items.len() as i64 != expected {
            out.push(ViolationKind::WrongShape, &field.name, path, || {
                format!(
                    "axis {axis} has {} values; shape {} needs {expected}",
                    items.len(),
                    shape_text(shape)
                )
            });
        } else {
            match &self.lengths[axis] {
                None => self.lengths[axis] = Some((items.len(), path.clone())),
                Some((first, at)) if *first != items.len() => {
                    out.push(ViolationKind::Ragged, &field.name, path, || {
                        format!(
                            "axis {axis} has {} values here but {first} at {at}: nested lists \
                             must be rectangular",
                            items.len()
                        )
                    })
                }
                Some(_) => {}
            }
        }
        let base = path.len();
        for (index, item) in items.iter().enumerate() {
            path.push_str(&format!("[{index}]"));
            self.walk(item, axis + 1, path, out);
            path.truncate(base);
        }
    }
}

/// Why `value` is not an element of `dtype`, if it is not.
fn dtype_mismatch(dtype: Dtype, value: &Value) -> Option<String> {
    let (low, high): (i64, i64) = match dtype {
        Dtype::Bool => {
            return (!value.is_boolean())
                .then(|| format!("{} is not a bool (true or false)", shown_value(value)));
        }
        Dtype::String => {
            return (!value.is_string()).then(|| format!("{} is not a string", shown_value(value)));
        }
        Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float32 | Dtype::Float64 => {
            let Some(number) = value.as_f64() else {
                return Some(format!("{} is not a number ({dtype})", shown_value(value)));
            };
            let largest = match dtype {
                Dtype::Float16 => 65504.0,
                Dtype::Bfloat16 => 3.389_531_389_251_535_5e38,
                Dtype::Float32 => f64::from(f32::MAX),
                _ => f64::MAX,
            };
            return (!number.is_finite() || number.abs() > largest).then(|| {
                format!("{number} is out of range for {dtype} (largest magnitude {largest:e})")
            });
        }
        Dtype::Int8 => (i8::MIN.into(), i8::MAX.into()),
        Dtype::Int16 => (i16::MIN.into(), i16::MAX.into()),
        Dtype::Int32 => (i32::MIN.into(), i32::MAX.into()),
        Dtype::Int64 => (i64::MIN, i64::MAX),
        Dtype::Uint8 => (0, u8::MAX.into()),
    };
    let Value::Number(number) = value else {
        return Some(format!(
            "{} is not an integer ({dtype})",
            shown_value(value)
        ));
    };
    let out_of_range = || {
        Some(format!(
            "{number} is out of range for {dtype} ({low} to {high})"
        ))
    };
    let integer = if let Some(integer) = number.as_i64() {
        integer
    } else if number.is_u64() {
        return out_of_range();
    } else {
        let float = number.as_f64().unwrap_or(f64::NAN);
        if float.fract() != 0.0 || !float.is_finite() {
            return Some(format!("{number} is not a whole number ({dtype})"));
        }
        // 2^63: every integral f64 below it in magnitude converts exactly.
        if float.abs() >= 9_223_372_036_854_775_808.0 {
            return out_of_range();
        }
        float as i64
    };
    if integer < low || integer > high {
        return out_of_range();
    }
    None
}
