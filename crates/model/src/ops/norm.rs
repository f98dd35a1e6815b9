//! BatchNormalization (statistics per channel, on NCHW or channels-last images) with the
//! activation after it fused in, and GELU on its own: one op each with its own backward, in
//! plain loops over f32. Both layouts give the same bits: the channels-last kernels keep the
//! NCHW ones' 16 lanes per channel (lane = position mod 16) and their order of additions.
//!
//! On candle's ops a training BatchNormalization → GELU is a dozen broadcast tensors, each
//! kept for the backward pass (about five times the layer's output in memory, and as many
//! passes over it); here the forward keeps only its input and output, and the backward makes
//! two passes: one for the per-channel sums, one for the input gradient.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;
use super::conv::ImageLayout;
use super::handoff::Handoff;
use super::join::{add_relu_grad_value, add_relu_value};
use super::shard::{BatchShard, GROUP_CHUNK};

/// The activation applied after the normalisation, inside the same op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormActivation {
    Linear,
    Relu,
    Gelu,
}

/// Images per chunk of the per-channel sums: fixed, so that the sums (and so the results)
/// depend on neither the thread count nor the process count.
const CHUNK_IMAGES: usize = GROUP_CHUNK;

/// Where the normalisation's statistics come from.
#[derive(Clone, Debug)]
pub enum NormStatistics {
    /// The global batch's mean and biased variance per channel (training), this process
    /// holding the shard's images; the op hands them back for the moving averages.
    Batch(BatchShard),
    /// Given per-channel mean and variance (inference, or a frozen layer).
    Fixed { mean: Vec<f32>, variance: Vec<f32> },
    /// As [`NormStatistics::Batch`], from per-image sums the op that wrote the images made
    /// while they were in cache ([`image_sums`]): the same sums, so the same bits, without
    /// another pass over the batch.
    Summed(BatchShard, Arc<ImageSums>),
}

impl NormStatistics {
    /// The shard of the batch whose statistics these are, in training.
    fn batch(&self) -> Option<&BatchShard> {
        match self {
            NormStatistics::Batch(shard) | NormStatistics::Summed(shard, _) => Some(shard),
            NormStatistics::Fixed { .. } => None,
        }
    }
}

/// Per image, per channel: the sum and the sum of squares of a batch of images, each as
/// [`image_sums`] gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSums {
    images: usize,
    channels: usize,
    sums: Vec<(f64, f64)>,
}

impl ImageSums {
    /// Room for `images` images of `channels` channels (none: nothing to keep), each filled
    /// by [`image_sums`] through [`ImageSums::per_image_mut`].
    pub fn new(images: usize, channels: usize) -> Self {
        ImageSums {
            images,
            channels,
            sums: vec![(0.0, 0.0); images * channels],
        }
    }

    /// One slot of `channels` pairs per image, in order.
    pub fn per_image_mut(&mut self) -> Vec<&mut [(f64, f64)]> {
        match self.channels {
            0 => (0..self.images).map(|_| Default::default()).collect(),
            c => self.sums.chunks_exact_mut(c).collect(),
        }
    }

    fn image(&self, i: usize) -> &[(f64, f64)] {
        &self.sums[i * self.channels..][..self.channels]
    }
}

/// The per-channel `(Σ x, Σ x²)` of one image (`(C, plane)`, or `(plane, C)` channels-last),
/// into `out` (`C` pairs): what [`batch_norm`]'s statistics add up, image by image.
pub fn image_sums(x: &[f32], c: usize, plane: usize, layout: ImageLayout, out: &mut [(f64, f64)]) {
    match channels_last(layout, plane) {
        false => {
            for (ch, out) in out.iter_mut().enumerate().take(c) {
                *out = kernels::sum_and_squares(&x[ch * plane..][..plane]);
            }
        }
        true => {
            let mut lanes = vec![0f32; 32 * c];
            kernels::sum_and_squares_rows(&x[..c * plane], c, &mut lanes, &mut out[..c]);
        }
    }
}

/// What a [`batch_norm`] computes besides its statistics: Keras' epsilon, the activation
/// after it, and its images' layout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormSpec {
    pub epsilon: f32,
    pub activation: NormActivation,
    pub layout: ImageLayout,
}

/// A batch's per-channel mean and biased variance, as [`batch_norm`] computed them.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchMoments {
    pub mean: Vec<f32>,
    pub variance: Vec<f32>,
}

/// `act(gamma · (x - mean) / sqrt(var + epsilon) + beta)` per channel of an f32 CPU tensor
/// `(N, C, H, W)` (`(N, H, W, C)` with `layout` channels-last) or `(N, C)`; `gamma` and `beta` are `(C,)` tensors (pass ones / zeros for a
/// layer without them). Differentiable in `x`, `gamma` and `beta`; with
/// [`NormStatistics::Batch`] the gradient includes the statistics' dependence on `x`, and the
/// batch's moments come back beside the output. Without `differentiable` (inference) the op
/// records nothing for a backward pass.
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    statistics: NormStatistics,
    NormSpec {
        epsilon,
        activation,
        layout,
    }: NormSpec,
    differentiable: bool,
) -> Result<(Tensor, Option<BatchMoments>)> {
    let (op, moments) = BatchNorm::new(statistics, epsilon, activation, layout);
    let (x, gamma, beta) = (x.contiguous()?, gamma.contiguous()?, beta.contiguous()?);
    let y = match differentiable {
        true => x.apply_op3(&gamma, &beta, op)?,
        false => x.apply_op3_no_bwd(&gamma, &beta, &op)?,
    };
    // Only batch statistics leave moments.
    Ok((y, moments.take()))
}

