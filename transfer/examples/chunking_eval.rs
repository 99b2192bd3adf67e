//! The measurement behind `docs/decisions/0001-chunking.md`: fixed-size versus content-defined
//! chunking for model weights.
//!
//! Run: `cargo run -p quiver-transfer --release --example chunking_eval [-- SIZE_MIB]`
//! (default 256 MiB; a small size such as 16 checks that it runs, its figures mean little).
//!
//! It generates, from a fixed seed, a "safetensors-like" file (u64 header length, JSON header
//! padded to 8 bytes, bf16 tensors of a small transformer) and two derived versions:
//! - `fine-tuned`: a LoRA-style merge into the q/v projections of every layer (about 12% of the
//!   bytes change) and a `__metadata__` entry that grows the header by a few bytes, which shifts
//!   every tensor that follows;
//! - `trailing`: only the last layers and the final norm change; the header is byte-identical.
//!
//! For each strategy it prints chunking+hashing throughput over the base file and the fraction of
//! each derived version's bytes already present (as chunks) in the base, next to the ideal (bytes
//! of unchanged tensors). Throughput is the best of several runs, single-threaded; other work on
//! the machine makes it noisy.

use std::collections::HashSet;
use std::time::Instant;

use quiver_transfer::{Chunker, CHUNK_SIZE_BYTES_AVG, CHUNK_SIZE_BYTES_MAX, CHUNK_SIZE_BYTES_MIN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEED: u64 = 0x0051_5549_5645_5200;
const MIB: usize = 1024 * 1024;
const RUNS: usize = 3;
const HIDDEN: usize = 1024;
const INTERMEDIATE: usize = 2816;
const VOCAB: usize = 32_000;

/// How a tensor's values are drawn: weights are N(0, 0.02); norms are close to 1.
#[derive(Clone, Copy, PartialEq)]
enum Init {
    Weight,
    Norm,
}

struct TensorSpec {
    name: String,
    shape: Vec<usize>,
    init: Init,
}

impl TensorSpec {
    fn size_bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * 2
    }
}

/// The layout of a small decoder-only transformer, layers added until `target_bytes` is reached.
fn layout(target_bytes: usize) -> Vec<TensorSpec> {
    let t = |name: String, shape: &[usize], init| TensorSpec {
        name,
        shape: shape.to_vec(),
        init,
    };
    let mut tensors = vec![t(
        "model.embed_tokens.weight".into(),
        &[VOCAB, HIDDEN],
        Init::Weight,
    )];
    let vocab_bytes = tensors[0].size_bytes();
    // Small runs (for checking that it works) shrink the vocabulary instead of having no layers.
    if vocab_bytes * 2 > target_bytes {
        tensors[0].shape = vec![target_bytes / 4 / HIDDEN / 2, HIDDEN];
    }
    let mut layer = 0;
    loop {
        let total: usize = tensors.iter().map(TensorSpec::size_bytes).sum();
        if total >= target_bytes {
            break;
        }
        let p = format!("model.layers.{layer}");
        tensors.push(t(
            format!("{p}.input_layernorm.weight"),
            &[HIDDEN],
            Init::Norm,
        ));
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            tensors.push(t(
                format!("{p}.self_attn.{proj}.weight"),
                &[HIDDEN, HIDDEN],
                Init::Weight,
            ));
        }
        tensors.push(t(
            format!("{p}.post_attention_layernorm.weight"),
            &[HIDDEN],
            Init::Norm,
        ));
        for (proj, shape) in [
            ("gate_proj", [INTERMEDIATE, HIDDEN]),
            ("up_proj", [INTERMEDIATE, HIDDEN]),
            ("down_proj", [HIDDEN, INTERMEDIATE]),
        ] {
            tensors.push(t(format!("{p}.mlp.{proj}.weight"), &shape, Init::Weight));
        }
        layer += 1;
    }
    tensors.push(t("model.norm.weight".into(), &[HIDDEN], Init::Norm));
    tensors
}

/// Approximately normal sample (Irwin-Hall of four 16-bit uniforms), mean 0, std `std`.
fn normal(rng: &mut StdRng, std: f32) -> f32 {
    let r: u64 = rng.gen();
    let sum = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
    // Sum of 4 U(0,1) has mean 2 and variance 1/3.
    let u = sum as f32 / 65_535.0;
    (u - 2.0) * 3f32.sqrt() * std
}

fn bf16(x: f32) -> [u8; 2] {
    let bits = (x.to_bits() >> 16) as u16;
    bits.to_le_bytes()
}

fn f32_of_bf16(b: [u8; 2]) -> f32 {
    f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
}

