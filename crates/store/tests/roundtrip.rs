//! Save then load: identical weights, predictions and optimizer state.

mod common;

use candle_core::{Device, Tensor};
use simplecnn_model::{zoo, Mode, Model};
use simplecnn_store::{load_model, load_optimizer, save_model, AdamState};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn simple_cnn_round_trips_with_optimizer_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnn1.h5");
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 3).unwrap();
    let mut slots = std::collections::BTreeMap::new();
    for w in model.trainable_weights() {
        for (slot, scale) in [("m", 1.0), ("v", 0.01)] {
            let t = Tensor::rand(0f32, 1f32, w.var.dims(), &Device::Cpu)
                .unwrap()
                .affine(scale, 0.0)
                .unwrap();
            slots.insert(format!("{}/{slot}", w.path()), t);
        }
    }
    let adam = AdamState {
        learning_rate: 5e-4,
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-7,
        iterations: 352,
        slots,
    };
    save_model(&model, &path, Some(&adam)).unwrap();
    // Nothing but the finished file is left in the folder.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("cnn1.h5")]);

    let back = load_model(&path, &Device::Cpu).unwrap();
    assert_eq!(back.summary(), model.summary());
    for (a, b) in model.weights().zip(back.weights()) {
        assert_eq!((a.layer.as_str(), a.name), (b.layer.as_str(), b.name));
        assert_eq!(
            values(a.var.as_tensor()),
            values(b.var.as_tensor()),
            "{}/{}",
            a.layer,
            a.name
        );
    }
    let x = Tensor::rand(0f32, 1f32, (5, 3, 32, 32), &Device::Cpu).unwrap();
    let p1 = model
        .forward(&x, Mode::Inference)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let p2 = back
        .forward(&x, Mode::Inference)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(p1, p2);

    let restored = load_optimizer(&back, &path)
        .unwrap()
        .expect("optimizer saved");
    assert_eq!(restored.iterations, 352);
    assert_eq!(restored.learning_rate, 5e-4);
    assert_eq!(
        adam.slots.keys().collect::<Vec<_>>(),
        restored.slots.keys().collect::<Vec<_>>()
    );
    for (key, a) in &adam.slots {
        assert_eq!(values(a), values(&restored.slots[key]), "{key}");
    }
    // A state that lacks a weight's slot is refused, naming it, and leaves no file.
    let mut partial = adam.clone();
    partial.slots.remove("dense_2/bias/v");
    let err = save_model(&model, &dir.path().join("p.h5"), Some(&partial)).unwrap_err();
    assert!(err.to_string().contains("dense_2/bias/v"), "{err}");
}

#[test]
fn a_file_without_optimizer_state_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.h5");
    let model = Model::new(common::small_cnn(), &Device::Cpu, 3).unwrap();
    save_model(&model, &path, None).unwrap();
    assert!(load_optimizer(&model, &path).unwrap().is_none());
    let tree = simplecnn_store::inspect(&path).unwrap();
    for expected in [
        "model_weights/",
        "conv2d_1/",
        "kernel:0  float32 [3, 3, 3, 4]",
        "dense_1/",
        "kernel:0  float32 [54, 7]",
        "@layer_names",
        "@model_config",
    ] {
        assert!(
            tree.contains(expected),
            "inspect lacks {expected:?}:\n{tree}"
        );
    }
}

/// GlobalAveragePooling2D and GlobalMaxPooling2D go through .h5 under Keras' class names and
/// config keys, and come back predicting the same.
#[test]
fn global_pooling_layers_round_trip() {
    use simplecnn_model::{Activation, FeatureShape, LayerKind, Network, Padding};
    let dir = tempfile::tempdir().unwrap();
    for (kind, class) in [
        (LayerKind::global_avg_pool(), "GlobalAveragePooling2D"),
        (LayerKind::global_max_pool(), "GlobalMaxPooling2D"),
    ] {
        let mut s = Network::new("sequential_1", FeatureShape::image(3, 8, 8));
        s.add(LayerKind::conv2d(6, 3, Padding::Same, Activation::Relu))
            .unwrap();
        s.add(kind.clone()).unwrap();
        s.add(LayerKind::dense(4, Activation::Softmax)).unwrap();
        let model = Model::new(s, &Device::Cpu, 5).unwrap();
        let path = dir.path().join(format!("{class}.h5"));
        save_model(&model, &path, None).unwrap();
        let tree = simplecnn_store::inspect(&path).unwrap();
        assert!(tree.contains(class), "{tree}");
        let back = load_model(&path, &Device::Cpu).unwrap();
        assert_eq!(back.summary(), model.summary());
        assert_eq!(back.spec().layers()[1].kind, kind);
        let x = Tensor::rand(0f32, 1f32, (3, 3, 8, 8), &Device::Cpu).unwrap();
        let p = |m: &Model| {
            m.forward(&x, Mode::Inference)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        };
        assert_eq!(p(&model), p(&back));
    }
}

