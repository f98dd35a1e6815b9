//! Single-threaded gemm throughput for the convolution products of one image (row-major
//! strides as crates/model/src/ops uses them). `cargo run --release -p simplecnn-bench --example gemm_shapes`
use std::time::Instant;

/// (name, m, n, k, a (row_stride, col_stride), b (row_stride, col_stride))
type Case = (
    &'static str,
    usize,
    usize,
    usize,
    (usize, usize),
    (usize, usize),
);

fn run(case: &Case) -> f64 {
    let &(_, m, n, k, (ars, acs), (brs, bcs)) = case;
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let reps = 400;
    let start = Instant::now();
    for _ in 0..reps {
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                true,
                a.as_ptr(),
                acs as isize,
                ars as isize,
                b.as_ptr(),
                bcs as isize,
                brs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    let secs = start.elapsed().as_secs_f64() / reps as f64;
    2.0 * (m * n * k) as f64 / secs / 1e9
}

fn main() {
    let cases: [Case; 25] = [
        ("conv1 dKT   col·gT", 27, 32, 1024, (1024, 1), (1, 1024)),
        ("conv2 dKT   col·gT", 288, 64, 256, (256, 1), (1, 256)),
        ("conv1 fwd   K·col", 32, 1024, 27, (27, 1), (1024, 1)),
        ("conv2 fwd   K·col", 64, 256, 288, (288, 1), (256, 1)),
        (
            "conv1 dK    g·colT (col)",
            32,
            27,
            1024,
            (1024, 1),
            (1, 1024),
        ),
        (
            "conv1 dK    g·rowT (im2row)",
            32,
            27,
            1024,
            (1024, 1),
            (27, 1),
        ),
        ("conv2 dK    g·colT (col)", 64, 288, 256, (256, 1), (1, 256)),
        (
            "conv2 dK    g·rowT (im2row)",
            64,
            288,
            256,
            (256, 1),
            (288, 1),
        ),
        ("conv2 dX    KT·g", 288, 256, 64, (1, 288), (256, 1)),
        (
            "conv2 fwdT  row·KT (im2row)",
            256,
            64,
            288,
            (288, 1),
            (1, 288),
        ),
        (
            "conv2 dXT   gT·K (im2row)",
            256,
            288,
            64,
            (1, 256),
            (288, 1),
        ),
        // Channels-last (HWC) images: patches as rows in (ki, kj, c) order, outputs (p, o).
        ("conv1 fwd   hwc row·Kr", 1024, 32, 27, (27, 1), (32, 1)),
        ("conv2 fwd   hwc row·Kr", 256, 64, 288, (288, 1), (64, 1)),
        ("conv1 dKr   hwc rowT·g", 27, 32, 1024, (1, 27), (32, 1)),
        ("conv1 dK    hwc gT·row", 32, 27, 1024, (1, 32), (27, 1)),
        ("conv2 dKr   hwc rowT·g", 288, 64, 256, (1, 288), (64, 1)),
        ("conv2 dK    hwc gT·row", 64, 288, 256, (1, 64), (288, 1)),
        ("conv2 dX    hwc g·Kt", 256, 288, 64, (64, 1), (288, 1)),
        // The same with the output gradient left (O, positions), read through a transposed view.
        ("conv1 dKr   hwc rowT·gT", 27, 32, 1024, (1, 27), (1, 1024)),
        ("conv2 dKr   hwc rowT·gT", 288, 64, 256, (1, 288), (1, 256)),
        ("conv2 dX    hwc gT·Kt", 256, 288, 64, (1, 256), (288, 1)),
        // Stride-1 convolutions straight from a padded channels-last image: per kernel row, the
        // patches are overlapping rows `kw·C` long, `C` apart (x3 kernel rows, 18/16 positions).
        (
            "conv2 fwd   pad view·Kr (x3)",
            288,
            64,
            96,
            (32, 1),
            (64, 1),
        ),
        ("conv1 fwd   pad view·Kr (x3)", 1088, 32, 9, (3, 1), (32, 1)),
        (
            "conv2 dKr   pad viewT·g (x3)",
            96,
            64,
            288,
            (1, 32),
            (64, 1),
        ),
        ("conv1 dKr   pad viewT·g (x3)", 9, 32, 1088, (1, 3), (32, 1)),
    ];
    for c in &cases {
        println!("{:30} {:6.1} GFLOP/s", c.0, run(c));
    }
}
