//! Conv2D → ReLU → MaxPool2D (→ Dropout) as one op, the tutorial's two feature blocks.
//!
//! The convolution's full-size output (4 M values per batch for conv2d_1) never becomes a
//! tensor: each image is convolved into a per-thread buffer and pooled at once; the forward
//! pass keeps only where each window's maximum was. The backward pass scatters the gradient
//! back per image into a per-thread buffer and runs the kernel and input gradients from there.
//! Besides the memory, this spares candle's autograd a zero-filled gradient and an addition
//! per intermediate tensor.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{conv_grads, ConvGradSource, ConvOperands, ConvShape, ImageLayout};
use super::handoff::Handoff;
use super::lowering::{kernel_rows, Grid, ImageConv};
use super::pool::PoolShape;
use super::shard::BatchShard;
use super::transpose::transpose;

/// Marks an output whose ReLU clipped it: no gradient flows back through it.
const CLIPPED: u32 = u32::MAX;

/// `dropout(max_pool(relu(conv(x, kernel) + bias)))` for f32 CPU tensors; `relu` false leaves
/// the activation out; `dropout_mask`, one value per output (0 or 1/(1-rate)), is applied when
/// given, in NCHW order whatever the layouts. With `differentiable`, candle can take gradients
/// for `x`, `kernel` and `bias`; without, (inference) the op records nothing for a backward
/// pass. `x` and the result are laid out as `block.input` and `block.output` say.
pub fn conv_pool(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    block: ConvPoolShape,
    dropout_mask: Option<Vec<f32>>,
    differentiable: bool,
    shard: &BatchShard,
) -> Result<Tensor> {
    let ConvPoolShape {
        conv,
        pool,
        relu,
        input,
        output,
    } = block;
    if (pool.in_h, pool.in_w) != (conv.out_h, conv.out_w) {
        candle_core::bail!(
            "conv-pool: the pool takes {}x{}, the convolution gives {}x{}",
            pool.in_h,
            pool.in_w,
            conv.out_h,
            conv.out_w
        );
    }
    let op = ConvPool {
        conv,
        pool,
        relu,
        input,
        output,
        mask: dropout_mask.map(Arc::new),
        argmax: Handoff::default(),
        record: differentiable,
        shard: shard.clone(),
    };
    let (x, kernel, bias) = (x.contiguous()?, kernel.contiguous()?, bias.contiguous()?);
    match differentiable {
        true => x.apply_op3(&kernel, &bias, op),
        false => x.apply_op3_no_bwd(&kernel, &bias, &op),
    }
}

/// A Conv2D → MaxPool2D block's geometry, whether a ReLU sits between them, and how its input
/// and output images are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPoolShape {
    pub conv: ConvShape,
    pub pool: PoolShape,
    pub relu: bool,
    pub input: ImageLayout,
    pub output: ImageLayout,
}

/// Max-pools the channels-last convolution output `x (grid, O)` of one image (row
/// `y·pitch + x` holds position `(y, x)`) into `y (out_h·out_w, O)`, adding the bias to each
/// maximum (`max(v) + b = max(v + b)`) and applying the ReLU. `idx`, laid out like `y`, gets
/// each maximum's position in `x` (the first in row-major order on ties), or [`CLIPPED`]. Each
/// comparison runs across the channels at once, which the compiler vectorises (inlined into
/// its callers: on its own it did not).
#[inline(always)]
fn pool_rows(
    p: &PoolShape,
    pitch: usize,
    bias: &[f32],
    relu: bool,
    x: &[f32],
    y: &mut [f32],
    idx: Option<&mut [u32]>,
) {
    let ch = bias.len();
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    let two_by_two = (p.pool_h, p.pool_w, p.stride_h, p.stride_w) == (2, 2, 2, 2);
    let mut idx = idx;
    for oy in 0..p.out_h {
        for ox in 0..p.out_w {
            let q = oy * p.out_w + ox;
            let y = &mut y[q * ch..][..ch];
            let (y0, x0) = (oy * p.stride_h, ox * p.stride_w);
            let first = y0 * pitch + x0;
            let idx = idx.as_deref_mut().map(|idx| &mut idx[q * ch..][..ch]);
            if !two_by_two {
                // Any other window: one channel at a time.
                let mut idx = idx;
                for c in 0..ch {
                    let at = p.window_argmax((oy, ox), pitch, |pos| x[pos * ch + c]);
                    let (v, i) = finish(x[at * ch + c], at as u32, bias[c], relu);
                    y[c] = v;
                    if let Some(idx) = idx.as_deref_mut() {
                        idx[c] = i;
                    }
                }
                continue;
            }
            // The tutorial's pools, branch-free across the channels (vectorised): the two rows'
            // maxima, then the larger, the earlier one on ties.
            let positions = [first, first + 1, first + pitch, first + pitch + 1];
            let [a, b, d, e] = positions.map(|pos| &x[pos * ch..][..ch]);
            match idx {
                Some(idx) => {
                    let [p0, p1, p2, p3] = positions.map(|pos| pos as u32);
                    for c in 0..ch {
                        let (m0, i0) = if b[c] > a[c] { (b[c], p1) } else { (a[c], p0) };
                        let (m1, i1) = if e[c] > d[c] { (e[c], p3) } else { (d[c], p2) };
                        let (m, i) = if m1 > m0 { (m1, i1) } else { (m0, i0) };
                        (y[c], idx[c]) = finish(m, i, bias[c], relu);
                    }
                }
                None => {
                    for c in 0..ch {
                        let m = a[c].max(b[c]).max(d[c].max(e[c]));
                        y[c] = (m + bias[c]).max(floor);
                    }
                }
            }
        }
    }
}

