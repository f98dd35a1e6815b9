//! Keras' `DepthwiseConv2D(kernel_size, strides, padding, depth_multiplier)`: each input
//! channel convolved with its own `depth_multiplier` filters (MobileNet's, EfficientNet's),
//! output channel `c · multiplier + m`. The kernel is held `(in · multiplier, 1, kh, kw)`,
//! candle's grouped-convolution layout; `store` maps it to Keras' `(kh, kw, in, multiplier)`.

use candle_core::{Tensor, Var};

use super::conv2d::padded_conv;
use super::{
    cannot_take, Activation, Conv2dConfig, FeatureShape, ForwardCtx, Init, Layer, Padding,
    WeightRole, WeightSpec,
};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepthwiseConv2dConfig {
    pub kernel_size: (usize, usize),
    pub strides: (usize, usize),
    pub padding: Padding,
    pub depth_multiplier: usize,
    pub activation: Activation,
    pub use_bias: bool,
    /// Keras' `depthwise_initializer` (Glorot-uniform by default).
    pub depthwise_initializer: Init,
}

impl DepthwiseConv2dConfig {
    /// The geometry as a convolution's (its filters do not matter here).
    pub fn as_conv(&self) -> Conv2dConfig {
        Conv2dConfig {
            filters: 1,
            kernel_size: self.kernel_size,
            strides: self.strides,
            padding: self.padding,
            activation: self.activation,
            use_bias: self.use_bias,
            kernel_initializer: self.depthwise_initializer,
            groups: 1,
        }
    }
}

impl Layer for DepthwiseConv2dConfig {
    fn forward_macs(&self, _input: &FeatureShape, output: &FeatureShape) -> u64 {
        let (kh, kw) = self.kernel_size;
        (output.elem_count() * kh * kw) as u64
    }

    fn class_name(&self) -> &'static str {
        "DepthwiseConv2D"
    }

    fn name_stem(&self) -> &'static str {
        "depthwise_conv2d"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.depth_multiplier == 0 {
            return Err("depth_multiplier must be at least 1".into());
        }
        self.as_conv().validate()
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        let FeatureShape::Image { channels, .. } = *input else {
            return Err(cannot_take(self.class_name(), input));
        };
        match self.as_conv().output_shape(input)? {
            FeatureShape::Image { height, width, .. } => Ok(FeatureShape::image(
                channels * self.depth_multiplier,
                height,
                width,
            )),
            flat => Ok(flat),
        }
    }

    fn weights(&self, input: &FeatureShape) -> Vec<WeightSpec> {
        let (kh, kw) = self.kernel_size;
        let out = input.channels() * self.depth_multiplier;
        let mut w = vec![WeightSpec::new(
            WeightRole::DepthwiseKernel,
            vec![out, 1, kh, kw],
            self.depthwise_initializer,
        )];
        if self.use_bias {
            w.push(WeightSpec::new(WeightRole::Bias, vec![out], Init::Zeros));
        }
        w
    }

    fn forward(&self, x: &Tensor, w: &[Var], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let channels = x.dim(1)?;
        let y = padded_conv(&self.as_conv(), x, w[0].as_tensor(), channels)?;
        self.finish(y, w.get(1).map(Var::as_tensor), ctx.skip_softmax)
    }
}

impl DepthwiseConv2dConfig {
    /// The bias and the activation after the convolution, on candle's ops or the CPU kernel.
    pub(crate) fn finish(
        &self,
        y: Tensor,
        bias: Option<&Tensor>,
        skip_softmax: bool,
    ) -> Result<Tensor> {
        let y = match bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, (), 1, 1))?)?,
            None => y,
        };
        self.activation.apply(y, skip_softmax)
    }
}
