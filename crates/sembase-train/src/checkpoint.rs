//! Checkpoints: the variables, the optimiser moments and the trainer state,
//! written as one directory atomically, so an interrupted run resumes exactly.

use std::path::Path;

use sembase_embed::durable;

use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::trainable::TrainableModel;
use crate::trainer::TrainState;

/// Writes a checkpoint directory at `dir` (replacing an older one).
pub fn save(
    dir: &Path,
    model: &TrainableModel,
    optimizer: &AdamW,
    state: &TrainState,
) -> Result<()> {
    durable::replace_dir(dir, |tmp| {
        model.encoder_vars().save(tmp.join("encoder.safetensors"))?;
        for (i, dense) in model.dense_modules().iter().enumerate() {
            dense.vars.save(tmp.join(format!("dense{i}.safetensors")))?;
        }
        optimizer.save(&tmp.join("optimizer.safetensors"))?;
        Ok(durable::write_json(&tmp.join("state.json"), state)?)
    })
}

/// Restores weights and optimiser from `dir`; returns the trainer state.
pub fn load(dir: &Path, model: &TrainableModel, optimizer: &mut AdamW) -> Result<TrainState> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Config(format!("{}: {e}", state_path.display())))?;
    // VarMap::load sets every variable from the file and fails on a missing one.
    let mut encoder_vars = model.encoder_vars().clone();
    encoder_vars.load(dir.join("encoder.safetensors"))?;
    for (i, dense) in model.dense_modules().iter().enumerate() {
        let mut vars = dense.vars.clone();
        vars.load(dir.join(format!("dense{i}.safetensors")))?;
    }
    optimizer.load(&dir.join("optimizer.safetensors"))?;
    Ok(state)
}
