//! The model behind an index: its identity when building, and loading (and
//! checking) it again to embed documents and queries later.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use sembase_core::LocalEmbedder;
use sembase_index::{IndexSettings, ModelIdentity};

use crate::models::{load_local, ComputeArgs};

/// How to run an index's model for `index add` and `search`.
#[derive(Args)]
pub struct IndexModelArgs {
    /// The model, when it has moved since the build (its fingerprint must match).
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    compute: ComputeArgs,
}

impl IndexModelArgs {
    /// Sets the thread count; call before any model work.
    pub fn apply_threads(&self) {
        self.compute.apply_threads();
    }

    /// Padded tokens per forward pass, when given (also for a reranker beside the model).
    pub fn batch_tokens(&self) -> Option<usize> {
        self.compute.batch_tokens
    }

    /// Loads the index's model (see [`load_index_model`]).
    pub fn load(&self, settings: &IndexSettings) -> Result<LocalEmbedder> {
        load_index_model(settings, self.model.as_deref(), self.compute.batch_tokens)
    }
}

/// Resolves `spec` through the store and returns its directory and identity.
/// A directory is recorded by its absolute path, so the index works from anywhere.
pub fn model_identity(spec: &str) -> Result<(PathBuf, ModelIdentity)> {
    let spec = crate::models::named_spec(spec).1;
    let dir = sembase_hub::Store::from_env()?.resolve(spec)?;
    let name = if Path::new(spec).is_dir() {
        std::fs::canonicalize(spec)?.display().to_string()
    } else {
        spec.to_string()
    };
    let identity = ModelIdentity::of_dir(&name, &dir)
        .with_context(|| format!("fingerprinting model {}", dir.display()))?;
    Ok((dir, identity))
}

/// Loads the index's model (or `spec` instead) and refuses one whose
/// fingerprint differs from the recorded one.
fn load_index_model(
    settings: &IndexSettings,
    spec: Option<&str>,
    batch_tokens: Option<usize>,
) -> Result<LocalEmbedder> {
    let spec = spec.unwrap_or(&settings.model.name);
    let (_, identity) = model_identity(spec)?;
    settings.check_model(&identity)?;
    load_local(spec, None, batch_tokens, None)
}

/// The model's named prompt for queries (`query`) and for documents
/// (`passage`, else `document`), as sentence-transformers configs name them.
pub fn default_prefixes(model: &LocalEmbedder) -> (Option<String>, Option<String>) {
    let prompts = model.prompts();
    let query = prompts.get("query").cloned();
    let document = prompts.get("passage").or_else(|| prompts.get("document")).cloned();
    (query, document)
}
