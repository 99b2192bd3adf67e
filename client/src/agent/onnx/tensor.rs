//! An input's JSON value as a tensor of the model's dtype, and an output tensor as nested JSON
//! lists. Both count what they build against a [`Budget`] before allocating it.

use serde_json::{Number, Value};
use tract_onnx::prelude::{Datum, DatumType, Tensor};

use super::body::Source;
use quiver_api::schema::FIELD_RANK_MAX;

/// What is left of one request's allowance of elements.
pub(super) struct Budget {
    left: usize,
    max: usize,
}

impl Budget {
    pub(super) fn new(max: usize) -> Budget {
        Budget { left: max, max }
    }

    /// Takes `count` elements (`None`: more than a `usize` counts), or says the request is too
    /// large.
    fn take(&mut self, count: Option<usize>) -> Result<(), String> {
        match count.and_then(|count| self.left.checked_sub(count)) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(format!(
                "the request's tensors hold more than {} elements; send fewer examples per \
                 request",
                self.max
            )),
        }
    }
}

/// The element types an input may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Element {
    F32,
    F64,
    I32,
    I64,
}

impl Element {
    pub(super) fn of(datum_type: DatumType) -> Option<Element> {
        match datum_type {
            DatumType::F32 => Some(Element::F32),
            DatumType::F64 => Some(Element::F64),
            DatumType::I32 => Some(Element::I32),
            DatumType::I64 => Some(Element::I64),
            _ => None,
        }
    }

    /// What the values of this type are, for messages.
    fn values(self) -> &'static str {
        match self {
            Element::F32 => "numbers of magnitude up to 3.4e38",
            Element::F64 => "numbers",
            Element::I32 => "whole numbers from -2147483648 to 2147483647",
            Element::I64 => "whole numbers from -2^63 to 2^63-1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Element::F32 => "float32",
            Element::F64 => "float64",
            Element::I32 => "int32",
            Element::I64 => "int64",
        }
    }
}

/// One input of a loaded model, as requests are checked against it.
#[derive(Debug)]
pub(super) struct Input {
    pub(super) name: String,
    element: Element,
    /// Per axis, the size the model fixes, if it does.
    sizes: Vec<Option<usize>>,
    /// The shape as the model has it, for messages (`[N, 3]`).
    shape: String,
}

impl Input {
    pub(super) fn new(
        name: String,
        element: Element,
        sizes: Vec<Option<usize>>,
        shape: Vec<String>,
    ) -> Input {
        assert!(sizes.len() == shape.len() && sizes.len() <= FIELD_RANK_MAX);
        Input {
            name,
            element,
            sizes,
            shape: format!("[{}]", shape.join(", ")),
        }
    }

    pub(super) fn rank(&self) -> usize {
        self.sizes.len()
    }

    /// The tensor `source` gives this input, if it fits its rank, fixed sizes and dtype.
    pub(super) fn tensor(&self, source: &Source, budget: &mut Budget) -> Result<Tensor, String> {
        match self.element {
            Element::F32 => self.build::<f32>(source, budget),
            Element::F64 => self.build::<f64>(source, budget),
            Element::I32 => self.build::<i32>(source, budget),
            Element::I64 => self.build::<i64>(source, budget),
        }
    }

    fn build<T: Scalar>(&self, source: &Source, budget: &mut Budget) -> Result<Tensor, String> {
        // A scalar input given as a column of one row is that row's value.
        let single;
        let source = match source {
            Source::Rows(rows) if self.rank() == 0 && rows.len() == 1 => {
                single = Source::Whole(rows[0]);
                &single
            }
            other => other,
        };
        let dims = self.dims(source)?;
        let count = if dims.contains(&0) {
            Some(0)
        } else {
            dims.iter()
                .try_fold(1usize, |count, &dim| count.checked_mul(dim))
        };
        budget.take(count)?;
        let mut data: Vec<T> = Vec::with_capacity(count.unwrap_or(0));
        match source {
            Source::Whole(value) => self.fill(value, 0, &dims, &mut data)?,
            Source::Rows(rows) => {
                for row in rows {
                    self.fill(row, 1, &dims, &mut data)?;
                }
            }
        }
        if Some(data.len()) != count {
            return Err(format!(
                "input {:?}: read {} values for shape {dims:?}",
                self.name,
                data.len()
            ));
        }
        Tensor::from_shape(&dims, &data).map_err(|error| format!("input {:?}: {error}", self.name))
    }

