//! Keras' `Cropping2D(cropping)`: rows off the top and bottom, columns off the left and right
//! (NASNet aligns its branches with it).

use candle_core::{Tensor, Var};

use super::{cannot_take, FeatureShape, ForwardCtx, Layer, Padding2d};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cropping2D {
    /// `((top, bottom), (left, right))`, as Keras' config holds it.
    pub cropping: Padding2d,
}

impl Layer for Cropping2D {
    fn class_name(&self) -> &'static str {
        "Cropping2D"
    }

    fn name_stem(&self) -> &'static str {
        "cropping2d"
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        let ((top, bottom), (left, right)) = self.cropping;
        match *input {
            FeatureShape::Image {
                channels,
                height,
                width,
            } if top + bottom < height && left + right < width => Ok(FeatureShape::image(
                channels,
                height - top - bottom,
                width - left - right,
            )),
            FeatureShape::Image { .. } => Err(format!(
                "cropping {:?} leaves nothing of {input}",
                self.cropping
            )),
            _ => Err(cannot_take(self.class_name(), input)),
        }
    }

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let ((top, bottom), (left, right)) = self.cropping;
        let (_, _, h, w) = x.dims4()?;
        Ok(x.narrow(2, top, h - top - bottom)?
            .narrow(3, left, w - left - right)?)
    }
}
