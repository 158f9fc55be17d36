//! Embedding throughput of one model directory on STS-B test sentences, for
//! `bench/decoder_speed.sh`: `decoder_bench DIR [--dequantize] [--sentences N] [--data TSV]`, on the device
//! `SEMBASE_DEVICE` names (the CPU unless set).
//! Prints one JSON object (mode: `f32` when dequantised, else `as stored`; load seconds,
//! tokens, embedding seconds, tokens/s).

use std::path::Path;
use std::time::Instant;

use sembase_core::{EmbedOptions, Embedder, LoadOptions, LocalEmbedder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .ok_or("usage: decoder_bench DIR [--dequantize] [--sentences N] [--data TSV]")?;
    let dequantize = args.iter().any(|a| a == "--dequantize");
    let value =
        |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let limit: usize = value("--sentences").map(|n| n.parse()).transpose()?.unwrap_or(usize::MAX);
    let data = value("--data").unwrap_or_else(|| "../shared/data/en/stsb/test.tsv".into());
    let text = std::fs::read_to_string(&data).map_err(|e| format!("{data}: {e}"))?;
    let mut texts: Vec<&str> = Vec::new();
    for line in text.lines().skip(1) {
        texts.extend(line.split('\t').take(2));
    }
    texts.truncate(limit);
    let start = Instant::now();
    let device = sembase_core::device::from_env()?;
    let options = LoadOptions { gguf_dequantize: dequantize, device, ..LoadOptions::default() };
    let model = LocalEmbedder::load(Path::new(dir), "bench", options)?;
    let load_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let out = model.embed(&texts, &EmbedOptions::default())?;
    let seconds = start.elapsed().as_secs_f64();
    let tokens: usize = out.token_counts.iter().sum();
    println!(
        "{{\"mode\": \"{}\", \"sentences\": {}, \"tokens\": {tokens}, \"load_seconds\": {load_s:.2}, \"seconds\": {seconds:.2}, \"tokens_per_s\": {:.1}}}",
        if dequantize { "f32" } else { "as stored" },
        texts.len(),
        tokens as f64 / seconds
    );
    Ok(())
}
