//! Keras' `LayerNormalization(axis=-1)`: each example's channels at each position normalised
//! by their own mean and (biased) variance, `(x - mean) / sqrt(variance + epsilon) · gamma +
//! beta` (ConvNeXt's). Only the channel axis; Keras' `rms_scaling` is refused where files are
//! read.

use candle_core::{Tensor, Var};

use super::{channel_dims, FeatureShape, ForwardCtx, Init, Layer, WeightRole, WeightSpec};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNormConfig {
    pub epsilon: f32,
    pub center: bool,
    pub scale: bool,
}

impl Layer for LayerNormConfig {
    fn class_name(&self) -> &'static str {
        "LayerNormalization"
    }

    fn name_stem(&self) -> &'static str {
        "layer_normalization"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match self.epsilon.is_finite() && self.epsilon >= 0.0 {
            true => Ok(()),
            false => Err(format!(
                "epsilon {} is not a non-negative number",
                self.epsilon
            )),
        }
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        Ok(*input)
    }

    fn weights(&self, input: &FeatureShape) -> Vec<WeightSpec> {
        let c = input.channels();
        let mut w = Vec::new();
        if self.scale {
            w.push(WeightSpec::new(WeightRole::Gamma, vec![c], Init::Ones));
        }
        if self.center {
            w.push(WeightSpec::new(WeightRole::Beta, vec![c], Init::Zeros));
        }
        w
    }

    fn forward(&self, x: &Tensor, w: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        // The channels are dimension 1 in NCHW and NF alike.
        let mean = x.mean_keepdim(1)?;
        let centred = x.broadcast_sub(&mean)?;
        let variance = centred.sqr()?.mean_keepdim(1)?;
        let mut y = centred.broadcast_div(&(variance + self.epsilon as f64)?.sqrt()?)?;
        let shape = channel_dims(x)?;
        let mut weights = w.iter();
        if self.scale {
            let gamma = weights.next().expect("gamma").as_tensor();
            y = y.broadcast_mul(&gamma.reshape(shape.as_slice())?)?;
        }
        if self.center {
            let beta = weights.next().expect("beta").as_tensor();
            y = y.broadcast_add(&beta.reshape(shape.as_slice())?)?;
        }
        Ok(y)
    }
}
