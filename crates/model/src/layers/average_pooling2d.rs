//! Keras' `AveragePooling2D(pool_size, strides)` with `valid` padding (Keras' default).

use std::ops::Deref;

use candle_core::{Tensor, Var};

use super::{FeatureShape, ForwardCtx, Layer, Pool2dConfig};
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

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        Ok(x.avg_pool2d_with_stride(self.pool_size, self.strides)?)
    }
}
