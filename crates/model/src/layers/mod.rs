//! Layer kinds as Keras names them, each in its own file: its configuration, output shape,
//! weights (role, shape, initialiser) and forward pass on candle's ops. [`LayerKind`] lists
//! them; [`LayerKind::layer`] is the one place that maps a kind to its [`Layer`].
//!
//! Adding a layer: a new file here with a config type that implements [`Layer`], a variant in
//! [`LayerKind`] and its arm in [`LayerKind::layer`], then its Keras mapping in `store`.

mod activation;
mod add;
mod average_pooling2d;
mod batch_normalization;
mod concatenate;
mod conv2d;
mod cropping2d;
mod dense;
mod depthwise_conv2d;
mod dropout;
mod flatten;
mod global_average_pooling2d;
mod global_max_pooling2d;
mod input;
mod layer_normalization;
mod layer_scale;
mod max_pooling2d;
mod multiply;
mod normalization;
mod relu;
mod rescaling;
mod reshape;
mod scalar_op;
mod separable_conv2d;
mod stochastic_depth;
mod zero_padding2d;

use std::fmt;

use candle_core::{Tensor, Var};

pub use activation::ActivationConfig;
pub use add::Add;
pub use average_pooling2d::AveragePooling2D;
pub use batch_normalization::BatchNormConfig;
pub use concatenate::Concatenate;
pub use conv2d::Conv2dConfig;
pub use cropping2d::Cropping2D;
pub use dense::DenseConfig;
pub use depthwise_conv2d::DepthwiseConv2dConfig;
pub use dropout::DropoutConfig;
pub use flatten::Flatten;
pub use global_average_pooling2d::GlobalAveragePooling2D;
pub use global_max_pooling2d::GlobalMaxPooling2D;
pub use input::InputLayer;
pub use layer_normalization::LayerNormConfig;
pub use layer_scale::LayerScale;
pub use max_pooling2d::{MaxPooling2D, Pool2dConfig};
pub use multiply::Multiply;
pub use normalization::{NormalizationConfig, EPSILON as NORMALIZATION_EPSILON};
pub use relu::ReluConfig;
pub use rescaling::RescalingConfig;
pub use reshape::Reshape;
pub use scalar_op::{ScalarOp, ScalarOpKind};
pub use separable_conv2d::SeparableConv2dConfig;
pub use stochastic_depth::StochasticDepth;
pub use zero_padding2d::{Padding2d, ZeroPadding2D};

use crate::error::{ModelError, Result};
use crate::model::TrainingPass;

/// The shape of one example as it flows between layers (the batch dimension is left out).
/// Images are held channels-first, as candle computes them; Keras shows them channels-last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureShape {
    Image {
        channels: usize,
        height: usize,
        width: usize,
    },
    Flat(usize),
}

impl FeatureShape {
    pub fn image(channels: usize, height: usize, width: usize) -> Self {
        FeatureShape::Image {
            channels,
            height,
            width,
        }
    }

    /// Number of values per example.
    pub fn elem_count(&self) -> usize {
        match *self {
            FeatureShape::Image {
                channels,
                height,
                width,
            } => channels * height * width,
            FeatureShape::Flat(n) => n,
        }
    }

    /// The channels of an image, the features of a flat example.
    pub fn channels(&self) -> usize {
        match *self {
            FeatureShape::Image { channels, .. } => channels,
            FeatureShape::Flat(n) => n,
        }
    }

    /// The candle tensor dims for a batch of `n` (NCHW or NF).
    pub fn batch_dims(&self, n: usize) -> Vec<usize> {
        match *self {
            FeatureShape::Image {
                channels,
                height,
                width,
            } => vec![n, channels, height, width],
            FeatureShape::Flat(f) => vec![n, f],
        }
    }

    /// Keras' channels-last shape without the batch: `[h, w, c]` or `[f]`.
    pub fn keras_dims(&self) -> Vec<usize> {
        match *self {
            FeatureShape::Image {
                channels,
                height,
                width,
            } => vec![height, width, channels],
            FeatureShape::Flat(f) => vec![f],
        }
    }
}

/// Keras' notation: `(None, 32, 32, 3)` for a batch of 32x32 RGB images.
impl fmt::Display for FeatureShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.keras_dims().iter().map(|d| d.to_string()).collect();
        write!(f, "(None, {})", dims.join(", "))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Linear,
    Relu,
    Softmax,
    /// The exact GELU, `x·Φ(x)` (Keras' `gelu` with `approximate=False`, PyTorch's `nn.GELU()`).
    Gelu,
    Sigmoid,
    Tanh,
    /// `x · sigmoid(x)` (Keras' `swish`, also called `silu`).
    Swish,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// Keras 3's `relu6(x + 3) / 6` (Keras 2's `0.2x + 0.5`, clipped, is another function).
    HardSigmoid,
    /// `x · hard_sigmoid(x)` (Keras' `hard_silu`, also called `hard_swish`).
    HardSilu,
}