/// `max(batch_norm(x) + residual, 0)`: a residual block's last BatchNormalization (without an
/// activation of its own), the join with the shortcut and the ReLU after it as one op, with the
/// bits of [`batch_norm`] then [`super::add_relu`] (output, moments and every gradient, the
/// residual's included) in one pass forward and without the separate pass of the join's
/// gradient backward. `spec.activation` must be linear.
pub fn batch_norm_add_relu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    residual: &Tensor,
    statistics: NormStatistics,
    NormSpec {
        epsilon,
        activation,
        layout,
    }: NormSpec,
    differentiable: bool,
) -> Result<(Tensor, Option<BatchMoments>)> {
    if activation != NormActivation::Linear {
        candle_core::bail!("batch_norm_add_relu: the normalisation takes no {activation:?}");
    }
    if residual.shape() != x.shape() {
        candle_core::bail!(
            "batch_norm_add_relu: residual {:?} for input {:?}",
            residual.dims(),
            x.dims()
        );
    }
    let (norm, moments) = BatchNorm::new(statistics, epsilon, activation, layout);
    // gamma and beta as one operand (candle's ops take at most three).
    let params = Tensor::cat(&[gamma.contiguous()?, beta.contiguous()?], 0)?;
    let (x, residual) = (x.contiguous()?, residual.contiguous()?);
    let op = BatchNormAddRelu(norm);
    let y = match differentiable {
        true => x.apply_op3(&params, &residual, op)?,
        false => x.apply_op3_no_bwd(&params, &residual, &op)?,
    };
    Ok((y, moments.take()))
}

/// Exact GELU, `x · Φ(x)`, of an f32 CPU tensor; differentiable when asked.
pub fn gelu(x: &Tensor, differentiable: bool) -> Result<Tensor> {
    match differentiable {
        true => x.contiguous()?.apply_op1(Gelu),
        false => x.contiguous()?.apply_op1_no_bwd(&Gelu),
    }
}

/// Per channel, `z = scale · x + shift` is the normalised value; with the statistics the
/// backward needs.
#[derive(Clone, Debug)]
struct Coefficients {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

struct BatchNorm {
    statistics: NormStatistics,
    epsilon: f32,
    activation: NormActivation,
    layout: ImageLayout,
    /// Made by the forward pass, used by the backward (candle hands the op over by reference).
    coefficients: Handoff<Coefficients>,
    moments: Arc<Handoff<BatchMoments>>,
    /// This process' images of the global batch whose statistics these are.
    shard: BatchShard,
}

/// `(N, C, plane)` of `(N, C)` or of images in `layout`.
fn norm_dims(op: &str, dims: &[usize], layout: ImageLayout) -> Result<(usize, usize, usize)> {
    match (dims, layout) {
        ([n, c], _) => Ok((*n, *c, 1)),
        ([n, c, h, w], ImageLayout::Nchw) | ([n, h, w, c], ImageLayout::Nhwc) => {
            Ok((*n, *c, h * w))
        }
        _ => candle_core::bail!("{op}: expects (N, C) or {layout:?} images, got {dims:?}"),
    }
}

/// Whether the channels-last (`*_rows`) kernels run: images in that layout with more than one
/// position per plane (with one, both layouts are the same array and the NCHW kernels serve).
fn channels_last(layout: ImageLayout, plane: usize) -> bool {
    layout == ImageLayout::Nhwc && plane > 1
}

/// Scratch for the channels-last kernels: two sets of 16 lanes per channel, and the per-channel
/// pair of sums of one image.
fn row_scratch(c: usize) -> (Vec<f32>, Vec<(f64, f64)>) {
    (vec![0f32; 32 * c], vec![(0f64, 0f64); c])
}

/// Per-channel sums over the global batch: this process' images in fixed chunks, every
/// process' chunks added in the global order.
fn channel_sums<const K: usize>(
    shard: &BatchShard,
    n: usize,
    c: usize,
    per_image: impl Fn(usize, &mut [[f64; K]]) + Sync,
) -> Result<Vec<[f64; K]>> {
    let partial: Vec<Vec<[f64; K]>> = (0..n.div_ceil(CHUNK_IMAGES))
        .into_par_iter()
        .map(|chunk| {
            let mut acc = vec![[0f64; K]; c];
            for i in chunk * CHUNK_IMAGES..((chunk + 1) * CHUNK_IMAGES).min(n) {
                per_image(i, &mut acc);
            }
            acc
        })
        .collect();
    add_in_order(shard, partial, c)
}

/// The per-channel partial sums of every process' chunks, added in the global chunk order.
fn add_in_order<const K: usize>(
    shard: &BatchShard,
    partial: Vec<Vec<[f64; K]>>,
    c: usize,
) -> Result<Vec<[f64; K]>> {
    let flat: Vec<Vec<f64>> = partial
        .into_iter()
        .map(|p| p.into_iter().flatten().collect())
        .collect();
    let total = shard.fold(&flat, c * K)?;
    Ok(total
        .chunks_exact(K)
        .map(|v| std::array::from_fn(|k| v[k]))
        .collect())
}

impl BatchNorm {
    fn new(
        statistics: NormStatistics,
        epsilon: f32,
        activation: NormActivation,
        layout: ImageLayout,
    ) -> (Self, Arc<Handoff<BatchMoments>>) {
        let shard = statistics
            .batch()
            .cloned()
            .unwrap_or_else(BatchShard::whole);
        let moments = Arc::new(Handoff::default());
        let op = BatchNorm {
            statistics,
            epsilon,
            activation,
            layout,
            coefficients: Handoff::default(),
            moments: moments.clone(),
            shard,
        };
        (op, moments)
    }

