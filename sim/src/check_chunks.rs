//! Invariant checkers for artifacts, over plain data (the chunk side of [`crate::check`]).
//!
//! The shell (`chunks.rs`) records what the code under test did — the bytes a download handed
//! to a client, how many intact copies of each chunk the simulated stores held when a version
//! was acknowledged, which chunks every node holds once faults heal — and these pure functions
//! judge it:
//! - every artifact handed to a client matches what was registered ([`check_download`]): each
//!   file's blake3 is recomputed here with the `blake3` crate, from the bytes the client got,
//!   and compared with the hash of the bytes the pipeline uploaded ([`FileTruth`]), so neither
//!   the manifest code nor the verification under test vouches for itself;
//! - a version acknowledged READY has at least W intact copies of every chunk at that moment
//!   ([`check_ready_copies`]);
//! - a copy counts only if it is durable (a power loss would not take it) and its bytes still
//!   match the hash: the stores' `holds_intact` decides, so a copy a store kept after its sync
//!   failed is not one;
//! - liveness: after faults heal, replication reaches its target: every node that should hold
//!   a READY version (every node, up to `FULL_REPLICATION_NODES_MAX`) holds an intact copy of
//!   each of its chunks ([`check_replication`]).

use std::collections::{BTreeMap, BTreeSet};

use quiver_transfer::{ChunkRef, Hash};

use crate::check::Violation;
use crate::schedule::NodeId;

/// What a client must get back for one file of a registered version: computed from the bytes the
/// pipeline uploaded, with the `blake3` crate directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileTruth {
    pub path: String,
    pub size_bytes: u64,
    pub blake3: [u8; 32],
}

impl FileTruth {
    pub fn of(path: &str, bytes: &[u8]) -> Self {
        FileTruth {
            path: path.to_string(),
            size_bytes: bytes.len() as u64,
            blake3: *blake3::hash(bytes).as_bytes(),
        }
    }
}

/// One file as a download handed it to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downloaded {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// The files a client got for `version` (via node `node`) are exactly the registered ones.
pub fn check_download(
    version: &str,
    node: NodeId,
    truth: &[FileTruth],
    got: &[Downloaded],
) -> Vec<Violation> {
    let mismatch = |detail: String| {
        Violation::new(
            "artifact-mismatch",
            format!("{version} downloaded via n{node}: {detail}"),
        )
    };
    let paths: Vec<&str> = got.iter().map(|f| f.path.as_str()).collect();
    let want: Vec<&str> = truth.iter().map(|f| f.path.as_str()).collect();
    if paths != want {
        return vec![mismatch(format!(
            "the client got files {paths:?}, the version has {want:?}"
        ))];
    }
    truth
        .iter()
        .zip(got)
        .filter_map(|(t, g)| {
            let hash = blake3::hash(&g.bytes);
            (g.bytes.len() as u64 != t.size_bytes || *hash.as_bytes() != t.blake3).then(|| {
                mismatch(format!(
                    "file '{}' has {} bytes with blake3 {}, the registered file has {} bytes \
                     with blake3 {}",
                    t.path,
                    g.bytes.len(),
                    &hash.to_hex()[..12],
                    t.size_bytes,
                    &blake3::Hash::from(t.blake3).to_hex()[..12]
                ))
            })
        })
        .collect()
}

/// When `version` was acknowledged READY, each of its chunks had `copies[hash]` intact copies
/// over all the simulated stores; W (`copies_required`) is the least allowed.
pub fn check_ready_copies(
    version: &str,
    chunks: &[ChunkRef],
    copies: &BTreeMap<Hash, usize>,
    copies_required: usize,
) -> Vec<Violation> {
    let short: BTreeSet<(Hash, usize)> = chunks
        .iter()
        .map(|c| (c.hash, copies.get(&c.hash).copied().unwrap_or(0)))
        .filter(|(_, n)| *n < copies_required)
        .collect();
    if short.is_empty() {
        return Vec::new();
    }
    let list: Vec<String> = short
        .iter()
        .take(CHUNKS_LISTED_MAX)
        .map(|(h, n)| format!("{} has {n}", h.short()))
        .collect();
    vec![Violation::new(
        "ready-under-replicated",
        format!(
            "{version} was acknowledged READY with {} of its {} chunks below {copies_required} \
             intact copies ({}{})",
            short.len(),
            chunks.len(),
            list.join(", "),
            if short.len() > CHUNKS_LISTED_MAX {
                ", ..."
            } else {
                ""
            }
        ),
    )]
}

/// Chunks named in one violation's detail; the count is always given.
pub const CHUNKS_LISTED_MAX: usize = 4;

