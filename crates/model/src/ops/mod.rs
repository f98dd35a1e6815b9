//! CPU kernels for the layers that dominate training time, as candle custom ops with their own
//! backward passes.
//!
//! candle 0.11's CPU conv2d computes the input gradient with a direct loop (no gemm), the kernel
//! gradient as a batch-as-channels convolution, an input gradient even for the network's input,
//! and builds max-pool's backward out of upsample/compare/avg-pool. Here:
//! * [`conv2d`]: im2row (patches of a channels-last copy of each image) + gemm for the forward
//!   pass, the input gradient and the kernel gradient, parallel over the batch; bias and ReLU
//!   fused into the forward pass; no input gradient when the input does not track gradients
//!   (the images).
//! * [`max_pool2d`]: a direct forward that records each window's first maximum; the backward
//!   scatters the gradient there (what TensorFlow does).
//! * [`conv_pool`]: Conv2D → ReLU → MaxPool2D (→ Dropout) in one op, never materialising the
//!   convolution's full-size output.
//! * [`dropout`]: a mask multiply, forward and backward.
//! * [`add_relu`]: Add → ReLU (a residual block's end) in one pass each way.
//! * [`depthwise_conv2d`]: DepthwiseConv2D as direct loops (candle's grouped convolution is one
//!   small convolution per channel).
//! * [`batch_norm`]: BatchNormalization (batch or fixed statistics) with the activation after it,
//!   and [`gelu`] alone, in plain loops with two backward passes.
//!
//! Only f32 tensors on the CPU take these paths; [`crate::Model`] keeps candle's own ops
//! everywhere else (CUDA), and the tests hold these ops to candle's.

mod block;
mod conv;
mod dense;
mod depthwise;
mod dropout;
mod gemm;
pub mod gemm_bf16;
mod gemm_narrow;
mod handoff;
mod join;
mod lowering;
mod norm;
mod output;
mod pool;
mod shard;
mod transpose;

pub use block::{conv_pool, ConvPoolShape};
pub use conv::{conv2d, conv2d_with_layouts, conv2d_with_sums, ConvShape, ImageLayout, Precision};
pub use dense::{dense, dense_in};
pub use depthwise::{depthwise_conv2d, DepthwiseShape};
pub use dropout::dropout;
pub use join::add_relu;
pub use norm::{
    batch_norm, batch_norm_add_relu, gelu, image_sums, BatchMoments, ImageSums, NormActivation,
    NormSpec, NormStatistics,
};
pub use output::fill_unwritten_outputs_with_nan;
pub use pool::{max_pool2d, PoolShape};
pub use shard::{images_per_partial, BatchShard};

use candle_core::{backend::BackendStorage, CpuStorage, Layout, Result};

/// A gradient op's packed output `[dL/dx (when `with_input`) | dL/dkernel | dL/dbias]` split
/// into its three tensors: `dx` shaped as `x`, the kernel's as `kernel_dims`.
fn split_packed_grads(
    packed: &candle_core::Tensor,
    x: &candle_core::Tensor,
    with_input: bool,
    kernel_dims: &[usize],
    bias_len: usize,
) -> Result<(
    Option<candle_core::Tensor>,
    Option<candle_core::Tensor>,
    Option<candle_core::Tensor>,
)> {
    let dx_len = if with_input { x.elem_count() } else { 0 };
    let kernel_len: usize = kernel_dims.iter().product();
    let dx = match with_input {
        true => Some(packed.narrow(0, 0, dx_len)?.reshape(x.shape())?),
        false => None,
    };
    let dk = packed.narrow(0, dx_len, kernel_len)?.reshape(kernel_dims)?;
    let db = packed.narrow(0, dx_len + kernel_len, bias_len)?;
    Ok((dx, Some(dk), Some(db)))
}

/// The f32 values of a contiguous CPU tensor, or an error naming the op.
fn contiguous_f32<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => candle_core::bail!("{op}: expects f32, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expects a contiguous tensor"),
    }
}
