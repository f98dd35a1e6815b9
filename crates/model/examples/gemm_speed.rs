//! GFLOP/s of one thread's matrix products in f32 (the `gemm` crate) and with bf16 operands
//! (`ops::gemm_bf16`), on the shapes a convolution's lowering gives (per image and kernel row:
//! positions x (kw · C) · (kw · C) x O):
//!
//!   cargo run --release -p simplecnn-model --example gemm_speed
use std::time::Instant;

use simplecnn_model::ops::gemm_bf16::{bf16_path, matmul_at_rows, matmul_rows};

/// GFLOP/s of one core's register-only loops of `vfmadd` (f32) and `vdpbf16ps` (bf16 pairs):
/// what the instructions themselves can do here.
#[cfg(target_arch = "x86_64")]
fn instruction_peaks() -> Option<(f64, f64)> {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dot(n: usize) -> f32 {
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3c00_3c00));
        let mut acc = [_mm512_setzero_ps(); 12];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, b);
            }
        }
        acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
    }
    #[target_feature(enable = "avx512f")]
    unsafe fn fma(n: usize) -> f32 {
        let (a, b) = (_mm512_set1_ps(1.0), _mm512_set1_ps(1e-4));
        let mut acc = [_mm512_setzero_ps(); 12];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(a, b, *x);
            }
        }
        acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
    }
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")) {
        return None;
    }
    let n = 10_000_000;
    let time = |f: &dyn Fn() -> f32| {
        let t = Instant::now();
        std::hint::black_box(f());
        t.elapsed().as_secs_f64()
    };
    // SAFETY: both features were checked above.
    let f32_rate = (n * 12 * 32) as f64 / time(&|| unsafe { fma(n) }) / 1e9;
    let bf16_rate = (n * 12 * 64) as f64 / time(&|| unsafe { dot(n) }) / 1e9;
    Some((f32_rate, bf16_rate))
}

fn main() {
    println!("bf16 path: {}", bf16_path());
    #[cfg(target_arch = "x86_64")]
    if let Some((f, b)) = instruction_peaks() {
        println!(
            "instruction peaks, one core: vfmadd f32 {f:.1} GFLOP/s, vdpbf16ps {b:.1} GFLOP/s"
        );
    }
    // (name, m, n, k, a given transposed): per image and kernel row, the forward product
    // positions x (kw · C) · (kw · C) x O, and the kernel gradient's (kw · C) x positions ·
    // positions x O with the patches read transposed.
    let shapes = [
        ("airbench 256->256 at 8x8", 80, 256, 768, false),
        ("airbench 64->256 at 16x16", 288, 256, 192, false),
        ("airbench 256->256 at 16x16", 288, 256, 768, false),
        ("airbench 24->64 at 32x32", 1088, 64, 72, false),
        ("  kernel grad 256->256 at 8x8", 768, 256, 80, true),
        ("  kernel grad 256->256 at 16x16", 768, 256, 288, true),
        ("  kernel grad 64->64 at 32x32", 192, 64, 1088, true),
        ("resnet20 16->16 at 32x32", 1088, 16, 48, false),
        ("  kernel grad 16->16 at 32x32", 48, 16, 1088, true),
        ("resnet20 32->32 at 16x16", 271, 32, 96, false),
        ("  kernel grad 32->32 at 16x16", 96, 32, 271, true),
        ("resnet20 64->64 at 8x8", 71, 64, 192, false),
        ("  kernel grad 64->64 at 8x8", 192, 64, 71, true),
        ("square 512", 512, 512, 512, false),
    ];
    for (name, m, n, k, transposed) in shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut dst = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let mut rate = [0f64; 2];
        for (slot, bf16) in [false, true].into_iter().enumerate() {
            // About 0.3 s of products, best of 3.
            let reps = ((3e8 / flops) as usize).max(1);
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let t = Instant::now();
                for _ in 0..reps {
                    match transposed {
                        true => matmul_at_rows(&mut dst, &a, &b, (m, n, k), bf16),
                        false => matmul_rows(&mut dst, &a, &b, (m, n, k), bf16),
                    }
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            rate[slot] = flops / best / 1e9;
        }
        println!(
            "{name:<32} {m:>5}x{n:<4}x{k:<4}  f32 {:>6.1} GFLOP/s  bf16 {:>6.1} GFLOP/s  ({:.2}x)",
            rate[0],
            rate[1],
            rate[1] / rate[0]
        );
    }
}