fn tensor_data(rng: &mut StdRng, spec: &TensorSpec) -> Vec<u8> {
    let mut out = Vec::with_capacity(spec.size_bytes());
    for _ in 0..spec.size_bytes() / 2 {
        let x = match spec.init {
            Init::Weight => normal(rng, 0.02),
            Init::Norm => 1.0 + normal(rng, 0.05),
        };
        out.extend_from_slice(&bf16(x));
    }
    out
}

/// A merged low-rank update: every element moves by about a tenth of the weights' spread.
fn perturb(rng: &mut StdRng, data: &mut [u8]) {
    for pair in data.chunks_exact_mut(2) {
        let x = f32_of_bf16([pair[0], pair[1]]) + normal(rng, 0.002);
        pair.copy_from_slice(&bf16(x));
    }
}

fn serialize(tensors: &[TensorSpec], data: &[Vec<u8>], metadata: Option<&str>) -> Vec<u8> {
    let mut entries = Vec::new();
    if let Some(m) = metadata {
        entries.push(format!("\"__metadata__\":{m}"));
    }
    let mut offset = 0;
    for (spec, bytes) in tensors.iter().zip(data) {
        let shape: Vec<String> = spec.shape.iter().map(usize::to_string).collect();
        entries.push(format!(
            "\"{}\":{{\"dtype\":\"BF16\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            spec.name,
            shape.join(","),
            offset,
            offset + bytes.len()
        ));
        offset += bytes.len();
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut file = Vec::with_capacity(8 + header.len() + offset);
    file.extend_from_slice(&(header.len() as u64).to_le_bytes());
    file.extend_from_slice(&header);
    for bytes in data {
        file.extend_from_slice(bytes);
    }
    file
}

struct Variant {
    name: &'static str,
    file: Vec<u8>,
    unchanged_bytes: usize,
}

fn variants(target_bytes: usize) -> (Vec<u8>, Vec<Variant>) {
    let mut rng = StdRng::seed_from_u64(SEED);
    let tensors = layout(target_bytes);
    let data: Vec<Vec<u8>> = tensors.iter().map(|t| tensor_data(&mut rng, t)).collect();
    let base_meta = r#"{"format":"pt"}"#;
    let base = serialize(&tensors, &data, Some(base_meta));

    // Fine-tuned: LoRA merged into q and v; provenance recorded in the header.
    let mut tuned = data.clone();
    let mut unchanged = 0;
    for (i, spec) in tensors.iter().enumerate() {
        if spec.name.ends_with("q_proj.weight") || spec.name.ends_with("v_proj.weight") {
            perturb(&mut rng, &mut tuned[i]);
        } else {
            unchanged += spec.size_bytes();
        }
    }
    let tuned_meta = r#"{"format":"pt","base":"reco/3","lora_rank":"16"}"#;
    let tuned_file = serialize(&tensors, &tuned, Some(tuned_meta));

    // Trailing: the last two layers and the final norm retrained; header unchanged.
    let last_layer = tensors
        .iter()
        .filter_map(|t| t.name.strip_prefix("model.layers."))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    let retrained = |name: &str| {
        name == "model.norm.weight"
            || (last_layer.saturating_sub(1)..=last_layer)
                .any(|l| name.starts_with(&format!("model.layers.{l}.")))
    };
    let mut trailing = data.clone();
    let mut trailing_unchanged = 8 + (base.len() - 8 - data.iter().map(Vec::len).sum::<usize>());
    for (i, spec) in tensors.iter().enumerate() {
        if retrained(&spec.name) {
            perturb(&mut rng, &mut trailing[i]);
        } else {
            trailing_unchanged += spec.size_bytes();
        }
    }
    let trailing_file = serialize(&tensors, &trailing, Some(base_meta));
    assert_eq!(trailing_file.len(), base.len());

    let out = vec![
        Variant {
            name: "fine-tuned",
            file: tuned_file,
            unchanged_bytes: unchanged,
        },
        Variant {
            name: "trailing",
            file: trailing_file,
            unchanged_bytes: trailing_unchanged,
        },
    ];
    (base, out)
}

/// Cuts and hashes `data`: (length, blake3) of each chunk.
type ChunkFn = Box<dyn Fn(&[u8]) -> Vec<(usize, blake3::Hash)>>;

struct Strategy {
    name: String,
    run: ChunkFn,
}

fn fixed(size: usize) -> Strategy {
    Strategy {
        name: format!("fixed {} MiB", size / MIB),
        run: Box::new(move |data| {
            data.chunks(size)
                .map(|c| (c.len(), blake3::hash(c)))
                .collect()
        }),
    }
}

fn fastcdc(avg: usize) -> Strategy {
    let (min, max) = (avg / 4, avg * 4);
    Strategy {
        name: format!(
            "fastcdc v2020 {}/{}/{} KiB",
            min / 1024,
            avg / 1024,
            max / 1024
        ),
        run: Box::new(move |data| {
            fastcdc::v2020::FastCDC::new(data, min, avg, max)
                .map(|c| {
                    let bytes = &data[c.offset..c.offset + c.length];
                    (c.length, blake3::hash(bytes))
                })
                .collect()
        }),
    }
}

/// The crate's own streaming `Chunker`, fed in 1 MiB pieces as an upload would.
fn quiver_chunker() -> Strategy {
    Strategy {
        name: format!(
            "quiver Chunker {}/{}/{} KiB",
            CHUNK_SIZE_BYTES_MIN / 1024,
            CHUNK_SIZE_BYTES_AVG / 1024,
            CHUNK_SIZE_BYTES_MAX / 1024
        ),
        run: Box::new(|data| {
            let mut out = Vec::new();
            let mut chunker = Chunker::new();
            let mut emit = |r: quiver_transfer::ChunkRef, _: &[u8]| {
                out.push((r.size_bytes as usize, blake3::Hash::from(r.hash.0)));
                Ok::<(), ()>(())
            };
            for piece in data.chunks(MIB) {
                chunker.push(piece, &mut emit).expect("emit is infallible");
            }
            chunker.finish(&mut emit).expect("emit is infallible");
            out
        }),
    }
}

fn blake3_only(data: &[u8]) -> f64 {
    best_mb_per_s(data.len(), || {
        std::hint::black_box(blake3::hash(data));
    })
}

fn best_mb_per_s(len: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..RUNS {
        let start = Instant::now();
        f();
        best = best.min(start.elapsed().as_secs_f64());
    }
    len as f64 / 1e6 / best
}

fn main() {
    let size_mib: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().expect("argument: file size in MiB"),
        None => 256,
    };
    let t = Instant::now();
    let (base, variants) = variants(size_mib * MIB);
    println!(
        "generated base {:.1} MiB + {} variants from seed {SEED:#x} in {:.1} s",
        base.len() as f64 / MIB as f64,
        variants.len(),
        t.elapsed().as_secs_f64()
    );
    println!("  fine-tuned: LoRA merged into q_proj and v_proj of every layer, header +bytes");
    println!("  trailing:   last two layers and final norm retrained, header unchanged");
    for v in &variants {
        println!(
            "  {:<10} ideal dedup (bytes of unchanged tensors) {:>5.1}%",
            v.name,
            100.0 * v.unchanged_bytes as f64 / v.file.len() as f64
        );
    }

    let blake3_mb_s = blake3_only(&base);
    println!("\nblake3 alone (one call, one thread): {blake3_mb_s:.0} MB/s\n");

    let strategies = [
        fixed(4 * MIB),
        fastcdc(MIB),
        fastcdc(2 * MIB),
        fastcdc(4 * MIB),
        quiver_chunker(),
    ];
    print!(
        "{:<36} {:>6} {:>6} {:>6} {:>7} {:>7}",
        "strategy", "MB/s", "vs b3", "chunks", "avg KiB", "max KiB"
    );
    for v in &variants {
        print!(
            " {:>22}",
            format!("dedup {}", &v.name[..v.name.len().min(14)])
        );
    }
    println!();
    for s in &strategies {
        let chunks = (s.run)(&base);
        assert_eq!(chunks.iter().map(|c| c.0).sum::<usize>(), base.len());
        let mb_s = best_mb_per_s(base.len(), || {
            std::hint::black_box((s.run)(&base));
        });
        let avg = base.len() / chunks.len().max(1);
        let max = chunks.iter().map(|c| c.0).max().unwrap_or(0);
        print!(
            "{:<36} {:>6.0} {:>6.2} {:>6} {:>7} {:>7}",
            s.name,
            mb_s,
            mb_s / blake3_mb_s,
            chunks.len(),
            avg / 1024,
            max / 1024
        );
        let known: HashSet<blake3::Hash> = chunks.iter().map(|c| c.1).collect();
        for v in &variants {
            let vchunks = (s.run)(&v.file);
            let shared: usize = vchunks
                .iter()
                .filter(|c| known.contains(&c.1))
                .map(|c| c.0)
                .sum();
            print!(
                " {:>18}",
                format!("{:.1}%", 100.0 * shared as f64 / v.file.len() as f64)
            );
        }
        println!();
    }
}
