//! Keras' `AveragePooling2D(pool_size, strides, padding)`: `valid` (Keras' default) or `same`.

use std::ops::Deref;

use candle_core::{Tensor, Var};

use super::{FeatureShape, ForwardCtx, Layer, Padding, Pool2dConfig};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AveragePooling2D(pub Pool2dConfig);

impl Deref for AveragePooling2D {
    type Target = Pool2dConfig;
    fn deref(&self) -> &Pool2dConfig {
        &self.0
    }
}

impl Layer for AveragePooling2D {
    fn class_name(&self) -> &'static str {
        "AveragePooling2D"
    }

    fn name_stem(&self) -> &'static str {
        "average_pooling2d"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.0.validate()
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        self.0.output_shape(self.class_name(), input)
    }

    /// `same` padding divides by the positions inside the image only, as Keras does (NASNet
    /// relies on it): the mean over the padded window over the mean of a mask of ones.
    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        match self.padding {
            Padding::Valid => Ok(x.avg_pool2d_with_stride(self.pool_size, self.strides)?),
            Padding::Same => {
                let (xp, inside) = self.padded_with_mask(x)?;
                let sums = xp.avg_pool2d_with_stride(self.pool_size, self.strides)?;
                let counts = inside.avg_pool2d_with_stride(self.pool_size, self.strides)?;
                Ok((sums / counts)?)
            }
        }
    }
}
