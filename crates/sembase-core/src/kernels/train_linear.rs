//! Linear layers for training on the CPU: `y = x W^T + b` as one op whose backward
//! pass is two GEMMs and a column sum.
//!
//! Composed candle ops add a transposed view, a broadcast add (whose backward is a
//! reduction) and, per graph node, a zero-filled gradient buffer plus an add; at
//! training sizes that bookkeeping cost as much as the GEMMs' own time outside gemm.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernel_io::{add_into, affine, contiguous_f32, every_thread, product, HostF32, View};

/// The op's name in errors.
const OP: &str = "training linear";

/// Rows per parallel task when summing the bias gradient.
const ROWS_PER_TASK: usize = 256;

/// `y = x W^T + b` for `x` `(rows, in)`, `W` `(out, in)` and `b` `(out)`.
struct TrainLinear;

impl CustomOp3 for TrainLinear {
    fn name(&self) -> &'static str {
        "sembase-train-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim) = xl.shape().dims2()?;
        let (out_dim, w_in) = wl.shape().dims2()?;
        if w_in != in_dim || bl.shape().dims1()? != out_dim {
            candle_core::bail!(
                "{OP}: shapes {:?} x {:?}^T + {:?} do not fit",
                xl.shape(),
                wl.shape(),
                bl.shape()
            );
        }
        let (x, w, b) = (
            contiguous_f32(x, xl, OP, "x")?,
            contiguous_f32(w, wl, OP, "weight")?,
            contiguous_f32(b, bl, OP, "bias")?,
        );
        // W (out x in, row-major) read by columns is W^T (in x out).
        let out = affine(x, rows, in_dim, View::columns(w, in_dim), b);
        Ok((CpuStorage::F32(out), Shape::from((rows, out_dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, in_dim) = x.dims2()?;
        let out_dim = w.dims2()?.0;
        let (x_host, w_host, g) = (HostF32::of(x)?, HostF32::of(w)?, HostF32::of(grad)?);
        // dx = g W ; dW = g^T x ; db = column sums of g. Frozen inputs get no gradient.
        let dx = x.track_op().then(|| {
            let dx = product(
                rows,
                in_dim,
                out_dim,
                View::rows(&g, out_dim),
                View::rows(&w_host, in_dim),
                every_thread(),
            );
            Tensor::from_vec(dx, (rows, in_dim), &Device::Cpu)
        });
        let dw = w.track_op().then(|| {
            let dw = product(
                out_dim,
                in_dim,
                rows,
                View::columns(&g, out_dim),
                View::rows(&x_host, in_dim),
                every_thread(),
            );
            Tensor::from_vec(dw, (out_dim, in_dim), &Device::Cpu)
        });
        let db =
            b.track_op().then(|| Tensor::from_vec(column_sums(&g, out_dim), out_dim, &Device::Cpu));
        Ok((dx.transpose()?, dw.transpose()?, db.transpose()?))
    }
}

/// The sum of the rows of a row-major matrix `width` wide.
fn column_sums(values: &[f32], width: usize) -> Vec<f32> {
    values
        .par_chunks(width * ROWS_PER_TASK)
        .map(|block| {
            let mut sums = vec![0f32; width];
            for row in block.chunks(width) {
                add_into(&mut sums, row);
            }
            sums
        })
        .reduce(
            || vec![0f32; width],
            |mut a, b| {
                add_into(&mut a, &b);
                a
            },
        )
}

/// `x W^T + b` for f32 CPU tensors, `x` of shape `(rows, in)`, in the gradient graph.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&weight.contiguous()?, bias, TrainLinear)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::train_check::{assert_same_forward_and_gradients, largest};
    use candle_core::Var;

    #[test]
    fn forward_and_gradients_match_composed_ops() {
        let dev = Device::Cpu;
        let (rows, in_dim, out_dim) = (600, 40, 30);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, in_dim), &dev).unwrap()).unwrap();
        let w =
            Var::from_tensor(&Tensor::randn(0f32, 0.2, (out_dim, in_dim), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.2, out_dim, &dev).unwrap()).unwrap();
        let ours = linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let theirs = x
            .as_tensor()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        assert_same_forward_and_gradients(
            &ours,
            &theirs,
            &[("x", &x), ("weight", &w), ("bias", &b)],
            1e-4,
            1e-3,
        );
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_a_transposed_input_is_read_correctly() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap().t().unwrap();
        let b = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        let input = x.as_tensor().t().unwrap();
        let ours = linear(&input, &w.t().unwrap(), &b).unwrap();
        let theirs = input.matmul(&w).unwrap();
        assert!(largest(&ours, &theirs) < 1e-4);
        let grads = ours.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
        assert_eq!(grads.get(x.as_tensor()).unwrap().dims(), &[7, 5]);
    }
}
