//! Keras' `SeparableConv2D(filters, kernel_size, strides, padding, depth_multiplier)`: a
//! depthwise convolution (each channel its own `depth_multiplier` filters) then a 1x1
//! convolution to `filters` (Xception's). Weights in Keras' order: the depthwise kernel
//! `(in · multiplier, 1, kh, kw)`, the pointwise kernel `(filters, in · multiplier, 1, 1)`, the
//! bias.

use candle_core::{Tensor, Var};

use super::conv2d::padded_conv;
use super::{
    cannot_take, Activation, Conv2dConfig, FeatureShape, ForwardCtx, Init, Layer, Padding,
    WeightRole, WeightSpec,
};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeparableConv2dConfig {
    pub filters: usize,
    pub kernel_size: (usize, usize),
    pub strides: (usize, usize),
    pub padding: Padding,
    pub depth_multiplier: usize,
    pub activation: Activation,
    pub use_bias: bool,
}

impl SeparableConv2dConfig {
    fn depthwise(&self) -> Conv2dConfig {
        Conv2dConfig {
            filters: self.filters,
            kernel_size: self.kernel_size,
            strides: self.strides,
            padding: self.padding,
            activation: self.activation,
            use_bias: self.use_bias,
            kernel_initializer: Init::GlorotUniform,
            groups: 1,
        }
    }
}

impl Layer for SeparableConv2dConfig {
    fn forward_macs(&self, input: &FeatureShape, output: &FeatureShape) -> u64 {
        let (kh, kw) = self.kernel_size;
        let spatial = (output.elem_count() / self.filters.max(1)) as u64;
        let depthwise = input.channels() * self.depth_multiplier;
        spatial * (depthwise * kh * kw + depthwise * self.filters) as u64
    }

    fn class_name(&self) -> &'static str {
        "SeparableConv2D"
    }

    fn name_stem(&self) -> &'static str {
        "separable_conv2d"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.depth_multiplier == 0 {
            return Err("depth_multiplier must be at least 1".into());
        }
        self.depthwise().validate()
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        match input {
            FeatureShape::Image { .. } => self.depthwise().output_shape(input),
            _ => Err(cannot_take(self.class_name(), input)),
        }
    }

    fn weights(&self, input: &FeatureShape) -> Vec<WeightSpec> {
        let (kh, kw) = self.kernel_size;
        let mid = input.channels() * self.depth_multiplier;
        let mut w = vec![
            WeightSpec::new(
                WeightRole::DepthwiseKernel,
                vec![mid, 1, kh, kw],
                Init::GlorotUniform,
            ),
            WeightSpec::new(
                WeightRole::PointwiseKernel,
                vec![self.filters, mid, 1, 1],
                Init::GlorotUniform,
            ),
        ];
        if self.use_bias {
            w.push(WeightSpec::new(
                WeightRole::Bias,
                vec![self.filters],
                Init::Zeros,
            ));
        }
        w
    }

    fn forward(&self, x: &Tensor, w: &[Var], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let channels = x.dim(1)?;
        let y = padded_conv(&self.depthwise(), x, w[0].as_tensor(), channels)?;
        let y = y.conv2d(w[1].as_tensor(), 0, 1, 1, 1)?;
        let y = match w.get(2) {
            Some(bias) => y.broadcast_add(&bias.as_tensor().reshape((1, self.filters, 1, 1))?)?,
            None => y,
        };
        self.activation.apply(y, ctx.skip_softmax)
    }
}
