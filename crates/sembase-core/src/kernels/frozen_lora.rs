//! LoRA over a frozen base as one op of the gradient graph:
//! `y = x W^T + b + scale * dropout(x) A^T B^T`, with gradients for `x`, `A` and `B`.
//!
//! Composed from candle ops, each adapted matrix kept five activations alive until the
//! backward pass (the dropped input, `x A^T`, `x A^T B^T`, its scaled copy and the base
//! output); with all seven projections of a decoder layer adapted they held most of a
//! LoRA step's memory. This op keeps only its output: the backward pass recomputes the
//! dropout mask from its seed (see `train_dropout`) and `dropout(x) A^T`, which is only
//! `rank` columns wide.

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use super::frozen_linear::FrozenMap;
use super::kernel_io::{
    add_into, affine, contiguous_f32, every_thread, matmul, product, HostF32, View,
};
use super::train_dropout::masked;

/// The op's name in errors.
const OP: &str = "frozen LoRA linear";

/// The base map and how the update is applied.
struct FrozenLora {
    base: FrozenMap,
    update: Update,
}

/// The shapes of one call: `x` `(rows, in)`, `A` `(rank, in)`, `B` `(out, rank)`.
#[derive(Clone, Copy)]
struct Dims {
    rows: usize,
    in_dim: usize,
    rank: usize,
    out_dim: usize,
}

impl Dims {
    fn of(x: &Shape, a: &Shape, b: &Shape) -> Result<Self> {
        let ((rows, in_dim), (rank, a_in), (out_dim, b_rank)) =
            (x.dims2()?, a.dims2()?, b.dims2()?);
        if a_in != in_dim || b_rank != rank {
            candle_core::bail!("{OP}: x {x:?}, A {a:?} and B {b:?} do not chain");
        }
        Ok(Self { rows, in_dim, rank, out_dim })
    }
}

impl FrozenLora {
    /// The update's input: `x` after dropout.
    fn dropped<'x>(&self, x: &'x [f32]) -> Cow<'x, [f32]> {
        let Update { rate, seed, .. } = self.update;
        if rate > 0.0 {
            Cow::Owned(masked(x.to_vec(), rate, seed))
        } else {
            Cow::Borrowed(x)
        }
    }

    /// `dropout(x) A^T`, `(rows, rank)`.
    fn low(&self, dropped: &[f32], a: &[f32], d: Dims) -> Vec<f32> {
        product(
            d.rows,
            d.rank,
            d.in_dim,
            View::rows(dropped, d.in_dim),
            View::columns(a, d.in_dim),
            every_thread(),
        )
    }

    /// The frozen matrix in f32, checked against the call's shapes.
    fn weight(&self, d: Dims) -> Result<Tensor> {
        let weight = (self.base.weight)()?;
        if weight.elem_count() != d.out_dim * d.in_dim || self.base.bias.elem_count() != d.out_dim {
            candle_core::bail!(
                "{OP}: base {:?} with bias {:?} is not {} x {}",
                weight.shape(),
                self.base.bias.shape(),
                d.out_dim,
                d.in_dim
            );
        }
        Ok(weight)
    }
}

