//! Matrix products with bfloat16 operands and f32 sums (issue 24's mixed precision): `dst (m x
//! n) = a (m x k) · b (k x n)` where every element of `a` and `b` is first rounded to bf16
//! (round to nearest, ties to even), the products of bf16 pairs are exact in f32, and the sums
//! are f32. On CPUs with AVX512_BF16 a micro-kernel on `vdpbf16ps` (`_mm512_dpbf16_ps`: two
//! products a lane, 32 a register, twice the f32 FMA's rate) computes 12 x 32 tiles; elsewhere
//! the same rounded operands go through the f32 product ([`super::gemm::matmul`]), slower and
//! with sums in another order (results differ by f32 rounding, not by bf16's): `b` rounded
//! once where it is packed, `a` per product into a reused buffer, so the fallback costs little
//! more than f32 itself.
//!
//! `vdpbf16ps` treats bf16 denormals as zero and flushes denormal sums to zero (its fixed
//! behaviour, whatever MXCSR says); the fallback keeps them. Single-threaded, like [`super::gemm::matmul`]: the callers parallelise over images, which
//! keeps each image's arithmetic in one order whatever the thread count.

use super::gemm::{matmul, MatRef};

/// Rows of `a` per micro-kernel tile.
const MR: usize = 12;
/// Columns of `b` per micro-kernel tile: two registers of 16 f32 sums.
const NR: usize = 32;
/// Pairs of `k` per packed block: an `a` panel (MR x 2·KP bf16 = 12 KiB) and a `b` panel
/// (2·KP x NR bf16 = 32 KiB) stay in L1 while a tile is computed.
const KP: usize = 256;

/// `x` rounded to bfloat16, to nearest with ties to even (as `vcvtneps2bf16`); NaNs stay NaNs
/// (quiet), infinities stay infinite.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// `x` rounded to the nearest bf16 value, as f32: `from_bf16(to_bf16(x))` without branches,
/// so that loops over slices vectorise.
#[inline]
pub fn round_to_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    let is_nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    let quiet_nan = bits | 0x0040_0000;
    f32::from_bits(if is_nan { quiet_nan } else { rounded } & 0xffff_0000)
}

/// A bf16 value as f32 (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The bf16 micro-kernel this CPU runs, chosen once: AMX's tile product where the CPU has
/// AMX-BF16 and the kernel grants the tile state (Intel Xeons since Sapphire Rapids; measured
/// here ~3 TFLOP/s a core for the tile instruction alone, 15x the f32 FMA), else AVX512_BF16's
/// `vdpbf16ps` (2x the f32 FMA on AMD Zen 4; on this Intel Xeon 0.5x), else none.
fn kernel() -> Option<Kernel> {
    static KERNEL: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16");
            match (avx512, amx::available()) {
                (true, true) => Some(Kernel::Amx),
                (true, false) => Some(Kernel::Dot),
                (false, _) => None,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    })
}

/// Which path bf16 products take here: `"AMX"`, `"AVX512_BF16"`, or `"f32 (no bf16
/// instructions)"`, for the run's record and the message that says the policy runs slower.
pub fn bf16_path() -> &'static str {
    match kernel() {
        Some(Kernel::Amx) => "AMX",
        Some(Kernel::Dot) => "AVX512_BF16",
        None => "f32 (no bf16 instructions)",
    }
}

/// Whether bf16 products run on bf16 instructions here (AMX or AVX512_BF16, not the f32
/// fallback).
pub fn has_bf16_instructions() -> bool {
    kernel().is_some()
}

/// `b (k x n)` converted once to bf16, for products that use it many times (a convolution's
/// kernel, for every image of a batch).
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    form: Packing,
}

/// A block of KP pairs of `k`: its first pair, its pairs, and its NR-column panels of bf16
/// pairs.
type PairBlock = (usize, usize, Vec<Vec<u32>>);

enum Packing {
    /// For `kernel`'s micro-kernel, block by block.
    Pairs {
        kernel: Kernel,
        blocks: Vec<PairBlock>,
    },
    /// No bf16 instructions: `b`'s values rounded to bf16 (as f32), `k x n` row-major, for the
    /// f32 product.
    Rounded(Vec<f32>),
}

