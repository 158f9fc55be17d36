//! Fuzzing the weight files the engine maps (see sembase-fuzz): safetensors, through
//! the reader the models use, and GGUF, through the mapped reader that slices tensors
//! out of the file. Any file gives tensors or an error, never a panic, a hang or an
//! allocation sized by an unchecked field.

use std::path::Path;

use candle_core::{DType, Device};
use sembase_core::weights::mapped_gguf::MappedGguf;
use sembase_core::weights::MappedWeights;

#[global_allocator]
static ALLOC: sembase_fuzz::BoundedAlloc = sembase_fuzz::BoundedAlloc;

/// Tensor names the seeds use.
const NAMES: [&str; 2] = ["a", "b"];

#[test]
fn safetensors_files() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_corpus/safetensors");
    let dir = sembase_fuzz::scratch_dir();
    let path = dir.path().join("model.safetensors");
    let tokens: &[&[u8]] = &[
        b"\"dtype\"",
        b"\"F32\"",
        b"\"BF16\"",
        b"\"shape\"",
        b"\"data_offsets\"",
        b"[",
        b"]",
        b",",
    ];
    sembase_fuzz::Target::new("safetensors", corpus).tokens(tokens).run(|bytes| {
        std::fs::write(&path, bytes).unwrap();
        // SAFETY: the file is not changed while it is mapped (the mapping ends here).
        let Ok(weights) = (unsafe { MappedWeights::open(std::slice::from_ref(&path)) }) else {
            return;
        };
        let vb = weights.var_builder(DType::F32, &Device::Cpu);
        for name in NAMES {
            if let Ok(t) = vb.get_unchecked(name) {
                let _ = t.flatten_all().and_then(|t| t.to_vec1::<f32>());
            }
            for (rows, cols) in [(2, 3), (3, 2)] {
                if let Some(m) = weights.matrix::<f32>(name, rows, cols) {
                    assert_eq!(m.values().len(), rows * cols);
                }
                if let Some(half) = weights.half_matrix(name, rows, cols) {
                    let mut row = Vec::new();
                    half.extend_row(rows - 1, &mut row);
                    assert_eq!(row.len(), cols);
                    half.to_tensor().unwrap();
                }
            }
        }
    });
}

#[test]
fn gguf_files() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../sembase-embed/tests/fuzz_corpus/gguf");
    let dir = sembase_fuzz::scratch_dir();
    let path = dir.path().join("model.gguf");
    sembase_fuzz::Target::new("gguf-mapped", corpus).run(|bytes| {
        std::fs::write(&path, bytes).unwrap();
        read_gguf(&path);
    });
}

/// Every tensor of the file, sliced and copied out as candle would use it.
fn read_gguf(path: &Path) {
    // SAFETY: the file is not changed while it is mapped (the mapping ends here).
    let Ok(gguf) = (unsafe { MappedGguf::open(path) }) else { return };
    let _ = gguf.architecture();
    for name in ["token_embd.weight", "blk.0.attn_q.weight"] {
        if let Ok(Some(tensor)) = gguf.tensor(name) {
            let _ = tensor.to_qtensor(&Device::Cpu);
        }
    }
}
