//! The built-in runtime: ONNX models run by `tract-onnx`, pure Rust, so a serving agent
//! answers predictions with nothing else installed.
//!
//! Convention: a version for this runtime holds its model as `model.onnx` at the top of its
//! files ([`MODEL_FILE`]); other files beside it (a signature, a README) are left alone. When
//! the version was registered with a signature, the model's inputs are fixed to the
//! signature's dtypes and shapes before tract optimizes it (-1 becomes a symbolic size, shared
//! as the batch size on the first axis), so one plan serves every batch size; without one, the
//! model's own declared inputs are used.
//!
//! Requests are read in the forms `quiver_api::schema::validate_request` checks, the way it
//! reads them (`body`), turned into tensors of the model's input dtypes (`tensor`: float32,
//! float64, int32, int64; other input dtypes are refused at load) and answered with the
//! outputs as nested JSON lists: one output is the answer itself, several are an object by
//! output name. Every failure is an error, never a panic of the caller: tract's own panics
//! (an integer division by zero inside a model, an odd model file) are caught and reported as
//! errors too; the process's panic hook still prints them. The plan a panic interrupted is
//! shared and immutable (each run has its own state), so the model keeps answering.
//! `example` builds a small model and its signature for the README walkthrough and the tests.

mod body;
pub mod example;
mod tensor;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use quiver_api::schema::{shape_text, Dtype, Field, Schema, ANY_SIZE, FIELD_RANK_MAX};
use serde_json::Value;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable, TDim,
    TValue, TVec, TypedRunnableModel,
};

use super::runtime::{LoadError, LoadedModel, PredictError, Runtime};
use tensor::{Budget, Element, Input};

/// The file a version's model is in, at the top of the version's files.
pub const MODEL_FILE: &str = "model.onnx";
/// Most elements in one request's input tensors together, and in its output tensors: bounds
/// the memory a single request can take (a JSON body is parsed and validated before, with its
/// own bounds, but a body sent to a version without a signature is not).
pub const PREDICT_ELEMENTS_MAX: usize = 16 << 20;
/// The symbol for a signature's -1 on the first axis of an input: the batch size, the same
/// for every input.
const BATCH_SYMBOL: &str = "N";

/// Loads versions whose files hold a [`MODEL_FILE`].
#[derive(Clone, Copy, Debug, Default)]
pub struct OnnxRuntime;

impl Runtime for OnnxRuntime {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn accepts(&self, dir: &Path) -> bool {
        dir.join(MODEL_FILE).is_file()
    }

    fn load(&self, dir: &Path, schema: Option<&Schema>) -> Result<Arc<dyn LoadedModel>, LoadError> {
        Ok(Arc::new(OnnxModel::load(&dir.join(MODEL_FILE), schema)?))
    }
}

/// A loaded ONNX model, ready to answer from several threads at once (each prediction runs on
/// its own state over the shared plan).
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    /// The model's inputs, in its own order.
    inputs: Vec<Input>,
    /// For each position of a positional request, the model input it feeds: the signature's
    /// order when there is one (`None` for an optional input the model does not take), else
    /// the model's.
    positions: Vec<Option<usize>>,
    /// The model's output names, in its order.
    outputs: Vec<String>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

impl OnnxModel {
    /// Reads, fixes (from `schema`), optimizes and plans the model in the file at `path`. The
    /// error names the file and what went wrong.
    pub fn load(path: &Path, schema: Option<&Schema>) -> Result<OnnxModel, LoadError> {
        let loaded = catch_unwind(AssertUnwindSafe(|| load_file(path, schema)))
            .unwrap_or_else(|panic| Err(format!("tract panicked: {}", panic_text(&panic))));
        loaded.map_err(|reason| LoadError(format!("{}: {reason}", path.display())))
    }

    /// The model's input names, in its order.
    pub fn input_names(&self) -> impl Iterator<Item = &str> {
        self.inputs.iter().map(|input| input.name.as_str())
    }

    /// The model's output names, in its order.
    pub fn output_names(&self) -> impl Iterator<Item = &str> {
        self.outputs.iter().map(String::as_str)
    }
}

impl LoadedModel for OnnxModel {
    fn predict(&self, body: &Value) -> Result<Value, PredictError> {
        let sources = body::read(body, &self.inputs, &self.positions).map_err(PredictError)?;
        let mut budget = Budget::new(PREDICT_ELEMENTS_MAX);
        let values = self
            .inputs
            .iter()
            .zip(&sources)
            .map(|(input, source)| input.tensor(source, &mut budget).map(TValue::from))
            .collect::<Result<TVec<TValue>, String>>()
            .map_err(PredictError)?;
        let outputs = catch_unwind(AssertUnwindSafe(|| self.plan.run(values)))
            .map_err(|panic| PredictError(format!("the model panicked: {}", panic_text(&panic))))?
            .map_err(|error| PredictError(format!("the model failed: {error:#}")))?;
        if outputs.len() != self.outputs.len() {
            return Err(PredictError(format!(
                "the model gave {} outputs; it declares {}",
                outputs.len(),
                self.outputs.len()
            )));
        }
        let mut budget = Budget::new(PREDICT_ELEMENTS_MAX);
        let mut answers = Vec::with_capacity(outputs.len());
        for (name, output) in self.outputs.iter().zip(&outputs) {
            answers.push(tensor::to_json(name, output, &mut budget).map_err(PredictError)?);
        }
        Ok(match <[Value; 1]>::try_from(answers) {
            Ok([only]) => only,
            Err(answers) => Value::Object(self.outputs.iter().cloned().zip(answers).collect()),
        })
    }
}

