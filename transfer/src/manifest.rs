//! Manifests: the list of a model version's files and their chunks, and the root hash that
//! identifies the version.
//!
//! The root is blake3 over an encoding defined here byte by byte, not over serde output: serde's
//! formats make no promise of stability across versions or field order, and the root must be the
//! same on every node and every release, forever, because versions are found and deduplicated by
//! it. Every variable-length field is length-prefixed, so two different manifests never encode to
//! the same bytes.
//!
//! `validate` enforces the limits and shape rules of DESIGN.md ("every file list and metadata
//! field has a stated upper bound") before a manifest is stored or replicated; each error names
//! the file and says what would fix it.

use serde::{Deserialize, Serialize};

use crate::{
    Hash, CHUNKS_PER_MANIFEST_MAX, CHUNK_SIZE_BYTES_MAX, FILES_PER_MANIFEST_MAX, PATH_BYTES_MAX,
};

/// Tag at the start of the canonical encoding. Bump the version to change the format.
const ENCODING_TAG: &[u8; 16] = b"quiver-manifest\0";
const ENCODING_VERSION: u32 = 1;
/// Paths quoted in errors are cut to this many characters, so that a megabyte of bad input does
/// not become a megabyte of error message.
const PATH_IN_ERROR_CHARS_MAX: usize = 80;

/// One chunk of a file: its hash and length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: Hash,
    pub size_bytes: u32,
}

/// One file of a model version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, '/'-separated; see [`validate_path`].
    pub path: String,
    pub size_bytes: u64,
    /// Unix permission bits, recorded as given and part of the root.
    pub mode: u32,
    /// In file order; their sizes add up to `size_bytes`. An empty file has none.
    pub chunks: Vec<ChunkRef>,
}

/// The files of a model version, sorted by path (byte order), each path once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub files: Vec<FileEntry>,
}

/// What is wrong with a manifest or a path, naming the file and what would fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest lists {count} files, more than the limit of {FILES_PER_MANIFEST_MAX}: pack small files into an archive or split the artifact")]
    TooManyFiles { count: usize },
    #[error("manifest lists more than {CHUNKS_PER_MANIFEST_MAX} chunks (reached at file {path:?}): the artifact is too large for one version; split it")]
    TooManyChunks { path: String },
    #[error("a file path is empty: give every file a relative path such as \"weights/model.safetensors\"")]
    PathEmpty,
    #[error("file path {path:?} is {len_bytes} bytes long, more than the limit of {PATH_BYTES_MAX}: shorten it")]
    PathTooLong { path: String, len_bytes: usize },
    #[error("file path {path:?} contains a NUL byte: remove it")]
    PathNul { path: String },
    #[error("file path {path:?} contains '\\': separate directories with '/'")]
    PathBackslash { path: String },
    #[error("file path {path:?} is absolute: paths are relative to the artifact root, drop the leading '/'")]
    PathAbsolute { path: String },
    #[error("file path {path:?} has the component {component:?}: empty, \".\" and \"..\" components are not allowed; write the path without them")]
    PathComponent { path: String, component: String },
    #[error("file path {path:?} has the component {component:?}, which contains ':': on Windows \"C:\" names a drive and \"name:stream\" a hidden stream of another file; rename it without ':'")]
    PathColon { path: String, component: String },
    #[error(
        "file {path:?} is listed after {previous:?}: files must be sorted by path (byte order)"
    )]
    PathsUnsorted { path: String, previous: String },
    #[error("file {path:?} is listed more than once: each path may appear once")]
    DuplicatePath { path: String },
    #[error("chunk {index} of file {path:?} is {size_bytes} bytes; chunks must be 1 to {CHUNK_SIZE_BYTES_MAX} bytes: chunk the file with quiver_transfer::Chunker")]
    ChunkSize {
        path: String,
        index: usize,
        size_bytes: u32,
    },
    #[error("file {path:?} says it is {size_bytes} bytes but its chunks add up to {chunks_size_bytes} bytes: rebuild the entry from the file's chunks")]
    SizeMismatch {
        path: String,
        size_bytes: u64,
        chunks_size_bytes: u64,
    },
}