    /// The op's output for `x` into `y`, image by image; `then(i, y)` runs on each image's
    /// output while it is in cache.
    fn normalise(
        &self,
        x: &[f32],
        y: &mut [f32],
        k: &Coefficients,
        (c, plane): (usize, usize),
        then: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        y.par_chunks_mut(c * plane)
            .zip(x.par_chunks(c * plane))
            .enumerate()
            .for_each(|(i, (y, x))| {
                normalise_image(x, y, k, self.activation, self.layout, plane);
                then(i, y);
            });
    }

    fn grad_op(&self, k: Coefficients) -> BatchNormGrad {
        BatchNormGrad {
            k,
            shard: self.shard.clone(),
            training: self.statistics.batch().is_some(),
            activation: self.activation,
            layout: self.layout,
            param_grads: Handoff::default(),
            residual_grad: Handoff::default(),
        }
    }

    fn coefficients(
        &self,
        x: &[f32],
        (n, c, plane): (usize, usize, usize),
        gamma: &[f32],
        beta: &[f32],
    ) -> Result<Coefficients> {
        let (mean, variance) = match &self.statistics {
            NormStatistics::Fixed { mean, variance } => {
                if mean.len() != c || variance.len() != c {
                    candle_core::bail!(
                        "simplecnn-batch-norm: statistics for {c} channels expected"
                    );
                }
                (mean.clone(), variance.clone())
            }
            NormStatistics::Batch(_) | NormStatistics::Summed(..) => {
                self.shard.check("simplecnn-batch-norm", n, CHUNK_IMAGES)?;
                let given = match &self.statistics {
                    NormStatistics::Summed(_, sums) => Some(sums),
                    _ => None,
                };
                if given.is_some_and(|g| g.channels != c || g.images != n) {
                    candle_core::bail!(
                        "simplecnn-batch-norm: the given sums are not of {n} images of {c} channels"
                    );
                }
                let sums = channel_sums::<2>(&self.shard, n, c, |i, acc| {
                    let mut own = Vec::new();
                    let image = match given {
                        Some(g) => g.image(i),
                        None => {
                            own.resize(c, (0.0, 0.0));
                            image_sums(
                                &x[i * c * plane..][..c * plane],
                                c,
                                plane,
                                self.layout,
                                &mut own,
                            );
                            &own
                        }
                    };
                    for (acc, (s, sq)) in acc.iter_mut().zip(image) {
                        acc[0] += s;
                        acc[1] += sq;
                    }
                })?;
                let count = (self.shard.global(n) * plane) as f64;
                let mean: Vec<f64> = sums.iter().map(|s| s[0] / count).collect();
                let var: Vec<f32> = sums
                    .iter()
                    .zip(&mean)
                    .map(|(s, m)| (s[1] / count - m * m).max(0.0) as f32)
                    .collect();
                let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
                self.moments.put(BatchMoments {
                    mean: mean.clone(),
                    variance: var.clone(),
                });
                (mean, var)
            }
        };
        let inv_std: Vec<f32> = variance
            .iter()
            .map(|&v| (1.0 / (v as f64 + self.epsilon as f64).sqrt()) as f32)
            .collect();
        let scale: Vec<f32> = inv_std.iter().zip(gamma).map(|(s, g)| s * g).collect();
        let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
        Ok(Coefficients {
            mean,
            inv_std,
            scale,
            shift,
        })
    }
}

fn channel_vector<'a>(op: &str, s: &'a CpuStorage, l: &Layout, c: usize) -> Result<&'a [f32]> {
    let v = contiguous_f32(op, s, l)?;
    if v.len() != c {
        candle_core::bail!("{op}: expects {c} per-channel values, got {:?}", l.dims());
    }
    Ok(v)
}