impl PackedB {
    /// Packed for this CPU's micro-kernel, or rounded for the f32 fallback; `None` where `k`
    /// or `n` is 0.
    pub(crate) fn new(b: MatRef<'_>, (k, n): (usize, usize)) -> Option<PackedB> {
        match kernel() {
            Some(kernel) => PackedB::for_kernel(b, (k, n), kernel),
            None => PackedB::rounded(b, (k, n)),
        }
    }

    /// `b`'s values rounded to bf16, for the f32 fallback.
    fn rounded(b: MatRef<'_>, (k, n): (usize, usize)) -> Option<PackedB> {
        assert!(b.fits(k, n), "gemm_bf16: operand too small");
        if k == 0 || n == 0 {
            return None;
        }
        let mut data = Vec::with_capacity(k * n);
        push_rounded_rows(&mut data, b, (k, n));
        Some(PackedB {
            k,
            n,
            form: Packing::Rounded(data),
        })
    }

    /// Packed for `kernel`'s micro-kernel (which the CPU must have).
    fn for_kernel(b: MatRef<'_>, (k, n): (usize, usize), kernel: Kernel) -> Option<PackedB> {
        assert!(b.fits(k, n), "gemm_bf16: operand too small");
        if k == 0 || n == 0 {
            return None;
        }
        let pairs_total = k.div_ceil(2);
        let mut blocks = Vec::new();
        let mut p0 = 0;
        while p0 < pairs_total {
            let pairs = KP.min(pairs_total - p0);
            let padded = kernel.padded(pairs);
            let panels = (0..n.div_ceil(NR))
                .map(|jp| {
                    let mut panel = Vec::new();
                    // SAFETY: kernel() checked the CPU; `fits` bounds the reads.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        pack_b(b, (n, k), jp * NR, (p0, pairs, padded), &mut panel)
                    };
                    panel
                })
                .collect();
            blocks.push((p0, pairs, panels));
            p0 += pairs;
        }
        Some(PackedB {
            k,
            n,
            form: Packing::Pairs { kernel, blocks },
        })
    }
}

/// `dst (m x n, contiguous) = a · b` (or `+=` when `accumulate`), operands rounded to bf16,
/// sums in f32.
pub(crate) fn matmul_bf16(
    dst: &mut [f32],
    a: MatRef<'_>,
    b: MatRef<'_>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) {
    assert!(dst.len() >= m * n, "gemm_bf16: destination too small");
    assert!(a.fits(m, k) && b.fits(k, n), "gemm_bf16: operand too small");
    if m == 0 || n == 0 {
        return;
    }
    match PackedB::new(b, (k, n)) {
        Some(packed) => matmul_bf16_packed(dst, a, &packed, m, accumulate),
        // k == 0: a sum of nothing.
        None => matmul(dst, a, b, (m, n, k), accumulate),
    }
}

/// [`matmul_bf16`] with `b` packed already.
pub(crate) fn matmul_bf16_packed(
    dst: &mut [f32],
    a: MatRef<'_>,
    b: &PackedB,
    m: usize,
    accumulate: bool,
) {
    assert!(dst.len() >= m * b.n, "gemm_bf16: destination too small");
    assert!(a.fits(m, b.k), "gemm_bf16: operand too small");
    if m == 0 {
        return;
    }
    match &b.form {
        Packing::Rounded(b_rounded) => {
            let b_rounded = MatRef::rows(b_rounded, b.n);
            ROUNDED_A.with_borrow_mut(|buf| {
                let a = rounded_view(a, (m, b.k), buf);
                matmul(dst, a, b_rounded, (m, b.n, b.k), accumulate)
            })
        }
        // SAFETY: pairs are packed only where kernel() found the CPU's bf16 instructions; the
        // asserts above bound every access.
        #[cfg(target_arch = "x86_64")]
        Packing::Pairs { kernel, blocks } => unsafe {
            tiles(dst, a, (*kernel, blocks), (b.n, b.k), m, accumulate)
        },
        #[cfg(not(target_arch = "x86_64"))]
        Packing::Pairs { .. } => unreachable!("bf16 pairs are packed on x86-64 only"),
    }
}

