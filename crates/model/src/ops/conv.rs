//! 2-D convolution (NCHW tensors, kernels `(out, in, kh, kw)`) as gemm on channels-last copies
//! of each image (see [`super::lowering`]), with bias and an optional ReLU fused into the
//! forward pass, and one backward routine for the input, kernel and bias gradients.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use std::sync::Arc;

use super::handoff::Handoff;
use super::lowering::{
    input_grad_kernel, kernel_rows, rows_to_kernel, Grid, ImageConv, KernelRows,
};
use super::norm::{image_sums, ImageSums};
use super::shard::{images_per_partial, BatchShard};
use super::transpose::transpose_into;
use super::{contiguous_f32, split_packed_grads};

/// How the images entering or leaving an op lie in memory: NCHW, as every tensor of the model,
/// or channels-last `(N, H, W, C)`, which the fused blocks pass each other (the ops work
/// channels-last inside, so two transposes per image each way are saved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageLayout {
    #[default]
    Nchw,
    Nhwc,
}

impl ImageLayout {
    /// The dims of `n` images of `c` channels, `h x w`, in this layout.
    pub fn dims(self, n: usize, c: usize, h: usize, w: usize) -> [usize; 4] {
        match self {
            ImageLayout::Nchw => [n, c, h, w],
            ImageLayout::Nhwc => [n, h, w, c],
        }
    }
}

/// The arithmetic of a convolution's matrix products: Keras' dtype policies `float32` and
/// `mixed_bfloat16` (operands rounded to bf16, sums in f32: [`super::gemm_bf16`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    MixedBf16,
}

impl Precision {
    /// Keras' name of the dtype policy.
    pub fn keras_name(self) -> &'static str {
        match self {
            Precision::F32 => "float32",
            Precision::MixedBf16 => "mixed_bfloat16",
        }
    }
}

/// The geometry of one convolution, batch size aside, and the precision of its products.
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
    pub precision: Precision,
}

