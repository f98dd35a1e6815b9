//! `Model`: a [`Network`] with its weights on a device, and the forward pass.

use std::collections::BTreeSet;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use simplecnn_collective::{Collective, SingleProcess};

use crate::error::{ModelError, Result};
use crate::layers::{Activation, ForwardCtx, Init, LayerKind, WeightRole};
use crate::network::Network;
use crate::ops;
use crate::ops::Precision;
use crate::plan::{self, Op, Step};

/// One weight tensor: the layer it belongs to, its role and Keras name (`kernel`, `bias`), the
/// variable.
#[derive(Clone, Debug)]
pub struct NamedWeight {
    pub layer: String,
    pub name: &'static str,
    pub role: WeightRole,
    pub var: Var,
    /// False for BatchNormalization's moving statistics, which no optimizer updates.
    pub trainable: bool,
}

impl NamedWeight {
    /// `layer/name`: how optimizers, checkpoints and files name this weight.
    pub fn path(&self) -> String {
        format!("{}/{}", self.layer, self.name)
    }
}

/// What a training pass needs beyond its images: where they lie (this process' share of a
/// global batch, at a position in the epoch) and the seed of its random draws.
///
/// Dropout masks are a function of (seed, the mask's place among the pass' draws, the image's
/// position in the epoch): image `p`'s values of the `k`-th mask a pass draws are ChaCha8's
/// words from `p · len` on stream `k`, so a process draws for its own images only and the
/// masks do not depend on how a batch is split. Seeded, so training runs repeat exactly on CPU
/// (candle's own CPU random numbers cannot be seeded).
#[derive(Clone, Debug)]
pub struct TrainingPass {
    rng: ChaCha8Rng,
    /// The epoch position of this process' first image.
    position: u64,
    /// Masks drawn since the batch began.
    draws: u64,
    shard: ops::BatchShard,
    /// Weights (`layer/name`) the optimizer leaves alone in this pass.
    frozen: Arc<BTreeSet<String>>,
}

impl TrainingPass {
    /// One process, its batch at the start of an epoch whose draws `seed` decides.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            position: 0,
            draws: 0,
            shard: ops::BatchShard::whole(),
            frozen: Arc::default(),
        }
    }

    /// With `frozen` weights (`layer/name`, as `fit.freeze` names them): the forward takes
    /// them as constants, so the backward computes no gradient for them, nor the gradients
    /// that only they need (airbench94's first convolution, frozen from epoch 4: the second
    /// convolution's input gradient and the first one's whole backward).
    pub fn with_frozen(mut self, frozen: BTreeSet<String>) -> Self {
        self.frozen = Arc::new(frozen);
        self
    }

    /// Begins a batch: this process' images start at `position` in the epoch and are
    /// `shard`'s part of the global batch.
    pub fn start_batch(&mut self, position: u64, shard: ops::BatchShard) {
        self.position = position;
        self.draws = 0;
        self.shard = shard;
    }

    /// This process' place in the global batch.
    pub fn shard(&self) -> &ops::BatchShard {
        &self.shard
    }

    /// A keep-mask for `images` images of `per_image` values, scaled by `1 / (1 - rate)`:
    /// each value is 0 with probability `rate`.
    pub(crate) fn mask(&mut self, images: usize, per_image: usize, rate: f32) -> Vec<f32> {
        let keep = 1.0 / (1.0 - rate);
        // Compare 24-bit uniforms against the threshold: exact for any f32 rate. The words
        // come in one `fill` (the same sequence as `next_u32` calls, much faster): this
        // process' images are consecutive positions.
        let threshold = (rate as f64 * (1u64 << 24) as f64) as u32;
        self.rng.set_stream(self.draws);
        self.rng
            .set_word_pos(self.position as u128 * per_image as u128);
        self.draws += 1;
        let mut bits = vec![0u32; images * per_image];
        self.rng.fill(bits.as_mut_slice());
        bits.iter()
            .map(|&b| if b >> 8 >= threshold { keep } else { 0.0 })
            .collect()
    }
}

/// How a step takes its weights: tracked (the backward computes their gradients) only where
/// gradients are tracked at all and the weight trains in this pass; otherwise as constants.
struct WeightUse {
    gradients: bool,
    frozen: Option<Arc<BTreeSet<String>>>,
}

