//! Pooling token states into one vector per text, as sentence-transformers'
//! `Pooling` module does (several modes are concatenated in its order).

use candle_core::{DType, IndexOp, Tensor, D};
use serde::Deserialize;

use crate::error::{Error, Result};

/// One way of reducing `(batch, seq, hidden)` to `(batch, hidden)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's state.
    Cls,
    /// Element-wise maximum over real tokens.
    Max,
    /// Mean over real tokens.
    Mean,
    /// Sum over real tokens divided by the square root of their count.
    MeanSqrtLen,
    /// The last real token's state (decoder models).
    LastToken,
}

/// `1_Pooling/config.json`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct PoolingConfig {
    #[serde(default)]
    pub pooling_mode_cls_token: bool,
    #[serde(default)]
    pub pooling_mode_max_tokens: bool,
    #[serde(default)]
    pub pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pub pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_lasttoken: bool,
    /// The newer form (sentence-transformers 6): one mode name or a list, in
    /// concatenation order; when present it replaces the boolean keys.
    #[serde(default)]
    pub pooling_mode: Option<ModeNames>,
}

/// `pooling_mode` as written by newer sentence-transformers: a name or a list of names.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModeNames {
    One(String),
    Many(Vec<String>),
}

impl ModeNames {
    fn names(&self) -> &[String] {
        match self {
            Self::One(name) => std::slice::from_ref(name),
            Self::Many(names) => names,
        }
    }
}

/// A mode by its sentence-transformers name.
fn mode_named(name: &str) -> Result<PoolingMode> {
    Ok(match name {
        "cls" => PoolingMode::Cls,
        "max" => PoolingMode::Max,
        "mean" => PoolingMode::Mean,
        "mean_sqrt_len_tokens" => PoolingMode::MeanSqrtLen,
        "lasttoken" => PoolingMode::LastToken,
        other => return Err(Error::Unsupported(format!("pooling mode {other}"))),
    })
}

/// The configured pooling modes, in sentence-transformers' concatenation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooling {
    modes: Vec<PoolingMode>,
}

impl Pooling {
    /// A single mode.
    pub fn new(mode: PoolingMode) -> Self {
        Self { modes: vec![mode] }
    }

    /// Reads the modes switched on in a pooling config.
    pub fn from_config(cfg: &PoolingConfig) -> Result<Self> {
        if let Some(names) = &cfg.pooling_mode {
            let modes = names.names().iter().map(|n| mode_named(n)).collect::<Result<Vec<_>>>()?;
            if modes.is_empty() {
                return Err(Error::Unsupported("pooling config enables no mode".into()));
            }
            return Ok(Self { modes });
        }
        if cfg.pooling_mode_weightedmean_tokens {
            return Err(Error::Unsupported("pooling mode weightedmean".into()));
        }
        let flags = [
            (cfg.pooling_mode_cls_token, PoolingMode::Cls),
            (cfg.pooling_mode_max_tokens, PoolingMode::Max),
            (cfg.pooling_mode_mean_tokens, PoolingMode::Mean),
            (cfg.pooling_mode_mean_sqrt_len_tokens, PoolingMode::MeanSqrtLen),
            (cfg.pooling_mode_lasttoken, PoolingMode::LastToken),
        ];
        let modes: Vec<_> = flags.iter().filter(|(on, _)| *on).map(|(_, m)| *m).collect();
        if modes.is_empty() {
            return Err(Error::Unsupported("pooling config enables no mode".into()));
        }
        Ok(Self { modes })
    }

    /// The modes in use.
    pub fn modes(&self) -> &[PoolingMode] {
        &self.modes
    }

    /// Output width for token states of width `hidden`.
    pub fn output_dim(&self, hidden: usize) -> usize {
        hidden * self.modes.len()
    }

    /// `(batch, seq, hidden)` states and `(batch, seq)` mask -> `(batch, hidden * modes)`.
    pub fn forward(&self, states: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mask = mask.to_dtype(DType::F32)?;
        let pooled =
            self.modes.iter().map(|m| pool(*m, states, &mask)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&pooled, D::Minus1)?)
    }
}

