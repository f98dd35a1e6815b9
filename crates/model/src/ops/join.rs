//! Keras' `Add` of two values followed by a ReLU (a residual block's end) as one op: one pass
//! forward, one backward, one value for candle's autograd to keep instead of two. The bits are
//! candle's `(a + b).relu()`: the sum, `max(0)`, and in the backward the gradient times 1 or 0
//! where the sum is `>= 0` or not, to both inputs.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// `max(a + b, 0)` for two f32 CPU tensors of one shape; differentiable in both.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        candle_core::bail!("add_relu: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// One value of `max(a + b, 0)`: the join's forward, here and in
/// [`super::batch_norm_add_relu`].
#[inline(always)]
pub(super) fn add_relu_value(a: f32, b: f32) -> f32 {
    (a + b).max(0.0)
}

/// The gradient `g` of one value of `max(a + b, 0)`, as both `a` and `b` receive it: `g` times 1
/// where the sum is `>= 0`, else times 0 (a product, so a NaN gradient stays NaN).
#[inline(always)]
pub(super) fn add_relu_grad_value(a: f32, b: f32, g: f32) -> f32 {
    let pass = if a + b >= 0.0 { 1.0f32 } else { 0.0 };
    g * pass
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "simplecnn-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (
            contiguous_f32(self.name(), s1, l1)?,
            contiguous_f32(self.name(), s2, l2)?,
        );
        if a.len() != b.len() {
            candle_core::bail!("{}: {} and {} values", self.name(), a.len(), b.len());
        }
        // SAFETY: every element is written below.
        let mut y = unsafe { super::output::unwritten(a.len()) };
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(y, (a, b))| {
                for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                    *y = add_relu_value(a, b);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = a.apply_op3_no_bwd(b, &grad.contiguous()?, &ReluGrad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// The gradient through the ReLU: `grad * (a + b >= 0 ? 1 : 0)`, as candle's ReLU backward
/// computes it (a product, so a NaN gradient stays NaN).
struct ReluGrad;

impl CustomOp3 for ReluGrad {
    fn name(&self) -> &'static str {
        "simplecnn-add-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(self.name(), s1, l1)?;
        let b = contiguous_f32(self.name(), s2, l2)?;
        let g = contiguous_f32(self.name(), s3, l3)?;
        if a.len() != b.len() || a.len() != g.len() {
            candle_core::bail!("{}: lengths differ", self.name());
        }
        // SAFETY: every element is written below.
        let mut out = unsafe { super::output::unwritten(a.len()) };
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((out, (a, b)), g)| {
                for (((o, &a), &b), &g) in out.iter_mut().zip(a).zip(b).zip(g) {
                    *o = add_relu_grad_value(a, b, g);
                }
            });
        Ok((CpuStorage::F32(out), l3.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values, gradients and all: candle's `(a + b).relu()`, bit for bit, with exact zeros,
    /// negative zeros and sums of exactly zero among the values.
    #[test]
    fn matches_candles_add_then_relu_bit_for_bit() {
        crate::ops::fill_unwritten_outputs_with_nan();
        let n = 3 * CHUNK / 2 + 7;
        let random =
            |i: usize, salt: usize| ((i * 7919 + salt * 104_729) as f32 * 0.618).sin() * 3.0;
        // Sums of exactly zero (of zeros, of negative zeros, of opposites) every few values.
        let pair = |i: usize| -> (f32, f32) {
            match i % 9 {
                0 => (0.0, 0.0),
                1 => (-0.0, -0.0),
                2 => (-0.0, 0.0),
                3 => (1.5, -1.5),
                _ => (random(i, 1), random(i, 2)),
            }
        };
        let a: Vec<f32> = (0..n).map(|i| pair(i).0).collect();
        let b: Vec<f32> = (0..n).map(|i| pair(i).1).collect();
        let up: Vec<f32> = (0..n).map(|i| random(i, 3)).collect();
        let run = |fused: bool| {
            let a = Var::from_slice(&a, (n,), &Device::Cpu).unwrap();
            let b = Var::from_slice(&b, (n,), &Device::Cpu).unwrap();
            let up = Tensor::from_slice(&up, (n,), &Device::Cpu).unwrap();
            let y = match fused {
                true => add_relu(a.as_tensor(), b.as_tensor()).unwrap(),
                false => (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap(),
            };
            let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            (
                bits(&y),
                bits(grads.get(a.as_tensor()).unwrap()),
                bits(grads.get(b.as_tensor()).unwrap()),
            )
        };
        assert!(run(true) == run(false));
        let shapes = add_relu(
            &Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
            &Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        assert!(shapes.is_err());
    }
}
