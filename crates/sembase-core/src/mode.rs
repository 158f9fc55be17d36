//! Whether a forward pass is for inference or for training, passed down the layers as
//! a value: training carries its own seeded dropout state, so a step replays exactly
//! (a resumed run equals an uninterrupted one) and two models training at once, or on
//! other threads, never share a generator.

use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The mode of one forward pass.
#[derive(Debug)]
pub enum Mode {
    /// No dropout; the CPU inference kernels apply.
    Inference,
    /// Dropout on, its masks drawn in order from this generator.
    Training(DropoutState),
}

/// The generator a training pass draws its dropout masks from (boxed: it is large, and
/// inference passes carry none).
#[derive(Debug)]
pub struct DropoutState(Box<Mutex<StdRng>>);

impl Mode {
    /// Training with dropout masks drawn from `seed`: the same seed and the same
    /// sequence of forward passes give the same masks.
    pub fn training(seed: u64) -> Self {
        Mode::Training(DropoutState(Box::new(Mutex::new(StdRng::seed_from_u64(seed)))))
    }

    /// Whether dropout is on.
    pub fn is_training(&self) -> bool {
        matches!(self, Mode::Training(_))
    }

    /// The next seed for a kernel that makes its own mask (0 in inference, where no
    /// mask is made).
    pub fn next_dropout_seed(&self) -> u64 {
        match self {
            Mode::Inference => 0,
            Mode::Training(state) => state.rng().random(),
        }
    }

    /// `count` mask values for dropout at rate `1 - keep`: 0, or `1 / keep` for a kept
    /// element (for devices without the CPU dropout kernel).
    pub(crate) fn dropout_mask(&self, count: usize, keep: f32) -> Vec<f32> {
        match self {
            Mode::Inference => vec![1.0; count],
            Mode::Training(state) => {
                let mut rng = state.rng();
                (0..count)
                    .map(|_| if rng.random::<f32>() < keep { 1.0 / keep } else { 0.0 })
                    .collect()
            }
        }
    }
}

impl DropoutState {
    fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        // A panic elsewhere cannot leave the generator half-updated in a way that matters.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_and_consecutive_draws_differ() {
        let a = Mode::training(7);
        let first = (a.next_dropout_seed(), a.dropout_mask(64, 0.9));
        let second = (a.next_dropout_seed(), a.dropout_mask(64, 0.9));
        assert_ne!(first, second);
        let b = Mode::training(7);
        assert_eq!((b.next_dropout_seed(), b.dropout_mask(64, 0.9)), first);
        assert!(!Mode::Inference.is_training() && a.is_training());
    }
}
