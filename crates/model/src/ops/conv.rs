//! 2-D convolution (NCHW tensors, kernels `(out, in, kh, kw)`) as im2row + gemm on a
//! channels-last copy of each image, with bias and an optional ReLU fused into the forward pass.
//!
//! Why channels-last inside: with an image as `(H·W, C)`, one kernel row of a patch is a
//! single run of `kw·C` contiguous values, so the patch matrix `(positions, kh·kw·C)` is
//! written row by row, and every product of the forward and backward passes reads its
//! operands as rows or as a transposed view that gemm packs well (all ≥ 100 GFLOP/s on one
//! core, `cargo run --release -p simplecnn-bench --example gemm_shapes`). Only the images and
//! outputs, 1/9 the size of their patch matrices, are transposed at the op's edges.

use std::ops::Range;

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

    /// Columns of the patch matrix: one per kernel weight of an output channel.
    pub(crate) fn patch_len(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }

    /// Rows of the patch matrix: one per output position.
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

/// The kernel offsets `k < kernel` that put output index `o` on an input index
/// `o * stride + k - pad` inside `0..len`: a contiguous range.
fn kernel_span(o: usize, kernel: usize, stride: usize, pad: usize, len: usize) -> Range<usize> {
    let start = o * stride;
    let lo = pad.saturating_sub(start).min(kernel);
    let hi = (len + pad).saturating_sub(start).min(kernel);
    lo..hi.max(lo)
}

/// Position of a kernel weight `(c, ki, kj)` in a patch row: `(ki, kj, c)` order, as Keras
/// stores kernels, so that one kernel row of a patch is one run of the channels-last image.
fn patch_index(s: &ConvShape, c: usize, ki: usize, kj: usize) -> usize {
    (ki * s.kernel_w + kj) * s.in_channels + c
}

/// Calls `f(flat index in (O, C, kh, kw), output channel, patch index)` for every weight.
fn for_each_weight(s: &ConvShape, mut f: impl FnMut(usize, usize, usize)) {
    let mut flat = 0;
    for o in 0..s.out_channels {
        for c in 0..s.in_channels {
            for ki in 0..s.kernel_h {
                for kj in 0..s.kernel_w {
                    f(flat, o, patch_index(s, c, ki, kj));
                    flat += 1;
                }
            }
        }
    }
}

/// `kernel (O, C, kh, kw)` as the `(patch, O)` matrix that turns patch rows into output rows.
pub(crate) fn kernel_rows(s: &ConvShape, kernel: &[f32]) -> Vec<f32> {
    let o = s.out_channels;
    let mut rows = vec![0f32; kernel.len()];
    for_each_weight(s, |flat, oc, r| rows[r * o + oc] = kernel[flat]);
    rows
}

/// `kernel (O, C, kh, kw)` as `(O, patch)`: each output channel's weights in patch order.
fn kernel_cols(s: &ConvShape, kernel: &[f32]) -> Vec<f32> {
    let kk = s.patch_len();
    let mut cols = vec![0f32; kernel.len()];
    for_each_weight(s, |flat, oc, r| cols[oc * kk + r] = kernel[flat]);
    cols
}

/// The inverse of [`kernel_rows`]: a `(patch, O)` gradient into `kernel (O, C, kh, kw)`.
fn rows_to_kernel(s: &ConvShape, rows: &[f32], kernel: &mut [f32]) {
    let o = s.out_channels;
    for_each_weight(s, |flat, oc, r| kernel[flat] = rows[r * o + oc]);
}

/// Where each output position's patch comes from in a channels-last image `(H·W, C)`: calls
/// `f((oy, ox), kernel rows, kernel columns)` with the kernel offsets that land inside the
/// image (empty when the patch lies wholly in the padding), then [`PatchRun`] turns a kernel
/// row into the image run it reads.
fn for_each_patch(s: &ConvShape, mut f: impl FnMut((usize, usize), Range<usize>, Range<usize>)) {
    for oy in 0..s.out_h {
        let kis = kernel_span(oy, s.kernel_h, s.stride_h, s.pad_top, s.in_h);
        for ox in 0..s.out_w {
            let kjs = kernel_span(ox, s.kernel_w, s.stride_w, s.pad_left, s.in_w);
            f((oy, ox), kis.clone(), kjs);
        }
    }
}

/// One kernel row of a patch that lies inside the image: `len` values from `patch_at` in the
/// patch row and from `image_at` in the channels-last image.
struct PatchRun {
    patch_at: usize,
    image_at: usize,
    len: usize,
}