impl WeightUse {
    fn value(&self, w: &NamedWeight) -> Tensor {
        let frozen = self.frozen.as_ref().is_some_and(|f| f.contains(&w.path()));
        match self.gradients && w.trainable && !frozen {
            true => w.var.as_tensor().clone(),
            false => w.var.as_tensor().detach(),
        }
    }
}

/// Training behaviour (dropout active, drawing from the rng) or inference. Whether gradients
/// are tracked is a separate choice ([`Model::logits_with`]).
pub enum Mode<'a> {
    Inference,
    Training(&'a mut TrainingPass),
}

impl<'a> Mode<'a> {
    pub fn is_training(&self) -> bool {
        matches!(self, Mode::Training(_))
    }

    /// The layers' view of the mode.
    fn context(self) -> ForwardCtx<'a> {
        ForwardCtx {
            training: match self {
                Mode::Training(rng) => Some(rng),
                Mode::Inference => None,
            },
            skip_softmax: false,
        }
    }
}

/// A network with its weights: what `fit`, `evaluate`, `predict` and `save` work on.
#[derive(Clone, Debug)]
pub struct Model {
    spec: Network,
    /// Per layer, its weights in Keras' order (kernel, bias); empty for weightless layers.
    weights: Vec<Vec<NamedWeight>>,
    device: Device,
    kernels: Kernels,
    /// The convolutions' products on the fast path: f32, or bf16 operands with f32 sums.
    precision: Precision,
    /// The CPU kernels' steps (fusion and layouts), made once; `None` unless `Kernels::Fast`
    /// on the CPU.
    fast_plan: Option<Vec<Step>>,
    candle_plan: Vec<Step>,
    /// The processes that train this model together (one, unless a data-parallel run).
    processes: Processes,
}

/// The processes of a data-parallel run, as the model holds them.
#[derive(Clone)]
struct Processes(Arc<dyn Collective>);

