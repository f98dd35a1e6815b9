//! Keras' `Dense(units, activation)` on flat inputs; the kernel is `(in, units)` as in Keras.

use candle_core::{Tensor, Var};

use super::{
    cannot_take, Activation, FeatureShape, ForwardCtx, Init, Layer, WeightRole, WeightSpec,
};
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
        match input {
            FeatureShape::Flat(_) => Ok(FeatureShape::Flat(self.units)),
            _ => Err(cannot_take(self.class_name(), input)),
        }
    }

    fn weights(&self, input: &FeatureShape) -> Vec<WeightSpec> {
        let n = input.elem_count();
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
        let y = x.matmul(w[0].as_tensor())?;
        let y = match w.get(1) {
            Some(bias) => y.broadcast_add(bias.as_tensor())?,
            None => y,
        };
        self.activation.apply(y, ctx.skip_softmax)
    }
}
