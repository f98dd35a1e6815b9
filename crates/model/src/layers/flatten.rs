//! Keras' `Flatten`: an image becomes a flat vector (here in NCHW order; `store` permutes the
//! next Dense kernel's rows to and from Keras' NHWC order).

use candle_core::{Tensor, Var};

use super::{FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flatten;

impl Layer for Flatten {
    fn class_name(&self) -> &'static str {
        "Flatten"
    }

    fn name_stem(&self) -> &'static str {
        "flatten"
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        Ok(FeatureShape::Flat(input.elem_count()))
    }

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        Ok(x.flatten_from(1)?)
    }
}
