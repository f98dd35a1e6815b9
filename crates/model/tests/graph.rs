//! A graph that branches and joins: its forward pass against the same computation written out
//! by hand with candle's ops, on either kernels; the gradients of its new layers (Add,
//! Multiply with broadcasting, Concatenate, ZeroPadding2D, ReLU with max_value, slope and
//! threshold, keepdims pooling) against finite differences; and a value dropped after its
//! last use.

mod common;

use candle_core::{Tensor, Var};
use common::{assert_close, rand, CPU};
use simplecnn_model::{
    Activation, ActivationConfig, Conv2dConfig, DenseConfig, FeatureShape, GlobalAveragePooling2D,
    Kernels, LayerKind, Mode, Model, Network, Padding, ReluConfig, Source, ZeroPadding2D,
};

/// input ─ a: conv 3x3 same ─ b: ReLU(6, slope 0.1, threshold 0.05) ─┐
///    └─ pad (1,1) ─ c: conv 3x3 valid (linear) ───────────────────── add ─ sum
/// sum ─ squeeze (GAP keepdims) ─ gate (sigmoid) ─┐
/// sum ─────────────────────────────────────────── multiply ─ cat [multiply, a] ─ flatten ─ dense
fn branchy() -> Network {
    let mut s = Network::new("branchy", FeatureShape::image(2, 5, 5));
    let conv = |filters, padding| {
        LayerKind::Conv2d(Conv2dConfig::new(filters, 3, padding, Activation::Linear))
    };
    s.add_named("a", conv(3, Padding::Same)).unwrap();
    let relu = ReluConfig {
        max_value: Some(6.0),
        negative_slope: 0.1,
        threshold: 0.05,
    };
    s.add_named("b", LayerKind::Relu(relu)).unwrap();
    let pad = ZeroPadding2D {
        padding: ((1, 1), (1, 1)),
    };
    s.connect("pad", LayerKind::ZeroPadding2d(pad), &[Source::Input])
        .unwrap();
    s.add_named("c", conv(3, Padding::Valid)).unwrap();
    s.connect("sum", LayerKind::Add, &[Source::Layer(1), Source::Layer(3)])
        .unwrap();
    let gap = GlobalAveragePooling2D { keepdims: true };
    s.add_named("squeeze", LayerKind::GlobalAvgPool2d(gap))
        .unwrap();
    s.add_named(
        "gate",
        LayerKind::Activation(ActivationConfig {
            activation: Activation::Sigmoid,
        }),
    )
    .unwrap();
    s.connect(
        "excite",
        LayerKind::Multiply,
        &[Source::Layer(4), Source::Layer(6)],
    )
    .unwrap();
    s.connect(
        "cat",
        LayerKind::Concatenate,
        &[Source::Layer(7), Source::Layer(0)],
    )
    .unwrap();
    s.add_named("flat", LayerKind::Flatten).unwrap();
    let dense = DenseConfig::default_for(4, Activation::Linear);
    s.add_named("out", LayerKind::Dense(dense)).unwrap();
    s
}

fn weight(model: &Model, layer: &str, name: &str) -> Tensor {
    model.weight(layer, name).unwrap().var.as_tensor().clone()
}

