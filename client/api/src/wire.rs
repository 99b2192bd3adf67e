//! Conversions between the transfer crate's manifest and its protobuf form,
//! shared by the node (which sends it) and the SDK (which checks it).

use quiver_transfer::{ChunkRef, FileEntry, Hash, Manifest};

use crate::proto;

pub fn manifest_to_proto(manifest: &Manifest) -> proto::Manifest {
    proto::Manifest {
        files: manifest
            .files
            .iter()
            .map(|f| proto::ManifestFile {
                path: f.path.clone(),
                size_bytes: f.size_bytes,
                mode: f.mode,
                chunks: f
                    .chunks
                    .iter()
                    .map(|c| proto::ChunkRef {
                        hash: c.hash.0.to_vec(),
                        size_bytes: c.size_bytes,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The inverse of `manifest_to_proto`. A chunk hash that is not 32 bytes is
/// an error that names its file. The result is not validated: callers check
/// its root against the version they asked for.
pub fn manifest_from_proto(wire: proto::Manifest) -> Result<Manifest, String> {
    let mut files = Vec::with_capacity(wire.files.len());
    for file in wire.files {
        let mut chunks = Vec::with_capacity(file.chunks.len());
        for chunk in file.chunks {
            let hash: [u8; 32] = chunk.hash.as_slice().try_into().map_err(|_| {
                format!(
                    "lists a chunk of file '{}' whose hash is {} bytes, not 32",
                    file.path,
                    chunk.hash.len()
                )
            })?;
            chunks.push(ChunkRef {
                hash: Hash(hash),
                size_bytes: chunk.size_bytes,
            });
        }
        files.push(FileEntry {
            path: file.path,
            size_bytes: file.size_bytes,
            mode: file.mode,
            chunks,
        });
    }
    Ok(Manifest { files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_short_hashes() {
        let manifest = Manifest {
            files: vec![FileEntry {
                path: "w.bin".into(),
                size_bytes: 3,
                mode: 0o644,
                chunks: vec![ChunkRef {
                    hash: Hash::of(b"abc"),
                    size_bytes: 3,
                }],
            }],
        };
        let wire = manifest_to_proto(&manifest);
        assert_eq!(manifest_from_proto(wire.clone()).unwrap(), manifest);
        let mut bad = wire;
        bad.files[0].chunks[0].hash.pop();
        assert_eq!(
            manifest_from_proto(bad).unwrap_err(),
            "lists a chunk of file 'w.bin' whose hash is 31 bytes, not 32"
        );
    }
}
