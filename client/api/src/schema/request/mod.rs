//! Checks a prediction request against a schema and reports every
//! violation, each naming the input, the place in the body (`inputs.x[2][0]`)
//! and what was expected, so it can be an HTTP 400 body as it is.
//!
//! Accepted bodies (MLflow serving's JSON forms):
//! - `{"inputs": {"x": tensor, ...}}`: inputs by name;
//! - `{"inputs": [tensor, ...]}` or `{"instances": [tensor, ...]}`: one value
//!   per input in the schema's order (trailing optional inputs may be left
//!   out); `instances` given as an object is read by name;
//! - `{"dataframe_split": {"columns": [...], "data": [[...], ...]}}`: a column
//!   per input, a row per example; a cell holds one example of its input
//!   (its shape without the first axis, which counts rows).
//!
//! A `"params"` key is ignored. Work is bounded: a body nested deeper than
//! [`REQUEST_DEPTH_MAX`] or holding more than [`REQUEST_ELEMENTS_MAX`] values
//! gets one violation saying so, and at most [`VIOLATIONS_MAX`] violations are
//! listed (then one saying how many more were found).

mod dataframe;
mod report;
mod tensor;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{shape_text, Field, Schema};
use dataframe::dataframe;
use report::{kind_of, shown, Collector};
use tensor::Tensor;

/// Deepest nesting of a request body (the body object is level 1).
pub const REQUEST_DEPTH_MAX: usize = 64;
/// Most JSON values (containers and scalars) in a request body.
pub const REQUEST_ELEMENTS_MAX: usize = 1 << 20;
/// Most violations listed; one more says how many were left out.
pub const VIOLATIONS_MAX: usize = 1000;
/// Most positions compared pairwise when looking for swapped positional inputs.
const SWAP_CANDIDATES_MAX: usize = 8;

/// The kind of a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// The body is not one of the accepted forms.
    Malformed,
    /// The body is nested too deeply or holds too many values.
    TooLarge,
    MissingInput,
    UnknownInput,
    WrongDtype,
    /// Wrong rank or a fixed axis of the wrong size.
    WrongShape,
    /// Nested arrays of one axis with different lengths.
    Ragged,
    /// Positional values or dataframe columns not in the schema's order.
    WrongOrder,
    /// More violations were found than are listed.
    Truncated,
}

/// One thing wrong with a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    /// The input it concerns; empty for the body as a whole.
    pub field: String,
    /// Where in the body, such as `inputs.x[2][0]`; empty for the body itself.
    pub path: String,
    pub message: String,
}

/// Every violation of `request` against `schema`, in the order found (body
/// order; deterministic for a given body). Empty: the request fits.
pub fn validate_request(schema: &Schema, request: &Value) -> Vec<Violation> {
    if let Some(violation) = check_bounds(request) {
        return vec![violation];
    }
    let mut out = Collector::new(VIOLATIONS_MAX, false);
    let Value::Object(body) = request else {
        out.push(ViolationKind::Malformed, "", "", || {
            format!(
                "the body is {}, not a JSON object; {FORMS}",
                kind_of(request)
            )
        });
        return out.finish();
    };
    let inputs = Inputs::new(schema);
    let mut forms = Vec::new();
    for (key, value) in body {
        match key.as_str() {
            "inputs" | "instances" | "dataframe_split" => forms.push((key.as_str(), value)),
            "params" => {}
            other => out.push(ViolationKind::Malformed, "", other, || {
                format!("unknown key {} in the body; {FORMS}", shown(other))
            }),
        }
    }
    match forms.as_slice() {
        [] => out.push(ViolationKind::Malformed, "", "", || {
            format!("the body has no inputs; {FORMS}")
        }),
        [(key, value)] => match (*key, value) {
            ("dataframe_split", Value::Object(frame)) => dataframe(&inputs, frame, &mut out),
            (key, Value::Object(named)) if key != "dataframe_split" => {
                by_name(&inputs, key, named, &mut out)
            }
            (key, Value::Array(list)) if key != "dataframe_split" => {
                by_position(&inputs, key, list, &mut out)
            }
            (key, value) => out.push(ViolationKind::Malformed, "", key, || {
                format!(
                    "{key} is {}; it must be {}",
                    kind_of(value),
                    if key == "dataframe_split" {
                        "an object with columns and data"
                    } else {
                        "an object of inputs by name or a list of inputs by position"
                    }
                )
            }),
        },
        several => {
            let keys: Vec<&str> = several.iter().map(|(key, _)| *key).collect();
            out.push(ViolationKind::Malformed, "", "", || {
                format!(
                    "the body gives {}; give only one of them",
                    keys.join(" and ")
                )
            })
        }
    }
    out.finish()
}

