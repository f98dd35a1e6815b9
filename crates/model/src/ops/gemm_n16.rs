//! `dst (m x 16) = a (m x k) · b (k x 16)`: products with 16 output columns, the 16-channel
//! convolutions of ResNet-20's first stage (forward, input gradient and kernel gradient alike),
//! on AVX-512. The `gemm` crate turns a row-major destination with 16 columns into a 16-row
//! problem that its 16 x 6 micro-kernel runs at ~0.6x of what it reaches on wider shapes
//! (106 against 155–170 GFLOP/s here: `gemm_speed`), plus packing. Here one output row is one
//! register: [`ROWS`] rows of accumulators, one `b` row loaded per step of `k`, `a`'s values
//! broadcast straight from wherever its view lies (the padded lowering's overlapping rows, or
//! patchesᵀ), with no packing. Each element is summed in `k` order, the same on every run.

use super::gemm::MatRef;

/// The output columns this kernel takes: one AVX-512 register of f32.
pub(crate) const COLUMNS: usize = 16;

/// Output rows one tile keeps in registers.
const ROWS: usize = 16;

/// `dst = a · b`, or `dst += a · b` when `accumulate`, if this kernel takes the product: `n`
/// is [`COLUMNS`], `b`'s rows are contiguous, and the CPU has AVX-512. Returns whether it did;
/// when not, `dst` is untouched.
///
/// The caller has checked that `dst` holds `m x n` and that both views fit their shapes.
pub(crate) fn try_matmul(
    dst: &mut [f32],
    a: MatRef<'_>,
    b: MatRef<'_>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) -> bool {
    if n != COLUMNS || b.col_stride != 1 || !available() {
        return false;
    }
    assert!(dst.len() >= m * n && a.fits(m, k) && b.fits(k, n));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 is present (`available`), and the assert keeps every read and write
    // inside the slices.
    unsafe {
        avx512::product(
            dst.as_mut_ptr(),
            a,
            b.data.as_ptr(),
            b.row_stride,
            (m, k),
            accumulate,
        )
    };
    true
}

