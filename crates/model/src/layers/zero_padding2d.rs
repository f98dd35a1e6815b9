//! Keras' `ZeroPadding2D(padding)`: rows of zeros above and below, columns left and right
//! (ResNet's stem pads 3 before its 7x7 stride-2 convolution).

use candle_core::{Tensor, Var};

use super::{cannot_take, FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

/// `((top, bottom), (left, right))`, as Keras' config holds it.
pub type Padding2d = ((usize, usize), (usize, usize));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroPadding2D {
    pub padding: Padding2d,
}

impl Layer for ZeroPadding2D {
    fn class_name(&self) -> &'static str {
        "ZeroPadding2D"
    }

    fn name_stem(&self) -> &'static str {
        "zero_padding2d"
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        let ((top, bottom), (left, right)) = self.padding;
        match *input {
            FeatureShape::Image {
                channels,
                height,
                width,
            } => Ok(FeatureShape::image(
                channels,
                height + top + bottom,
                width + left + right,
            )),
            _ => Err(cannot_take(self.class_name(), input)),
        }
    }

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let ((top, bottom), (left, right)) = self.padding;
        Ok(x.pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, left, right)?)
    }
}