/// `path`, cut to [`PATH_IN_ERROR_CHARS_MAX`] characters for an error message.
fn excerpt(path: &str) -> String {
    match path.char_indices().nth(PATH_IN_ERROR_CHARS_MAX) {
        None => path.to_owned(),
        Some((cut, _)) => format!("{}…", &path[..cut]),
    }
}

/// Checks that `path` can name a file of a model version: non-empty, at most [`PATH_BYTES_MAX`]
/// bytes, relative, '/'-separated, with no empty, "." or ".." component, no '\\', no NUL and no
/// ':'. Such a path cannot escape the directory a version is materialized into, on Unix or
/// Windows.
///
/// ':' is refused anywhere, not only in a leading drive component: on Windows `C:` names a
/// drive (`C:x` is relative to that drive's current directory, `C:/x` is absolute there) and
/// `file:name` names an NTFS alternate data stream of `file`, a write that lands inside another
/// file. No valid version needs a ':' in a path, and one rule is easier to trust than a list of
/// the ways Windows reads it.
pub fn validate_path(path: &str) -> Result<(), ManifestError> {
    if path.is_empty() {
        return Err(ManifestError::PathEmpty);
    }
    if path.len() > PATH_BYTES_MAX {
        return Err(ManifestError::PathTooLong {
            path: excerpt(path),
            len_bytes: path.len(),
        });
    }
    if path.contains('\0') {
        return Err(ManifestError::PathNul {
            path: excerpt(path),
        });
    }
    if path.contains('\\') {
        return Err(ManifestError::PathBackslash {
            path: excerpt(path),
        });
    }
    if path.starts_with('/') {
        return Err(ManifestError::PathAbsolute {
            path: excerpt(path),
        });
    }
    for component in path.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(ManifestError::PathComponent {
                path: excerpt(path),
                component: component.to_owned(),
            });
        }
        if component.contains(':') {
            return Err(ManifestError::PathColon {
                path: excerpt(path),
                component: excerpt(component),
            });
        }
    }
    Ok(())
}

impl Manifest {
    /// Sorts `files` by path and validates the result.
    pub fn from_files(mut files: Vec<FileEntry>) -> Result<Manifest, ManifestError> {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let manifest = Manifest { files };
        manifest.validate()?;
        Ok(manifest)
    }

