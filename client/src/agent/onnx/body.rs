//! Which JSON value feeds which model input, for each request form that
//! `quiver_api::schema::validate_request` accepts, read the way it reads them:
//! - `{"inputs": {name: tensor, ...}}` and `{"instances": {name: tensor, ...}}`: by name;
//! - `{"inputs": [tensor, ...]}` and `{"instances": [tensor, ...]}`: by position, in the
//!   signature's order (the model's without one);
//! - `{"dataframe_split": {"columns": [name, ...], "data": [[cell, ...], ...]}}`: a column per
//!   input, a cell per example, stacked.
//!
//! Two of MLflow's `instances` forms that the validator does not take are read too, for
//! versions served without a signature: a list of records (`[{name: example}, ...]`), and, for
//! a model with one input, the list of its examples itself (`[example, ...]`), taken as such
//! unless it is a single value that already has the input's rank, which is the positional form.
//!
//! A `params` key and keys of no form are ignored; names of no model input are ignored too (an
//! optional input of the signature the model does not take).

use serde_json::{Map, Value};

use super::tensor::{describe, Input};

/// The value a request gives one input.
pub(super) enum Source<'a> {
    /// The whole tensor.
    Whole(&'a Value),
    /// One value per example, stacked along a new first axis.
    Rows(Vec<&'a Value>),
}

const FORMS: &str = "send {\"inputs\": {name: value, ...}}, {\"inputs\": [value, ...]}, \
                     {\"instances\": [...]} or {\"dataframe_split\": {\"columns\": [...], \
                     \"data\": [[...]]}}";

/// The value for each of `inputs` (the model's, in its order) in `body`. `positions` maps
/// each position of a positional request to the model input it feeds, if any.
pub(super) fn read<'a>(
    body: &'a Value,
    inputs: &[Input],
    positions: &[Option<usize>],
) -> Result<Vec<Source<'a>>, String> {
    let Value::Object(body) = body else {
        return Err(format!(
            "the body is {}, not a JSON object; {FORMS}",
            describe(body)
        ));
    };
    let mut forms = body
        .iter()
        .filter(|(key, _)| matches!(key.as_str(), "inputs" | "instances" | "dataframe_split"));
    let (key, value) = match (forms.next(), forms.next()) {
        (Some(form), None) => form,
        (None, _) => return Err(format!("the body has no inputs; {FORMS}")),
        (Some(_), Some(_)) => {
            return Err(
                "the body gives more than one of inputs, instances and dataframe_split; give \
                 one"
                .into(),
            )
        }
    };
    match (key.as_str(), value) {
        ("dataframe_split", Value::Object(frame)) => dataframe(frame, inputs),
        ("dataframe_split", other) => Err(format!(
            "dataframe_split is {}; it must be an object with columns and data",
            describe(other)
        )),
        (key, Value::Object(named)) => by_name(key, named, inputs),
        ("instances", Value::Array(list)) => instances(value, list, inputs, positions),
        (key, Value::Array(list)) => by_position(key, list, inputs, positions),
        (key, other) => Err(format!(
            "{key} is {}; it must be an object of inputs by name or a list of inputs by position",
            describe(other)
        )),
    }
}

fn by_name<'a>(
    key: &str,
    named: &'a Map<String, Value>,
    inputs: &[Input],
) -> Result<Vec<Source<'a>>, String> {
    inputs
        .iter()
        .map(|input| {
            named
                .get(&input.name)
                .map(Source::Whole)
                .ok_or_else(|| format!("input {:?} is missing from {key}", input.name))
        })
        .collect()
}

fn by_position<'a>(
    key: &str,
    list: &'a [Value],
    inputs: &[Input],
    positions: &[Option<usize>],
) -> Result<Vec<Source<'a>>, String> {
    if list.len() > positions.len() {
        return Err(format!(
            "{key} has {} values; the model takes {} by position (its inputs: {})",
            list.len(),
            positions.len(),
            names(inputs)
        ));
    }
    let mut sources: Vec<Option<Source>> = inputs.iter().map(|_| None).collect();
    for (value, position) in list.iter().zip(positions) {
        if let Some(source) = position.and_then(|index| sources.get_mut(index)) {
            *source = Some(Source::Whole(value));
        }
    }
    sources
        .into_iter()
        .zip(inputs)
        .map(|(source, input)| {
            source.ok_or_else(|| {
                format!(
                    "input {:?} is missing: {key} has {} values for {} positions",
                    input.name,
                    list.len(),
                    positions.len()
                )
            })
        })
        .collect()
}

fn instances<'a>(
    whole: &'a Value,
    list: &'a [Value],
    inputs: &[Input],
    positions: &[Option<usize>],
) -> Result<Vec<Source<'a>>, String> {
    if !list.is_empty() && list.iter().all(Value::is_object) {
        return inputs
            .iter()
            .map(|input| {
                list.iter()
                    .enumerate()
                    .map(|(index, record)| {
                        record.get(&input.name).ok_or_else(|| {
                            format!("instances[{index}] has no input {:?}", input.name)
                        })
                    })
                    .collect::<Result<Vec<&Value>, String>>()
                    .map(Source::Rows)
            })
            .collect();
    }
    if let ([input], [_]) = (inputs, positions) {
        let positional = matches!(list, [only] if could_have_rank(only, input.rank()));
        if !positional {
            return Ok(vec![Source::Whole(whole)]);
        }
    }
    by_position("instances", list, inputs, positions)
}

/// Whether `value` may be a tensor of rank `rank`: lists `rank` deep along the first items (an
/// empty list may hold any rank below it), then not a list.
fn could_have_rank(mut value: &Value, rank: usize) -> bool {
    for _ in 0..rank {
        match value {
            Value::Array(items) => match items.first() {
                Some(first) => value = first,
                None => return true,
            },
            _ => return false,
        }
    }
    !value.is_array()
}

fn dataframe<'a>(
    frame: &'a Map<String, Value>,
    inputs: &[Input],
) -> Result<Vec<Source<'a>>, String> {
    let Some(Value::Array(columns)) = frame.get("columns") else {
        return Err("dataframe_split needs columns: a list of input names".into());
    };
    let Some(Value::Array(rows)) = frame.get("data") else {
        return Err("dataframe_split needs data: a list of rows".into());
    };
    inputs
        .iter()
        .map(|input| {
            let column = columns
                .iter()
                .position(|column| column.as_str() == Some(input.name.as_str()))
                .ok_or_else(|| {
                    format!("input {:?} has no column in dataframe_split", input.name)
                })?;
            rows.iter()
                .enumerate()
                .map(|(index, row)| match row {
                    Value::Array(cells) => cells.get(column).ok_or_else(|| {
                        format!(
                            "dataframe_split.data[{index}] has {} values for {} columns",
                            cells.len(),
                            columns.len()
                        )
                    }),
                    other => Err(format!(
                        "dataframe_split.data[{index}] is {}, not a list of values",
                        describe(other)
                    )),
                })
                .collect::<Result<Vec<&Value>, String>>()
                .map(Source::Rows)
        })
        .collect()
}

/// The model's input names, for messages (the first few).
fn names(inputs: &[Input]) -> String {
    let mut names: Vec<String> = inputs
        .iter()
        .take(16)
        .map(|input| format!("{:?}", input.name))
        .collect();
    if inputs.len() > names.len() {
        names.push("…".into());
    }
    names.join(", ")
}
