//! One image's convolution as matrix products on channels-last buffers, and its gradients.
//!
//! Two lowerings, picked per shape:
//! * *Padded* (stride 1 and every pad at most kernel − 1: "same" and "valid"): the image is
//!   copied channels-last into a zero-bordered buffer ([`PaddedPlane`]) whose rows are
//!   `P = W + max(left pad, right pad)` pixels: the zero columns past each row's end are that
//!   row's right padding and the next row's left padding at once. For kernel row `ki`, the
//!   patch rows of all outputs are then one strided view of that buffer — rows `kw·C` long,
//!   `C` apart, overlapping — so the convolution is `kh` gemms read straight from the image,
//!   with no patch matrix written and read back. Outputs land on a grid of pitch `P`: the
//!   `P − out_w` positions past each row's end are computed and ignored (1 in 17 and 1 in 33
//!   for the tutorial's layers, far less than the patch matrix cost). The input gradient is
//!   the same product on the zero-bordered output gradient with the kernel flipped.
//! * *Patches* (any other geometry): the patch matrix `(positions, kh·kw·C)` (im2row), on a
//!   grid of pitch `out_w`.

use std::ops::Range;

use super::conv::{ConvShape, ImageLayout, Precision};
use super::gemm::{matmul, MatRef};
use super::gemm_bf16::{matmul_bf16, matmul_bf16_packed, PackedB};
use super::transpose::{transpose, transpose_into};

/// Where a convolution's outputs (or their gradients) sit in a channels-last buffer: output
/// `(oy, ox)` at row `oy * pitch + ox`, `O` values per row; `len` rows in all.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    pub pitch: usize,
    pub len: usize,
}

impl Grid {
    pub fn of(s: &ConvShape) -> Self {
        let pitch = if padded_lowering(s) {
            PaddedPlane::input(s).pitch
        } else {
            s.out_w
        };
        Grid {
            pitch,
            len: (s.out_h - 1) * pitch + s.out_w,
        }
    }

    /// Zeros the rows between one output row's end and the next row's start.
    pub fn zero_gaps(&self, s: &ConvShape, buf: &mut [f32]) {
        let o = s.out_channels;
        for oy in 0..s.out_h - 1 {
            buf[(oy * self.pitch + s.out_w) * o..(oy + 1) * self.pitch * o].fill(0.0);
        }
    }
}

/// Whether `s` takes the padded lowering.
fn padded_lowering(s: &ConvShape) -> bool {
    let (pad_bottom, pad_right) = (
        (s.out_h + s.kernel_h - 1).checked_sub(s.in_h + s.pad_top),
        (s.out_w + s.kernel_w - 1).checked_sub(s.in_w + s.pad_left),
    );
    s.stride_h == 1
        && s.stride_w == 1
        && [s.pad_top, pad_bottom.unwrap_or(usize::MAX)]
            .iter()
            .all(|&p| p < s.kernel_h)
        && [s.pad_left, pad_right.unwrap_or(usize::MAX)]
            .iter()
            .all(|&p| p < s.kernel_w)
}

/// Whether the input gradient takes the padded lowering too. With few input channels (an RGB
/// image) its products would be `C` columns wide, a poor gemm shape (conv2d_1's input
/// gradient took twice as long); patch rows do better there.
fn padded_input_grad(s: &ConvShape) -> bool {
    padded_lowering(s) && s.in_channels >= 8
}

/// A `height x width` plane of `channels`-value pixels inside a zero border, as the padded
/// lowering reads it: rows of `pitch` pixels; a leading zero row, `top` zero rows, the plane's
/// rows (pixel `(y, x)` at row `1 + top + y`, column `x`, zeros in columns `width..pitch`),
/// `bottom` zero rows. A stride-1 convolution of the bordered plane with a `kh x kw` kernel is
/// then, for each kernel row `ki`, a product of [`PaddedPlane::view`]`(ki)` and that kernel
/// row's weights, on a grid of pitch `pitch`.
#[derive(Clone, Copy, Debug)]
struct PaddedPlane {
    top: usize,
    left: usize,
    height: usize,
    width: usize,
    pitch: usize,
    rows: usize,
    channels: usize,
    kernel_w: usize,
}

