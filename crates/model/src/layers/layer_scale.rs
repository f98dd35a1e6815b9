//! ConvNeXt's `LayerScale` (Keras' `keras.src.applications.convnext.LayerScale`): each channel
//! multiplied by a trained factor `gamma`, which starts at `init_values` (1e-6 in ConvNeXt).

use candle_core::{Tensor, Var};

use super::{channel_dims, FeatureShape, ForwardCtx, Init, Layer, WeightRole, WeightSpec};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerScale {
    pub init_values: f32,
    pub projection_dim: usize,
}

impl Layer for LayerScale {
    fn class_name(&self) -> &'static str {
        "LayerScale"
    }

    fn name_stem(&self) -> &'static str {
        "layer_scale"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match self.init_values.is_finite() {
            true => Ok(()),
            false => Err(format!("init_values {} is not finite", self.init_values)),
        }
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        match input.channels() == self.projection_dim {
            true => Ok(*input),
            false => Err(format!(
                "projection_dim {} does not match the input's {} channels",
                self.projection_dim,
                input.channels()
            )),
        }
    }

    fn weights(&self, _input: &FeatureShape) -> Vec<WeightSpec> {
        vec![WeightSpec::new(
            WeightRole::Gamma,
            vec![self.projection_dim],
            Init::constant(self.init_values),
        )]
    }

    fn forward(&self, x: &Tensor, w: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let gamma = w[0].as_tensor().reshape(channel_dims(x)?.as_slice())?;
        Ok(x.broadcast_mul(&gamma)?)
    }
}
