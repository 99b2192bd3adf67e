//! Logged models: what MLflow 3's `log_model` creates before a model version exists (a record
//! with params and tags, then its files one by one, then a status), kept in the replicated state
//! so that any node can serve the next call. Pure rules: the record, its limits and the checks
//! every command touching one passes before it is proposed and again in apply. The MLflow API
//! (`http::mlflow`) is the only client; a version registered from a logged model copies its
//! files into an immutable manifest.

use std::collections::BTreeMap;

use quiver_transfer::{validate_path, FileEntry, CHUNKS_PER_MANIFEST_MAX, FILES_PER_MANIFEST_MAX};
use serde::{Deserialize, Serialize};

use crate::domain::limits::{PARAMS_MAX, PARAM_VALUE_BYTES_MAX, TAG_KEY_BYTES_MAX};
use crate::domain::{validate_key, validate_tags, validate_text, Actor, DomainError};

/// The one experiment Quiver has: MLflow's default experiment, "0".
pub const EXPERIMENT_ID: &str = "0";
/// Longest logged model name, model type or source run id.
pub const LOGGED_MODEL_TEXT_BYTES_MAX: usize = 256;
/// Files of one logged model (as many as a version's manifest may list).
pub const LOGGED_MODEL_FILES_MAX: usize = FILES_PER_MANIFEST_MAX;
/// Length of an id: `m-` and 32 lowercase hex digits.
const ID_BYTES: usize = 34;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoggedModelStatus {
    /// Created; files may still arrive.
    Pending,
    /// Finalized by its client: every file is here. No file is added after this.
    Ready,
    /// Its client gave up uploading.
    UploadFailed,
}

/// A logged model as the state keeps it (the `meta` table, key `logged_model:<id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedModel {
    pub id: String,
    pub experiment_id: String,
    pub name: String,
    pub model_type: String,
    pub source_run_id: String,
    pub status: LoggedModelStatus,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub created_by: Actor,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Sorted by path, each path once; every chunk durable in W copies when the file was added.
    pub files: Vec<FileEntry>,
}

impl LoggedModel {
    /// Every chunk its files name, with repeats (what chunk GC keeps).
    pub fn chunk_hashes(&self) -> impl Iterator<Item = quiver_transfer::Hash> + '_ {
        self.files
            .iter()
            .flat_map(|f| f.chunks.iter().map(|c| c.hash))
    }

    /// Adds `file`, replacing a file of the same path; refused past the limits.
    pub fn put_file(&mut self, file: FileEntry) -> Result<(), DomainError> {
        match self
            .files
            .binary_search_by(|f| f.path.as_str().cmp(&file.path))
        {
            Ok(i) => self.files[i] = file,
            Err(i) => {
                if self.files.len() >= LOGGED_MODEL_FILES_MAX {
                    return Err(DomainError::invalid(
                        "path",
                        format!(
                            "logged model {} already has {LOGGED_MODEL_FILES_MAX} files, the \
                             most one model may hold",
                            self.id
                        ),
                    ));
                }
                self.files.insert(i, file);
            }
        }
        let chunks: usize = self.files.iter().map(|f| f.chunks.len()).sum();
        if chunks > CHUNKS_PER_MANIFEST_MAX {
            return Err(DomainError::invalid(
                "path",
                format!(
                    "logged model {} would hold {chunks} chunks, over the limit of \
                     {CHUNKS_PER_MANIFEST_MAX}: the model is too large for one version",
                    self.id
                ),
            ));
        }
        Ok(())
    }
}

/// A fresh id: `m-` and 32 random hex digits (MLflow's form).
pub fn new_id() -> String {
    format!("m-{:032x}", rand::random::<u128>())
}

/// `m-` and 32 lowercase hex digits.
pub fn validate_id(field: &str, id: &str) -> Result<(), DomainError> {
    let ok = id.len() == ID_BYTES
        && id.starts_with("m-")
        && id[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(DomainError::invalid(
            field,
            format!(
                "{} is not a logged model id: ids look like m-<32 hex digits>, as \
                 logged-models/create returns them",
                crate::domain::shown(id)
            ),
        ));
    }
    Ok(())
}

/// The only experiment id accepted.
pub fn validate_experiment(experiment_id: &str) -> Result<(), DomainError> {
    if experiment_id != EXPERIMENT_ID {
        return Err(DomainError::invalid(
            "experiment_id",
            format!(
                "{} is not an experiment of this registry: Quiver keeps logged models in the \
                 default experiment \"0\" only (log without an active experiment)",
                crate::domain::shown(experiment_id)
            ),
        ));
    }
    Ok(())
}

/// Short free text: name, model type, run id.
pub fn validate_short_text(field: &str, value: &str) -> Result<(), DomainError> {
    validate_text(field, value, LOGGED_MODEL_TEXT_BYTES_MAX)
}

