//! Dropout for training on the CPU whose mask is a hash of (seed, element), so the
//! backward pass recomputes it instead of keeping a mask tensor, and no gradient is
//! computed for a mask (candle's multiply computes one for both of its inputs).

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernel_io::{contiguous_f32, HostF32};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Whether element `key` survives dropout under `seed`, with probability `keep`.
pub(crate) fn keeps(seed: u64, key: u64, keep: f32) -> bool {
    let hash = mix(seed ^ mix(key));
    ((hash >> 40) as f32) < keep * (1u64 << 24) as f32
}

/// A 64-bit finaliser (splitmix64's): nearby inputs give unrelated outputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `values` with each element zeroed with probability `rate` and the rest scaled by
/// `1 / (1 - rate)`; element `i` of the flattened tensor keeps or drops by `(seed, i)`
/// alone, so any op can recompute the same mask.
pub(crate) fn masked(mut values: Vec<f32>, rate: f32, seed: u64) -> Vec<f32> {
    let keep = 1.0 - rate;
    let scale = 1.0 / keep;
    values.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, values)| {
        let first = chunk * CHUNK;
        for (at, v) in values.iter_mut().enumerate() {
            *v = if keeps(seed, (first + at) as u64, keep) { *v * scale } else { 0.0 };
        }
    });
    values
}

/// Dropout as an op of the gradient graph (its backward pass applies the same mask).
struct TrainDropout {
    rate: f32,
    seed: u64,
}

impl CustomOp1 for TrainDropout {
    fn name(&self) -> &'static str {
        "sembase-train-dropout"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, layout, "training dropout", "x")?;
        Ok((CpuStorage::F32(masked(x.to_vec(), self.rate, self.seed)), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = masked(HostF32::of(grad)?.to_vec(), self.rate, self.seed);
        Ok(Some(Tensor::from_vec(grad, x.shape(), &Device::Cpu)?))
    }
}

/// Dropout of an f32 CPU tensor with the mask chosen by `seed`, in the gradient graph.
pub fn dropout(x: &Tensor, rate: f32, seed: u64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(TrainDropout { rate, seed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn drops_about_the_rate_scales_the_rest_and_backward_uses_the_same_mask() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::ones(100_000, candle_core::DType::F32, &dev).unwrap())
            .unwrap();
        let y = dropout(x.as_tensor(), 0.1, 3).unwrap();
        let values = y.to_vec1::<f32>().unwrap();
        let dropped = values.iter().filter(|&&v| v == 0.0).count() as f64 / values.len() as f64;
        assert!((dropped - 0.1).abs() < 0.005, "dropped {dropped}");
        assert!(values.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let grad = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            grad.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
            values,
            "y = x * mask, so dy/dx is the mask"
        );
        let other = dropout(x.as_tensor(), 0.1, 4).unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(other, values, "the seed does not change the mask");
    }
}
