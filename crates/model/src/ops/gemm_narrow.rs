//! `dst (m x n) = a (m x k) · b (k x n)` for n = 16 or 32: products with one or two AVX-512
//! registers of output columns, the 16- and 32-channel convolutions of ResNet-20's first two
//! stages (forward, input gradient and kernel gradient alike). The `gemm` crate turns a
//! row-major destination this narrow into a 16- or 32-row problem that its 16 x 6 and 32 x 6
//! micro-kernels run at ~0.6x and ~0.85x of what it reaches on wider shapes (106–115 and
//! 133–148 against 155–170 GFLOP/s here: `gemm_speed`), plus packing. Here an output row is
//! one or two registers: a tile of rows of accumulators, one `b` row loaded per step of `k`,
//! `a`'s values broadcast straight from wherever its view lies (the padded lowering's
//! overlapping rows, or patchesᵀ), with no packing. Each element is summed in `k` order,
//! starting from `dst` when accumulating, the same on every run.

use super::gemm::MatRef;

/// f32 lanes of one AVX-512 register: the output columns are one or two of these.
const LANES: usize = 16;

/// Output rows one tile keeps in registers: 16 x 1 or 12 x 2 accumulators, with the `b` row
/// beside them, inside the 32 registers.
const ROWS_ONE: usize = 16;
const ROWS_TWO: usize = 12;