    /// The shape of `source`, read along the first value of each axis and checked against the
    /// sizes the model fixes. An empty list leaves the axes below it at the model's size, or 0.
    fn dims(&self, source: &Source) -> Result<Vec<usize>, String> {
        let rank = self.rank();
        let mut dims = Vec::with_capacity(rank);
        let mut value = match source {
            Source::Whole(value) => Some(*value),
            Source::Rows(rows) => {
                if rank == 0 {
                    return Err(format!(
                        "input {:?} is a single value ({} {}); it takes one row, found {}",
                        self.name,
                        self.element.name(),
                        self.shape,
                        rows.len()
                    ));
                }
                dims.push(rows.len());
                rows.first().copied()
            }
        };
        while dims.len() < rank {
            let axis = dims.len();
            match value {
                None => dims.push(self.sizes[axis].unwrap_or(0)),
                Some(Value::Array(items)) => {
                    dims.push(items.len());
                    value = items.first();
                }
                Some(other) => {
                    return Err(format!(
                        "input {:?} takes shape {} (rank {rank}); found {} where axis {axis} \
                         needs a list",
                        self.name,
                        self.shape,
                        describe(other)
                    ))
                }
            }
        }
        for (axis, (&dim, size)) in dims.iter().zip(&self.sizes).enumerate() {
            if let Some(size) = size.filter(|&size| size != dim) {
                return Err(format!(
                    "input {:?} takes shape {}; axis {axis} has length {dim}, not {size}",
                    self.name, self.shape
                ));
            }
        }
        Ok(dims)
    }

    /// Appends the elements of `value`, which sits at `axis` of a tensor of shape `dims`.
    /// Recursion is as deep as the rank, at most `FIELD_RANK_MAX`.
    fn fill<T: Scalar>(
        &self,
        value: &Value,
        axis: usize,
        dims: &[usize],
        data: &mut Vec<T>,
    ) -> Result<(), String> {
        let Some(&dim) = dims.get(axis) else {
            let element = T::read(value).ok_or_else(|| match value {
                Value::Array(_) => format!(
                    "input {:?} takes shape {} (rank {}); found lists nested deeper",
                    self.name,
                    self.shape,
                    dims.len()
                ),
                _ => format!(
                    "input {:?} takes {} values ({}); {} is not one",
                    self.name,
                    self.element.name(),
                    self.element.values(),
                    describe(value)
                ),
            })?;
            data.push(element);
            return Ok(());
        };
        let Value::Array(items) = value else {
            return Err(format!(
                "input {:?} takes shape {}; found {} where axis {axis} needs a list",
                self.name,
                self.shape,
                describe(value)
            ));
        };
        if items.len() != dim {
            return Err(format!(
                "input {:?}: axis {axis} has {dim} values in one place and {} in another; \
                 nested lists must be rectangular",
                self.name,
                items.len()
            ));
        }
        for item in items {
            self.fill(item, axis + 1, dims, data)?;
        }
        Ok(())
    }
}

/// An element type read from JSON numbers: only values it holds exactly or, for floats, to
/// its precision (never an infinity).
trait Scalar: Datum + Copy {
    fn read(value: &Value) -> Option<Self>;
}

impl Scalar for f32 {
    fn read(value: &Value) -> Option<f32> {
        let number = value.as_f64()?;
        // The cast rounds to the nearest f32; the bound keeps it finite.
        (number.is_finite() && number.abs() <= f64::from(f32::MAX)).then_some(number as f32)
    }
}

