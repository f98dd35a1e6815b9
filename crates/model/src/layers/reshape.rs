//! Keras' `Reshape(target_shape)`: the values of each example, in Keras' channels-last order,
//! laid out as `target_shape` (`(1, 1, C)` ↔ `(C,)` in MobileNet's and EfficientNet's heads).
//! Images are NCHW here, so the values go through NHWC order and back.

use candle_core::{Tensor, Var};

use super::{FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reshape {
    /// The target as this workbench holds shapes (an image or a vector).
    pub target: FeatureShape,
}

/// `(N, C, H, W)` → `(N, H, W, C)` for images; vectors stay.
fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    Ok(match x.rank() {
        4 => x.permute((0, 2, 3, 1))?,
        _ => x.clone(),
    })
}

impl Layer for Reshape {
    fn class_name(&self) -> &'static str {
        "Reshape"
    }

    fn name_stem(&self) -> &'static str {
        "reshape"
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        match input.elem_count() == self.target.elem_count() {
            true => Ok(self.target),
            false => Err(format!(
                "cannot reshape {input} ({} values) to {} ({} values)",
                input.elem_count(),
                self.target,
                self.target.elem_count()
            )),
        }
    }

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let n = x.dim(0)?;
        let flat = to_channels_last(x)?.contiguous()?.reshape((n, ()))?;
        Ok(match self.target {
            FeatureShape::Image {
                channels,
                height,
                width,
            } => flat
                .reshape((n, height, width, channels))?
                .permute((0, 3, 1, 2))?
                .contiguous()?,
            FeatureShape::Flat(_) => flat,
        })
    }
}
