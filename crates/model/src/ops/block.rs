//! Conv2D → ReLU → MaxPool2D (→ Dropout) as one op, the tutorial's two feature blocks.
//!
//! The convolution's full-size output (4 M values per batch for conv2d_1) never becomes a
//! tensor: each image is convolved into a per-thread buffer and pooled at once; the forward
//! pass keeps only where each window's maximum was. The backward pass scatters the gradient
//! back per image into a per-thread buffer and runs the kernel and input gradients from there.
//! Besides the memory, this spares candle's autograd a zero-filled gradient and an addition
//! per intermediate tensor.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{conv_grads, im2col, ConvGradSource, ConvOperands, ConvShape};
use super::gemm::{matmul, MatRef};
use super::pool::{pool_plane, PoolShape};

/// Marks an output whose ReLU clipped it: no gradient flows back through it.
const CLIPPED: u32 = u32::MAX;

/// `dropout(max_pool(relu(conv(x, kernel) + bias)))` for f32 CPU tensors; `relu` false leaves
/// the activation out; `dropout_mask`, one value per output (0 or 1/(1-rate)), is applied when
/// given. With `differentiable`, candle can take gradients for `x`, `kernel` and `bias`; without,
/// (inference) the op records nothing for a backward pass.
pub fn conv_pool(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    block: ConvPoolShape,
    dropout_mask: Option<Vec<f32>>,
    differentiable: bool,
) -> Result<Tensor> {
    let ConvPoolShape { conv, pool, relu } = block;
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
        mask: dropout_mask.map(Arc::new),
        argmax: Mutex::new(None),
        record: differentiable,
    };
    let (x, kernel, bias) = (x.contiguous()?, kernel.contiguous()?, bias.contiguous()?);
    match differentiable {
        true => x.apply_op3(&kernel, &bias, op),
        false => x.apply_op3_no_bwd(&kernel, &bias, &op),
    }
}

/// A Conv2D → MaxPool2D block's geometry, and whether a ReLU sits between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPoolShape {
    pub conv: ConvShape,
    pub pool: PoolShape,
    pub relu: bool,
}

/// Pools one plane of the convolution's output, adds the bias and applies the ReLU:
/// `max(v) + b = max(v + b)`, so the bias is added to the maxima only. `idx` gets each
/// maximum's position in the plane, or [`CLIPPED`].
fn pool_bias_relu(
    p: &PoolShape,
    x: &[f32],
    bias: f32,
    relu: bool,
    y: &mut [f32],
    idx: Option<&mut [u32]>,
) {
    let Some(idx) = idx else {
        return pool_bias_relu_values(p, x, bias, relu, y);
    };
    pool_plane(p, x, y, idx, |max, at| {
        let v = max + bias;
        if relu && v <= 0.0 {
            (0.0, CLIPPED)
        } else {
            (v, at as u32)
        }
    });
}

/// [`pool_bias_relu`] for inference: the values only, which the compiler vectorises.
fn pool_bias_relu_values(p: &PoolShape, x: &[f32], bias: f32, relu: bool, y: &mut [f32]) {
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    if (p.pool_h, p.pool_w, p.stride_h, p.stride_w) != (2, 2, 2, 2) {
        for oy in 0..p.out_h {
            for ox in 0..p.out_w {
                y[oy * p.out_w + ox] = (x[p.argmax(x, oy, ox)] + bias).max(floor);
            }
        }
        return;
    }
    let w = p.in_w;
    for (oy, y) in y.chunks_exact_mut(p.out_w).enumerate() {
        let r0 = 2 * oy * w;
        let top = x[r0..r0 + w].chunks_exact(2);
        let bottom = x[r0 + w..r0 + 2 * w].chunks_exact(2);
        for ((y, t), b) in y.iter_mut().zip(top).zip(bottom) {
            *y = (t[0].max(t[1]).max(b[0].max(b[1])) + bias).max(floor);
        }
    }
}

