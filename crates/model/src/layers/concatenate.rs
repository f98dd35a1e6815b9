//! Keras' `Concatenate(axis=-1)`: inputs joined along the channels (DenseNet's dense blocks,
//! Inception's branches); every other dimension must match. Other axes are refused.

use candle_core::{Tensor, Var};

use super::{FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concatenate;

impl Layer for Concatenate {
    fn class_name(&self) -> &'static str {
        "Concatenate"
    }

    fn name_stem(&self) -> &'static str {
        "concatenate"
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        self.output_shape_of(std::slice::from_ref(input))
    }

    fn output_shape_of(
        &self,
        inputs: &[FeatureShape],
    ) -> std::result::Result<FeatureShape, String> {
        let spatial = |s: &FeatureShape| match *s {
            FeatureShape::Image { height, width, .. } => Some((height, width)),
            FeatureShape::Flat(_) => None,
        };
        let first = inputs.first().ok_or("takes no input")?;
        if let Some(other) = inputs.iter().find(|s| spatial(s) != spatial(first)) {
            return Err(format!(
                "cannot concatenate {first} and {other} along the channels"
            ));
        }
        let channels = inputs.iter().map(FeatureShape::channels).sum();
        Ok(match spatial(first) {
            Some((h, w)) => FeatureShape::image(channels, h, w),
            None => FeatureShape::Flat(channels),
        })
    }

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        Ok(x.clone())
    }

    fn forward_all(&self, xs: &[Tensor], _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        // Channels are dimension 1 in NCHW and NF alike.
        Ok(Tensor::cat(xs, 1)?)
    }
}