thread_local! {
    /// The fallback's rounded `a`, kept between products so that each does not allocate (and
    /// fault in) a fresh buffer.
    static ROUNDED_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `a (m x k)` with its values rounded to bf16, in `buf`: the span of `a.data` the view
/// covers, rounded as it lies (a lowering's overlapping rows are rounded once), unless the
/// view skips most of its span; then its elements, row-major.
fn rounded_view<'a>(a: MatRef<'_>, (m, k): (usize, usize), buf: &'a mut Vec<f32>) -> MatRef<'a> {
    buf.clear();
    let span = (m - 1) * a.row_stride + (k - 1) * a.col_stride + 1;
    if span <= 2 * m * k {
        buf.extend(a.data[..span].iter().map(|&x| round_to_bf16(x)));
        return MatRef {
            data: buf,
            row_stride: a.row_stride,
            col_stride: a.col_stride,
        };
    }
    push_rounded_rows(buf, a, (m, k));
    MatRef::rows(buf, k)
}

/// Appends `x (rows x cols)`'s elements rounded to bf16, row-major (a contiguous row at a
/// time where its columns are, so that the rounding vectorises).
fn push_rounded_rows(buf: &mut Vec<f32>, x: MatRef<'_>, (rows, cols): (usize, usize)) {
    for i in 0..rows {
        let row = &x.data[i * x.row_stride..];
        match x.col_stride {
            1 => buf.extend(row[..cols].iter().map(|&v| round_to_bf16(v))),
            cs => buf.extend((0..cols).map(|j| round_to_bf16(row[j * cs]))),
        }
    }
}

/// `dst (m x n) = a (m x k) · b (k x n)` for contiguous row-major matrices: in bf16 operands
/// with f32 sums ([`matmul_bf16`]) when `bf16`, else in f32 (the `gemm` crate, as the fp32
/// path computes): the two precisions side by side, for benchmarks and callers outside.
pub fn matmul_rows(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    bf16: bool,
) {
    let (a, b) = (MatRef::rows(a, k), MatRef::rows(b, n));
    matmul_in(dst, a, b, (m, n, k), bf16)
}

/// [`matmul_rows`] with `a` given as its transpose, `at (k x m)` row-major: the shape of a
/// convolution's kernel gradient (patchesᵀ · output gradient).
pub fn matmul_at_rows(
    dst: &mut [f32],
    at: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    bf16: bool,
) {
    let (a, b) = (MatRef::transposed(at, m), MatRef::rows(b, n));
    matmul_in(dst, a, b, (m, n, k), bf16)
}

/// `dst = a · b` in bf16 operands with f32 sums when `bf16`, else in f32.
fn matmul_in(
    dst: &mut [f32],
    a: MatRef<'_>,
    b: MatRef<'_>,
    dims: (usize, usize, usize),
    bf16: bool,
) {
    match bf16 {
        true => matmul_bf16(dst, a, b, dims, false),
        false => matmul(dst, a, b, dims, false),
    }
}

/// `b`'s columns `j0..j0 + NR` (zeros past `n`), rows `2·p0..2·(p0 + pairs)` (zeros past `k`),
/// as `padded` (≥ `pairs`) rows of NR u32 lanes, each lane the bf16 pair `(b[2p][j],
/// b[2p + 1][j])` (the low half first, as `vdpbf16ps` and AMX's "VNNI" layout pair them), rows
/// past `pairs` zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pack_b(
    b: MatRef<'_>,
    (n, k): (usize, usize),
    j0: usize,
    (p0, pairs, padded): (usize, usize, usize),
    out: &mut Vec<u32>,
) {
    use std::arch::x86_64::*;
    out.clear();
    out.resize(padded * NR, 0);
    for (q, lanes) in out.chunks_exact_mut(NR).take(pairs).enumerate() {
        let (r0, r1) = (2 * (p0 + q), 2 * (p0 + q) + 1);
        if b.col_stride == 1 && j0 + NR <= n && r1 < k {
            for h in 0..NR / 16 {
                let j = j0 + 16 * h;
                let lo = _mm512_loadu_ps(b.data.as_ptr().add(r0 * b.row_stride + j));
                let hi = _mm512_loadu_ps(b.data.as_ptr().add(r1 * b.row_stride + j));
                _mm512_storeu_si512(lanes.as_mut_ptr().add(16 * h) as *mut _, pairs_of(lo, hi));
            }
            continue;
        }
        for (jj, lane) in lanes.iter_mut().enumerate() {
            let j = j0 + jj;
            let get = |r: usize| match r < k && j < n {
                true => to_bf16(b.at(r, j)) as u32,
                false => 0,
            };
            *lane = get(r0) | (get(r1) << 16);
        }
    }
}

