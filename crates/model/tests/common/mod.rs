//! Helpers the model's integration tests share.
#![allow(dead_code)]

use candle_core::{Device, Tensor};

pub const CPU: Device = Device::Cpu;

pub fn rand(dims: &[usize], seed: u64) -> Tensor {
    // A cheap deterministic generator, so proptest's shrinking sees the same values.
    let n: usize = dims.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, dims, &CPU).unwrap()
}

/// `max |a - b| <= tol * max(1, max |b|)`.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        diff <= tol * scale,
        "{what}: max difference {diff} (scale {scale})"
    );
}
