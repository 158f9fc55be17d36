//! Vectorisable element-wise math for the CPU kernels.
//!
//! Written as branch-free scalar code so the compiler vectorises the loops;
//! the loop is compiled for AVX-512 and AVX2 as well and chosen at run time
//! (`cpu_features` says which set runs, and can force a slower one).

/// exp(x) by range reduction to r in [-ln2/2, ln2/2] and a degree-6 Taylor
/// polynomial: relative error below 2e-7 on the clamped range.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = fused(x, LOG2E, ROUND);
    let k = shifted - ROUND;
    let r = fused(-k, LN2_LO, fused(-k, LN2_HI, x));
    let p = horner(r, &[1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0]);
    // k as an integer from the low mantissa bits of `shifted` (integer ops, so the loop
    // stays vectorised where a float-to-int cast would not), then 2^k from its exponent.
    let k_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    p * f32::from_bits(((k_int + 127) << 23) as u32)
}

/// `a * b + c` rounded once: one instruction in the kernel variants that
/// `multiversioned!` compiles (all have FMA), a libm call in the plain fallback.
#[inline(always)]
fn fused(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// `coefficients[0] + x coefficients[1] + x^2 coefficients[2] + ...` by Horner's rule.
#[inline(always)]
fn horner(x: f32, coefficients: &[f32]) -> f32 {
    let (&last, lower) = coefficients.split_last().expect("at least one coefficient");
    lower.iter().rev().fold(last, |acc, &c| fused(acc, x, c))
}

/// erf(x) by Abramowitz & Stegun 7.1.26: absolute error below 1.5e-7.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152_1, 1.061_405_4];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * horner(t, &A);
    let y = fused(-poly, exp(-ax * ax), 1.0);
    y.copysign(x)
}

/// Defines `pub fn $name(args) [-> ret]` that runs `$body(args)` compiled for AVX-512
/// or AVX2+FMA when the CPU has them (chosen at run time, capped by
/// `SEMBASE_CPU_KERNELS`: see `cpu_features`), or as plain code otherwise.
/// The other CPU kernels use it for their element-wise loops too.
macro_rules! multiversioned {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $body:ident) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                use $crate::kernels::cpu_features::{active, KernelSet};
                match active() {
                    // SAFETY: `active` names only sets whose instructions the CPU has.
                    KernelSet::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    KernelSet::Avx2 => return unsafe { avx2($($arg),*) },
                    KernelSet::Portable => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversioned;

const INV_SQRT2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Exact-form GELU of one value, for inlining into a caller's vectorised loop.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * INV_SQRT2))
}

#[inline(always)]
fn gelu_loop(values: &mut [f32]) {
    for v in values.iter_mut() {
        *v = gelu(*v);
    }
}

/// `grad *= GELU'(x)`, with `GELU'(x) = Phi(x) + x * phi(x)`.
#[inline(always)]
fn gelu_backward_loop(x: &[f32], grad: &mut [f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for (g, &x) in grad.iter_mut().zip(x) {
        let cdf = 0.5 * (1.0 + erf(x * INV_SQRT2));
        let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
        *g *= cdf + x * pdf;
    }
}

/// `pick` folded over `values` from `init`, in 16 independent lanes so the loop vectorises.
#[inline(always)]
fn fold_lanes(values: &[f32], init: f32, pick: impl Fn(f32, f32) -> f32 + Copy) -> f32 {
    let mut lanes = [init; 16];
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = pick(*lane, v);
        }
    }
    lanes.iter().chain(rest).fold(init, |a, &b| pick(a, b))
}

/// The largest of `values` (negative infinity when empty).
#[inline(always)]
pub(crate) fn max_of(values: &[f32]) -> f32 {
    fold_lanes(values, f32::NEG_INFINITY, |a, b| if b > a { b } else { a })
}

/// The smallest of `values` (infinity when empty).
#[inline(always)]
pub(crate) fn min_of(values: &[f32]) -> f32 {
    fold_lanes(values, f32::INFINITY, |a, b| if b < a { b } else { a })
}

#[inline(always)]
fn softmax_loop(row: &mut [f32]) {
    let max = max_of(row);
    let mut sums = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (sum, x) in sums.iter_mut().zip(chunk.iter_mut()) {
            *x = exp(*x - max);
            *sum += *x;
        }
    }
    // The last partial chunk through the same 16 lanes (padding adds nothing to the sum).
    let rest = chunks.into_remainder();
    let mut tail = [max; 16];
    tail[..rest.len()].copy_from_slice(rest);
    tail.iter_mut().for_each(|x| *x = exp(*x - max));
    rest.copy_from_slice(&tail[..rest.len()]);
    let sum = sums.iter().sum::<f32>() + rest.iter().sum::<f32>();
    let inverse = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inverse);
}

