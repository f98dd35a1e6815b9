//! `Model`: a [`Sequential`] with its weights on a device, and the forward pass.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{ModelError, Result};
use crate::layers::{Activation, Conv2dConfig, LayerKind, Padding, Pool2dConfig};
use crate::ops;
use crate::sequential::{LayerSpec, Sequential};

/// One weight tensor: the layer it belongs to, its Keras name (`kernel`, `bias`), the variable.
#[derive(Clone, Debug)]
pub struct NamedWeight {
    pub layer: String,
    pub name: &'static str,
    pub var: Var,
    /// False for BatchNormalization's moving statistics, which no optimizer updates.
    pub trainable: bool,
}

/// The source of dropout masks. Seeded, so that training runs repeat exactly on CPU
/// (candle's own CPU random numbers cannot be seeded).
#[derive(Clone, Debug)]
pub struct DropoutRng(ChaCha8Rng);

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// A keep-mask scaled by `1 / (1 - rate)`: each value is 0 with probability `rate`.
    fn mask(&mut self, len: usize, rate: f32) -> Vec<f32> {
        let keep = 1.0 / (1.0 - rate);
        // Compare 24-bit uniforms against the threshold: exact for any f32 rate. The words
        // come in one `fill` (the same sequence as `next_u32` calls, much faster).
        let threshold = (rate as f64 * (1u64 << 24) as f64) as u32;
        let mut bits = vec![0u32; len];
        self.0.fill(bits.as_mut_slice());
        bits.iter()
            .map(|&b| if b >> 8 >= threshold { keep } else { 0.0 })
            .collect()
    }

    /// The generator's position, to resume a run exactly.
    pub fn word_pos(&self) -> u128 {
        self.0.get_word_pos()
    }

    pub fn set_word_pos(&mut self, pos: u128) {
        self.0.set_word_pos(pos)
    }
}

/// Training (dropout active, drawing from the rng) or inference.
pub enum Mode<'a> {
    Inference,
    Training(&'a mut DropoutRng),
}

/// A network with its weights: what `fit`, `evaluate`, `predict` and `save` work on.
#[derive(Clone, Debug)]
pub struct Model {
    spec: Sequential,
    /// Per layer, its weights in Keras' order (kernel, bias); empty for weightless layers.
    weights: Vec<Vec<NamedWeight>>,
    device: Device,
    kernels: Kernels,
}

/// Which implementation runs the convolutions and max pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kernels {
    /// [`crate::ops`] for f32 on the CPU (im2row + gemm, fused bias and ReLU), candle's ops
    /// elsewhere.
    #[default]
    Fast,
    /// candle's own ops everywhere (max pooling as a reshape and max reductions, since candle's
    /// `max_pool2d` has a wrong gradient): what CUDA runs, and the reference the fast kernels
    /// are tested against.
    Candle,
}