/// A trained BatchNormalization without gamma (`scale=false`, as airbench's) saves its flags
/// in the config and its three weights, and comes back predicting the same.
#[test]
fn batch_normalization_without_scale_round_trips() {
    use simplecnn_model::{
        Activation, BatchNormConfig, FeatureShape, LayerKind, Network, Padding, TrainingPass,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut s = Network::new("sequential_1", FeatureShape::image(3, 8, 8));
    // airbench's convolutions have no bias.
    let conv = simplecnn_model::Conv2dConfig::new(4, 3, Padding::Same, Activation::Linear);
    s.add(LayerKind::Conv2d(conv.without_bias())).unwrap();
    let bn = BatchNormConfig {
        epsilon: 1e-12,
        momentum: 0.6,
        center: true,
        scale: false,
    };
    s.add(LayerKind::BatchNorm(bn)).unwrap();
    s.add(LayerKind::Flatten).unwrap();
    s.add(LayerKind::dense(3, Activation::Softmax)).unwrap();
    let model = Model::new(s, &Device::Cpu, 2).unwrap();
    // One training-mode pass moves the moving statistics away from 0 and 1.
    let x = Tensor::rand(0f32, 1f32, (4, 3, 8, 8), &Device::Cpu).unwrap();
    model
        .forward(&x, Mode::Training(&mut TrainingPass::new(0)))
        .unwrap();
    let path = dir.path().join("bn.h5");
    save_model(&model, &path, None).unwrap();
    let back = load_model(&path, &Device::Cpu).unwrap();
    assert_eq!(back.spec().layers()[1].kind, LayerKind::BatchNorm(bn));
    let names: Vec<String> = back.weights().map(|w| w.path()).collect();
    assert!(names.contains(&"batch_normalization_1/moving_mean".to_string()));
    assert!(!names.iter().any(|n| n.ends_with("gamma")), "{names:?}");
    assert!(!names.contains(&"conv2d_1/bias".to_string()), "{names:?}");
    let p = |m: &Model| {
        m.forward(&x, Mode::Inference)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    assert_eq!(p(&model), p(&back));
    let mean = |m: &Model| {
        values(
            m.weight("batch_normalization_1", "moving_mean")
                .unwrap()
                .var
                .as_tensor(),
        )
    };
    assert_eq!(mean(&model), mean(&back));
    assert!(mean(&model).iter().any(|v| *v != 0.0));
}

/// Rescaling, per channel (the input's normalisation) and as one number (airbench's final
/// 1/9), computes `x·scale + offset`, and goes through .h5 as Keras' `Rescaling` config.
#[test]
fn rescaling_normalises_and_round_trips() {
    use simplecnn_model::{Activation, FeatureShape, LayerKind, Network, Padding, RescalingConfig};
    let (mean, std) = ([0.4914f32, 0.4822, 0.4465], [0.2470f32, 0.2435, 0.2616]);
    let mut s = Network::new("sequential_1", FeatureShape::image(3, 4, 4));
    s.add(LayerKind::Rescaling(RescalingConfig::normalize(
        &mean, &std,
    )))
    .unwrap();
    let normalised = Model::new(s.clone(), &Device::Cpu, 0).unwrap();
    let x = Tensor::rand(0f32, 1f32, (2, 3, 4, 4), &Device::Cpu).unwrap();
    let y = values(&normalised.forward(&x, Mode::Inference).unwrap());
    let xv = values(&x);
    for (i, (a, b)) in xv.iter().zip(&y).enumerate() {
        let c = (i / 16) % 3;
        assert!((b - (a - mean[c]) / std[c]).abs() < 1e-5);
    }
    s.add(LayerKind::conv2d(5, 3, Padding::Same, Activation::Relu))
        .unwrap();
    s.add(LayerKind::global_max_pool()).unwrap();
    s.add(LayerKind::dense(4, Activation::Linear)).unwrap();
    s.add(LayerKind::Rescaling(RescalingConfig::uniform(
        1.0 / 9.0,
        0.0,
    )))
    .unwrap();
    let model = Model::new(s, &Device::Cpu, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.h5");
    save_model(&model, &path, None).unwrap();
    let back = load_model(&path, &Device::Cpu).unwrap();
    assert_eq!(back.spec().layers(), model.spec().layers());
    let p = |m: &Model| values(&m.forward(&x, Mode::Inference).unwrap());
    assert_eq!(p(&model), p(&back));
    // Three scales for a one-channel input is a shape error naming the layer.
    let mut bad = Network::new("s", FeatureShape::image(1, 4, 4));
    let err = bad
        .add(LayerKind::Rescaling(RescalingConfig::normalize(
            &mean, &std,
        )))
        .unwrap_err();
    assert!(err.to_string().contains("rescaling_1"), "{err}");
}

/// A model trained on raw pixels, loaded with `scale = 255`: on images in [0, 1] it predicts
/// what the file's model predicts on the same images times 255; class names round-trip.
#[test]
fn a_model_loads_with_an_input_scale_in_front() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.h5");
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 5).unwrap();
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    simplecnn_store::save_model_with(
        &model,
        &path,
        &simplecnn_store::SaveOptions {
            optimizer: None,
            class_names: Some(&names),
        },
    )
    .unwrap();
    assert_eq!(
        simplecnn_store::read_class_names(&path).unwrap(),
        Some(names)
    );
    let scaled = simplecnn_store::load_model_scaled(&path, &Device::Cpu, 255.0).unwrap();
    assert_eq!(scaled.spec().layers()[0].name, "input_scale");
    assert_eq!(
        scaled.spec().layers().len(),
        model.spec().layers().len() + 1
    );
    let x = Tensor::rand(0f32, 1f32, (3, 3, 32, 32), &Device::Cpu).unwrap();
    let want = values(
        &model
            .forward(&(&x * 255.0).unwrap(), Mode::Inference)
            .unwrap(),
    );
    let got = values(&scaled.forward(&x, Mode::Inference).unwrap());
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    let plain = values(&model.forward(&x, Mode::Inference).unwrap());
    assert_ne!(plain, got);
    // Too few or too many class names for the outputs are refused.
    let err = simplecnn_store::save_model_with(
        &model,
        &dir.path().join("bad.h5"),
        &simplecnn_store::SaveOptions {
            optimizer: None,
            class_names: Some(&["a".to_string()]),
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("1 class names for a model with 10 outputs"),
        "{err}"
    );
}
