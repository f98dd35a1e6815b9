//! Keras' `MaxPooling2D(pool_size, strides)` with `valid` padding (Keras' default).

use std::ops::Deref;

use candle_core::{Tensor, Var};

use super::{cannot_take, FeatureShape, ForwardCtx, Layer, Padding};
use crate::error::Result;

/// A pooling window and its strides (Keras: the strides default to the pool size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dConfig {
    pub pool_size: (usize, usize),
    pub strides: (usize, usize),
}

impl Pool2dConfig {
    pub fn new(pool: usize) -> Self {
        Self {
            pool_size: (pool, pool),
            strides: (pool, pool),
        }
    }

    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let (p, s) = (self.pool_size, self.strides);
        if p.0 == 0 || p.1 == 0 || s.0 == 0 || s.1 == 0 {
            return Err(format!(
                "pool_size {p:?} and strides {s:?} must be at least 1"
            ));
        }
        Ok(())
    }

    pub(crate) fn output_shape(
        &self,
        class: &str,
        input: &FeatureShape,
    ) -> std::result::Result<FeatureShape, String> {
        let FeatureShape::Image {
            channels,
            height,
            width,
        } = *input
        else {
            return Err(cannot_take(class, input));
        };
        let h = Padding::Valid.output_len(height, self.pool_size.0, self.strides.0);
        let w = Padding::Valid.output_len(width, self.pool_size.1, self.strides.1);
        match (h, w) {
            (Some((h, _, _)), Some((w, _, _))) => Ok(FeatureShape::image(channels, h, w)),
            _ => Err(format!(
                "pool {:?} stride {:?} does not fit input {height}x{width}",
                self.pool_size, self.strides
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPooling2D(pub Pool2dConfig);

impl Deref for MaxPooling2D {
    type Target = Pool2dConfig;
    fn deref(&self) -> &Pool2dConfig {
        &self.0
    }
}

impl Layer for MaxPooling2D {
    fn class_name(&self) -> &'static str {
        "MaxPooling2D"
    }

    fn name_stem(&self) -> &'static str {
        "max_pooling2d"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.0.validate()
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        self.0.output_shape(self.class_name(), input)
    }

    /// candle 0.11.1's `max_pool2d` backward divides the gradient by the window size and
    /// misplaces it when the input is not a multiple of the pool (tests/cpu_ops.rs pins both).
    /// Windows that do not overlap are a crop to whole windows (Keras' "valid" pooling drops
    /// the rest), a reshape and two max reductions, whose backward sends the gradient to the
    /// maxima; overlapping windows keep candle's op.
    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let ((ph, pw), (sh, sw)) = (self.pool_size, self.strides);
        let (n, c, h, w) = x.dims4()?;
        if (ph, pw) != (sh, sw) {
            return Ok(x.max_pool2d_with_stride((ph, pw), (sh, sw))?);
        }
        let (oh, ow) = (h / ph, w / pw);
        Ok(x.narrow(2, 0, oh * ph)?
            .narrow(3, 0, ow * pw)?
            .reshape((n, c, oh, ph, ow, pw))?
            .max(5)?
            .max(3)?)
    }
}