impl PatchRun {
    fn new(s: &ConvShape, (oy, ox): (usize, usize), ki: usize, kjs: &Range<usize>) -> Self {
        let (c, run) = (s.in_channels, s.kernel_w * s.in_channels);
        let iy = oy * s.stride_h + ki - s.pad_top;
        let ix = ox * s.stride_w + kjs.start - s.pad_left;
        PatchRun {
            patch_at: ki * run + kjs.start * c,
            image_at: (iy * s.in_w + ix) * c,
            len: kjs.len() * c,
        }
    }
}

/// A channels-last image `(H·W, C)` to its patch rows `(positions, kh·kw·C)`, zeros where the
/// kernel overhangs the padding.
fn im2row(s: &ConvShape, xh: &[f32], rows: &mut [f32]) {
    let (c, kk, run) = (s.in_channels, s.patch_len(), s.kernel_w * s.in_channels);
    for_each_patch(s, |(oy, ox), kis, kjs| {
        let row = &mut rows[(oy * s.out_w + ox) * kk..][..kk];
        if kjs.is_empty() {
            return row.fill(0.0);
        }
        // Zeros only where the kernel overhangs the image; the rest is copied.
        row[..kis.start * run].fill(0.0);
        row[kis.end * run..].fill(0.0);
        for ki in kis {
            let part = &mut row[ki * run..][..run];
            part[..kjs.start * c].fill(0.0);
            part[kjs.end * c..].fill(0.0);
            let r = PatchRun::new(s, (oy, ox), ki, &kjs);
            row[r.patch_at..][..r.len].copy_from_slice(&xh[r.image_at..][..r.len]);
        }
    });
}

/// The adjoint of [`im2row`]: adds each patch-row entry onto its pixel of `dxh (H·W, C)`.
fn row2im_add(s: &ConvShape, rows: &[f32], dxh: &mut [f32]) {
    let kk = s.patch_len();
    for_each_patch(s, |(oy, ox), kis, kjs| {
        if kjs.is_empty() {
            return;
        }
        let row = &rows[(oy * s.out_w + ox) * kk..][..kk];
        for ki in kis {
            let r = PatchRun::new(s, (oy, ox), ki, &kjs);
            let dst = &mut dxh[r.image_at..][..r.len];
            dst.iter_mut()
                .zip(&row[r.patch_at..][..r.len])
                .for_each(|(d, v)| *d += v);
        }
    });
}

/// Per-thread buffers for one image: its channels-last copy and its patch rows.
pub(crate) struct Patches {
    xh: Vec<f32>,
    pub rows: Vec<f32>,
}

impl Patches {
    pub fn new(s: &ConvShape) -> Self {
        Patches {
            xh: vec![0f32; s.in_len()],
            rows: vec![0f32; s.positions() * s.patch_len()],
        }
    }

    /// Fills `rows` with the patches of image `x (C, H, W)`.
    pub fn load(&mut self, s: &ConvShape, x: &[f32]) {
        transpose(x, s.in_channels, s.in_h * s.in_w, &mut self.xh);
        im2row(s, &self.xh, &mut self.rows);
    }
}

