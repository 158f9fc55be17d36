//! Test support for the training kernels: each `train_*` op is checked against the
//! same computation composed from candle ops, forward and backward.

use candle_core::{Tensor, Var};

/// The largest absolute difference between two tensors of one shape.
pub fn largest(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// Asserts that `ours` and `theirs` (both computed from `vars`) agree within
/// `forward_tol`, and that the gradients of one random weighted sum of each agree within
/// `gradient_tol` for every named variable.
pub fn assert_same_forward_and_gradients(
    ours: &Tensor,
    theirs: &Tensor,
    vars: &[(&str, &Var)],
    forward_tol: f32,
    gradient_tol: f32,
) {
    assert!(largest(ours, theirs) < forward_tol, "forward differs by {}", largest(ours, theirs));
    let weights = Tensor::randn(0f32, 1.0, ours.shape(), ours.device()).unwrap();
    let ours = (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
    let theirs = (theirs * &weights).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, var) in vars {
        let (a, b) = (ours.get(var.as_tensor()).unwrap(), theirs.get(var.as_tensor()).unwrap());
        assert!(largest(a, b) < gradient_tol, "d{name} differs by {}", largest(a, b));
    }
}
