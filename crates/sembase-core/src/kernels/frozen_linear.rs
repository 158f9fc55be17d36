//! A frozen linear map inside a gradient graph (the base weights under LoRA): `y = x W^T
//! + b` whose backward pass is the input's gradient only, `dx = dy W`.
//!
//! Composed candle ops would also compute `dW = dy^T x` for every frozen matrix and keep
//! it in the gradient store: a third of the step's GEMM time and a copy of the whole
//! base model in memory, both thrown away. The matrix comes from a [`FrozenMatrix`] each
//! time it is needed, so a quantised or half-precision base is expanded to f32 one
//! matrix at a time in both passes instead of being held in f32 for the whole step.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};

use super::kernel_io::{affine, contiguous_f32, every_thread, product, HostF32, View};

/// The op's name in errors.
const OP: &str = "frozen linear";

/// Gives a frozen matrix `W` as it is stored, contiguous `(out, in)` f32 on the CPU (the
/// layout a quantised or half-precision matrix expands into fastest).
pub type FrozenMatrix = Arc<dyn Fn() -> Result<Tensor> + Send + Sync>;

/// A frozen map in f32 on the CPU: its matrix and its bias `(out)` (zeros when it has none).
#[derive(Clone)]
pub struct FrozenMap {
    pub weight: FrozenMatrix,
    pub bias: Tensor,
}

/// `x W^T + b` with a frozen map, neither part trained.
struct FrozenLinear(FrozenMap);

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "sembase-frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim) = xl.shape().dims2()?;
        let weight = (self.0.weight)()?;
        let (w, b) = (HostF32::of(&weight)?, HostF32::of(&self.0.bias)?);
        let out_dim = b.len();
        if w.len() != in_dim * out_dim {
            candle_core::bail!("{OP}: x {:?} does not fit a {out_dim}-wide map", xl.shape());
        }
        let x = contiguous_f32(x, xl, OP, "x")?;
        let out = affine(x, rows, in_dim, View::columns(&w, in_dim), &b);
        Ok((CpuStorage::F32(out), Shape::from((rows, out_dim))))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (rows, in_dim) = x.dims2()?;
        let weight = (self.0.weight)()?;
        let (w, g) = (HostF32::of(&weight)?, HostF32::of(grad)?);
        let out_dim = w.len() / in_dim.max(1);
        // dx (rows x in) = g (rows x out) . W (out x in).
        let dx = product(
            rows,
            in_dim,
            out_dim,
            View::rows(&g, out_dim),
            View::rows(&w, in_dim),
            every_thread(),
        );
        Ok(Some(Tensor::from_vec(dx, (rows, in_dim), &Device::Cpu)?))
    }
}

/// `x W^T + b` for an f32 CPU `x` `(rows, in)` in a gradient graph, with a frozen map.
pub fn linear(x: &Tensor, map: &FrozenMap) -> Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenLinear(map.clone()))
}

impl FrozenMap {
    /// The map with `weight` `(out, in)` already held in f32, and `bias` (none: zeros).
    pub fn held(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let bias = Self::bias_or_zeros(bias, weight.dim(0)?)?;
        let weight = weight.contiguous()?;
        Ok(Self { weight: Arc::new(move || Ok(weight.clone())), bias })
    }

    /// `bias` in f32, or `out_dim` zeros when there is none.
    pub fn bias_or_zeros(bias: Option<&Tensor>, out_dim: usize) -> Result<Tensor> {
        match bias {
            Some(b) => b.to_dtype(candle_core::DType::F32),
            None => Tensor::zeros(out_dim, candle_core::DType::F32, &Device::Cpu),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::train_check::largest;
    use candle_core::Var;

    #[test]
    fn forward_and_input_gradient_match_composed_ops() {
        let dev = Device::Cpu;
        let (rows, in_dim, out_dim) = (37, 24, 40);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, in_dim), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 0.3, (out_dim, in_dim), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.3, out_dim, &dev).unwrap();
        let ours = linear(x.as_tensor(), &FrozenMap::held(&w, Some(&b)).unwrap()).unwrap();
        let theirs = x.as_tensor().matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        assert!(largest(&ours, &theirs) < 1e-4, "forward differs");
        let weights = Tensor::randn(0f32, 1.0, ours.shape(), &dev).unwrap();
        let loss = |y: &Tensor| (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (ours, theirs) = (loss(&ours), loss(&theirs));
        let (dx, want) = (ours.get(x.as_tensor()).unwrap(), theirs.get(x.as_tensor()).unwrap());
        assert!(largest(dx, want) < 1e-3, "input gradient differs");
        assert!(ours.get(&w).is_none() && ours.get(&b).is_none(), "frozen weights got gradients");
    }
}
