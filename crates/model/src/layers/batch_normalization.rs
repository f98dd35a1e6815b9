//! Keras' `BatchNormalization` over the channels (the last axis in Keras). In inference:
//! `(x - moving_mean) / sqrt(moving_variance + epsilon) · gamma + beta`. In training: the
//! batch's mean and (biased) variance over every axis but the channels instead, and the moving
//! statistics follow Keras' rule, `moving = momentum · moving + (1 - momentum) · batch`.
//! `center = false` leaves out beta, `scale = false` gamma, as in Keras.

use candle_core::{Tensor, Var};

use super::{channel_dims, FeatureShape, ForwardCtx, Init, Layer, WeightRole, WeightSpec};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    pub epsilon: f32,
    pub momentum: f32,
    pub center: bool,
    pub scale: bool,
}

impl Default for BatchNormConfig {
    /// Keras' defaults.
    fn default() -> Self {
        Self {
            epsilon: 1e-3,
            momentum: 0.99,
            center: true,
            scale: true,
        }
    }
}

impl BatchNormConfig {
    fn roles(&self) -> Vec<(WeightRole, Init)> {
        let mut roles = Vec::new();
        if self.scale {
            roles.push((WeightRole::Gamma, Init::Ones));
        }
        if self.center {
            roles.push((WeightRole::Beta, Init::Zeros));
        }
        roles.push((WeightRole::MovingMean, Init::Zeros));
        roles.push((WeightRole::MovingVariance, Init::Ones));
        roles
    }
}

impl Layer for BatchNormConfig {
    fn class_name(&self) -> &'static str {
        "BatchNormalization"
    }

    fn name_stem(&self) -> &'static str {
        "batch_normalization"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.epsilon.is_nan() || self.epsilon <= 0.0 {
            return Err(format!("epsilon {} must be positive", self.epsilon));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(format!("momentum {} is not in [0, 1]", self.momentum));
        }
        Ok(())
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        Ok(*input)
    }

    fn weights(&self, input: &FeatureShape) -> Vec<WeightSpec> {
        let c = input.channels();
        self.roles()
            .into_iter()
            .map(|(role, init)| WeightSpec::new(role, vec![c], init))
            .collect()
    }

    fn forward(&self, x: &Tensor, w: &[Var], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let shape = channel_dims(x)?;
        let roles = self.roles();
        let weight = |role: WeightRole| -> Option<Result<Tensor>> {
            let i = roles.iter().position(|(r, _)| *r == role)?;
            Some(
                w[i].as_tensor()
                    .reshape(shape.as_slice())
                    .map_err(Into::into),
            )
        };
        let (moving_mean, moving_var) = (&w[roles.len() - 2], &w[roles.len() - 1]);
        let (mean, var) = if ctx.is_training() {
            // Statistics over every axis but the channels (axis 1 here): (N, H, W) or (N).
            let axes: Vec<usize> = (0..x.rank()).filter(|&a| a != 1).collect();
            let mean = x.mean_keepdim(axes.as_slice())?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(axes.as_slice())?;
            let m = self.momentum as f64;
            for (moving, batch) in [(moving_mean, &mean), (moving_var, &var)] {
                let batch = batch.detach().flatten_all()?;
                let updated = (moving.as_tensor().affine(m, 0.0)? + batch.affine(1.0 - m, 0.0)?)?;
                moving.set(&updated)?;
            }
            (mean, var)
        } else {
            let mean = moving_mean.as_tensor().reshape(shape.as_slice())?;
            let var = moving_var.as_tensor().reshape(shape.as_slice())?;
            (mean, var)
        };
        let mut y = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + self.epsilon as f64)?.sqrt()?)?;
        if let Some(gamma) = weight(WeightRole::Gamma) {
            y = y.broadcast_mul(&gamma?)?;
        }
        if let Some(beta) = weight(WeightRole::Beta) {
            y = y.broadcast_add(&beta?)?;
        }
        Ok(y)
    }
}