/// `a`'s rows `i0..i0 + rows` (zeros past `m`), pairs `p0..p0 + pairs` of columns, row by
/// row: `rows` rows of `padded` (≥ `pairs`) u32 lanes (the bf16 pair `(a[i][2p], a[i][2p +
/// 1])`), lanes past `pairs` zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pack_a(
    a: MatRef<'_>,
    (m, k): (usize, usize),
    (i0, rows): (usize, usize),
    (p0, pairs, padded): (usize, usize, usize),
    out: &mut Vec<u32>,
) {
    use std::arch::x86_64::*;
    out.clear();
    out.resize(rows * padded, 0);
    // `a` transposed (a kernel gradient's patchesᵀ): 16 consecutive rows of a column are
    // contiguous, so a pair of columns converts 16 rows at once, scattered to their rows.
    let mut vector_rows = 0;
    let mut vector_pairs = 0;
    if a.row_stride == 1 && a.col_stride != 1 {
        vector_rows = m.saturating_sub(i0).min(rows) / 16 * 16;
        vector_pairs = pairs.min((k / 2).saturating_sub(p0));
        let lane_rows = _mm512_mullo_epi32(
            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
            _mm512_set1_epi32(padded as i32),
        );
        for r0 in (0..vector_rows).step_by(16) {
            let column = a.data.as_ptr().add(i0 + r0);
            let lanes = out.as_mut_ptr().add(r0 * padded);
            for q in 0..vector_pairs {
                let c = 2 * (p0 + q);
                let lo = _mm512_loadu_ps(column.add(c * a.col_stride));
                let hi = _mm512_loadu_ps(column.add((c + 1) * a.col_stride));
                _mm512_i32scatter_epi32::<4>(lanes.add(q) as *mut _, lane_rows, pairs_of(lo, hi));
            }
        }
    }
    for (r, lanes) in out.chunks_exact_mut(padded).enumerate() {
        let lanes = &mut lanes[..pairs];
        let i = i0 + r;
        if i >= m {
            continue;
        }
        let mut q = if r < vector_rows { vector_pairs } else { 0 };
        if a.col_stride == 1 {
            // 32 consecutive values are 16 pairs in order: one conversion.
            let row = a.data.as_ptr().add(i * a.row_stride);
            while q + 16 <= pairs && 2 * (p0 + q + 16) <= k {
                let c = 2 * (p0 + q);
                let lo = _mm512_loadu_ps(row.add(c));
                let hi = _mm512_loadu_ps(row.add(c + 16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(lanes.as_mut_ptr().add(q) as *mut _, v);
                q += 16;
            }
        }
        for (qq, lane) in lanes.iter_mut().enumerate().skip(q) {
            let c = 2 * (p0 + qq);
            let get = |c: usize| match c < k {
                true => to_bf16(a.at(i, c)) as u32,
                false => 0,
            };
            *lane = get(c) | (get(c + 1) << 16);
        }
    }
}

/// The bf16 pairs `(lo[j], hi[j])` of two 16-value rows, as 16 u32 lanes (the low half
/// first), rounded to nearest even.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pairs_of(
    lo: std::arch::x86_64::__m512,
    hi: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // Lane j of the result: (lo's j, hi's j), from [lo | hi] as 32 bf16 values.
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
    _mm512_permutexvar_epi16(interleave, both)
}

/// Which micro-kernel computes the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// `vdpbf16ps` on AVX-512 registers: MR x NR tiles.
    Dot,
    /// AMX's `tdpbf16ps` on tile registers: 32 x 32 tiles as four 16 x 16 tiles, 16 pairs a
    /// step.
    Amx,
}

impl Kernel {
    fn rows(self) -> usize {
        match self {
            Kernel::Dot => MR,
            Kernel::Amx => 32,
        }
    }

    /// Pairs of a block rounded up to what one step takes.
    fn padded(self, pairs: usize) -> usize {
        match self {
            Kernel::Dot => pairs,
            Kernel::Amx => pairs.div_ceil(16) * 16,
        }
    }
}

