//! `quiver signature check` and `quiver signature validate`: the schema
//! library on local files, no node needed. Both read our JSON signature
//! files and MLflow `MLmodel` files, print every finding (a table, or JSON
//! with `--output json`), and fail when something breaks.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use quiver_api::schema::{compatibility, validate_request, Change, Violation};
use serde::Serialize;

use super::args::Output;
use super::view::table;
use super::OutputArgs;
use crate::signature::{parse_signature_file, SignatureJson, SIGNATURE_FILE_BYTES_MAX};

/// Largest request file `validate` reads, in bytes.
pub const REQUEST_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum SignatureCommand {
    /// Compare two signatures: every change, and whether callers of OLD
    /// break against NEW (exits 1 if any change breaks).
    Check {
        /// The signature callers were written for: a JSON signature file or an MLmodel file.
        old: PathBuf,
        /// The signature to compare with it.
        new: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Check a prediction request (MLflow serving JSON: inputs, instances or
    /// dataframe_split) against a signature, listing every violation (exits 1
    /// if any).
    Validate {
        /// A JSON signature file or an MLmodel file.
        signature: PathBuf,
        /// The request body, a JSON file.
        request: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// What `check --output json` prints.
#[derive(Debug, Serialize)]
struct CheckView {
    breaking: bool,
    changes: Vec<Change>,
}

/// What `validate --output json` prints.
#[derive(Debug, Serialize)]
struct ValidateView {
    valid: bool,
    violations: Vec<Violation>,
}

pub fn run(command: SignatureCommand) -> anyhow::Result<()> {
    match command {
        SignatureCommand::Check { old, new, output } => {
            let old_schema = read_signature_file(&old)?.to_schema()?;
            let new_schema = read_signature_file(&new)?.to_schema()?;
            let report = compatibility(&old_schema, &new_schema);
            let view = CheckView {
                breaking: report.is_breaking(),
                changes: report.changes,
            };
            print_check(&view, output.output)?;
            let breaking = view.changes.iter().filter(|change| change.breaking).count();
            if breaking > 0 {
                anyhow::bail!(
                    "'{}' breaks callers of '{}': {breaking} of {} changes are breaking",
                    new.display(),
                    old.display(),
                    view.changes.len()
                );
            }
            Ok(())
        }
        SignatureCommand::Validate {
            signature,
            request,
            output,
        } => {
            let schema = read_signature_file(&signature)?.to_schema()?;
            let body = read_request_file(&request)?;
            let violations = validate_request(&schema, &body);
            let view = ValidateView {
                valid: violations.is_empty(),
                violations,
            };
            print_validate(&view, output.output)?;
            if !view.valid {
                anyhow::bail!(
                    "request '{}' does not fit signature '{}': {} violations",
                    request.display(),
                    signature.display(),
                    view.violations.len()
                );
            }
            Ok(())
        }
    }
}

fn print_check(view: &CheckView, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        outln!("{}", serde_json::to_string_pretty(view)?);
        return Ok(());
    }
    if view.changes.is_empty() {
        outln!("no changes: the signatures are the same");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = view
        .changes
        .iter()
        .map(|change| {
            let verdict = if change.breaking {
                "BREAKING"
            } else {
                "compatible"
            };
            vec![verdict.to_string(), change.detail.clone()]
        })
        .collect();
    out!("{}", table(&["VERDICT", "CHANGE"], &rows));
    Ok(())
}

fn print_validate(view: &ValidateView, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        outln!("{}", serde_json::to_string_pretty(view)?);
        return Ok(());
    }
    if view.valid {
        outln!("the request fits the signature");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = view
        .violations
        .iter()
        .map(|violation| {
            let kind = serde_json::to_value(violation.kind)
                .ok()
                .and_then(|kind| kind.as_str().map(str::to_string))
                .unwrap_or_default();
            let path = if violation.path.is_empty() {
                "(body)"
            } else {
                &violation.path
            };
            vec![kind, path.to_string(), violation.message.clone()]
        })
        .collect();
    out!("{}", table(&["KIND", "WHERE", "PROBLEM"], &rows));
    Ok(())
}

/// Reads a JSON signature file or an MLmodel file (decided by its name and
/// content); errors name the file and the field.
pub fn read_signature_file(path: &Path) -> anyhow::Result<SignatureJson> {
    let context = || format!("signature file '{}'", path.display());
    let text = read_bounded(path, SIGNATURE_FILE_BYTES_MAX).with_context(context)?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    parse_signature_file(&name, &text).with_context(context)
}

fn read_request_file(path: &Path) -> anyhow::Result<serde_json::Value> {
    let context = || format!("request file '{}'", path.display());
    let text = read_bounded(path, REQUEST_FILE_BYTES_MAX).with_context(context)?;
    serde_json::from_str(&text)
        .context("not valid JSON")
        .with_context(context)
}

/// A text file of at most `size_bytes_max` bytes.
fn read_bounded(path: &Path, size_bytes_max: u64) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)?.len();
    if size > size_bytes_max {
        anyhow::bail!("{size} bytes, more than the limit of {size_bytes_max}");
    }
    Ok(std::fs::read_to_string(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"{"inputs":[{"name":"x","dtype":"float32","shape":[-1,4]}],
        "outputs":[{"name":"y","dtype":"float32","shape":[-1]}]}"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn check(old: &Path, new: &Path) -> anyhow::Result<()> {
        run(SignatureCommand::Check {
            old: old.into(),
            new: new.into(),
            output: OutputArgs {
                output: Output::Json,
            },
        })
    }

    fn validate(signature: &Path, request: &Path) -> anyhow::Result<()> {
        run(SignatureCommand::Validate {
            signature: signature.into(),
            request: request.into(),
            output: OutputArgs {
                output: Output::Table,
            },
        })
    }

    #[test]
    fn check_fails_only_on_a_breaking_change_and_reads_mlmodel_files() {
        let dir = tempfile::tempdir().unwrap();
        let old = write(dir.path(), "old.json", OLD);
        check(&old, &old).unwrap();
        let wider = write(
            dir.path(),
            "wider.json",
            r#"{"inputs":[{"name":"x","dtype":"float32","shape":[-1,4]},
                {"name":"m","dtype":"bool","shape":[],"optional":true}],
                "outputs":[{"name":"y","dtype":"float32","shape":[-1]}]}"#,
        );
        check(&old, &wider).unwrap();
        let error = super::super::describe(&check(&wider, &old).unwrap_err());
        assert!(error.contains("1 of 1 changes are breaking"), "{error}");
        let mlmodel = write(
            dir.path(),
            "MLmodel",
            "signature:\n  inputs: '[{\"type\": \"tensor\", \"tensor-spec\": {\"dtype\": \"float64\", \"shape\": [-1, 4]}, \"name\": \"x\"}]'\n  outputs: '[{\"type\": \"float\", \"name\": \"y\"}]'\n",
        );
        let error = super::super::describe(&check(&old, &mlmodel).unwrap_err());
        assert!(error.contains("1 of 1 changes are breaking"), "{error}");
    }

    #[test]
    fn validate_fails_on_violations_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let signature = write(dir.path(), "sig.json", OLD);
        let good = write(
            dir.path(),
            "good.json",
            r#"{"inputs": {"x": [[1, 2, 3, 4]]}}"#,
        );
        validate(&signature, &good).unwrap();
        let bad = write(
            dir.path(),
            "bad.json",
            r#"{"inputs": {"x": [[1, 2, "3"]], "z": 1}}"#,
        );
        let error = super::super::describe(&validate(&signature, &bad).unwrap_err());
        assert!(error.contains("3 violations"), "{error}");
        let broken = write(dir.path(), "broken.json", "{");
        let error = super::super::describe(&validate(&signature, &broken).unwrap_err());
        assert!(error.starts_with("request file '"), "{error}");
        assert!(error.contains("not valid JSON"), "{error}");
        let deep = write(
            dir.path(),
            "deep.json",
            &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        );
        assert!(validate(&signature, &deep).is_err());
        let bad_signature = write(
            dir.path(),
            "MLmodel",
            "signature:\n  inputs: '[{\"type\": \"binary\"}]'\n",
        );
        let error = super::super::describe(&validate(&bad_signature, &good).unwrap_err());
        assert!(
            error.contains("MLmodel") && error.contains("signature.inputs[0].type"),
            "{error}"
        );
    }
}