impl CustomOp3 for FrozenLora {
    fn name(&self) -> &'static str {
        "sembase-frozen-lora"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(xl.shape(), al.shape(), bl.shape())?;
        let weight = self.weight(d)?;
        let (w, bias) = (HostF32::of(&weight)?, HostF32::of(&self.base.bias)?);
        let x = contiguous_f32(x, xl, OP, "x")?;
        let (a, b) = (contiguous_f32(a, al, OP, "A")?, contiguous_f32(b, bl, OP, "B")?);
        let mut y = affine(x, d.rows, d.in_dim, View::columns(&w, d.in_dim), &bias);
        let low = self.low(&self.dropped(x), a, d);
        // SAFETY: y is rows x out, low rows x rank and b out x rank, all row-major slices
        // of exactly those sizes.
        unsafe {
            matmul(
                d.rows,
                d.out_dim,
                d.rank,
                y.as_mut_ptr(),
                d.out_dim,
                true,
                View::rows(&low, d.rank),
                View::columns(b, d.rank),
                self.update.scale,
                every_thread(),
            );
        }
        Ok((CpuStorage::F32(y), Shape::from((d.rows, d.out_dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = Dims::of(x.shape(), a.shape(), b.shape())?;
        let (xs, a_values, b_values) = (HostF32::of(x)?, HostF32::of(a)?, HostF32::of(b)?);
        let g = HostF32::of(grad)?;
        let dropped = self.dropped(&xs);
        let low = self.low(&dropped, &a_values, d);
        let scaled = |mut values: Vec<f32>| {
            values.iter_mut().for_each(|v| *v *= self.update.scale);
            values
        };
        // (m x k) . (k x n) on every thread.
        let mul = |m, n, k, a, b| product(m, n, k, a, b, every_thread());
        let (rows, columns) = (View::rows, View::columns);
        let (r, out_dim, in_dim) = (d.rank, d.out_dim, d.in_dim);
        // dB (out x rank) = scale g^T low; d low (rows x rank) = scale g B.
        let db = scaled(mul(out_dim, r, d.rows, columns(&g, out_dim), rows(&low, r)));
        let d_low = scaled(mul(d.rows, r, out_dim, rows(&g, out_dim), rows(&b_values, r)));
        // dA (rank x in) = d_low^T dropout(x).
        let da = mul(r, in_dim, d.rows, columns(&d_low, r), rows(&dropped, in_dim));
        let dx = if x.track_op() {
            // dx = g W + dropout'(d_low A), the mask applied to the update's path only.
            let weight = self.weight(d)?;
            let w = HostF32::of(&weight)?;
            let mut dx = mul(d.rows, in_dim, out_dim, rows(&g, out_dim), rows(&w, in_dim));
            let through_update = mul(d.rows, in_dim, r, rows(&d_low, r), rows(&a_values, in_dim));
            let Update { rate, seed, .. } = self.update;
            let through_update = match rate > 0.0 {
                true => masked(through_update, rate, seed),
                false => through_update,
            };
            add_into(&mut dx, &through_update);
            Some(Tensor::from_vec(dx, (d.rows, in_dim), &Device::Cpu)?)
        } else {
            None
        };
        Ok((
            dx,
            Some(Tensor::from_vec(da, (d.rank, d.in_dim), &Device::Cpu)?),
            Some(Tensor::from_vec(db, (d.out_dim, d.rank), &Device::Cpu)?),
        ))
    }
}

/// How a LoRA update is applied.
#[derive(Debug, Clone, Copy)]
pub struct Update {
    /// Multiplies the low-rank product (`alpha / rank`).
    pub scale: f32,
    /// Dropout rate on the update's input (0: none).
    pub rate: f32,
    /// Chooses the dropout mask.
    pub seed: u64,
}

/// `x W^T + b + scale * dropout(x) A^T B^T` for f32 CPU tensors `x` `(rows, in)`, `a`
/// `(rank, in)` and `b` `(out, rank)` over the frozen map `base`.
pub fn linear(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    base: &FrozenMap,
    update: Update,
) -> Result<Tensor> {
    let op = FrozenLora { base: base.clone(), update };
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::train_check::{assert_same_forward_and_gradients, largest};
    use crate::kernels::train_dropout;
    use candle_core::Var;

    /// The same map composed from candle ops and the dropout op.
    fn composed(
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        rate: f32,
    ) -> Tensor {
        let dropped = match rate > 0.0 {
            true => train_dropout::dropout(x, rate, 11).unwrap(),
            false => x.clone(),
        };
        let update = (dropped.matmul(&a.t().unwrap()).unwrap().matmul(&b.t().unwrap()).unwrap()
            * 2.0)
            .unwrap();
        (x.matmul(&w.t().unwrap()).unwrap().broadcast_add(bias).unwrap() + update).unwrap()
    }

    fn random(shape: (usize, usize), std: f32) -> Tensor {
        Tensor::randn(0f32, std, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn forward_and_gradients_match_composed_ops_with_and_without_dropout() {
        let (rows, in_dim, rank, out_dim) = (37, 24, 4, 40);
        let (w, bias) =
            (random((out_dim, in_dim), 0.3), random((1, out_dim), 0.3).squeeze(0).unwrap());
        for rate in [0.0, 0.25] {
            let x = Var::from_tensor(&random((rows, in_dim), 1.0)).unwrap();
            let a = Var::from_tensor(&random((rank, in_dim), 0.3)).unwrap();
            let b = Var::from_tensor(&random((out_dim, rank), 0.3)).unwrap();
            let (xt, at, bt) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
            let base = FrozenMap::held(&w, Some(&bias)).unwrap();
            let update = Update { scale: 2.0, rate, seed: 11 };
            let ours = linear(xt, at, bt, &base, update).unwrap();
            let theirs = composed(xt, at, bt, &w, &bias, rate);
            let vars = [("x", &x), ("A", &a), ("B", &b)];
            assert_same_forward_and_gradients(&ours, &theirs, &vars, 1e-4, 1e-3);
        }
    }

    #[test]
    fn an_input_outside_the_graph_gets_no_gradient() {
        let (rows, in_dim, rank, out_dim) = (5, 8, 2, 6);
        let (w, bias) = (
            random((out_dim, in_dim), 0.3),
            Tensor::zeros(out_dim, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        let x = random((rows, in_dim), 1.0);
        let a = Var::from_tensor(&random((rank, in_dim), 0.3)).unwrap();
        let b = Var::from_tensor(&random((out_dim, rank), 0.3)).unwrap();
        let base = FrozenMap::held(&w, Some(&bias)).unwrap();
        let update = Update { scale: 0.5, rate: 0.1, seed: 3 };
        let ours = linear(&x, a.as_tensor(), b.as_tensor(), &base, update).unwrap();
        let grads = ours.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none(), "a constant input got a gradient");
        let db = grads.get(b.as_tensor()).unwrap();
        assert!(largest(db, &db.zeros_like().unwrap()) > 0.0, "B got no gradient");
    }
}
