//! Keras' `AveragePooling2D(pool_size, strides, padding)`: `valid` (Keras' default) or `same`.

use std::ops::Deref;

use candle_core::{Tensor, Var};

use super::max_pooling2d::window_views;
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

impl AveragePooling2D {
    /// The mean over each window without padding. candle's `avg_pool2d` has no backward where
    /// windows overlap (Inception's 3x3 stride 1): there, the mean of the window's views.
    fn mean(&self, x: &Tensor) -> Result<Tensor> {
        if self.pool_size == self.strides {
            return Ok(x.avg_pool2d_with_stride(self.pool_size, self.strides)?);
        }
        let views = window_views(x, self.pool_size, self.strides)?;
        let count = views.len() as f64;
        let mut views = views.into_iter();
        let first = views.next().expect("a pool of at least 1x1");
        let sum = views.try_fold(first, |s, v| s + v)?;
        Ok((sum / count)?)
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
            Padding::Valid => self.mean(x),
            Padding::Same => {
                let (xp, inside) = self.padded_with_mask(x)?;
                Ok((self.mean(&xp)? / self.mean(&inside)?)?)
            }
        }
    }
}