impl Activation {
    pub fn keras_name(&self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Softmax => "softmax",
            Activation::Gelu => "gelu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Swish => "swish",
            Activation::Relu6 => "relu6",
            Activation::HardSigmoid => "hard_sigmoid",
            Activation::HardSilu => "hard_silu",
        }
    }

    /// The activation Keras calls `name`.
    pub fn from_keras_name(name: &str) -> Option<Self> {
        use Activation::*;
        let name = match name {
            "silu" => "swish",
            "hard_swish" => "hard_silu",
            other => other,
        };
        [
            Linear,
            Relu,
            Softmax,
            Gelu,
            Sigmoid,
            Tanh,
            Swish,
            Relu6,
            HardSigmoid,
            HardSilu,
        ]
        .into_iter()
        .find(|a| a.keras_name() == name)
    }

    /// Applies the activation; the final softmax is left out when the caller wants logits.
    pub(crate) fn apply(self, x: Tensor, skip_softmax: bool) -> Result<Tensor> {
        Ok(match self {
            Activation::Linear => x,
            Activation::Relu => x.relu()?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::Softmax if skip_softmax => x,
            Activation::Softmax => candle_nn::ops::softmax_last_dim(&x)?,
            Activation::Sigmoid => candle_nn::ops::sigmoid(&x)?,
            Activation::Tanh => x.tanh()?,
            Activation::Swish => x.silu()?,
            Activation::Relu6 => x.relu()?.minimum(6f32)?,
            Activation::HardSigmoid => hard_sigmoid(&x)?,
            Activation::HardSilu => (&x * hard_sigmoid(&x)?)?,
        })
    }
}

/// Keras 3's `hard_sigmoid`: `relu6(x + 3) / 6`.
fn hard_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    (x + 3.0)?.relu()?.minimum(6f32)? / 6.0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    Valid,
    /// Output size `ceil(in / stride)`; when the total padding is odd the extra row/column goes
    /// at the bottom/right, as in TensorFlow.
    Same,
}

impl Padding {
    pub fn keras_name(&self) -> &'static str {
        match self {
            Padding::Valid => "valid",
            Padding::Same => "same",
        }
    }

    /// Output length and `(before, after)` padding of one spatial dimension.
    pub fn output_len(
        &self,
        input: usize,
        kernel: usize,
        stride: usize,
    ) -> Option<(usize, usize, usize)> {
        if kernel == 0 || stride == 0 {
            return None;
        }
        match self {
            Padding::Valid => (input >= kernel).then(|| ((input - kernel) / stride + 1, 0, 0)),
            Padding::Same => {
                let out = input.div_ceil(stride);
                let total = ((out - 1) * stride + kernel).saturating_sub(input);
                Some((out, total / 2, total - total / 2))
            }
        }
    }
}

/// What a weight is to its layer: decides its Keras name, whether an optimizer trains it, and
/// how files lay it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightRole {
    Kernel,
    /// A depthwise convolution's kernel (`DepthwiseConv2D`, `SeparableConv2D`'s first).
    DepthwiseKernel,
    /// `SeparableConv2D`'s 1x1 kernel.
    PointwiseKernel,
    Bias,
    Gamma,
    Beta,
    MovingMean,
    MovingVariance,
    /// Normalization's fixed statistics and the count of examples they came from.
    Mean,
    Variance,
    Count,
}

impl WeightRole {
    /// Keras' variable name (`kernel`, `moving_mean`, …).
    pub fn keras_name(self) -> &'static str {
        match self {
            WeightRole::Kernel => "kernel",
            WeightRole::DepthwiseKernel => "depthwise_kernel",
            WeightRole::PointwiseKernel => "pointwise_kernel",
            WeightRole::Bias => "bias",
            WeightRole::Gamma => "gamma",
            WeightRole::Beta => "beta",
            WeightRole::MovingMean => "moving_mean",
            WeightRole::MovingVariance => "moving_variance",
            WeightRole::Mean => "mean",
            WeightRole::Variance => "variance",
            WeightRole::Count => "count",
        }
    }

    /// The role Keras calls `name`.
    pub fn from_keras_name(name: &str) -> Option<Self> {
        use WeightRole::*;
        [
            Kernel,
            DepthwiseKernel,
            PointwiseKernel,
            Bias,
            Gamma,
            Beta,
            MovingMean,
            MovingVariance,
            Mean,
            Variance,
            Count,
        ]
        .into_iter()
        .find(|r| r.keras_name() == name)
    }

    /// Whether gradients train it: BatchNormalization's moving statistics are updated by the
    /// layer itself, never by an optimizer (Keras' non-trainable weights).
    pub fn trainable(self) -> bool {
        !matches!(
            self,
            WeightRole::MovingMean
                | WeightRole::MovingVariance
                | WeightRole::Mean
                | WeightRole::Variance
                | WeightRole::Count
        )
    }
}