impl CustomOp3 for BatchNorm {
    fn name(&self) -> &'static str {
        "simplecnn-batch-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = norm_dims(self.name(), xl.dims(), self.layout)?;
        let (_, c, plane) = dims;
        let x = contiguous_f32(self.name(), xs, xl)?;
        let gamma = channel_vector(self.name(), gs, gl, c)?;
        let beta = channel_vector(self.name(), bs, bl, c)?;
        let k = self.coefficients(x, dims, gamma, beta)?;
        // SAFETY: `normalise` writes every element.
        let mut y = unsafe { super::output::unwritten(x.len()) };
        self.normalise(x, &mut y, &k, (c, plane), |_, _| {});
        self.coefficients.put(k);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = self.grad_op(self.coefficients.left_by_forward(self.name())?);
        let c = grad.k.scale.len();
        let dx = x.apply_op2_no_bwd(&grad_res.contiguous()?, &grad)?;
        let (dgamma, dbeta) = grad.param_grads(self.name())?;
        let dgamma = Tensor::from_vec(dgamma, c, x.device())?;
        let dbeta = Tensor::from_vec(dbeta, c, x.device())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// [`batch_norm_add_relu`]'s op: `(x, [gamma | beta], residual)`.
struct BatchNormAddRelu(BatchNorm);

impl CustomOp3 for BatchNormAddRelu {
    fn name(&self) -> &'static str {
        "simplecnn-batch-norm-add-relu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let norm = &self.0;
        let dims = norm_dims(self.name(), xl.dims(), norm.layout)?;
        let (_, c, plane) = dims;
        let x = contiguous_f32(self.name(), xs, xl)?;
        let params = channel_vector(self.name(), ps, pl, 2 * c)?;
        let residual = contiguous_f32(self.name(), rs, rl)?;
        if residual.len() != x.len() {
            candle_core::bail!(
                "{}: residual {:?} for {:?}",
                self.name(),
                rl.dims(),
                xl.dims()
            );
        }
        let (gamma, beta) = params.split_at(c);
        let k = norm.coefficients(x, dims, gamma, beta)?;
        // SAFETY: `normalise` writes every element.
        let mut y = unsafe { super::output::unwritten(x.len()) };
        // The join and its ReLU as `add_relu` computes them, on each image while in cache.
        norm.normalise(x, &mut y, &k, (c, plane), |i, y| {
            let r = &residual[i * c * plane..][..c * plane];
            y.iter_mut()
                .zip(r)
                .for_each(|(y, &r)| *y = add_relu_value(*y, r));
        });
        norm.coefficients.put(k);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        residual: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = self
            .0
            .grad_op(self.0.coefficients.left_by_forward(self.name())?);
        let dx = x.apply_op3_no_bwd(&grad_res.contiguous()?, residual, &grad)?;
        let (mut dparams, dbeta) = grad.param_grads(self.name())?;
        dparams.extend(dbeta);
        let dparams = Tensor::from_vec(dparams, params.dims(), x.device())?;
        let dresidual = grad
            .residual_grad
            .expect(self.name(), "backward gave no residual gradient")?;
        let dresidual = Tensor::from_vec(dresidual, x.shape(), x.device())?;
        Ok((Some(dx), Some(dparams), Some(dresidual)))
    }
}

/// One image's `act(scale · x + shift)` per channel, `(C, plane)` or channels-last.
fn normalise_image(
    x: &[f32],
    y: &mut [f32],
    k: &Coefficients,
    activation: NormActivation,
    layout: ImageLayout,
    plane: usize,
) {
    if channels_last(layout, plane) {
        kernels::affine_act_rows(x, y, &k.scale, &k.shift, activation);
        return;
    }
    for (ch, (&scale, &shift)) in k.scale.iter().zip(&k.shift).enumerate() {
        let r = ch * plane..(ch + 1) * plane;
        kernels::affine_act(&x[r.clone()], &mut y[r], scale, shift, activation);
    }
}

/// `(x, dy) → dx`, leaving `(dgamma, dbeta)` in `param_grads`; `(x, dy, residual) → dx` for
/// [`BatchNormAddRelu`], leaving the residual's gradient (the join's) in `residual_grad`.
struct BatchNormGrad {
    k: Coefficients,
    shard: BatchShard,
    training: bool,
    activation: NormActivation,
    layout: ImageLayout,
    param_grads: Handoff<(Vec<f32>, Vec<f32>)>,
    residual_grad: Handoff<Vec<f32>>,
}

impl BatchNormGrad {
    fn param_grads(&self, op: &str) -> Result<(Vec<f32>, Vec<f32>)> {
        self.param_grads
            .expect(op, "backward gave no parameter gradients")
    }

