//! Small operations on embedding vectors.

/// Scales `v` to unit length (left as is when its norm is ~0, as torch's
/// `normalize` does with its epsilon).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Keeps the first `dims` values (Matryoshka) and re-normalises.
pub fn truncate_dimensions(v: &mut Vec<f32>, dims: usize) {
    v.truncate(dims);
    normalize(v);
}

/// Cosine similarity of two vectors of equal length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_renormalises() {
        let mut v = vec![3.0, 4.0, 12.0];
        truncate_dimensions(&mut v, 2);
        assert_eq!(v, vec![0.6, 0.8]);
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-6);
    }
}
