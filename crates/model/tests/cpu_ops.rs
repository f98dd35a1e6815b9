//! The CPU kernels in `simplecnn_model::ops` against candle's own ops (values and gradients, on
//! random shapes) and against finite differences; the whole model with either set of kernels.

use candle_core::{DType, Device, Tensor, Var};
use proptest::prelude::*;
use simplecnn_model::ops::{self, ConvShape, PoolShape};
use simplecnn_model::{zoo, Kernels, Mode, Model, TrainingPass};

const CPU: Device = Device::Cpu;

/// One process holding the whole batch.
fn whole() -> ops::BatchShard {
    ops::BatchShard::whole()
}

mod common;
use common::{assert_close, rand};

/// candle's ops: explicit zero padding, a stride-1 convolution, every s-th row and column.
fn reference_conv(
    x: &Tensor,
    k: &Tensor,
    b: &Tensor,
    s: &ConvShape,
    pads: (usize, usize),
    relu: bool,
) -> Tensor {
    let xp = x
        .pad_with_zeros(2, s.pad_top, pads.0)
        .unwrap()
        .pad_with_zeros(3, s.pad_left, pads.1)
        .unwrap();
    let y = xp.conv2d(k, 0, 1, 1, 1).unwrap();
    let rows: Vec<u32> = (0..s.out_h).map(|i| (i * s.stride_h) as u32).collect();
    let cols: Vec<u32> = (0..s.out_w).map(|i| (i * s.stride_w) as u32).collect();
    let y = y
        .index_select(&Tensor::new(rows.as_slice(), &CPU).unwrap(), 2)
        .unwrap()
        .index_select(&Tensor::new(cols.as_slice(), &CPU).unwrap(), 3)
        .unwrap();
    let y = y
        .broadcast_add(&b.reshape((1, s.out_channels, 1, 1)).unwrap())
        .unwrap();
    if relu {
        y.relu().unwrap()
    } else {
        y
    }
}

