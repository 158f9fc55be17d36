//! AdamW with decoupled weight decay, a linear warm-up/decay schedule and
//! global-norm gradient clipping. The optimiser state can be saved and
//! restored, so a resumed run continues exactly.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor, Var};
use rayon::prelude::*;

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

/// One named parameter and its moment estimates (host vectors, updated in place).
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// The optimiser over a fixed list of named variables. The update runs as one
/// fused, parallel pass per parameter over host memory: a large embedding
/// matrix costs a few memory sweeps per step instead of a dozen tensor ops.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    step: usize,
}

/// Biases and layer-norm parameters get no weight decay (as sentence-transformers does).
fn decays(name: &str) -> bool {
    !(name.ends_with(".bias")
        || name.contains("LayerNorm")
        || name.contains("layer_norm")
        || name.ends_with("norm.weight"))
}

/// Per-step constants of the update.
#[derive(Clone, Copy)]
struct StepCoefficients {
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// `lr / (1 - beta1^t)`.
    step_size: f32,
    /// `1 / sqrt(1 - beta2^t)`.
    inv_sqrt_bias2: f32,
    /// Multiplier of the weights before the update (`1 - lr * weight_decay`, or 1).
    keep: f32,
    /// Gradient scale from clipping.
    grad_scale: f32,
}

/// The AdamW update of one parameter, as torch.optim.AdamW computes it.
fn update(theta: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], c: StepCoefficients) {
    theta
        .par_iter_mut()
        .zip(m.par_iter_mut())
        .zip(v.par_iter_mut())
        .zip(grad.par_iter())
        .with_min_len(4096)
        .for_each(|(((w, m), v), g)| {
            let g = g * c.grad_scale;
            *m = c.beta1 * *m + (1.0 - c.beta1) * g;
            *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
            let denom = v.sqrt() * c.inv_sqrt_bias2 + c.eps;
            *w = *w * c.keep - c.step_size * *m / denom;
        });
}

impl Slot {
    /// Applies one update with gradient `grad`: in place on a CPU f32 parameter (no copy
    /// of the weights or the gradient), through host copies on other devices.
    fn apply(&mut self, grad: &Tensor, c: StepCoefficients) -> Result<()> {
        let tensor = self.var.as_tensor();
        if tensor.device().is_cpu() && tensor.dtype() == DType::F32 && grad.dtype() == DType::F32 {
            let grad = grad.contiguous()?;
            let op = InPlaceUpdate { moments: Mutex::new((&mut self.m, &mut self.v)), c };
            tensor.inplace_op2(&grad, &op)?;
        } else {
            let mut theta = tensor.flatten_all()?.to_vec1::<f32>()?;
            let grad = grad.flatten_all()?.to_vec1::<f32>()?;
            update(&mut theta, &grad, &mut self.m, &mut self.v, c);
            self.var.set(&Tensor::from_vec(theta, tensor.shape(), tensor.device())?)?;
        }
        Ok(())
    }
}

/// The sum of squares of a gradient, read in place when it lives on the CPU.
fn squared_norm(grad: &Tensor) -> Result<f64> {
    let sum = |g: &[f32]| g.par_iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
    if grad.device().is_cpu() && grad.dtype() == DType::F32 && grad.is_contiguous() {
        let (storage, layout) = grad.storage_and_layout();
        if let Storage::Cpu(CpuStorage::F32(data)) = &*storage {
            return Ok(sum(&data[layout.start_offset()..][..grad.elem_count()]));
        }
    }
    Ok(sum(&grad.flatten_all()?.to_vec1::<f32>()?))
}

/// [`update`] as a candle in-place op on a contiguous CPU f32 parameter, with a
/// contiguous gradient of the same size; the moments are borrowed from the slot.
struct InPlaceUpdate<'a> {
    moments: Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    c: StepCoefficients,
}

impl InplaceOp2 for InPlaceUpdate<'_> {
    fn name(&self) -> &'static str {
        "sembase-adamw"
    }

    fn cpu_fwd(
        &self,
        theta: &mut CpuStorage,
        theta_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(grad)) = (theta, grad) else {
            candle_core::bail!("adamw: the parameter and its gradient must be f32");
        };
        let n = theta_layout.shape().elem_count();
        let (Some((theta_start, _)), Some((grad_start, _))) =
            (theta_layout.contiguous_offsets(), grad_layout.contiguous_offsets())
        else {
            candle_core::bail!("adamw: the parameter and its gradient must be contiguous");
        };
        let mut moments = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adamw: moments poisoned".into()))?;
        let (m, v) = &mut *moments;
        if grad_layout.shape().elem_count() != n || m.len() != n {
            candle_core::bail!("adamw: parameter, gradient and moments differ in size");
        }
        update(&mut theta[theta_start..][..n], &grad[grad_start..][..n], m, v, self.c);
        Ok(())
    }
}

