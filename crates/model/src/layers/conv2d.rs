//! Keras' `Conv2D(filters, kernel_size, strides, padding, activation)`; the kernel is
//! `(out, in, kh, kw)` as candle computes it (`store` maps it to Keras' `(kh, kw, in, out)`).

use candle_core::{Tensor, Var};

use super::{
    cannot_take, Activation, FeatureShape, ForwardCtx, Init, Layer, Padding, WeightRole, WeightSpec,
};
use crate::error::Result;

/// One spatial axis of a convolution: output length, padding before, padding after.
pub type AxisGeometry = (usize, usize, usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub filters: usize,
    pub kernel_size: (usize, usize),
    pub strides: (usize, usize),
    pub padding: Padding,
    pub activation: Activation,
    /// Keras' `use_bias` (true by default).
    pub use_bias: bool,
    /// Keras' `kernel_initializer` (Glorot-uniform by default).
    pub kernel_initializer: Init,
    /// Keras' `groups`: input and output channels split into this many independent
    /// convolutions (1 by default; ConvNeXt's depthwise convolution is `groups = channels`).
    pub groups: usize,
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
            use_bias: true,
            kernel_initializer: Init::GlorotUniform,
            groups: 1,
        }
    }

    /// The same convolution without a bias.
    pub fn without_bias(self) -> Self {
        Self {
            use_bias: false,
            ..self
        }
    }

    /// Output length and `(before, after)` padding along height and width.
    pub fn geometry(&self, height: usize, width: usize) -> Option<(AxisGeometry, AxisGeometry)> {
        let h = self
            .padding
            .output_len(height, self.kernel_size.0, self.strides.0)?;
        let w = self
            .padding
            .output_len(width, self.kernel_size.1, self.strides.1)?;
        Some((h, w))
    }
}

impl Layer for Conv2dConfig {
    fn forward_macs(&self, input: &FeatureShape, output: &FeatureShape) -> u64 {
        let (kh, kw) = self.kernel_size;
        (output.elem_count() * kh * kw * input.channels() / self.groups.max(1)) as u64
    }

    fn class_name(&self) -> &'static str {
        "Conv2D"
    }

    fn name_stem(&self) -> &'static str {
        "conv2d"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.filters == 0 {
            return Err("filters must be at least 1".into());
        }
        if self.groups == 0 || !self.filters.is_multiple_of(self.groups) {
            return Err(format!(
                "groups {} must divide the {} filters",
                self.groups, self.filters
            ));
        }
        if self.strides.0 == 0 || self.strides.1 == 0 {
            return Err(format!("strides {:?} must be at least 1", self.strides));
        }
        if self.kernel_size.0 == 0 || self.kernel_size.1 == 0 {
            return Err(format!(
                "kernel_size {:?} must be at least 1",
                self.kernel_size
            ));
        }
        Ok(())
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        let FeatureShape::Image {
            height,
            width,
            channels,
        } = *input
        else {
            return Err(cannot_take(self.class_name(), input));
        };
        if !channels.is_multiple_of(self.groups) {
            return Err(format!(
                "groups {} must divide the input's {channels} channels",
                self.groups
            ));
        }
        let (h, w) = self.geometry(height, width).ok_or_else(|| {
            format!(
                "kernel {:?} does not fit input {height}x{width}",
                self.kernel_size
            )
        })?;
        Ok(FeatureShape::image(self.filters, h.0, w.0))
    }

    fn weights(&self, input: &FeatureShape) -> Vec<WeightSpec> {
        let (kh, kw) = self.kernel_size;
        let mut w = vec![WeightSpec::new(
            WeightRole::Kernel,
            vec![self.filters, input.channels() / self.groups.max(1), kh, kw],
            self.kernel_initializer,
        )];
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
        let y = padded_conv(self, x, w[0].as_tensor(), self.groups)?;
        let y = match w.get(1) {
            Some(bias) => y.broadcast_add(&bias.as_tensor().reshape((1, self.filters, 1, 1))?)?,
            None => y,
        };
        self.activation.apply(y, ctx.skip_softmax)
    }
}

/// `x` convolved with `kernel` in `groups` groups on candle's ops, padded and strided as
/// `geometry` says (the kernel's size and the padding; its filters are the kernel's).
pub(crate) fn padded_conv(
    geometry: &Conv2dConfig,
    x: &Tensor,
    kernel: &Tensor,
    groups: usize,
) -> Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let ((_, top, bottom), (_, left, right)) = geometry
        .geometry(h, wd)
        .expect("checked when the layer was added");
    if top == bottom && left == right && top == left {
        conv(x, kernel, top, geometry.strides, groups)
    } else {
        // Asymmetric or unequal padding: pad explicitly, candle pads symmetrically.
        let xp = x
            .pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, left, right)?;
        conv(&xp, kernel, 0, geometry.strides, groups)
    }
}

fn conv(
    x: &Tensor,
    kernel: &Tensor,
    padding: usize,
    strides: (usize, usize),
    groups: usize,
) -> Result<Tensor> {
    if strides.0 == strides.1 {
        return Ok(x.conv2d(kernel, padding, strides.0, 1, groups)?);
    }
    // candle takes one stride for both axes: for unequal strides, convolve with stride 1 and
    // keep every s-th row and column (exact, only slower).
    let y = x.conv2d(kernel, padding, 1, 1, groups)?;
    let (_, _, h, w) = y.dims4()?;
    let rows: Vec<u32> = (0..h).step_by(strides.0).map(|i| i as u32).collect();
    let cols: Vec<u32> = (0..w).step_by(strides.1).map(|i| i as u32).collect();
    let rows = Tensor::new(rows.as_slice(), x.device())?;
    let cols = Tensor::new(cols.as_slice(), x.device())?;
    Ok(y.index_select(&rows, 2)?.index_select(&cols, 3)?)
}
