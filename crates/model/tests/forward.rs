//! The forward pass: probabilities, dropout only in training, seeded initialisation.

use candle_core::{Device, Tensor};
use simplecnn_model::{zoo, Conv2dConfig, Mode, Model, TrainingPass};

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
        .forward(&x, Mode::Training(&mut TrainingPass::new(5)))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let t2 = model
        .forward(&x, Mode::Training(&mut TrainingPass::new(5)))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let t3 = model
        .forward(&x, Mode::Training(&mut TrainingPass::new(6)))
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

#[test]
fn batch_normalization_normalises_per_channel_with_moving_statistics_in_inference() {
    use simplecnn_model::{FeatureShape, LayerKind, Network};
    let mut s = Network::new("m", FeatureShape::image(2, 2, 2));
    s.add(LayerKind::BatchNorm(Default::default())).unwrap();
    assert_eq!(s.layers()[0].name, "batch_normalization_1");
    assert_eq!((s.param_count(), s.trainable_param_count()), (8, 4));
    let table = s.summary();
    assert!(
        table.contains("Trainable params: 4\nNon-trainable params: 4\n"),
        "{table}"
    );

    let model = Model::new(s, &Device::Cpu, 0).unwrap();
    let set = |name, v: [f32; 2]| {
        model
            .set_weight(
                "batch_normalization_1",
                name,
                &Tensor::new(&v, &Device::Cpu).unwrap(),
            )
            .unwrap()
    };
    set("gamma", [2.0, 0.5]);
    set("beta", [1.0, -1.0]);
    set("moving_mean", [0.5, 3.0]);
    set("moving_variance", [4.0, 0.25]);
    let x = Tensor::new(
        &[[[[1f32, 2.], [3., 4.]], [[5., 6.], [7., 8.]]]],
        &Device::Cpu,
    )
    .unwrap();
    let y: Vec<f32> = model
        .forward(&x, Mode::Inference)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let expected: Vec<f32> = [1f32, 2., 3., 4.]
        .iter()
        .map(|v| (v - 0.5) / (4.0f32 + 1e-3).sqrt() * 2.0 + 1.0)
        .chain(
            [5f32, 6., 7., 8.]
                .iter()
                .map(|v| (v - 3.0) / (0.25f32 + 1e-3).sqrt() * 0.5 - 1.0),
        )
        .collect();
    for (a, b) in y.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-5, "{y:?} vs {expected:?}");
    }
    // Only trainable weights reach the optimizer.
    assert_eq!(model.vars().len(), 2);
}

