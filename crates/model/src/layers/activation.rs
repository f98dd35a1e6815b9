//! Keras' `Activation(name)`: an activation on its own, as after a BatchNormalization.

use candle_core::{Tensor, Var};

use super::{Activation, FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivationConfig {
    pub activation: Activation,
}

impl Layer for ActivationConfig {
    fn class_name(&self) -> &'static str {
        "Activation"
    }

    fn name_stem(&self) -> &'static str {
        "activation"
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        Ok(*input)
    }

    fn forward(&self, x: &Tensor, _: &[Var], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        self.activation.apply(x.clone(), ctx.skip_softmax)
    }
}
