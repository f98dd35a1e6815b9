//! Keras' `Normalization(axis=-1)` with its statistics as weights (EfficientNet's input
//! layer): `(x - mean) / max(sqrt(variance), 1e-7)` per channel, Keras' inference formula, or
//! with `invert` the way back, `mean + x · max(sqrt(variance), 1e-7)`. The statistics are
//! Keras' weights `mean`, `variance` and `count` (the examples `adapt` saw), none trained, or
//! given in the config (EfficientNetV2's ImageNet mean and variance): then it has no weights.

use candle_core::{Tensor, Var};

use super::{channel_dims, FeatureShape, ForwardCtx, Init, Layer, WeightRole, WeightSpec};
use crate::error::Result;

/// Keras' `backend.epsilon()`.
pub const EPSILON: f64 = 1e-7;

#[derive(Clone, Debug, PartialEq)]
pub struct NormalizationConfig {
    pub invert: bool,
    /// `(mean, variance)` from the config: one value each, or one per channel.
    pub fixed: Option<(Vec<f32>, Vec<f32>)>,
}

impl Layer for NormalizationConfig {
    fn class_name(&self) -> &'static str {
        "Normalization"
    }

    fn name_stem(&self) -> &'static str {
        "normalization"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match &self.fixed {
            Some((mean, variance))
                if !mean.iter().chain(variance).all(|v| v.is_finite())
                    || variance.iter().any(|v| *v < 0.0) =>
            {
                Err("mean and variance must be finite, the variance not negative".into())
            }
            _ => Ok(()),
        }
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        let c = input.channels();
        match &self.fixed {
            Some((m, v)) if ![1, c].contains(&m.len()) || ![1, c].contains(&v.len()) => {
                Err(format!(
                    "{} means and {} variances for {c} channels",
                    m.len(),
                    v.len()
                ))
            }
            _ => Ok(*input),
        }
    }

    fn weights(&self, input: &FeatureShape) -> Vec<WeightSpec> {
        if self.fixed.is_some() {
            return Vec::new();
        }
        let c = input.channels();
        vec![
            WeightSpec::new(WeightRole::Mean, vec![c], Init::Zeros),
            WeightSpec::new(WeightRole::Variance, vec![c], Init::Ones),
            WeightSpec::new(WeightRole::Count, vec![], Init::Zeros),
        ]
    }

    fn forward(&self, x: &Tensor, w: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let mut shape = channel_dims(x)?;
        let (mean, variance) = match &self.fixed {
            Some((mean, variance)) => {
                let c = mean.len().max(variance.len());
                shape[1] = c;
                let full = |v: &[f32]| -> Result<Tensor> {
                    let values = match v.len() {
                        1 => vec![v[0]; c],
                        _ => v.to_vec(),
                    };
                    Ok(Tensor::from_vec(values, c, x.device())?)
                };
                (full(mean)?, full(variance)?)
            }
            None => (w[0].as_tensor().detach(), w[1].as_tensor().detach()),
        };
        let mean = mean.reshape(shape.as_slice())?;
        let scale = variance
            .sqrt()?
            .maximum(EPSILON as f32)?
            .reshape(shape.as_slice())?;
        Ok(match self.invert {
            false => x.broadcast_sub(&mean)?.broadcast_div(&scale)?,
            true => x.broadcast_mul(&scale)?.broadcast_add(&mean)?,
        })
    }
}
