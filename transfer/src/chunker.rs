//! Content-defined chunking: where a file is cut into chunks depends on its bytes, not on offsets.
//!
//! Why not fixed-size chunks: a fine-tuned model whose safetensors header grew by eight bytes
//! shifts every tensor behind it, and fixed-size chunks then share nothing with the base version.
//! Cutting where a rolling hash of the last few dozen bytes hits a pattern re-synchronizes right
//! after an insertion, so unchanged tensors keep their chunks. `docs/decisions/0001-chunking.md`
//! has the measurement.
//!
//! The algorithm is FastCDC (Xia et al.) with its gear hash, cut-point skipping and normalized
//! chunking (level 1), implemented here rather than taken from a crate because the boundaries are
//! part of the data format: the same file must be cut the same way on every node and every release,
//! or the same bundle gets a different manifest root. A test pins the boundaries for a fixed input.
//!
//! Rule, for each chunk, with `b[i]` its bytes from the chunk's start:
//! - bytes `0..MIN` are never a cut point and are not hashed;
//! - for `i >= MIN`: `h = (h << 1) + GEAR[b[i]]` (wrapping, `h` starts at 0); the chunk ends
//!   after byte `i` if `h & MASK == 0`, where `MASK` is `log2(AVG) + 1` bits just below bit 63
//!   while the chunk would be shorter than `AVG`, and `log2(AVG) - 1` such bits after
//!   (normalization);
//! - a chunk that reaches `MAX` bytes ends there; the file's last chunk is whatever remains.
//!
//! Streaming: the hash state survives between `push` calls, so each byte is scanned once and the
//! result does not depend on how the input is split. Memory: one buffer of at most `MAX` bytes.

use crate::{ChunkRef, Hash, CHUNK_SIZE_BYTES_AVG, CHUNK_SIZE_BYTES_MAX, CHUNK_SIZE_BYTES_MIN};

const MIN: usize = CHUNK_SIZE_BYTES_MIN;
const AVG: usize = CHUNK_SIZE_BYTES_AVG;
const MAX: usize = CHUNK_SIZE_BYTES_MAX;

const _: () = assert!(AVG.is_power_of_two());
const AVG_BITS: u32 = AVG.trailing_zeros();
/// Stricter mask (one bit more than the average needs) below the average size.
pub(crate) const MASK_S: u64 = high_bits(AVG_BITS + 1);
/// Looser mask (one bit fewer) at and above the average size.
pub(crate) const MASK_L: u64 = high_bits(AVG_BITS - 1);

/// `n` bits just below the top bit. The high bits of the gear hash depend on the most recent
/// 63 bytes, the low bits on only the last few: testing high bits gives the widest window, as
/// FastCDC's spread masks intend. Bit 63 is left out so that the two-bytes-at-a-time scan below
/// (which computes the hash shifted left by one) sees every tested bit.
const fn high_bits(n: u32) -> u64 {
    (!0u64 << (64 - n)) >> 1
}

/// Seed of the gear table. Changing it (or the generator) changes every chunk boundary.
const GEAR_SEED: u64 = u64::from_le_bytes(*b"quiver01");

/// 256 pseudo-random words, one per byte value, from splitmix64 seeded with [`GEAR_SEED`].
pub(crate) const GEAR: [u64; 256] = gear_table();
/// `GEAR` shifted left by one, for the two-bytes-at-a-time scan.
const GEAR_LS: [u64; 256] = {
    let mut table = GEAR;
    let mut i = 0;
    while i < table.len() {
        table[i] <<= 1;
        i += 1;
    }
    table
};

const fn gear_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state = GEAR_SEED;
    let mut i = 0;
    while i < table.len() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

/// Scans `bytes` with gear hash state `h`; returns the index of the first byte after which the
/// hash matches `mask`, or `None` (with `h` updated) if none does.
///
/// Two bytes per step (FastCDC 2020's "rolling two bytes"): after the first byte the hash is
/// computed shifted left by one, `(h << 2) + GEAR_LS[b0]`, and tested against `mask << 1`; adding
/// `GEAR[b1]` then gives exactly the one-byte-at-a-time hash. Same cut points, shorter dependency
/// chain. Requires bit 63 of `mask` clear.
#[inline]
fn find_cut(h: &mut u64, bytes: &[u8], mask: u64) -> Option<usize> {
    debug_assert_eq!(mask >> 63, 0);
    let mask_ls = mask << 1;
    let mut hash = *h;
    let mut pairs = bytes.chunks_exact(2);
    let mut i = 0;
    for pair in &mut pairs {
        hash = (hash << 2).wrapping_add(GEAR_LS[pair[0] as usize]);
        if hash & mask_ls == 0 {
            return Some(i);
        }
        hash = hash.wrapping_add(GEAR[pair[1] as usize]);
        if hash & mask == 0 {
            return Some(i + 1);
        }
        i += 2;
    }
    if let [b] = pairs.remainder() {
        hash = (hash << 1).wrapping_add(GEAR[*b as usize]);
        if hash & mask == 0 {
            return Some(i);
        }
    }
    *h = hash;
    None
}

