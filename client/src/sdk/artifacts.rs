//! Turns the paths a user names (`--artifact weights.bin --artifact tokenizer/`)
//! into the sorted list of files a version will hold, with the path each one
//! gets inside the version. All the rejections happen here, before a byte is
//! sent, so a bad argument never leaves a half-uploaded stream behind.

use std::fs;
use std::path::{Path, PathBuf};

use super::ClientError;

/// Most files one registration may collect: the manifest's own limit, checked
/// during the walk so a huge tree is refused before it is listed whole.
pub const ARTIFACT_FILES_MAX: usize = quiver_transfer::FILES_PER_MANIFEST_MAX;

/// Deepest directory nesting followed under an artifact directory.
pub const ARTIFACT_DEPTH_MAX: usize = 64;

/// A file on disk and the path it is registered under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactFile {
    /// Path inside the version: relative, '/'-separated.
    pub path: String,
    /// Where the bytes are read from.
    pub source: PathBuf,
    pub size_bytes: u64,
    /// Unix permission bits (0o644 where the platform has none).
    pub mode: u32,
}

/// Collects the files to register from files and directories.
///
/// A file registers under its file name; a directory registers every regular
/// file under it with paths relative to the directory. Symlinks to files are
/// followed; anything else that is not a regular file is refused by name.
/// The result is sorted by registered path, which is also upload order.
pub fn collect_artifacts(arguments: &[PathBuf]) -> Result<Vec<ArtifactFile>, ClientError> {
    if arguments.is_empty() {
        return Err(ClientError::InvalidInput(
            "no artifacts given: pass at least one --artifact PATH".into(),
        ));
    }
    let mut files = Vec::new();
    for argument in arguments {
        let metadata = fs::metadata(argument).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                ClientError::InvalidInput(format!(
                    "artifact path '{}' does not exist",
                    argument.display()
                ))
            } else {
                ClientError::io(format!("inspect artifact '{}'", argument.display()), error)
            }
        })?;
        if metadata.is_file() {
            let name = argument
                .file_name()
                .and_then(|name| name.to_str())
                .ok_or_else(|| not_utf8(argument))?;
            push_file(&mut files, name.to_string(), argument, &metadata)?;
        } else if metadata.is_dir() {
            let before = files.len();
            walk(&mut files, argument, "", 0)?;
            if files.len() == before {
                return Err(ClientError::InvalidInput(format!(
                    "artifact directory '{}' contains no regular files",
                    argument.display()
                )));
            }
        } else {
            return Err(special_file(argument));
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    for pair in files.windows(2) {
        if pair[0].path == pair[1].path {
            return Err(ClientError::InvalidInput(format!(
                "artifact path '{}' is registered twice (from '{}' and '{}'); \
                 rename one of them or pass them from different directories",
                pair[0].path,
                pair[0].source.display(),
                pair[1].source.display()
            )));
        }
    }
    Ok(files)
}

/// Adds the files under `directory`; `prefix` is its registered path ("" at the top).
fn walk(
    files: &mut Vec<ArtifactFile>,
    directory: &Path,
    prefix: &str,
    depth: usize,
) -> Result<(), ClientError> {
    if depth >= ARTIFACT_DEPTH_MAX {
        return Err(ClientError::InvalidInput(format!(
            "artifact directory '{}' is nested deeper than {ARTIFACT_DEPTH_MAX} levels",
            directory.display()
        )));
    }
    let context = || format!("list artifact directory '{}'", directory.display());
    let mut entries = Vec::new();
    for entry in fs::read_dir(directory).map_err(|e| ClientError::io(context(), e))? {
        entries.push(entry.map_err(|e| ClientError::io(context(), e))?);
    }
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let source = entry.path();
        let name = entry.file_name();
        let name = name.to_str().ok_or_else(|| not_utf8(&source))?;
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry
            .file_type()
            .map_err(|e| ClientError::io(format!("inspect '{}'", source.display()), e))?;
        if kind.is_dir() {
            walk(files, &source, &path, depth + 1)?;
        } else if kind.is_file() {
            let metadata = entry
                .metadata()
                .map_err(|e| ClientError::io(format!("inspect '{}'", source.display()), e))?;
            push_file(files, path, &source, &metadata)?;
        } else if kind.is_symlink() {
            // Follow links to files only: a link to a directory could loop.
            match fs::metadata(&source) {
                Ok(metadata) if metadata.is_file() => push_file(files, path, &source, &metadata)?,
                Ok(metadata) if metadata.is_dir() => {
                    return Err(ClientError::InvalidInput(format!(
                        "artifact '{}' is a symlink to a directory; pass that directory \
                         as its own --artifact instead",
                        source.display()
                    )))
                }
                Ok(_) => return Err(special_file(&source)),
                Err(_) => {
                    return Err(ClientError::InvalidInput(format!(
                        "artifact '{}' is a broken symlink; remove it or fix its target",
                        source.display()
                    )))
                }
            }
        } else {
            return Err(special_file(&source));
        }
    }
    Ok(())
}

