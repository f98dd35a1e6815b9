//! Dropout with a given mask, forward and backward in plain loops (candle's elementwise
//! multiply runs on a spinning thread pool that competes with the gemm threads for 2 cores).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// `x * mask` elementwise, for an f32 CPU tensor and a mask of `x.elem_count()` values;
/// differentiable in `x`.
pub fn dropout(x: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaskMul(Arc::new(mask)))
}

struct MaskMul(Arc<Vec<f32>>);

impl CustomOp1 for MaskMul {
    fn name(&self) -> &'static str {
        "simplecnn-dropout"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), xs, xl)?;
        if x.len() != self.0.len() {
            candle_core::bail!(
                "{}: mask of {} values for {:?}",
                self.name(),
                self.0.len(),
                xl.dims()
            );
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(1 << 15)
            .zip(x.par_chunks(1 << 15).zip(self.0.par_chunks(1 << 15)))
            .for_each(|(y, (x, m))| {
                for ((y, x), m) in y.iter_mut().zip(x).zip(m) {
                    *y = x * m;
                }
            });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad_res
                .contiguous()?
                .apply_op1_no_bwd(&MaskMul(self.0.clone()))?,
        ))
    }
}
