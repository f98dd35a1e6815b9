//! Keras' `BatchNormalization` over the channels (the last axis in Keras), inference only:
//! `(x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta`.

use candle_core::Tensor;

use super::{channel_dims, FeatureShape, ForwardCtx, Init, Layer, WeightRole, WeightSpec};
use crate::error::{ModelError, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    pub epsilon: f32,
    pub momentum: f32,
}

impl Default for BatchNormConfig {
    /// Keras' defaults.
    fn default() -> Self {
        Self {
            epsilon: 1e-3,
            momentum: 0.99,
        }
    }
}

impl Layer for BatchNormConfig {
    fn class_name(&self) -> &'static str {
        "BatchNormalization"
    }

    fn name_stem(&self) -> &'static str {
        "batch_normalization"
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        Ok(*input)
    }

    fn weights(&self, input: &FeatureShape) -> Vec<WeightSpec> {
        let c = input.channels();
        [
            (WeightRole::Gamma, Init::Ones),
            (WeightRole::Beta, Init::Zeros),
            (WeightRole::MovingMean, Init::Zeros),
            (WeightRole::MovingVariance, Init::Ones),
        ]
        .into_iter()
        .map(|(role, init)| WeightSpec::new(role, vec![c], init))
        .collect()
    }

    fn forward(&self, x: &Tensor, w: &[Tensor], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        if ctx.is_training() {
            return Err(ModelError::Config(
                "BatchNormalization runs in inference only; training a model with it is not \
                 supported yet"
                    .into(),
            ));
        }
        let shape = channel_dims(x)?;
        let p = |i: usize| w[i].reshape(shape.as_slice());
        let (gamma, beta, mean, var) = (p(0)?, p(1)?, p(2)?, p(3)?);
        let scale = gamma.broadcast_div(&(var + self.epsilon as f64)?.sqrt()?)?;
        Ok(x.broadcast_sub(&mean)?
            .broadcast_mul(&scale)?
            .broadcast_add(&beta)?)
    }
}