impl Model {
    /// Creates the weights with Keras' initialisers: Glorot-uniform kernels, zero biases,
    /// drawn from a generator seeded with `seed`.
    pub fn new(spec: Sequential, device: &Device, seed: u64) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut weights = Vec::with_capacity(spec.layers().len());
        for layer in spec.layers() {
            let mut ws = Vec::new();
            for (name, shape) in layer.kind.weight_shapes(&layer.input) {
                let n: usize = shape.iter().product();
                // Keras' defaults: Glorot-uniform kernels, ones for gamma and the moving
                // variance, zeros for everything else.
                let values: Vec<f32> = match name {
                    "kernel" => {
                        let (fan_in, fan_out) = fans(&shape);
                        let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
                        (0..n).map(|_| rng.random_range(-limit..limit)).collect()
                    }
                    "gamma" | "moving_variance" => vec![1.0; n],
                    _ => vec![0.0; n],
                };
                let var = Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?;
                ws.push(NamedWeight {
                    layer: layer.name.clone(),
                    name,
                    var,
                    trainable: LayerKind::is_trainable(name),
                });
            }
            weights.push(ws);
        }
        Ok(Self {
            spec,
            weights,
            device: device.clone(),
            kernels: Kernels::default(),
        })
    }

    /// Chooses the convolution and pooling kernels (see [`Kernels`]); the weights stay.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    pub fn spec(&self) -> &Sequential {
        &self.spec
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn summary(&self) -> String {
        self.spec.summary()
    }

    /// Every weight in layer order, in Keras' order within a layer (kernel before bias).
    pub fn weights(&self) -> impl Iterator<Item = &NamedWeight> {
        self.weights.iter().flatten()
    }

    /// The variables an optimizer updates, in the order of [`Model::weights`].
    pub fn vars(&self) -> Vec<Var> {
        self.trainable_weights().map(|w| w.var.clone()).collect()
    }

    /// The weights an optimizer trains, in the order of [`Model::weights`].
    pub fn trainable_weights(&self) -> impl Iterator<Item = &NamedWeight> {
        self.weights().filter(|w| w.trainable)
    }

    /// Replaces one weight's values (shape-checked), e.g. from a file.
    pub fn set_weight(&self, layer: &str, name: &str, value: &Tensor) -> Result<()> {
        let w = self
            .weights()
            .find(|w| w.layer == layer && w.name == name)
            .ok_or_else(|| ModelError::Config(format!("no weight {layer}/{name}")))?;
        if w.var.dims() != value.dims() {
            return Err(ModelError::Shape {
                layer: layer.into(),
                message: format!(
                    "{name} has shape {:?}, got {:?}",
                    w.var.dims(),
                    value.dims()
                ),
            });
        }
        w.var
            .set(&value.to_dtype(DType::F32)?.to_device(&self.device)?)?;
        Ok(())
    }

    /// Class probabilities (the last layer's activation applied).
    pub fn forward(&self, x: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        self.run(x, mode, false)
    }

    /// The last layer's output before its softmax: what a stable cross-entropy wants.
    pub fn logits(&self, x: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        self.run(x, mode, true)
    }

    fn run(&self, x: &Tensor, mut mode: Mode<'_>, skip_final_softmax: bool) -> Result<Tensor> {
        let expected = self.spec.input_shape().batch_dims(x.dim(0)?);
        if x.dims() != expected.as_slice() {
            return Err(ModelError::Config(format!(
                "input has shape {:?}, the model takes {:?}",
                x.dims(),
                expected
            )));
        }
        let last = self.spec.layers().len().saturating_sub(1);
        let fast = self.kernels == Kernels::Fast && x.device().is_cpu() && x.dtype() == DType::F32;
        let mut x = x.clone();
        let layers = self.spec.layers();
        let mut i = 0;
        // Fused blocks hand the next fused block channels-last images; nothing else sees them.
        let mut layout = ops::ImageLayout::Nchw;
        while i < layers.len() {
            let skip_softmax = skip_final_softmax && i == last;
            if fast {
                if let Some((y, used, y_layout)) = fast_layers(
                    &layers[i..],
                    &self.weights[i..],
                    (&x, layout),
                    &mut mode,
                    skip_softmax,
                )? {
                    (x, layout) = (y, y_layout);
                    i += used;
                    continue;
                }
            }
            x = forward_layer(&layers[i], &self.weights[i], &x, &mut mode, skip_softmax)?;
            i += 1;
        }
        Ok(x)
    }
}

/// Glorot's fan-in and fan-out for a kernel in candle's layout.
fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [out, inp, kh, kw] => (inp * kh * kw, out * kh * kw),
        [inp, out] => (*inp, *out),
        _ => (1, 1),
    }
}

fn activate(x: Tensor, a: Activation, skip_softmax: bool) -> Result<Tensor> {
    Ok(match a {
        Activation::Linear => x,
        Activation::Relu => x.relu()?,
        Activation::Softmax if skip_softmax => x,
        Activation::Softmax => candle_nn::ops::softmax_last_dim(&x)?,
    })
}

/// The geometry [`crate::ops`] needs for a Conv2D layer on input `(c, h, w)`.
fn conv_shape(
    layer: &LayerSpec,
    cfg: &Conv2dConfig,
    (c, h, w): (usize, usize, usize),
) -> Result<ops::ConvShape> {
    let pads = |len, k, s| cfg.padding.output_len(len, k, s).map(|(_, a, b)| (a, b));
    pads(h, cfg.kernel_size.0, cfg.strides.0)
        .zip(pads(w, cfg.kernel_size.1, cfg.strides.1))
        .and_then(|padding| {
            ops::ConvShape::new(
                (c, h, w),
                cfg.filters,
                cfg.kernel_size,
                cfg.strides,
                padding,
            )
        })
        .ok_or_else(|| ModelError::Shape {
            layer: layer.name.clone(),
            message: format!("input (C, H, W) = ({c}, {h}, {w}) is too small"),
        })
}

fn pool_shape(
    layer: &LayerSpec,
    cfg: &Pool2dConfig,
    (h, w): (usize, usize),
) -> Result<ops::PoolShape> {
    ops::PoolShape::new((h, w), cfg.pool_size, cfg.strides).ok_or_else(|| ModelError::Shape {
        layer: layer.name.clone(),
        message: format!("input {h}x{w} is smaller than the pool"),
    })
}

