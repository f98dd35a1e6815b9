//! `fit` end to end on small generated data: it learns, repeats exactly with a seed, resumes
//! exactly from a checkpoint, stops early and on NaN.

use candle_core::Device;
use rand::{Rng, SeedableRng};
use simplecnn_cifar::{LabeledImages, IMAGE_BYTES};
use simplecnn_model::{zoo, Model};
use simplecnn_train::{
    evaluate, fit, predict, resume, Adam, AdamConfig, EarlyStopping, FitConfig, StopReason,
};

/// Images whose colour says the class (with noise): easy to learn, hard to get exactly right by luck.
fn colour_classes(n: usize, seed: u64) -> LabeledImages {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = (i % 10) as u8;
        labels.push(class);
        for plane in 0..3u8 {
            let base = ((class as u32 * 37 + plane as u32 * 91) % 256) as i32;
            for _ in 0..1024 {
                pixels.push((base + rng.random_range(-40..40)).clamp(0, 255) as u8);
            }
        }
    }
    LabeledImages::new(pixels, labels, 10).unwrap()
}

fn quick(seed: u64) -> FitConfig {
    FitConfig {
        epochs: 2,
        batch_size: 32,
        validation_split: 0.2,
        seed,
        ..Default::default()
    }
}

fn train(data: &LabeledImages, cfg: &FitConfig) -> (Model, simplecnn_train::History) {
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, cfg.seed).unwrap();
    let mut adam = Adam::new(model.vars(), AdamConfig::default()).unwrap();
    let h = fit(&model, &mut adam, data, cfg).unwrap();
    (model, h)
}

#[test]
fn learns_and_is_deterministic_for_a_seed() {
    let data = colour_classes(320, 1);
    let (model, h1) = train(
        &data,
        &FitConfig {
            epochs: 3,
            ..quick(7)
        },
    );
    let (_, h2) = train(
        &data,
        &FitConfig {
            epochs: 3,
            ..quick(7)
        },
    );
    let losses = |h: &simplecnn_train::History| {
        h.epochs
            .iter()
            .map(|e| (e.loss, e.val_loss))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&h1), losses(&h2), "same seed, same losses");
    let (_, h3) = train(
        &data,
        &FitConfig {
            epochs: 3,
            ..quick(8)
        },
    );
    assert_ne!(losses(&h1), losses(&h3));

    assert_eq!(h1.epochs.len(), 3);
    assert!(h1.epochs[2].loss < h1.epochs[0].loss, "{:?}", losses(&h1));
    let test = evaluate(&model, &colour_classes(100, 2), 64).unwrap();
    assert!(test.accuracy > 0.5, "accuracy {}", test.accuracy);
    assert_eq!(test.confusion.iter().flatten().sum::<usize>(), 100);
    let probs = predict(&model, &colour_classes(5, 3), 2).unwrap();
    assert_eq!(probs.dims(), &[5, 10]);
}

#[test]
fn validation_is_the_unshuffled_tail() {
    // Train only on classes 0..8 in the head, validate on a tail of class 9: the model never
    // sees class 9, so validation accuracy is 0 — whatever the shuffle.
    let data = colour_classes(200, 4);
    let mut order: Vec<usize> = (0..200).filter(|i| i % 10 != 9).collect();
    order.extend((0..200).filter(|i| i % 10 == 9));
    let data = data.select(&order);
    let (_, h) = train(
        &data,
        &FitConfig {
            epochs: 1,
            validation_split: 0.1,
            ..quick(1)
        },
    );
    assert_eq!(h.epochs[0].val_acc, Some(0.0));
}

#[test]
fn resuming_from_a_checkpoint_matches_an_uninterrupted_run() {
    let data = colour_classes(160, 5);
    let dir = tempfile::tempdir().unwrap();
    let full_cfg = FitConfig {
        epochs: 3,
        checkpoint_dir: Some(dir.path().join("full")),
        ..quick(3)
    };
    let (full_model, full) = train(&data, &full_cfg);
    assert!(dir.path().join("full/best.safetensors").is_file());

    // Two epochs, then a fresh process-like start that resumes for the third.
    let part_cfg = FitConfig {
        epochs: 2,
        checkpoint_dir: Some(dir.path().join("part")),
        ..quick(3)
    };
    train(&data, &part_cfg);
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 999).unwrap();
    let mut adam = Adam::new(model.vars(), AdamConfig::default()).unwrap();
    let resumed = resume(
        &model,
        &mut adam,
        &data,
        &FitConfig {
            epochs: 3,
            ..part_cfg
        },
    )
    .unwrap();
    assert_eq!(adam.iterations(), 3 * 4);
    let strip = |h: &simplecnn_train::History| {
        h.epochs
            .iter()
            .map(|e| (e.loss, e.acc, e.val_loss))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&resumed), strip(&full));
    for (a, b) in model.weights().zip(full_model.weights()) {
        let a: Vec<f32> = a.var.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.var.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn early_stopping_stops_when_val_loss_stalls() {
    let data = colour_classes(100, 6);
    // A tiny learning rate: val_loss barely moves, so any real min_delta stalls it at once.
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 1).unwrap();
    let cfg = AdamConfig {
        learning_rate: 1e-9,
        ..Default::default()
    };
    let mut adam = Adam::new(model.vars(), cfg).unwrap();
    let fit_cfg = FitConfig {
        epochs: 10,
        early_stopping: Some(EarlyStopping {
            patience: 2,
            min_delta: 0.01,
        }),
        ..quick(1)
    };
    let h = fit(&model, &mut adam, &data, &fit_cfg).unwrap();
    assert_eq!(h.epochs.len(), 3);
    assert!(
        matches!(
            h.stopped,
            Some(StopReason::EarlyStopping { best_epoch: 1, .. })
        ),
        "{:?}",
        h.stopped
    );
}

#[test]
fn a_nan_loss_stops_training_with_a_reason() {
    let data = colour_classes(100, 7);
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 1).unwrap();
    let mut adam = Adam::new(
        model.vars(),
        AdamConfig {
            learning_rate: f64::NAN,
            ..Default::default()
        },
    )
    .unwrap();
    let h = fit(&model, &mut adam, &data, &quick(1)).unwrap();
    assert_eq!(
        h.stopped,
        Some(StopReason::NonFiniteLoss { epoch: 1, batch: 2 })
    );
    assert!(h.epochs.is_empty());
    assert!(h.stopped.unwrap().to_string().contains("NaN"));
}

#[test]
fn bad_config_fails_before_training() {
    let data = colour_classes(10, 8);
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 1).unwrap();
    let mut adam = Adam::new(model.vars(), AdamConfig::default()).unwrap();
    let err = fit(
        &model,
        &mut adam,
        &data,
        &FitConfig {
            batch_size: 0,
            ..quick(1)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("batch size"));
    assert_eq!(adam.iterations(), 0);
}
