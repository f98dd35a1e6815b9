//! Keras' `Dropout`: in training, each value is zeroed with probability `rate` and the rest
//! scaled by `1 / (1 - rate)`; in inference, nothing. With Keras' `noise_shape=(None, 1, 1,
//! 1)` (EfficientNet's stochastic depth) each example is kept or dropped whole.

use candle_core::{Tensor, Var};

use super::{FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutConfig {
    pub rate: f32,
    /// One draw per example (`noise_shape` 1 on every axis but the batch).
    pub per_example: bool,
}

impl DropoutConfig {
    /// The keep-mask for a batch of `dims`, drawn from `rng`.
    pub(crate) fn mask(&self, rng: &mut crate::model::TrainingPass, dims: &[usize]) -> Vec<f32> {
        let len: usize = dims.iter().product();
        let n = dims.first().copied().unwrap_or(1).max(1);
        let per = len / n;
        match self.per_example {
            true => rng
                .mask(n, 1, self.rate)
                .into_iter()
                .flat_map(|m| std::iter::repeat_n(m, per))
                .collect(),
            false => rng.mask(n, per, self.rate),
        }
    }
}

impl Layer for DropoutConfig {
    fn class_name(&self) -> &'static str {
        "Dropout"
    }

    fn name_stem(&self) -> &'static str {
        "dropout"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match (0.0..1.0).contains(&self.rate) {
            true => Ok(()),
            false => Err(format!("dropout rate {} is not in [0, 1)", self.rate)),
        }
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        Ok(*input)
    }

    fn forward(&self, x: &Tensor, _: &[Var], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        match ctx.training.as_deref_mut() {
            Some(rng) if self.rate > 0.0 => {
                let mask = self.mask(rng, x.dims());
                let mask = Tensor::from_vec(mask, x.dims(), x.device())?;
                Ok((x * mask)?)
            }
            _ => Ok(x.clone()),
        }
    }
}
