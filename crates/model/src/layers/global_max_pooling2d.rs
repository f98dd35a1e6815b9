//! Keras' `GlobalMaxPooling2D`: each channel's maximum over the image, `(N, C, H, W) → (N, C)`.

use candle_core::{Tensor, Var};

use super::{cannot_take, FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalMaxPooling2D {
    /// Keras' `keepdims`: a `(1, 1, C)` image instead of `C` values (squeeze-and-excite).
    pub keepdims: bool,
}

impl Layer for GlobalMaxPooling2D {
    fn class_name(&self) -> &'static str {
        "GlobalMaxPooling2D"
    }

    fn name_stem(&self) -> &'static str {
        "global_max_pooling2d"
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        match input {
            FeatureShape::Image { channels, .. } if self.keepdims => {
                Ok(FeatureShape::image(*channels, 1, 1))
            }
            FeatureShape::Image { channels, .. } => Ok(FeatureShape::Flat(*channels)),
            _ => Err(cannot_take(self.class_name(), input)),
        }
    }

    /// candle's `max` sends the gradient to the maximum (to each, on ties).
    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let y = x.flatten_from(2)?.max(2)?;
        Ok(match self.keepdims {
            true => y.unsqueeze(2)?.unsqueeze(3)?,
            false => y,
        })
    }
}