impl Scalar for f64 {
    fn read(value: &Value) -> Option<f64> {
        value.as_f64().filter(|number| number.is_finite())
    }
}

impl Scalar for i64 {
    fn read(value: &Value) -> Option<i64> {
        whole(value)
    }
}

impl Scalar for i32 {
    fn read(value: &Value) -> Option<i32> {
        whole(value).and_then(|number| i32::try_from(number).ok())
    }
}

/// A JSON number that is a whole number in the range of an `i64` (`3` or `3.0`).
fn whole(value: &Value) -> Option<i64> {
    if let Some(number) = value.as_i64() {
        return Some(number);
    }
    if value.is_u64() {
        return None;
    }
    let number = value.as_f64()?;
    // 2^63: every whole f64 below it in magnitude converts exactly.
    (number.fract() == 0.0 && number.abs() < 9_223_372_036_854_775_808.0).then_some(number as i64)
}

/// The output tensor `name` as nested JSON lists (a scalar as itself).
pub(super) fn to_json(name: &str, tensor: &Tensor, budget: &mut Budget) -> Result<Value, String> {
    let dims = tensor.shape();
    if dims.len() > FIELD_RANK_MAX {
        return Err(format!(
            "output {name:?} has {} axes, more than {FIELD_RANK_MAX}",
            dims.len()
        ));
    }
    budget.take(json_values(dims))?;
    let failed = |error: tract_onnx::prelude::TractError| format!("output {name:?}: {error}");
    let flat: Vec<Value> = match tensor.datum_type() {
        DatumType::F16 | DatumType::F32 | DatumType::F64 => {
            let cast = tensor.cast_to::<f64>().map_err(failed)?;
            let view = cast.to_plain_array_view::<f64>().map_err(failed)?;
            view.iter()
                .map(|&number| {
                    Number::from_f64(number).map(Value::Number).ok_or_else(|| {
                        format!("output {name:?} holds {number}, which JSON cannot carry")
                    })
                })
                .collect::<Result<_, String>>()?
        }
        DatumType::I8
        | DatumType::I16
        | DatumType::I32
        | DatumType::I64
        | DatumType::U8
        | DatumType::U16
        | DatumType::U32 => {
            let cast = tensor.cast_to::<i64>().map_err(failed)?;
            let view = cast.to_plain_array_view::<i64>().map_err(failed)?;
            view.iter().map(|&number| Value::from(number)).collect()
        }
        DatumType::U64 => {
            let view = tensor.to_plain_array_view::<u64>().map_err(failed)?;
            view.iter().map(|&number| Value::from(number)).collect()
        }
        DatumType::Bool => {
            let view = tensor.to_plain_array_view::<bool>().map_err(failed)?;
            view.iter().map(|&flag| Value::Bool(flag)).collect()
        }
        other => {
            return Err(format!(
                "output {name:?} has dtype {other:?}, which the onnx runtime cannot answer in JSON"
            ))
        }
    };
    let mut flat = flat.into_iter();
    let nested = nest(dims, &mut flat);
    assert!(flat.next().is_none(), "a tensor's elements fill its shape");
    Ok(nested)
}

/// How many JSON values (lists and elements) a tensor of shape `dims` becomes.
fn json_values(dims: &[usize]) -> Option<usize> {
    let mut count = 0usize;
    let mut level = 1usize;
    for &dim in dims {
        count = count.checked_add(level)?;
        level = level.checked_mul(dim)?;
    }
    count.checked_add(level)
}

fn nest(dims: &[usize], flat: &mut impl Iterator<Item = Value>) -> Value {
    match dims.split_first() {
        None => flat.next().unwrap_or(Value::Null),
        Some((&len, rest)) => Value::Array((0..len).map(|_| nest(rest, flat)).collect()),
    }
}

/// A JSON value as messages show it: scalars as written (long strings cut), containers by
/// kind.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
        Value::String(text) if text.chars().count() > 32 => {
            let cut: String = text.chars().take(32).collect();
            format!("{cut:?}…")
        }
        scalar => scalar.to_string(),
    }
}