multiversioned! {
    /// Softmax of one row of scores, in place.
    pub fn softmax_in_place(row: &mut [f32]) = softmax_loop
}

multiversioned! {
    /// Exact-form GELU, `x * Phi(x)`, applied in place.
    pub fn gelu_erf_in_place(values: &mut [f32]) = gelu_loop
}

multiversioned! {
    /// The exact GELU's backward pass: multiplies `grad` by the derivative at `x`.
    pub fn gelu_erf_backward(x: &[f32], grad: &mut [f32]) = gelu_backward_loop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in -800..=800 {
            let x = i as f32 * 0.1;
            let (got, want) = (exp(x), x.exp());
            assert!(((got - want) / want).abs() < 3e-7, "exp({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn softmax_matches_the_libm_form() {
        for len in [1, 7, 16, 37] {
            let row: Vec<f32> = (0..len).map(|i| ((i * 37 % 11) as f32 - 5.0) * 1.7).collect();
            let mut got = row.clone();
            softmax_in_place(&mut got);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
            for (x, g) in row.iter().zip(&got) {
                let want = ((x - max) as f64).exp() / total;
                assert!(
                    (*g as f64 - want).abs() < 1e-6 * want.max(1e-3),
                    "len {len}: softmax {g}, want {want}"
                );
            }
        }
        assert_eq!(max_of(&[]), f32::NEG_INFINITY);
        let values: Vec<f32> = (0..40).map(|i| (i % 17) as f32 - 3.0).collect();
        assert_eq!((min_of(&values), max_of(&values)), (-3.0, 13.0));
    }

    #[test]
    fn gelu_matches_the_libm_form() {
        let xs: Vec<f32> = (-1000..=1000).map(|i| i as f32 * 0.01).collect();
        let mut got = xs.clone();
        gelu_erf_in_place(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = 0.5 * *x as f64 * (1.0 + libm_erf(*x as f64 / std::f64::consts::SQRT_2));
            assert!((*g as f64 - want).abs() < 2e-6, "gelu({x}) = {g}, want {want}");
        }
    }

    #[test]
    fn gelu_backward_matches_finite_differences() {
        let xs: Vec<f32> = (-600..=600).map(|i| i as f32 * 0.01).collect();
        let mut grad = vec![1.0f32; xs.len()];
        gelu_erf_backward(&xs, &mut grad);
        let gelu = |x: f64| 0.5 * x * (1.0 + libm_erf(x / std::f64::consts::SQRT_2));
        for (x, g) in xs.iter().zip(&grad).step_by(7) {
            let h = 1e-4;
            let want = (gelu(*x as f64 + h) - gelu(*x as f64 - h)) / (2.0 * h);
            assert!((*g as f64 - want).abs() < 1e-5, "gelu'({x}) = {g}, want {want}");
        }
    }

    #[inline(always)]
    fn exp_and_erf_loop(values: &[f32]) -> Vec<f32> {
        values.iter().map(|&x| exp(x)).chain(values.iter().map(|&x| erf(x))).collect()
    }

    multiversioned! {
        fn exp_and_erf(values: &[f32]) -> Vec<f32> = exp_and_erf_loop
    }

    /// Each kernel set this CPU has gives the portable loop's values (see `cpu_features`).
    #[test]
    fn every_kernel_set_matches_the_portable_one() {
        use crate::kernels::cpu_features::assert_every_set_agrees;
        let xs: Vec<f32> = (-950..=950).map(|i| i as f32 * 0.097).collect();
        assert_every_set_agrees("exp, erf", 1e-6, || exp_and_erf(&xs));
        assert_every_set_agrees("gelu", 1e-6, || {
            let mut values = xs.clone();
            gelu_erf_in_place(&mut values);
            values
        });
        assert_every_set_agrees("gelu backward", 1e-6, || {
            let mut grad: Vec<f32> = xs.iter().map(|x| 1.0 + x.sin()).collect();
            gelu_erf_backward(&xs, &mut grad);
            grad
        });
        for len in [1, 7, 16, 33, 384] {
            assert_every_set_agrees(&format!("softmax of {len}"), 1e-6, || {
                let mut row: Vec<f32> = xs.iter().step_by(3).take(len).map(|x| x * 0.3).collect();
                softmax_in_place(&mut row);
                row
            });
        }
    }

    /// A double-precision reference erf (series / continued fraction are overkill:
    /// erfc via its high-accuracy rational approximation from W. J. Cody is not in std,
    /// so integrate exp(-t^2) with Simpson's rule on a fine grid).
    fn libm_erf(x: f64) -> f64 {
        let n = 20_000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut sum = f(0.0) + f(x);
        for i in 1..n {
            sum += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        sum * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }
}