/// Whether this CPU runs the kernel.
fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MatRef, COLUMNS, ROWS};

    /// The whole product. `a`'s row stride is a constant in the two views that matter, so
    /// that the broadcasts' addresses are constant offsets from one pointer (a runtime stride
    /// made them a chain of dependent adds, 16 a step, slower than the FMAs): 1 in patchesᵀ
    /// (the kernel gradient), 16 in the padded lowering's rows of a 16-channel plane.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(
        dst: *mut f32,
        a: MatRef<'_>,
        b: *const f32,
        b_row_stride: usize,
        (m, k): (usize, usize),
        accumulate: bool,
    ) {
        let args = (
            dst,
            a.data.as_ptr(),
            (a.row_stride, a.col_stride),
            (b, b_row_stride),
        );
        match a.row_stride {
            1 => rows::<1>(args, (m, k), accumulate),
            16 => rows::<16>(args, (m, k), accumulate),
            _ => rows::<0>(args, (m, k), accumulate),
        }
    }

    type Args = (*mut f32, *const f32, (usize, usize), (*const f32, usize));

    /// All rows, [`ROWS`] at a time, then the rest in tiles of 8, 4, 2 and 1; `RS` is `a`'s
    /// row stride, or 0 for one known only at run time.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const RS: usize>(args: Args, (m, k): (usize, usize), accumulate: bool) {
        let mut row = 0;
        while row + ROWS <= m {
            tile::<ROWS, RS>(args, (row, k), accumulate);
            row += ROWS;
        }
        for rows in [8, 4, 2, 1] {
            if (m - row) & rows != 0 {
                match rows {
                    8 => tile::<8, RS>(args, (row, k), accumulate),
                    4 => tile::<4, RS>(args, (row, k), accumulate),
                    2 => tile::<2, RS>(args, (row, k), accumulate),
                    _ => tile::<1, RS>(args, (row, k), accumulate),
                }
                row += rows;
            }
        }
    }

    /// Output rows `row..row + R`: `R` registers of sums over `k`, each step one `b` row and
    /// `R` broadcasts of `a(row + r, p)`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const R: usize, const RS: usize>(
        (dst, a, (rs, cs), (b, b_rs)): Args,
        (row, k): (usize, usize),
        accumulate: bool,
    ) {
        let rs = if RS == 0 { rs } else { RS };
        let dst = dst.add(row * COLUMNS);
        let a = a.add(row * rs);
        let mut acc = [_mm512_setzero_ps(); R];
        if accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_loadu_ps(dst.add(r * COLUMNS));
            }
        }
        for p in 0..k {
            let bv = _mm512_loadu_ps(b.add(p * b_rs));
            let ap = a.add(p * cs);
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(r * rs)), bv, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(dst.add(r * COLUMNS), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// `a · b` in f64, and the sum of `|a||b|` per element (the rounding error's scale).
    fn reference(
        a: MatRef<'_>,
        b: MatRef<'_>,
        (m, n, k): (usize, usize, usize),
    ) -> Vec<(f64, f64)> {
        (0..m * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                (0..k).fold((0.0, 0.0), |(s, abs), p| {
                    let x = a.at(i, p) as f64 * b.at(p, j) as f64;
                    (s + x, abs + x.abs())
                })
            })
            .collect()
    }

    /// The kernel against an f64 reference on every row-count tail, short and long `k`, and
    /// the views the convolutions hand it: row-major, transposed (the kernel gradient's
    /// patchesᵀ) and overlapping rows (the padded lowering: rows `C` apart, `3·C` long).
    #[test]
    fn sixteen_column_products_match_an_f64_reference() {
        if !available() {
            return;
        }
        let shapes = (1..=40)
            .map(|m| (m, 7))
            .chain([(100, 48), (1088, 48), (48, 1088), (17, 1)]);
        for (case, (m, k)) in shapes.enumerate() {
            let b = random(k * COLUMNS, case as u64);
            let plain = random(m * k, 100 + case as u64);
            let c = 16;
            let overlapping = random(m * c + k, 200 + case as u64);
            let views = [
                MatRef::rows(&plain, k),
                MatRef::transposed(&plain, m),
                MatRef {
                    data: &overlapping,
                    row_stride: c,
                    col_stride: 1,
                },
            ];
            for (view, a) in views.into_iter().enumerate() {
                for accumulate in [false, true] {
                    let start = random(m * COLUMNS, 300 + case as u64);
                    let mut dst = start.clone();
                    let b = MatRef::rows(&b, COLUMNS);
                    assert!(try_matmul(&mut dst, a, b, (m, COLUMNS, k), accumulate));
                    let want = reference(a, b, (m, COLUMNS, k));
                    for (e, (got, (sum, scale))) in dst.iter().zip(want).enumerate() {
                        let want = sum + if accumulate { start[e] as f64 } else { 0.0 };
                        let tolerance = 1e-6 * (scale + start[e].abs() as f64) + 1e-30;
                        assert!(
                            (*got as f64 - want).abs() <= tolerance,
                            "m {m} k {k} view {view} accumulate {accumulate} element {e}: \
                             {got} against {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn other_widths_and_strided_b_are_left_to_the_gemm_crate() {
        let (a, b) = (random(4 * 3, 1), random(3 * 32, 2));
        let mut dst = vec![7.0; 4 * 32];
        let a = MatRef::rows(&a, 3);
        assert!(!try_matmul(
            &mut dst,
            a,
            MatRef::rows(&b, 17),
            (4, 17, 3),
            false
        ));
        let transposed = MatRef::transposed(&b, 3);
        assert!(!try_matmul(&mut dst, a, transposed, (4, 16, 3), false));
        assert!(dst.iter().all(|&x| x == 7.0));
    }
}
