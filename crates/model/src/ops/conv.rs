//! 2-D convolution (NCHW, kernels `(out, in, kh, kw)`) as im2col + gemm, with bias and an
//! optional ReLU fused into the forward pass.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;
use super::gemm::{matmul, MatRef};

/// Images per partial sum of the kernel and bias gradients. Fixed, so the order of the
/// additions (and so the result, to the bit) does not depend on how many threads run.
const PARAM_GRAD_CHUNK: usize = 8;

/// The geometry of one convolution, batch size aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl ConvShape {
    /// `input` is `(channels, height, width)`; `padding` is `((top, bottom), (left, right))`.
    /// `None` when the padded input is smaller than the kernel or a size is zero.
    pub fn new(
        input: (usize, usize, usize),
        out_channels: usize,
        kernel: (usize, usize),
        strides: (usize, usize),
        padding: ((usize, usize), (usize, usize)),
    ) -> Option<Self> {
        let (c, h, w) = input;
        let ((top, bottom), (left, right)) = padding;
        let (kh, kw) = kernel;
        let (sh, sw) = strides;
        if [c, h, w, out_channels, kh, kw, sh, sw].contains(&0) {
            return None;
        }
        let (ph, pw) = (h + top + bottom, w + left + right);
        if ph < kh || pw < kw {
            return None;
        }
        Some(ConvShape {
            in_channels: c,
            in_h: h,
            in_w: w,
            out_channels,
            kernel_h: kh,
            kernel_w: kw,
            stride_h: sh,
            stride_w: sw,
            pad_top: top,
            pad_left: left,
            out_h: (ph - kh) / sh + 1,
            out_w: (pw - kw) / sw + 1,
        })
    }

    /// Rows of the im2col matrix: one per kernel weight of an output channel.
    pub(crate) fn patch_len(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }

    /// Columns of the im2col matrix: one per output position.
    pub(crate) fn positions(&self) -> usize {
        self.out_h * self.out_w
    }

    pub(crate) fn in_len(&self) -> usize {
        self.in_channels * self.in_h * self.in_w
    }

    pub(crate) fn out_len(&self) -> usize {
        self.out_channels * self.positions()
    }

    pub(crate) fn kernel_dims(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels,
            self.kernel_h,
            self.kernel_w,
        ]
    }

    /// The output columns `ox` whose input column `ox * stride + kj - pad_left` is inside the
    /// image.
    fn valid_cols(&self, kj: usize) -> std::ops::Range<usize> {
        valid_range(kj, self.pad_left, self.stride_w, self.in_w, self.out_w)
    }

    fn valid_rows(&self, ki: usize) -> std::ops::Range<usize> {
        valid_range(ki, self.pad_top, self.stride_h, self.in_h, self.out_h)
    }

    pub(crate) fn check_input(&self, op: &str, dims: &[usize]) -> Result<usize> {
        match dims {
            [n, c, h, w] if (*c, *h, *w) == (self.in_channels, self.in_h, self.in_w) => Ok(*n),
            _ => candle_core::bail!(
                "{op}: input {dims:?} does not match (N, {}, {}, {})",
                self.in_channels,
                self.in_h,
                self.in_w
            ),
        }
    }

    /// The batch size and the values of a forward pass's input, kernel and bias, checked
    /// against this shape.
    pub(crate) fn operands<'a>(
        &self,
        op: &str,
        (xs, xl): (&'a CpuStorage, &Layout),
        (ks, kl): (&'a CpuStorage, &Layout),
        (bs, bl): (&'a CpuStorage, &Layout),
    ) -> Result<ConvOperands<'a>> {
        let n = self.check_input(op, xl.dims())?;
        self.check_kernel(op, kl.dims())?;
        if bl.dims() != [self.out_channels] {
            candle_core::bail!(
                "{op}: bias {:?}, expected [{}]",
                bl.dims(),
                self.out_channels
            );
        }
        Ok(ConvOperands {
            n,
            x: contiguous_f32(op, xs, xl)?,
            kernel: contiguous_f32(op, ks, kl)?,
            bias: contiguous_f32(op, bs, bl)?,
        })
    }

    pub(crate) fn check_kernel(&self, op: &str, dims: &[usize]) -> Result<()> {
        if dims != self.kernel_dims() {
            candle_core::bail!("{op}: kernel {dims:?}, expected {:?}", self.kernel_dims());
        }
        Ok(())
    }
}

/// A forward pass's batch size, input, kernel and bias values.
pub(crate) struct ConvOperands<'a> {
    pub n: usize,
    pub x: &'a [f32],
    pub kernel: &'a [f32],
    pub bias: &'a [f32],
}