/// Whether `layers` start with a Conv2D that [`fast_layers`] can feed channels-last images:
/// one with a linear or ReLU activation, on its own or fused with its pool.
fn takes_channels_last(layers: &[LayerSpec]) -> bool {
    matches!(
        layers.first().map(|l| &l.kind),
        Some(LayerKind::Conv2d(cfg)) if cfg.activation != Activation::Softmax
    )
}

/// Channels-last when the layers that follow take it, else NCHW.
fn output_layout(next: &[LayerSpec]) -> ops::ImageLayout {
    match takes_channels_last(next) {
        true => ops::ImageLayout::Nhwc,
        false => ops::ImageLayout::Nchw,
    }
}

/// The next layer or layers as [`crate::ops`] computes them on the CPU, how many layers that
/// took and the output's layout: Conv2D → MaxPool2D (→ Dropout) fused, or one Conv2D,
/// MaxPool2D or Dropout; `None` where candle's ops do the work. Only a Conv2D (with its pool,
/// or alone) takes or gives channels-last images, and gives them only to the next Conv2D.
fn fast_layers(
    layers: &[LayerSpec],
    weights: &[Vec<NamedWeight>],
    (x, layout): (&Tensor, ops::ImageLayout),
    mode: &mut Mode<'_>,
    skip_softmax: bool,
) -> Result<Option<(Tensor, usize, ops::ImageLayout)>> {
    let nchw = ops::ImageLayout::Nchw;
    if layout != nchw && !takes_channels_last(layers) {
        return Err(ModelError::Config(format!(
            "layer {}: internal error, channels-last input outside a fused block",
            layers[0].name
        )));
    }
    let mut dropout_mask = |rate: f32, len: usize| match mode {
        Mode::Training(rng) if rate > 0.0 => Some(rng.mask(len, rate)),
        _ => None,
    };
    if let LayerKind::Dropout { rate } = layers[0].kind {
        return Ok(dropout_mask(rate, x.elem_count())
            .map(|m| ops::dropout(x, m).map(|y| (y, 1, nchw)))
            .transpose()?);
    }
    let (n, c, h, w) = match (x.dims(), layout) {
        (&[n, c, h, w], ops::ImageLayout::Nchw) => (n, c, h, w),
        (&[n, h, w, c], ops::ImageLayout::Nhwc) => (n, c, h, w),
        _ => return Ok(None),
    };
    Ok(match &layers[0].kind {
        LayerKind::Conv2d(cfg) if cfg.activation != Activation::Softmax => {
            let conv = conv_shape(&layers[0], cfg, (c, h, w))?;
            let (kernel, bias) = (weights[0][0].var.as_tensor(), weights[0][1].var.as_tensor());
            let relu = cfg.activation == Activation::Relu;
            match layers.get(1).map(|l| &l.kind) {
                Some(LayerKind::MaxPool2d(p)) => {
                    let pool = pool_shape(&layers[1], p, (conv.out_h, conv.out_w))?;
                    let out_len = n * conv.out_channels * pool.out_h * pool.out_w;
                    let (mask, used) = match layers.get(2).map(|l| &l.kind) {
                        Some(LayerKind::Dropout { rate }) => (dropout_mask(*rate, out_len), 3),
                        _ => (None, 2),
                    };
                    let output = output_layout(&layers[used..]);
                    let block = ops::ConvPoolShape {
                        conv,
                        pool,
                        relu,
                        input: layout,
                        output,
                    };
                    let training = matches!(mode, Mode::Training(_));
                    let y = ops::conv_pool(x, kernel, bias, block, mask, training)?;
                    Some((y, used, output))
                }
                _ => {
                    let output = output_layout(&layers[1..]);
                    let layouts = (layout, output);
                    let y = ops::conv2d_with_layouts(x, kernel, bias, conv, relu, layouts)?;
                    Some((y, 1, output))
                }
            }
        }
        LayerKind::Conv2d(cfg) => {
            let conv = conv_shape(&layers[0], cfg, (c, h, w))?;
            let (kernel, bias) = (weights[0][0].var.as_tensor(), weights[0][1].var.as_tensor());
            let y = ops::conv2d(x, kernel, bias, conv, false)?;
            Some((activate(y, cfg.activation, skip_softmax)?, 1, nchw))
        }
        LayerKind::MaxPool2d(p) => {
            let pool = pool_shape(&layers[0], p, (h, w))?;
            Some((ops::max_pool2d(x, pool)?, 1, nchw))
        }
        _ => None,
    })
}