impl PaddedPlane {
    /// `(top, bottom, left, right)` zero padding around a `(height, width)` plane.
    fn new(
        (height, width): (usize, usize),
        channels: usize,
        (top, bottom, left, right): (usize, usize, usize, usize),
        kernel_w: usize,
    ) -> Self {
        PaddedPlane {
            top,
            left,
            height,
            width,
            pitch: width + left.max(right),
            rows: 1 + top + height + bottom,
            channels,
            kernel_w,
        }
    }

    /// The convolution's input, padded as the convolution pads it.
    fn input(s: &ConvShape) -> Self {
        let bottom = s.out_h + s.kernel_h - 1 - s.in_h - s.pad_top;
        let right = s.out_w + s.kernel_w - 1 - s.in_w - s.pad_left;
        PaddedPlane::new(
            (s.in_h, s.in_w),
            s.in_channels,
            (s.pad_top, bottom, s.pad_left, right),
            s.kernel_w,
        )
    }

    /// The output gradient, padded so that its convolution with the flipped kernel is the
    /// input gradient: `kernel − 1 − pad` on each side.
    fn output_grad(s: &ConvShape) -> Self {
        let bottom = s.out_h + s.kernel_h - 1 - s.in_h - s.pad_top;
        let right = s.out_w + s.kernel_w - 1 - s.in_w - s.pad_left;
        let (kh, kw) = (s.kernel_h - 1, s.kernel_w - 1);
        PaddedPlane::new(
            (s.out_h, s.out_w),
            s.out_channels,
            (kh - s.pad_top, kh - bottom, kw - s.pad_left, kw - right),
            s.kernel_w,
        )
    }

    fn len(&self) -> usize {
        self.rows * self.pitch * self.channels
    }

    /// Where pixel `(y, x)` of the plane starts in the buffer.
    fn at(&self, y: usize, x: usize) -> usize {
        ((1 + self.top + y) * self.pitch + x) * self.channels
    }

    /// Kernel row `ki`'s patches: grid position `p` is row `p`, `kw·channels` values from
    /// `buf[start + p·channels]` (a column left of the plane reads the previous row's zeros).
    fn view<'a>(&self, buf: &'a [f32], ki: usize) -> MatRef<'a> {
        MatRef {
            data: &buf[((1 + ki) * self.pitch - self.left) * self.channels..],
            row_stride: self.channels,
            col_stride: 1,
        }
    }

    /// [`Self::view`] transposed, for the kernel gradient.
    fn view_t<'a>(&self, buf: &'a [f32], ki: usize) -> MatRef<'a> {
        let v = self.view(buf, ki);
        MatRef {
            row_stride: 1,
            col_stride: self.channels,
            ..v
        }
    }

    /// Values in one kernel row of a patch.
    fn run(&self) -> usize {
        self.kernel_w * self.channels
    }

    /// The rows of an `out_h`-row output grid of `grid_len` rows whose kernel row `ki` reads
    /// anything but the zero border: the first output rows' `ki` reads only the top border
    /// (`top − ki` rows of them), the last rows' the bottom one. The product over the rows
    /// outside would add only zeros (2 of the 3·H kernel-row products of a 3x3 "same"
    /// convolution on an H-row image: 8 % of an 8x8 layer's work).
    fn live_rows(&self, ki: usize, out_h: usize, grid_len: usize) -> Range<usize> {
        let front = self.top.saturating_sub(ki).min(out_h);
        // Output row `oy` reads plane row 1 + ki + oy; the image's rows end at top + height.
        let first_bottom = (self.top + self.height).saturating_sub(ki);
        let end = match first_bottom < out_h {
            true => first_bottom * self.pitch,
            false => grid_len,
        };
        let start = (front * self.pitch).min(grid_len);
        start..end.max(start)
    }

    /// The padded lowering's convolution of `buf` (laid out as this plane): `dst (grid_len, n)
    /// = Σ_ki view(ki) · kernel piece ki`, `kernel` holding one `(run, n)` piece per kernel row,
    /// on an `out_h`-row grid. Each product covers its [`Self::live_rows`] only; the first
    /// writes zeros where it would have summed only the border. The forward and the input
    /// gradient.
    fn convolve(
        &self,
        precision: Precision,
        buf: &[f32],
        kernel: &KernelRows,
        (kernel_h, n): (usize, usize),
        (out_h, grid_len): (usize, usize),
        dst: &mut [f32],
    ) {
        let run = self.run();
        for ki in 0..kernel_h {
            let live = self.live_rows(ki, out_h, grid_len);
            if ki == 0 {
                dst[..live.start * n].fill(0.0);
                dst[live.end * n..grid_len * n].fill(0.0);
            }
            let b = MatRef::rows(&kernel[ki * run * n..][..run * n], n);
            let a = self.view(buf, ki).skip_rows(live.start);
            let dst = &mut dst[live.start * n..live.end * n];
            let dims = (live.len(), n, run);
            product(precision, dst, a, (b, kernel.packed(ki)), dims, ki > 0);
        }
    }

    /// Rows of the output grid for an output `out_h` rows by `out_w` wide.
    fn grid_len(&self, (out_h, out_w): (usize, usize)) -> usize {
        (out_h - 1) * self.pitch + out_w
    }

    /// Copies one plane row of `width·channels` values in.
    fn write_row(&self, buf: &mut [f32], y: usize, row: &[f32]) {
        buf[self.at(y, 0)..][..self.width * self.channels].copy_from_slice(row);
    }
}