fn load_file(path: &Path, schema: Option<&Schema>) -> Result<OnnxModel, String> {
    if !path.is_file() {
        return Err(format!(
            "no such file; a version for the onnx runtime holds its model as {MODEL_FILE} at \
             the top of its files"
        ));
    }
    let mut model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|error| format!("not a model tract can read: {error:#}"))?;
    let names = model
        .input_outlets()
        .map_err(|error| error.to_string())?
        .iter()
        .map(|outlet| model.node(outlet.node).name.clone())
        .collect::<Vec<String>>();
    let positions = match schema {
        Some(schema) => {
            fix_inputs(&mut model, &names, schema)?;
            schema
                .inputs
                .iter()
                .map(|field| names.iter().position(|name| *name == field.name))
                .collect()
        }
        None => (0..names.len()).map(Some).collect(),
    };
    let outputs = model
        .output_outlets()
        .map_err(|error| error.to_string())?
        .iter()
        .map(|&outlet| match model.outlet_label(outlet) {
            Some(label) => label.to_string(),
            None => model.node(outlet.node).name.clone(),
        })
        .collect::<Vec<String>>();
    let typed = model.into_optimized().map_err(|error| {
        let with = if schema.is_some() {
            " with the signature's input dtypes and shapes"
        } else {
            ""
        };
        format!("the model cannot be prepared{with}: {error:#}")
    })?;
    let mut inputs = Vec::with_capacity(names.len());
    for (index, name) in names.into_iter().enumerate() {
        let fact = typed.input_fact(index).map_err(|error| error.to_string())?;
        let element = Element::of(fact.datum_type).ok_or_else(|| {
            format!(
                "input {name:?} has dtype {:?}; the onnx runtime takes float32, float64, int32 \
                 and int64 inputs",
                fact.datum_type
            )
        })?;
        if fact.shape.rank() > FIELD_RANK_MAX {
            return Err(format!(
                "input {name:?} has {} axes, more than {FIELD_RANK_MAX}",
                fact.shape.rank()
            ));
        }
        let sizes = fact.shape.iter().map(concrete).collect();
        let shape = fact.shape.iter().map(TDim::to_string).collect();
        inputs.push(Input::new(name, element, sizes, shape));
    }
    let plan = typed
        .into_runnable()
        .map_err(|error| format!("the model cannot be planned: {error:#}"))?;
    Ok(OnnxModel {
        plan,
        inputs,
        positions,
        outputs,
    })
}

/// Sets each input's dtype and shape from the signature's field of the same name. Every input
/// of the model must be in the signature, and every required input of the signature in the
/// model.
fn fix_inputs(model: &mut InferenceModel, names: &[String], schema: &Schema) -> Result<(), String> {
    let listed = || {
        let names: Vec<&str> = schema.inputs.iter().map(|f| f.name.as_str()).collect();
        names.join(", ")
    };
    if let Some(field) = schema
        .inputs
        .iter()
        .find(|field| !field.optional && !names.contains(&field.name))
    {
        return Err(format!(
            "the signature's input {:?} is not an input of the model (its inputs: {})",
            field.name,
            names.join(", ")
        ));
    }
    let batch = model.symbols.sym(BATCH_SYMBOL);
    for (index, name) in names.iter().enumerate() {
        let Some((_, field)) = schema.input(name) else {
            return Err(format!(
                "the model's input {name:?} is not in the signature (its inputs: {})",
                listed()
            ));
        };
        let datum_type = datum_type(field)?;
        let shape: Vec<TDim> = field
            .shape
            .iter()
            .enumerate()
            .map(|(axis, &size)| match (axis, size) {
                (0, ANY_SIZE) => TDim::from(batch.clone()),
                (_, ANY_SIZE) => TDim::from(model.symbols.new_with_prefix("d")),
                (_, size) => TDim::Val(size),
            })
            .collect();
        model
            .set_input_fact(index, InferenceFact::dt_shape(datum_type, shape))
            .map_err(|error| format!("input {name:?}: {error:#}"))?;
    }
    Ok(())
}

/// The tensor type of a signature's field, for the dtypes this runtime takes.
fn datum_type(field: &Field) -> Result<DatumType, String> {
    match field.dtype {
        Dtype::Float32 => Ok(DatumType::F32),
        Dtype::Float64 => Ok(DatumType::F64),
        Dtype::Int32 => Ok(DatumType::I32),
        Dtype::Int64 => Ok(DatumType::I64),
        other => Err(format!(
            "the signature's input {:?} ({other} {}) has a dtype the onnx runtime does not take; \
             it takes float32, float64, int32 and int64",
            field.name,
            shape_text(&field.shape)
        )),
    }
}

/// A size known before the request, if it is.
fn concrete(size: &TDim) -> Option<usize> {
    size.as_i64().and_then(|size| usize::try_from(size).ok())
}

/// What a caught panic said.
fn panic_text(panic: &Box<dyn Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic".to_string()
    }
}
