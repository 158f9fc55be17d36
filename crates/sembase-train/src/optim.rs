//! AdamW with decoupled weight decay, a linear warm-up/decay schedule and
//! global-norm gradient clipping. The optimiser state can be saved and
//! restored, so a resumed run continues exactly.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use crate::error::{Result, TrainError};

/// AdamW hyper-parameters (defaults as torch.optim.AdamW with weight decay 0.01).
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// One named parameter and its moment estimates.
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

/// The optimiser over a fixed list of named variables.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    step: usize,
}

/// Biases and layer-norm parameters get no weight decay (as sentence-transformers does).
fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm") || name.ends_with("norm.weight"))
}

impl AdamW {
    /// An optimiser with zero moments for `vars`.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok(Slot { decay: decays(&name), name, m: zeros.clone(), v: zeros, var })
            })
            .collect::<Result<_>>()?;
        Ok(Self { config, slots, step: 0 })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// Applies one update with learning rate `lr`; parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let (bias1, bias2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else { continue };
            slot.m = ((&slot.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            slot.v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&slot.m / bias1)?;
            let v_hat = (&slot.v / bias2)?;
            let theta = slot.var.as_tensor();
            let decayed = if slot.decay { (theta * (1.0 - lr * c.weight_decay))? } else { theta.clone() };
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            slot.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Writes the moments and step count to `path` (safetensors).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for s in &self.slots {
            tensors.insert(format!("m.{}", s.name), s.m.clone());
            tensors.insert(format!("v.{}", s.name), s.v.clone());
        }
        tensors.insert("step".into(), Tensor::new(&[self.step as u32], &Device::Cpu)?);
        candle_core::safetensors::save(&tensors, path)?;
        Ok(())
    }

    /// Restores what [`save`](Self::save) wrote; every slot must be present.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
        let missing = |name: &str| TrainError::MissingWeight { path: path.to_path_buf(), name: name.to_string() };
        for s in &mut self.slots {
            s.m = tensors.remove(&format!("m.{}", s.name)).ok_or_else(|| missing(&format!("m.{}", s.name)))?;
            s.v = tensors.remove(&format!("v.{}", s.name)).ok_or_else(|| missing(&format!("v.{}", s.name)))?;
        }
        self.step = tensors.remove("step").ok_or_else(|| missing("step"))?.to_vec1::<u32>()?[0] as usize;
        Ok(())
    }
}

/// Linear warm-up from 0 to `peak` over `warmup` steps, then linear decay to 0 at `total`.
pub fn linear_schedule(step: usize, warmup: usize, total: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let remaining = total.saturating_sub(step) as f64;
    peak * remaining / total.saturating_sub(warmup).max(1) as f64
}

/// Scales all gradients down so their global L2 norm is at most `max_norm`;
/// returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let mut sum = 0.0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sum.sqrt();
    if norm > max_norm && norm.is_finite() {
        let scale = max_norm / (norm + 1e-6);
        for (_, var) in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(linear_schedule(0, 10, 110, 1.0), 0.0);
        assert!((linear_schedule(5, 10, 110, 1.0) - 0.5).abs() < 1e-12);
        assert!((linear_schedule(10, 10, 110, 1.0) - 1.0).abs() < 1e-12);
        assert!((linear_schedule(60, 10, 110, 1.0) - 0.5).abs() < 1e-12);
        assert_eq!(linear_schedule(110, 10, 110, 1.0), 0.0);
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        // With bias correction, the first Adam update is lr * g / (|g| + eps) = lr * sign(g).
        let w = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let loss = (w.as_tensor() * Tensor::new(&[3.0f32, -0.5], &Device::Cpu).unwrap()).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let config = AdamWConfig { weight_decay: 0.0, ..Default::default() };
        let mut opt = AdamW::new(vec![("w.bias".into(), w.clone())], config).unwrap();
        opt.step(&grads, 0.1).unwrap();
        let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        assert!((got[0] - 0.9).abs() < 1e-6 && (got[1] - (-1.9)).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let w = Var::new(&[0.0f32, 0.0], &Device::Cpu).unwrap();
        let loss = (w.as_tensor() * Tensor::new(&[30.0f32, 40.0], &Device::Cpu).unwrap()).unwrap().sum_all().unwrap();
        let mut grads = loss.backward().unwrap();
        let vars = vec![("w".to_string(), w.clone())];
        let before = clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
        assert!((before - 50.0).abs() < 1e-4);
        let g: Vec<f32> = grads.get(w.as_tensor()).unwrap().to_vec1().unwrap();
        assert!(((g[0] * g[0] + g[1] * g[1]).sqrt() - 1.0).abs() < 1e-4, "{g:?}");
    }
}