/// `dst = a · b`, or `dst += a · b` when `accumulate`, if this kernel takes the product: `n`
/// is 16 or 32, `b`'s rows are contiguous, and the CPU has AVX-512. Returns whether it did;
/// when not, `dst` is untouched. Panics, as `matmul` does, if `dst` does not hold `m x n` or
/// a view does not fit its shape (the unsafe kernel's bounds).
pub(crate) fn try_matmul(
    dst: &mut [f32],
    a: MatRef<'_>,
    b: MatRef<'_>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) -> bool {
    let vectors = match n {
        16 => 1,
        32 => 2,
        _ => return false,
    };
    if b.col_stride != 1 || !available() {
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
            vectors,
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

    use super::{MatRef, LANES, ROWS_ONE, ROWS_TWO};

    /// The whole product, `vectors` registers a row. `a`'s row stride is a constant in the
    /// views that matter, so that the broadcasts' addresses are constant offsets from one
    /// pointer (a runtime stride made them a chain of dependent adds, one a row and step,
    /// slower than the FMAs): 1 in patchesᵀ (the kernel gradient), 16 or 32 in the padded
    /// lowering's rows of a 16- or 32-channel plane.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(
        dst: *mut f32,
        a: MatRef<'_>,
        b: *const f32,
        b_row_stride: usize,
        (m, k): (usize, usize),
        accumulate: bool,
        vectors: usize,
    ) {
        let args = (
            dst,
            a.data.as_ptr(),
            (a.row_stride, a.col_stride),
            (b, b_row_stride),
        );
        match (vectors, a.row_stride) {
            (1, 1) => rows::<1, 1, ROWS_ONE>(args, (m, k), accumulate),
            (1, 16) => rows::<16, 1, ROWS_ONE>(args, (m, k), accumulate),
            (1, _) => rows::<0, 1, ROWS_ONE>(args, (m, k), accumulate),
            (_, 1) => rows::<1, 2, ROWS_TWO>(args, (m, k), accumulate),
            (_, 32) => rows::<32, 2, ROWS_TWO>(args, (m, k), accumulate),
            (_, _) => rows::<0, 2, ROWS_TWO>(args, (m, k), accumulate),
        }
    }

    type Args = (*mut f32, *const f32, (usize, usize), (*const f32, usize));

    /// All rows, `R` at a time, then the rest (fewer than 16) in tiles of 8, 4, 2 and 1; `V`
    /// registers a row; `RS` is `a`'s row stride, or 0 for one known only at run time.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const RS: usize, const V: usize, const R: usize>(
        args: Args,
        (m, k): (usize, usize),
        accumulate: bool,
    ) {
        let mut row = 0;
        while row + R <= m {
            tile::<R, RS, V>(args, (row, k), accumulate);
            row += R;
        }
        for rows in [8, 4, 2, 1] {
            if (m - row) & rows != 0 {
                match rows {
                    8 => tile::<8, RS, V>(args, (row, k), accumulate),
                    4 => tile::<4, RS, V>(args, (row, k), accumulate),
                    2 => tile::<2, RS, V>(args, (row, k), accumulate),
                    _ => tile::<1, RS, V>(args, (row, k), accumulate),
                }
                row += rows;
            }
        }
    }

    /// Output rows `row..row + R`: `R x V` registers of sums over `k`, each step one `b` row
    /// (`V` registers) and `R` broadcasts of `a(row + r, p)`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const R: usize, const RS: usize, const V: usize>(
        (dst, a, (rs, cs), (b, b_rs)): Args,
        (row, k): (usize, usize),
        accumulate: bool,
    ) {
        let rs = if RS == 0 { rs } else { RS };
        let width = LANES * V;
        let dst = dst.add(row * width);
        let a = a.add(row * rs);
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_loadu_ps(dst.add(r * width + v * LANES));
                }
            }
        }
        for p in 0..k {
            let bp = b.add(p * b_rs);
            let bv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(bp.add(v * LANES)));
            let ap = a.add(p * cs);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*ap.add(r * rs));
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(x, bv[v], *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(dst.add(r * width + v * LANES), *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm::test_values as random;
    use super::*;

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

    /// The kernel against an f64 reference at both widths, on every row-count tail, short and
    /// long `k`, and the views the convolutions hand it: row-major (a row stride known only at
    /// run time), transposed (the kernel gradient's patchesᵀ) and overlapping rows (the padded
    /// lowering: rows `C` apart, `3·C` long).
    #[test]
    fn narrow_products_match_an_f64_reference() {
        if !available() {
            return;
        }
        let shapes = (1..=40)
            .map(|m| (m, 7))
            .chain([(100, 48), (1088, 48), (48, 1088), (17, 1)]);
        let cases = shapes.flat_map(|shape| [16, 32].map(|n| (shape, n)));
        for (case, ((m, k), n)) in cases.enumerate() {
            let b = random(k * n, case as u64);
            let plain = random(m * k, 100 + case as u64);
            // The padded lowering's rows for `n` input channels: `n` apart.
            let overlapping = random(m * n + k, 200 + case as u64);
            let views = [
                MatRef::rows(&plain, k),
                MatRef::transposed(&plain, m),
                MatRef {
                    data: &overlapping,
                    row_stride: n,
                    col_stride: 1,
                },
            ];
            for (view, a) in views.into_iter().enumerate() {
                for accumulate in [false, true] {
                    let start = random(m * n, 300 + case as u64);
                    let mut dst = start.clone();
                    let b = MatRef::rows(&b, n);
                    assert!(try_matmul(&mut dst, a, b, (m, n, k), accumulate));
                    let want = reference(a, b, (m, n, k));
                    for (e, (got, (sum, scale))) in dst.iter().zip(want).enumerate() {
                        let want = sum + if accumulate { start[e] as f64 } else { 0.0 };
                        let tolerance = 1e-6 * (scale + start[e].abs() as f64) + 1e-30;
                        assert!(
                            (*got as f64 - want).abs() <= tolerance,
                            "m {m} n {n} k {k} view {view} accumulate {accumulate} element {e}: \
                             {got} against {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn other_widths_and_strided_b_are_left_to_the_gemm_crate() {
        let (a, b) = (random(4 * 3, 1), random(3 * 48, 2));
        let mut dst = vec![7.0; 4 * 48];
        let a = MatRef::rows(&a, 3);
        for n in [17, 48] {
            let b = MatRef::rows(&b, n);
            assert!(!try_matmul(&mut dst, a, b, (4, n, 3), false));
        }
        let transposed = MatRef::transposed(&b, 3);
        assert!(!try_matmul(&mut dst, a, transposed, (4, 16, 3), false));
        assert!(dst.iter().all(|&x| x == 7.0));
    }
}