/// At most [`PARAMS_MAX`] params, keys and values within their limits.
pub fn validate_params(field: &str, params: &BTreeMap<String, String>) -> Result<(), DomainError> {
    if params.len() > PARAMS_MAX {
        return Err(DomainError::invalid(
            field,
            format!("{} params is over the limit of {PARAMS_MAX}", params.len()),
        ));
    }
    for (key, value) in params {
        validate_key(field, key, TAG_KEY_BYTES_MAX)?;
        validate_text(&format!("{field}.{key}"), value, PARAM_VALUE_BYTES_MAX)?;
    }
    Ok(())
}

/// A file entry as a command carries it: a valid path, and chunks that add up to its size.
pub fn validate_file(file: &FileEntry) -> Result<(), DomainError> {
    validate_path(&file.path).map_err(|e| DomainError::invalid("path", e.to_string()))?;
    if file.chunks.len() > CHUNKS_PER_MANIFEST_MAX {
        return Err(DomainError::invalid(
            "path",
            format!("file {:?} has too many chunks", file.path),
        ));
    }
    let total = file
        .chunks
        .iter()
        .try_fold(0u64, |sum, c| sum.checked_add(u64::from(c.size_bytes)));
    if total != Some(file.size_bytes) {
        return Err(DomainError::invalid(
            "path",
            format!(
                "file {:?}: its chunks do not add up to its size {}",
                file.path, file.size_bytes
            ),
        ));
    }
    Ok(())
}

/// The fields of a new logged model.
pub fn validate_new(
    experiment_id: &str,
    name: &str,
    model_type: &str,
    source_run_id: &str,
    params: &BTreeMap<String, String>,
    tags: &BTreeMap<String, String>,
) -> Result<(), DomainError> {
    validate_experiment(experiment_id)?;
    validate_short_text("name", name)?;
    validate_short_text("model_type", model_type)?;
    validate_short_text("source_run_id", source_run_id)?;
    validate_params("params", params)?;
    validate_tags("tags", tags)
}

#[cfg(test)]
mod tests {
    use quiver_transfer::{ChunkRef, Hash};

    use super::*;

    fn file(path: &str, sizes: &[u32]) -> FileEntry {
        FileEntry {
            path: path.into(),
            size_bytes: sizes.iter().map(|s| u64::from(*s)).sum(),
            mode: 0o644,
            chunks: sizes
                .iter()
                .map(|s| ChunkRef {
                    hash: Hash::of(&s.to_be_bytes()),
                    size_bytes: *s,
                })
                .collect(),
        }
    }

    #[test]
    fn ids_have_one_form() {
        validate_id("model_id", &new_id()).unwrap();
        for bad in [
            "",
            "m-",
            "m-0123",
            "x-0123456789abcdef0123456789abcdef",
            "m-0123456789ABCDEF0123456789abcdef",
            "m-0123456789abcdef0123456789abcde/",
            "m-0123456789abcdef0123456789abcdef0",
            "m-0123456789abcdef0123456789abcdé",
        ] {
            assert!(validate_id("model_id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_file_whose_chunks_do_not_add_up_or_whose_path_escapes_is_refused() {
        validate_file(&file("MLmodel", &[3, 4])).unwrap();
        validate_file(&file("empty", &[])).unwrap();
        let mut lying = file("MLmodel", &[3, 4]);
        lying.size_bytes = 8;
        assert!(validate_file(&lying).is_err());
        let mut short = file("x", &[u32::MAX, 2]);
        short.size_bytes = u64::from(u32::MAX);
        assert!(validate_file(&short).is_err());
        for bad in ["../x", "/etc/passwd", "", "a/../../b", "a\0b"] {
            assert!(validate_file(&file(bad, &[1])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn files_stay_sorted_and_a_path_sent_twice_replaces_the_first() {
        let mut m = LoggedModel {
            id: new_id(),
            experiment_id: EXPERIMENT_ID.into(),
            name: "model".into(),
            model_type: String::new(),
            source_run_id: String::new(),
            status: LoggedModelStatus::Pending,
            params: BTreeMap::new(),
            tags: BTreeMap::new(),
            created_by: Actor {
                name: "alice".into(),
                authenticated: true,
            },
            created_at_ms: 1,
            updated_at_ms: 1,
            files: Vec::new(),
        };
        m.put_file(file("b", &[1])).unwrap();
        m.put_file(file("a", &[2])).unwrap();
        m.put_file(file("b", &[5])).unwrap();
        let paths: Vec<_> = m
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.size_bytes))
            .collect();
        assert_eq!(paths, [("a", 2), ("b", 5)]);
        assert_eq!(m.chunk_hashes().count(), 2);
    }

    #[test]
    fn only_the_default_experiment_is_accepted() {
        validate_experiment("0").unwrap();
        for bad in ["", "1", "00", "../0"] {
            assert!(validate_experiment(bad).is_err());
        }
        let too_many: BTreeMap<String, String> = (0..=PARAMS_MAX)
            .map(|i| (format!("p{i}"), "v".into()))
            .collect();
        assert!(validate_params("params", &too_many).is_err());
    }
}