/// Position of a kernel weight `(c, ki, kj)` in a patch row: `(ki, kj, c)` order, as Keras
/// stores kernels, so that one kernel row of a patch is one run of the channels-last image.
fn patch_index(s: &ConvShape, c: usize, ki: usize, kj: usize) -> usize {
    (ki * s.kernel_w + kj) * s.in_channels + c
}

/// Calls `f(flat index in (O, C, kh, kw), output channel, input channel, ki, kj)` for every
/// weight.
fn for_each_weight(s: &ConvShape, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let mut flat = 0;
    for o in 0..s.out_channels {
        for c in 0..s.in_channels {
            for ki in 0..s.kernel_h {
                for kj in 0..s.kernel_w {
                    f(flat, o, c, ki, kj);
                    flat += 1;
                }
            }
        }
    }
}

/// A convolution's kernel laid out for its products, and, under `mixed_bfloat16`, already
/// converted to bf16 pairs for each product that uses it (once per batch, not per image).
pub(crate) struct KernelRows {
    data: Vec<f32>,
    /// Per kernel row (padded lowering) or one (patches); empty in f32.
    packed: Vec<PackedB>,
}

impl std::ops::Deref for KernelRows {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.data
    }
}

impl KernelRows {
    /// No kernel (an input gradient that is not computed).
    pub fn none() -> Self {
        KernelRows {
            data: Vec::new(),
            packed: Vec::new(),
        }
    }

    /// `data`, with its `b` operands packed in bf16 when `s` asks for it: `pieces` of `(k,
    /// n)` rows each, one after another.
    fn with_pieces(s: &ConvShape, data: Vec<f32>, pieces: usize, (k, n): (usize, usize)) -> Self {
        let packed = match s.precision {
            Precision::F32 => Vec::new(),
            Precision::MixedBf16 if n < BF16_MIN_COLUMNS => Vec::new(),
            Precision::MixedBf16 => (0..pieces)
                .map_while(|i| PackedB::new(MatRef::rows(&data[i * k * n..][..k * n], n), (k, n)))
                .collect(),
        };
        KernelRows { data, packed }
    }

    /// The packed piece `i`, if packed.
    fn packed(&self, i: usize) -> Option<&PackedB> {
        self.packed.get(i)
    }
}

