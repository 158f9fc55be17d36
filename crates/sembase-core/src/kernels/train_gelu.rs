//! Exact (erf) GELU for training on the CPU: one vectorised pass forward and one
//! backward, where candle's `gelu_erf` calls libm's scalar erf and builds its
//! derivative from several full-size tensors.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fast_math::{gelu_erf_backward, gelu_erf_in_place};
use super::kernel_io::{contiguous_f32, HostF32};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `x * Phi(x)`, differentiable.
struct TrainGelu;

impl CustomOp1 for TrainGelu {
    fn name(&self) -> &'static str {
        "sembase-train-gelu"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = contiguous_f32(x, layout, "training gelu", "x")?.to_vec();
        out.par_chunks_mut(CHUNK).for_each(gelu_erf_in_place);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (x_host, mut dx) = (HostF32::of(x)?, HostF32::of(grad)?.to_vec());
        dx.par_chunks_mut(CHUNK)
            .zip(x_host.par_chunks(CHUNK))
            .for_each(|(g, x)| gelu_erf_backward(x, g));
        Ok(Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?))
    }
}

/// Exact GELU of an f32 CPU tensor, in the gradient graph.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(TrainGelu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::train_check::assert_same_forward_and_gradients;
    use candle_core::Var;

    #[test]
    fn forward_and_gradient_match_candle() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (70, 300), &dev).unwrap()).unwrap();
        let ours = gelu_erf(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().gelu_erf().unwrap();
        assert_same_forward_and_gradients(&ours, &theirs, &[("x", &x)], 1e-5, 1e-5);
    }
}
