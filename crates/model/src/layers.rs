//! Layer kinds and their configuration, as Keras names them; shape inference and parameter counts.

use std::fmt;

use crate::error::{ModelError, Result};

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
}

impl Activation {
    pub fn keras_name(&self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Softmax => "softmax",
        }
    }
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

/// `Conv2D(filters, kernel_size, strides, padding, activation)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub filters: usize,
    pub kernel_size: (usize, usize),
    pub strides: (usize, usize),
    pub padding: Padding,
    pub activation: Activation,
}

impl Conv2dConfig {
    /// A `kernel x kernel` convolution, stride 1, the given padding and activation.
    pub fn new(filters: usize, kernel: usize, padding: Padding, activation: Activation) -> Self {
        Self {
            filters,
            kernel_size: (kernel, kernel),
            strides: (1, 1),
            padding,
            activation,
        }
    }
}

/// `MaxPooling2D` / `AveragePooling2D`: `pool_size`, `strides` (Keras: defaults to `pool_size`).
/// Only `valid` padding, Keras' default.
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
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LayerKind {
    /// Keras' `InputLayer`: shown by functional models such as VGG-16; computes nothing.
    Input,
    Conv2d(Conv2dConfig),
    MaxPool2d(Pool2dConfig),
    AvgPool2d(Pool2dConfig),
    /// Drops a fraction `rate` of the values in training, scaling the rest by `1 / (1 - rate)`.
    Dropout {
        rate: f32,
    },
    Flatten,
    Dense {
        units: usize,
        activation: Activation,
    },
    /// Keras' `BatchNormalization` over the channels (the last axis in Keras), inference only:
    /// `(x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta`.
    BatchNorm {
        epsilon: f32,
        momentum: f32,
    },
}

impl LayerKind {
    /// The Keras class name (`Conv2D`, `MaxPooling2D`, …).
    pub fn class_name(&self) -> &'static str {
        match self {
            LayerKind::Input => "InputLayer",
            LayerKind::Conv2d(_) => "Conv2D",
            LayerKind::MaxPool2d(_) => "MaxPooling2D",
            LayerKind::AvgPool2d(_) => "AveragePooling2D",
            LayerKind::Dropout { .. } => "Dropout",
            LayerKind::Flatten => "Flatten",
            LayerKind::Dense { .. } => "Dense",
            LayerKind::BatchNorm { .. } => "BatchNormalization",
        }
    }

    /// The stem of Keras' default layer names (`conv2d` → `conv2d_1`).
    pub fn default_name_stem(&self) -> &'static str {
        match self {
            LayerKind::Input => "input",
            LayerKind::Conv2d(_) => "conv2d",
            LayerKind::MaxPool2d(_) => "max_pooling2d",
            LayerKind::AvgPool2d(_) => "average_pooling2d",
            LayerKind::Dropout { .. } => "dropout",
            LayerKind::Flatten => "flatten",
            LayerKind::Dense { .. } => "dense",
            LayerKind::BatchNorm { .. } => "batch_normalization",
        }
    }

    /// Shapes of this layer's weights in candle's layout, in Keras' order (kernel, then bias).
    pub fn weight_shapes(&self, input: &FeatureShape) -> Vec<(&'static str, Vec<usize>)> {
        match (self, input) {
            (LayerKind::Conv2d(c), FeatureShape::Image { channels, .. }) => vec![
                (
                    "kernel",
                    vec![c.filters, *channels, c.kernel_size.0, c.kernel_size.1],
                ),
                ("bias", vec![c.filters]),
            ],
            (LayerKind::Dense { units, .. }, FeatureShape::Flat(n)) => {
                vec![("kernel", vec![*n, *units]), ("bias", vec![*units])]
            }
            (LayerKind::BatchNorm { .. }, shape) => {
                let c = match *shape {
                    FeatureShape::Image { channels, .. } => channels,
                    FeatureShape::Flat(n) => n,
                };
                ["gamma", "beta", "moving_mean", "moving_variance"]
                    .into_iter()
                    .map(|name| (name, vec![c]))
                    .collect()
            }
            _ => vec![],
        }
    }

    /// Whether the optimizer trains a weight of this name (BatchNormalization's moving
    /// statistics are not trained, as in Keras).
    pub fn is_trainable(weight: &str) -> bool {
        !weight.starts_with("moving_")
    }

    /// Number of parameters, trainable or not, given the input shape.
    pub fn param_count(&self, input: &FeatureShape) -> usize {
        self.weight_shapes(input)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Parameters the optimizer trains (Keras' "Trainable params").
    pub fn trainable_param_count(&self, input: &FeatureShape) -> usize {
        self.weight_shapes(input)
            .iter()
            .filter(|(n, _)| Self::is_trainable(n))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// The output shape for `input`, or an error saying why the layer cannot take it.
    pub fn output_shape(&self, name: &str, input: &FeatureShape) -> Result<FeatureShape> {
        let bad = |why: String| ModelError::Shape {
            layer: name.to_string(),
            message: why,
        };
        match (self, *input) {
            (LayerKind::Input | LayerKind::Dropout { .. } | LayerKind::BatchNorm { .. }, s) => {
                Ok(s)
            }
            (LayerKind::Conv2d(c), FeatureShape::Image { height, width, .. }) => {
                let (h, _, _) = c
                    .padding
                    .output_len(height, c.kernel_size.0, c.strides.0)
                    .ok_or_else(|| {
                        bad(format!(
                            "kernel {:?} does not fit input height {height}",
                            c.kernel_size
                        ))
                    })?;
                let (w, _, _) = c
                    .padding
                    .output_len(width, c.kernel_size.1, c.strides.1)
                    .ok_or_else(|| {
                        bad(format!(
                            "kernel {:?} does not fit input width {width}",
                            c.kernel_size
                        ))
                    })?;
                if c.filters == 0 {
                    return Err(bad("filters must be at least 1".into()));
                }
                Ok(FeatureShape::image(c.filters, h, w))
            }
            (
                LayerKind::MaxPool2d(p) | LayerKind::AvgPool2d(p),
                FeatureShape::Image {
                    channels,
                    height,
                    width,
                },
            ) => {
                let h = Padding::Valid.output_len(height, p.pool_size.0, p.strides.0);
                let w = Padding::Valid.output_len(width, p.pool_size.1, p.strides.1);
                match (h, w) {
                    (Some((h, _, _)), Some((w, _, _))) => Ok(FeatureShape::image(channels, h, w)),
                    _ => Err(bad(format!(
                        "pool {:?} stride {:?} does not fit input {height}x{width}",
                        p.pool_size, p.strides
                    ))),
                }
            }
            (LayerKind::Flatten, s) => Ok(FeatureShape::Flat(s.elem_count())),
            (LayerKind::Dense { units, .. }, FeatureShape::Flat(_)) => {
                if *units == 0 {
                    return Err(bad("units must be at least 1".into()));
                }
                Ok(FeatureShape::Flat(*units))
            }
            (kind, s) => Err(bad(format!("{} cannot take input {s}", kind.class_name()))),
        }
    }
}