/// The product tile by tile: for each block of `b`'s packed pairs, each row panel of `a`
/// packed once and used across `b`'s panels. AMX sums a tile that lies wholly inside `dst`
/// there (its registers start from `dst`'s values); other tiles go through `tile` and are
/// added to `dst` after.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn tiles(
    dst: &mut [f32],
    a: MatRef<'_>,
    (kernel, blocks): (Kernel, &[PairBlock]),
    (n, k): (usize, usize),
    m: usize,
    accumulate: bool,
) {
    let rows = kernel.rows();
    let row_panels = m.div_ceil(rows);
    let mut a_packed: Vec<u32> = Vec::new();
    let mut tile = vec![0f32; rows * NR];
    if kernel == Kernel::Amx {
        amx::configure();
    }
    for (p0, pairs, b_panels) in blocks {
        let (p0, pairs) = (*p0, *pairs);
        let padded = kernel.padded(pairs);
        // The first block writes (or adds to) `dst`; later ones add.
        let add = accumulate || p0 > 0;
        for ip in 0..row_panels {
            let i0 = ip * rows;
            pack_a(a, (m, k), (i0, rows), (p0, pairs, padded), &mut a_packed);
            for (jp, panel) in b_panels.iter().enumerate() {
                let j0 = jp * NR;
                if kernel == Kernel::Amx && i0 + rows <= m && j0 + NR <= n {
                    // A whole tile inside `dst`: summed there directly.
                    let c = dst.as_mut_ptr().add(i0 * n + j0);
                    if add {
                        prefetch_next_tile(dst, (m, n), (i0, j0), rows);
                    }
                    amx::tile_into(&a_packed, panel, padded, (c, n), add);
                    continue;
                }
                match kernel {
                    Kernel::Dot => micro_kernel(&a_packed, panel, pairs, &mut tile),
                    Kernel::Amx => amx::tile(&a_packed, panel, padded, &mut tile),
                }
                let (valid_rows, cols) = (rows.min(m - i0), NR.min(n - j0));
                for (r, row) in tile.chunks_exact(NR).take(valid_rows).enumerate() {
                    let out = &mut dst[(i0 + r) * n + j0..][..cols];
                    match add {
                        true => out.iter_mut().zip(row).for_each(|(o, v)| *o += v),
                        false => out.copy_from_slice(&row[..cols]),
                    }
                }
            }
        }
    }
    if kernel == Kernel::Amx {
        amx::release();
    }
}

/// Asks for the rows of the whole tile after `(i0, j0)` (the next panel of `b`, else the next
/// row panel's first), so that the sums which start from `dst`'s values find them in cache:
/// a kernel gradient's product sums few pairs into a large `dst`, and waiting for its lines
/// cost as much as the tile's products.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn prefetch_next_tile(
    dst: &[f32],
    (m, n): (usize, usize),
    (i0, j0): (usize, usize),
    rows: usize,
) {
    use std::arch::x86_64::*;
    let (i, j) = match j0 + 2 * NR <= n {
        true => (i0, j0 + NR),
        false => (i0 + rows, 0),
    };
    if i + rows > m || j + NR > n {
        return;
    }
    for r in 0..rows {
        let row = dst.as_ptr().add((i + r) * n + j);
        for at in [0, NR / 2, NR - 1] {
            _mm_prefetch::<_MM_HINT_T0>(row.add(at) as *const i8);
        }
    }
}

/// One MR x NR tile of sums over `pairs` packed pairs: `tile = a_panel · b_panel` (`a_panel`
/// row by row, `b_panel` pair by pair).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_kernel(a: &[u32], b: &[u32], pairs: usize, tile: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= pairs * MR && b.len() >= pairs * NR && tile.len() >= MR * NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
        for (r, acc) in acc.iter_mut().enumerate() {
            let pair: __m512bh =
                std::mem::transmute(_mm512_set1_epi32(*a.add(r * pairs + p) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], pair, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], pair, b1);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR), acc[0]);
        _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR + 16), acc[1]);
    }
}

