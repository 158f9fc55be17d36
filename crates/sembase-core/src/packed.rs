//! A batch of token sequences as the models take it: ids right-padded to the longest
//! sequence, the padding mask, and each sequence's length kept on the host (the
//! offsets of its packed rows, as TEI's `cu_seq_lengths`), so that kernels pack the
//! real tokens without reading the mask back from the device. Pairs read together by
//! a cross-encoder also carry their segment (token type) ids.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Token ids of several sequences, ready for a forward pass.
#[derive(Debug, Clone)]
pub struct PackedBatch {
    ids: Tensor,
    mask: Tensor,
    lengths: Vec<usize>,
    right_padded: bool,
    /// `(batch, width)` segment ids, `None` for single texts (segment 0 everywhere).
    segments: Option<Tensor>,
}

impl PackedBatch {
    /// `sequences` right-padded with `pad_id` to the longest (at least one column).
    pub fn right_padded(sequences: &[&[u32]], pad_id: u32, device: &Device) -> Result<Self> {
        let width = sequences.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(sequences.len() * width);
        let mut mask = Vec::with_capacity(sequences.len() * width);
        for seq in sequences {
            ids.extend(seq.iter().copied().chain(std::iter::repeat_n(pad_id, width - seq.len())));
            mask.extend(
                std::iter::repeat_n(1u32, seq.len())
                    .chain(std::iter::repeat_n(0, width - seq.len())),
            );
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (sequences.len(), width), device)?,
            mask: Tensor::from_vec(mask, (sequences.len(), width), device)?,
            lengths: sequences.iter().map(|s| s.len()).collect(),
            right_padded: true,
            segments: None,
        })
    }

    /// The batch with each sequence's segment ids (right-padded with 0); `segments[i]`
    /// must be as long as sequence `i`.
    pub fn with_segments(mut self, segments: &[&[u32]]) -> Result<Self> {
        let width = self.width();
        if segments.len() != self.lengths.len()
            || segments.iter().zip(&self.lengths).any(|(s, &len)| s.len() != len)
            || !self.right_padded
        {
            return Err(Error::tensor("segment ids do not match the batch's sequences"));
        }
        let padded: Vec<u32> = segments
            .iter()
            .flat_map(|s| s.iter().copied().chain(std::iter::repeat_n(0, width - s.len())))
            .collect();
        self.segments = Some(Tensor::from_vec(padded, (segments.len(), width), self.ids.device())?);
        Ok(self)
    }

    /// A batch from `(batch, width)` ids and a mask (1 real, 0 padding) laid out in any
    /// way (left padding too): the lengths are counted from the mask, once.
    pub fn from_mask(ids: Tensor, mask: Tensor) -> Result<Self> {
        if ids.dims2()? != mask.dims2()? {
            return Err(Error::tensor(format!(
                "ids {:?} and mask {:?} differ in shape",
                ids.dims(),
                mask.dims()
            )));
        }
        let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let lengths: Vec<usize> =
            rows.iter().map(|row| row.iter().filter(|&&m| m != 0.0).count()).collect();
        let right_padded =
            rows.iter().zip(&lengths).all(|(row, &len)| row[..len].iter().all(|&m| m != 0.0));
        Ok(Self { ids, mask, lengths, right_padded, segments: None })
    }

    /// `(batch, width)` token ids.
    pub fn ids(&self) -> &Tensor {
        &self.ids
    }

    /// `(batch, width)` mask, 1 for a real token and 0 for padding.
    pub fn mask(&self) -> &Tensor {
        &self.mask
    }

    /// `(batch, width)` segment ids, when the sequences are pairs.
    pub fn segments(&self) -> Option<&Tensor> {
        self.segments.as_ref()
    }

    /// Real tokens of each sequence.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Whether every sequence's real tokens come first (what packing needs).
    pub fn is_right_padded(&self) -> bool {
        self.right_padded
    }

    /// The padded width.
    pub fn width(&self) -> usize {
        self.ids.dims().get(1).copied().unwrap_or(0)
    }

    /// Where each sequence starts among the packed rows, and the total: `[0, l0, l0+l1, ...]`.
    pub fn cu_seq_lengths(&self) -> Vec<usize> {
        std::iter::once(0)
            .chain(self.lengths.iter().scan(0, |sum, &l| {
                *sum += l;
                Some(*sum)
            }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_padding_keeps_lengths_and_offsets() {
        let batch = PackedBatch::right_padded(&[&[5, 6, 7], &[8]], 0, &Device::Cpu).unwrap();
        assert_eq!(batch.ids().to_vec2::<u32>().unwrap(), [[5, 6, 7], [8, 0, 0]]);
        assert_eq!(batch.mask().to_vec2::<u32>().unwrap(), [[1, 1, 1], [1, 0, 0]]);
        assert_eq!(batch.lengths(), [3, 1]);
        assert_eq!(batch.cu_seq_lengths(), [0, 3, 4]);
        assert!(batch.is_right_padded());
    }

    #[test]
    fn segments_are_padded_like_the_ids_and_must_match_them() {
        let batch = PackedBatch::right_padded(&[&[5, 6, 7], &[8]], 0, &Device::Cpu).unwrap();
        let paired = batch.clone().with_segments(&[&[0, 0, 1], &[0]]).unwrap();
        assert_eq!(paired.segments().unwrap().to_vec2::<u32>().unwrap(), [[0, 0, 1], [0, 0, 0]]);
        assert!(batch.with_segments(&[&[0, 0], &[0]]).is_err());
    }

    #[test]
    fn a_mask_with_left_padding_is_counted_and_not_right_padded() {
        let ids = Tensor::new(&[[0u32, 0, 4], [1, 2, 3]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[0u32, 0, 1], [1, 1, 1]], &Device::Cpu).unwrap();
        let batch = PackedBatch::from_mask(ids, mask).unwrap();
        assert_eq!(batch.lengths(), [1, 3]);
        assert!(!batch.is_right_padded());
    }
}
