//! Dropout, active only in training.

use candle_core::Tensor;

use super::on_cpu_in_f32;
use crate::error::Result;
use crate::kernels::train_dropout;
use crate::mode::Mode;

/// Dropout that is active only in [`Mode::Training`], whose generator gives the masks,
/// so a training step replays exactly (e.g. when resuming from a checkpoint).
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
}

impl Dropout {
    /// Drops each element with probability `p` (0 disables it).
    pub fn new(p: f32) -> Self {
        Self { p }
    }

    /// The probability of dropping an element in this mode (0 outside training).
    pub fn rate(&self, mode: &Mode) -> f32 {
        if mode.is_training() {
            self.p
        } else {
            0.0
        }
    }

    /// Identity outside training; in training, zeroes elements and rescales the rest.
    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let rate = self.rate(mode);
        if rate <= 0.0 {
            return Ok(x.clone());
        }
        if on_cpu_in_f32(&[x]) {
            return Ok(train_dropout::dropout(x, rate, mode.next_dropout_seed())?);
        }
        let mask = mode.dropout_mask(x.elem_count(), 1.0 - rate);
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }
}