/// AMX: permission, tile configuration and the 32 x 32 tile product, in inline assembly
/// (Rust's AMX intrinsics are not stable).
#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;

    use super::NR;

    /// Whether the CPU has AMX-BF16 and AMX-TILE (CPUID leaf 7: EDX bits 22 and 24) and Linux
    /// lets this process use the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`, asked once; Linux 5.16 and later).
    pub fn available() -> bool {
        // CPUID leaf 7 exists on every x86-64 CPU with AVX-512, checked before this.
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a request for a permission; it changes nothing else.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    /// Palette 1 with tiles 0-7 of 16 rows x 64 bytes: four 16 x 16 f32 sums, two 16-row `a`
    /// tiles (16 pairs a row), two 16-column `b` tiles (16 pairs, a column's pair a lane).
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    static CONFIG: Config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// Configures this thread's tiles.
    ///
    /// # Safety
    /// Only where [`available`] said yes.
    pub unsafe fn configure() {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
    }

    /// Releases this thread's tiles (so the OS need not save them).
    ///
    /// # Safety
    /// Only where [`available`] said yes.
    pub unsafe fn release() {
        asm!("tilerelease", options(nostack, nomem));
    }

    /// `tile (32 x NR) = a_panel · b_panel` over `padded` pairs (a multiple of 16): `a` is 32
    /// rows of `padded` u32 pairs, `b` is `padded` rows of NR u32 pairs.
    ///
    /// # Safety
    /// After [`configure`] on this thread.
    pub unsafe fn tile(a: &[u32], b: &[u32], padded: usize, tile: &mut [f32]) {
        assert!(tile.len() >= 32 * NR);
        tile_into(a, b, padded, (tile.as_mut_ptr(), NR), false)
    }

    /// `c = a_panel · b_panel`, or `+=` when `add`, for `c` 32 x NR with its rows `c_stride`
    /// floats apart: the sums start from `c`'s values in the tile registers, so a product that
    /// accumulates into its destination needs no separate pass to add a tile to it.
    ///
    /// # Safety
    /// After [`configure`] on this thread; `c` valid for 32 rows of NR floats, `c_stride` apart.
    pub unsafe fn tile_into(
        a: &[u32],
        b: &[u32],
        padded: usize,
        (c, c_stride): (*mut f32, usize),
        add: bool,
    ) {
        assert!(padded.is_multiple_of(16) && a.len() >= 32 * padded && b.len() >= padded * NR);
        assert!(NR == 32 && c_stride >= NR);
        let a_stride = padded * 4;
        let b_stride = NR * 4;
        let quarters = [
            c,
            c.add(16),
            c.add(16 * c_stride),
            c.add(16 * c_stride + 16),
        ];
        match add {
            true => asm!(
                "tileloadd tmm0, [{c0} + {s}*1]",
                "tileloadd tmm1, [{c1} + {s}*1]",
                "tileloadd tmm2, [{c2} + {s}*1]",
                "tileloadd tmm3, [{c3} + {s}*1]",
                c0 = in(reg) quarters[0],
                c1 = in(reg) quarters[1],
                c2 = in(reg) quarters[2],
                c3 = in(reg) quarters[3],
                s = in(reg) c_stride * 4,
                options(nostack, readonly)
            ),
            false => asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            ),
        }
        for q in (0..padded).step_by(16) {
            let a0 = a.as_ptr().add(q);
            let a1 = a.as_ptr().add(16 * padded + q);
            let b0 = b.as_ptr().add(q * NR);
            let b1 = b0.add(16);
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                b0 = in(reg) b0,
                b1 = in(reg) b1,
                sa = in(reg) a_stride,
                sb = in(reg) b_stride,
                options(nostack, readonly)
            );
        }
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) quarters[0],
            c1 = in(reg) quarters[1],
            c2 = in(reg) quarters[2],
            c3 = in(reg) quarters[3],
            s = in(reg) c_stride * 4,
            options(nostack)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm::test_values as random;
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even 1.0.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(1.0 + 1.5 / 256.0), 0x3f81);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(
            to_bf16(f32::MAX),
            0x7f80,
            "rounds up to infinity, as the hardware does"
        );
    }

    #[test]
    fn rounding_without_branches_is_rounding_to_bf16() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let specials = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
        ];
        let randoms = (0..200_000).map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            f32::from_bits((s >> 32) as u32)
        });
        for x in specials.into_iter().chain(randoms) {
            let want = from_bf16(to_bf16(x));
            assert_eq!(
                round_to_bf16(x).to_bits(),
                want.to_bits(),
                "{x:e} ({:#x})",
                x.to_bits()
            );
        }
    }

    /// Every path this CPU can run: each micro-kernel it has, and the f32 fallback (`None`).
    fn paths() -> Vec<Option<Kernel>> {
        let mut paths = vec![None];
        if kernel().is_some() {
            paths.push(Some(Kernel::Dot));
        }
        if kernel() == Some(Kernel::Amx) {
            paths.push(Some(Kernel::Amx));
        }
        paths
    }

    fn product(
        path: Option<Kernel>,
        dst: &mut [f32],
        a: MatRef<'_>,
        b: MatRef<'_>,
        mnk: (usize, usize, usize),
        accumulate: bool,
    ) {
        match path {
            Some(kernel) => {
                let packed = PackedB::for_kernel(b, (mnk.2, mnk.1), kernel).expect("k > 0");
                matmul_bf16_packed(dst, a, &packed, mnk.0, accumulate)
            }
            None => {
                let packed = PackedB::rounded(b, (mnk.2, mnk.1)).expect("k > 0");
                matmul_bf16_packed(dst, a, &packed, mnk.0, accumulate)
            }
        }
    }

    /// The product of the bf16-rounded operands in f64: what every path approximates.
    fn reference(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f64> {
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for p in 0..k {
                let av = r(a[i * k + p]);
                for j in 0..n {
                    out[i * n + j] += av * r(b[p * n + j]);
                }
            }
        }
        out
    }

    #[test]
    fn products_match_the_rounded_operands_product() {
        // Edges in every direction: m, n and k not multiples of the tile, k odd, k past KP pairs
        // (whole tiles summed across blocks in `dst`: the last shape).
        for (m, n, k) in [
            (1, 1, 1),
            (13, 33, 7),
            (25, 70, 513),
            (12, 32, 600),
            (40, 17, 1),
            (70, 64, 64),
            (40, 64, 600),
        ] {
            let a = random(m * k, 1 + m as u64);
            let b = random(k * n, 2 + n as u64);
            let expected = reference(&a, &b, (m, n, k));
            let (a, b) = (MatRef::rows(&a, k), MatRef::rows(&b, n));
            for path in paths() {
                let mut dst = vec![0f32; m * n];
                product(path, &mut dst, a, b, (m, n, k), false);
                for (got, want) in dst.iter().zip(&expected) {
                    // f32 sums of k exact products: within k·2^-24 of the largest partial sum.
                    let tol = 1e-6 * k as f64 + 1e-6;
                    assert!(
                        (*got as f64 - want).abs() <= tol,
                        "{path:?} {m}x{n}x{k}: {got} vs {want}"
                    );
                }
                // Accumulating adds to what is there.
                let mut twice = dst.clone();
                product(path, &mut twice, a, b, (m, n, k), true);
                for (t, d) in twice.iter().zip(&dst) {
                    assert!((t - 2.0 * d).abs() <= 1e-5 * (1.0 + d.abs()), "{path:?}");
                }
            }
        }
    }

    #[test]
    fn a_transposed_a_gives_the_row_major_product_bit_for_bit() {
        // The kernel gradient's shape: `a` stored transposed, converted 16 rows at a time; row
        // counts past and short of 16, odd k (a last pair with one column), k past KP pairs.
        let shapes = [
            (70, 40, 601),
            (33, 32, 64),
            (16, 32, 2),
            (15, 33, 35),
            (48, 7, 3),
        ];
        for (m, n, k) in shapes {
            let a = random(m * k, 7 + k as u64);
            let b = random(k * n, 8 + n as u64);
            let a_t: Vec<f32> = (0..k * m).map(|p| a[(p % m) * k + p / m]).collect();
            let b = MatRef::rows(&b, n);
            for path in paths() {
                let mut rows = vec![0f32; m * n];
                product(path, &mut rows, MatRef::rows(&a, k), b, (m, n, k), false);
                let mut transposed = vec![f32::NAN; m * n];
                let a_t = MatRef::transposed(&a_t, m);
                product(path, &mut transposed, a_t, b, (m, n, k), false);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&rows), bits(&transposed), "{path:?} {m}x{n}x{k}");
            }
        }
    }

    #[test]
    fn strided_operands_are_read_as_views() {
        // a transposed (column-major), b a view with a row stride wider than n.
        let (m, n, k) = (14, 20, 9);
        let a_t = random(k * m, 5);
        let b_wide = random(k * (n + 3), 6);
        let a = MatRef::transposed(&a_t, m);
        let b = MatRef {
            data: &b_wide,
            row_stride: n + 3,
            col_stride: 1,
        };
        let dense_a: Vec<f32> = (0..m * k).map(|p| a.at(p / k, p % k)).collect();
        let dense_b: Vec<f32> = (0..k * n).map(|p| b.at(p / n, p % n)).collect();
        let expected = reference(&dense_a, &dense_b, (m, n, k));
        for path in paths() {
            let mut dst = vec![0f32; m * n];
            product(path, &mut dst, a, b, (m, n, k), false);
            for (got, want) in dst.iter().zip(&expected) {
                assert!(
                    (*got as f64 - want).abs() <= 1e-5,
                    "{path:?}: {got} vs {want}"
                );
            }
        }
    }
}
