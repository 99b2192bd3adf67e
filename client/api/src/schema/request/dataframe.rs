//! `{"dataframe_split": {"columns": [...], "data": [[...], ...]}}`: a column
//! per input, a row per example.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::report::{kind_of, shown, Collector};
use super::tensor::Tensor;
use super::{Inputs, ViolationKind};
use crate::schema::{shape_text, Field, ANY_SIZE};

pub(super) fn dataframe(inputs: &Inputs, frame: &Map<String, Value>, out: &mut Collector) {
    for key in frame.keys() {
        if !matches!(key.as_str(), "columns" | "data" | "index") {
            out.push(
                ViolationKind::Malformed,
                "",
                &format!("dataframe_split.{key}"),
                || {
                    format!(
                        "unknown key {} in dataframe_split (expected columns, data, index)",
                        shown(key)
                    )
                },
            );
        }
    }
    let Some(Value::Array(columns)) = frame.get("columns") else {
        out.push(
            ViolationKind::Malformed,
            "",
            "dataframe_split.columns",
            || "dataframe_split needs columns: a list of input names".into(),
        );
        return;
    };
    // The input each column feeds, if it names one.
    let mut feeds: Vec<Option<&Field>> = Vec::with_capacity(columns.len());
    let mut seen = BTreeMap::new();
    for (index, column) in columns.iter().enumerate() {
        let path = format!("dataframe_split.columns[{index}]");
        let Value::String(name) = column else {
            out.push(ViolationKind::Malformed, "", &path, || {
                format!("a column name must be a string, found {}", kind_of(column))
            });
            feeds.push(None);
            continue;
        };
        if seen.insert(name.as_str(), index).is_some() {
            out.push(ViolationKind::Malformed, name, &path, || {
                format!("column {} appears twice", shown(name))
            });
            feeds.push(None);
            continue;
        }
        let field = inputs.by_name.get(name.as_str()).copied();
        if field.is_none() {
            out.push(ViolationKind::UnknownInput, name, &path, || {
                format!(
                    "column {} is not an input of this model (its inputs: {})",
                    shown(name),
                    inputs.names()
                )
            });
        }
        feeds.push(field);
    }
    for field in &inputs.schema.inputs {
        if !field.optional && !seen.contains_key(field.name.as_str()) {
            out.push(
                ViolationKind::MissingInput,
                &field.name,
                "dataframe_split.columns",
                || format!("required input {} has no column", shown(&field.name)),
            );
        }
    }
    let known: Vec<&Field> = feeds.iter().flatten().copied().collect();
    let position = |field: &Field| {
        inputs
            .schema
            .inputs
            .iter()
            .position(|f| f.name == field.name)
    };
    if known
        .windows(2)
        .any(|pair| position(pair[0]) > position(pair[1]))
    {
        out.push(
            ViolationKind::WrongOrder,
            "",
            "dataframe_split.columns",
            || {
                let given: Vec<String> = known.iter().take(16).map(|f| shown(&f.name)).collect();
                format!(
                    "columns are in the order {}; the signature's order is {}",
                    given.join(", "),
                    inputs.names()
                )
            },
        );
    }
    let rows = match frame.get("data") {
        Some(Value::Array(rows)) => rows,
        other => {
            out.push(ViolationKind::Malformed, "", "dataframe_split.data", || {
                format!(
                    "dataframe_split needs data: a list of rows, found {}",
                    other.map_or("nothing", kind_of)
                )
            });
            return;
        }
    };
    let mut tensors: Vec<Option<Tensor>> =
        feeds.iter().map(|field| field.map(Tensor::new)).collect();
    for (row_index, row) in rows.iter().enumerate() {
        let path = format!("dataframe_split.data[{row_index}]");
        let Value::Array(cells) = row else {
            out.push(ViolationKind::WrongShape, "", &path, || {
                format!(
                    "a row must be a list of {} values, found {}",
                    columns.len(),
                    kind_of(row)
                )
            });
            continue;
        };
        if cells.len() != columns.len() {
            out.push(ViolationKind::WrongShape, "", &path, || {
                format!(
                    "row has {} values for {} columns",
                    cells.len(),
                    columns.len()
                )
            });
        }
        for (column, (cell, tensor)) in cells.iter().zip(tensors.iter_mut()).enumerate() {
            if let Some(tensor) = tensor {
                // A cell is one row of its input: the walk starts at axis 1.
                tensor.walk(cell, 1, &mut format!("{path}[{column}]"), out);
            }
        }
    }
    for field in feeds.iter().flatten() {
        let expected = field.shape.first().copied();
        let fits_rows = match expected {
            None => rows.len() <= 1,
            Some(ANY_SIZE) => true,
            Some(size) => rows.len() as i64 == size,
        };
        if !fits_rows {
            out.push(
                ViolationKind::WrongShape,
                &field.name,
                "dataframe_split.data",
                || {
                    format!(
                        "input {} has shape {}, which takes {} rows; the dataframe has {}",
                        shown(&field.name),
                        shape_text(&field.shape),
                        expected.map_or("one".to_string(), |size| size.to_string()),
                        rows.len()
                    )
                },
            );
        }
    }
}
