//! Checkpoints: the named variables, the optimiser moments and the trainer state,
//! written as one directory atomically, so an interrupted run resumes exactly.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use sembase_embed::durable;

use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::trainer::TrainState;

const VARIABLES: &str = "variables.safetensors";

/// Writes a checkpoint directory at `dir` (replacing an older one).
pub fn save(
    dir: &Path,
    vars: &[(String, Var)],
    optimizer: &AdamW,
    state: &TrainState,
) -> Result<()> {
    durable::replace_dir(dir, |tmp| {
        let tensors: HashMap<&str, Tensor> =
            vars.iter().map(|(name, var)| (name.as_str(), var.as_tensor().clone())).collect();
        candle_core::safetensors::save(&tensors, tmp.join(VARIABLES))?;
        optimizer.save(&tmp.join("optimizer.safetensors"))?;
        Ok(durable::write_json(&tmp.join("state.json"), state)?)
    })
}

/// Restores every variable and the optimiser from `dir`; returns the trainer state.
pub fn load(dir: &Path, vars: &[(String, Var)], optimizer: &mut AdamW) -> Result<TrainState> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Config(format!("{}: {e}", state_path.display())))?;
    let path = dir.join(VARIABLES);
    let saved = candle_core::safetensors::load(&path, &Device::Cpu)?;
    for (name, var) in vars {
        let tensor = saved
            .get(name)
            .ok_or_else(|| TrainError::MissingWeight { path: path.clone(), name: name.clone() })?;
        if tensor.shape() != var.as_tensor().shape() {
            return Err(TrainError::Config(format!(
                "{}: {name} has shape {:?}, the model {:?} (another model's checkpoint?)",
                path.display(),
                tensor.dims(),
                var.as_tensor().dims()
            )));
        }
        var.set(&tensor.to_device(var.as_tensor().device())?)?;
    }
    optimizer.load(&dir.join("optimizer.safetensors"))?;
    Ok(state)
}
