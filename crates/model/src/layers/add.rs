//! Keras' `Add`: the element-wise sum of its inputs (ResNet's shortcut joins), in the order it
//! takes them; shapes must match or broadcast (a 1x1 image against a larger one), as Keras 3's.

use candle_core::{Tensor, Var};

use super::{broadcast_shapes, FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Add;

impl Layer for Add {
    fn class_name(&self) -> &'static str {
        "Add"
    }

    fn name_stem(&self) -> &'static str {
        "add"
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        self.output_shape_of(std::slice::from_ref(input))
    }

    fn output_shape_of(
        &self,
        inputs: &[FeatureShape],
    ) -> std::result::Result<FeatureShape, String> {
        broadcast_shapes("add", inputs)
    }

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        Ok(x.clone())
    }

    fn forward_all(&self, xs: &[Tensor], _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let mut sum = xs[0].clone();
        for x in &xs[1..] {
            sum = sum.broadcast_add(x)?;
        }
        Ok(sum)
    }
}
