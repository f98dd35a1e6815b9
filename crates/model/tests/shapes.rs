//! The shape a layer reports equals the shape candle produces and the closed-form formula.

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use simplecnn_model::{
    Activation, Conv2dConfig, FeatureShape, LayerKind, Mode, Model, Network, Padding, Pool2dConfig,
};

fn run_one(input: FeatureShape, kind: LayerKind) -> Option<(FeatureShape, Vec<usize>)> {
    let mut s = Network::new("m", input);
    s.add(kind).ok()?;
    let reported = s.output_shape();
    let model = Model::new(s, &Device::Cpu, 1).unwrap();
    let x = Tensor::rand(0f32, 1f32, input.batch_dims(2), &Device::Cpu).unwrap();
    let y = model.forward(&x, Mode::Inference).unwrap();
    Some((reported, y.dims().to_vec()))
}

fn formula(input: usize, k: usize, s: usize, same: bool) -> usize {
    if same {
        input.div_ceil(s)
    } else {
        (input - k) / s + 1
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn conv2d_shapes(c in 1usize..4, h in 3usize..14, w in 3usize..14, f in 1usize..5,
                     kh in 1usize..4, kw in 1usize..4, sh in 1usize..4, sw in 1usize..4, same in any::<bool>()) {
        let cfg = Conv2dConfig {
            filters: f, kernel_size: (kh, kw), strides: (sh, sw),
            padding: if same { Padding::Same } else { Padding::Valid }, activation: Activation::Linear, use_bias: true,
            kernel_initializer: simplecnn_model::Init::GlorotUniform, groups: 1,
        };
        let input = FeatureShape::image(c, h, w);
        let (reported, actual) = run_one(input, LayerKind::Conv2d(cfg)).unwrap();
        let expected = FeatureShape::image(f, formula(h, kh, sh, same), formula(w, kw, sw, same));
        prop_assert_eq!(reported, expected);
        prop_assert_eq!(actual, expected.batch_dims(2));
    }

    #[test]
    fn pool_shapes(c in 1usize..4, h in 2usize..14, w in 2usize..14, ph in 1usize..4, pw in 1usize..4,
                   sh in 1usize..4, sw in 1usize..4, max in any::<bool>()) {
        prop_assume!(h >= ph && w >= pw);
        let cfg = Pool2dConfig { pool_size: (ph, pw), strides: (sh, sw), padding: simplecnn_model::Padding::Valid };
        let kind = if max { LayerKind::MaxPool2d(simplecnn_model::MaxPooling2D(cfg)) } else { LayerKind::AvgPool2d(simplecnn_model::AveragePooling2D(cfg)) };
        let input = FeatureShape::image(c, h, w);
        let (reported, actual) = run_one(input, kind).unwrap();
        let expected = FeatureShape::image(c, formula(h, ph, sh, false), formula(w, pw, sw, false));
        prop_assert_eq!(reported, expected);
        prop_assert_eq!(actual, expected.batch_dims(2));
    }
}

#[test]
fn kernel_larger_than_input_is_a_named_error() {
    let mut s = Network::new("m", FeatureShape::image(3, 2, 2));
    let err = s
        .add(LayerKind::Conv2d(Conv2dConfig::new(
            4,
            3,
            Padding::Valid,
            Activation::Relu,
        )))
        .unwrap_err();
    assert!(err.to_string().contains("conv2d_1"), "{err}");
}

#[test]
fn same_padding_matches_tensorflow_for_even_kernels() {
    // 2x2 kernel of ones, stride 1, same padding on a 3x3 input: TF pads one row/column at the
    // bottom/right only, so out[0][0] = x00 + x01 + x10 + x11.
    let mut s = Network::new("m", FeatureShape::image(1, 3, 3));
    s.add(LayerKind::Conv2d(Conv2dConfig::new(
        1,
        2,
        Padding::Same,
        Activation::Linear,
    )))
    .unwrap();
    let model = Model::new(s, &Device::Cpu, 0).unwrap();
    model
        .set_weight(
            "conv2d_1",
            "kernel",
            &Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    let x = Tensor::arange(1f32, 10f32, &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 3, 3))
        .unwrap();
    let y: Vec<f32> = model
        .forward(&x, Mode::Inference)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(y, vec![12., 16., 9., 24., 28., 15., 15., 17., 9.]);
}