impl std::fmt::Debug for Processes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {}", self.0.rank(), self.0.size())
    }
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
    /// Creates the weights with Keras' initialisers (Glorot-uniform kernels, zero biases, ones
    /// for gamma and the moving variance), drawn in layer order from a generator seeded with
    /// `seed`.
    pub fn new(spec: Network, device: &Device, seed: u64) -> Result<Self> {
        // Each weight is within the per-tensor limit; all of them must fit too.
        crate::memory::check_memory(
            &crate::memory::MemoryNeed::weights_of(&spec),
            &format!("model {:?}", spec.name()),
        )?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut weights = Vec::with_capacity(spec.layers().len());
        for layer in spec.layers() {
            let mut ws = Vec::new();
            for w in layer.kind.weights(&layer.input) {
                let n = w.elem_count();
                let values: Vec<f32> = match w.init {
                    Init::GlorotUniform => {
                        let (fan_in, fan_out) = fans(&w.shape);
                        let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
                        (0..n).map(|_| rng.random_range(-limit..limit)).collect()
                    }
                    Init::FanInUniform(scale) => {
                        let (fan_in, _) = fans(&w.shape);
                        let limit = (3.0 * scale.value() / fan_in as f64).sqrt() as f32;
                        (0..n).map(|_| rng.random_range(-limit..limit)).collect()
                    }
                    Init::FanOutUniform(scale) => {
                        let (_, fan_out) = fans(&w.shape);
                        let limit = (3.0 * scale.value() / fan_out as f64).sqrt() as f32;
                        (0..n).map(|_| rng.random_range(-limit..limit)).collect()
                    }
                    Init::TruncatedNormal { scale, mode } => {
                        let (fan_in, fan_out) = fans(&w.shape);
                        let fan = mode.fan(fan_in, fan_out);
                        // Keras' constant: the standard deviation of a unit normal cut at ±2.
                        let std = (scale.value() / fan).sqrt() / 0.879_625_661_034_239_8;
                        (0..n)
                            .map(|_| (truncated_normal(&mut rng) * std) as f32)
                            .collect()
                    }
                    Init::Ones => vec![1.0; n],
                    Init::Zeros => vec![0.0; n],
                    Init::Constant { bits } => vec![f32::from_bits(bits); n],
                };
                let var = Var::from_tensor(&Tensor::from_vec(values, w.shape, device)?)?;
                ws.push(NamedWeight {
                    layer: layer.name.clone(),
                    name: w.role.keras_name(),
                    role: w.role,
                    var,
                    trainable: w.role.trainable() && layer.trainable,
                });
            }
            weights.push(ws);
        }
        let mut model = Self {
            candle_plan: plan::candle_plan(&spec),
            fast_plan: None,
            spec,
            weights,
            device: device.clone(),
            kernels: Kernels::default(),
            precision: Precision::default(),
            processes: Processes(Arc::new(SingleProcess)),
        };
        model.set_kernels(Kernels::default())?;
        Ok(model)
    }

    /// Chooses the convolution and pooling kernels (see [`Kernels`]) and plans the fast path
    /// once; the weights stay.
    pub fn set_kernels(&mut self, kernels: Kernels) -> Result<()> {
        self.kernels = kernels;
        self.fast_plan = match (kernels, self.device.is_cpu()) {
            (Kernels::Fast, true) => Some(plan::fast_plan(&self.spec, self.precision)?),
            _ => None,
        };
        Ok(())
    }

    /// Keras' `layer.trainable = …`: the layer's weights join or leave the trainable set (an
    /// optimizer built afterwards sees the change), and a frozen BatchNormalization runs in
    /// inference mode.
    pub fn set_trainable(&mut self, layer: &str, trainable: bool) -> Result<()> {
        self.spec.set_trainable(layer, trainable)?;
        for w in self
            .weights
            .iter_mut()
            .flatten()
            .filter(|w| w.layer == layer)
        {
            w.trainable = trainable && w.role.trainable();
        }
        Ok(())
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Keras' dtype policy for the convolutions' and Dense layers' matrix products on the CPU
    /// fast path: [`Precision::MixedBf16`] rounds their operands (images, kernels, gradients)
    /// to bf16 and sums in f32, forward and backward; weights, optimizer state, BatchNorm,
    /// the loss and the softmax stay f32. Other paths (CUDA, `Kernels::Candle`) compute in f32.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        self.precision = precision;
        self.set_kernels(self.kernels)
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Trains this model together with the other processes of `collective` (as Keras builds
    /// a model inside a distribution strategy's scope): each process takes its share of every
    /// global batch, and the sums over a batch are folded across them in a fixed order.
    pub fn set_collective(&mut self, collective: Arc<dyn Collective>) {
        self.processes = Processes(collective);
    }

    /// The processes training this model (one by default).
    pub fn collective(&self) -> Arc<dyn Collective> {
        self.processes.0.clone()
    }

    /// The layers whose weight gradients come from candle's ops (summed over the batch in an
    /// order this process' share decides): what a run on several processes cannot train
    /// exactly. Empty on the CPU fast path for the layers `ops` covers.
    pub fn layers_without_exact_batch_sums(&self) -> Vec<String> {
        let layers = self.spec.layers();
        let plan = match (&self.fast_plan, self.device.is_cpu()) {
            (Some(plan), true) => plan.as_slice(),
            _ => self.candle_plan.as_slice(),
        };
        plan.iter()
            .filter_map(|step| match step.op {
                Op::Layer(i) | Op::Depthwise { layer: i, .. } => Some(i),
                _ => None,
            })
            .filter(|&i| self.weights[i].iter().any(|w| w.trainable))
            .map(|i| layers[i].name.clone())
            .collect()
    }

    pub fn spec(&self) -> &Network {
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

    /// The weight at `layer/name`, if the model has it.
    pub fn weight(&self, layer: &str, name: &str) -> Option<&NamedWeight> {
        self.weights().find(|w| w.layer == layer && w.name == name)
    }

    /// Replaces one weight's values (shape-checked), e.g. from a file.
    pub fn set_weight(&self, layer: &str, name: &str, value: &Tensor) -> Result<()> {
        let w = self
            .weight(layer, name)
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

    /// What reaches layer `layer` (its first input) when the model runs on `x`: the layers
    /// before it on candle's ops.
    pub fn features_before(&self, x: &Tensor, layer: &str, mode: Mode<'_>) -> Result<Tensor> {
        let index = self
            .spec
            .index_of(layer)
            .ok_or_else(|| ModelError::Config(format!("no layer {layer}")))?;
        let wanted = plan::value_of(self.spec.layers()[index].sources[0]);
        let mut ctx = mode.context();
        let mut values = vec![None; self.spec.layers().len() + 1];
        values[0] = Some(x.clone());
        for step in self.candle_plan.iter().take(index) {
            let inputs = gather(&values, &step.inputs)?;
            let (y, _) = self.run_step(&step.op, &inputs, None, &mut ctx, false, None)?;
            values[step.output] = Some(y);
        }
        values[wanted]
            .clone()
            .ok_or_else(|| ModelError::Config(format!("internal error: no input for {layer}")))
    }

    /// Class probabilities (the last layer's activation applied).
    pub fn forward(&self, x: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        let track = mode.is_training();
        self.run(x, mode, track, false)
    }

    /// The last layer's output before its softmax: what a stable cross-entropy wants.
    /// Gradients are tracked in training mode.
    pub fn logits(&self, x: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        let track = mode.is_training();
        self.run(x, mode, track, true)
    }

    /// [`Model::logits`] with gradient tracking chosen apart from the mode: inference
    /// behaviour (no dropout) whose gradients still flow, or training behaviour without a
    /// backward pass.
    pub fn logits_with(&self, x: &Tensor, mode: Mode<'_>, track_gradients: bool) -> Result<Tensor> {
        self.run(x, mode, track_gradients, true)
    }

    fn run(
        &self,
        x: &Tensor,
        mode: Mode<'_>,
        track_gradients: bool,
        skip_final_softmax: bool,
    ) -> Result<Tensor> {
        let expected = self.spec.input_shape().batch_dims(x.dim(0)?);
        if x.dims() != expected.as_slice() {
            return Err(ModelError::Config(format!(
                "input has shape {:?}, the model takes {:?}",
                x.dims(),
                expected
            )));
        }
        let layers = self.spec.layers();
        let last = layers.len().saturating_sub(1);
        let fast = self.kernels == Kernels::Fast && x.device().is_cpu() && x.dtype() == DType::F32;
        let plan = match (fast, &self.fast_plan) {
            (true, Some(plan)) => plan.as_slice(),
            _ => self.candle_plan.as_slice(),
        };
        let mut ctx = mode.context();
        // Value 0 is the input, value i + 1 layer i's output; each is dropped after its last
        // use (the plan says when).
        let mut values: Vec<Option<Tensor>> = vec![None; layers.len() + 1];
        // Per-image sums a convolution made of its output for the BatchNormalization after it.
        let mut sums: Vec<Option<ops::ImageSums>> = vec![None; layers.len() + 1];
        values[0] = Some(x.clone());
        let skip_softmax_of = skip_final_softmax.then_some(last);
        for step in plan {
            let inputs = gather(&values, &step.inputs)?;
            let input_sums = sums[step.inputs[0]].take();
            let (y, made) = self.run_step(
                &step.op,
                &inputs,
                input_sums,
                &mut ctx,
                track_gradients,
                skip_softmax_of,
            )?;
            values[step.output] = Some(y);
            sums[step.output] = made;
            for &v in &step.release {
                values[v] = None;
                sums[v] = None;
            }
        }
        values[layers.len()]
            .take()
            .ok_or_else(|| ModelError::Config("internal error: the plan gave no output".into()))
    }

    fn layer_vars(&self, layer: usize) -> Vec<Var> {
        self.weights[layer].iter().map(|w| w.var.clone()).collect()
    }

    /// One step of the plan on its inputs (and the per-image sums of the first, when the step
    /// before made them); gives its output, and the sums of that output when this step is a
    /// convolution whose BatchNormalization wants them. `skip_softmax_of` is the layer whose
    /// softmax is left out (the last, when logits are wanted).
    fn run_step(
        &self,
        step: &Op,
        inputs: &[Tensor],
        input_sums: Option<ops::ImageSums>,
        ctx: &mut ForwardCtx<'_>,
        track_gradients: bool,
        skip_softmax_of: Option<usize>,
    ) -> Result<(Tensor, Option<ops::ImageSums>)> {
        let layers = self.spec.layers();
        let x = &inputs[0];
        let weights = WeightUse {
            gradients: track_gradients,
            frozen: ctx.training.as_deref().map(|pass| pass.frozen.clone()),
        };
        // A convolution without bias runs the CPU kernels with zeros for it.
        let kernel_bias = |i: usize| -> Result<(Tensor, Tensor)> {
            let ws = &self.weights[i];
            let kernel = weights.value(&ws[0]);
            let bias = match ws.get(1) {
                Some(b) => weights.value(b),
                None => Tensor::zeros(kernel.dim(0)?, kernel.dtype(), kernel.device())?,
            };
            Ok((kernel, bias))
        };
        let n = x.dim(0)?;
        let shard = match ctx.training.as_deref() {
            Some(pass) => pass.shard().clone(),
            None => ops::BatchShard::whole(),
        };
        // A BatchNormalization takes the batch's statistics in training unless it is frozen.
        let training = ctx.is_training();
        let batch_statistics = |norm: usize| training && layers[norm].trainable;
        let mut mask = |rate: f32, len: usize| match ctx.training.as_deref_mut() {
            Some(pass) if rate > 0.0 && n > 0 => Some(pass.mask(n, len / n, rate)),
            _ => None,
        };
        let mut made_sums = None;
        let y = match *step {
            Op::Layer(i) => {
                let l = &layers[i];
                ctx.skip_softmax = skip_softmax_of == Some(i);
                let frozen_norm = !l.trainable && matches!(l.kind, LayerKind::BatchNorm(_));
                let mut inference = ForwardCtx {
                    training: None,
                    skip_softmax: ctx.skip_softmax,
                };
                // A frozen BatchNormalization runs in inference mode (Keras' rule).
                let ctx = match frozen_norm {
                    true => &mut inference,
                    false => ctx,
                };
                l.kind
                    .layer()
                    .forward_all(inputs, &self.layer_vars(i), ctx)
                    .map_err(|e| e.in_layer(&l.name))?
            }
            Op::ConvPool {
                layer,
                layers: used,
                block,
                dropout,
            } => {
                let out_len = n * block.conv.out_channels * block.pool.out_h * block.pool.out_w;
                let mask = dropout.and_then(|rate| mask(rate, out_len));
                let (kernel, bias) = kernel_bias(layer)?;
                debug_assert!(used >= 2);
                ops::conv_pool(x, &kernel, &bias, block, mask, track_gradients, &shard)?
            }
            Op::Conv {
                layer,
                shape,
                relu,
                layouts,
                norm,
            } => {
                let (kernel, bias) = kernel_bias(layer)?;
                match norm.is_some_and(batch_statistics) {
                    true => {
                        let (y, sums) =
                            ops::conv2d_with_sums(x, &kernel, &bias, shape, relu, layouts, &shard)?;
                        made_sums = Some(sums);
                        y
                    }
                    false => {
                        ops::conv2d_with_layouts(x, &kernel, &bias, shape, relu, layouts, &shard)?
                    }
                }
            }
            Op::ConvThen {
                layer,
                shape,
                activation,
            } => {
                let (kernel, bias) = kernel_bias(layer)?;
                let layouts = Default::default();
                let y = ops::conv2d_with_layouts(x, &kernel, &bias, shape, false, layouts, &shard)?;
                match activation {
                    Activation::Gelu => ops::gelu(&y, track_gradients)?,
                    _ => activation.apply(y, skip_softmax_of == Some(layer))?,
                }
            }
            Op::BatchNorm {
                layer,
                activation,
                layout,
                join,
                ..
            } => {
                let shard = batch_statistics(layer).then_some(&shard);
                let norm = NormStep {
                    activation,
                    layout,
                    training: shard,
                    sums: input_sums,
                    residual: join.and(inputs.get(1)),
                };
                self.batch_norm_step(layer, x, norm, &weights)?
            }
            Op::MaxPool { shape, .. } => ops::max_pool2d(x, shape)?,
            Op::Depthwise { layer, shape } => {
                let LayerKind::DepthwiseConv2d(d) = &layers[layer].kind else {
                    return Err(ModelError::Config(format!(
                        "layer {}: internal error, not a DepthwiseConv2D",
                        layers[layer].name
                    )));
                };
                let ws = &self.weights[layer];
                let y = ops::depthwise_conv2d(x, &weights.value(&ws[0]), shape)?;
                let bias = ws.get(1).map(|b| weights.value(b));
                d.finish(y, bias.as_ref(), skip_softmax_of == Some(layer))?
            }
            Op::Dense {
                layer,
                activation,
                precision,
            } => {
                let ws = &self.weights[layer];
                let kernel = weights.value(&ws[0]);
                let bias = match ws.get(1) {
                    Some(b) => weights.value(b),
                    None => Tensor::zeros(kernel.dim(1)?, kernel.dtype(), kernel.device())?,
                };
                let y = ops::dense_in(x, &kernel, &bias, &shard, precision)?;
                activation.apply(y, skip_softmax_of == Some(layer))?
            }
            Op::AddRelu { .. } => ops::add_relu(x, &inputs[1])?,
            Op::Dropout { rate, .. } => match mask(rate, x.elem_count()) {
                Some(m) => ops::dropout(x, m)?,
                None => x.clone(),
            },
        };
        Ok((y, made_sums))
    }
}

impl Model {
    /// A BatchNormalization layer (and its activation) on [`ops::batch_norm`]: the global
    /// batch's statistics and the moving averages' update (Keras' rule) in training (`shard`
    /// given), the moving statistics otherwise.
    fn batch_norm_step(
        &self,
        layer: usize,
        x: &Tensor,
        NormStep {
            activation,
            layout,
            training,
            sums,
            residual,
        }: NormStep<'_>,
        weights: &WeightUse,
    ) -> Result<Tensor> {
        let track_gradients = weights.gradients;
        let l = &self.spec.layers()[layer];
        let LayerKind::BatchNorm(cfg) = &l.kind else {
            return Err(ModelError::Config(format!(
                "layer {}: internal error, not a BatchNormalization",
                l.name
            )));
        };
        let ws = &self.weights[layer];
        let role = |r: WeightRole| ws.iter().find(|w| w.role == r);
        let c = l.input.channels();
        let param = |r: WeightRole, fill: f32| -> Result<Tensor> {
            Ok(match role(r) {
                Some(w) => weights.value(w),
                None => Tensor::full(fill, c, &self.device)?,
            })
        };
        let (gamma, beta) = (
            param(WeightRole::Gamma, 1.0)?,
            param(WeightRole::Beta, 0.0)?,
        );
        let (Some(moving_mean), Some(moving_var)) = (
            role(WeightRole::MovingMean),
            role(WeightRole::MovingVariance),
        ) else {
            return Err(ModelError::Config(format!(
                "layer {}: no moving statistics",
                l.name
            )));
        };
        let statistics = match (training, sums) {
            (Some(shard), Some(sums)) => ops::NormStatistics::Summed(shard.clone(), sums.into()),
            (Some(shard), None) => ops::NormStatistics::Batch(shard.clone()),
            (None, _) => ops::NormStatistics::Fixed {
                mean: moving_mean.var.as_tensor().to_vec1::<f32>()?,
                variance: moving_var.var.as_tensor().to_vec1::<f32>()?,
            },
        };
        let spec = ops::NormSpec {
            epsilon: cfg.epsilon,
            activation,
            layout,
        };
        let (y, moments) = match residual {
            Some(r) => {
                ops::batch_norm_add_relu(x, &gamma, &beta, r, statistics, spec, track_gradients)
            }
            None => ops::batch_norm(x, &gamma, &beta, statistics, spec, track_gradients),
        }
        .map_err(|e| ModelError::from(e).in_layer(&l.name))?;
        if let Some(m) = moments {
            let momentum = cfg.momentum;
            for (moving, batch) in [(moving_mean, m.mean), (moving_var, m.variance)] {
                let old = moving.var.as_tensor().to_vec1::<f32>()?;
                let new: Vec<f32> = old
                    .iter()
                    .zip(&batch)
                    .map(|(o, b)| momentum * o + (1.0 - momentum) * b)
                    .collect();
                moving.var.set(&Tensor::from_vec(new, c, &self.device)?)?;
            }
        }
        Ok(y)
    }
}

/// How a BatchNormalization step runs: its fused activation, its images' layout, the batch it
/// takes its statistics from in training, their per-image sums when the convolution before
/// made them, and the residual it joins (then a ReLU follows) when it ends a residual block.
struct NormStep<'a> {
    activation: ops::NormActivation,
    layout: ops::ImageLayout,
    training: Option<&'a ops::BatchShard>,
    sums: Option<ops::ImageSums>,
    residual: Option<&'a Tensor>,
}

/// The tensors of `ids` among the values computed so far.
fn gather(values: &[Option<Tensor>], ids: &[usize]) -> Result<Vec<Tensor>> {
    ids.iter()
        .map(|&v| {
            values[v].clone().ok_or_else(|| {
                ModelError::Config(format!("internal error: value {v} is not computed"))
            })
        })
        .collect()
}

/// Index of the largest value in each row of `(N, classes)` probabilities or logits.
pub fn argmax(x: &Tensor) -> Result<Tensor> {
    Ok(x.argmax(D::Minus1)?)
}

/// A standard normal draw (Box–Muller) redrawn until it lies within ±2.
fn truncated_normal(rng: &mut ChaCha8Rng) -> f64 {
    loop {
        let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.random_range(0.0..1.0);
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        if z.abs() <= 2.0 {
            return z;
        }
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