/// How a weight starts (Keras' default initialisers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Uniform in `±sqrt(6 / (fan_in + fan_out))` (Keras' default).
    GlorotUniform,
    /// Keras' `VarianceScaling(scale, mode="fan_in", distribution="uniform")`: uniform in
    /// `±sqrt(3 · scale / fan_in)`.
    FanInUniform(FanInScale),
    /// Keras' `VarianceScaling(scale, mode="fan_out", distribution="uniform")`: uniform in
    /// `±sqrt(3 · scale / fan_out)` (EfficientNet's Dense).
    FanOutUniform(FanInScale),
    /// Keras' `VarianceScaling(scale, mode, distribution="truncated_normal")`: a normal with
    /// standard deviation `sqrt(scale / n) / 0.8796…`, redrawn beyond two of them, where `n`
    /// is the fan-in (`he_normal`: scale 2, `lecun_normal`: 1), the fan-out (EfficientNet's
    /// convolutions) or the fans' mean (`glorot_normal`: 1).
    TruncatedNormal {
        scale: FanInScale,
        mode: FanMode,
    },
    Zeros,
    Ones,
    /// Keras' `Constant(value)`, held as the f32's bits (so that `Init` stays `Eq`): see
    /// [`Init::constant`].
    Constant {
        bits: u32,
    },
}

impl Init {
    /// Keras' `Constant(value)` (ConvNeXt's LayerScale starts at 1e-6).
    pub fn constant(value: f32) -> Self {
        Init::Constant {
            bits: value.to_bits(),
        }
    }
}

/// Which fan a variance-scaling initialiser divides by (Keras' `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    In,
    Out,
    Average,
}

impl FanMode {
    pub fn keras_name(self) -> &'static str {
        match self {
            FanMode::In => "fan_in",
            FanMode::Out => "fan_out",
            FanMode::Average => "fan_avg",
        }
    }

    /// The fan for a kernel with these fans.
    pub fn fan(self, fan_in: usize, fan_out: usize) -> f64 {
        match self {
            FanMode::In => fan_in as f64,
            FanMode::Out => fan_out as f64,
            FanMode::Average => (fan_in + fan_out) as f64 / 2.0,
        }
    }
}

/// The scales of `FanInUniform` that have names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanInScale {
    /// 1/3: PyTorch's default for `Conv2d` and `Linear` (`kaiming_uniform_(a=sqrt(5))`,
    /// bound `1 / sqrt(fan_in)`).
    Torch,
    /// 1: Keras' `lecun_uniform`.
    Lecun,
    /// 2: Keras' `he_uniform`.
    He,
}

impl FanInScale {
    pub fn value(self) -> f64 {
        match self {
            FanInScale::Torch => 1.0 / 3.0,
            FanInScale::Lecun => 1.0,
            FanInScale::He => 2.0,
        }
    }
}

/// One weight a layer asks for, in candle's layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightSpec {
    pub role: WeightRole,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl WeightSpec {
    pub fn new(role: WeightRole, shape: Vec<usize>, init: Init) -> Self {
        Self { role, shape, init }
    }

    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// What a forward pass needs besides the input and the weights.
pub struct ForwardCtx<'a> {
    /// Training behaviour (dropout drawing masks from this generator); `None` in inference.
    pub training: Option<&'a mut TrainingPass>,
    /// The model's last layer when the caller wants logits: its softmax is left out.
    pub skip_softmax: bool,
}

impl ForwardCtx<'_> {
    pub fn is_training(&self) -> bool {
        self.training.is_some()
    }
}

/// One kind of layer: what Keras' layer class knows about itself.
pub trait Layer {
    /// The Keras class name (`Conv2D`, `MaxPooling2D`, …).
    fn class_name(&self) -> &'static str;

    /// The stem of Keras' default layer names (`conv2d` → `conv2d_1`).
    fn name_stem(&self) -> &'static str;