const FORMS: &str = "send {\"inputs\": {name: value, ...}}, {\"inputs\": [value, ...]}, \
                     {\"instances\": [...]} or {\"dataframe_split\": {\"columns\": [...], \
                     \"data\": [[...]]}}";

/// One violation if the body is too deep or too large, found without recursion.
fn check_bounds(request: &Value) -> Option<Violation> {
    let mut stack = vec![(request, 1usize)];
    let mut count = 0usize;
    while let Some((value, depth)) = stack.pop() {
        count += 1;
        let message = if depth > REQUEST_DEPTH_MAX {
            format!("the body is nested deeper than {REQUEST_DEPTH_MAX} levels")
        } else if count > REQUEST_ELEMENTS_MAX {
            format!("the body holds more than {REQUEST_ELEMENTS_MAX} values; send fewer examples per request")
        } else {
            match value {
                Value::Array(items) => stack.extend(items.iter().map(|item| (item, depth + 1))),
                Value::Object(map) => stack.extend(map.values().map(|item| (item, depth + 1))),
                _ => {}
            }
            continue;
        };
        return Some(Violation {
            kind: ViolationKind::TooLarge,
            field: String::new(),
            path: String::new(),
            message,
        });
    }
    None
}

/// The schema's inputs by name, built once per request.
struct Inputs<'a> {
    schema: &'a Schema,
    by_name: BTreeMap<&'a str, &'a Field>,
}

impl<'a> Inputs<'a> {
    fn new(schema: &'a Schema) -> Inputs<'a> {
        let mut by_name = BTreeMap::new();
        for field in &schema.inputs {
            by_name.entry(field.name.as_str()).or_insert(field);
        }
        Inputs { schema, by_name }
    }

    /// The inputs' names, for messages (the first few).
    fn names(&self) -> String {
        let mut names: Vec<String> = self
            .schema
            .inputs
            .iter()
            .take(16)
            .map(|field| shown(&field.name))
            .collect();
        if self.schema.inputs.len() > names.len() {
            names.push("…".into());
        }
        names.join(", ")
    }
}

fn by_name(inputs: &Inputs, key: &str, named: &Map<String, Value>, out: &mut Collector) {
    for (name, value) in named {
        match inputs.by_name.get(name.as_str()) {
            Some(field) => {
                let mut path = format!("{key}.{name}");
                Tensor::new(field).walk(value, 0, &mut path, out);
            }
            None => out.push(
                ViolationKind::UnknownInput,
                name,
                &format!("{key}.{name}"),
                || {
                    format!(
                        "{} is not an input of this model (its inputs: {})",
                        shown(name),
                        inputs.names()
                    )
                },
            ),
        }
    }
    for field in &inputs.schema.inputs {
        if !field.optional && !named.contains_key(&field.name) {
            out.push(ViolationKind::MissingInput, &field.name, key, || {
                format!(
                    "required input {} ({} {}) is missing",
                    shown(&field.name),
                    field.dtype,
                    shape_text(&field.shape)
                )
            });
        }
    }
}

fn by_position(inputs: &Inputs, key: &str, list: &[Value], out: &mut Collector) {
    let fields = &inputs.schema.inputs;
    let mut failed = Vec::new();
    for (position, value) in list.iter().enumerate() {
        let path = format!("{key}[{position}]");
        let Some(field) = fields.get(position) else {
            out.push(ViolationKind::UnknownInput, "", &path, || {
                format!(
                    "value {position} has no input: the model takes {} inputs ({})",
                    fields.len(),
                    inputs.names()
                )
            });
            continue;
        };
        let before = out.found;
        Tensor::new(field).walk(value, 0, &mut path.clone(), out);
        if out.found > before && failed.len() < SWAP_CANDIDATES_MAX {
            failed.push(position);
        }
    }
    for (position, field) in fields.iter().enumerate().skip(list.len()) {
        if !field.optional {
            out.push(ViolationKind::MissingInput, &field.name, key, || {
                format!(
                    "required input {} (position {position}) is missing: {key} has {} values",
                    shown(&field.name),
                    list.len()
                )
            });
        }
    }
    // Two values that each fail their own input but fit the other's were
    // most likely sent in the wrong order.
    for (index, &first) in failed.iter().enumerate() {
        for &second in &failed[index + 1..] {
            if fits(&fields[second], &list[first]) && fits(&fields[first], &list[second]) {
                out.push(ViolationKind::WrongOrder, &fields[first].name, key, || {
                    format!(
                        "{key}[{first}] and {key}[{second}] fit inputs {} and {} instead: \
                         positional values follow the signature's order ({})",
                        shown(&fields[second].name),
                        shown(&fields[first].name),
                        inputs.names()
                    )
                });
            }
        }
    }
}

fn fits(field: &Field, value: &Value) -> bool {
    let mut probe = Collector::new(0, true);
    Tensor::new(field).walk(value, 0, &mut String::new(), &mut probe);
    probe.found == 0
}