/// Indices `o < out` with `0 <= o * stride + k - pad < len`.
fn valid_range(
    k: usize,
    pad: usize,
    stride: usize,
    len: usize,
    out: usize,
) -> std::ops::Range<usize> {
    let lo = pad.saturating_sub(k).div_ceil(stride).min(out);
    // o * stride + k - pad <= len - 1  <=>  o <= (len - 1 + pad - k) / stride
    let hi = if len + pad > k {
        ((len - 1 + pad - k) / stride + 1).min(out)
    } else {
        0
    };
    lo..hi.max(lo)
}

/// One image `(C, H, W)` to its patch matrix `(C*kh*kw, oh*ow)`, zeros where the kernel
/// overhangs the padding.
pub(crate) fn im2col(s: &ConvShape, x: &[f32], col: &mut [f32]) {
    let (p, ow) = (s.positions(), s.out_w);
    for c in 0..s.in_channels {
        let plane = &x[c * s.in_h * s.in_w..][..s.in_h * s.in_w];
        for ki in 0..s.kernel_h {
            let rows = s.valid_rows(ki);
            for kj in 0..s.kernel_w {
                let cols = s.valid_cols(kj);
                let r = (c * s.kernel_h + ki) * s.kernel_w + kj;
                let dst = &mut col[r * p..][..p];
                // Zeros only where the kernel overhangs the padding; the rest is copied.
                dst[..rows.start * ow].fill(0.0);
                dst[rows.end * ow..].fill(0.0);
                for oy in rows.clone() {
                    let out = &mut dst[oy * ow..][..ow];
                    out[..cols.start].fill(0.0);
                    out[cols.end..].fill(0.0);
                    if cols.is_empty() {
                        continue;
                    }
                    let iy = oy * s.stride_h + ki - s.pad_top;
                    let src = &plane[iy * s.in_w..][..s.in_w];
                    if s.stride_w == 1 {
                        let ix0 = cols.start + kj - s.pad_left;
                        out[cols.clone()].copy_from_slice(&src[ix0..ix0 + cols.len()]);
                    } else {
                        for ox in cols.clone() {
                            out[ox] = src[ox * s.stride_w + kj - s.pad_left];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each patch-matrix entry back onto its input pixel.
pub(crate) fn col2im_add(s: &ConvShape, col: &[f32], dx: &mut [f32]) {
    let (p, ow) = (s.positions(), s.out_w);
    for c in 0..s.in_channels {
        let plane = &mut dx[c * s.in_h * s.in_w..][..s.in_h * s.in_w];
        for ki in 0..s.kernel_h {
            let rows = s.valid_rows(ki);
            for kj in 0..s.kernel_w {
                let cols = s.valid_cols(kj);
                let r = (c * s.kernel_h + ki) * s.kernel_w + kj;
                let src = &col[r * p..][..p];
                for oy in rows.clone() {
                    let iy = oy * s.stride_h + ki - s.pad_top;
                    let dst = &mut plane[iy * s.in_w..][..s.in_w];
                    let row = &src[oy * ow..][..ow];
                    if s.stride_w == 1 && !cols.is_empty() {
                        let ix0 = cols.start + kj - s.pad_left;
                        let dst = &mut dst[ix0..ix0 + cols.len()];
                        dst.iter_mut()
                            .zip(&row[cols.clone()])
                            .for_each(|(d, r)| *d += r);
                        continue;
                    }
                    for ox in cols.clone() {
                        dst[ox * s.stride_w + kj - s.pad_left] += row[ox];
                    }
                }
            }
        }
    }
}

/// `relu(conv(x, kernel) + bias)` (or without the ReLU) for f32 CPU tensors `x (N, C, H, W)`,
/// `kernel (O, C, kh, kw)`, `bias (O)`. Differentiable in all three.
pub fn conv2d(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    shape: ConvShape,
    relu: bool,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &kernel.contiguous()?,
        &bias.contiguous()?,
        Conv2dForward { shape, relu },
    )
}

struct Conv2dForward {
    shape: ConvShape,
    relu: bool,
}

impl CustomOp3 for Conv2dForward {
    fn name(&self) -> &'static str {
        "simplecnn-conv2d"
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
        let s = &self.shape;
        let ConvOperands {
            n,
            x,
            kernel: k,
            bias: b,
        } = s.operands(self.name(), (xs, xl), (ks, kl), (bs, bl))?;
        let (kk, p) = (s.patch_len(), s.positions());
        let mut y = vec![0f32; n * s.out_len()];
        y.par_chunks_mut(s.out_len())
            .zip(x.par_chunks(s.in_len()))
            .for_each_init(
                || vec![0f32; kk * p],
                |col, (y, x)| {
                    im2col(s, x, col);
                    matmul(
                        y,
                        MatRef::rows(k, kk),
                        MatRef::rows(col, p),
                        (s.out_channels, p, kk),
                        false,
                    );
                    for (plane, &bias) in y.chunks_mut(p).zip(b) {
                        if self.relu {
                            plane.iter_mut().for_each(|v| *v = (*v + bias).max(0.0));
                        } else {
                            plane.iter_mut().for_each(|v| *v += bias);
                        }
                    }
                },
            );
        let dims = [n, s.out_channels, s.out_h, s.out_w];
        Ok((CpuStorage::F32(y), Shape::from(&dims[..])))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let grad = if self.relu {
            grad.apply_op2_no_bwd(res, &ReluGrad)?
        } else {
            grad
        };
        let source = Direct {
            len: self.shape.out_len(),
        };
        conv_grads(x, &grad, kernel, self.shape, source)
    }
}

/// The gradient through a ReLU given its output: `grad` where `out > 0`, else 0.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "simplecnn-relu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if gl.dims() != yl.dims() {
            candle_core::bail!(
                "{}: shapes {:?} and {:?} differ",
                self.name(),
                gl.dims(),
                yl.dims()
            );
        }
        let g = contiguous_f32(self.name(), gs, gl)?;
        let y = contiguous_f32(self.name(), ys, yl)?;
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(1 << 16)
            .zip(g.par_chunks(1 << 16).zip(y.par_chunks(1 << 16)))
            .for_each(|(out, (g, y))| {
                for ((o, &g), &y) in out.iter_mut().zip(g).zip(y) {
                    *o = if y > 0.0 { g } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// `dst (cols x rows) = srcᵀ` for a row-major `src (rows x cols)`. Eight source rows at a time:
/// each output run of eight is contiguous, and the eight source lines stay in L1 while `c`
/// walks along them.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const R: usize = 8;
    let full = rows / R * R;
    for r0 in (0..full).step_by(R) {
        let block: [&[f32]; R] = std::array::from_fn(|k| &src[(r0 + k) * cols..][..cols]);
        for (c, out) in dst.chunks_exact_mut(rows).take(cols).enumerate() {
            let out: &mut [f32; R] = (&mut out[r0..r0 + R]).try_into().expect("R values");
            for k in 0..R {
                out[k] = block[k][c];
            }
        }
    }
    for r in full..rows {
        for c in 0..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// A sum in 16 lanes, which the compiler vectorises (a plain `f32` sum must stay serial).
fn lane_sum(v: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (l, x) in lanes.iter_mut().zip(chunk) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Where a convolution's backward pass gets `dL/d(conv output)` of image `i`, `(O, oh, ow)`:
/// the output gradient itself, or (for a fused block) one rebuilt from a smaller gradient.
pub(crate) trait ConvGradSource: Send + Sync {
    /// Values of the op's output gradient per image.
    fn grad_len(&self) -> usize;
    /// Writes image `i`'s gradient with respect to the convolution's output into `out`, given
    /// that image's slice of the op's output gradient.
    fn conv_grad(&self, i: usize, grad: &[f32], out: &mut [f32]);
}

/// The convolution's output gradient is the op's output gradient.
pub(crate) struct Direct {
    pub len: usize,
}

impl ConvGradSource for Direct {
    fn grad_len(&self) -> usize {
        self.len
    }

    fn conv_grad(&self, _i: usize, grad: &[f32], out: &mut [f32]) {
        out.copy_from_slice(grad);
    }
}

/// All of a convolution's gradients in one pass over the images, packed as
/// `[dL/dx (N·C·H·W values, when `with_input` is set) | dL/dkernel (O·C·kh·kw) | dL/dbias (O)]`:
/// per image, `col2im(kernelᵀ · g)` and `g · patchesᵀ`. Images go in fixed chunks, summed in
/// order, so the result does not depend on the number of threads.
pub(crate) struct ConvGrads<S> {
    pub shape: ConvShape,
    pub source: S,
    pub with_input: bool,
}

impl<S: ConvGradSource> ConvGrads<S> {
    fn chunk(
        &self,
        x: &[f32],
        k: &[f32],
        grad: &[f32],
        first: usize,
        n: usize,
        mut dx: Option<&mut [f32]>,
    ) -> Vec<f32> {
        let s = &self.shape;
        let (kk, p, o) = (s.patch_len(), s.positions(), s.out_channels);
        let (mut col, mut patches, mut g) = (
            vec![0f32; kk * p],
            vec![0f32; p * kk],
            vec![0f32; s.out_len()],
        );
        let mut acc = vec![0f32; o * kk + o];
        let (dk, db) = acc.split_at_mut(o * kk);
        let len = self.source.grad_len();
        for i in first..(first + PARAM_GRAD_CHUNK).min(n) {
            self.source.conv_grad(i, &grad[i * len..][..len], &mut g);
            im2col(s, &x[i * s.in_len()..][..s.in_len()], &mut col);
            // gemm runs this product 1.5-3x faster with the patches as rows than with a
            // transposed view of the columns (measured: examples/gemm_shapes.rs).
            transpose(&col, kk, p, &mut patches);
            matmul(
                dk,
                MatRef::rows(&g, p),
                MatRef::rows(&patches, kk),
                (o, kk, p),
                true,
            );
            for (d, plane) in db.iter_mut().zip(g.chunks(p)) {
                *d += lane_sum(plane);
            }
            if let Some(dx) = dx.as_deref_mut() {
                // `col` is free again: reuse it for kernelᵀ · g.
                matmul(
                    &mut col,
                    MatRef::transposed(k, kk),
                    MatRef::rows(&g, p),
                    (kk, p, o),
                    false,
                );
                col2im_add(s, &col, &mut dx[(i - first) * s.in_len()..][..s.in_len()]);
            }
        }
        acc
    }
}

impl<S: ConvGradSource> CustomOp3 for ConvGrads<S> {
    fn name(&self) -> &'static str {
        "simplecnn-conv2d-grads"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = &self.shape;
        let n = s.check_input(self.name(), xl.dims())?;
        s.check_kernel(self.name(), kl.dims())?;
        if gl.dims().first() != Some(&n) || gl.shape().elem_count() != n * self.source.grad_len() {
            candle_core::bail!(
                "{}: gradient {:?} does not match the forward pass",
                self.name(),
                gl.dims()
            );
        }
        let x = contiguous_f32(self.name(), xs, xl)?;
        let g = contiguous_f32(self.name(), gs, gl)?;
        let k = contiguous_f32(self.name(), ks, kl)?;
        let params = s.out_channels * s.patch_len() + s.out_channels;
        let dx_len = if self.with_input { n * s.in_len() } else { 0 };
        let mut out = vec![0f32; dx_len + params];
        let (dx, tail) = out.split_at_mut(dx_len);
        let partials: Vec<Vec<f32>> = if self.with_input {
            dx.par_chunks_mut(PARAM_GRAD_CHUNK * s.in_len())
                .enumerate()
                .map(|(c, dx)| self.chunk(x, k, g, c * PARAM_GRAD_CHUNK, n, Some(dx)))
                .collect()
        } else {
            (0..n.div_ceil(PARAM_GRAD_CHUNK))
                .into_par_iter()
                .map(|c| self.chunk(x, k, g, c * PARAM_GRAD_CHUNK, n, None))
                .collect()
        };
        for partial in &partials {
            tail.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// Runs [`ConvGrads`] and splits its output into `(dL/dx, dL/dkernel, dL/dbias)`.
pub(crate) fn conv_grads<S: ConvGradSource + 'static>(
    x: &Tensor,
    grad: &Tensor,
    kernel: &Tensor,
    shape: ConvShape,
    source: S,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    // The network's input (the images) needs no gradient: skip the product for it.
    let with_input = x.track_op();
    let op = ConvGrads {
        shape,
        source,
        with_input,
    };
    let packed = x.apply_op3_no_bwd(&grad.contiguous()?, kernel, &op)?;
    let dx_len = if with_input { x.elem_count() } else { 0 };
    let kernel_len = shape.out_channels * shape.patch_len();
    let dx = match with_input {
        true => Some(packed.narrow(0, 0, dx_len)?.reshape(x.shape())?),
        false => None,
    };
    let dk = packed
        .narrow(0, dx_len, kernel_len)?
        .reshape(&shape.kernel_dims()[..])?;
    let db = packed.narrow(0, dx_len + kernel_len, shape.out_channels)?;
    Ok((dx, Some(dk), Some(db)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_element() {
        let (rows, cols) = (37, 21);
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut dst = vec![0f32; rows * cols];
        transpose(&src, rows, cols, &mut dst);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(dst[c * rows + r], src[r * cols + c]);
            }
        }
    }

    #[test]
    fn valid_range_matches_brute_force() {
        for (k, pad, stride, len) in [
            (0, 1, 1, 5),
            (2, 1, 1, 5),
            (1, 0, 2, 6),
            (2, 3, 2, 4),
            (4, 0, 3, 3),
        ] {
            let out = 8;
            let want: Vec<usize> = (0..out)
                .filter(|&o| {
                    let i = (o * stride + k) as isize - pad as isize;
                    i >= 0 && (i as usize) < len
                })
                .collect();
            let got: Vec<usize> = valid_range(k, pad, stride, len, out).collect();
            assert_eq!(got, want, "k={k} pad={pad} stride={stride} len={len}");
        }
    }
}