impl ConvShape {
    /// `input` is `(channels, height, width)`; `padding` is `((top, bottom), (left, right))`.
    /// `None` when the padded input is smaller than the kernel or a size is zero.
    /// The same convolution with its products in `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        ConvShape { precision, ..self }
    }

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
            precision: Precision::F32,
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

    /// The batch size of an input laid out as `layout` says, or an error naming the op.
    pub(crate) fn check_input(
        &self,
        op: &str,
        dims: &[usize],
        layout: ImageLayout,
    ) -> Result<usize> {
        let n = dims.first().copied().unwrap_or(0);
        let expected = layout.dims(n, self.in_channels, self.in_h, self.in_w);
        if dims != expected {
            candle_core::bail!(
                "{op}: input {dims:?} does not match {layout:?} (N, {}, {}, {})",
                expected[1],
                expected[2],
                expected[3]
            );
        }
        Ok(n)
    }

    /// The batch size and the values of a forward pass's input, kernel and bias, checked
    /// against this shape.
    pub(crate) fn operands<'a>(
        &self,
        op: &str,
        layout: ImageLayout,
        (xs, xl): (&'a CpuStorage, &Layout),
        (ks, kl): (&'a CpuStorage, &Layout),
        (bs, bl): (&'a CpuStorage, &Layout),
    ) -> Result<ConvOperands<'a>> {
        let n = self.check_input(op, xl.dims(), layout)?;
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

/// `relu(conv(x, kernel) + bias)` (or without the ReLU) for f32 CPU tensors `x (N, C, H, W)`,
/// `kernel (O, C, kh, kw)`, `bias (O)`. Differentiable in all three.
pub fn conv2d(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    shape: ConvShape,
    relu: bool,
) -> Result<Tensor> {
    conv2d_with_layouts(
        x,
        kernel,
        bias,
        shape,
        relu,
        Default::default(),
        &BatchShard::whole(),
    )
}

/// [`conv2d`] with its input and output laid out as `(input, output)` say, on `shard`'s images
/// of a global batch (its kernel and bias gradients are the global batch's).
pub fn conv2d_with_layouts(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    shape: ConvShape,
    relu: bool,
    layouts: (ImageLayout, ImageLayout),
    shard: &BatchShard,
) -> Result<Tensor> {
    let op = Conv2dForward::new(shape, relu, layouts, shard, None);
    op.apply(x, kernel, bias)
}

/// [`conv2d_with_layouts`], with the per-image sums of its output that a training
/// BatchNormalization after it takes ([`super::NormStatistics::Summed`]), made while each
/// image is still in cache.
pub fn conv2d_with_sums(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    shape: ConvShape,
    relu: bool,
    layouts: (ImageLayout, ImageLayout),
    shard: &BatchShard,
) -> Result<(Tensor, ImageSums)> {
    let sums = Arc::new(Handoff::default());
    let op = Conv2dForward::new(shape, relu, layouts, shard, Some(sums.clone()));
    let y = op.apply(x, kernel, bias)?;
    let sums = sums.expect("simplecnn-conv2d", "the forward pass gave no sums")?;
    Ok((y, sums))
}

struct Conv2dForward {
    shape: ConvShape,
    relu: bool,
    input: ImageLayout,
    output: ImageLayout,
    shard: BatchShard,
    /// Where the forward pass leaves its output's per-image sums, when asked for them.
    sums: Option<Arc<Handoff<ImageSums>>>,
}

impl Conv2dForward {
    fn new(
        shape: ConvShape,
        relu: bool,
        (input, output): (ImageLayout, ImageLayout),
        shard: &BatchShard,
        sums: Option<Arc<Handoff<ImageSums>>>,
    ) -> Self {
        Conv2dForward {
            shape,
            relu,
            input,
            output,
            shard: shard.clone(),
            sums,
        }
    }

    fn apply(self, x: &Tensor, kernel: &Tensor, bias: &Tensor) -> Result<Tensor> {
        x.contiguous()?
            .apply_op3(&kernel.contiguous()?, &bias.contiguous()?, self)
    }
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
        } = s.operands(self.name(), self.input, (xs, xl), (ks, kl), (bs, bl))?;
        let (p, o) = (s.positions(), s.out_channels);
        let kr = kernel_rows(s, k);
        let grid = Grid::of(s);
        // SAFETY: every output row of every image is written below.
        let mut y = unsafe { super::output::unwritten(n * s.out_len()) };
        // Without sums asked for, one empty slot per image.
        let mut sums = ImageSums::new(n, if self.sums.is_some() { o } else { 0 });
        y.par_chunks_mut(s.out_len())
            .zip(x.par_chunks(s.in_len()))
            .zip(sums.per_image_mut())
            .for_each_init(
                || (ImageConv::new(s), vec![0f32; grid.len * o]),
                |(conv, out), ((y, x), sums)| {
                    conv.load(x, self.input);
                    conv.forward(&kr, out);
                    let finish = |v: f32, bias: f32| match self.relu {
                        true => (v + bias).max(0.0),
                        false => v + bias,
                    };
                    for oy in 0..s.out_h {
                        let row = &mut out[oy * grid.pitch * o..][..s.out_w * o];
                        match self.output {
                            ImageLayout::Nchw => {
                                for px in row.chunks_exact_mut(o) {
                                    px.iter_mut().zip(b).for_each(|(v, &b)| *v = finish(*v, b));
                                }
                                transpose_into(row, o, s.out_w, o, &mut y[oy * s.out_w..], p)
                            }
                            // Bias and ReLU on the way out: one pass over the grid, not two.
                            ImageLayout::Nhwc => {
                                let dst = y[oy * s.out_w * o..][..s.out_w * o].chunks_exact_mut(o);
                                for (dst, px) in dst.zip(row.chunks_exact(o)) {
                                    for ((d, &v), &b) in dst.iter_mut().zip(px).zip(b) {
                                        *d = finish(v, b);
                                    }
                                }
                            }
                        }
                    }
                    if self.sums.is_some() {
                        image_sums(y, o, p, self.output, sums);
                    }
                },
            );
        if let Some(slot) = &self.sums {
            slot.put(sums);
        }
        let dims = self.output.dims(n, o, s.out_h, s.out_w);
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
            shape: self.shape,
            layout: self.output,
        };
        conv_grads(
            x,
            &grad,
            kernel,
            self.shape,
            source,
            self.input,
            &self.shard,
        )
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
        // SAFETY: every element is written below.
        let mut out = unsafe { super::output::unwritten(g.len()) };
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

/// Where a convolution's backward pass gets `dL/d(conv output)` of image `i`, channels-last on
/// the lowering's [`Grid`]: from the output gradient itself, or (for a fused block) rebuilt
/// from a smaller gradient.
pub(crate) trait ConvGradSource: Send + Sync {
    /// Values of the op's output gradient per image.
    fn grad_len(&self) -> usize;
    /// Writes image `i`'s gradient with respect to the convolution's output into `out`
    /// `(grid, O)`, zeros in the grid's gaps, given that image's slice of the op's output
    /// gradient.
    fn conv_grad(&self, i: usize, grad: &[f32], out: &mut [f32]);
}

/// The convolution's output gradient is the op's output gradient, `(O, positions)` or
/// `(positions, O)` as `layout` says.
pub(crate) struct Direct {
    pub shape: ConvShape,
    pub layout: ImageLayout,
}

impl ConvGradSource for Direct {
    fn grad_len(&self) -> usize {
        self.shape.out_len()
    }

    fn conv_grad(&self, _i: usize, grad: &[f32], out: &mut [f32]) {
        let s = &self.shape;
        let (o, grid) = (s.out_channels, Grid::of(s));
        for oy in 0..s.out_h {
            let dst = &mut out[oy * grid.pitch * o..];
            match self.layout {
                ImageLayout::Nchw => {
                    transpose_into(&grad[oy * s.out_w..], s.positions(), o, s.out_w, dst, o)
                }
                ImageLayout::Nhwc => {
                    dst[..s.out_w * o].copy_from_slice(&grad[oy * s.out_w * o..][..s.out_w * o])
                }
            }
        }
        grid.zero_gaps(s, out);
    }
}

/// All of a convolution's gradients in one pass over the images, packed as
/// `[dL/dx (N·C·H·W values, when `with_input` is set) | dL/dkernel (O·C·kh·kw) | dL/dbias (O)]`.
/// Per image, with `g (grid, O)`: the kernel gradient by [`ImageConv::kernel_grad`], the bias
/// gradient as the column sums of `g`, the input gradient by [`ImageConv::input_grad`]. Images
/// go in fixed groups of the global batch, summed in order (every process' groups folded by
/// the shard), so the result depends on neither the thread count nor the process count.
pub(crate) struct ConvGrads<S> {
    pub shape: ConvShape,
    pub source: S,
    pub with_input: bool,
    /// The layout of the input, and of its gradient.
    pub input_layout: ImageLayout,
    pub shard: BatchShard,
}

impl<S: ConvGradSource> ConvGrads<S> {
    /// The partial `[kernel rows (patch, O) | bias (O)]` of images `first..first + count`
    /// (summed image by image), and their input gradients into `dx` when given (with
    /// [`input_grad_kernel`]), on one thread's buffers for the image's convolution.
    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &self,
        conv: &mut ImageConv,
        x: &[f32],
        input_kernel: &KernelRows,
        grad: &[f32],
        first: usize,
        count: usize,
        n: usize,
        mut dx: Option<&mut [f32]>,
    ) -> Vec<f32> {
        let s = &self.shape;
        let (kk, o) = (s.patch_len(), s.out_channels);
        let mut acc = vec![0f32; kk * o + o];
        let (dk, db) = acc.split_at_mut(kk * o);
        let len = self.source.grad_len();
        for i in first..(first + count).min(n) {
            self.source
                .conv_grad(i, &grad[i * len..][..len], conv.output_grad_mut());
            conv.load(&x[i * s.in_len()..][..s.in_len()], self.input_layout);
            conv.kernel_grad(dk);
            for row in conv.output_grad().chunks_exact(o) {
                db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
            if let Some(dx) = dx.as_deref_mut() {
                let dx = &mut dx[(i - first) * s.in_len()..][..s.in_len()];
                conv.input_grad(input_kernel, dx, self.input_layout);
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
        let n = s.check_input(self.name(), xl.dims(), self.input_layout)?;
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
        // SAFETY: the chunks write every image's dx (input_grad writes all of it); the kernel
        // and bias gradients are written after the fold.
        let mut out = unsafe { super::output::unwritten(dx_len + kernel_len + s.out_channels) };
        let (dx, params) = out.split_at_mut(dx_len);
        let per = images_per_partial(self.shard.global(n));
        self.shard.check(self.name(), n, per)?;
        // One thread's buffers serve all its chunks: made afresh per chunk, their pages were
        // cleared by the kernel again and again (2.6 % of a ResNet-20 step).
        let scratch = || ImageConv::new(s);
        let partials: Vec<Vec<f32>> = if self.with_input {
            let kc = input_grad_kernel(s, k);
            dx.par_chunks_mut(per * s.in_len())
                .enumerate()
                .map_init(scratch, |sc, (c, dx)| {
                    self.chunk(sc, x, &kc, g, c * per, per, n, Some(dx))
                })
                .collect()
        } else {
            (0..n.div_ceil(per))
                .into_par_iter()
                .map_init(scratch, |sc, c| {
                    self.chunk(sc, x, &KernelRows::none(), g, c * per, per, n, None)
                })
                .collect()
        };
        let total = self.shard.fold(&partials, kernel_len + s.out_channels)?;
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
    input_layout: ImageLayout,
    shard: &BatchShard,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    // The network's input (the images) needs no gradient: skip the product for it.
    let with_input = x.track_op();
    let op = ConvGrads {
        shape,
        source,
        with_input,
        input_layout,
        shard: shard.clone(),
    };
    let packed = x.apply_op3_no_bwd(&grad.contiguous()?, kernel, &op)?;
    split_packed_grads(
        &packed,
        x,
        with_input,
        &shape.kernel_dims(),
        shape.out_channels,
    )
}
