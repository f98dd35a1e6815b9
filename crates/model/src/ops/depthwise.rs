//! Depthwise convolution (NCHW, zero padding) as direct loops: each output plane is one input
//! channel convolved with one `kh x kw` filter, so there is no product to hand to gemm, and
//! candle's grouped convolution (one small convolution per channel) spends its time in
//! overhead. Forward, input gradient and kernel gradient are plain loops, parallel over planes;
//! the kernel gradient sums the batch in order, so results do not depend on the thread count.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// The geometry of one depthwise layer, batch and channels aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepthwiseShape {
    pub channels: usize,
    pub multiplier: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub kernel: (usize, usize),
    pub strides: (usize, usize),
    /// Zero rows above and columns to the left (the rest of the padding is implied by the
    /// output size).
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl DepthwiseShape {
    /// The input position output `(oy, ox)` sees at kernel offset `(a, b)`, if inside.
    #[inline]
    fn source(&self, oy: usize, ox: usize, a: usize, b: usize) -> Option<(usize, usize)> {
        let iy = (oy * self.strides.0 + a).checked_sub(self.pad_top)?;
        let ix = (ox * self.strides.1 + b).checked_sub(self.pad_left)?;
        (iy < self.in_h && ix < self.in_w).then_some((iy, ix))
    }

    fn check(&self, op: &str, x: &[usize], k: &[usize]) -> Result<usize> {
        let (kh, kw) = self.kernel;
        let out = self.channels * self.multiplier;
        match (x, k) {
            ([n, c, h, w], [o, 1, a, b])
                if (*c, *h, *w) == (self.channels, self.in_h, self.in_w)
                    && (*o, *a, *b) == (out, kh, kw) =>
            {
                Ok(*n)
            }
            _ => candle_core::bail!("{op}: input {x:?} and kernel {k:?} do not match {self:?}"),
        }
    }
}

/// The depthwise convolution of an f32 CPU tensor `(N, C, H, W)` with a kernel `(C · m, 1,
/// kh, kw)` (output channel `c · m + j` from input channel `c`); differentiable in both.
pub fn depthwise_conv2d(x: &Tensor, kernel: &Tensor, shape: DepthwiseShape) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&kernel.contiguous()?, DepthwiseConv { shape })
}

struct DepthwiseConv {
    shape: DepthwiseShape,
}

impl CustomOp2 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "simplecnn-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = &self.shape;
        let n = s.check(self.name(), xl.dims(), kl.dims())?;
        let (x, k) = (
            contiguous_f32(self.name(), xs, xl)?,
            contiguous_f32(self.name(), ks, kl)?,
        );
        let (kh, kw) = s.kernel;
        let out_c = s.channels * s.multiplier;
        let (plane_in, plane_out) = (s.in_h * s.in_w, s.out_h * s.out_w);
        let mut y = vec![0f32; n * out_c * plane_out];
        y.par_chunks_mut(plane_out).enumerate().for_each(|(p, y)| {
            let (img, o) = (p / out_c, p % out_c);
            let x = &x[(img * s.channels + o / s.multiplier) * plane_in..][..plane_in];
            let k = &k[o * kh * kw..][..kh * kw];
            for oy in 0..s.out_h {
                for ox in 0..s.out_w {
                    let mut acc = 0f32;
                    for a in 0..kh {
                        for b in 0..kw {
                            if let Some((iy, ix)) = s.source(oy, ox, a, b) {
                                acc += x[iy * s.in_w + ix] * k[a * kw + b];
                            }
                        }
                    }
                    y[oy * s.out_w + ox] = acc;
                }
            }
        });
        let dims = [n, out_c, s.out_h, s.out_w];
        Ok((CpuStorage::F32(y), Shape::from(&dims[..])))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let shape = self.shape;
        let dx = grad.apply_op2_no_bwd(kernel, &DepthwiseInputGrad { shape })?;
        let dk = x.apply_op2_no_bwd(&grad, &DepthwiseKernelGrad { shape })?;
        Ok((Some(dx), Some(dk)))
    }
}

