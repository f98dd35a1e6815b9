//! A run on several processes (threads standing in for MPI ranks, `ThreadWorld`) gives one
//! process' numbers bit for bit: every epoch's metrics and every weight, for SimpleCNN (Conv →
//! pool → dropout, Dense, the mean loss) and a residual network with BatchNormalization (the
//! global batch's statistics, stride-2 convolutions, Add, the summed loss with label
//! smoothing).

use std::sync::Arc;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use simplecnn_cifar::{LabeledImages, IMAGE_BYTES};
use simplecnn_collective::threads::ThreadWorld;
use simplecnn_collective::Collective;
use simplecnn_model::{
    zoo, Activation, ActivationConfig, BatchNormConfig, Conv2dConfig, FeatureShape, LayerKind,
    Model, Network, Padding, Source,
};
use simplecnn_train::{
    evaluate_with, fit, trainable_params, Adam, AdamConfig, Constant, FitConfig, Sgd, SgdConfig,
    Tta,
};

fn images(n: usize, seed: u64) -> LabeledImages {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let pixels = (0..n * IMAGE_BYTES).map(|_| rng.random::<u8>()).collect();
    let labels = (0..n).map(|i| (i * 7 % 10) as u8).collect();
    LabeledImages::new(pixels, labels, 10).unwrap()
}

/// conv(8) ─ BN ─ ReLU ─┬─ conv(8, stride 2) ─ BN ─ ReLU ─ conv(8) ─ BN ─┐
///                      └─ conv 1x1 (8, stride 2) ─ BN ─────────────────── add ─ ReLU ─ GAP ─ dense
fn residual() -> Network {
    let mut s = Network::new("residual", FeatureShape::image(3, 32, 32));
    let conv = |filters, kernel, stride| {
        let mut c = Conv2dConfig::new(filters, kernel, Padding::Same, Activation::Linear);
        c.strides = (stride, stride);
        c.use_bias = false;
        LayerKind::Conv2d(c)
    };
    let bn = || {
        LayerKind::BatchNorm(BatchNormConfig {
            epsilon: 1e-5,
            momentum: 0.9,
            center: true,
            scale: true,
        })
    };
    let relu = || {
        LayerKind::Activation(ActivationConfig {
            activation: Activation::Relu,
        })
    };
    s.add(conv(8, 3, 1)).unwrap().add(bn()).unwrap();
    s.add(relu()).unwrap(); // 2
    s.add(conv(8, 3, 2))
        .unwrap()
        .add(bn())
        .unwrap()
        .add(relu())
        .unwrap();
    s.add(conv(8, 3, 1)).unwrap().add(bn()).unwrap(); // 7
    s.connect("short", conv(8, 1, 2), &[Source::Layer(2)])
        .unwrap();
    s.add(bn()).unwrap(); // 9
    s.connect("sum", LayerKind::Add, &[Source::Layer(7), Source::Layer(9)])
        .unwrap();
    s.add(relu()).unwrap();
    s.add(LayerKind::global_avg_pool()).unwrap();
    s.add(LayerKind::dense(10, Activation::Softmax)).unwrap();
    s
}

/// What a run leaves: every epoch's numbers, every weight, and an evaluation with
/// test-time augmentation shared between the processes (its loss and top-k accuracy as bits,
/// the confusion matrix), as bits.
#[derive(Debug, PartialEq)]
struct Outcome {
    epochs: Vec<[u64; 4]>,
    weights: Vec<Vec<u32>>,
    evaluation: ([u64; 2], Vec<Vec<usize>>),
}

fn run(
    spec: &Network,
    cfg: &FitConfig,
    sgd: bool,
    data: &LabeledImages,
    collective: Arc<dyn Collective>,
) -> Result<Outcome, String> {
    let mut model = Model::new(spec.clone(), &Device::Cpu, 5).unwrap();
    model.set_collective(collective);
    let lr = Constant {
        learning_rate: if sgd { 0.05 } else { 1e-3 },
    };
    let mut optimizer: Box<dyn simplecnn_train::Optimizer> = match sgd {
        true => Box::new(Sgd::new(trainable_params(&model), SgdConfig::default()).unwrap()),
        false => Box::new(Adam::new(trainable_params(&model), AdamConfig::default()).unwrap()),
    };
    let h = fit(&model, optimizer.as_mut(), &lr, data, cfg, &mut []).map_err(|e| e.to_string())?;
    let epochs = h
        .epochs
        .iter()
        .map(|e| {
            let v = |x: Option<f64>| x.unwrap_or(f64::NAN).to_bits();
            [
                e.loss.to_bits(),
                e.acc.to_bits(),
                v(e.val_loss),
                v(e.val_acc),
            ]
        })
        .collect();
    let weights = model
        .weights()
        .map(|w| {
            let v = w.var.as_tensor().flatten_all().unwrap();
            v.to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        })
        .collect();
    // 44 images in batches of 20: the last batch is 4 images, one group (which the other
    // processes skip).
    let all: Vec<usize> = (0..44.min(data.len())).collect();
    let e = evaluate_with(&model, data, &all, 20, Tta::Mirror).map_err(|e| e.to_string())?;
    let evaluation = ([e.loss.to_bits(), e.top_k_accuracy.to_bits()], e.confusion);
    Ok(Outcome {
        epochs,
        weights,
        evaluation,
    })
}