    /// dx of `x` for the output gradient `dy`; with `residual`, `dy` is the gradient of
    /// `max(z + residual, 0)` and the join's gradient `dy · (z + residual >= 0)` (what
    /// `add_relu`'s backward gives both its inputs) goes to `residual_grad` and on into z's.
    fn input_grad(
        &self,
        (x, xl): (&[f32], &Layout),
        dy: &[f32],
        residual: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let name = "simplecnn-batch-norm-grad";
        let (n, c, plane) = norm_dims(name, xl.dims(), self.layout)?;
        if dy.len() != x.len() || residual.is_some_and(|r| r.len() != x.len()) {
            candle_core::bail!(
                "{name}: gradient or residual does not match input {:?}",
                xl.dims()
            );
        }
        let k = &self.k;
        let channels_last = channels_last(self.layout, plane);
        let image = c * plane;
        let chunk = CHUNK_IMAGES * image;
        // The join's gradient, when there is a join: one slot per chunk either way.
        // SAFETY: pass 1 writes every element of every image's join gradient.
        let mut joined = residual.map(|_| unsafe { super::output::unwritten(x.len()) });
        let joined_chunks: Vec<&mut [f32]> = match joined.as_mut() {
            Some(j) => j.chunks_mut(chunk).collect(),
            None => (0..x.len().div_ceil(chunk))
                .map(|_| Default::default())
                .collect(),
        };
        // Pass 1: dz = dy · act'(z) into dx, and per channel Σ dz and Σ dz · x̂.
        // SAFETY: the kernels below write every element.
        let mut dx = unsafe { super::output::unwritten(x.len()) };
        let partial: Vec<Vec<[f64; 2]>> = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(dy.par_chunks(chunk))
            .zip(joined_chunks)
            .enumerate()
            .map(|(at, (((dz, x), dy), joined))| {
                let mut acc = vec![[0f64; 2]; c];
                let (mut lanes, mut sums) = row_scratch(if channels_last { c } else { 0 });
                let mut z = match residual {
                    Some(_) => vec![0f32; image],
                    None => Vec::new(),
                };
                for (i, ((dz, x), dy)) in dz
                    .chunks_mut(image)
                    .zip(x.chunks(image))
                    .zip(dy.chunks(image))
                    .enumerate()
                {
                    let dy = match residual {
                        Some(r) => {
                            let first = at * chunk + i * image;
                            let r = &r[first..][..image];
                            let g = &mut joined[i * image..][..image];
                            normalise_image(x, &mut z, k, self.activation, self.layout, plane);
                            for (((g, &z), &r), &dy) in g.iter_mut().zip(&z).zip(r).zip(dy) {
                                *g = add_relu_grad_value(z, r, dy);
                            }
                            &*g
                        }
                        None => dy,
                    };
                    if channels_last {
                        let coefficients = (&k.scale[..], &k.shift[..], &k.mean[..]);
                        kernels::act_grad_rows(
                            x,
                            dy,
                            dz,
                            coefficients,
                            self.activation,
                            &mut lanes,
                            &mut sums,
                        );
                        for (acc, (s, sx)) in acc.iter_mut().zip(&sums) {
                            acc[0] += s;
                            acc[1] += sx;
                        }
                        continue;
                    }
                    for (ch, acc) in acc.iter_mut().enumerate() {
                        let r = ch * plane..(ch + 1) * plane;
                        let (s, sx) = kernels::act_grad(
                            &x[r.clone()],
                            &dy[r.clone()],
                            &mut dz[r],
                            k.scale[ch],
                            k.shift[ch],
                            k.mean[ch],
                            self.activation,
                        );
                        acc[0] += s;
                        // Σ dz · (x - mean), times 1/std below.
                        acc[1] += sx;
                    }
                }
                acc
            })
            .collect();
        let sums = add_in_order(&self.shard, partial, c)?;
        let dbeta: Vec<f32> = sums.iter().map(|s| s[0] as f32).collect();
        let dgamma: Vec<f32> = sums
            .iter()
            .zip(&k.inv_std)
            .map(|(s, is)| (s[1] * *is as f64) as f32)
            .collect();
        // Pass 2: dx = scale · (dz - Σdz/M - x̂ · Σ(dz·x̂)/M) in training, scale · dz otherwise.
        let count = (self.shard.global(n) * plane) as f64;
        let (mean_dz, mean_dzx): (Vec<f32>, Vec<f32>) = match self.training {
            true => sums
                .iter()
                .zip(&k.inv_std)
                .map(|(s, is)| {
                    let is = *is as f64;
                    ((s[0] / count) as f32, (s[1] * is * is / count) as f32)
                })
                .unzip(),
            false => (vec![0.0; c], vec![0.0; c]),
        };
        dx.par_chunks_mut(c * plane)
            .zip(x.par_chunks(c * plane))
            .for_each(|(dx, x)| {
                if channels_last {
                    let means = (&mean_dz[..], &mean_dzx[..]);
                    kernels::input_grad_rows(x, dx, &k.scale, &k.mean, means);
                    return;
                }
                for ch in 0..c {
                    let r = ch * plane..(ch + 1) * plane;
                    kernels::input_grad(
                        &x[r.clone()],
                        &mut dx[r],
                        k.scale[ch],
                        k.mean[ch],
                        mean_dz[ch],
                        mean_dzx[ch],
                    );
                }
            });
        self.param_grads.put((dgamma, dbeta));
        if let Some(joined) = joined {
            self.residual_grad.put(joined);
        }
        Ok(dx)
    }
}

impl candle_core::CustomOp2 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "simplecnn-batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = candle_core::CustomOp2::name(self);
        let x = contiguous_f32(name, xs, xl)?;
        let dy = contiguous_f32(name, gs, gl)?;
        let dx = self.input_grad((x, xl), dy, None)?;
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

impl CustomOp3 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "simplecnn-batch-norm-add-relu-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = CustomOp3::name(self);
        let x = contiguous_f32(name, xs, xl)?;
        let dy = contiguous_f32(name, gs, gl)?;
        let r = contiguous_f32(name, rs, rl)?;
        let dx = self.input_grad((x, xl), dy, Some(r))?;
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "simplecnn-gelu"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), xs, xl)?;
        // SAFETY: the kernels below write every element.
        let mut y = unsafe { super::output::unwritten(x.len()) };
        y.par_chunks_mut(1 << 14)
            .zip(x.par_chunks(1 << 14))
            .for_each(|(y, x)| kernels::affine_act(x, y, 1.0, 0.0, NormActivation::Gelu));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluGrad)?,
        ))
    }
}