/// `dx[n, c]`: every output plane of channel `c` scattered back through its filter.
struct DepthwiseInputGrad {
    shape: DepthwiseShape,
}

impl CustomOp2 for DepthwiseInputGrad {
    fn name(&self) -> &'static str {
        "simplecnn-depthwise-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = &self.shape;
        let out_c = s.channels * s.multiplier;
        let n = match gl.dims() {
            [n, o, h, w] if (*o, *h, *w) == (out_c, s.out_h, s.out_w) => *n,
            d => candle_core::bail!("{}: gradient {d:?} does not match {s:?}", self.name()),
        };
        let (g, k) = (
            contiguous_f32(self.name(), gs, gl)?,
            contiguous_f32(self.name(), ks, kl)?,
        );
        let (kh, kw) = s.kernel;
        let (plane_in, plane_out) = (s.in_h * s.in_w, s.out_h * s.out_w);
        let mut dx = vec![0f32; n * s.channels * plane_in];
        dx.par_chunks_mut(plane_in).enumerate().for_each(|(p, dx)| {
            let (img, c) = (p / s.channels, p % s.channels);
            for j in 0..s.multiplier {
                let o = c * s.multiplier + j;
                let g = &g[(img * out_c + o) * plane_out..][..plane_out];
                let k = &k[o * kh * kw..][..kh * kw];
                for oy in 0..s.out_h {
                    for ox in 0..s.out_w {
                        let go = g[oy * s.out_w + ox];
                        for a in 0..kh {
                            for b in 0..kw {
                                if let Some((iy, ix)) = s.source(oy, ox, a, b) {
                                    dx[iy * s.in_w + ix] += go * k[a * kw + b];
                                }
                            }
                        }
                    }
                }
            }
        });
        let dims = [n, s.channels, s.in_h, s.in_w];
        Ok((CpuStorage::F32(dx), Shape::from(&dims[..])))
    }
}

/// `dk[o]`: each output plane's gradient against the input plane it came from, summed over
/// the batch in order.
struct DepthwiseKernelGrad {
    shape: DepthwiseShape,
}

impl CustomOp2 for DepthwiseKernelGrad {
    fn name(&self) -> &'static str {
        "simplecnn-depthwise-conv2d-kernel-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = &self.shape;
        let out_c = s.channels * s.multiplier;
        let (kh, kw) = s.kernel;
        let n = s.check(self.name(), xl.dims(), &[out_c, 1, kh, kw])?;
        let (x, g) = (
            contiguous_f32(self.name(), xs, xl)?,
            contiguous_f32(self.name(), gs, gl)?,
        );
        let (plane_in, plane_out) = (s.in_h * s.in_w, s.out_h * s.out_w);
        if g.len() != n * out_c * plane_out {
            candle_core::bail!("{}: gradient {:?} does not match", self.name(), gl.dims());
        }
        let mut dk = vec![0f32; out_c * kh * kw];
        dk.par_chunks_mut(kh * kw).enumerate().for_each(|(o, dk)| {
            let c = o / s.multiplier;
            for img in 0..n {
                let x = &x[(img * s.channels + c) * plane_in..][..plane_in];
                let g = &g[(img * out_c + o) * plane_out..][..plane_out];
                for a in 0..kh {
                    for b in 0..kw {
                        let mut acc = 0f32;
                        for oy in 0..s.out_h {
                            for ox in 0..s.out_w {
                                if let Some((iy, ix)) = s.source(oy, ox, a, b) {
                                    acc += g[oy * s.out_w + ox] * x[iy * s.in_w + ix];
                                }
                            }
                        }
                        dk[a * kw + b] += acc;
                    }
                }
            }
        });
        let dims = [out_c, 1, kh, kw];
        Ok((CpuStorage::F32(dk), Shape::from(&dims[..])))
    }
}
