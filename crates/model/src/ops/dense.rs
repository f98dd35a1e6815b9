//! Dense on flat features: `x (N, K) · kernel (K, O) + bias (O)` in fixed row chunks, with its
//! own backward.
//!
//! candle's matmul hands the whole batch to one gemm, whose blocking (and so the order of the
//! additions, and so the bits of each row) depends on the batch size; here every product is
//! over a fixed chunk of [`GROUP_CHUNK`] rows, so a row's values do not depend on which batch,
//! or which process' share of it, the row sits in. The kernel and bias gradients are partials
//! over the global batch's groups, folded by the shard, as a convolution's are. Under
//! `mixed_bfloat16` the products take bf16 operands as a convolution's do (the kernel packed
//! once per call; products narrower than 32 columns stay f32).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::Precision;
use super::gemm::MatRef;
use super::lowering::{packed_for, product};
use super::shard::{images_per_partial, BatchShard, GROUP_CHUNK};
use super::{contiguous_f32, split_packed_grads};

/// `x · kernel + bias` for f32 CPU tensors `x (N, K)`, `kernel (K, O)`, `bias (O)`, on
/// `shard`'s rows of a global batch; differentiable in all three.
pub fn dense(x: &Tensor, kernel: &Tensor, bias: &Tensor, shard: &BatchShard) -> Result<Tensor> {
    dense_in(x, kernel, bias, shard, Precision::F32)
}

/// [`dense`] with its products, forward and backward, in `precision`.
pub fn dense_in(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    shard: &BatchShard,
    precision: Precision,
) -> Result<Tensor> {
    let op = DenseForward {
        shard: shard.clone(),
        precision,
    };
    x.contiguous()?
        .apply_op3(&kernel.contiguous()?, &bias.contiguous()?, op)
}

struct DenseForward {
    shard: BatchShard,
    precision: Precision,
}

/// `(N, K, O)` of the operands, checked.
fn dims(op: &str, xl: &Layout, kl: &Layout, bias: usize) -> Result<(usize, usize, usize)> {
    match (xl.dims(), kl.dims()) {
        (&[n, k], &[k2, o]) if k == k2 && bias == o => Ok((n, k, o)),
        (x, kernel) => candle_core::bail!(
            "{op}: input {x:?}, kernel {kernel:?} and {bias} bias values do not match"
        ),
    }
}

impl CustomOp3 for DenseForward {
    fn name(&self) -> &'static str {
        "simplecnn-dense"
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
        let b = contiguous_f32(self.name(), bs, bl)?;
        let (n, k, o) = dims(self.name(), xl, kl, b.len())?;
        let x = contiguous_f32(self.name(), xs, xl)?;
        let w = contiguous_f32(self.name(), ks, kl)?;
        let mut y = vec![0f32; n * o];
        if o > 0 {
            let w = MatRef::rows(w, o);
            let packed = packed_for(self.precision, w, (k, o));
            y.par_chunks_mut(GROUP_CHUNK * o)
                .zip(x.par_chunks(GROUP_CHUNK * k.max(1)))
                .for_each(|(y, x)| {
                    let rows = y.len() / o;
                    let a = MatRef::rows(x, k);
                    let kernel = (w, packed.as_ref());
                    product(self.precision, y, a, kernel, (rows, o, k), false);
                    for row in y.chunks_exact_mut(o) {
                        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                    }
                });
        }
        Ok((CpuStorage::F32(y), Shape::from((n, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let with_input = x.track_op();
        let op = DenseGrads {
            with_input,
            shard: self.shard.clone(),
            precision: self.precision,
        };
        let packed = x.apply_op3_no_bwd(&grad_res.contiguous()?, kernel, &op)?;
        let o = kernel.dim(1)?;
        split_packed_grads(&packed, x, with_input, kernel.dims(), o)
    }
}

/// Kernel rows per tile of the kernel gradient: a tile's partials stay in cache while they
/// are added.
const TILE_ROWS: usize = 64;

/// `(x, dL/dy, kernel) → [dL/dx (when `with_input`) | dL/dkernel (K·O) | dL/dbias (O)]`: the
/// input gradient per chunk of rows, the weights' gradients as partials over the global
/// batch's groups, added in order.
struct DenseGrads {
    with_input: bool,
    shard: BatchShard,
    precision: Precision,
}

impl CustomOp3 for DenseGrads {
    fn name(&self) -> &'static str {
        "simplecnn-dense-grads"
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
        let o = kl.dims().get(1).copied().unwrap_or(0);
        let (n, k, o) = dims(self.name(), xl, kl, o)?;
        if gl.dims() != [n, o] {
            candle_core::bail!(
                "{}: gradient {:?} does not match the output ({n}, {o})",
                self.name(),
                gl.dims()
            );
        }
        let x = contiguous_f32(self.name(), xs, xl)?;
        let dy = contiguous_f32(self.name(), gs, gl)?;
        let w = contiguous_f32(self.name(), ks, kl)?;
        let dx_len = if self.with_input { n * k } else { 0 };
        let mut out = vec![0f32; dx_len + k * o + o];
        let (dx, params) = out.split_at_mut(dx_len);
        if self.with_input && k > 0 && o > 0 {
            let wt = MatRef::transposed(w, o);
            let packed = packed_for(self.precision, wt, (o, k));
            dx.par_chunks_mut(GROUP_CHUNK * k)
                .zip(dy.par_chunks(GROUP_CHUNK * o))
                .for_each(|(dx, dy)| {
                    let rows = dy.len() / o;
                    let a = MatRef::rows(dy, o);
                    let b = (wt, packed.as_ref());
                    product(self.precision, dx, a, b, (rows, k, o), false);
                });
        }
        let per = images_per_partial(self.shard.global(n));
        self.shard.check(self.name(), n, per)?;
        let groups = n.div_ceil(per);
        let rows_of = |g: usize| per.min(n - g * per);
        // Group g's kernel gradient for kernel rows `k0..k0 + len`: x_gᵀ · dy_g on those rows.
        let tile = |g: usize, k0: usize, len: usize, into: &mut [f32]| {
            let rows = rows_of(g);
            let xt = MatRef {
                data: &x[g * per * k + k0..],
                row_stride: 1,
                col_stride: k,
            };
            let dy = MatRef::rows(&dy[g * per * o..][..rows * o], o);
            product(self.precision, into, xt, (dy, None), (len, o, rows), false);
        };
        let bias_partial = |g: usize| {
            let mut db = vec![0f32; o];
            for row in dy[g * per * o..][..rows_of(g) * o].chunks_exact(o.max(1)) {
                db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
            db
        };
        // This process' groups added in order to the running sum of the processes before it,
        // tile by tile (64 kernel rows: each group's partial of a tile stays in cache while it
        // is added), the tiles in parallel; every process then has the global total.
        let (kernel_grad, bias_grad) = params.split_at_mut(k * o);
        let kernel_total = self.shard.fold_with(k * o, &mut |running: &mut [f32]| {
            running
                .par_chunks_mut(TILE_ROWS * o.max(1))
                .enumerate()
                .for_each(|(t, acc)| {
                    let len = acc.len() / o.max(1);
                    let mut part = vec![0f32; acc.len()];
                    for g in 0..groups {
                        tile(g, t * TILE_ROWS, len, &mut part);
                        acc.iter_mut().zip(&part).for_each(|(a, p)| *a += p);
                    }
                });
        })?;
        kernel_grad.copy_from_slice(&kernel_total);
        let bias: Vec<Vec<f32>> = (0..groups).map(bias_partial).collect();
        bias_grad.copy_from_slice(&self.shard.fold(&bias, o)?);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}
