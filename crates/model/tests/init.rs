//! Keras' truncated-normal initialisers (`he_normal`, `lecun_normal`, `glorot_normal`, and
//! EfficientNet's fan-out one): the spread Keras gives them, cut at two of Keras' standard
//! deviations.

use candle_core::Device;
use simplecnn_model::{
    Activation, Conv2dConfig, FanInScale, FanMode, FeatureShape, Init, LayerKind, Model, Network,
    Padding,
};

#[test]
fn truncated_normal_kernels_have_keras_spread() {
    // A 3x3 convolution from 64 to 128 channels: fan-in 576, fan-out 1152.
    for (scale, mode, n) in [
        (FanInScale::He, FanMode::In, 576.0),
        (FanInScale::Lecun, FanMode::In, 576.0),
        (FanInScale::Lecun, FanMode::Average, 864.0),
        (FanInScale::He, FanMode::Out, 1152.0),
    ] {
        let mut s = Network::new("m", FeatureShape::image(64, 8, 8));
        let conv = Conv2dConfig {
            kernel_initializer: Init::TruncatedNormal { scale, mode },
            ..Conv2dConfig::new(128, 3, Padding::Same, Activation::Linear)
        };
        s.add(LayerKind::Conv2d(conv)).unwrap();
        let model = Model::new(s, &Device::Cpu, 1).unwrap();
        let w: Vec<f32> = model
            .weight("conv2d_1", "kernel")
            .unwrap()
            .var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let len = w.len() as f64;
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / len;
        let std = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / len).sqrt();
        // Keras' target: the truncated draw's standard deviation is sqrt(scale / n).
        let target = (scale.value() / n).sqrt();
        assert!(
            (std / target - 1.0).abs() < 0.02,
            "std {std}, Keras' {target}"
        );
        let cut = 2.0 * target / 0.879_625_661_034_239_8;
        assert!(w.iter().all(|&x| (x as f64).abs() <= cut + 1e-7));
        assert!(mean.abs() < 0.01 * target);
    }
}
