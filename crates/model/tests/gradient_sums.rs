//! The patched candle backward pass (vendor/candle-core/PATCHED.md) sums a node's gradients
//! in place where it owns the running sum alone: the sums must be the ones a fresh tensor
//! would hold, and a gradient tensor shared with another node must never be changed.

use candle_core::{Device, Result, Tensor, Var};

fn values(n: usize, salt: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + salt) * 0.618).sin() * 3.0)
        .collect()
}

/// Two branches of one input, each with a fresh gradient: the second is added in place, and
/// the sum is bit for bit the out-of-place one. Long enough to be split across threads.
#[test]
fn sums_of_fresh_gradients_are_exact() -> Result<()> {
    let n = 100_003;
    let x = Var::from_vec(values(n, 0.0), n, &Device::Cpu)?;
    let w = Tensor::from_vec(values(n, 1.0), n, &Device::Cpu)?;
    let (p, q) = (x.affine(2.0, 0.0)?, x.affine(3.0, 1.0)?);
    let loss = (p + q)?.mul(&w)?.sum_all()?;
    let grads = loss.backward()?;
    let got = grads.get(&x).expect("x has a gradient").to_vec1::<f32>()?;
    let want: Vec<f32> = values(n, 1.0).iter().map(|w| w * 2.0 + w * 3.0).collect();
    assert_eq!(got, want);
    Ok(())
}

/// `x·3 + (x + y)·1`, in both orders: the Add hands one gradient tensor (its storage held by
/// nothing else) to both `x` and `y`; when `x·3`'s gradient reaches `x` after that, adding it
/// in place would give `y` the gradient of `x` too.
#[test]
fn a_gradient_shared_between_nodes_is_left_alone() -> Result<()> {
    let n = 1_000;
    let w = values(n, 1.0);
    for tripled_first in [true, false] {
        let x = Var::from_vec(values(n, 0.0), n, &Device::Cpu)?;
        let y = Var::from_vec(values(n, 2.0), n, &Device::Cpu)?;
        let sum = (x.as_tensor() + y.as_tensor())?.affine(1.0, 0.0)?;
        let tripled = x.affine(3.0, 0.0)?;
        let s = match tripled_first {
            true => (tripled + sum)?,
            false => (sum + tripled)?,
        };
        let weights = Tensor::from_vec(w.clone(), n, &Device::Cpu)?;
        let grads = s.mul(&weights)?.sum_all()?.backward()?;
        let dx = grads.get(&x).expect("x has a gradient").to_vec1::<f32>()?;
        let dy = grads.get(&y).expect("y has a gradient").to_vec1::<f32>()?;
        assert_eq!(dy, w, "x·3 first: {tripled_first}");
        let want: Vec<f32> = w.iter().map(|w| w * 3.0 + w).collect();
        let want_other_order: Vec<f32> = w.iter().map(|w| w + w * 3.0).collect();
        assert!(
            dx == want || dx == want_other_order,
            "x·3 first: {tripled_first}"
        );
    }
    Ok(())
}