/// One READY version and the nodes that should hold it whole (its repair target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub version: String,
    pub chunks: Vec<ChunkRef>,
    pub holders: Vec<NodeId>,
}

/// Liveness after healing (`waited_ms` after it): every target holder holds an intact copy of
/// every chunk of its version. `intact[node]` is the set of chunks the node holds intact.
pub fn check_replication(
    targets: &[Target],
    intact: &BTreeMap<NodeId, BTreeSet<Hash>>,
    waited_ms: u64,
) -> Vec<Violation> {
    let empty = BTreeSet::new();
    let mut out = Vec::new();
    for t in targets {
        for node in &t.holders {
            let held = intact.get(node).unwrap_or(&empty);
            let lacking = t.chunks.iter().filter(|c| !held.contains(&c.hash)).count();
            if lacking > 0 {
                out.push(Violation::new(
                    "replication-liveness",
                    format!(
                        "{} s after healing n{node} still lacks a durable intact copy of {lacking} of \
                         the {} chunks of READY version {}",
                        waited_ms as f64 / 1_000.0,
                        t.chunks.len(),
                        t.version
                    ),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(label: &str) -> ChunkRef {
        ChunkRef {
            hash: Hash::of(label.as_bytes()),
            size_bytes: label.len() as u32,
        }
    }

    #[test]
    fn a_download_must_match_the_registered_bytes_file_by_file() {
        let truth = vec![
            FileTruth::of("a.bin", b"weights"),
            FileTruth::of("b.py", b"code"),
        ];
        let good = vec![
            Downloaded {
                path: "a.bin".into(),
                bytes: b"weights".to_vec(),
            },
            Downloaded {
                path: "b.py".into(),
                bytes: b"code".to_vec(),
            },
        ];
        assert_eq!(check_download("m/1", 2, &truth, &good), vec![]);

        let mut flipped = good.clone();
        flipped[0].bytes[0] ^= 0xff;
        let v = check_download("m/1", 2, &truth, &flipped);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, "artifact-mismatch");
        assert!(
            v[0].detail.contains("m/1 downloaded via n2: file 'a.bin'"),
            "{}",
            v[0]
        );

        let mut short = good.clone();
        short[1].bytes.pop();
        assert_eq!(check_download("m/1", 2, &truth, &short).len(), 1);

        let missing = vec![good[0].clone()];
        let v = check_download("m/1", 2, &truth, &missing);
        assert!(v[0].detail.contains("the client got files"), "{}", v[0]);
    }

    #[test]
    fn an_acknowledged_version_needs_w_intact_copies_of_every_chunk() {
        let chunks = vec![chunk("a"), chunk("b"), chunk("c")];
        let mut copies = BTreeMap::new();
        copies.insert(chunks[0].hash, 3);
        copies.insert(chunks[1].hash, 2);
        copies.insert(chunks[2].hash, 2);
        assert_eq!(check_ready_copies("m/1", &chunks, &copies, 2), vec![]);
        copies.insert(chunks[2].hash, 1);
        copies.remove(&chunks[1].hash);
        let v = check_ready_copies("m/1", &chunks, &copies, 2);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].kind, "ready-under-replicated");
        assert!(
            v[0].detail.contains("2 of its 3 chunks below 2"),
            "{}",
            v[0]
        );
        assert!(v[0].detail.contains("has 0") && v[0].detail.contains("has 1"));
    }

    #[test]
    fn every_holder_must_end_with_every_chunk_intact() {
        let targets = vec![
            Target {
                version: "m/1".into(),
                chunks: vec![chunk("a"), chunk("b")],
                holders: vec![1, 2, 3],
            },
            Target {
                version: "m/2".into(),
                chunks: vec![chunk("c")],
                holders: vec![1, 2, 3],
            },
        ];
        let all: BTreeSet<Hash> = ["a", "b", "c"].iter().map(|l| chunk(l).hash).collect();
        let mut intact: BTreeMap<NodeId, BTreeSet<Hash>> =
            (1..=3).map(|n| (n, all.clone())).collect();
        assert_eq!(check_replication(&targets, &intact, 5_000), vec![]);
        intact.get_mut(&2).unwrap().remove(&chunk("b").hash);
        intact.remove(&3);
        let v = check_replication(&targets, &intact, 5_000);
        let details: Vec<&str> = v.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(v.len(), 3, "{details:?}");
        assert!(v.iter().all(|v| v.kind == "replication-liveness"));
        assert!(details[0].contains("n2 still lacks a durable intact copy of 1 of the 2 chunks"));
        assert!(details[1].contains("n3") && details[2].contains("m/2"));
    }
}
