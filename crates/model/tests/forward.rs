//! The forward pass: probabilities, dropout only in training, seeded initialisation.

use candle_core::{Device, Tensor};
use simplecnn_model::{zoo, DropoutRng, Mode, Model};

fn input() -> Tensor {
    Tensor::rand(0f32, 1f32, (4, 3, 32, 32), &Device::Cpu).unwrap()
}

#[test]
fn simple_cnn_outputs_probabilities() {
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 3).unwrap();
    let p = model.forward(&input(), Mode::Inference).unwrap();
    assert_eq!(p.dims(), &[4, 10]);
    for row in p.to_vec2::<f32>().unwrap() {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(row.iter().all(|&v| v > 0.0));
    }
}

#[test]
fn logits_are_the_pre_softmax_values() {
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 3).unwrap();
    let x = input();
    let logits = model.logits(&x, Mode::Inference).unwrap();
    let probs = model.forward(&x, Mode::Inference).unwrap();
    let again = candle_nn::ops::softmax_last_dim(&logits).unwrap();
    let diff = (again - probs)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6);
}

#[test]
fn dropout_acts_in_training_only_and_follows_its_seed() {
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 3).unwrap();
    let x = input();
    let a = model
        .forward(&x, Mode::Inference)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let b = model
        .forward(&x, Mode::Inference)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(a, b);
    let t1 = model
        .forward(&x, Mode::Training(&mut DropoutRng::new(5)))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let t2 = model
        .forward(&x, Mode::Training(&mut DropoutRng::new(5)))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let t3 = model
        .forward(&x, Mode::Training(&mut DropoutRng::new(6)))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(t1, t2);
    assert_ne!(t1, a);
    assert_ne!(t1, t3);
}

#[test]
fn initialisation_is_seeded_glorot_with_zero_biases() {
    let m1 = Model::new(zoo::simple_cnn(), &Device::Cpu, 11).unwrap();
    let m2 = Model::new(zoo::simple_cnn(), &Device::Cpu, 11).unwrap();
    for (w1, w2) in m1.weights().zip(m2.weights()) {
        let v1: Vec<f32> = w1.var.flatten_all().unwrap().to_vec1().unwrap();
        let v2: Vec<f32> = w2.var.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v1, v2);
        if w1.name == "bias" {
            assert!(v1.iter().all(|&v| v == 0.0));
        }
    }
    // dense_1: fan_in 4096, fan_out 128 → limit sqrt(6 / 4224) ≈ 0.0377.
    let k = m1
        .weights()
        .find(|w| w.layer == "dense_1" && w.name == "kernel")
        .unwrap();
    assert_eq!(k.var.dims(), &[4096, 128]);
    let v: Vec<f32> = k.var.flatten_all().unwrap().to_vec1().unwrap();
    let limit = (6.0f32 / 4224.0).sqrt();
    assert!(v.iter().all(|x| x.abs() <= limit));
    assert!(v.iter().fold(0f32, |m, x| m.max(x.abs())) > 0.95 * limit);
    let names: Vec<String> = m1
        .weights()
        .map(|w| format!("{}/{}", w.layer, w.name))
        .collect();
    assert_eq!(
        names,
        [
            "conv2d_1/kernel",
            "conv2d_1/bias",
            "conv2d_2/kernel",
            "conv2d_2/bias",
            "dense_1/kernel",
            "dense_1/bias",
            "dense_2/kernel",
            "dense_2/bias"
        ]
    );
}

#[test]
fn wrong_input_shape_is_an_error() {
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 3).unwrap();
    let x = Tensor::zeros((2, 3, 28, 28), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&x, Mode::Inference).unwrap_err();
    assert!(err.to_string().contains("28"), "{err}");
}