/// `out (positions, O) = patch rows · kernel rows`: one image's convolution, channels-last,
/// before bias and activation.
pub(crate) fn conv_rows(s: &ConvShape, patches: &[f32], kernel_rows: &[f32], out: &mut [f32]) {
    let (kk, o) = (s.patch_len(), s.out_channels);
    matmul(
        out,
        MatRef::rows(patches, kk),
        MatRef::rows(kernel_rows, o),
        (s.positions(), o, kk),
        false,
    );
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
        let (p, o) = (s.positions(), s.out_channels);
        let kr = kernel_rows(s, k);
        let mut y = vec![0f32; n * s.out_len()];
        y.par_chunks_mut(s.out_len())
            .zip(x.par_chunks(s.in_len()))
            .for_each_init(
                || (Patches::new(s), vec![0f32; p * o]),
                |(patches, out), (y, x)| {
                    patches.load(s, x);
                    conv_rows(s, &patches.rows, &kr, out);
                    for row in out.chunks_exact_mut(o) {
                        for (v, &bias) in row.iter_mut().zip(b) {
                            *v = if self.relu {
                                (*v + bias).max(0.0)
                            } else {
                                *v + bias
                            };
                        }
                    }
                    transpose(out, p, o, y);
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
        conv_grads(x, &grad, kernel, self.shape, Direct { shape: self.shape })
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

/// `dst (cols x rows) = srcᵀ` for a row-major `src (rows x cols)`: 4x4 tiles in SSE registers
/// (part of every x86-64 CPU), the edges one value at a time.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    let (tiled_rows, tiled_cols) = transpose_tiles(src, rows, cols, dst);
    for r in 0..rows {
        let cs = if r < tiled_rows {
            tiled_cols..cols
        } else {
            0..cols
        };
        for c in cs {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// Transposes the `4·⌊rows/4⌋ x 4·⌊cols/4⌋` corner; returns its size.
#[cfg(target_arch = "x86_64")]
fn transpose_tiles(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) -> (usize, usize) {
    use std::arch::x86_64::*;
    let (tr, tc) = (rows / 4 * 4, cols / 4 * 4);
    for r0 in (0..tr).step_by(4) {
        for c0 in (0..tc).step_by(4) {
            // SAFETY: rows r0..r0+4 and columns c0..c0+4 lie inside the `rows x cols` matrix,
            // which `transpose` checked both slices hold; SSE is part of the x86-64 baseline.
            unsafe {
                let p = src.as_ptr().add(r0 * cols + c0);
                let a = _mm_loadu_ps(p);
                let b = _mm_loadu_ps(p.add(cols));
                let c = _mm_loadu_ps(p.add(2 * cols));
                let d = _mm_loadu_ps(p.add(3 * cols));
                let (ab_lo, cd_lo) = (_mm_unpacklo_ps(a, b), _mm_unpacklo_ps(c, d));
                let (ab_hi, cd_hi) = (_mm_unpackhi_ps(a, b), _mm_unpackhi_ps(c, d));
                let q = dst.as_mut_ptr().add(c0 * rows + r0);
                _mm_storeu_ps(q, _mm_movelh_ps(ab_lo, cd_lo));
                _mm_storeu_ps(q.add(rows), _mm_movehl_ps(cd_lo, ab_lo));
                _mm_storeu_ps(q.add(2 * rows), _mm_movelh_ps(ab_hi, cd_hi));
                _mm_storeu_ps(q.add(3 * rows), _mm_movehl_ps(cd_hi, ab_hi));
            }
        }
    }
    (tr, tc)
}

#[cfg(not(target_arch = "x86_64"))]
fn transpose_tiles(_: &[f32], _: usize, _: usize, _: &mut [f32]) -> (usize, usize) {
    (0, 0)
}

/// Where a convolution's backward pass gets `dL/d(conv output)` of image `i`, channels-last
/// `(positions, O)`: from the output gradient itself, or (for a fused block) rebuilt from a
/// smaller gradient.
pub(crate) trait ConvGradSource: Send + Sync {
    /// Values of the op's output gradient per image.
    fn grad_len(&self) -> usize;
    /// Writes image `i`'s gradient with respect to the convolution's output into `out`
    /// `(positions, O)`, given that image's slice of the op's output gradient.
    fn conv_grad(&self, i: usize, grad: &[f32], out: &mut [f32]);
}

/// The convolution's output gradient is the op's output gradient `(O, positions)`.
pub(crate) struct Direct {
    pub shape: ConvShape,
}

impl ConvGradSource for Direct {
    fn grad_len(&self) -> usize {
        self.shape.out_len()
    }

    fn conv_grad(&self, _i: usize, grad: &[f32], out: &mut [f32]) {
        transpose(grad, self.shape.out_channels, self.shape.positions(), out);
    }
}

/// All of a convolution's gradients in one pass over the images, packed as
/// `[dL/dx (N·C·H·W values, when `with_input` is set) | dL/dkernel (O·C·kh·kw) | dL/dbias (O)]`.
/// Per image, with `g (positions, O)`: kernel rows `+= patchesᵀ · g`, bias `+=` the column sums
/// of `g`, and the input gradient `row2im(g · kernel colsᵀ)`. Images go in fixed chunks, summed
/// in order, so the result does not depend on the number of threads.
pub(crate) struct ConvGrads<S> {
    pub shape: ConvShape,
    pub source: S,
    pub with_input: bool,
}

impl<S: ConvGradSource> ConvGrads<S> {
    /// The partial `[kernel rows (patch, O) | bias (O)]` of images `first..first + CHUNK`, and
    /// their input gradients into `dx` when given (with `kernel_cols`).
    fn chunk(
        &self,
        x: &[f32],
        kernel_cols: &[f32],
        grad: &[f32],
        first: usize,
        n: usize,
        mut dx: Option<&mut [f32]>,
    ) -> Vec<f32> {
        let s = &self.shape;
        let (kk, p, o) = (s.patch_len(), s.positions(), s.out_channels);
        let mut patches = Patches::new(s);
        let mut g = vec![0f32; p * o];
        let (mut drows, mut dxh) = match dx {
            Some(_) => (vec![0f32; p * kk], vec![0f32; s.in_len()]),
            None => (Vec::new(), Vec::new()),
        };
        let mut acc = vec![0f32; kk * o + o];
        let (dk, db) = acc.split_at_mut(kk * o);
        let len = self.source.grad_len();
        for i in first..(first + PARAM_GRAD_CHUNK).min(n) {
            self.source.conv_grad(i, &grad[i * len..][..len], &mut g);
            patches.load(s, &x[i * s.in_len()..][..s.in_len()]);
            matmul(
                dk,
                MatRef::transposed(&patches.rows, kk),
                MatRef::rows(&g, o),
                (kk, o, p),
                true,
            );
            for row in g.chunks_exact(o) {
                db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
            if let Some(dx) = dx.as_deref_mut() {
                matmul(
                    &mut drows,
                    MatRef::rows(&g, o),
                    MatRef::rows(kernel_cols, kk),
                    (p, kk, o),
                    false,
                );
                dxh.fill(0.0);
                row2im_add(s, &drows, &mut dxh);
                let dx = &mut dx[(i - first) * s.in_len()..][..s.in_len()];
                transpose(&dxh, s.in_h * s.in_w, s.in_channels, dx);
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
        let kernel_len = s.out_channels * s.patch_len();
        let dx_len = if self.with_input { n * s.in_len() } else { 0 };
        let mut out = vec![0f32; dx_len + kernel_len + s.out_channels];
        let (dx, params) = out.split_at_mut(dx_len);
        let partials: Vec<Vec<f32>> = if self.with_input {
            let kc = kernel_cols(s, k);
            dx.par_chunks_mut(PARAM_GRAD_CHUNK * s.in_len())
                .enumerate()
                .map(|(c, dx)| self.chunk(x, &kc, g, c * PARAM_GRAD_CHUNK, n, Some(dx)))
                .collect()
        } else {
            (0..n.div_ceil(PARAM_GRAD_CHUNK))
                .into_par_iter()
                .map(|c| self.chunk(x, &[], g, c * PARAM_GRAD_CHUNK, n, None))
                .collect()
        };
        let mut total = vec![0f32; kernel_len + s.out_channels];
        for partial in &partials {
            total.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
        }
        let (dk, db) = params.split_at_mut(kernel_len);
        rows_to_kernel(s, &total[..kernel_len], dk);
        db.copy_from_slice(&total[kernel_len..]);
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
    fn kernel_span_matches_brute_force() {
        for (kernel, pad, stride, len) in [(3, 1, 1, 5), (3, 0, 2, 6), (5, 3, 2, 4), (4, 0, 3, 3)] {
            for o in 0..8 {
                let want: Vec<usize> = (0..kernel)
                    .filter(|&k| {
                        let i = (o * stride + k) as isize - pad as isize;
                        i >= 0 && (i as usize) < len
                    })
                    .collect();
                let got: Vec<usize> = kernel_span(o, kernel, stride, pad, len).collect();
                assert_eq!(
                    got, want,
                    "o={o} kernel={kernel} pad={pad} stride={stride} len={len}"
                );
            }
        }
    }

    #[test]
    fn kernel_layouts_round_trip() {
        let s = ConvShape::new((3, 5, 5), 4, (3, 2), (1, 1), ((1, 1), (0, 1))).unwrap();
        let k: Vec<f32> = (0..4 * 3 * 3 * 2).map(|i| i as f32).collect();
        let rows = kernel_rows(&s, &k);
        let cols = kernel_cols(&s, &k);
        let mut back = vec![0f32; k.len()];
        rows_to_kernel(&s, &rows, &mut back);
        assert_eq!(back, k);
        // (patch, O) and (O, patch) are transposes of each other.
        let mut t = vec![0f32; k.len()];
        transpose(&rows, s.patch_len(), 4, &mut t);
        assert_eq!(t, cols);
        // Weight (o=1, c=2, ki=0, kj=1) sits at patch index (0·2 + 1)·3 + 2 = 5.
        assert_eq!(cols[s.patch_len() + 5], k[((3 + 2) * 3) * 2 + 1]);
    }
}