/// A window's maximum `m`, found at `at`, plus the bias and through the ReLU: the pooled value
/// and the position to record ([`CLIPPED`] where the ReLU cut it).
#[inline(always)]
fn finish(m: f32, at: u32, bias: f32, relu: bool) -> (f32, u32) {
    let v = m + bias;
    let clipped = relu && v <= 0.0;
    (
        if clipped { 0.0 } else { v },
        if clipped { CLIPPED } else { at },
    )
}

struct ConvPool {
    conv: ConvShape,
    pool: PoolShape,
    relu: bool,
    input: ImageLayout,
    output: ImageLayout,
    mask: Option<Arc<Vec<f32>>>,
    /// Per output value, channels-last `(N, pooled, O)`, the position of its maximum in the
    /// convolution's output plane, or [`CLIPPED`]; filled by the forward pass, taken by the
    /// backward.
    argmax: Handoff<Arc<Vec<u32>>>,
    /// Whether to fill `argmax` (not for inference).
    record: bool,
    shard: BatchShard,
}

impl ConvPool {
    fn out_len(&self) -> usize {
        self.conv.out_channels * self.pool.out_h * self.pool.out_w
    }
}

/// One thread's buffers for an image: its convolution (input and output) and its pooled
/// output, channels-last.
struct Buffers {
    conv_in: ImageConv,
    conv: Vec<f32>,
    pooled: Vec<f32>,
}

impl CustomOp3 for ConvPool {
    fn name(&self) -> &'static str {
        "simplecnn-conv-pool"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (c, p) = (&self.conv, &self.pool);
        let ConvOperands {
            n,
            x,
            kernel: k,
            bias: b,
        } = c.operands(self.name(), self.input, (xs, xl), (ks, kl), (bs, bl))?;
        let out_len = self.out_len();
        if let Some(m) = &self.mask {
            if m.len() != n * out_len {
                candle_core::bail!(
                    "{}: dropout mask of {} values for {}",
                    self.name(),
                    m.len(),
                    n * out_len
                );
            }
        }
        let (o, plane) = (c.out_channels, p.out_h * p.out_w);
        let (kr, grid) = (kernel_rows(c, k), Grid::of(c));
        let mut y = vec![0f32; n * out_len];
        // Inference keeps no positions. Positions are stored channels-last, as pooled.
        let mut argmax = vec![0u32; if self.record { n * out_len } else { 0 }];
        let image = |(i, y): (usize, &mut [f32]), bufs: &mut Buffers, idx: Option<&mut [u32]>| {
            bufs.conv_in
                .load(&x[i * c.in_len()..][..c.in_len()], self.input);
            bufs.conv_in.forward(&kr, &mut bufs.conv);
            let pitch = grid.pitch;
            let mask = self.mask.as_ref().map(|m| &m[i * out_len..][..out_len]);
            match self.output {
                ImageLayout::Nchw => {
                    let pooled = &mut bufs.pooled;
                    pool_rows(p, pitch, b, self.relu, &bufs.conv, pooled, idx);
                    transpose(pooled, plane, o, y);
                    if let Some(mask) = mask {
                        y.iter_mut().zip(mask).for_each(|(v, m)| *v *= m);
                    }
                }
                ImageLayout::Nhwc => {
                    pool_rows(p, pitch, b, self.relu, &bufs.conv, y, idx);
                    if let Some(mask) = mask {
                        for (q, y) in y.chunks_exact_mut(o).enumerate() {
                            for (ch, v) in y.iter_mut().enumerate() {
                                *v *= mask[ch * plane + q];
                            }
                        }
                    }
                }
            }
        };
        let init = || Buffers {
            conv_in: ImageConv::new(c),
            conv: vec![0f32; grid.len * o],
            pooled: vec![0f32; out_len],
        };
        if self.record {
            y.par_chunks_mut(out_len)
                .enumerate()
                .zip(argmax.par_chunks_mut(out_len))
                .for_each_init(init, |bufs, (image_y, idx)| image(image_y, bufs, Some(idx)));
            self.argmax.put(Arc::new(argmax));
        } else {
            y.par_chunks_mut(out_len)
                .enumerate()
                .for_each_init(init, |bufs, image_y| image(image_y, bufs, None));
        }
        let dims = self.output.dims(n, o, p.out_h, p.out_w);
        Ok((CpuStorage::F32(y), Shape::from(&dims[..])))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let argmax = self.argmax.left_by_forward(self.name())?;
        let scatter = Scatter {
            conv: self.conv,
            pool: self.pool,
            out_len: self.out_len(),
            output: self.output,
            argmax,
            mask: self.mask.clone(),
        };
        conv_grads(
            x,
            grad_res,
            kernel,
            self.conv,
            scatter,
            self.input,
            &self.shard,
        )
    }
}