/// `kernel (O, C, kh, kw)` as the `(patch, O)` matrix that turns patch rows into output rows.
pub(crate) fn kernel_rows(s: &ConvShape, kernel: &[f32]) -> KernelRows {
    let o = s.out_channels;
    let mut rows = vec![0f32; kernel.len()];
    for_each_weight(s, |flat, oc, c, ki, kj| {
        rows[patch_index(s, c, ki, kj) * o + oc] = kernel[flat]
    });
    match padded_lowering(s) {
        true => {
            let run = PaddedPlane::input(s).run();
            KernelRows::with_pieces(s, rows, s.kernel_h, (run, o))
        }
        false => KernelRows::with_pieces(s, rows, 1, (s.patch_len(), o)),
    }
}

/// The inverse of [`kernel_rows`]: a `(patch, O)` gradient into `kernel (O, C, kh, kw)`.
pub(crate) fn rows_to_kernel(s: &ConvShape, rows: &[f32], kernel: &mut [f32]) {
    let o = s.out_channels;
    for_each_weight(s, |flat, oc, c, ki, kj| {
        kernel[flat] = rows[patch_index(s, c, ki, kj) * o + oc]
    });
}

/// The kernel as [`ImageConv::input_grad`] takes it: padded lowering, flipped and transposed,
/// `((ki, kj, o), C)` with `(ki, kj)` counted from the far corner; patches, `(O, patch)`.
pub(crate) fn input_grad_kernel(s: &ConvShape, kernel: &[f32]) -> KernelRows {
    let (o, c, kk) = (s.out_channels, s.in_channels, s.patch_len());
    let mut out = vec![0f32; kernel.len()];
    let padded = padded_input_grad(s);
    for_each_weight(s, |flat, oc, ic, ki, kj| {
        let at = if padded {
            let (fi, fj) = (s.kernel_h - 1 - ki, s.kernel_w - 1 - kj);
            ((fi * s.kernel_w + fj) * o + oc) * c + ic
        } else {
            oc * kk + patch_index(s, ic, ki, kj)
        };
        out[at] = kernel[flat];
    });
    match padded {
        true => {
            let run = PaddedPlane::output_grad(s).run();
            KernelRows::with_pieces(s, out, s.kernel_h, (run, c))
        }
        false => KernelRows::with_pieces(s, out, 1, (o, kk)),
    }
}

/// Under `mixed_bfloat16`, products with fewer output columns than this stay f32.
pub(crate) const BF16_MIN_COLUMNS: usize = 32;