/// The same network with candle's ops, written out.
fn by_hand(model: &Model, x: &Tensor) -> Tensor {
    let conv = |x: &Tensor, layer: &str, pad: usize| {
        x.conv2d(&weight(model, layer, "kernel"), pad, 1, 1, 1)
            .unwrap()
            .broadcast_add(&weight(model, layer, "bias").reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
    };
    let a = conv(x, "a", 1);
    // ReLU(max 6, slope 0.1, threshold 0.05): x ≥ 0.05 → min(x, 6), else 0.1 (x − 0.05).
    let above = a.ge(0.05).unwrap();
    let below = ((&a - 0.05).unwrap() * 0.1).unwrap();
    let b = above.where_cond(&a, &below).unwrap().minimum(6f32).unwrap();
    let c = conv(
        &x.pad_with_zeros(2, 1, 1)
            .unwrap()
            .pad_with_zeros(3, 1, 1)
            .unwrap(),
        "c",
        0,
    );
    let sum = (&b + &c).unwrap();
    let squeeze = sum.mean_keepdim(3).unwrap().mean_keepdim(2).unwrap();
    let gate = candle_nn::ops::sigmoid(&squeeze).unwrap();
    let excite = sum.broadcast_mul(&gate).unwrap();
    let cat = Tensor::cat(&[&excite, &a], 1).unwrap();
    cat.flatten_from(1)
        .unwrap()
        .matmul(&weight(model, "out", "kernel"))
        .unwrap()
        .broadcast_add(&weight(model, "out", "bias"))
        .unwrap()
}

#[test]
fn a_branching_graph_computes_what_it_says_on_either_kernels() {
    // An output element the fast kernels forget to write is then NaN, not a stale value.
    simplecnn_model::ops::fill_unwritten_outputs_with_nan();
    let spec = branchy();
    assert!(spec.is_functional());
    let x = rand(&[3, 2, 5, 5], 1);
    for kernels in [Kernels::Fast, Kernels::Candle] {
        let mut model = Model::new(spec.clone(), &CPU, 7).unwrap();
        model.set_kernels(kernels).unwrap();
        let ours = model.forward(&x, Mode::Inference).unwrap();
        assert_close(&format!("{kernels:?}"), &ours, &by_hand(&model, &x), 1e-5);
    }
}

/// The input gradient of `sum(logits · r)` against central differences, at every third value.
fn check_input_gradient(spec: Network, input: &[usize], seed: u64) -> Model {
    let model = Model::new(spec, &CPU, seed).unwrap();
    let x = rand(input, seed + 1);
    let out = model.forward(&x, Mode::Inference).unwrap();
    let r = rand(out.dims(), seed + 2);
    let loss = |x: &Tensor| -> f64 {
        let y = model.logits(x, Mode::Inference).unwrap();
        (y * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let xv = Var::from_tensor(&x).unwrap();
    let y = model
        .logits_with(xv.as_tensor(), Mode::Inference, true)
        .unwrap();
    let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let analytic: Vec<f32> = grads
        .get(&xv)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let values: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    // Small enough that no ReLU input crosses its threshold (where Keras' ReLU jumps).
    let eps = 1e-3f32;
    for i in (0..values.len()).step_by(3) {
        let at = |d: f32| {
            let mut v = values.clone();
            v[i] += d;
            loss(&Tensor::from_vec(v, x.dims(), &CPU).unwrap())
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        let a = analytic[i] as f64;
        assert!(
            (numeric - a).abs() <= 2e-2 * numeric.abs().max(1.0),
            "input {i}: finite difference {numeric}, gradient {a}"
        );
    }
    model
}

#[test]
fn gradients_through_the_joins_match_finite_differences() {
    let model = check_input_gradient(branchy(), &[2, 2, 5, 5], 3);
    // The kernel of the branch that only feeds the join gets a gradient too.
    let x = rand(&[2, 2, 5, 5], 4);
    let y = model.logits_with(&x, Mode::Inference, true).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let kernel = model.weight("c", "kernel").unwrap().var.clone();
    let k = grads.get(&kernel).unwrap();
    assert!(
        k.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
}

/// The layers keras.applications brought, in one chain: Normalization, DepthwiseConv2D (x2),
/// same-padded pools, SeparableConv2D, grouped Conv2D, LayerNormalization, Dense on every
/// pixel, a number added (an operation node), Cropping2D, Reshape both ways.
fn newer_layers() -> Network {
    use simplecnn_model::{
        AveragePooling2D, Cropping2D, DepthwiseConv2dConfig, Init, LayerNormConfig, MaxPooling2D,
        NormalizationConfig, Pool2dConfig, Reshape, ScalarOp, ScalarOpKind, SeparableConv2dConfig,
    };
    let mut s = Network::new("newer", FeatureShape::image(2, 7, 7));
    let norm = NormalizationConfig {
        invert: false,
        fixed: Some((vec![0.1, -0.2], vec![0.5, 2.0])),
    };
    s.add(LayerKind::Normalization(norm)).unwrap();
    let dw = DepthwiseConv2dConfig {
        kernel_size: (3, 3),
        strides: (2, 2),
        padding: Padding::Same,
        depth_multiplier: 2,
        activation: Activation::Tanh,
        use_bias: true,
        depthwise_initializer: Init::GlorotUniform,
    };
    s.add(LayerKind::DepthwiseConv2d(dw)).unwrap();
    let pool = Pool2dConfig {
        pool_size: (3, 3),
        strides: (1, 1),
        padding: Padding::Same,
    };
    s.add(LayerKind::AvgPool2d(AveragePooling2D(pool))).unwrap();
    s.add(LayerKind::MaxPool2d(MaxPooling2D(pool))).unwrap();
    let sep = SeparableConv2dConfig {
        filters: 6,
        kernel_size: (2, 2),
        strides: (1, 1),
        padding: Padding::Same,
        depth_multiplier: 1,
        activation: Activation::Swish,
        use_bias: true,
    };
    s.add(LayerKind::SeparableConv2d(sep)).unwrap();
    let grouped = Conv2dConfig {
        groups: 3,
        ..Conv2dConfig::new(6, 3, Padding::Same, Activation::Linear)
    };
    s.add(LayerKind::Conv2d(grouped)).unwrap();
    let ln = LayerNormConfig {
        epsilon: 1e-3,
        center: true,
        scale: true,
    };
    s.add(LayerKind::LayerNorm(ln)).unwrap();
    s.add(LayerKind::Dense(DenseConfig::default_for(
        4,
        Activation::Gelu,
    )))
    .unwrap();
    let op = ScalarOp {
        op: ScalarOpKind::Divide,
        value: 2.0,
        number_first: false,
    };
    s.add(LayerKind::ScalarOp(op)).unwrap();
    let crop = Cropping2D {
        cropping: ((1, 0), (0, 1)),
    };
    s.add(LayerKind::Cropping2d(crop)).unwrap();
    let flat = Reshape {
        target: FeatureShape::Flat(4 * 3 * 3),
    };
    s.add(LayerKind::Reshape(flat)).unwrap();
    let back = Reshape {
        target: FeatureShape::image(4, 3, 3),
    };
    s.add(LayerKind::Reshape(back)).unwrap();
    s.add(LayerKind::Flatten).unwrap();
    s.add(LayerKind::Dense(DenseConfig::default_for(
        3,
        Activation::Linear,
    )))
    .unwrap();
    s
}

#[test]
fn gradients_through_the_newer_layers_match_finite_differences() {
    check_input_gradient(newer_layers(), &[2, 2, 7, 7], 9);
}

/// Pooling with `padding="same"`: averages divide by the positions inside the image (Keras'
/// rule: a constant image stays constant at the borders), and padding never wins a maximum
/// (an all-negative image keeps negative borders).
#[test]
fn same_padding_pools_count_only_the_image() {
    use simplecnn_model::{AveragePooling2D, MaxPooling2D, Pool2dConfig};
    let pool = Pool2dConfig {
        pool_size: (3, 3),
        strides: (2, 2),
        padding: Padding::Same,
    };
    for (kind, fill, want) in [
        (LayerKind::AvgPool2d(AveragePooling2D(pool)), 2.5f32, 2.5f32),
        (LayerKind::MaxPool2d(MaxPooling2D(pool)), -1.5, -1.5),
    ] {
        let mut s = Network::new("p", FeatureShape::image(2, 5, 6));
        s.add(kind).unwrap();
        assert_eq!(s.output_shape(), FeatureShape::image(2, 3, 3));
        let x = Tensor::full(fill, (1, 2, 5, 6), &CPU).unwrap();
        for kernels in [Kernels::Fast, Kernels::Candle] {
            let mut model = Model::new(s.clone(), &CPU, 0).unwrap();
            model.set_kernels(kernels).unwrap();
            let y = model.forward(&x, Mode::Inference).unwrap();
            let values: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert!(values.iter().all(|v| (v - want).abs() < 1e-6), "{values:?}");
        }
    }
}

/// ConvNeXt's StochasticDepth (Keras' Dropout with noise_shape (None, 1, 1, 1)): in training
/// each example is kept whole, scaled by 1 / (1 - rate), or dropped whole; in inference it is
/// the identity.
#[test]
fn stochastic_depth_keeps_or_drops_whole_examples() {
    use simplecnn_model::{StochasticDepth, TrainingPass};
    let mut s = Network::new("sd", FeatureShape::image(3, 4, 4));
    let sd = StochasticDepth {
        drop_path_rate: 0.5,
    };
    s.add(LayerKind::StochasticDepth(sd)).unwrap();
    let model = Model::new(s, &CPU, 0).unwrap();
    let x = (rand(&[64, 3, 4, 4], 3).abs().unwrap() + 0.1).unwrap();
    let mut rng = TrainingPass::new(1);
    let y = model.forward(&x, Mode::Training(&mut rng)).unwrap();
    let ratio: Vec<Vec<f32>> = (y / &x)
        .unwrap()
        .flatten_from(1)
        .unwrap()
        .to_vec2()
        .unwrap();
    let kept = ratio
        .iter()
        .filter(|r| r.iter().all(|v| (v - 2.0).abs() < 1e-5))
        .count();
    let dropped = ratio.iter().filter(|r| r.iter().all(|v| *v == 0.0)).count();
    assert_eq!(kept + dropped, 64, "every example kept or dropped whole");
    assert!((16..=48).contains(&kept), "{kept} of 64 kept at rate 0.5");
    let same = model.forward(&x, Mode::Inference).unwrap();
    assert_close("inference", &same, &x, 0.0);
}