impl AdamW {
    /// An optimiser with zero moments for `vars`.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let n = var.as_tensor().elem_count();
                Slot { decay: decays(&name), name, m: vec![0.0; n], v: vec![0.0; n], var }
            })
            .collect();
        Ok(Self { config, slots, step: 0 })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// Clips the gradients to a global L2 norm of at most `max_grad_norm`, then
    /// applies one update with learning rate `lr`; parameters without a gradient
    /// are left alone. Returns the global norm before clipping.
    pub fn step(&mut self, grads: &GradStore, lr: f64, max_grad_norm: f64) -> Result<f64> {
        let grads: Vec<Option<Tensor>> =
            self.slots.iter().map(|s| grads.get(s.var.as_tensor()).cloned()).collect();
        let mut squares = 0.0;
        for grad in grads.iter().flatten() {
            squares += squared_norm(grad)?;
        }
        let norm = squares.sqrt();
        let grad_scale = if norm > max_grad_norm && norm.is_finite() {
            max_grad_norm / (norm + 1e-6)
        } else {
            1.0
        };
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let base = StepCoefficients {
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            step_size: (lr / (1.0 - c.beta1.powi(t))) as f32,
            inv_sqrt_bias2: (1.0 / (1.0 - c.beta2.powi(t)).sqrt()) as f32,
            keep: 1.0,
            grad_scale: grad_scale as f32,
        };
        for (slot, grad) in self.slots.iter_mut().zip(grads) {
            let Some(grad) = grad else { continue };
            let keep = if slot.decay { (1.0 - lr * c.weight_decay) as f32 } else { 1.0 };
            slot.apply(&grad, StepCoefficients { keep, ..base })?;
        }
        Ok(norm)
    }

    /// Writes the moments and step count to `path` (safetensors).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for s in &self.slots {
            let shape = s.var.as_tensor().shape();
            tensors.insert(format!("m.{}", s.name), Tensor::from_slice(&s.m, shape, &Device::Cpu)?);
            tensors.insert(format!("v.{}", s.name), Tensor::from_slice(&s.v, shape, &Device::Cpu)?);
        }
        tensors.insert("step".into(), Tensor::new(&[self.step as u32], &Device::Cpu)?);
        candle_core::safetensors::save(&tensors, path)?;
        Ok(())
    }

    /// Restores what [`save`](Self::save) wrote; every slot must be present.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
        let missing = |name: &str| TrainError::MissingWeight {
            path: path.to_path_buf(),
            name: name.to_string(),
        };
        for s in &mut self.slots {
            for (key, moment) in [("m", &mut s.m), ("v", &mut s.v)] {
                let name = format!("{key}.{}", s.name);
                let saved = tensors
                    .remove(&name)
                    .ok_or_else(|| missing(&name))?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                if saved.len() != moment.len() {
                    return Err(TrainError::Config(format!(
                        "{}: {name} has {} values, the model {}",
                        path.display(),
                        saved.len(),
                        moment.len()
                    )));
                }
                *moment = saved;
            }
        }
        self.step =
            tensors.remove("step").ok_or_else(|| missing("step"))?.to_vec1::<u32>()?[0] as usize;
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
        let loss = (w.as_tensor() * Tensor::new(&[3.0f32, -0.5], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let config = AdamWConfig { weight_decay: 0.0, ..Default::default() };
        let mut opt = AdamW::new(vec![("w.bias".into(), w.clone())], config).unwrap();
        opt.step(&grads, 0.1, f64::INFINITY).unwrap();
        let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        assert!((got[0] - 0.9).abs() < 1e-6 && (got[1] - (-1.9)).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn clipping_scales_the_gradient_to_the_global_norm_before_the_update() {
        // A gradient (30, 40) has norm 50; clipped to norm 1 it is (0.6, 0.8). Without
        // weight decay the first two steps of Adam then move by lr * m_hat / sqrt(v_hat),
        // which for a constant gradient is lr * sign(g) each: clipping shows up in the
        // moments, which must hold the clipped gradient.
        let w = Var::new(&[0.0f32, 0.0], &Device::Cpu).unwrap();
        let loss = (w.as_tensor() * Tensor::new(&[30.0f32, 40.0], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let config = AdamWConfig { weight_decay: 0.0, ..Default::default() };
        let mut opt = AdamW::new(vec![("w.bias".into(), w.clone())], config).unwrap();
        let norm = opt.step(&grads, 0.1, 1.0).unwrap();
        assert!((norm - 50.0).abs() < 1e-4, "{norm}");
        let m = &opt.slots[0].m;
        assert!((m[0] - 0.1 * 0.6).abs() < 1e-5 && (m[1] - 0.1 * 0.8).abs() < 1e-5, "{m:?}");
        let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        assert!((got[0] + 0.1).abs() < 1e-5 && (got[1] + 0.1).abs() < 1e-5, "{got:?}");
    }
}