/// Streaming chunker for the bytes of ONE file, fed in pieces of any size.
///
/// Calls `emit` once per completed chunk, in file order. An empty file has no chunks. If `emit`
/// fails, the error is returned and the chunker should be dropped (the chunk it was emitting is
/// discarded).
pub struct Chunker {
    /// Bytes of the current, unfinished chunk; never longer than `MAX`.
    buf: Vec<u8>,
    /// Gear hash over `buf[MIN..]`.
    hash: u64,
}

impl Default for Chunker {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunker {
    pub fn new() -> Self {
        Chunker {
            buf: Vec::new(),
            hash: 0,
        }
    }

    /// Appends `data`, emitting every chunk it completes.
    pub fn push<E>(
        &mut self,
        mut data: &[u8],
        mut emit: impl FnMut(ChunkRef, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            let len = self.buf.len();
            debug_assert!(len < MAX);
            let piece = &data[..data.len().min(MAX - len)];
            let (consumed, cut) = match self.scan(len, piece) {
                Some(i) => (i + 1, true),
                None => (piece.len(), false),
            };
            self.extend(&piece[..consumed]);
            data = &data[consumed..];
            if cut || self.buf.len() == MAX {
                self.emit_chunk(&mut emit)?;
            }
        }
        Ok(())
    }

