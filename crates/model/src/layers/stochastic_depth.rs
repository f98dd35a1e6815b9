//! ConvNeXt's `StochasticDepth(drop_path_rate)` (`keras.src.applications.convnext`): in
//! training each example's residual branch is dropped whole with probability
//! `drop_path_rate` and the rest scaled by `1 / (1 - rate)`; in inference, nothing — Keras'
//! `Dropout` with `noise_shape = (None, 1, 1, 1)`, whose masks it draws.

use candle_core::{Tensor, Var};

use super::{DropoutConfig, FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StochasticDepth {
    pub drop_path_rate: f32,
}

impl StochasticDepth {
    fn as_dropout(&self) -> DropoutConfig {
        DropoutConfig {
            rate: self.drop_path_rate,
            per_example: true,
        }
    }
}

impl Layer for StochasticDepth {
    fn class_name(&self) -> &'static str {
        "StochasticDepth"
    }

    fn name_stem(&self) -> &'static str {
        "stochastic_depth"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.as_dropout().validate()
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        Ok(*input)
    }

    fn forward(&self, x: &Tensor, w: &[Var], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        self.as_dropout().forward(x, w, ctx)
    }
}
