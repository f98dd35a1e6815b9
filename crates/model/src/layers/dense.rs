//! Keras' `Dense(units, activation)`; the kernel is `(in, units)` as in Keras. On an image it
//! works on the last axis, as Keras' does: every pixel's channels → `units` channels (ConvNeXt's
//! pointwise layers).

use candle_core::{Tensor, Var};

use super::{Activation, FeatureShape, ForwardCtx, Init, Layer, WeightRole, WeightSpec};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseConfig {
    pub units: usize,
    pub activation: Activation,
    /// Keras' `use_bias` (true by default).
    pub use_bias: bool,
    /// Keras' `kernel_initializer` (Glorot-uniform by default).
    pub kernel_initializer: Init,
}

impl DenseConfig {
    /// `Dense(units, activation)` with Keras' defaults for the rest.
    pub fn default_for(units: usize, activation: Activation) -> Self {
        Self {
            units,
            activation,
            use_bias: true,
            kernel_initializer: Init::GlorotUniform,
        }
    }
}

impl Layer for DenseConfig {
    fn forward_macs(&self, input: &FeatureShape, _output: &FeatureShape) -> u64 {
        (input.elem_count() * self.units) as u64
    }

    fn class_name(&self) -> &'static str {
        "Dense"
    }

    fn name_stem(&self) -> &'static str {
        "dense"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match self.units {
            0 => Err("units must be at least 1".into()),
            _ => Ok(()),
        }
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        match *input {
            FeatureShape::Flat(_) => Ok(FeatureShape::Flat(self.units)),
            FeatureShape::Image { height, width, .. } => {
                Ok(FeatureShape::image(self.units, height, width))
            }
        }
    }

    fn weights(&self, input: &FeatureShape) -> Vec<WeightSpec> {
        let n = input.channels();
        let mut w = vec![WeightSpec::new(
            WeightRole::Kernel,
            vec![n, self.units],
            self.kernel_initializer,
        )];
        if self.use_bias {
            w.push(WeightSpec::new(
                WeightRole::Bias,
                vec![self.units],
                Init::Zeros,
            ));
        }
        w
    }

    fn forward(&self, x: &Tensor, w: &[Var], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        // An image: its pixels as rows, channels last, and back to NCHW after.
        let image = match x.dims() {
            &[n, c, h, wd] => Some((n, c, h, wd)),
            _ => None,
        };
        let rows = match image {
            Some((n, c, h, wd)) => x.permute((0, 2, 3, 1))?.reshape((n * h * wd, c))?,
            None => x.clone(),
        };
        let y = rows.matmul(w[0].as_tensor())?;
        let y = match w.get(1) {
            Some(bias) => y.broadcast_add(bias.as_tensor())?,
            None => y,
        };
        let y = match image {
            Some((n, _, h, wd)) => y
                .reshape((n, h, wd, self.units))?
                .permute((0, 3, 1, 2))?
                .contiguous()?,
            None => y,
        };
        self.activation.apply(y, ctx.skip_softmax)
    }
}