    /// Rejects settings no input could make right (a dropout rate of 2, 0 filters).
    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// The output shape for `input`, or why the layer cannot take it.
    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String>;

    /// The output shape for all its inputs: one, unless the layer joins several (`Add`).
    fn output_shape_of(
        &self,
        inputs: &[FeatureShape],
    ) -> std::result::Result<FeatureShape, String> {
        match inputs {
            [one] => self.output_shape(one),
            _ => Err(format!(
                "{} takes one input, not {}",
                self.class_name(),
                inputs.len()
            )),
        }
    }

    /// The weights for `input`, in Keras' order (kernel before bias).
    fn weights(&self, _input: &FeatureShape) -> Vec<WeightSpec> {
        Vec::new()
    }

    /// The forward pass on candle's ops for an NCHW (or NF) batch; `weights` come in the order
    /// of [`Layer::weights`].
    fn forward(&self, x: &Tensor, weights: &[Var], ctx: &mut ForwardCtx<'_>) -> Result<Tensor>;

    /// The forward pass on all its inputs, in the order the layer takes them; layers that
    /// join several (`Add`, `Concatenate`) override it.
    fn forward_all(
        &self,
        xs: &[Tensor],
        weights: &[Var],
        ctx: &mut ForwardCtx<'_>,
    ) -> Result<Tensor> {
        self.forward(&xs[0], weights, ctx)
    }

    /// Multiply-adds of one example's forward pass (the products that dominate: convolutions
    /// and dense layers; zero for the rest), for throughput figures in GFLOP/s.
    fn forward_macs(&self, _input: &FeatureShape, _output: &FeatureShape) -> u64 {
        0
    }
}

/// Every layer kind the workbench has, with its configuration.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerKind {
    /// Keras' `InputLayer`: shown by functional models such as VGG-16; computes nothing.
    Input,
    Conv2d(Conv2dConfig),
    MaxPool2d(MaxPooling2D),
    AvgPool2d(AveragePooling2D),
    Dropout(DropoutConfig),
    Flatten,
    Dense(DenseConfig),
    BatchNorm(BatchNormConfig),
    GlobalAvgPool2d(GlobalAveragePooling2D),
    GlobalMaxPool2d(GlobalMaxPooling2D),
    Rescaling(RescalingConfig),
    Activation(ActivationConfig),
    Add,
    Multiply,
    Concatenate,
    ZeroPadding2d(ZeroPadding2D),
    Relu(ReluConfig),
    DepthwiseConv2d(DepthwiseConv2dConfig),
    SeparableConv2d(SeparableConv2dConfig),
    Reshape(Reshape),
    Cropping2d(Cropping2D),
    Normalization(NormalizationConfig),
    /// Keras 3's arithmetic on a tensor and a number (an operation node, not a layer).
    ScalarOp(ScalarOp),
    LayerNorm(LayerNormConfig),
    /// ConvNeXt's `LayerScale` (`keras.src.applications.convnext`).
    LayerScale(LayerScale),
    /// ConvNeXt's `StochasticDepth`.
    StochasticDepth(StochasticDepth),
}

impl LayerKind {
    /// The kind's behaviour: the one place every kind is listed.
    pub fn layer(&self) -> &dyn Layer {
        match self {
            LayerKind::Input => &InputLayer,
            LayerKind::Conv2d(c) => c,
            LayerKind::MaxPool2d(p) => p,
            LayerKind::AvgPool2d(p) => p,
            LayerKind::Dropout(d) => d,
            LayerKind::Flatten => &Flatten,
            LayerKind::Dense(d) => d,
            LayerKind::BatchNorm(b) => b,
            LayerKind::GlobalAvgPool2d(p) => p,
            LayerKind::GlobalMaxPool2d(p) => p,
            LayerKind::Rescaling(r) => r,
            LayerKind::Activation(a) => a,
            LayerKind::Add => &Add,
            LayerKind::Multiply => &Multiply,
            LayerKind::Concatenate => &Concatenate,
            LayerKind::ZeroPadding2d(z) => z,
            LayerKind::Relu(r) => r,
            LayerKind::DepthwiseConv2d(d) => d,
            LayerKind::SeparableConv2d(s) => s,
            LayerKind::Reshape(r) => r,
            LayerKind::Cropping2d(c) => c,
            LayerKind::Normalization(n) => n,
            LayerKind::ScalarOp(o) => o,
            LayerKind::LayerNorm(l) => l,
            LayerKind::LayerScale(l) => l,
            LayerKind::StochasticDepth(s) => s,
        }
    }