fn forward_layer(
    layer: &LayerSpec,
    ws: &[NamedWeight],
    x: &Tensor,
    mode: &mut Mode<'_>,
    skip_softmax: bool,
) -> Result<Tensor> {
    Ok(match &layer.kind {
        LayerKind::Input => x.clone(),
        LayerKind::Conv2d(c) => {
            let (kernel, bias) = (ws[0].var.as_tensor(), ws[1].var.as_tensor());
            let (_, _, h, w) = x.dims4()?;
            let pad_h = c.padding.output_len(h, c.kernel_size.0, c.strides.0);
            let pad_w = c.padding.output_len(w, c.kernel_size.1, c.strides.1);
            let ((_, top, bottom), (_, left, right)) =
                (pad_h.expect("checked"), pad_w.expect("checked"));
            let y =
                if c.padding == Padding::Same && !(top == bottom && left == right && top == left) {
                    // Asymmetric or unequal padding: pad explicitly, candle pads symmetrically.
                    let xp = x
                        .pad_with_zeros(2, top, bottom)?
                        .pad_with_zeros(3, left, right)?;
                    conv(&xp, kernel, 0, c.strides)?
                } else {
                    conv(x, kernel, top, c.strides)?
                };
            let y = y.broadcast_add(&bias.reshape((1, c.filters, 1, 1))?)?;
            activate(y, c.activation, skip_softmax)?
        }
        LayerKind::MaxPool2d(p) => max_pool(x, p.pool_size, p.strides)?,
        LayerKind::AvgPool2d(p) => x.avg_pool2d_with_stride(p.pool_size, p.strides)?,
        LayerKind::Dropout { rate } => match mode {
            Mode::Training(rng) if *rate > 0.0 => {
                let mask = rng.mask(x.elem_count(), *rate);
                let mask = Tensor::from_vec(mask, x.dims(), x.device())?;
                (x * mask)?
            }
            _ => x.clone(),
        },
        LayerKind::Flatten => x.flatten_from(1)?,
        LayerKind::BatchNorm { epsilon, .. } => {
            if matches!(mode, Mode::Training(_)) {
                return Err(ModelError::Config(format!(
                    "layer {}: BatchNormalization runs in inference only; training a model \
                     with it is not supported yet",
                    layer.name
                )));
            }
            // Per-channel statistics broadcast over (N, C, H, W) or (N, C).
            let mut shape = vec![1; x.rank()];
            shape[1] = x.dim(1)?;
            let p = |i: usize| ws[i].var.as_tensor().reshape(shape.as_slice());
            let (gamma, beta, mean, var) = (p(0)?, p(1)?, p(2)?, p(3)?);
            let scale = gamma.broadcast_div(&(var + *epsilon as f64)?.sqrt()?)?;
            x.broadcast_sub(&mean)?
                .broadcast_mul(&scale)?
                .broadcast_add(&beta)?
        }
        LayerKind::Dense { activation, .. } => {
            let (kernel, bias) = (ws[0].var.as_tensor(), ws[1].var.as_tensor());
            let y = x.matmul(kernel)?.broadcast_add(bias)?;
            activate(y, *activation, skip_softmax)?
        }
    })
}

/// Max pooling from candle's ops with the right gradient, for CUDA and `Kernels::Candle`.
/// candle 0.11.1's `max_pool2d` backward divides the gradient by the window size and
/// misplaces it when the input is not a multiple of the pool (tests/cpu_ops.rs pins both).
/// Windows that do not overlap are a crop to whole windows (Keras' "valid" pooling drops the
/// rest), a reshape and two max reductions, whose backward sends the gradient to the maxima;
/// overlapping windows keep candle's op.
fn max_pool(x: &Tensor, (ph, pw): (usize, usize), (sh, sw): (usize, usize)) -> Result<Tensor> {
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

fn conv(x: &Tensor, kernel: &Tensor, padding: usize, strides: (usize, usize)) -> Result<Tensor> {
    if strides.0 == strides.1 {
        return Ok(x.conv2d(kernel, padding, strides.0, 1, 1)?);
    }
    // candle takes one stride for both axes: for unequal strides, convolve with stride 1 and
    // keep every s-th row and column (exact, only slower).
    let y = x.conv2d(kernel, padding, 1, 1, 1)?;
    let (_, _, h, w) = y.dims4()?;
    let rows: Vec<u32> = (0..h).step_by(strides.0).map(|i| i as u32).collect();
    let cols: Vec<u32> = (0..w).step_by(strides.1).map(|i| i as u32).collect();
    let rows = Tensor::new(rows.as_slice(), x.device())?;
    let cols = Tensor::new(cols.as_slice(), x.device())?;
    Ok(y.index_select(&rows, 2)?.index_select(&cols, 3)?)
}

/// Index of the largest value in each row of `(N, classes)` probabilities or logits.
pub fn argmax(x: &Tensor) -> Result<Tensor> {
    Ok(x.argmax(D::Minus1)?)
}