/// Training mode: the batch's statistics normalise, the moving ones follow Keras' rule
/// (`moving = momentum·moving + (1 - momentum)·batch`, biased variance), and the gradients of
/// the input and of beta match finite differences. `scale = false` has no gamma (airbench).
#[test]
fn batch_normalization_trains_with_batch_statistics() {
    use candle_core::Var;
    use simplecnn_model::{BatchNormConfig, FeatureShape, LayerKind, Network};
    let bn = BatchNormConfig {
        epsilon: 1e-5,
        momentum: 0.6,
        center: true,
        scale: false,
    };
    let mut s = Network::new("m", FeatureShape::image(2, 2, 3));
    s.add(LayerKind::BatchNorm(bn)).unwrap();
    assert_eq!((s.param_count(), s.trainable_param_count()), (6, 2));
    let model = Model::new(s, &Device::Cpu, 0).unwrap();
    let names: Vec<&str> = model.weights().map(|w| w.name).collect();
    assert_eq!(names, ["beta", "moving_mean", "moving_variance"]);
    model
        .set_weight(
            "batch_normalization_1",
            "beta",
            &Tensor::new(&[0.5f32, -1.0], &Device::Cpu).unwrap(),
        )
        .unwrap();
    let (n, c, hw) = (3usize, 2usize, 6usize);
    let values: Vec<f32> = (0..n * c * hw)
        .map(|i| ((i * 7 % 13) as f32) * 0.3 - 1.0)
        .collect();
    let x = Var::from_vec(values.clone(), (n, c, 2, 3), &Device::Cpu).unwrap();
    let y = model
        .logits(x.as_tensor(), Mode::Training(&mut TrainingPass::new(0)))
        .unwrap();
    // Expected, channel by channel, in f64.
    let beta = [0.5f64, -1.0];
    let y_values: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    let mut batch_stats = Vec::new();
    for ch in 0..c {
        let xs: Vec<f64> = (0..n)
            .flat_map(|i| {
                values[(i * c + ch) * hw..(i * c + ch + 1) * hw]
                    .iter()
                    .map(|&v| v as f64)
            })
            .collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        batch_stats.push((mean, var));
        for i in 0..n {
            for k in 0..hw {
                let at = (i * c + ch) * hw + k;
                let e = (values[at] as f64 - mean) / (var + 1e-5).sqrt() + beta[ch];
                assert!((y_values[at] as f64 - e).abs() < 1e-4, "y[{at}]");
            }
        }
    }
    let get = |name| -> Vec<f32> {
        model
            .weight("batch_normalization_1", name)
            .unwrap()
            .var
            .as_tensor()
            .to_vec1()
            .unwrap()
    };
    for (ch, &(mean, var)) in batch_stats.iter().enumerate() {
        assert!((get("moving_mean")[ch] as f64 - 0.4 * mean).abs() < 1e-5);
        assert!((get("moving_variance")[ch] as f64 - (0.6 + 0.4 * var)).abs() < 1e-5);
    }
    // Gradients: loss = sum(y · w) for fixed w.
    let w = Tensor::rand(-1f32, 1f32, (n, c, 2, 3), &Device::Cpu).unwrap();
    let loss = |x: &Tensor| -> f64 {
        let y = model
            .logits(x, Mode::Training(&mut TrainingPass::new(0)))
            .unwrap();
        (y * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let y = model
        .logits(x.as_tensor(), Mode::Training(&mut TrainingPass::new(0)))
        .unwrap();
    let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gx: Vec<f32> = grads
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let beta_var = &model.weight("batch_normalization_1", "beta").unwrap().var;
    let gb: Vec<f32> = grads.get(beta_var).unwrap().to_vec1().unwrap();
    let eps = 1e-2f32;
    for i in (0..values.len()).step_by(5) {
        let at = |d: f32| {
            let mut v = values.clone();
            v[i] += d;
            loss(&Tensor::from_vec(v, (n, c, 2, 3), &Device::Cpu).unwrap())
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        assert!(
            (numeric - gx[i] as f64).abs() < 2e-3,
            "x[{i}]: {numeric} vs {}",
            gx[i]
        );
    }
    // d loss / d beta[c] is the sum of w over the channel.
    let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    for ch in 0..c {
        let sum: f32 = (0..n)
            .flat_map(|i| wv[(i * c + ch) * hw..(i * c + ch + 1) * hw].to_vec())
            .sum();
        assert!((gb[ch] - sum).abs() < 1e-4);
    }
}

/// GlobalAveragePooling2D / GlobalMaxPooling2D: Keras' shapes and names, values against a
/// direct computation, gradients against finite differences.
#[test]
fn global_pooling_values_shapes_and_gradients() {
    use candle_core::{Device, Tensor, Var};
    use simplecnn_model::{FeatureShape, LayerKind, Network};
    let (n, c, h, w) = (2usize, 3usize, 4usize, 5usize);
    let values: Vec<f32> = (0..n * c * h * w)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
        .collect();
    for (kind, name) in [
        (LayerKind::global_avg_pool(), "global_average_pooling2d_1"),
        (LayerKind::global_max_pool(), "global_max_pooling2d_1"),
    ] {
        let mut s = Network::new("m", FeatureShape::image(c, h, w));
        s.add(kind.clone()).unwrap();
        assert_eq!(s.layers()[0].name, name);
        assert_eq!(s.output_shape(), FeatureShape::Flat(c));
        assert_eq!(s.layers()[0].output.to_string(), "(None, 3)");
        let model = Model::new(s, &Device::Cpu, 0).unwrap();
        let x = Var::from_vec(values.clone(), (n, c, h, w), &Device::Cpu).unwrap();
        let y = model.forward(x.as_tensor(), Mode::Inference).unwrap();
        let got: Vec<Vec<f32>> = y.to_vec2().unwrap();
        for (i, row) in got.iter().enumerate() {
            for (ch, v) in row.iter().enumerate() {
                let plane = &values[(i * c + ch) * h * w..(i * c + ch + 1) * h * w];
                let expected = match &kind {
                    LayerKind::GlobalAvgPool2d(_) => plane.iter().sum::<f32>() / plane.len() as f32,
                    _ => plane.iter().cloned().fold(f32::MIN, f32::max),
                };
                assert!(
                    (v - expected).abs() < 1e-5,
                    "{name} [{i}][{ch}]: {v} vs {expected}"
                );
            }
        }
        // loss = sum(y * weights): d loss / dx by autograd and by central differences.
        let weights = Tensor::new(&[[1.0f32, -2.0, 0.5], [0.25, 3.0, -1.0]], &Device::Cpu).unwrap();
        let loss = |x: &Tensor| -> f64 {
            let y = model.forward(x, Mode::Inference).unwrap();
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let y = model
            .logits_with(x.as_tensor(), Mode::Inference, true)
            .unwrap();
        let grads = (y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f32> = grads
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let eps = 1e-2f32;
        for i in (0..values.len()).step_by(7) {
            let at = |d: f32| {
                let mut v = values.clone();
                v[i] += d;
                loss(&Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap())
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            assert!(
                (numeric - g[i] as f64).abs() < 1e-3,
                "{name} x[{i}]: {numeric} vs {}",
                g[i]
            );
        }
    }
}

/// GELU (exact, erf): values against x·Φ(x), and a Conv2D with GELU gives the same logits and
/// input gradient on the CPU kernels (convolution, then GELU on candle's ops) as on candle's.
#[test]
fn gelu_values_and_both_kernel_sets_agree() {
    use candle_core::{Device, Var};
    use simplecnn_model::{Activation, FeatureShape, Kernels, LayerKind, Network, Padding};
    let mut s = Network::new("m", FeatureShape::image(3, 6, 6));
    s.add(LayerKind::conv2d(5, 3, Padding::Same, Activation::Gelu))
        .unwrap();
    s.add(LayerKind::global_avg_pool()).unwrap();
    s.add(LayerKind::dense(4, Activation::Gelu)).unwrap();
    let x =
        Var::from_tensor(&Tensor::rand(-1f32, 1f32, (2, 3, 6, 6), &Device::Cpu).unwrap()).unwrap();
    let run = |kernels| {
        let mut m = Model::new(s.clone(), &Device::Cpu, 9).unwrap();
        m.set_kernels(kernels).unwrap();
        let y = m.logits_with(x.as_tensor(), Mode::Inference, true).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), gx)
    };
    let ((y1, g1), (y2, g2)) = (run(Kernels::Fast), run(Kernels::Candle));
    for (a, b) in y1.iter().zip(&y2).chain(g1.iter().zip(&g2)) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    // GELU itself: x·Φ(x) with Φ from erf, at a few points (Φ(1) = 0.841344746).
    let t = Tensor::new(&[-1.0f32, 0.0, 1.0, 3.0], &Device::Cpu).unwrap();
    let g: Vec<f32> = t.gelu_erf().unwrap().to_vec1().unwrap();
    let expected = [-(1.0 - 0.841_344_7), 0.0, 0.841_344_7, 3.0 * 0.998_650_1];
    for (a, b) in g.iter().zip(expected) {
        assert!((a - b).abs() < 1e-5, "{g:?}");
    }
}

/// Conv2D and Dense without bias (Keras' `use_bias=False`): no bias weight, and the CPU
/// kernels (fused conv → pool, and a conv chain) agree with candle's ops on logits and on
/// every gradient.
#[test]
fn layers_without_bias_have_no_bias_and_both_kernel_sets_agree() {
    use candle_core::Var;
    use simplecnn_model::{
        Activation, DenseConfig, FeatureShape, Kernels, LayerKind, Network, Padding,
    };
    let conv = |f| {
        LayerKind::Conv2d(Conv2dConfig::new(f, 3, Padding::Same, Activation::Linear).without_bias())
    };
    let mut s = Network::new("m", FeatureShape::image(3, 8, 8));
    s.add(conv(4)).unwrap().add(LayerKind::max_pool(2)).unwrap();
    s.add(conv(5)).unwrap().add(conv(6)).unwrap();
    s.add(LayerKind::Flatten).unwrap();
    s.add(LayerKind::Dense(DenseConfig {
        use_bias: false,
        ..DenseConfig::default_for(3, Activation::Linear)
    }))
    .unwrap();
    assert_eq!(
        s.param_count(),
        4 * 3 * 9 + 5 * 4 * 9 + 6 * 5 * 9 + 6 * 16 * 3
    );
    let x =
        Var::from_tensor(&Tensor::rand(-1f32, 1f32, (2, 3, 8, 8), &Device::Cpu).unwrap()).unwrap();
    let run = |kernels| {
        let mut m = Model::new(s.clone(), &Device::Cpu, 4).unwrap();
        m.set_kernels(kernels).unwrap();
        assert!(m.weights().all(|w| w.name == "kernel"));
        let y = m.logits_with(x.as_tensor(), Mode::Inference, true).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let mut all: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for w in m.weights() {
            all.extend(
                g.get(&w.var)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
        }
        all.extend(
            g.get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        all
    };
    let (fast, candle) = (run(Kernels::Fast), run(Kernels::Candle));
    assert_eq!(fast.len(), candle.len());
    for (a, b) in fast.iter().zip(&candle) {
        assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// Weights frozen for a pass (`fit.freeze`) or not trainable (Keras' `layer.trainable =
/// False`) enter the forward as constants: the backward computes no gradient for them, and
/// the other weights' gradients keep their bits.
#[test]
fn frozen_and_untrainable_weights_get_no_gradient() {
    let x = input();
    let gradients = |model: &Model, frozen: &[&str]| {
        let frozen = frozen.iter().map(|w| w.to_string()).collect();
        let mut pass = TrainingPass::new(0).with_frozen(frozen);
        let y = model.logits(&x, Mode::Training(&mut pass)).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        model
            .weights()
            .map(|w| {
                let g = grads.get(w.var.as_tensor());
                let bits = g.map(|g| {
                    let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
                    v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>()
                });
                (w.path(), bits)
            })
            .collect::<Vec<_>>()
    };
    let mut model = Model::new(zoo::simple_cnn(), &Device::Cpu, 3).unwrap();
    let all = gradients(&model, &[]);
    assert!(all.iter().all(|(_, g)| g.is_some()), "every weight trains");
    let check = |got: Vec<(String, Option<Vec<u32>>)>, constant: &[&str]| {
        for ((name, g), (_, want)) in got.into_iter().zip(&all) {
            match constant.contains(&name.as_str()) {
                true => assert!(g.is_none(), "{name}: a gradient for a constant"),
                false => assert_eq!(&g, want, "{name}: the gradient changed"),
            }
        }
    };
    let first = ["conv2d_1/kernel", "conv2d_1/bias"];
    check(gradients(&model, &first), &first);
    model.set_trainable("dense_1", false).unwrap();
    check(
        gradients(&model, &["conv2d_1/bias"]),
        &["conv2d_1/bias", "dense_1/kernel", "dense_1/bias"],
    );
}
