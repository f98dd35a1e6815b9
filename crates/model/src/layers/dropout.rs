//! Keras' `Dropout`: in training, each value is zeroed with probability `rate` and the rest
//! scaled by `1 / (1 - rate)`; in inference, nothing.

use candle_core::{Tensor, Var};

use super::{FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutConfig {
    pub rate: f32,
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
                let mask = rng.mask(x.elem_count(), self.rate);
                let mask = Tensor::from_vec(mask, x.dims(), x.device())?;
                Ok((x * mask)?)
            }
            _ => Ok(x.clone()),
        }
    }
}