struct GeluGrad;

impl candle_core::CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "simplecnn-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), xs, xl)?;
        let dy = contiguous_f32(self.name(), gs, gl)?;
        if dy.len() != x.len() {
            candle_core::bail!(
                "{}: gradient {:?} for input {:?}",
                self.name(),
                gl.dims(),
                xl.dims()
            );
        }
        // SAFETY: the kernels below write every element.
        let mut dx = unsafe { super::output::unwritten(x.len()) };
        dx.par_chunks_mut(1 << 14)
            .zip(x.par_chunks(1 << 14).zip(dy.par_chunks(1 << 14)))
            .for_each(|(dx, (x, dy))| {
                kernels::act_grad(x, dy, dx, 1.0, 0.0, 0.0, NormActivation::Gelu);
            });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// The elementwise loops, compiled twice: for AVX-512 (chosen at run time, as `gemm` does)
/// and for the baseline target. Branch-free so that both vectorise.
mod kernels {
    use super::NormActivation;

    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    /// 1 / sqrt(2π).
    const INV_SQRT_2PI: f32 = 0.398_942_3;

    /// erf(x) to about 1e-7 absolute: a rational approximation on [-4, 4] (beyond it erf is ±1
    /// in f32), as Eigen and XLA compute it.
    #[inline(always)]
    pub(super) fn erf(x: f32) -> f32 {
        let x = x.clamp(-4.0, 4.0);
        let x2 = x * x;
        let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
        p = x2.mul_add(p, -2.101_024e-6);
        p = x2.mul_add(p, -5.692_506_4e-5);
        p = x2.mul_add(p, -7.349_906_3e-4);
        p = x2.mul_add(p, -2.954_600_1e-3);
        p = x2.mul_add(p, -1.609_603_3e-2);
        p *= x;
        let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
        q = x2.mul_add(q, -1.682_827e-3);
        q = x2.mul_add(q, -7.373_329e-3);
        q = x2.mul_add(q, -1.426_473_9e-2);
        p / q
    }

    /// exp(x) for x ≤ 0 to about 2 ulp (e^-87 ≈ 1.6e-38 below -87, which GELU's derivative
    /// multiplies by its tiny z): 2^n · p(r) with r = x - n·ln 2.
    #[inline(always)]
    pub(super) fn exp_nonpositive(x: f32) -> f32 {
        let x = x.max(-87.0);
        let n = (x * std::f32::consts::LOG2_E).round();
        let r = n.mul_add(-0.693_145_75, x);
        let r = n.mul_add(-1.428_606_8e-6, r);
        let mut p = r.mul_add(1.987_569_1e-4, 1.398_2e-3);
        p = r.mul_add(p, 8.333_452e-3);
        p = r.mul_add(p, 4.166_579_6e-2);
        p = r.mul_add(p, 0.166_666_66);
        p = r.mul_add(p, 0.5);
        p = r.mul_add(p * r, r) + 1.0;
        p * f32::from_bits(((n as i32 + 127) as u32) << 23)
    }

    #[inline(always)]
    fn act(z: f32, a: NormActivation) -> f32 {
        match a {
            NormActivation::Linear => z,
            NormActivation::Relu => z.max(0.0),
            NormActivation::Gelu => 0.5 * z * (1.0 + erf(z * FRAC_1_SQRT_2)),
        }
    }

    #[inline(always)]
    fn act_derivative(z: f32, a: NormActivation) -> f32 {
        match a {
            NormActivation::Linear => 1.0,
            NormActivation::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            NormActivation::Gelu => {
                let cdf = 0.5 * (1.0 + erf(z * FRAC_1_SQRT_2));
                cdf + z * INV_SQRT_2PI * exp_nonpositive(-0.5 * z * z)
            }
        }
    }