struct ConvPool {
    conv: ConvShape,
    pool: PoolShape,
    relu: bool,
    mask: Option<Arc<Vec<f32>>>,
    /// Per output value, the flat position of its maximum in the conv output plane, or
    /// [`CLIPPED`]; filled by the forward pass, taken by the backward.
    argmax: Mutex<Option<Arc<Vec<u32>>>>,
    /// Whether to fill `argmax` (not for inference).
    record: bool,
}

impl ConvPool {
    fn out_len(&self) -> usize {
        self.conv.out_channels * self.pool.out_h * self.pool.out_w
    }
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
        } = c.operands(self.name(), (xs, xl), (ks, kl), (bs, bl))?;
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
        let (kk, positions, plane) = (c.patch_len(), c.positions(), p.out_h * p.out_w);
        let mut y = vec![0f32; n * out_len];
        // Inference keeps no positions.
        let mut argmax = vec![0u32; if self.record { n * out_len } else { 0 }];
        let image = |(i, y): (usize, &mut [f32]),
                     bufs: &mut (Vec<f32>, Vec<f32>),
                     idx: Option<&mut [u32]>| {
            let (col, conv_out) = bufs;
            im2col(c, &x[i * c.in_len()..][..c.in_len()], col);
            matmul(
                conv_out,
                MatRef::rows(k, kk),
                MatRef::rows(col, positions),
                (c.out_channels, positions, kk),
                false,
            );
            let planes = conv_out.chunks(positions).zip(y.chunks_mut(plane));
            match idx {
                Some(idx) => {
                    for (o, ((conv_plane, y), idx)) in planes.zip(idx.chunks_mut(plane)).enumerate()
                    {
                        pool_bias_relu(p, conv_plane, b[o], self.relu, y, Some(idx));
                    }
                }
                None => {
                    for (o, (conv_plane, y)) in planes.enumerate() {
                        pool_bias_relu(p, conv_plane, b[o], self.relu, y, None);
                    }
                }
            }
            if let Some(mask) = &self.mask {
                let mask = &mask[i * out_len..][..out_len];
                y.iter_mut().zip(mask).for_each(|(v, m)| *v *= m);
            }
        };
        let init = || (vec![0f32; kk * positions], vec![0f32; c.out_len()]);
        if self.record {
            y.par_chunks_mut(out_len)
                .enumerate()
                .zip(argmax.par_chunks_mut(out_len))
                .for_each_init(init, |bufs, (image_y, idx)| image(image_y, bufs, Some(idx)));
            *self.argmax.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(argmax));
        } else {
            y.par_chunks_mut(out_len)
                .enumerate()
                .for_each_init(init, |bufs, image_y| image(image_y, bufs, None));
        }
        let dims = [n, c.out_channels, p.out_h, p.out_w];
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
        let argmax = self.argmax.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(argmax) = argmax else {
            candle_core::bail!("{}: backward ran twice or before the forward", self.name());
        };
        let scatter = Scatter {
            conv: self.conv,
            out_len: self.out_len(),
            argmax,
            mask: self.mask.clone(),
        };
        conv_grads(x, grad_res, kernel, self.conv, scatter)
    }
}

/// What the backward ops share: where the forward's maxima were, the dropout mask.
#[derive(Clone)]
struct Scatter {
    conv: ConvShape,
    out_len: usize,
    argmax: Arc<Vec<u32>>,
    mask: Option<Arc<Vec<f32>>>,
}

impl ConvGradSource for Scatter {
    fn grad_len(&self) -> usize {
        self.out_len
    }

    /// The output gradient, times the dropout mask, at each window's maximum; 0 elsewhere.
    fn conv_grad(&self, i: usize, grad: &[f32], out: &mut [f32]) {
        out.fill(0.0);
        let (positions, plane) = (self.conv.positions(), self.out_len / self.conv.out_channels);
        let idx = &self.argmax[i * self.out_len..][..self.out_len];
        let mask = self
            .mask
            .as_ref()
            .map(|m| &m[i * self.out_len..][..self.out_len]);
        for (j, (&g, &at)) in grad.iter().zip(idx).enumerate() {
            if at != CLIPPED {
                let g = mask.map_or(g, |m| g * m[j]);
                out[(j / plane) * positions + at as usize] += g;
            }
        }
    }
}
