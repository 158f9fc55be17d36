//! Limited-memory BFGS with a backtracking (Armijo) line search, for the
//! smooth, full-batch objectives of the heads.

/// Stopping rules and memory size.
#[derive(Debug, Clone, Copy)]
pub struct LbfgsOptions {
    pub memory: usize,
    pub max_iter: usize,
    /// Stop when the largest gradient component is below this (scikit-learn's lbfgs `tol`;
    /// the objectives are per-example means, as there).
    pub grad_tol: f64,
    /// Stop when an iteration lowers the loss by less than this, relative to the loss.
    pub rel_tol: f64,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        Self { memory: 10, max_iter: 500, grad_tol: 1e-4, rel_tol: 1e-12 }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbfgsResult {
    pub loss: f64,
    pub iterations: usize,
    pub converged: bool,
}

/// Minimises `f` from `x` (updated in place). `f(x, grad)` returns the loss and
/// writes the gradient.
pub fn minimize(
    x: &mut [f64],
    options: &LbfgsOptions,
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
) -> LbfgsResult {
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut loss = f(x, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut rho_hist: Vec<f64> = Vec::new();
    let mut d = vec![0.0; n];
    let mut x_new = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    let mut alpha = vec![0.0; options.memory];
    for iter in 0..options.max_iter {
        if max_abs(&g) < options.grad_tol {
            return LbfgsResult { loss, iterations: iter, converged: true };
        }
        // Two-loop recursion: d = -H g.
        d.copy_from_slice(&g);
        for i in (0..s_hist.len()).rev() {
            alpha[i] = rho_hist[i] * dot(&s_hist[i], &d);
            axpy(-alpha[i], &y_hist[i], &mut d);
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => dot(s, y) / dot(y, y),
            _ => 1.0 / norm(&g).max(1e-12),
        };
        d.iter_mut().for_each(|v| *v *= gamma);
        for i in 0..s_hist.len() {
            let beta = rho_hist[i] * dot(&y_hist[i], &d);
            axpy(alpha[i] - beta, &s_hist[i], &mut d);
        }
        d.iter_mut().for_each(|v| *v = -*v);
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart along -g.
            s_hist.clear();
            y_hist.clear();
            rho_hist.clear();
            for (di, gi) in d.iter_mut().zip(&g) {
                *di = -gi / norm(&g).max(1e-12);
            }
            slope = dot(&g, &d);
        }
        // Backtracking line search with the Armijo condition.
        let mut step = 1.0;
        let mut new_loss;
        let mut tries = 0;
        loop {
            for i in 0..n {
                x_new[i] = x[i] + step * d[i];
            }
            new_loss = f(&x_new, &mut g_new);
            if new_loss.is_finite() && new_loss <= loss + 1e-4 * step * slope {
                break;
            }
            step *= 0.5;
            tries += 1;
            if tries > 40 {
                return LbfgsResult { loss, iterations: iter, converged: false };
            }
        }
        let mut s = vec![0.0; n];
        let mut y = vec![0.0; n];
        for i in 0..n {
            s[i] = x_new[i] - x[i];
            y[i] = g_new[i] - g[i];
        }
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if s_hist.len() == options.memory {
                s_hist.remove(0);
                y_hist.remove(0);
                rho_hist.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
            rho_hist.push(1.0 / sy);
        }
        x.copy_from_slice(&x_new);
        g.copy_from_slice(&g_new);
        let decrease = loss - new_loss;
        loss = new_loss;
        if decrease.abs() <= options.rel_tol * loss.abs().max(1e-12) {
            return LbfgsResult { loss, iterations: iter + 1, converged: true };
        }
    }
    LbfgsResult { loss, iterations: options.max_iter, converged: max_abs(&g) < options.grad_tol }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimises_rosenbrock() {
        let mut x = vec![-1.2, 1.0];
        let r = minimize(
            &mut x,
            &LbfgsOptions { max_iter: 1000, grad_tol: 1e-8, rel_tol: 0.0, ..Default::default() },
            |x, g| {
                let (a, b) = (x[0], x[1]);
                g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
                g[1] = 200.0 * (b - a * a);
                (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
            },
        );
        assert!(r.converged, "{r:?}");
        assert!((x[0] - 1.0).abs() < 1e-5 && (x[1] - 1.0).abs() < 1e-5, "{x:?}");
    }

    #[test]
    fn minimises_ill_conditioned_quadratic() {
        let scales = [1.0, 10.0, 100.0, 1000.0];
        let mut x = vec![1.0; 4];
        let r = minimize(
            &mut x,
            &LbfgsOptions { grad_tol: 1e-9, rel_tol: 0.0, ..Default::default() },
            |x, g| {
                let mut f = 0.0;
                for i in 0..4 {
                    g[i] = scales[i] * (x[i] - i as f64);
                    f += 0.5 * scales[i] * (x[i] - i as f64).powi(2);
                }
                f
            },
        );
        assert!(r.converged);
        for (i, v) in x.iter().enumerate() {
            assert!((v - i as f64).abs() < 1e-6, "{x:?}");
        }
    }
}
