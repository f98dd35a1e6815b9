//! Keras' `InputLayer`: names the input; computes nothing.

use candle_core::{Tensor, Var};

use super::{FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLayer;

impl Layer for InputLayer {
    fn class_name(&self) -> &'static str {
        "InputLayer"
    }

    fn name_stem(&self) -> &'static str {
        "input"
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        Ok(*input)
    }

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        Ok(x.clone())
    }
}
