//! Linear-layer throughput on the CPU: the f32 kernel against the int8 kernels this CPU
//! supports, on the shapes of a small BERT layer (hidden 384, intermediate 1536), for
//! judging the kernels apart from the rest of a model.
//! `linear_bench [--rows N] [--repeats N]`; prints one JSON object per shape and kernel
//! (GMAC/s and the ratio to f32 on the same shape in the same run).

use std::time::Instant;

use candle_core::{Device, Tensor};
use sembase_core::kernels::int8_linear::Int8Kernel;
use sembase_core::layers::{Linear, LinearWeights};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    let rows: usize = value("--rows").map(|n| n.parse()).transpose()?.unwrap_or(512);
    let repeats: usize = value("--repeats").map(|n| n.parse()).transpose()?.unwrap_or(20);
    let kernels: Vec<Int8Kernel> = [Int8Kernel::Vnni, Int8Kernel::Avx2, Int8Kernel::Portable]
        .into_iter()
        .filter(|k| k.supported())
        .collect();
    for (in_dim, out_dim) in [(384, 384), (384, 1536), (1536, 384)] {
        let weights = || -> candle_core::Result<LinearWeights> {
            Ok(LinearWeights {
                weight: Tensor::randn(0f32, 0.05, (out_dim, in_dim), &Device::Cpu)?,
                bias: Some(Tensor::zeros(out_dim, candle_core::DType::F32, &Device::Cpu)?),
            })
        };
        let x = Tensor::randn(0f32, 1.0, (rows, in_dim), &Device::Cpu)?;
        let macs = (rows * in_dim * out_dim) as f64;
        let float = Linear::new(weights()?)?;
        let f32_seconds = best_of(repeats, || float.forward(&x).map(drop))?;
        report(in_dim, out_dim, "f32", macs / f32_seconds, 1.0);
        for &kernel in &kernels {
            let int8 = Linear::new_int8(weights()?, kernel)?;
            let seconds = best_of(repeats, || int8.forward(&x).map(drop))?;
            report(
                in_dim,
                out_dim,
                &format!("int8 {kernel:?}"),
                macs / seconds,
                f32_seconds / seconds,
            );
        }
    }
    Ok(())
}

/// The fastest of `repeats` runs after one warm-up (a noisy machine only adds time).
fn best_of(
    repeats: usize,
    mut run: impl FnMut() -> sembase_core::Result<()>,
) -> sembase_core::Result<f64> {
    run()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let start = Instant::now();
        run()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn report(in_dim: usize, out_dim: usize, kernel: &str, macs_per_s: f64, vs_f32: f64) {
    println!(
        "{{\"shape\": \"{in_dim}x{out_dim}\", \"kernel\": \"{kernel}\", \"gmacs\": {:.1}, \"vs_f32\": {vs_f32:.2}}}",
        macs_per_s / 1e9
    );
}