/// What the backward ops share: where the forward's maxima were, the dropout mask.
#[derive(Clone)]
struct Scatter {
    conv: ConvShape,
    pool: PoolShape,
    out_len: usize,
    /// The layout of the op's output, and so of its gradient.
    output: ImageLayout,
    argmax: Arc<Vec<u32>>,
    mask: Option<Arc<Vec<f32>>>,
}

impl ConvGradSource for Scatter {
    fn grad_len(&self) -> usize {
        self.out_len
    }

    /// The output gradient (`(O, pooled)` or `(pooled, O)`), times the dropout mask, at each
    /// window's maximum in the channels-last `(grid, O)`; 0 elsewhere.
    fn conv_grad(&self, i: usize, grad: &[f32], out: &mut [f32]) {
        let (o, len) = (self.conv.out_channels, self.out_len);
        let plane = len / o;
        let idx = &self.argmax[i * len..][..len];
        let mask = self.mask.as_ref().map(|m| &m[i * len..][..len]);
        // Channels-last, like the recorded positions; the mask is in NCHW order.
        let g = match self.output {
            ImageLayout::Nchw => {
                let mut masked = grad.to_vec();
                if let Some(mask) = mask {
                    masked.iter_mut().zip(mask).for_each(|(g, m)| *g *= m);
                }
                let mut g = vec![0f32; len];
                transpose(&masked, o, plane, &mut g);
                g
            }
            ImageLayout::Nhwc => {
                let mut g = grad.to_vec();
                if let Some(mask) = mask {
                    for (q, g) in g.chunks_exact_mut(o).enumerate() {
                        for (ch, v) in g.iter_mut().enumerate() {
                            *v *= mask[ch * plane + q];
                        }
                    }
                }
                g
            }
        };
        let (p, grid) = (&self.pool, Grid::of(&self.conv));
        let tiles = (p.pool_h, p.pool_w, p.stride_h, p.stride_w) == (2, 2, 2, 2)
            && (2 * p.out_h, 2 * p.out_w) == (self.conv.out_h, self.conv.out_w);
        if !tiles {
            out.fill(0.0);
            for ((&g, &at), ch) in g.iter().zip(idx).zip((0..o).cycle()) {
                if at != CLIPPED {
                    out[at as usize * o + ch] += g;
                }
            }
            return;
        }
        // 2x2 windows that tile the output: every output value is written once, from its
        // window's gradient where it was the maximum and 0 elsewhere, across the channels.
        for (q, (g, idx)) in g.chunks_exact(o).zip(idx.chunks_exact(o)).enumerate() {
            let first = 2 * (q / p.out_w) * grid.pitch + 2 * (q % p.out_w);
            for pos in [first, first + 1, first + grid.pitch, first + grid.pitch + 1] {
                let dst = &mut out[pos * o..][..o];
                for ((d, &g), &at) in dst.iter_mut().zip(g).zip(idx) {
                    *d = if at == pos as u32 { g } else { 0.0 };
                }
            }
        }
        grid.zero_gaps(&self.conv, out);
    }
}