/// `dst = a · b` (or `+=`) in the op's precision; `packed`, when given, is `b` already in
/// bf16 (see [`packed_for`]).
pub(crate) fn product(
    precision: Precision,
    dst: &mut [f32],
    a: MatRef<'_>,
    (b, packed): (MatRef<'_>, Option<&PackedB>),
    dims: (usize, usize, usize),
    accumulate: bool,
) {
    // Products narrower than a bf16 tile (16-channel layers) stay f32: AMX would fill half a
    // tile and spend more on converting `a` than it saves (0.39x f32 measured on ResNet-20's
    // 16-channel shape).
    let narrow = dims.1 < BF16_MIN_COLUMNS;
    match (precision, packed) {
        (Precision::F32, _) => matmul(dst, a, b, dims, accumulate),
        (Precision::MixedBf16, _) if narrow => matmul(dst, a, b, dims, accumulate),
        (Precision::MixedBf16, Some(p)) => matmul_bf16_packed(dst, a, p, dims.0, accumulate),
        (Precision::MixedBf16, None) => matmul_bf16(dst, a, b, dims, accumulate),
    }
}

/// `b (k x n)` packed in bf16 where `precision` multiplies it so ([`product`]): mixed, and
/// at least [`BF16_MIN_COLUMNS`] columns, on a CPU with bf16 instructions.
pub(crate) fn packed_for(
    precision: Precision,
    b: MatRef<'_>,
    (k, n): (usize, usize),
) -> Option<PackedB> {
    match precision {
        Precision::MixedBf16 if n >= BF16_MIN_COLUMNS => PackedB::new(b, (k, n)),
        _ => None,
    }
}

/// One thread's buffers for convolving images of one shape, one image at a time.
pub(crate) struct ImageConv {
    s: ConvShape,
    grid: Grid,
    /// Padded lowering: the input plane's geometry; `None` for patches.
    plane: Option<PaddedPlane>,
    /// Padded: the zero-bordered channels-last image ([`PaddedPlane`]); patches: `(H·W, C)`.
    image: Vec<f32>,
    /// Patches: the patch rows `(positions, kh·kw·C)`.
    rows: Vec<f32>,
    /// Backward, sized on first use: the output gradient on the grid. With the padded input
    /// gradient, inside its zero border (the input gradient's product reads it there: the
    /// border's pitch is the grid's, so the gradient is written once, not copied in).
    grad: Vec<f32>,
    /// Where the output gradient's grid starts in `grad`, and `grad`'s length.
    grad_place: (usize, usize),
    /// Backward, patches only, sized on first use: the input gradient's patch rows.
    grad_rows: Vec<f32>,
    /// Backward, sized on first use: the input gradient, channels-last (padded: on a grid).
    dx_buf: Vec<f32>,
}

impl ImageConv {
    pub fn new(s: &ConvShape) -> Self {
        let plane = padded_lowering(s).then(|| PaddedPlane::input(s));
        let (image, rows) = match plane {
            // The border is zeroed once here; `load` writes only the inside.
            Some(plane) => (vec![0f32; plane.len()], Vec::new()),
            None => (
                vec![0f32; s.in_len()],
                vec![0f32; s.positions() * s.patch_len()],
            ),
        };
        let grid = Grid::of(s);
        let grad_place = match padded_input_grad(s) {
            true => {
                let border = PaddedPlane::output_grad(s);
                debug_assert_eq!(border.pitch, grid.pitch);
                (border.at(0, 0), border.len())
            }
            false => (0, grid.len * s.out_channels),
        };
        ImageConv {
            s: *s,
            grid,
            plane,
            image,
            rows,
            grad: Vec::new(),
            grad_place,
            grad_rows: Vec::new(),
            dx_buf: Vec::new(),
        }
    }

    /// The output gradient `(grid, O)` for [`Self::kernel_grad`] and [`Self::input_grad`]
    /// to read: the caller writes all of it, zeros in the grid's gaps.
    pub fn output_grad_mut(&mut self) -> &mut [f32] {
        let (at, len) = self.grad_place;
        if self.grad.is_empty() {
            self.grad = vec![0f32; len];
        }
        &mut self.grad[at..][..self.grid.len * self.s.out_channels]
    }

    /// The output gradient as [`Self::output_grad_mut`] left it.
    pub fn output_grad(&self) -> &[f32] {
        let (at, _) = self.grad_place;
        &self.grad[at..][..self.grid.len * self.s.out_channels]
    }

    /// Takes image `x`, `(C, H, W)` or `(H, W, C)` as `layout` says.
    pub fn load(&mut self, x: &[f32], layout: ImageLayout) {
        let s = &self.s;
        let (c, hw, row) = (s.in_channels, s.in_h * s.in_w, s.in_w * s.in_channels);
        match (self.plane, layout) {
            (None, ImageLayout::Nchw) => {
                transpose(x, c, hw, &mut self.image);
                im2row(s, &self.image, &mut self.rows);
            }
            (None, ImageLayout::Nhwc) => im2row(s, x, &mut self.rows),
            (Some(plane), ImageLayout::Nchw) => {
                for iy in 0..s.in_h {
                    let dst = &mut self.image[plane.at(iy, 0)..];
                    transpose_into(&x[iy * s.in_w..], hw, c, s.in_w, dst, c);
                }
            }
            (Some(plane), ImageLayout::Nhwc) => {
                for (iy, x) in x.chunks_exact(row).enumerate() {
                    plane.write_row(&mut self.image, iy, x);
                }
            }
        }
    }

    /// `out (grid, O)`: the loaded image convolved with [`kernel_rows`], before bias.
    pub fn forward(&self, kernel_rows: &KernelRows, out: &mut [f32]) {
        let s = &self.s;
        let (o, kk) = (s.out_channels, s.patch_len());
        let Some(plane) = self.plane else {
            let a = MatRef::rows(&self.rows, kk);
            let b = (MatRef::rows(kernel_rows, o), kernel_rows.packed(0));
            return product(s.precision, out, a, b, (s.positions(), o, kk), false);
        };
        let (kernel, grid) = ((s.kernel_h, o), (s.out_h, self.grid.len));
        plane.convolve(s.precision, &self.image, kernel_rows, kernel, grid, out);
    }

    /// `dkernel_rows (patch, O) += patchesᵀ · g` for the loaded image and its output gradient
    /// `g` ([`Self::output_grad_mut`]).
    pub fn kernel_grad(&self, dkernel_rows: &mut [f32]) {
        let g = self.output_grad();
        let s = &self.s;
        let (o, kk) = (s.out_channels, s.patch_len());
        let Some(plane) = self.plane else {
            let (a, b) = (MatRef::transposed(&self.rows, kk), MatRef::rows(g, o));
            let dims = (kk, o, s.positions());
            return product(s.precision, dkernel_rows, a, (b, None), dims, true);
        };
        let run = plane.run();
        for ki in 0..s.kernel_h {
            let live = match s.precision {
                // Here the border rows are the product's depth, and the f32 gemm's order of
                // additions depends on it: leaving them out (even the trailing ones alone)
                // changed the bits of an airbench94 run, so float32 keeps them.
                Precision::F32 => 0..self.grid.len,
                Precision::MixedBf16 => plane.live_rows(ki, s.out_h, self.grid.len),
            };
            let dst = &mut dkernel_rows[ki * run * o..][..run * o];
            let a = plane.view_t(&self.image, ki).skip_cols(live.start);
            let b = MatRef::rows(g, o).skip_rows(live.start);
            product(s.precision, dst, a, (b, None), (run, o, live.len()), true);
        }
    }

    /// The input gradient `dx` (overwritten; `(C, H, W)` or `(H, W, C)` as `layout` says) of
    /// one image from its output gradient ([`Self::output_grad_mut`]) and
    /// [`input_grad_kernel`].
    pub fn input_grad(&mut self, kernel: &KernelRows, dx: &mut [f32], layout: ImageLayout) {
        let s = self.s;
        let (o, c, hw) = (s.out_channels, s.in_channels, s.in_h * s.in_w);
        if !padded_input_grad(&s) {
            let kk = s.patch_len();
            if self.grad_rows.is_empty() {
                self.grad_rows = vec![0f32; s.positions() * kk];
                self.dx_buf = vec![0f32; s.in_len()];
            }
            let g = &self.grad[self.grad_place.0..][..self.grid.len * o];
            // The patch rows want one row per output position: drop the grid's gaps.
            let compact;
            let g = if self.grid.pitch == s.out_w {
                g
            } else {
                let row = s.out_w * o;
                compact = (0..s.out_h)
                    .flat_map(|oy| &g[oy * self.grid.pitch * o..][..row])
                    .copied()
                    .collect::<Vec<f32>>();
                &compact
            };
            let (a, b) = (MatRef::rows(g, o), MatRef::rows(kernel, kk));
            let (b, dims) = ((b, kernel.packed(0)), (s.positions(), kk, o));
            product(s.precision, &mut self.grad_rows, a, b, dims, false);
            if layout == ImageLayout::Nhwc {
                dx.fill(0.0);
                return row2im_add(&s, &self.grad_rows, dx);
            }
            self.dx_buf.fill(0.0);
            row2im_add(&s, &self.grad_rows, &mut self.dx_buf);
            return transpose(&self.dx_buf, hw, c, dx);
        }
        // dx is the stride-1 convolution of the output gradient, bordered by kernel − 1 − pad
        // zeros on each side, with the flipped kernel: its grid is `H x W`.
        // The output gradient already lies in its border (`output_grad_mut`).
        let plane = PaddedPlane::output_grad(&s);
        let rows = plane.grid_len((s.in_h, s.in_w));
        if self.dx_buf.is_empty() {
            self.dx_buf = vec![0f32; rows * c];
        }
        let grid = (s.in_h, rows);
        plane.convolve(
            s.precision,
            &self.grad,
            kernel,
            (s.kernel_h, c),
            grid,
            &mut self.dx_buf,
        );
        for iy in 0..s.in_h {
            let src = &self.dx_buf[iy * plane.pitch * c..];
            match layout {
                ImageLayout::Nchw => transpose_into(src, c, s.in_w, c, &mut dx[iy * s.in_w..], hw),
                ImageLayout::Nhwc => {
                    dx[iy * s.in_w * c..][..s.in_w * c].copy_from_slice(&src[..s.in_w * c])
                }
            }
        }
    }
}

/// The kernel offsets `k < kernel` that put output index `o` on an input index
/// `o * stride + k - pad` inside `0..len`: a contiguous range.
fn kernel_span(o: usize, kernel: usize, stride: usize, pad: usize, len: usize) -> Range<usize> {
    let start = o * stride;
    let lo = pad.saturating_sub(start).min(kernel);
    let hi = (len + pad).saturating_sub(start).min(kernel);
    lo..hi.max(lo)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The padded lowering's products leave out the rows that read only the zero border; the
    /// results must be those of the products over every grid row: in float32 the same values
    /// (a left-out row's zero may differ in sign from a summed one), under mixed_bfloat16 the
    /// same up to the order of the sums (the kernel gradient's depth shrinks there).
    #[test]
    fn border_rows_left_out_change_no_value() {
        let shapes = [
            ((8, 5, 6), 16, (3, 3), ((1, 1), (1, 1))),
            ((8, 4, 4), 8, (3, 3), ((0, 0), (0, 0))),
            ((8, 7, 5), 8, (5, 5), ((2, 2), (2, 2))),
            ((9, 6, 6), 12, (3, 3), ((2, 0), (1, 0))),
            ((8, 3, 3), 8, (3, 3), ((2, 2), (2, 2))),
            ((8, 4, 5), 8, (2, 2), ((0, 1), (0, 1))),
            ((8, 1, 4), 8, (3, 3), ((1, 1), (1, 1))),
            // Wide enough for the bf16 products.
            ((32, 5, 6), 32, (3, 3), ((1, 1), (1, 1))),
            ((32, 3, 3), 48, (3, 3), ((2, 2), (2, 2))),
            ((40, 7, 5), 32, (5, 5), ((2, 2), (2, 2))),
            ((32, 1, 4), 32, (3, 3), ((1, 1), (1, 1))),
        ];
        let exact = |got: &[f32], want: &[f32], what: &str| assert_eq!(got, want, "{what}");
        let close = |got: &[f32], want: &[f32], what: &str| {
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{what} [{i}]: {g} vs {w}"
                );
            }
        };
        for (input, o, kernel, pads) in shapes {
            let s = ConvShape::new(input, o, kernel, (1, 1), pads).unwrap();
            border_rows_check(&s, exact);
            border_rows_check(&s.with_precision(Precision::MixedBf16), close);
        }
    }

    fn border_rows_check(s: &ConvShape, same: impl Fn(&[f32], &[f32], &str)) {
        use super::super::gemm::test_values;
        assert!(padded_lowering(s) && padded_input_grad(s), "{s:?}");
        let (o, c, run) = (s.out_channels, s.in_channels, s.kernel_w * s.in_channels);
        let k = test_values(o * s.patch_len(), 1);
        let (rows, grad_kernel) = (kernel_rows(s, &k), input_grad_kernel(s, &k));
        let mut conv = ImageConv::new(s);
        conv.load(&test_values(s.in_len(), 2), ImageLayout::Nhwc);
        let grid = conv.grid;
        let g = conv.output_grad_mut();
        g.copy_from_slice(&test_values(g.len(), 3));
        grid.zero_gaps(s, g);
        // The grid's gaps are computed and ignored: only outputs are compared.
        let valid = |buf: &[f32], (h, w, pitch, ch): (usize, usize, usize, usize)| {
            (0..h)
                .flat_map(|y| buf[y * pitch * ch..][..w * ch].to_vec())
                .collect::<Vec<f32>>()
        };

        // The same convolutions with every product over every grid row.
        let every_row = |plane: PaddedPlane, buf: &[f32], kernel: &KernelRows, n, grid_len| {
            let mut dst = vec![f32::NAN; grid_len * n];
            for ki in 0..s.kernel_h {
                let run = plane.run();
                let b = MatRef::rows(&kernel[ki * run * n..][..run * n], n);
                let a = plane.view(buf, ki);
                let (b, dims) = ((b, kernel.packed(ki)), (grid_len, n, run));
                product(s.precision, &mut dst, a, b, dims, ki > 0);
            }
            dst
        };

        let plane = conv.plane.unwrap();
        let mut out = vec![f32::NAN; grid.len * o];
        conv.forward(&rows, &mut out);
        let want = every_row(plane, &conv.image, &rows, o, grid.len);
        let out_grid = (s.out_h, s.out_w, grid.pitch, o);
        same(
            &valid(&out, out_grid),
            &valid(&want, out_grid),
            &format!("forward {s:?}"),
        );

        let mut dk = test_values(rows.len(), 4);
        let mut want = dk.clone();
        conv.kernel_grad(&mut dk);
        for ki in 0..s.kernel_h {
            let (a, b) = (
                plane.view_t(&conv.image, ki),
                MatRef::rows(conv.output_grad(), o),
            );
            let dst = &mut want[ki * run * o..][..run * o];
            product(s.precision, dst, a, (b, None), (run, o, grid.len), true);
        }
        same(&dk, &want, &format!("kernel gradient {s:?}"));

        let mut dx = vec![0f32; s.in_len()];
        conv.input_grad(&grad_kernel, &mut dx, ImageLayout::Nhwc);
        let g_plane = PaddedPlane::output_grad(s);
        let dx_rows = g_plane.grid_len((s.in_h, s.in_w));
        let want = every_row(g_plane, &conv.grad, &grad_kernel, c, dx_rows);
        let in_grid = (s.in_h, s.in_w, g_plane.pitch, c);
        let got = valid(&conv.dx_buf, in_grid);
        same(
            &got,
            &valid(&want, in_grid),
            &format!("input gradient {s:?}"),
        );
    }

    #[test]
    fn kernel_layouts_round_trip() {
        let s = ConvShape::new((3, 5, 5), 4, (3, 2), (2, 1), ((1, 1), (0, 1))).unwrap();
        assert!(!padded_lowering(&s));
        let k: Vec<f32> = (0..4 * 3 * 3 * 2).map(|i| i as f32).collect();
        let rows = kernel_rows(&s, &k);
        let cols = input_grad_kernel(&s, &k);
        let mut back = vec![0f32; k.len()];
        rows_to_kernel(&s, &rows, &mut back);
        assert_eq!(back, k);
        // (patch, O) and (O, patch) are transposes of each other.
        let mut t = vec![0f32; k.len()];
        transpose(&rows, s.patch_len(), 4, &mut t);
        assert_eq!(t, &cols[..]);
        // Weight (o=1, c=2, ki=0, kj=1) sits at patch index (0·2 + 1)·3 + 2 = 5.
        assert_eq!(cols[s.patch_len() + 5], k[((3 + 2) * 3) * 2 + 1]);
    }

    #[test]
    fn lowering_follows_stride_and_padding() {
        let same = ConvShape::new((3, 8, 8), 4, (3, 3), (1, 1), ((1, 1), (1, 1))).unwrap();
        let valid = ConvShape::new((3, 8, 8), 4, (3, 3), (1, 1), ((0, 0), (0, 0))).unwrap();
        let wide = ConvShape::new((3, 8, 8), 4, (3, 3), (1, 1), ((3, 0), (0, 0))).unwrap();
        let strided = ConvShape::new((3, 8, 8), 4, (3, 3), (2, 2), ((1, 1), (1, 1))).unwrap();
        assert!(padded_lowering(&same) && padded_lowering(&valid));
        assert!(!padded_lowering(&wide) && !padded_lowering(&strided));
        let g = Grid::of(&same);
        assert_eq!((g.pitch, g.len), (9, 7 * 9 + 8));
    }
}