    /// The version's identity: blake3 of the canonical encoding, all integers little-endian:
    ///
    /// ```text
    /// "quiver-manifest\0"  u32 version (1)  u64 file count
    /// per file:  u32 path length, path bytes (UTF-8), u64 size_bytes, u32 mode, u64 chunk count
    ///            per chunk: 32 bytes hash, u32 size_bytes
    /// ```
    ///
    /// Streams the encoding into the hasher; allocates nothing.
    pub fn root(&self) -> Hash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(ENCODING_TAG);
        hasher.update(&ENCODING_VERSION.to_le_bytes());
        hasher.update(&(self.files.len() as u64).to_le_bytes());
        for file in &self.files {
            // A path longer than u32::MAX cannot pass validate; saturate rather than wrap.
            let path_len = u32::try_from(file.path.len()).unwrap_or(u32::MAX);
            hasher.update(&path_len.to_le_bytes());
            hasher.update(file.path.as_bytes());
            hasher.update(&file.size_bytes.to_le_bytes());
            hasher.update(&file.mode.to_le_bytes());
            hasher.update(&(file.chunks.len() as u64).to_le_bytes());
            for chunk in &file.chunks {
                hasher.update(&chunk.hash.0);
                hasher.update(&chunk.size_bytes.to_le_bytes());
            }
        }
        Hash::from(hasher.finalize())
    }

    /// Sum of the files' declared sizes.
    pub fn total_size_bytes(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(f.size_bytes))
    }

    /// Every chunk reference's hash, file by file (a chunk shared by two files appears twice).
    pub fn chunk_hashes(&self) -> impl Iterator<Item = Hash> + '_ {
        self.files
            .iter()
            .flat_map(|f| f.chunks.iter().map(|c| c.hash))
    }

    /// Every chunk reference, file by file (a chunk shared by two files appears twice).
    pub fn chunk_refs(&self) -> Vec<ChunkRef> {
        self.files
            .iter()
            .flat_map(|f| f.chunks.iter().cloned())
            .collect()
    }

    /// Number of chunk references, summed over files (a chunk shared by two files counts twice).
    pub fn chunk_count(&self) -> usize {
        self.files.iter().map(|f| f.chunks.len()).sum()
    }

    /// Checks the limits and shape rules: at most [`FILES_PER_MANIFEST_MAX`] files and
    /// [`CHUNKS_PER_MANIFEST_MAX`] chunks; every path valid ([`validate_path`]); paths sorted and
    /// unique; every chunk 1 to [`CHUNK_SIZE_BYTES_MAX`] bytes; each file's chunks add up to its
    /// size. Chunk boundaries are content-defined, so no chunk is required to be a given size.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.files.len() > FILES_PER_MANIFEST_MAX {
            return Err(ManifestError::TooManyFiles {
                count: self.files.len(),
            });
        }
        let mut chunk_count: usize = 0;
        let mut previous: Option<&str> = None;
        for file in &self.files {
            validate_path(&file.path)?;
            if let Some(previous) = previous {
                if file.path.as_str() == previous {
                    return Err(ManifestError::DuplicatePath {
                        path: excerpt(&file.path),
                    });
                }
                if file.path.as_str() < previous {
                    return Err(ManifestError::PathsUnsorted {
                        path: excerpt(&file.path),
                        previous: excerpt(previous),
                    });
                }
            }
            previous = Some(&file.path);

            chunk_count = chunk_count.saturating_add(file.chunks.len());
            if chunk_count > CHUNKS_PER_MANIFEST_MAX {
                return Err(ManifestError::TooManyChunks {
                    path: excerpt(&file.path),
                });
            }
            let mut chunks_size_bytes: u64 = 0;
            for (index, chunk) in file.chunks.iter().enumerate() {
                if chunk.size_bytes == 0 || chunk.size_bytes as usize > CHUNK_SIZE_BYTES_MAX {
                    return Err(ManifestError::ChunkSize {
                        path: excerpt(&file.path),
                        index,
                        size_bytes: chunk.size_bytes,
                    });
                }
                // At most 2^18 chunks of at most 2^24 bytes: cannot overflow u64.
                chunks_size_bytes += u64::from(chunk.size_bytes);
            }
            if chunks_size_bytes != file.size_bytes {
                return Err(ManifestError::SizeMismatch {
                    path: excerpt(&file.path),
                    size_bytes: file.size_bytes,
                    chunks_size_bytes,
                });
            }
        }
        debug_assert_eq!(chunk_count, self.chunk_count());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: &str, size_bytes: u32) -> ChunkRef {
        ChunkRef {
            hash: Hash::of(seed.as_bytes()),
            size_bytes,
        }
    }

    fn file(path: &str, sizes: &[u32]) -> FileEntry {
        FileEntry {
            path: path.to_owned(),
            size_bytes: sizes.iter().map(|&s| u64::from(s)).sum(),
            mode: 0o644,
            chunks: sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| chunk(&format!("{path}#{i}"), s))
                .collect(),
        }
    }

    fn sample() -> Manifest {
        Manifest {
            files: vec![
                file("config.json", &[700]),
                file("empty.txt", &[]),
                file("weights/model.safetensors", &[1 << 22, 3 << 20, 12_345]),
            ],
        }
    }

    #[test]
    fn sample_is_valid_and_sums_up() {
        let m = sample();
        assert_eq!(m.validate(), Ok(()));
        assert_eq!(m.total_size_bytes(), 700 + (1 << 22) + (3 << 20) + 12_345);
        assert_eq!(m.chunk_count(), 4);
        assert_eq!(Manifest::default().validate(), Ok(()));
    }

    #[test]
    fn root_is_blake3_of_the_documented_encoding() {
        let m = Manifest {
            files: vec![file("a/b", &[5, 3])],
        };
        let mut expected = Vec::new();
        expected.extend_from_slice(b"quiver-manifest\0");
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&3u32.to_le_bytes());
        expected.extend_from_slice(b"a/b");
        expected.extend_from_slice(&8u64.to_le_bytes());
        expected.extend_from_slice(&0o644u32.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        for c in &m.files[0].chunks {
            expected.extend_from_slice(&c.hash.0);
            expected.extend_from_slice(&c.size_bytes.to_le_bytes());
        }
        assert_eq!(m.root(), Hash::of(&expected));
    }

    #[test]
    fn root_is_deterministic_and_changes_with_every_field() {
        let base = sample();
        let root = base.root();
        assert_eq!(root, sample().root());
        assert_eq!(root, base.clone().root());
        // Not a hash of serde output: reordering JSON keys cannot matter.
        let json = serde_json::to_string(&base).expect("serialize");
        let back: Manifest = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.root(), root);

        type Edit = Box<dyn Fn(&mut Manifest)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("path", Box::new(|m| m.files[0].path.push('x'))),
            ("size", Box::new(|m| m.files[0].size_bytes += 1)),
            ("mode", Box::new(|m| m.files[0].mode = 0o755)),
            (
                "chunk hash",
                Box::new(|m| m.files[2].chunks[1].hash.0[31] ^= 1),
            ),
            (
                "chunk size",
                Box::new(|m| m.files[2].chunks[2].size_bytes -= 1),
            ),
            (
                "chunk added",
                Box::new(|m| m.files[1].chunks.push(chunk("z", 1))),
            ),
            (
                "chunk removed",
                Box::new(|m| {
                    m.files[2].chunks.pop();
                }),
            ),
            (
                "file removed",
                Box::new(|m| {
                    m.files.remove(1);
                }),
            ),
            ("file added", Box::new(|m| m.files.push(file("zz", &[1])))),
            ("files reordered", Box::new(|m| m.files.swap(0, 1))),
            (
                "chunk moved to the next file",
                Box::new(|m| {
                    let c = m.files[0].chunks.pop().expect("file 0 has a chunk");
                    m.files[1].chunks.push(c);
                }),
            ),
        ];
        let mut seen = std::collections::BTreeSet::from([root]);
        for (what, edit) in edits {
            let mut m = sample();
            edit(&mut m);
            assert!(
                seen.insert(m.root()),
                "editing the {what} did not change the root"
            );
        }
    }

    #[test]
    fn validate_path_accepts_normal_relative_paths() {
        for ok in [
            "a",
            "weights/model.safetensors",
            "a/.hidden",
            "a/b..c/..d",
            "ü/名前",
        ] {
            assert_eq!(validate_path(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_path(&"a".repeat(PATH_BYTES_MAX)), Ok(()));
    }

    #[test]
    fn validate_path_rejects_bad_paths() {
        use ManifestError::*;
        let component = |path: &str, c: &str| PathComponent {
            path: path.into(),
            component: c.into(),
        };
        let cases = [
            ("", PathEmpty),
            (
                "/etc/passwd",
                PathAbsolute {
                    path: "/etc/passwd".into(),
                },
            ),
            (
                "a\\b",
                PathBackslash {
                    path: "a\\b".into(),
                },
            ),
            (
                "a\0b",
                PathNul {
                    path: "a\0b".into(),
                },
            ),
            ("../x", component("../x", "..")),
            ("a/../../x", component("a/../../x", "..")),
            ("a/..", component("a/..", "..")),
            ("./a", component("./a", ".")),
            ("a//b", component("a//b", "")),
            ("a/", component("a/", "")),
        ];
        for (path, expected) in cases {
            assert_eq!(validate_path(path), Err(expected), "{path:?}");
        }
        let long = "é".repeat(PATH_BYTES_MAX / 2) + "x";
        let err = validate_path(&long).expect_err("too long");
        assert_eq!(
            err,
            PathTooLong {
                path: "é".repeat(PATH_IN_ERROR_CHARS_MAX) + "…",
                len_bytes: PATH_BYTES_MAX + 1,
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "file path {:?} is 1025 bytes long, more than the limit of 1024: shorten it",
                "é".repeat(PATH_IN_ERROR_CHARS_MAX) + "…"
            )
        );
        assert_eq!(
            validate_path("/abs").expect_err("absolute").to_string(),
            "file path \"/abs\" is absolute: paths are relative to the artifact root, drop the leading '/'"
        );
    }

    #[test]
    fn validate_path_rejects_drive_and_stream_components() {
        let colon = |path: &str, c: &str| ManifestError::PathColon {
            path: path.into(),
            component: c.into(),
        };
        for (path, component) in [
            ("C:", "C:"),
            ("c:evil", "c:evil"),
            ("C:/x", "C:"),
            ("Z:/Windows/System32", "Z:"),
            (":", ":"),
            ("a/C:", "C:"),
            ("weights/model.bin:hidden", "model.bin:hidden"),
            ("a/b:$DATA", "b:$DATA"),
        ] {
            assert_eq!(validate_path(path), Err(colon(path, component)), "{path:?}");
        }
        // Earlier rules answer first: a backslash, then a bad component before the colon.
        assert!(matches!(
            validate_path("C:\\x"),
            Err(ManifestError::PathBackslash { .. })
        ));
        assert!(matches!(
            validate_path("../C:"),
            Err(ManifestError::PathComponent { .. })
        ));
        assert_eq!(
            validate_path("C:/x").expect_err("drive").to_string(),
            "file path \"C:/x\" has the component \"C:\", which contains ':': on Windows \"C:\" \
             names a drive and \"name:stream\" a hidden stream of another file; rename it \
             without ':'"
        );
        // A long component is cut in the message like the path.
        let long = format!("{}:", "a".repeat(200));
        let Err(ManifestError::PathColon { component, .. }) = validate_path(&long) else {
            panic!("a colon component must be refused");
        };
        assert_eq!(component, "a".repeat(PATH_IN_ERROR_CHARS_MAX) + "…");
    }

    #[test]
    fn validate_rejects_bad_path_in_a_file() {
        let mut m = sample();
        m.files[1].path = "x/../empty.txt".into();
        assert_eq!(
            m.validate(),
            Err(ManifestError::PathComponent {
                path: "x/../empty.txt".into(),
                component: "..".into()
            })
        );
    }

    #[test]
    fn validate_rejects_duplicate_and_unsorted_paths() {
        let mut dup = sample();
        dup.files[1].path = "config.json".into();
        assert_eq!(
            dup.validate(),
            Err(ManifestError::DuplicatePath {
                path: "config.json".into()
            })
        );
        assert_eq!(
            dup.validate().expect_err("duplicate").to_string(),
            "file \"config.json\" is listed more than once: each path may appear once"
        );

        let mut unsorted = sample();
        unsorted.files.swap(1, 2);
        assert_eq!(
            unsorted.validate(),
            Err(ManifestError::PathsUnsorted {
                path: "empty.txt".into(),
                previous: "weights/model.safetensors".into(),
            })
        );
        // from_files sorts first.
        let sorted = Manifest::from_files(unsorted.files).expect("valid once sorted");
        assert_eq!(sorted, sample());
        // Byte order, not locale order: "B" < "a".
        assert_eq!(
            Manifest::from_files(vec![file("a", &[1]), file("B", &[1])])
                .expect("valid")
                .files[0]
                .path,
            "B"
        );
    }

    #[test]
    fn validate_rejects_too_many_files_at_the_limit_plus_one() {
        let files: Vec<FileEntry> = (0..FILES_PER_MANIFEST_MAX)
            .map(|i| file(&format!("f{i:05}"), &[]))
            .collect();
        let mut m = Manifest { files };
        assert_eq!(m.validate(), Ok(()));
        m.files.push(file("g", &[]));
        assert_eq!(
            m.validate(),
            Err(ManifestError::TooManyFiles {
                count: FILES_PER_MANIFEST_MAX + 1
            })
        );
        assert_eq!(
            m.validate().expect_err("too many").to_string(),
            "manifest lists 10001 files, more than the limit of 10000: pack small files into an archive or split the artifact"
        );
    }

    #[test]
    fn validate_rejects_too_many_chunks_at_the_limit_plus_one() {
        let per_file = CHUNKS_PER_MANIFEST_MAX / 2;
        let mk = |path: &str, n: usize| FileEntry {
            path: path.into(),
            size_bytes: n as u64,
            mode: 0o644,
            chunks: vec![chunk(path, 1); n],
        };
        let mut m = Manifest {
            files: vec![mk("a", per_file), mk("b", per_file)],
        };
        assert_eq!(m.validate(), Ok(()));
        m.files.push(mk("c", 1));
        assert_eq!(
            m.validate(),
            Err(ManifestError::TooManyChunks { path: "c".into() })
        );
    }

    #[test]
    fn validate_rejects_size_mismatch_and_bad_chunk_sizes() {
        let mut m = sample();
        m.files[2].size_bytes += 1;
        let expected_chunks = (1u64 << 22) + (3 << 20) + 12_345;
        assert_eq!(
            m.validate(),
            Err(ManifestError::SizeMismatch {
                path: "weights/model.safetensors".into(),
                size_bytes: expected_chunks + 1,
                chunks_size_bytes: expected_chunks,
            })
        );
        assert_eq!(
            m.validate().expect_err("mismatch").to_string(),
            format!(
                "file \"weights/model.safetensors\" says it is {} bytes but its chunks add up to {} bytes: rebuild the entry from the file's chunks",
                expected_chunks + 1,
                expected_chunks
            )
        );

        let mut empty_with_size = sample();
        empty_with_size.files[1].size_bytes = 1;
        assert!(matches!(
            empty_with_size.validate(),
            Err(ManifestError::SizeMismatch {
                chunks_size_bytes: 0,
                ..
            })
        ));

        let max = CHUNK_SIZE_BYTES_MAX as u32;
        assert_eq!(
            Manifest {
                files: vec![file("a", &[max, 1])]
            }
            .validate(),
            Ok(())
        );
        for bad in [0, max + 1] {
            assert_eq!(
                Manifest {
                    files: vec![file("a", &[1, bad])]
                }
                .validate(),
                Err(ManifestError::ChunkSize {
                    path: "a".into(),
                    index: 1,
                    size_bytes: bad
                })
            );
        }
    }

    mod properties {
        //! Property tests: `validate_path` over arbitrary and path-like strings, and the
        //! manifest's decoder (JSON, then `validate`) over arbitrary bytes and hostile manifests.

        use super::*;
        use proptest::prelude::*;
        use std::path::{Component, Path};

        /// Pieces that paths are built from: the ones every rule is about, and ordinary ones.
        fn atom() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                Just(".".to_owned()),
                Just("..".to_owned()),
                Just("...".to_owned()),
                Just("C:".to_owned()),
                Just("c:evil".to_owned()),
                Just("file:stream".to_owned()),
                Just(":".to_owned()),
                Just("\\".to_owned()),
                Just("\\\\server\\share".to_owned()),
                Just("\0".to_owned()),
                Just("/".to_owned()),
                Just("~".to_owned()),
                Just("名前".to_owned()),
                "[a-z.]{1,8}",
                any::<String>(),
            ]
        }

        /// Strings that look like paths: atoms joined by '/', sometimes with a leading '/'.
        fn path_like() -> impl Strategy<Value = String> {
            (any::<bool>(), prop::collection::vec(atom(), 1..6)).prop_map(|(abs, atoms)| {
                let joined = atoms.join("/");
                if abs {
                    format!("/{joined}")
                } else {
                    joined
                }
            })
        }

        /// What an accepted path must be, checked independently of `validate_path`: every
        /// component, joined onto a directory one by one, adds exactly one normal component
        /// under it, so the file stays inside that directory lexically, on Unix and Windows.
        fn assert_stays_inside(path: &str) {
            assert!(!path.is_empty() && path.len() <= PATH_BYTES_MAX, "{path:?}");
            assert!(!path.starts_with('/'), "{path:?}");
            let dir = Path::new("/out/dir");
            let mut joined = dir.to_path_buf();
            let mut count = 0;
            for component in path.split('/') {
                assert!(
                    !component.is_empty() && component != "." && component != "..",
                    "{path:?}"
                );
                for refused in ['\\', '\0', ':'] {
                    assert!(!component.contains(refused), "{path:?}");
                }
                let parsed: Vec<Component<'_>> = Path::new(component).components().collect();
                assert!(
                    matches!(parsed.as_slice(), [Component::Normal(_)]),
                    "{path:?}: {component:?} is not one normal component"
                );
                joined.push(component);
                count += 1;
            }
            assert!(joined.starts_with(dir), "{path:?}");
            assert_eq!(
                joined.components().count(),
                dir.components().count() + count,
                "{path:?}"
            );
        }

        /// Every invariant `validate` promises, checked independently of it.
        fn assert_manifest_invariants(manifest: &Manifest) {
            assert!(manifest.files.len() <= FILES_PER_MANIFEST_MAX);
            assert!(manifest.chunk_count() <= CHUNKS_PER_MANIFEST_MAX);
            for pair in manifest.files.windows(2) {
                assert!(pair[0].path < pair[1].path, "sorted and unique");
            }
            for file in &manifest.files {
                assert_stays_inside(&file.path);
                let mut sum: u64 = 0;
                for chunk in &file.chunks {
                    assert!(chunk.size_bytes >= 1);
                    assert!(chunk.size_bytes as usize <= CHUNK_SIZE_BYTES_MAX);
                    sum += u64::from(chunk.size_bytes);
                }
                assert_eq!(sum, file.size_bytes, "{:?}", file.path);
            }
        }

        fn chunk_sizes() -> impl Strategy<Value = Vec<u32>> {
            let size = prop_oneof![
                Just(0u32),
                Just(CHUNK_SIZE_BYTES_MAX as u32),
                Just(CHUNK_SIZE_BYTES_MAX as u32 + 1),
                Just(u32::MAX),
                1u32..5_000,
            ];
            prop::collection::vec(size, 0..4)
        }

        /// Manifests from hostile parts: path-like names, any order, duplicates, chunk sizes at
        /// and past their bounds, and declared sizes that are right only some of the time.
        fn hostile_manifest() -> impl Strategy<Value = Manifest> {
            let path = prop_oneof![path_like(), "[a-c]{1,2}(/[a-c]{1,2})?"];
            let entry = (
                path,
                chunk_sizes(),
                any::<bool>(),
                any::<u64>(),
                any::<u32>(),
            )
                .prop_map(|(path, sizes, honest, size_bytes, mode)| {
                    let sum: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
                    FileEntry {
                        chunks: sizes
                            .iter()
                            .enumerate()
                            .map(|(i, &s)| chunk(&format!("{path}#{i}"), s))
                            .collect(),
                        path,
                        size_bytes: if honest { sum } else { size_bytes },
                        mode,
                    }
                });
            (prop::collection::vec(entry, 0..6), any::<bool>()).prop_map(|(files, sort)| {
                let mut manifest = Manifest { files };
                if sort {
                    manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
                }
                manifest
            })
        }

        proptest! {
            #![proptest_config(crate::proptest_config(2_000))]

            #[test]
            fn validate_path_accepts_only_paths_that_stay_inside(
                path in prop_oneof![path_like(), any::<String>(), "\\PC{0,40}"],
            ) {
                if validate_path(&path).is_ok() {
                    assert_stays_inside(&path);
                }
            }

            #[test]
            fn validate_path_refuses_every_colon(
                before in "[a-z/]{0,6}",
                after in "[a-z/]{0,6}",
            ) {
                let path = format!("{before}:{after}");
                prop_assert!(validate_path(&path).is_err(), "{:?}", path);
            }
        }

        proptest! {
            #![proptest_config(crate::proptest_config(500))]

            #[test]
            fn manifest_decoder_survives_arbitrary_bytes(
                bytes in prop::collection::vec(any::<u8>(), 0..256),
            ) {
                if let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) {
                    if manifest.validate().is_ok() {
                        assert_manifest_invariants(&manifest);
                    }
                }
            }

            #[test]
            fn decoded_manifests_are_accepted_only_when_they_hold_every_invariant(
                manifest in hostile_manifest(),
                cut in any::<prop::sample::Index>(),
                flip in any::<(prop::sample::Index, u8)>(),
            ) {
                let json = serde_json::to_vec(&manifest).expect("encode");
                let decoded: Manifest = serde_json::from_slice(&json).expect("own encoding");
                prop_assert_eq!(&decoded, &manifest);
                prop_assert_eq!(decoded.root(), manifest.root());
                if decoded.validate().is_ok() {
                    assert_manifest_invariants(&decoded);
                }
                // Damaged encodings: cut short, or one byte changed.
                let cut = &json[..cut.index(json.len() + 1)];
                let mut flipped = json.clone();
                let at = flip.0.index(flipped.len());
                flipped[at] ^= flip.1.max(1);
                for damaged in [cut, &flipped[..]] {
                    if let Ok(m) = serde_json::from_slice::<Manifest>(damaged) {
                        if m.validate().is_ok() {
                            assert_manifest_invariants(&m);
                        }
                    }
                }
            }
        }
    }
}
