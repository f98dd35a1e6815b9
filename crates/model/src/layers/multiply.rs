//! Keras' `Multiply`: the element-wise product of its inputs (squeeze-and-excite's gate, a
//! `(1, 1, C)` image against the features), broadcasting as Keras 3 does.

use candle_core::{Tensor, Var};

use super::{broadcast_shapes, FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Multiply;

impl Layer for Multiply {
    fn class_name(&self) -> &'static str {
        "Multiply"
    }

    fn name_stem(&self) -> &'static str {
        "multiply"
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        self.output_shape_of(std::slice::from_ref(input))
    }

    fn output_shape_of(
        &self,
        inputs: &[FeatureShape],
    ) -> std::result::Result<FeatureShape, String> {
        broadcast_shapes("multiply", inputs)
    }

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        Ok(x.clone())
    }

    fn forward_all(&self, xs: &[Tensor], _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let mut product = xs[0].clone();
        for x in &xs[1..] {
            product = product.broadcast_mul(x)?;
        }
        Ok(product)
    }
}