fn pool(mode: PoolingMode, states: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let counts = mask.sum_keepdim(1)?; // (b, 1)
    Ok(match mode {
        PoolingMode::Cls => states.i((.., 0))?,
        PoolingMode::Mean => {
            masked_sum(states, mask)?.broadcast_div(&counts.clamp(1e-9, f64::MAX)?)?
        }
        PoolingMode::MeanSqrtLen => masked_sum(states, mask)?.broadcast_div(&counts.sqrt()?)?,
        PoolingMode::Max => {
            // Padding positions get -1e9 so they never win the maximum.
            let penalty = ((mask.unsqueeze(D::Minus1)? - 1.0)? * 1e9)?; // (b, s, 1)
            states.broadcast_add(&penalty)?.max(1)?
        }
        PoolingMode::LastToken => {
            // The last real position, wherever the padding is (left or right).
            let (b, s, h) = states.dims3()?;
            let positions = Tensor::arange(0f32, s as f32, states.device())?.unsqueeze(0)?; // (1, s)
            let last = positions.broadcast_mul(mask)?.max_keepdim(1)?.to_dtype(DType::U32)?; // (b, 1)
            let index = last.unsqueeze(2)?.broadcast_as((b, 1, h))?.contiguous()?;
            states.gather(&index, 1)?.squeeze(1)?
        }
    })
}

/// Sum over the real tokens, `(batch, seq, hidden)` -> `(batch, hidden)`, as a batched
/// `(1, seq) x (seq, hidden)` product: one GEMM call instead of a strided reduction.
fn masked_sum(states: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let weights = mask.to_dtype(states.dtype())?.unsqueeze(1)?; // (b, 1, s)
    Ok(weights.matmul(&states.contiguous()?)?.squeeze(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn batch() -> (Tensor, Tensor) {
        // Two rows; the second has one padding position holding a huge value.
        let states = Tensor::new(
            &[[[1f32, 2.], [3., 4.], [5., -6.]], [[-1., 0.], [2., 8.], [100., 100.]]],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &Device::Cpu).unwrap();
        (states, mask)
    }

    fn run(mode: PoolingMode) -> Vec<Vec<f32>> {
        let (s, m) = batch();
        Pooling::new(mode).forward(&s, &m).unwrap().to_vec2().unwrap()
    }

    #[test]
    fn each_mode_ignores_padding() {
        assert_eq!(run(PoolingMode::Cls), vec![vec![1., 2.], vec![-1., 0.]]);
        assert_eq!(run(PoolingMode::Mean), vec![vec![3., 0.], vec![0.5, 4.]]);
        assert_eq!(run(PoolingMode::Max), vec![vec![5., 4.], vec![2., 8.]]);
        assert_eq!(run(PoolingMode::LastToken), vec![vec![5., -6.], vec![2., 8.]]);
        let sqrt = run(PoolingMode::MeanSqrtLen);
        assert!((sqrt[1][1] - 8.0 / 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn last_token_finds_the_last_real_position_under_left_padding() {
        let states = Tensor::new(
            &[[[100f32, 100.], [3., 4.], [5., -6.]], [[-1., 0.], [2., 8.], [100., 100.]]],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[0u32, 1, 1], [1, 1, 0]], &Device::Cpu).unwrap();
        let pooled: Vec<Vec<f32>> = Pooling::new(PoolingMode::LastToken)
            .forward(&states, &mask)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(pooled, vec![vec![5., -6.], vec![2., 8.]]);
    }

    #[test]
    fn several_modes_concatenate_in_reference_order() {
        let cfg = PoolingConfig {
            pooling_mode_mean_tokens: true,
            pooling_mode_cls_token: true,
            ..Default::default()
        };
        let pooling = Pooling::from_config(&cfg).unwrap();
        assert_eq!(pooling.modes(), &[PoolingMode::Cls, PoolingMode::Mean]);
        let (s, m) = batch();
        let out: Vec<Vec<f32>> = pooling.forward(&s, &m).unwrap().to_vec2().unwrap();
        assert_eq!(out[1], vec![-1., 0., 0.5, 4.]);
    }

    #[test]
    fn a_config_with_no_mode_is_refused() {
        assert!(Pooling::from_config(&PoolingConfig::default()).is_err());
    }

    #[test]
    fn the_newer_pooling_mode_key_names_modes_in_order() {
        let parse = |json: &str| {
            Pooling::from_config(&serde_json::from_str::<PoolingConfig>(json).unwrap())
        };
        let one = parse(
            r#"{"embedding_dimension": 384, "pooling_mode": "mean", "include_prompt": true}"#,
        )
        .unwrap();
        assert_eq!(one.modes(), &[PoolingMode::Mean]);
        let two =
            parse(r#"{"pooling_mode": ["max", "cls"], "pooling_mode_mean_tokens": true}"#).unwrap();
        assert_eq!(
            two.modes(),
            &[PoolingMode::Max, PoolingMode::Cls],
            "the list wins over the old keys, in its order"
        );
        assert!(parse(r#"{"pooling_mode": "weightedmean"}"#).is_err());
        assert!(parse(r#"{"pooling_mode": []}"#).is_err());
    }
}
