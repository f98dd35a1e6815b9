//! Keras' `Rescaling(scale, offset)`: `x · scale + offset`. Each is one number or one per
//! channel (Keras broadcasts a list over the last axis, the channels), so a model can take
//! pixels in `[0, 1]` and normalise them itself: scale `1/std`, offset `-mean/std`.

use candle_core::{Tensor, Var};

use super::{FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct RescalingConfig {
    pub scale: Vec<f32>,
    pub offset: Vec<f32>,
}

impl RescalingConfig {
    /// The same scale and offset for every value.
    pub fn uniform(scale: f32, offset: f32) -> Self {
        Self {
            scale: vec![scale],
            offset: vec![offset],
        }
    }

    /// `(x - mean) / std` per channel.
    pub fn normalize(mean: &[f32], std: &[f32]) -> Self {
        Self {
            scale: std.iter().map(|s| 1.0 / s).collect(),
            offset: mean.iter().zip(std).map(|(m, s)| -m / s).collect(),
        }
    }
}

impl Layer for RescalingConfig {
    fn class_name(&self) -> &'static str {
        "Rescaling"
    }

    fn name_stem(&self) -> &'static str {
        "rescaling"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let finite = self.scale.iter().chain(&self.offset).all(|v| v.is_finite());
        match (self.scale.is_empty() || self.offset.is_empty(), finite) {
            (false, true) => Ok(()),
            _ => Err("scale and offset must be finite numbers".into()),
        }
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        let c = input.channels();
        for (name, v) in [("scale", &self.scale), ("offset", &self.offset)] {
            if v.len() != 1 && v.len() != c {
                return Err(format!(
                    "{name} has {} values for {c} channels (give 1 or {c})",
                    v.len()
                ));
            }
        }
        Ok(*input)
    }

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let per_channel = |v: &[f32]| -> Result<Tensor> {
            let mut shape = vec![1; x.rank()];
            shape[1] = v.len();
            Ok(Tensor::from_slice(v, shape.as_slice(), x.device())?.to_dtype(x.dtype())?)
        };
        Ok(x.broadcast_mul(&per_channel(&self.scale)?)?
            .broadcast_add(&per_channel(&self.offset)?)?)
    }
}