    /// Defines `pub(super) fn $name` three times over: for AVX-512, for AVX2 + FMA (chosen at
    /// run time, as `gemm` does) and for the baseline target.
    macro_rules! multiversion {
        ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
            $(#[$doc])*
            pub(super) fn $name($($arg: $ty),*) -> $ret {
                #[inline(always)]
                fn generic($($arg: $ty),*) -> $ret $body
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    unsafe fn avx512($($arg: $ty),*) -> $ret {
                        generic($($arg),*)
                    }
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn avx2($($arg: $ty),*) -> $ret {
                        generic($($arg),*)
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the CPU has the features the function is compiled for.
                        return unsafe { avx512($($arg),*) };
                    }
                    if std::arch::is_x86_feature_detected!("fma") {
                        // SAFETY: as above.
                        return unsafe { avx2($($arg),*) };
                    }
                }
                generic($($arg),*)
            }
        };
    }

    multiversion! {
        /// Σ v and Σ v², with 16 f32 lanes per plane (exact enough for a plane; planes are
        /// summed in f64).
        fn sum_and_squares(v: &[f32]) -> (f64, f64) {
            let (mut s, mut q) = ([0f32; 16], [0f32; 16]);
            let mut chunks = v.chunks_exact(16);
            for c in &mut chunks {
                for l in 0..16 {
                    s[l] += c[l];
                    q[l] = c[l].mul_add(c[l], q[l]);
                }
            }
            let (mut st, mut qt) = (0f64, 0f64);
            for &x in chunks.remainder() {
                st += x as f64;
                qt += (x * x) as f64;
            }
            for l in 0..16 {
                st += s[l] as f64;
                qt += q[l] as f64;
            }
            (st, qt)
        }
    }

    multiversion! {
        /// [`sum_and_squares`] of each channel of one channels-last image (rows of `c`), with
        /// the same lanes and order of additions, so the same bits; `lanes` is scratch of
        /// 32 · c, `sums` gets (Σ v, Σ v²) per channel.
        fn sum_and_squares_rows(v: &[f32], c: usize, lanes: &mut [f32], sums: &mut [(f64, f64)]) -> () {
            lane_sums((v, v), &vec![0.0; c], lanes, sums);
        }
    }

    /// Per channel of two channels-last images `(u, v)` (rows of `offset.len()` channels),
    /// Σ u and Σ u · (v - offset) as [`sum_and_squares`] (v = u, offset 0) and [`grad_sums`]
    /// (u = dz, v = x, offset the mean) add them: 16 f32 lanes (lane = row mod 16, the
    /// product by `mul_add`), the rows past the last 16 in f64 first (the product rounded to
    /// f32), then the lanes in order. Zipped, not indexed, so that the loops over a row's
    /// channels vectorise.
    #[inline(always)]
    fn lane_sums(
        (u, v): (&[f32], &[f32]),
        offset: &[f32],
        lanes: &mut [f32],
        sums: &mut [(f64, f64)],
    ) {
        let c = offset.len();
        let full = u.len() / c / 16 * 16 * c;
        let (s, q) = lanes[..32 * c].split_at_mut(16 * c);
        s.fill(0.0);
        q.fill(0.0);
        let rows = u[..full].chunks_exact(c).zip(v[..full].chunks_exact(c));
        for (r, (u, v)) in rows.enumerate() {
            let l = r % 16;
            let (s, q) = (&mut s[l * c..][..c], &mut q[l * c..][..c]);
            let row = s
                .iter_mut()
                .zip(q.iter_mut())
                .zip(u.iter().zip(v).zip(offset));
            for ((s, q), ((&a, &v), &o)) in row {
                *s += a;
                *q = a.mul_add(v - o, *q);
            }
        }
        sums.fill((0.0, 0.0));
        for (u, v) in u[full..].chunks_exact(c).zip(v[full..].chunks_exact(c)) {
            for (sum, ((&a, &v), &o)) in sums.iter_mut().zip(u.iter().zip(v).zip(offset)) {
                sum.0 += a as f64;
                sum.1 += (a * (v - o)) as f64;
            }
        }
        for (s, q) in s.chunks_exact(c).zip(q.chunks_exact(c)) {
            for (sum, (&s, &q)) in sums.iter_mut().zip(s.iter().zip(q)) {
                sum.0 += s as f64;
                sum.1 += q as f64;
            }
        }
    }

    #[inline(always)]
    fn fill(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32, scale: f32, shift: f32) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = f(x.mul_add(scale, shift));
        }
    }

    multiversion! {
        /// `y = act(scale · x + shift)`.
        fn affine_act(x: &[f32], y: &mut [f32], scale: f32, shift: f32, a: NormActivation) -> () {
            match a {
                NormActivation::Linear => fill(x, y, |z| act(z, NormActivation::Linear), scale, shift),
                NormActivation::Relu => fill(x, y, |z| act(z, NormActivation::Relu), scale, shift),
                NormActivation::Gelu => fill(x, y, |z| act(z, NormActivation::Gelu), scale, shift),
            }
        }
    }

    #[inline(always)]
    fn fill_rows(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32, scale: &[f32], shift: &[f32]) {
        let c = scale.len();
        for (y, x) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            for ((y, &x), (&s, &t)) in y.iter_mut().zip(x).zip(scale.iter().zip(shift)) {
                *y = f(x.mul_add(s, t));
            }
        }
    }

    multiversion! {
        /// [`affine_act`] of a channels-last image: rows of `scale.len()` channels.
        fn affine_act_rows(x: &[f32], y: &mut [f32], scale: &[f32], shift: &[f32], a: NormActivation) -> () {
            match a {
                NormActivation::Linear => fill_rows(x, y, |z| act(z, NormActivation::Linear), scale, shift),
                NormActivation::Relu => fill_rows(x, y, |z| act(z, NormActivation::Relu), scale, shift),
                NormActivation::Gelu => fill_rows(x, y, |z| act(z, NormActivation::Gelu), scale, shift),
            }
        }
    }

    /// `dz = dy · d(scale · x + shift)`; returns Σ dz and Σ dz · (x - mean).
    #[inline(always)]
    fn grad_sums(
        x: &[f32],
        dy: &[f32],
        dz: &mut [f32],
        (scale, shift, mean): (f32, f32, f32),
        d: impl Fn(f32) -> f32,
    ) -> (f64, f64) {
        for ((dz, &x), &dy) in dz.iter_mut().zip(x).zip(dy) {
            *dz = dy * d(x.mul_add(scale, shift));
        }
        let (mut s, mut sx) = ([0f32; 16], [0f32; 16]);
        let mut chunks = dz.chunks_exact(16).zip(x.chunks_exact(16));
        for (g, x) in &mut chunks {
            for l in 0..16 {
                s[l] += g[l];
                sx[l] = g[l].mul_add(x[l] - mean, sx[l]);
            }
        }
        let (mut st, mut sxt) = (0f64, 0f64);
        let done = dz.len() / 16 * 16;
        for (g, x) in dz[done..].iter().zip(&x[done..]) {
            st += *g as f64;
            sxt += (*g * (x - mean)) as f64;
        }
        for l in 0..16 {
            st += s[l] as f64;
            sxt += sx[l] as f64;
        }
        (st, sxt)
    }

    multiversion! {
        /// `dz = dy · act'(scale · x + shift)`; returns Σ dz and Σ dz · (x - mean).
        fn act_grad(
            x: &[f32],
            dy: &[f32],
            dz: &mut [f32],
            scale: f32,
            shift: f32,
            mean: f32,
            a: NormActivation,
        ) -> (f64, f64) {
            let k = (scale, shift, mean);
            match a {
                NormActivation::Linear => grad_sums(x, dy, dz, k, |z| act_derivative(z, NormActivation::Linear)),
                NormActivation::Relu => grad_sums(x, dy, dz, k, |z| act_derivative(z, NormActivation::Relu)),
                NormActivation::Gelu => grad_sums(x, dy, dz, k, |z| act_derivative(z, NormActivation::Gelu)),
            }
        }
    }

    /// [`grad_sums`] of a channels-last image: `dz` elementwise, then its sums per channel.
    #[inline(always)]
    fn grad_sums_rows(
        x: &[f32],
        dy: &[f32],
        dz: &mut [f32],
        (scale, shift, mean): (&[f32], &[f32], &[f32]),
        d: impl Fn(f32) -> f32,
        lanes: &mut [f32],
        sums: &mut [(f64, f64)],
    ) {
        let c = scale.len();
        for ((dz, x), dy) in dz
            .chunks_exact_mut(c)
            .zip(x.chunks_exact(c))
            .zip(dy.chunks_exact(c))
        {
            let row = dz
                .iter_mut()
                .zip(x.iter().zip(dy))
                .zip(scale.iter().zip(shift));
            for ((dz, (&x, &dy)), (&s, &t)) in row {
                *dz = dy * d(x.mul_add(s, t));
            }
        }
        lane_sums((dz, x), mean, lanes, sums);
    }

    multiversion! {
        /// [`act_grad`] of a channels-last image: `dz` in place, (Σ dz, Σ dz · (x - mean)) per
        /// channel into `sums`; `lanes` is scratch of 32 · c.
        fn act_grad_rows(
            x: &[f32],
            dy: &[f32],
            dz: &mut [f32],
            k: (&[f32], &[f32], &[f32]),
            a: NormActivation,
            lanes: &mut [f32],
            sums: &mut [(f64, f64)],
        ) -> () {
            match a {
                NormActivation::Linear => grad_sums_rows(x, dy, dz, k, |z| act_derivative(z, NormActivation::Linear), lanes, sums),
                NormActivation::Relu => grad_sums_rows(x, dy, dz, k, |z| act_derivative(z, NormActivation::Relu), lanes, sums),
                NormActivation::Gelu => grad_sums_rows(x, dy, dz, k, |z| act_derivative(z, NormActivation::Gelu), lanes, sums),
            }
        }
    }

    multiversion! {
        /// [`input_grad`] of a channels-last image.
        fn input_grad_rows(
            x: &[f32],
            dz: &mut [f32],
            scale: &[f32],
            mean: &[f32],
            means: (&[f32], &[f32]),
        ) -> () {
            let (c, (mean_dz, mean_dzx)) = (scale.len(), means);
            for (g, x) in dz.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                let k = scale.iter().zip(mean).zip(mean_dz.iter().zip(mean_dzx));
                for ((g, &x), ((&s, &m), (&mdz, &mdzx))) in g.iter_mut().zip(x).zip(k) {
                    *g = s * ((x - m).mul_add(-mdzx, *g) - mdz);
                }
            }
        }
    }

    multiversion! {
        /// In place: `dz → scale · (dz - mean_dz - (x - mean) · mean_dzx)`.
        fn input_grad(
            x: &[f32],
            dz: &mut [f32],
            scale: f32,
            mean: f32,
            mean_dz: f32,
            mean_dzx: f32,
        ) -> () {
            for (g, &x) in dz.iter_mut().zip(x) {
                *g = scale * ((x - mean).mul_add(-mean_dzx, *g) - mean_dz);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kernels;

    #[test]
    fn erf_and_exp_are_accurate() {
        let mut worst_erf = 0f64;
        let mut worst_exp = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let want = libm::erf(x as f64);
            worst_erf = worst_erf.max((kernels::erf(x) as f64 - want).abs());
            let e = -x.abs() * 10.0;
            let want = (e as f64).exp();
            worst_exp = worst_exp.max(((kernels::exp_nonpositive(e) as f64 - want) / want).abs());
        }
        assert!(worst_erf < 5e-7, "erf off by {worst_erf}");
        assert!(worst_exp < 5e-7, "exp off by {worst_exp} (relative)");
        assert!((kernels::erf(10.0) - 1.0).abs() < 2e-7);
        assert!(kernels::exp_nonpositive(-200.0) < 1e-37);
    }
}
