//! Max pooling (NCHW, no padding) whose backward sends each window's gradient to the window's
//! first maximum, recorded by the forward pass, instead of candle's compare-and-broadcast graph.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;
use super::handoff::Handoff;

/// The geometry of one pooling layer, batch and channels aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub in_h: usize,
    pub in_w: usize,
    pub pool_h: usize,
    pub pool_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl PoolShape {
    /// `None` when the input is smaller than the window or a size is zero.
    pub fn new(
        input: (usize, usize),
        pool: (usize, usize),
        strides: (usize, usize),
    ) -> Option<Self> {
        let ((h, w), (ph, pw), (sh, sw)) = (input, pool, strides);
        if [ph, pw, sh, sw].contains(&0) || h < ph || w < pw {
            return None;
        }
        Some(PoolShape {
            in_h: h,
            in_w: w,
            pool_h: ph,
            pool_w: pw,
            stride_h: sh,
            stride_w: sw,
            out_h: (h - ph) / sh + 1,
            out_w: (w - pw) / sw + 1,
        })
    }

    /// The first maximum (in row-major order) of output window `(oy, ox)`, as the position
    /// `y · pitch + x` of an input whose value there is `value(position)`.
    pub(crate) fn window_argmax(
        &self,
        (oy, ox): (usize, usize),
        pitch: usize,
        value: impl Fn(usize) -> f32,
    ) -> usize {
        let (y0, x0) = (oy * self.stride_h, ox * self.stride_w);
        let mut best = y0 * pitch + x0;
        for y in y0..y0 + self.pool_h {
            for x in x0..x0 + self.pool_w {
                let i = y * pitch + x;
                if value(i) > value(best) {
                    best = i;
                }
            }
        }
        best
    }

    fn check(&self, op: &str, dims: &[usize], (h, w): (usize, usize)) -> Result<(usize, usize)> {
        match dims {
            [n, c, dh, dw] if (*dh, *dw) == (h, w) => Ok((*n, *c)),
            _ => candle_core::bail!("{op}: expects (N, C, {h}, {w}), got {dims:?}"),
        }
    }
}

/// Max pooling of an f32 CPU tensor `(N, C, H, W)`; differentiable.
pub fn max_pool2d(x: &Tensor, shape: PoolShape) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool2d {
        shape,
        argmax: Handoff::default(),
    })
}

/// The forward op records where each window's maximum was, so that its backward is a scatter.
/// candle hands the op to backward by reference, hence the lock (taken once per call).
struct MaxPool2d {
    shape: PoolShape,
    /// Per output value, the flat index of its maximum within the input plane.
    argmax: Handoff<Vec<u32>>,
}

/// One plane: each window's maximum into `y` and its flat position in the plane (the first
/// maximum on ties) into `idx`.
fn pool_plane(s: &PoolShape, x: &[f32], y: &mut [f32], idx: &mut [u32]) {
    if (s.pool_h, s.pool_w, s.stride_h, s.stride_w) == (2, 2, 2, 2) {
        // The tutorial's pools, branch-free: the two rows' maxima, then the larger (the
        // earlier one on ties, as the general scan below picks).
        let w = s.in_w;
        for oy in 0..s.out_h {
            let r0 = 2 * oy * w;
            let (top, bottom) = (&x[r0..r0 + w], &x[r0 + w..r0 + 2 * w]);
            let y = &mut y[oy * s.out_w..][..s.out_w];
            let idx = &mut idx[oy * s.out_w..][..s.out_w];
            for ox in 0..s.out_w {
                let c = 2 * ox;
                let (a, b, d, e) = (top[c], top[c + 1], bottom[c], bottom[c + 1]);
                let (m0, i0) = if b > a { (b, c + 1) } else { (a, c) };
                let (m1, i1) = if e > d { (e, w + c + 1) } else { (d, w + c) };
                let (m, i) = if m1 > m0 { (m1, i1) } else { (m0, i0) };
                (y[ox], idx[ox]) = (m, (r0 + i) as u32);
            }
        }
        return;
    }
    for oy in 0..s.out_h {
        for ox in 0..s.out_w {
            let at = s.window_argmax((oy, ox), s.in_w, |i| x[i]);
            (y[oy * s.out_w + ox], idx[oy * s.out_w + ox]) = (x[at], at as u32);
        }
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "simplecnn-max-pool2d"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = &self.shape;
        let (n, c) = s.check(self.name(), xl.dims(), (s.in_h, s.in_w))?;
        let x = contiguous_f32(self.name(), xs, xl)?;
        let (plane_in, plane_out) = (s.in_h * s.in_w, s.out_h * s.out_w);
        let mut y = vec![0f32; n * c * plane_out];
        let mut idx = vec![0u32; n * c * plane_out];
        y.par_chunks_mut(plane_out)
            .zip(idx.par_chunks_mut(plane_out))
            .zip(x.par_chunks(plane_in))
            .for_each(|((y, idx), x)| pool_plane(s, x, y, idx));
        self.argmax.put(idx);
        let dims = [n, c, s.out_h, s.out_w];
        Ok((CpuStorage::F32(y), Shape::from(&dims[..])))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let argmax = self.argmax.left_by_forward(self.name())?;
        let scatter = MaxPool2dGrad {
            shape: self.shape,
            argmax,
        };
        Ok(Some(
            grad_res
                .contiguous()?
                .apply_op1_no_bwd(&scatter)?
                .reshape(x.shape())?,
        ))
    }
}

/// Sends each output gradient to the input position its forward recorded.
struct MaxPool2dGrad {
    shape: PoolShape,
    argmax: Vec<u32>,
}

impl CustomOp1 for MaxPool2dGrad {
    fn name(&self) -> &'static str {
        "simplecnn-max-pool2d-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = &self.shape;
        let (n, c) = s.check(self.name(), gl.dims(), (s.out_h, s.out_w))?;
        let g = contiguous_f32(self.name(), gs, gl)?;
        let (plane_in, plane_out) = (s.in_h * s.in_w, s.out_h * s.out_w);
        if self.argmax.len() != g.len() {
            candle_core::bail!(
                "{}: gradient {:?} does not match the forward pass",
                self.name(),
                gl.dims()
            );
        }
        let mut dx = vec![0f32; n * c * plane_in];
        dx.par_chunks_mut(plane_in)
            .zip(g.par_chunks(plane_out))
            .zip(self.argmax.par_chunks(plane_out))
            .for_each(|((dx, g), idx)| {
                for (&g, &i) in g.iter().zip(idx) {
                    dx[i as usize] += g;
                }
            });
        let dims = [n, c, s.in_h, s.in_w];
        Ok((CpuStorage::F32(dx), Shape::from(&dims[..])))
    }
}