/// Output and the gradients of `sum(y * r)` for x, kernel and bias. `fast: Some(layouts)` runs
/// ours with the input and output laid out so (permuted here: results are NCHW either way).
fn conv_with_grads(
    fast: Option<(ops::ImageLayout, ops::ImageLayout)>,
    (x, k, b): (&Tensor, &Tensor, &Tensor),
    s: &ConvShape,
    pads: (usize, usize),
    relu: bool,
) -> [Tensor; 4] {
    let (x, k, b) = (
        Var::from_tensor(x).unwrap(),
        Var::from_tensor(k).unwrap(),
        Var::from_tensor(b).unwrap(),
    );
    let nhwc = ops::ImageLayout::Nhwc;
    let y = if let Some((input, output)) = fast {
        let xin = match input {
            ops::ImageLayout::Nhwc => x.permute((0, 2, 3, 1)).unwrap(),
            ops::ImageLayout::Nchw => x.as_tensor().clone(),
        };
        let y =
            ops::conv2d_with_layouts(&xin, &k, &b, *s, relu, (input, output), &whole()).unwrap();
        if output == nhwc {
            y.permute((0, 3, 1, 2)).unwrap()
        } else {
            y
        }
    } else {
        reference_conv(&x, &k, &b, s, pads, relu)
    };
    let r = rand(y.dims(), 99);
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = |v: &Var| grads.get(v).expect("a gradient").clone();
    [y.clone(), g(&x), g(&k), g(&b)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn conv2d_matches_candle(
        // 16 or 32 channels in or out take the narrow product kernel (input gradient, forward
        // and kernel gradient); 17 images make three partial sums (chunks of 8), which one
        // thread's buffers serve in turn.
        n in prop_oneof![1usize..4, Just(17)], c in prop_oneof![1usize..5, 8usize..12, Just(16), Just(32)],
        o in prop_oneof![1usize..6, Just(16), Just(32)],
        h in 1usize..10, w in 1usize..10,
        kh in 1usize..4, kw in 1usize..4,
        sh in 1usize..3, sw in 1usize..3,
        pads in (0usize..3, 0usize..3, 0usize..3, 0usize..3),
        relu: bool, seed: u64, nhwc_in: bool, nhwc_out: bool,
    ) {
        let (top, bottom, left, right) = pads;
        let layout = |nhwc| if nhwc { ops::ImageLayout::Nhwc } else { ops::ImageLayout::Nchw };
        let shape = ConvShape::new((c, h, w), o, (kh, kw), (sh, sw), ((top, bottom), (left, right)));
        prop_assume!(shape.is_some());
        let s = shape.unwrap();
        let x = rand(&[n, c, h, w], seed);
        let k = rand(&[o, c, kh, kw], seed ^ 1);
        let b = rand(&[o], seed ^ 2);
        let layouts = (layout(nhwc_in), layout(nhwc_out));
        let fast = conv_with_grads(Some(layouts), (&x, &k, &b), &s, (bottom, right), relu);
        let reference = conv_with_grads(None, (&x, &k, &b), &s, (bottom, right), relu);
        for (i, what) in ["output", "input gradient", "kernel gradient", "bias gradient"].iter().enumerate() {
            assert_close(what, &fast[i], &reference[i], 1e-4);
        }
    }

    #[test]
    fn max_pool2d_matches_candle(
        n in 1usize..3, c in 1usize..4, h in 2usize..12, w in 2usize..12,
        p in 1usize..4, stride in 1usize..4, seed: u64,
    ) {
        let shape = PoolShape::new((h, w), (p, p), (stride, stride));
        prop_assume!(shape.is_some());
        let x = Var::from_tensor(&rand(&[n, c, h, w], seed)).unwrap();
        let fast = ops::max_pool2d(&x, shape.unwrap()).unwrap();
        let reference = x.max_pool2d_with_stride(p, stride).unwrap();
        assert_close("output", &fast, &reference, 1e-6);
        // candle differentiates only windows that tile the input exactly (it upsamples the
        // output back to the input's size); the finite-difference test covers the rest.
        prop_assume!(p == stride && h % p == 0 && w % p == 0);
        let r = rand(fast.dims(), 7);
        let g_fast = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (&reference * &r).unwrap().sum_all().unwrap().backward().unwrap();
        // Random values have no ties, where candle would split the gradient differently; candle
        // divides the gradient by the window size (see below).
        let g_ref = (g_ref.get(&x).unwrap() * (p * p) as f64).unwrap();
        assert_close("input gradient", g_fast.get(&x).unwrap(), &g_ref, 1e-5);
    }
}

/// Central differences of `sum(f(x) * r)` with respect to every element of `x`.
fn finite_difference(x: &Tensor, eps: f32, f: impl Fn(&Tensor) -> Tensor) -> Vec<f32> {
    let base = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let r = rand(f(x).dims(), 5);
    let loss = |v: &[f32]| -> f32 {
        let t = Tensor::from_vec(v.to_vec(), x.dims(), &CPU).unwrap();
        (f(&t) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    (0..base.len())
        .map(|i| {
            let (mut up, mut down) = (base.clone(), base.clone());
            up[i] += eps;
            down[i] -= eps;
            (loss(&up) - loss(&down)) / (2.0 * eps)
        })
        .collect()
}

fn analytic(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Vec<f32> {
    let v = Var::from_tensor(x).unwrap();
    let y = f(&v);
    let r = rand(y.dims(), 5);
    let grads = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    grads
        .get(&v)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn assert_gradients_agree(what: &str, analytic: &[f32], numeric: &[f32]) {
    assert_eq!(analytic.len(), numeric.len());
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!(
            (a - n).abs() <= 2e-2 * (1.0 + n.abs()),
            "{what}[{i}]: analytic {a}, finite difference {n}"
        );
    }
}

#[test]
fn conv2d_gradients_match_finite_differences() {
    // Asymmetric padding and unequal strides; no ReLU, whose kink would spoil the differences.
    let s = ConvShape::new((2, 5, 6), 3, (3, 2), (2, 1), ((0, 1), (1, 0))).unwrap();
    let x = rand(&[2, 2, 5, 6], 11);
    let k = rand(&[3, 2, 3, 2], 12);
    let b = rand(&[3], 13);
    let wrt_x = |t: &Tensor| ops::conv2d(t, &k, &b, s, false).unwrap();
    assert_gradients_agree(
        "dx",
        &analytic(&x, wrt_x),
        &finite_difference(&x, 1e-2, wrt_x),
    );
    let wrt_k = |t: &Tensor| ops::conv2d(&x, t, &b, s, false).unwrap();
    assert_gradients_agree(
        "dk",
        &analytic(&k, wrt_k),
        &finite_difference(&k, 1e-2, wrt_k),
    );
    let wrt_b = |t: &Tensor| ops::conv2d(&x, &k, t, s, false).unwrap();
    assert_gradients_agree(
        "db",
        &analytic(&b, wrt_b),
        &finite_difference(&b, 1e-2, wrt_b),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The Dense op (fixed row chunks) against candle's matmul: values and all three gradients.
    #[test]
    fn dense_matches_candle(
        n in 1usize..40, k in 1usize..70, o in 1usize..20, seed in 0u64..1000,
    ) {
        let x = Var::from_tensor(&rand(&[n, k], seed)).unwrap();
        let w = Var::from_tensor(&rand(&[k, o], seed + 1)).unwrap();
        let b = Var::from_tensor(&rand(&[o], seed + 2)).unwrap();
        let r = rand(&[n, o], seed + 3);
        let ours = ops::dense(&x, &w, &b, &whole()).unwrap();
        let theirs = x.matmul(&w).unwrap().broadcast_add(&b).unwrap();
        assert_close("dense", &ours, &theirs, 1e-5);
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (what, v) in [("dx", &x), ("dk", &w), ("db", &b)] {
            assert_close(what, g1.get(v).unwrap(), g2.get(v).unwrap(), 1e-5);
        }
    }
}

#[test]
fn dense_gradients_match_finite_differences() {
    // 19 rows: two whole chunks of 8 and a short one.
    let x = rand(&[19, 7], 31);
    let k = rand(&[7, 5], 32);
    let b = rand(&[5], 33);
    let wrt_x = |t: &Tensor| ops::dense(t, &k, &b, &whole()).unwrap();
    let dx = finite_difference(&x, 1e-2, wrt_x);
    assert_gradients_agree("dx", &analytic(&x, wrt_x), &dx);
    let wrt_k = |t: &Tensor| ops::dense(&x, t, &b, &whole()).unwrap();
    let dk = finite_difference(&k, 1e-2, wrt_k);
    assert_gradients_agree("dk", &analytic(&k, wrt_k), &dk);
    let wrt_b = |t: &Tensor| ops::dense(&x, &k, t, &whole()).unwrap();
    let db = finite_difference(&b, 1e-2, wrt_b);
    assert_gradients_agree("db", &analytic(&b, wrt_b), &db);
}

/// A row's output does not depend on the batch it sits in (candle's one gemm over the batch
/// blocks by the batch's size; the op's products are over fixed chunks of rows).
#[test]
fn a_dense_row_is_the_same_in_any_batch() {
    let (k, o) = (300, 33);
    let x = rand(&[200, k], 41);
    let w = rand(&[k, o], 42);
    let b = rand(&[o], 43);
    let all = ops::dense(&x, &w, &b, &whole()).unwrap();
    let part = ops::dense(&x.narrow(0, 64, 24).unwrap(), &w, &b, &whole()).unwrap();
    let same = all.narrow(0, 64, 24).unwrap();
    let (a, p) = (
        same.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        part.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert!(a.iter().zip(&p).all(|(a, p)| a.to_bits() == p.to_bits()));
}

#[test]
fn max_pool2d_gradient_matches_finite_differences() {
    // Values 0.1 apart, so a step of 0.01 never changes which element is the maximum.
    let n = 2 * 3 * 7 * 7;
    let mut v: Vec<f32> = (0..n).map(|i| ((i * 37) % n) as f32 * 0.1).collect();
    v.reverse();
    let x = Tensor::from_vec(v, (2, 3, 7, 7), &CPU).unwrap();
    let s = PoolShape::new((7, 7), (3, 3), (2, 2)).unwrap();
    let f = |t: &Tensor| ops::max_pool2d(t, s).unwrap();
    assert_gradients_agree("dx", &analytic(&x, f), &finite_difference(&x, 1e-2, f));
}

/// candle 0.11.1's max-pool backward multiplies the gradient by the share of maxima in the
/// window (1/4 for 2x2) where it should divide by their number: d(2·max)/dx is 2 at the
/// maximum, candle says 0.5. When this fails, candle is fixed: drop the scaling above.
#[test]
fn candle_max_pool_gradient_is_divided_by_the_window_size() {
    let x = Var::from_tensor(&Tensor::new(&[[[[1f32, 3.], [2., 0.5]]]], &CPU).unwrap()).unwrap();
    let gradient_of_twice = |y: Tensor| -> Vec<f32> {
        let g = (y * 2.0).unwrap().sum_all().unwrap().backward().unwrap();
        g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let candle = x.max_pool2d_with_stride(2, 2).unwrap();
    assert_eq!(gradient_of_twice(candle), [0.0, 0.5, 0.0, 0.0]);
    let ours = ops::max_pool2d(&x, PoolShape::new((2, 2), (2, 2), (2, 2)).unwrap()).unwrap();
    assert_eq!(gradient_of_twice(ours), [0.0, 2.0, 0.0, 0.0]);
}

#[test]
fn the_input_gets_no_gradient_unless_it_tracks_one() {
    let s = ConvShape::new((1, 4, 4), 2, (3, 3), (1, 1), ((1, 1), (1, 1))).unwrap();
    let x = rand(&[1, 1, 4, 4], 1);
    let k = Var::from_tensor(&rand(&[2, 1, 3, 3], 2)).unwrap();
    let b = Var::from_tensor(&rand(&[2], 3)).unwrap();
    let grads = ops::conv2d(&x, &k, &b, s, true)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    assert!(grads.get(&k).is_some() && grads.get(&b).is_some());
}

#[test]
fn wrong_shapes_are_errors_not_panics() {
    let s = ConvShape::new((3, 8, 8), 4, (3, 3), (1, 1), ((1, 1), (1, 1))).unwrap();
    let k = rand(&[4, 3, 3, 3], 1);
    let b = rand(&[4], 2);
    let err = ops::conv2d(&rand(&[1, 3, 8, 7], 3), &k, &b, s, true).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let err = ops::conv2d(
        &rand(&[1, 3, 8, 8], 3),
        &rand(&[4, 3, 3, 2], 1),
        &b,
        s,
        true,
    )
    .unwrap_err();
    assert!(err.to_string().contains("kernel"), "{err}");
    let x64 = rand(&[1, 3, 8, 8], 3).to_dtype(DType::F64).unwrap();
    assert!(ops::conv2d(&x64, &k, &b, s, true).is_err());
    assert!(ConvShape::new((3, 2, 2), 4, (3, 3), (1, 1), ((0, 0), (0, 0))).is_none());
    assert!(PoolShape::new((1, 4), (2, 2), (2, 2)).is_none());
}

/// A training-mode forward and backward (of the squared logits) of `spec` on `x` with either
/// set of kernels: the same logits and weight gradients, to `1e-4` and `1e-3`.
fn assert_same_training_step(spec: &simplecnn_model::Network, x: &Tensor) {
    // An output element the fast kernels forget to write is then NaN, not a stale value.
    ops::fill_unwritten_outputs_with_nan();
    let run = |kernels: Kernels| {
        let mut model = Model::new(spec.clone(), &CPU, 8).unwrap();
        model.set_kernels(kernels).unwrap();
        let mut rng = TrainingPass::new(4);
        let logits = model.logits(x, Mode::Training(&mut rng)).unwrap();
        let grads = logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<Tensor> = model
            .vars()
            .iter()
            .map(|v| grads.get(v).unwrap().clone())
            .collect();
        // Every weight after the step (BatchNormalization's moving statistics moved), and
        // inference on them.
        let after: Vec<Tensor> = model
            .weights()
            .map(|w| w.var.as_tensor().copy().unwrap())
            .collect();
        let inference = model.logits(x, Mode::Inference).unwrap();
        (logits, g, after, inference)
    };
    let (fast, fast_grads, fast_after, fast_inf) = run(Kernels::Fast);
    let (reference, reference_grads, reference_after, reference_inf) = run(Kernels::Candle);
    assert_close("logits", &fast, &reference, 1e-4);
    for (i, (a, b)) in fast_grads.iter().zip(&reference_grads).enumerate() {
        assert_close(&format!("gradient {i}"), a, b, 1e-3);
    }
    for (i, (a, b)) in fast_after.iter().zip(&reference_after).enumerate() {
        assert_close(&format!("weight {i} after the step"), a, b, 1e-5);
    }
    assert_close("inference logits", &fast_inf, &reference_inf, 1e-4);
}

#[test]
fn simple_cnn_trains_the_same_with_either_kernels() {
    // The candle path pools with a reshape and max reductions, not candle's max_pool2d (whose
    // gradient is off, see above), so every gradient agrees.
    let x = rand(&[6, 3, 32, 32], 21).affine(0.5, 0.5).unwrap();
    assert_same_training_step(&zoo::simple_cnn(), &x);
}

#[test]
fn the_candle_path_pools_with_the_right_gradient() {
    // A pool alone on 2 channels of 7x9 (not a multiple of the pool: Keras drops the rest),
    // with windows that tile, and that overlap (ResNet's 3x3 stride 2).
    for (pool_size, strides) in [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (1, 2))] {
        let mut spec =
            simplecnn_model::Network::new("pool", simplecnn_model::FeatureShape::image(2, 7, 9));
        spec.add_named(
            "pool",
            simplecnn_model::LayerKind::MaxPool2d(simplecnn_model::MaxPooling2D(
                simplecnn_model::Pool2dConfig {
                    pool_size,
                    strides,
                    padding: simplecnn_model::Padding::Valid,
                },
            )),
        )
        .unwrap();
        let x = rand(&[3, 2, 7, 9], 5);
        let grads = |kernels: Kernels| {
            let mut model = Model::new(spec.clone(), &CPU, 0).unwrap();
            model.set_kernels(kernels).unwrap();
            let xv = Var::from_tensor(&x).unwrap();
            let y = model.forward(xv.as_tensor(), Mode::Inference).unwrap();
            let r = rand(y.dims(), 6);
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&xv).unwrap().clone())
        };
        let ((fast, fast_grad), (candle, candle_grad)) =
            (grads(Kernels::Fast), grads(Kernels::Candle));
        assert_eq!(candle.dims(), fast.dims());
        let what = format!("pool {pool_size:?} stride {strides:?}");
        assert_close(&format!("{what}: pooled"), &candle, &fast, 0.0);
        assert_close(
            &format!("{what}: input gradient"),
            &candle_grad,
            &fast_grad,
            0.0,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The fused block against the separate ops it replaces (each tested above).
    #[test]
    fn conv_pool_matches_conv_then_pool_then_dropout(
        n in 1usize..4, c in prop_oneof![1usize..4, 8usize..10], o in 1usize..5,
        h in 2usize..12, w in 2usize..12, k in 1usize..4,
        pool in 1usize..4, stride in 1usize..3, same: bool,
        relu: bool, dropout: bool, input_grad: bool, seed: u64,
        nhwc_in: bool, nhwc_out: bool,
    ) {
        // TensorFlow's "same" for stride 1: the odd row or column of padding goes last.
        let pad = if same { ((k - 1) / 2, k / 2) } else { (0, 0) };
        let conv = ConvShape::new((c, h, w), o, (k, k), (1, 1), (pad, pad));
        prop_assume!(conv.is_some());
        let conv = conv.unwrap();
        let pool_shape = PoolShape::new((conv.out_h, conv.out_w), (pool, pool), (stride, stride));
        prop_assume!(pool_shape.is_some());
        let pool_shape = pool_shape.unwrap();
        let x = rand(&[n, c, h, w], seed);
        let k_ = rand(&[o, c, k, k], seed ^ 1);
        let b = rand(&[o], seed ^ 2);
        let out_len = n * o * pool_shape.out_h * pool_shape.out_w;
        let mask: Option<Vec<f32>> = dropout.then(|| (0..out_len).map(|i| if (i * 7 + seed as usize).is_multiple_of(4) { 0.0 } else { 4.0 / 3.0 }).collect());
        let run = |fused: bool| -> Vec<Tensor> {
            let xv = Var::from_tensor(&x).unwrap();
            let (kv, bv) = (Var::from_tensor(&k_).unwrap(), Var::from_tensor(&b).unwrap());
            let input = if input_grad { xv.as_tensor().clone() } else { x.clone() };
            let y = if fused {
                // Channels-last input and output, when drawn, are permuted here so that the
                // comparison (and the gradient reaching `xv`) is in NCHW.
                let layout = |nhwc| if nhwc { ops::ImageLayout::Nhwc } else { ops::ImageLayout::Nchw };
                let block = ops::ConvPoolShape {
                    conv, pool: pool_shape, relu, input: layout(nhwc_in), output: layout(nhwc_out),
                };
                let input = if nhwc_in { input.permute((0, 2, 3, 1)).unwrap() } else { input };
                let y = ops::conv_pool(&input, &kv, &bv, block, mask.clone(), true, &whole()).unwrap();
                // The inference form computes the same values and records nothing.
                let plain = ops::conv_pool(&input, &kv, &bv, block, mask.clone(), false, &whole()).unwrap();
                assert!(!plain.track_op());
                assert_close("inference output", &plain, &y, 0.0);
                if nhwc_out { y.permute((0, 3, 1, 2)).unwrap() } else { y }
            } else {
                let y = ops::max_pool2d(&ops::conv2d(&input, &kv, &bv, conv, relu).unwrap(), pool_shape).unwrap();
                match &mask {
                    Some(m) => (y * Tensor::from_vec(m.clone(), out_len, &CPU).unwrap().reshape(((), o, pool_shape.out_h, pool_shape.out_w)).unwrap()).unwrap(),
                    None => y,
                }
            };
            let r = rand(y.dims(), 3);
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![y.clone(), grads.get(&kv).unwrap().clone(), grads.get(&bv).unwrap().clone()];
            if input_grad {
                out.push(grads.get(&xv).unwrap().clone());
            } else {
                assert!(grads.get(&xv).is_none());
            }
            out
        };
        let (fused, separate) = (run(true), run(false));
        for (i, what) in ["output", "kernel gradient", "bias gradient", "input gradient"].iter().enumerate().take(fused.len()) {
            assert_close(what, &fused[i], &separate[i], 1e-4);
        }
    }
}

#[test]
fn convolutions_in_a_row_chain_channels_last_the_same_as_candle() {
    ops::fill_unwritten_outputs_with_nan();
    // VGG-style: conv → conv → pool, a strided conv, then conv → pool with dropout; the fast
    // path hands channels-last images from each conv to the next.
    use simplecnn_model::{
        Activation, Conv2dConfig, FeatureShape, LayerKind, Network, Padding, Pool2dConfig,
    };
    let mut spec = Network::new("chain", FeatureShape::image(3, 12, 12));
    let conv = |f, p, a| LayerKind::Conv2d(Conv2dConfig::new(f, 3, p, a));
    let pool = LayerKind::MaxPool2d(simplecnn_model::MaxPooling2D(Pool2dConfig::new(2)));
    spec.add(conv(8, Padding::Same, Activation::Relu)).unwrap();
    spec.add(conv(9, Padding::Same, Activation::Relu)).unwrap();
    spec.add(pool).unwrap();
    spec.add(LayerKind::Conv2d(Conv2dConfig {
        strides: (2, 1),
        ..Conv2dConfig::new(10, 3, Padding::Same, Activation::Linear)
    }))
    .unwrap();
    spec.add(conv(8, Padding::Valid, Activation::Relu)).unwrap();
    spec.add(LayerKind::MaxPool2d(simplecnn_model::MaxPooling2D(
        Pool2dConfig {
            pool_size: (1, 2),
            strides: (1, 2),
            padding: Padding::Valid,
        },
    )))
    .unwrap();
    spec.add(LayerKind::dropout(0.25)).unwrap();
    spec.add(LayerKind::Flatten).unwrap();
    spec.add(LayerKind::dense(5, Activation::Softmax)).unwrap();
    assert_same_training_step(&spec, &rand(&[4, 3, 12, 12], 31));
}

/// airbench's pattern: Conv2D → MaxPool2D → BatchNormalization (no gamma) → GELU, a Conv2D
/// without bias → BatchNormalization → ReLU, a BatchNormalization on flat features, in
/// training and inference, on the fast path's BatchNormalization op and on candle's ops.
#[test]
fn batch_norm_and_gelu_train_the_same_with_either_kernels() {
    ops::fill_unwritten_outputs_with_nan();
    use simplecnn_model::{
        Activation, ActivationConfig, BatchNormConfig, FeatureShape, LayerKind, Network, Padding,
    };
    let mut spec = Network::new("bn", FeatureShape::image(3, 10, 10));
    let bn = |scale, momentum| {
        LayerKind::BatchNorm(BatchNormConfig {
            epsilon: 1e-5,
            momentum,
            center: true,
            scale,
        })
    };
    let act = |activation| LayerKind::Activation(ActivationConfig { activation });
    spec.add(LayerKind::conv2d(6, 3, Padding::Same, Activation::Linear))
        .unwrap()
        .add(LayerKind::max_pool(2))
        .unwrap()
        .add(bn(false, 0.6))
        .unwrap()
        .add(act(Activation::Gelu))
        .unwrap()
        .add(LayerKind::conv2d(5, 3, Padding::Same, Activation::Gelu))
        .unwrap()
        .add(bn(true, 0.9))
        .unwrap()
        .add(act(Activation::Relu))
        .unwrap()
        .add(LayerKind::Flatten)
        .unwrap()
        .add(bn(true, 0.5))
        .unwrap()
        .add(LayerKind::dense(4, Activation::Softmax))
        .unwrap();
    // Inputs off centre and scale, so that the statistics matter.
    let x = rand(&[7, 3, 10, 10], 31).affine(2.0, 0.7).unwrap();
    assert_same_training_step(&spec, &x);
}

/// He et al.'s CIFAR ResNet in small: a stem, a basic block and a stride-2 block with a 1x1
/// projection shortcut. The fast path fuses each block's last BatchNormalization with its
/// join and ReLU, and has the convolutions sum their output for the normalisation; candle's
/// ops run every layer apart.
#[test]
fn a_residual_network_trains_the_same_with_either_kernels() {
    ops::fill_unwritten_outputs_with_nan();
    use simplecnn_model::{
        Activation, ActivationConfig, BatchNormConfig, FeatureShape, LayerKind, Network, Padding,
        Source,
    };
    let mut s = Network::new("resnet", FeatureShape::image(3, 8, 8));
    let conv = |filters, kernel, stride| {
        let mut k = LayerKind::conv2d(filters, kernel, Padding::Same, Activation::Linear);
        if let LayerKind::Conv2d(c) = &mut k {
            c.strides = (stride, stride);
        }
        k
    };
    let bn = || LayerKind::BatchNorm(BatchNormConfig::default());
    let relu = || {
        LayerKind::Activation(ActivationConfig {
            activation: Activation::Relu,
        })
    };
    let at = |s: &Network, name: &str| Source::Layer(s.index_of(name).unwrap());
    s.add_named("stem", conv(4, 3, 1)).unwrap();
    s.add_named("stem_bn", bn()).unwrap();
    s.add_named("stem_relu", relu()).unwrap();
    s.add_named("a_conv1", conv(4, 3, 1)).unwrap();
    s.add_named("a_bn1", bn()).unwrap();
    s.add_named("a_relu1", relu()).unwrap();
    s.add_named("a_conv2", conv(4, 3, 1)).unwrap();
    s.add_named("a_bn2", bn()).unwrap();
    let (x, y) = (at(&s, "stem_relu"), at(&s, "a_bn2"));
    s.connect("a_add", LayerKind::Add, &[x, y]).unwrap();
    s.add_named("a_out", relu()).unwrap();
    s.add_named("b_conv1", conv(8, 3, 2)).unwrap();
    s.add_named("b_bn1", bn()).unwrap();
    s.add_named("b_relu1", relu()).unwrap();
    s.add_named("b_conv2", conv(8, 3, 1)).unwrap();
    s.add_named("b_bn2", bn()).unwrap();
    let a_out = at(&s, "a_out");
    s.connect("b_shortcut", conv(8, 1, 2), &[a_out]).unwrap();
    let (x, y) = (at(&s, "b_bn2"), at(&s, "b_shortcut"));
    s.connect("b_add", LayerKind::Add, &[x, y]).unwrap();
    s.add_named("b_out", relu()).unwrap();
    s.add(LayerKind::Flatten).unwrap();
    s.add(LayerKind::dense(3, Activation::Softmax)).unwrap();
    let x = rand(&[9, 3, 8, 8], 51).affine(2.0, 0.7).unwrap();
    assert_same_training_step(&s, &x);
}

#[test]
fn batch_norm_gradients_match_finite_differences() {
    let x = rand(&[3, 2, 3, 4], 41).affine(1.5, 0.3).unwrap();
    let gamma = rand(&[2], 42).affine(0.5, 1.0).unwrap();
    let beta = rand(&[2], 43);
    for activation in [ops::NormActivation::Linear, ops::NormActivation::Gelu] {
        let bn = |x: &Tensor, g: &Tensor, b: &Tensor, stats: ops::NormStatistics| {
            ops::batch_norm(
                x,
                g,
                b,
                stats,
                ops::NormSpec {
                    epsilon: 1e-3,
                    activation,
                    layout: ops::ImageLayout::Nchw,
                },
                true,
            )
            .unwrap()
            .0
        };
        let batch = |t: &Tensor| bn(t, &gamma, &beta, ops::NormStatistics::Batch(whole()));
        assert_gradients_agree(
            "dx (batch statistics)",
            &analytic(&x, batch),
            &finite_difference(&x, 1e-2, batch),
        );
        let fixed = || ops::NormStatistics::Fixed {
            mean: vec![0.2, -0.1],
            variance: vec![0.5, 2.0],
        };
        let wrt_x = |t: &Tensor| bn(t, &gamma, &beta, fixed());
        assert_gradients_agree(
            "dx (fixed statistics)",
            &analytic(&x, wrt_x),
            &finite_difference(&x, 1e-2, wrt_x),
        );
        let wrt_gamma = |t: &Tensor| bn(&x, t, &beta, ops::NormStatistics::Batch(whole()));
        assert_gradients_agree(
            "dgamma",
            &analytic(&gamma, wrt_gamma),
            &finite_difference(&gamma, 1e-2, wrt_gamma),
        );
        let wrt_beta = |t: &Tensor| bn(&x, &gamma, t, ops::NormStatistics::Batch(whole()));
        assert_gradients_agree(
            "dbeta",
            &analytic(&beta, wrt_beta),
            &finite_difference(&beta, 1e-2, wrt_beta),
        );
    }
}

/// Channels-last BatchNormalization gives the NCHW op's bits: output, moments and the
/// gradients of x, gamma and beta, for planes that are and are not multiples of 16 lanes
/// (planes 1x3, 5x5 and 8x8; images per batch beyond one chunk of 8), with batch and fixed
/// statistics and each fused activation.
#[test]
fn batch_norm_channels_last_gives_the_same_bits() {
    ops::fill_unwritten_outputs_with_nan();
    let mut seed = 700;
    for (n, c, h, w) in [(3, 5, 1, 3), (11, 7, 5, 5), (9, 16, 8, 8)] {
        for activation in [
            ops::NormActivation::Linear,
            ops::NormActivation::Relu,
            ops::NormActivation::Gelu,
        ] {
            for training in [true, false] {
                seed += 4;
                let x = rand(&[n, c, h, w], seed).affine(1.7, 0.4).unwrap();
                let gamma = rand(&[c], seed + 1).affine(0.5, 1.0).unwrap();
                let beta = rand(&[c], seed + 2);
                let r = rand(&[n, c, h, w], seed + 3);
                let run = |layout: ops::ImageLayout| {
                    let (xv, gv, bv) = (
                        Var::from_tensor(&x).unwrap(),
                        Var::from_tensor(&gamma).unwrap(),
                        Var::from_tensor(&beta).unwrap(),
                    );
                    let stats = match training {
                        true => ops::NormStatistics::Batch(whole()),
                        false => ops::NormStatistics::Fixed {
                            mean: (0..c).map(|i| 0.1 * i as f32).collect(),
                            variance: (0..c).map(|i| 0.5 + 0.2 * i as f32).collect(),
                        },
                    };
                    let nhwc = layout == ops::ImageLayout::Nhwc;
                    let xin = match nhwc {
                        true => xv.permute((0, 2, 3, 1)).unwrap(),
                        false => xv.as_tensor().clone(),
                    };
                    let (y, moments) = ops::batch_norm(
                        &xin,
                        &gv,
                        &bv,
                        stats,
                        ops::NormSpec {
                            epsilon: 1e-3,
                            activation,
                            layout,
                        },
                        true,
                    )
                    .unwrap();
                    let y = match nhwc {
                        true => y.permute((0, 3, 1, 2)).unwrap(),
                        false => y,
                    };
                    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    let bits = |t: &Tensor| -> Vec<u32> {
                        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        v.iter().map(|f| f.to_bits()).collect()
                    };
                    let grad = |v: &Var| bits(grads.get(v).unwrap());
                    let moments = moments.map(|m| (m.mean, m.variance));
                    (bits(&y), moments, grad(&xv), grad(&gv), grad(&bv))
                };
                let (nchw, nhwc) = (run(ops::ImageLayout::Nchw), run(ops::ImageLayout::Nhwc));
                let what = format!("{n}x{c}x{h}x{w} {activation:?} training {training}");
                let same = |a: &[u32], b: &[u32], name: &str| {
                    let first = a.iter().zip(b).position(|(a, b)| a != b);
                    assert!(
                        a.len() == b.len() && first.is_none(),
                        "{what}: {name} differs (first at {first:?})"
                    );
                };
                same(&nchw.0, &nhwc.0, "output");
                assert_eq!(nchw.1, nhwc.1, "{what}: moments");
                same(&nchw.2, &nhwc.2, "dx");
                same(&nchw.3, &nhwc.3, "dgamma");
                same(&nchw.4, &nhwc.4, "dbeta");
            }
        }
    }
}

/// A convolution's per-image sums of its output give a training BatchNormalization after it
/// the bits of its own pass over the images: output, moments and gradients, in either layout,
/// for planes that are and are not multiples of 16 lanes and batches beyond one chunk of 8.
/// Sums of another shape are refused.
#[test]
fn batch_norm_on_a_convolutions_sums_gives_the_same_bits() {
    ops::fill_unwritten_outputs_with_nan();
    let mut seed = 900;
    for (n, c, o, hw) in [(3, 3, 5, 3), (11, 4, 16, 5), (9, 16, 32, 8)] {
        for layout in [ops::ImageLayout::Nchw, ops::ImageLayout::Nhwc] {
            seed += 5;
            let x = rand(&[n, c, hw, hw], seed);
            let k = Var::from_tensor(&rand(&[o, c, 3, 3], seed + 1)).unwrap();
            let b = rand(&[o], seed + 2);
            let gamma = rand(&[o], seed + 3).affine(0.5, 1.0).unwrap();
            let beta = rand(&[o], seed + 4);
            let shape = ConvShape::new((c, hw, hw), o, (3, 3), (1, 1), ((1, 1), (1, 1))).unwrap();
            let layouts = (ops::ImageLayout::Nchw, layout);
            let spec = ops::NormSpec {
                epsilon: 1e-3,
                activation: ops::NormActivation::Relu,
                layout,
            };
            let run = |summed: bool| {
                let (y, stats) = match summed {
                    true => {
                        let (y, sums) =
                            ops::conv2d_with_sums(&x, &k, &b, shape, false, layouts, &whole())
                                .unwrap();
                        (y, ops::NormStatistics::Summed(whole(), sums.into()))
                    }
                    false => {
                        let y =
                            ops::conv2d_with_layouts(&x, &k, &b, shape, false, layouts, &whole())
                                .unwrap();
                        (y, ops::NormStatistics::Batch(whole()))
                    }
                };
                let (z, moments) = ops::batch_norm(&y, &gamma, &beta, stats, spec, true).unwrap();
                let r = rand(z.dims(), 7);
                let grads = (&z * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let bits = |t: &Tensor| -> Vec<u32> {
                    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    v.iter().map(|f| f.to_bits()).collect()
                };
                let moments = moments.map(|m| (m.mean, m.variance));
                (bits(&z), moments, bits(grads.get(&k).unwrap()))
            };
            let (own, summed) = (run(false), run(true));
            let what = format!("{n}x{c}->{o} {hw}x{hw} {layout:?}");
            assert!(own.1.is_some(), "{what}: no moments");
            assert!(own == summed, "{what}: the sums' bits differ");
        }
    }
    // Sums of 3 channels for a normalisation of 5.
    let x = rand(&[2, 5, 4, 4], 1);
    let mut sums = ops::ImageSums::new(2, 3);
    for (i, image) in sums.per_image_mut().into_iter().enumerate() {
        let v = x
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        ops::image_sums(&v, 3, 16, ops::ImageLayout::Nchw, image);
    }
    let ones = Tensor::ones(5, DType::F32, &CPU).unwrap();
    let stats = ops::NormStatistics::Summed(whole(), sums.into());
    let spec = ops::NormSpec {
        epsilon: 1e-3,
        activation: ops::NormActivation::Linear,
        layout: ops::ImageLayout::Nchw,
    };
    let err = ops::batch_norm(&x, &ones, &ones, stats, spec, false).unwrap_err();
    assert!(
        err.to_string().contains("not of 2 images of 5 channels"),
        "{err}"
    );
}

/// BatchNormalization → Add → ReLU as one op gives the bits of the two ops it replaces:
/// output, moments and the gradients of x, gamma, beta and the residual, in either layout,
/// with batch and fixed statistics, planes that are and are not multiples of 16 lanes and
/// batches beyond one chunk of 8.
#[test]
fn batch_norm_add_relu_gives_the_bits_of_its_two_ops() {
    ops::fill_unwritten_outputs_with_nan();
    let mut seed = 1100;
    for (n, c, h, w) in [(3, 5, 1, 3), (11, 7, 5, 5), (9, 16, 8, 8)] {
        for layout in [ops::ImageLayout::Nchw, ops::ImageLayout::Nhwc] {
            for training in [true, false] {
                seed += 5;
                let dims = match layout {
                    ops::ImageLayout::Nchw => [n, c, h, w],
                    ops::ImageLayout::Nhwc => [n, h, w, c],
                };
                let x = rand(&dims, seed).affine(1.7, 0.4).unwrap();
                let gamma = rand(&[c], seed + 1).affine(0.5, 1.0).unwrap();
                let beta = rand(&[c], seed + 2);
                let residual = rand(&dims, seed + 3);
                let r = rand(&dims, seed + 4);
                let spec = ops::NormSpec {
                    epsilon: 1e-3,
                    activation: ops::NormActivation::Linear,
                    layout,
                };
                let stats = || match training {
                    true => ops::NormStatistics::Batch(whole()),
                    false => ops::NormStatistics::Fixed {
                        mean: (0..c).map(|i| 0.1 * i as f32).collect(),
                        variance: (0..c).map(|i| 0.5 + 0.2 * i as f32).collect(),
                    },
                };
                let run = |fused: bool| {
                    let vars = [&x, &gamma, &beta, &residual].map(|t| Var::from_tensor(t).unwrap());
                    let [xv, gv, bv, rv] = &vars;
                    let (y, moments) = match fused {
                        true => ops::batch_norm_add_relu(xv, gv, bv, rv, stats(), spec, true),
                        false => ops::batch_norm(xv, gv, bv, stats(), spec, true)
                            .and_then(|(z, m)| Ok((ops::add_relu(&z, rv)?, m))),
                    }
                    .unwrap();
                    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    let bits = |t: &Tensor| -> Vec<u32> {
                        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        v.iter().map(|f| f.to_bits()).collect()
                    };
                    let grads: Vec<Vec<u32>> =
                        vars.iter().map(|v| bits(grads.get(v).unwrap())).collect();
                    (bits(&y), moments.map(|m| (m.mean, m.variance)), grads)
                };
                let (apart, fused) = (run(false), run(true));
                let what = format!("{n}x{c}x{h}x{w} {layout:?} training {training}");
                assert_eq!(apart.0, fused.0, "{what}: output");
                assert_eq!(apart.1, fused.1, "{what}: moments");
                for (i, name) in ["x", "gamma", "beta", "residual"].iter().enumerate() {
                    assert_eq!(apart.2[i], fused.2[i], "{what}: gradient of {name}");
                }
            }
        }
    }
}

#[test]
fn batch_norm_returns_the_batch_moments_keras_averages() {
    // Channel 0 holds 1..=8, channel 1 a constant: mean 4.5 and variance 5.25 (biased), 3 and 0.
    let mut v = Vec::new();
    for n in 0..2 {
        v.extend((1..=4).map(|i| (i + 4 * n) as f32));
        v.extend([3.0; 4]);
    }
    let x = Tensor::from_vec(v, (2, 2, 2, 2), &CPU).unwrap();
    let ones = Tensor::ones(2, DType::F32, &CPU).unwrap();
    let zeros = Tensor::zeros(2, DType::F32, &CPU).unwrap();
    let (y, m) = ops::batch_norm(
        &x,
        &ones,
        &zeros,
        ops::NormStatistics::Batch(whole()),
        ops::NormSpec {
            epsilon: 1e-3,
            activation: ops::NormActivation::Linear,
            layout: ops::ImageLayout::Nchw,
        },
        false,
    )
    .unwrap();
    let m = m.unwrap();
    assert_eq!(m.mean, vec![4.5, 3.0]);
    assert_eq!(m.variance, vec![5.25, 0.0]);
    let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((y[0] - (1.0 - 4.5) / (5.25f32 + 1e-3).sqrt()).abs() < 1e-6);
    // A constant channel normalises to 0 (to rounding: x · scale + shift, scale ≈ 31.6).
    assert!(y[4].abs() < 1e-4, "{}", y[4]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn gelu_matches_candle(len in 1usize..3000, seed in 0u64..1000, spread in 0.1f32..8.0) {
        let x = rand(&[len], seed).affine(spread as f64, 0.0).unwrap();
        assert_close("gelu", &ops::gelu(&x, false).unwrap(), &x.gelu_erf().unwrap(), 1e-6);
        let r = rand(&[len], seed + 1);
        let grad = |f: &dyn Fn(&Tensor) -> Tensor| {
            let v = Var::from_tensor(&x).unwrap();
            let g = (f(v.as_tensor()) * &r).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(&v).unwrap().clone()
        };
        let ours = grad(&|t| ops::gelu(t, true).unwrap());
        let candle = grad(&|t| t.gelu_erf().unwrap());
        assert_close("gelu gradient", &ours, &candle, 1e-5);
    }
}

/// Keras' rule: a frozen BatchNormalization runs in inference mode during training (moving
/// statistics used and kept), and its weights leave the trainable set; gradients still flow
/// through it to the layers below.
#[test]
fn a_frozen_batch_norm_uses_and_keeps_its_moving_statistics() {
    use simplecnn_model::{
        Activation, ActivationConfig, BatchNormConfig, FeatureShape, LayerKind, Network, Padding,
    };
    let mut spec = Network::new("frozen", FeatureShape::image(2, 6, 6));
    spec.add(LayerKind::conv2d(3, 3, Padding::Same, Activation::Linear))
        .unwrap()
        .add(LayerKind::BatchNorm(BatchNormConfig::default()))
        .unwrap()
        .add(LayerKind::Activation(ActivationConfig {
            activation: Activation::Gelu,
        }))
        .unwrap()
        .add(LayerKind::Flatten)
        .unwrap()
        .add(LayerKind::dense(2, Activation::Softmax))
        .unwrap();
    let x = rand(&[4, 2, 6, 6], 51).affine(3.0, 1.0).unwrap();
    for kernels in [Kernels::Fast, Kernels::Candle] {
        let mut model = Model::new(spec.clone(), &CPU, 2).unwrap();
        model.set_kernels(kernels).unwrap();
        let bn = "batch_normalization_1";
        model
            .set_weight(
                bn,
                "moving_mean",
                &Tensor::new(&[0.5f32, -0.5, 1.0], &CPU).unwrap(),
            )
            .unwrap();
        let trainable_before = model.trainable_weights().count();
        model.set_trainable(bn, false).unwrap();
        assert_eq!(model.trainable_weights().count(), trainable_before - 2);
        let inference = model.logits(&x, Mode::Inference).unwrap();
        let mut rng = TrainingPass::new(1);
        let training = model.logits(&x, Mode::Training(&mut rng)).unwrap();
        assert_close("frozen: training = inference", &training, &inference, 1e-6);
        let mean = model.weight(bn, "moving_mean").unwrap().var.as_tensor();
        assert_eq!(mean.to_vec1::<f32>().unwrap(), vec![0.5, -0.5, 1.0]);
        let grads = training.sum_all().unwrap().backward().unwrap();
        let kernel = model.weight("conv2d_1", "kernel").unwrap();
        let g = grads
            .get(&kernel.var)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert!(
            g.to_scalar::<f32>().unwrap() > 0.0,
            "{kernels:?}: no gradient below"
        );
        // Unfrozen, the same step uses the batch's statistics.
        model.set_trainable(bn, true).unwrap();
        let training = model.logits(&x, Mode::Training(&mut rng)).unwrap();
        let diff = (training - &inference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() > 1e-3);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The depthwise kernel against candle's grouped convolution on the padded input: values,
    /// input gradient and kernel gradient, any multiplier, stride and padding.
    #[test]
    fn depthwise_conv2d_matches_candle(
        n in 1usize..3, c in 1usize..4, m in 1usize..3, h in 3usize..9, w in 3usize..9,
        kh in 1usize..4, kw in 1usize..4, sh in 1usize..3, sw in 1usize..3,
        pads in (0usize..2, 0usize..2, 0usize..2, 0usize..2), seed in 0u64..1000,
    ) {
        let (top, bottom, left, right) = pads;
        let (ph, pw) = (h + top + bottom, w + left + right);
        prop_assume!(ph >= kh && pw >= kw);
        let (out_h, out_w) = ((ph - kh) / sh + 1, (pw - kw) / sw + 1);
        let shape = ops::DepthwiseShape {
            channels: c, multiplier: m, in_h: h, in_w: w, kernel: (kh, kw), strides: (sh, sw),
            pad_top: top, pad_left: left, out_h, out_w,
        };
        let x = Var::from_tensor(&rand(&[n, c, h, w], seed)).unwrap();
        let k = Var::from_tensor(&rand(&[c * m, 1, kh, kw], seed + 1)).unwrap();
        let r = rand(&[n, c * m, out_h, out_w], seed + 2);
        let ours = ops::depthwise_conv2d(x.as_tensor(), k.as_tensor(), shape).unwrap();
        let padded = x.as_tensor().pad_with_zeros(2, top, bottom).unwrap()
            .pad_with_zeros(3, left, right).unwrap();
        // candle takes one stride: stride 1, then every s-th row and column.
        let full = padded.conv2d(k.as_tensor(), 0, 1, 1, c).unwrap();
        let rows: Vec<u32> = (0..out_h).map(|i| (i * sh) as u32).collect();
        let cols: Vec<u32> = (0..out_w).map(|i| (i * sw) as u32).collect();
        let reference = full
            .index_select(&Tensor::new(rows.as_slice(), &CPU).unwrap(), 2).unwrap()
            .index_select(&Tensor::new(cols.as_slice(), &CPU).unwrap(), 3).unwrap();
        assert_close("depthwise output", &ours, &reference, 1e-5);
        let grads = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (g1, g2) = (grads(&ours), grads(&reference));
        assert_close("input gradient", g1.get(&x).unwrap(), g2.get(&x).unwrap(), 1e-5);
        assert_close("kernel gradient", g1.get(&k).unwrap(), g2.get(&k).unwrap(), 1e-5);
    }
}