    /// Emits the last chunk, if any bytes are buffered.
    pub fn finish<E>(
        mut self,
        mut emit: impl FnMut(ChunkRef, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.emit_chunk(&mut emit)
    }

    /// Looks for a cut point in `piece`, whose first byte is at `offset` in the current chunk and
    /// which does not run past `MAX`. Returns the index in `piece` of the byte that ends the chunk.
    fn scan(&mut self, offset: usize, piece: &[u8]) -> Option<usize> {
        debug_assert!(offset + piece.len() <= MAX);
        // Cut-point skipping: nothing before MIN is hashed.
        let skip = MIN.saturating_sub(offset).min(piece.len());
        let start = offset + skip;
        // Byte at chunk index i ends a chunk of i + 1 bytes: strict mask while i + 1 < AVG.
        let strict_end = (AVG - 1).saturating_sub(start).min(piece.len() - skip) + skip;
        if let Some(i) = find_cut(&mut self.hash, &piece[skip..strict_end], MASK_S) {
            return Some(skip + i);
        }
        find_cut(&mut self.hash, &piece[strict_end..], MASK_L).map(|i| strict_end + i)
    }

    /// Appends to `buf`, growing it geometrically but never beyond `MAX` bytes of capacity.
    fn extend(&mut self, bytes: &[u8]) {
        let needed = self.buf.len() + bytes.len();
        debug_assert!(needed <= MAX);
        if needed > self.buf.capacity() {
            let target = needed.max(self.buf.capacity() * 2).min(MAX);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    fn emit_chunk<E>(
        &mut self,
        emit: &mut impl FnMut(ChunkRef, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        debug_assert!(!self.buf.is_empty() && self.buf.len() <= MAX);
        let chunk = ChunkRef {
            hash: Hash::of(&self.buf),
            // MAX <= 16 MiB is asserted at compile time in lib.rs.
            size_bytes: self.buf.len() as u32,
        };
        let result = emit(chunk, &self.buf);
        self.buf.clear();
        self.hash = 0;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};

    /// The rule from the module comment, written as plainly as possible over a whole buffer.
    fn reference_lengths(data: &[u8]) -> Vec<usize> {
        let mut lengths = Vec::new();
        let mut start = 0;
        while start < data.len() {
            let rest = &data[start..];
            let mut len = rest.len().min(MAX);
            let mut h: u64 = 0;
            for i in MIN..len {
                h = (h << 1).wrapping_add(GEAR[rest[i] as usize]);
                let mask = if i + 1 < AVG { MASK_S } else { MASK_L };
                if h & mask == 0 {
                    len = i + 1;
                    break;
                }
            }
            lengths.push(len);
            start += len;
        }
        lengths
    }

    /// Chunks `data` fed in pieces of the given sizes (cycled); returns (ref, bytes) per chunk.
    fn chunk_in_pieces(data: &[u8], piece_sizes: &[usize]) -> Vec<(ChunkRef, Vec<u8>)> {
        let mut out = Vec::new();
        let mut chunker = Chunker::new();
        let mut emit = |r: ChunkRef, bytes: &[u8]| {
            out.push((r, bytes.to_vec()));
            Ok::<(), ()>(())
        };
        let mut rest = data;
        for &size in piece_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(size.min(rest.len()));
            chunker.push(piece, &mut emit).expect("infallible");
            rest = tail;
        }
        chunker.finish(&mut emit).expect("infallible");
        out
    }

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    fn check_chunks(data: &[u8], chunks: &[(ChunkRef, Vec<u8>)]) {
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.1.iter().copied()).collect();
        assert_eq!(joined, data, "chunks must concatenate to the input");
        for (i, (r, bytes)) in chunks.iter().enumerate() {
            assert_eq!(r.size_bytes as usize, bytes.len());
            assert_eq!(r.hash, Hash::of(bytes));
            assert!(bytes.len() <= MAX);
            if i + 1 < chunks.len() {
                assert!(bytes.len() > MIN, "chunk {i} is {} bytes", bytes.len());
            }
        }
    }

    #[test]
    fn piece_sizes_do_not_change_the_chunks() {
        let sizes = [
            0,
            1,
            MIN,
            MIN + 1,
            AVG - 1,
            AVG,
            AVG + 1,
            MAX - 1,
            MAX,
            MAX + 1,
            3 * MAX + 7,
        ];
        let mut rng = StdRng::seed_from_u64(7);
        for (n, &len) in sizes.iter().enumerate() {
            let data = random_bytes(n as u64, len);
            let one_shot = chunk_in_pieces(&data, &[len.max(1)]);
            check_chunks(&data, &one_shot);
            let lengths: Vec<usize> = one_shot.iter().map(|c| c.1.len()).collect();
            assert_eq!(lengths, reference_lengths(&data), "len {len}");
            if len == 0 {
                assert!(one_shot.is_empty(), "an empty file has no chunks");
            }
            // Random piece sizes, from single bytes to more than a chunk.
            for bound in [3, 4096, 3 * MAX / 2] {
                let pieces: Vec<usize> = (0..64).map(|_| rng.gen_range(1..=bound)).collect();
                let streamed = chunk_in_pieces(&data, &pieces);
                assert_eq!(streamed.len(), one_shot.len(), "len {len}, bound {bound}");
                for (a, b) in streamed.iter().zip(&one_shot) {
                    assert_eq!(a.0, b.0, "len {len}, bound {bound}");
                }
            }
        }
    }

    #[test]
    fn random_data_is_cut_between_min_and_max() {
        let data = random_bytes(99, 3 * MAX);
        let chunks = chunk_in_pieces(&data, &[1 << 20]);
        check_chunks(&data, &chunks);
        // Content-defined: on random data cut points come from the hash, not the size limit.
        assert!(
            chunks[..chunks.len() - 1].iter().any(|c| c.1.len() < MAX),
            "{:?}",
            chunks.iter().map(|c| c.1.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn data_without_cut_points_is_cut_at_max() {
        // All zeros: the gear hash settles on one value that does not match the masks.
        let settled = (0..64).fold(0u64, |h, _| (h << 1).wrapping_add(GEAR[0]));
        assert!(settled & MASK_L != 0);
        let data = vec![0u8; 2 * MAX + 5];
        let lengths: Vec<usize> = chunk_in_pieces(&data, &[MAX - 1])
            .iter()
            .map(|c| c.1.len())
            .collect();
        assert_eq!(lengths, vec![MAX, MAX, 5]);
    }

    #[test]
    fn an_insertion_only_changes_nearby_chunks() {
        let data = random_bytes(5, 8 * AVG);
        let mut shifted = b"header grew".to_vec();
        shifted.extend_from_slice(&data);
        let a = chunk_in_pieces(&data, &[1 << 20]);
        let b = chunk_in_pieces(&shifted, &[1 << 20]);
        let known: std::collections::HashSet<Hash> = a.iter().map(|c| c.0.hash).collect();
        let shared = b.iter().filter(|c| known.contains(&c.0.hash)).count();
        assert!(a.len() >= 3, "need several chunks, got {}", a.len());
        assert!(
            shared >= a.len() - 1,
            "{shared} of {} chunks shared",
            a.len()
        );
    }

    #[test]
    fn emit_error_is_returned() {
        let data = vec![0u8; MAX + 1];
        let mut chunker = Chunker::new();
        let err = chunker.push(&data, |_, _| Err("disk full"));
        assert_eq!(err, Err("disk full"));
        let mut calls = 0;
        let err = Chunker::new().finish(|_, _| -> Result<(), &str> {
            calls += 1;
            Err("never")
        });
        assert_eq!((err, calls), (Ok(()), 0));
    }

    /// Chunk boundaries are part of the format (they determine manifest roots). This pins them for
    /// a fixed input generated without any crate, so that a change to the gear table, masks or
    /// sizes fails here rather than silently breaking deduplication against stored versions.
    #[test]
    fn chunk_boundaries_are_pinned() {
        let mut state = 0u64;
        let data: Vec<u8> = (0..3 * MAX)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect();
        let lengths: Vec<usize> = chunk_in_pieces(&data, &[1 << 20])
            .iter()
            .map(|c| c.1.len())
            .collect();
        assert_eq!(lengths, PINNED_LENGTHS);
    }

    /// Recorded from this implementation when the format was fixed (2026, chunker v1).
    const PINNED_LENGTHS: &[usize] = &[
        2_078_137, 1_151_024, 1_164_771, 1_226_707, 1_108_390, 584_470, 3_226_139, 1_231_615,
        790_482, 21_177,
    ];
}
