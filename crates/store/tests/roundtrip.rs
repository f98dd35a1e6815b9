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
    let moments = |scale: f64| -> Vec<Tensor> {
        model
            .weights()
            .map(|w| {
                Tensor::rand(0f32, 1f32, w.var.dims(), &Device::Cpu)
                    .unwrap()
                    .affine(scale, 0.0)
                    .unwrap()
            })
            .collect()
    };
    let adam = AdamState {
        learning_rate: 5e-4,
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-7,
        iterations: 352,
        m: moments(1.0),
        v: moments(0.01),
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
    for (a, b) in adam
        .m
        .iter()
        .zip(&restored.m)
        .chain(adam.v.iter().zip(&restored.v))
    {
        assert_eq!(values(a), values(b));
    }
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
