//! Opening a model named on the command line (a store name or a directory).

use std::path::Path;

use anyhow::{Context, Result};
use sembase_core::kernels::int8_linear::Int8Kernel;
use sembase_core::{BatchLimits, LoadOptions, LocalEmbedder};

/// Sets the number of compute threads; must run before any model work starts.
pub fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        // Read by rayon's global pool and by candle's matmul when they start.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
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
    let store = sembase_hub::Store::from_env()?;
    let dir = store.resolve(spec)?;
    let name = display_name(spec, &dir);
    let device = sembase_core::device::from_env()?;
    let mut batch = BatchLimits::for_device(&device);
    if let Some(tokens) = batch_tokens {
        batch.max_tokens = tokens.max(1);
    }
    let options = LoadOptions {
        max_seq_length,
        batch,
        device,
        int8: match quantize {
            Some(Quantize::Int8) => Some(Int8Kernel::from_env()?),
            None => None,
        },
        ..LoadOptions::default()
    };
    LocalEmbedder::load(&dir, name, options)
        .with_context(|| format!("loading model {}", dir.display()))
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