fn push_file(
    files: &mut Vec<ArtifactFile>,
    path: String,
    source: &Path,
    metadata: &fs::Metadata,
) -> Result<(), ClientError> {
    if files.len() >= ARTIFACT_FILES_MAX {
        return Err(ClientError::InvalidInput(format!(
            "too many artifact files: a version holds at most {ARTIFACT_FILES_MAX}; \
             pack small files into an archive"
        )));
    }
    quiver_transfer::validate_path(&path).map_err(|error| {
        ClientError::InvalidInput(format!(
            "artifact '{}' cannot be registered as '{path}': {error}",
            source.display()
        ))
    })?;
    files.push(ArtifactFile {
        path,
        source: source.to_path_buf(),
        size_bytes: metadata.len(),
        mode: mode_of(metadata),
    });
    Ok(())
}

#[cfg(unix)]
fn mode_of(metadata: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn mode_of(_metadata: &fs::Metadata) -> u32 {
    0o644
}

fn not_utf8(path: &Path) -> ClientError {
    ClientError::InvalidInput(format!(
        "artifact '{}' has a name that is not valid UTF-8; rename it",
        path.display()
    ))
}

fn special_file(path: &Path) -> ClientError {
    ClientError::InvalidInput(format!(
        "artifact '{}' is not a regular file or directory (sockets, pipes and devices \
         cannot be registered)",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn paths(files: &[ArtifactFile]) -> Vec<&str> {
        files.iter().map(|file| file.path.as_str()).collect()
    }

    #[test]
    fn a_file_registers_under_its_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("deep/weights.bin");
        write(&weights, b"12345");
        let files = collect_artifacts(std::slice::from_ref(&weights)).unwrap();
        assert_eq!(paths(&files), ["weights.bin"]);
        assert_eq!(files[0].size_bytes, 5);
        assert_eq!(files[0].source, weights);
    }

    #[test]
    fn a_directory_registers_every_file_recursively_sorted_and_relative() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("model");
        write(&root.join("b.txt"), b"b");
        write(&root.join("a/z.bin"), b"zz");
        write(&root.join("a/b/c.json"), b"{}");
        fs::create_dir_all(root.join("empty")).unwrap();
        let extra = dir.path().join("README.md");
        write(&extra, b"readme");
        let files = collect_artifacts(&[root, extra]).unwrap();
        assert_eq!(
            paths(&files),
            ["README.md", "a/b/c.json", "a/z.bin", "b.txt"]
        );
        assert_eq!(files[2].size_bytes, 2);
    }

    #[test]
    fn the_same_registered_path_twice_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one/config.json");
        let two = dir.path().join("two/config.json");
        write(&one, b"1");
        write(&two, b"2");
        let error = collect_artifacts(&[one, two]).unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("artifact path 'config.json' is registered twice"),
            "{text}"
        );
        assert!(matches!(error, ClientError::InvalidInput(_)));
    }

    #[test]
    fn a_missing_path_is_an_error_with_the_exact_message() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.bin");
        let error = collect_artifacts(std::slice::from_ref(&missing)).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("artifact path '{}' does not exist", missing.display())
        );
    }

    #[test]
    fn no_arguments_and_empty_directories_are_refused() {
        assert!(collect_artifacts(&[])
            .unwrap_err()
            .to_string()
            .contains("--artifact"));
        let dir = tempfile::tempdir().unwrap();
        let error = collect_artifacts(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(
            error.to_string().contains("contains no regular files"),
            "{error}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_to_files_are_followed_and_other_links_refused() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.bin");
        write(&target, b"abc");
        let root = dir.path().join("model");
        fs::create_dir_all(&root).unwrap();
        symlink(&target, root.join("link.bin")).unwrap();
        let files = collect_artifacts(std::slice::from_ref(&root)).unwrap();
        assert_eq!(paths(&files), ["link.bin"]);
        assert_eq!(files[0].size_bytes, 3);

        symlink(dir.path(), root.join("loop")).unwrap();
        let error = collect_artifacts(std::slice::from_ref(&root)).unwrap_err();
        assert!(
            error.to_string().contains("symlink to a directory"),
            "{error}"
        );
        fs::remove_file(root.join("loop")).unwrap();

        symlink(dir.path().join("gone"), root.join("dangling")).unwrap();
        let error = collect_artifacts(&[root]).unwrap_err();
        assert!(error.to_string().contains("broken symlink"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let socket_path = dir.path().join("model.sock");
        let _socket = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
        let error = collect_artifacts(std::slice::from_ref(&socket_path)).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("model.sock"), "{text}");
        assert!(text.contains("not a regular file"), "{text}");
    }

    #[cfg(unix)]
    #[test]
    fn the_mode_keeps_permission_bits() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run.sh");
        write(&script, b"#!/bin/sh\n");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let files = collect_artifacts(&[script]).unwrap();
        assert_eq!(files[0].mode, 0o755);
    }
}