/// The outcome on each of `size` thread ranks.
fn run_on(
    size: usize,
    spec: &Network,
    cfg: &FitConfig,
    sgd: bool,
    data: &LabeledImages,
) -> Vec<Result<Outcome, String>> {
    ThreadWorld::run(size, |rank| run(spec, cfg, sgd, data, Arc::new(rank)))
}

fn assert_same_on_any_number(spec: &Network, cfg: &FitConfig, sgd: bool, data: &LabeledImages) {
    let alone = run(
        spec,
        cfg,
        sgd,
        data,
        Arc::new(simplecnn_collective::SingleProcess),
    )
    .unwrap();
    assert!(alone
        .epochs
        .iter()
        .all(|e| f64::from_bits(e[0]).is_finite()));
    for size in [2, 3] {
        for (rank, outcome) in run_on(size, spec, cfg, sgd, data).into_iter().enumerate() {
            let outcome = outcome.unwrap();
            assert_eq!(
                outcome.epochs, alone.epochs,
                "{size} processes, rank {rank}: epochs"
            );
            assert!(
                outcome.weights == alone.weights,
                "{size} processes, rank {rank}: the weights differ"
            );
        }
    }
}

#[test]
fn simple_cnn_trains_the_same_on_one_two_and_three_processes() {
    // 120 training images in batches of 48: 6 groups of 8, then a last batch of 24 (3 groups).
    let data = images(150, 1);
    let cfg = FitConfig {
        epochs: 2,
        batch_size: 48,
        validation_split: 0.2,
        seed: 3,
        ..Default::default()
    };
    assert_same_on_any_number(&zoo::simple_cnn(), &cfg, false, &data);
}

#[test]
fn a_residual_network_with_batch_norm_trains_the_same_on_any_number_of_processes() {
    let data = images(100, 2);
    let cfg = FitConfig {
        epochs: 1,
        batch_size: 40,
        validation_split: 0.0,
        seed: 4,
        loss: simplecnn_train::loss::Loss {
            label_smoothing: 0.2,
            reduction: simplecnn_train::loss::Reduction::Sum,
        },
        ..Default::default()
    };
    assert_same_on_any_number(&residual(), &cfg, true, &data);
}

#[test]
fn too_many_processes_for_a_batch_are_refused_before_training() {
    // A last batch of 8 images is one group: two processes cannot share it.
    let data = images(40, 3);
    let cfg = FitConfig {
        epochs: 1,
        batch_size: 32,
        validation_split: 0.0,
        ..Default::default()
    };
    for outcome in run_on(2, &zoo::simple_cnn(), &cfg, false, &data) {
        let err = outcome.unwrap_err();
        assert!(err.contains("a batch of 8 images is 1 group(s)"), "{err}");
    }
}

#[test]
fn layers_candle_sums_are_refused_on_several_processes() {
    // A Dense on every pixel of an image runs on candle's matmul.
    let mut spec = Network::new("pixels", FeatureShape::image(3, 32, 32));
    spec.add_named("pointwise", LayerKind::dense(4, Activation::Relu))
        .unwrap()
        .add(LayerKind::global_avg_pool())
        .unwrap()
        .add(LayerKind::dense(10, Activation::Softmax))
        .unwrap();
    let data = images(32, 4);
    let cfg = FitConfig {
        epochs: 1,
        batch_size: 32,
        validation_split: 0.0,
        ..Default::default()
    };
    for outcome in run_on(2, &spec, &cfg, false, &data) {
        let err = outcome.unwrap_err();
        assert!(err.contains("layer(s) pointwise"), "{err}");
    }
}
