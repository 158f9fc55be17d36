//! Opening a model named on the command line (a store name or a directory).

use std::path::Path;

use anyhow::{Context, Result};
use sembase_core::kernels::int8_linear::Int8Kernel;
use sembase_core::{BatchLimits, CrossEncoder, LoadOptions, LocalEmbedder};

/// Sets the number of compute threads; must run before any model work starts.
pub fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        // Read by rayon's global pool and by candle's matmul when they start.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
}

/// Keeps candle's element-wise thread pool to the calling thread unless
/// `CANDLE_NUM_THREADS` says otherwise; must run before any model work starts. In a
/// training step its workers spin between the element-wise ops while the GEMMs run on
/// rayon's threads, and on a 2-core machine that spinning took a quarter of a LoRA step
/// (SmolLM2-135M, batch 8: 5.09 s per step with the pool, 3.81 s without).
pub fn keep_elementwise_ops_on_one_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// The compute settings of every command that runs a local model.
#[derive(clap::Args, Debug, Clone)]
pub struct ComputeArgs {
    /// Padded tokens per forward pass of a local model (default: 1024 on the CPU, 16384 on a GPU).
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ComputeArgs {
    /// Sets the number of compute threads; must run before any model work starts.
    pub fn apply_threads(&self) {
        set_threads(self.threads);
    }
}

/// Weight quantisation chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Quantize {
    /// int8 weights per output channel, activations quantised per row as they run
    /// (encoder models on the CPU; VNNI where the CPU has it, AVX2 otherwise).
    Int8,
}

/// Resolves `spec` through the store and loads it for inference.
/// `batch_tokens` caps the padded tokens per forward pass (default: the device's, see
/// [`BatchLimits::for_device`]).
pub fn load_local(
    spec: &str,
    max_seq_length: Option<usize>,
    batch_tokens: Option<usize>,
    quantize: Option<Quantize>,
) -> Result<LocalEmbedder> {
    let (dir, name) = resolve(spec)?;
    let options = load_options(max_seq_length, batch_tokens, quantize)?;
    LocalEmbedder::load(&dir, name, options)
        .with_context(|| format!("loading model {}", dir.display()))
}

/// A model named on the command line, loaded as what its directory holds.
pub enum AnyModel {
    /// A sentence embedding model.
    Embedder(LocalEmbedder),
    /// A cross-encoder (a `*ForSequenceClassification` checkpoint): a reranker.
    Reranker(CrossEncoder),
}

/// [`load_local`], except that a cross-encoder loads as a reranker instead of being refused.
pub fn load_any(
    spec: &str,
    max_seq_length: Option<usize>,
    quantize: Option<Quantize>,
) -> Result<AnyModel> {
    let (dir, name) = resolve(spec)?;
    let options = load_options(max_seq_length, None, quantize)?;
    let model = if sembase_core::is_cross_encoder(&dir) {
        CrossEncoder::load(&dir, name, options).map(AnyModel::Reranker)
    } else {
        LocalEmbedder::load(&dir, name, options).map(AnyModel::Embedder)
    };
    model.with_context(|| format!("loading model {}", dir.display()))
}

/// Resolves `spec` through the store and loads it as a cross-encoder (refusing a
/// sentence embedding model), for `rerank`, `search --rerank` and `eval --rerank`.
pub fn load_reranker(spec: &str, batch_tokens: Option<usize>) -> Result<CrossEncoder> {
    let (dir, name) = resolve(spec)?;
    let options = load_options(None, batch_tokens, None)?;
    CrossEncoder::load(&dir, name, options)
        .with_context(|| format!("loading cross-encoder {}", dir.display()))
}

/// The directory `spec` names (through the store) and the name it is known by.
fn resolve(spec: &str) -> Result<(std::path::PathBuf, String)> {
    let (given_name, spec) = named_spec(spec);
    let dir = sembase_hub::Store::from_env()?.resolve(spec)?;
    let name = given_name.map_or_else(|| display_name(spec, &dir), str::to_string);
    Ok((dir, name))
}

/// `NAME=SPEC` gives the model SPEC the name NAME (as `--index NAME=DIR` does for
/// indexes); anything else, an existing path included, is a spec known by its own name.
pub fn named_spec(spec: &str) -> (Option<&str>, &str) {
    if Path::new(spec).exists() {
        return (None, spec);
    }
    match spec.split_once('=') {
        Some((name, rest)) if !name.is_empty() && !name.contains('/') && !rest.is_empty() => {
            (Some(name), rest)
        }
        _ => (None, spec),
    }
}

/// How a local model runs: on the device from the environment, in passes of at most
/// `batch_tokens` padded tokens, with `quantize`d weights.
fn load_options(
    max_seq_length: Option<usize>,
    batch_tokens: Option<usize>,
    quantize: Option<Quantize>,
) -> Result<LoadOptions> {
    let device = sembase_core::device::from_env()?;
    let mut batch = BatchLimits::for_device(&device);
    if let Some(tokens) = batch_tokens {
        batch.max_tokens = tokens.max(1);
    }
    Ok(LoadOptions {
        max_seq_length,
        batch,
        device,
        int8: match quantize {
            Some(Quantize::Int8) => Some(Int8Kernel::from_env()?),
            None => None,
        },
        ..LoadOptions::default()
    })
}

/// The name a model is known by: the store name, or a directory's last component.
fn display_name(spec: &str, dir: &Path) -> String {
    if Path::new(spec).is_dir() {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string())
    } else {
        spec.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::named_spec;

    #[test]
    fn a_name_can_be_given_before_the_spec() {
        assert_eq!(named_spec("ce=models/ce"), (Some("ce"), "models/ce"));
        assert_eq!(named_spec("all-minilm-l6-v2"), (None, "all-minilm-l6-v2"));
        assert_eq!(named_spec("=models/ce"), (None, "=models/ce"));
        assert_eq!(named_spec("models/a=b"), (None, "models/a=b"));
    }
}
