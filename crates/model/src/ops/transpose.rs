//! Matrix transposes between the NCHW tensors and the channels-last buffers inside the ops.

/// `dst[j * dst_stride + i] = src[i * src_stride + j]` for `i < rows`, `j < cols`: 4x4 tiles in
/// SSE registers (part of every x86-64 CPU), the edges one value at a time.
pub(crate) fn transpose_into(
    src: &[f32],
    src_stride: usize,
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    dst_stride: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        cols <= src_stride && rows <= dst_stride,
        "transpose: strides shorter than the rows"
    );
    assert!(
        (rows - 1) * src_stride + cols <= src.len() && (cols - 1) * dst_stride + rows <= dst.len(),
        "transpose: matrix outside the slices"
    );
    #[cfg(target_arch = "x86_64")]
    let (tiled_rows, tiled_cols) = sse_tiles(src, dst, (rows, cols), (src_stride, dst_stride));
    #[cfg(not(target_arch = "x86_64"))]
    let (tiled_rows, tiled_cols) = (0, 0);
    for i in 0..rows {
        let js = if i < tiled_rows {
            tiled_cols..cols
        } else {
            0..cols
        };
        for j in js {
            dst[j * dst_stride + i] = src[i * src_stride + j];
        }
    }
}

/// `dst (cols x rows) = srcᵀ` for a contiguous row-major `src (rows x cols)`.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    transpose_into(src, cols, rows, cols, dst, rows);
}

/// Transposes the `4·⌊rows/4⌋ x 4·⌊cols/4⌋` corner; returns its size. The caller has checked
/// that the whole matrix lies inside both slices.
#[cfg(target_arch = "x86_64")]
fn sse_tiles(
    src: &[f32],
    dst: &mut [f32],
    (rows, cols): (usize, usize),
    (src_stride, dst_stride): (usize, usize),
) -> (usize, usize) {
    use std::arch::x86_64::*;
    let (tr, tc) = (rows / 4 * 4, cols / 4 * 4);
    for r0 in (0..tr).step_by(4) {
        for c0 in (0..tc).step_by(4) {
            // SAFETY: rows r0..r0+4 and columns c0..c0+4 lie inside the matrix, which
            // `transpose_into` checked both slices hold; SSE is part of the x86-64 baseline.
            unsafe {
                let p = src.as_ptr().add(r0 * src_stride + c0);
                let a = _mm_loadu_ps(p);
                let b = _mm_loadu_ps(p.add(src_stride));
                let c = _mm_loadu_ps(p.add(2 * src_stride));
                let d = _mm_loadu_ps(p.add(3 * src_stride));
                let (ab_lo, cd_lo) = (_mm_unpacklo_ps(a, b), _mm_unpacklo_ps(c, d));
                let (ab_hi, cd_hi) = (_mm_unpackhi_ps(a, b), _mm_unpackhi_ps(c, d));
                let q = dst.as_mut_ptr().add(c0 * dst_stride + r0);
                _mm_storeu_ps(q, _mm_movelh_ps(ab_lo, cd_lo));
                _mm_storeu_ps(q.add(dst_stride), _mm_movehl_ps(cd_lo, ab_lo));
                _mm_storeu_ps(q.add(2 * dst_stride), _mm_movelh_ps(ab_hi, cd_hi));
                _mm_storeu_ps(q.add(3 * dst_stride), _mm_movehl_ps(cd_hi, ab_hi));
            }
        }
    }
    (tr, tc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_element() {
        let (rows, cols) = (37, 21);
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut dst = vec![0f32; rows * cols];
        transpose(&src, rows, cols, &mut dst);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(dst[c * rows + r], src[r * cols + c]);
            }
        }
    }

    #[test]
    fn strided_transpose_leaves_the_rest_alone() {
        // A 6x9 block of a 10-wide source into a destination with rows 8 apart.
        let (rows, cols, ss, ds) = (6, 9, 10, 8);
        let src: Vec<f32> = (0..rows * ss).map(|i| i as f32).collect();
        let mut dst = vec![-1f32; cols * ds];
        transpose_into(&src, ss, rows, cols, &mut dst, ds);
        for j in 0..cols {
            for i in 0..ds {
                let want = if i < rows { src[i * ss + j] } else { -1.0 };
                assert_eq!(dst[j * ds + i], want, "({i}, {j})");
            }
        }
    }
}