    /// `Conv2D(filters, (k, k), padding, activation)`, stride 1.
    pub fn conv2d(filters: usize, kernel: usize, padding: Padding, activation: Activation) -> Self {
        LayerKind::Conv2d(Conv2dConfig::new(filters, kernel, padding, activation))
    }

    /// `MaxPooling2D(pool)`, strides equal to the pool.
    pub fn max_pool(pool: usize) -> Self {
        LayerKind::MaxPool2d(MaxPooling2D(Pool2dConfig::new(pool)))
    }

    /// `GlobalAveragePooling2D()`: each channel's mean, as a vector.
    pub fn global_avg_pool() -> Self {
        LayerKind::GlobalAvgPool2d(GlobalAveragePooling2D { keepdims: false })
    }

    /// `GlobalMaxPooling2D()`: each channel's maximum, as a vector.
    pub fn global_max_pool() -> Self {
        LayerKind::GlobalMaxPool2d(GlobalMaxPooling2D { keepdims: false })
    }

    /// `Dropout(rate)`.
    pub fn dropout(rate: f32) -> Self {
        LayerKind::Dropout(DropoutConfig {
            rate,
            per_example: false,
        })
    }

    /// `Dense(units, activation)`.
    pub fn dense(units: usize, activation: Activation) -> Self {
        LayerKind::Dense(DenseConfig::default_for(units, activation))
    }

    pub fn class_name(&self) -> &'static str {
        self.layer().class_name()
    }

    pub fn default_name_stem(&self) -> &'static str {
        self.layer().name_stem()
    }

    /// The weights this layer has on `input`, in Keras' order.
    pub fn weights(&self, input: &FeatureShape) -> Vec<WeightSpec> {
        self.layer().weights(input)
    }

    /// Number of parameters, trainable or not, given the input shape.
    pub fn param_count(&self, input: &FeatureShape) -> usize {
        self.weights(input).iter().map(WeightSpec::elem_count).sum()
    }

    /// Parameters an optimizer trains by default (Keras' "Trainable params").
    pub fn trainable_param_count(&self, input: &FeatureShape) -> usize {
        self.weights(input)
            .iter()
            .filter(|w| w.role.trainable())
            .map(WeightSpec::elem_count)
            .sum()
    }

    /// The output shape for `inputs`, or an error naming the layer and saying why.
    pub fn output_shape(&self, name: &str, inputs: &[FeatureShape]) -> Result<FeatureShape> {
        let layer = self.layer();
        layer
            .validate()
            .and_then(|()| layer.output_shape_of(inputs))
            .map_err(|message| ModelError::Shape {
                layer: name.to_string(),
                message,
            })
    }
}

/// Per-channel statistics' shape for broadcasting over `(N, C, H, W)` or `(N, C)`.
pub(crate) fn channel_dims(x: &Tensor) -> Result<Vec<usize>> {
    let mut shape = vec![1; x.rank()];
    shape[1] = x.dim(1)?;
    Ok(shape)
}

/// The shape of an element-wise join (`add`, `multiply`) of `inputs`: equal shapes, or images
/// whose sides and channels are each equal or 1 (broadcast, as Keras 3 broadcasts).
pub(crate) fn broadcast_shapes(
    what: &str,
    inputs: &[FeatureShape],
) -> std::result::Result<FeatureShape, String> {
    let first = *inputs.first().ok_or("takes no input")?;
    inputs.iter().skip(1).try_fold(first, |acc, s| {
        let dim = |a: usize, b: usize| match (a, b) {
            _ if a == b => Some(a),
            (1, b) => Some(b),
            (a, 1) => Some(a),
            _ => None,
        };
        let joined = match (acc, *s) {
            (FeatureShape::Flat(a), FeatureShape::Flat(b)) => dim(a, b).map(FeatureShape::Flat),
            (
                FeatureShape::Image {
                    channels: c1,
                    height: h1,
                    width: w1,
                },
                FeatureShape::Image {
                    channels: c2,
                    height: h2,
                    width: w2,
                },
            ) => match (dim(c1, c2), dim(h1, h2), dim(w1, w2)) {
                (Some(c), Some(h), Some(w)) => Some(FeatureShape::image(c, h, w)),
                _ => None,
            },
            _ => None,
        };
        joined.ok_or_else(|| format!("cannot {what} {acc} and {s}"))
    })
}

/// The error a layer gives for an input it cannot take.
pub(crate) fn cannot_take(class: &str, input: &FeatureShape) -> String {
    format!("{class} cannot take input {input}")
}
