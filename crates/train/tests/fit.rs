//! `fit` end to end on small generated data: it learns, repeats exactly with a seed, resumes
//! exactly from a checkpoint, stops early and on NaN.

use candle_core::Device;
use rand::{Rng, SeedableRng};
use simplecnn_cifar::{LabeledImages, IMAGE_BYTES};
use simplecnn_model::{zoo, Model};
use simplecnn_train::callbacks::{BatchEnd, TrainBegin, TrainState};
use simplecnn_train::{
    evaluate, fit, predict, resume, trainable_params, Adam, AdamConfig, Callback, Constant,
    Control, EarlyStopping, EpochMetrics, FitConfig, Lookahead, ModelCheckpoint, Monitor,
    MonitorMode, Optimizer, StopReason, TerminateOnNaN,
};

const LR: Constant = Constant {
    learning_rate: 1e-3,
};

fn checkpoints(dir: std::path::PathBuf) -> Box<dyn Callback> {
    Box::new(ModelCheckpoint {
        dir,
        monitor: Monitor::ValLoss,
        mode: MonitorMode::Min,
    })
}

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

fn train_with(
    data: &LabeledImages,
    cfg: &FitConfig,
    callbacks: &mut [Box<dyn Callback>],
) -> (Model, simplecnn_train::History) {
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, cfg.seed).unwrap();
    let mut adam = Adam::new(trainable_params(&model), AdamConfig::default()).unwrap();
    let h = fit(&model, &mut adam, &LR, data, cfg, callbacks).unwrap();
    (model, h)
}

fn train(data: &LabeledImages, cfg: &FitConfig) -> (Model, simplecnn_train::History) {
    train_with(data, cfg, &mut [])
}

#[test]
fn learns_and_is_deterministic_for_a_seed() {
    let data = colour_classes(320, 1);
    let (model, h1) = train(
        &data,
        &FitConfig {
            epochs: 5,
            ..quick(7)
        },
    );
    let (_, h2) = train(
        &data,
        &FitConfig {
            epochs: 5,
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
            epochs: 5,
            ..quick(8)
        },
    );
    assert_ne!(losses(&h1), losses(&h3));

    assert_eq!(h1.epochs.len(), 5);
    assert!(h1.epochs[4].loss < h1.epochs[0].loss, "{:?}", losses(&h1));
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
        ..quick(3)
    };
    let (full_model, full) = train_with(
        &data,
        &full_cfg,
        &mut [checkpoints(dir.path().join("full"))],
    );
    assert!(dir.path().join("full/best.safetensors").is_file());

    // Two epochs, then a fresh process-like start that resumes for the third.
    let part_cfg = FitConfig {
        epochs: 2,
        ..quick(3)
    };
    train_with(
        &data,
        &part_cfg,
        &mut [checkpoints(dir.path().join("part"))],
    );
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 999).unwrap();
    let mut adam = Adam::new(trainable_params(&model), AdamConfig::default()).unwrap();
    let resumed = resume(
        &model,
        &mut adam,
        &LR,
        &data,
        &FitConfig {
            epochs: 3,
            ..part_cfg
        },
        &mut [],
        &dir.path().join("part"),
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

/// Copies a checkpoint folder as it is after epoch `epoch`: what a run killed during the next
/// epoch leaves behind.
struct SnapshotAfter {
    epoch: usize,
    from: std::path::PathBuf,
    to: std::path::PathBuf,
}

impl Callback for SnapshotAfter {
    fn on_epoch_end(
        &mut self,
        logs: &EpochMetrics,
        _: &TrainState<'_>,
    ) -> simplecnn_train::Result<Control> {
        if logs.epoch == self.epoch {
            std::fs::create_dir_all(&self.to).unwrap();
            for f in std::fs::read_dir(&self.from).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, self.to.join(f.file_name().unwrap())).unwrap();
            }
        }
        Ok(Control::Continue)
    }
}

/// Lookahead keeps a running average between its updates; a run resumed from a checkpoint
/// taken mid-way between two updates (4 steps an epoch, an update every 3) ends with the
/// uninterrupted run's weights only if the checkpoint kept that average. Resuming with a
/// lookahead from a checkpoint that has none is an error, not a different run. The epoch and
/// history come from the tensors file itself, whatever the JSON beside it says.
#[test]
fn resuming_restores_lookaheads_average() {
    let data = colour_classes(160, 6);
    let dir = tempfile::tempdir().unwrap();
    let cfg = FitConfig {
        epochs: 3,
        ..quick(4)
    };
    let lookahead = || -> Box<dyn Callback> { Box::new(Lookahead::new(3, 0.9, 1.0)) };
    let (full_model, full) = train_with(
        &data,
        &cfg,
        &mut [
            lookahead(),
            checkpoints(dir.path().join("full")),
            Box::new(SnapshotAfter {
                epoch: 1,
                from: dir.path().join("full"),
                to: dir.path().join("killed"),
            }),
        ],
    );
    let weights = |m: &Model| -> Vec<Vec<f32>> {
        m.weights()
            .map(|w| w.var.flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    };
    let resume_with = |callbacks: &mut [Box<dyn Callback>]| {
        let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 999).unwrap();
        let mut adam = Adam::new(trainable_params(&model), AdamConfig::default()).unwrap();
        let h = resume(
            &model,
            &mut adam,
            &LR,
            &data,
            &cfg,
            callbacks,
            &dir.path().join("killed"),
        );
        (model, h)
    };
    // A run killed between writing the tensors and their JSON copy: the record that counts
    // is the one inside the tensors file.
    std::fs::copy(
        dir.path().join("full/last.json"),
        dir.path().join("killed/last.json"),
    )
    .unwrap();
    let (model, resumed) = resume_with(&mut [lookahead()]);
    let resumed = resumed.unwrap();
    assert_eq!(resumed.epochs.len(), 3);
    let losses = |h: &simplecnn_train::History| {
        h.epochs
            .iter()
            .map(|e| (e.loss, e.val_loss))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&resumed), losses(&full));
    assert_eq!(weights(&model), weights(&full_model));

    // The same checkpoint without the average (as an older one): refused, naming it.
    let killed = dir.path().join("killed/last.safetensors");
    let mut tensors = candle_core::safetensors::load(&killed, &Device::Cpu).unwrap();
    tensors.retain(|k, _| !k.starts_with("callback/"));
    candle_core::safetensors::save(&tensors, &killed).unwrap();
    let err = resume_with(&mut [lookahead()]).1.unwrap_err().to_string();
    assert!(err.contains("lookahead/conv2d_1/kernel"), "{err}");
}

#[test]
fn early_stopping_stops_when_val_loss_stalls() {
    let data = colour_classes(100, 6);
    // A tiny learning rate: val_loss barely moves, so any real min_delta stalls it at once.
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 1).unwrap();
    let mut adam = Adam::new(trainable_params(&model), AdamConfig::default()).unwrap();
    let fit_cfg = FitConfig {
        epochs: 10,
        ..quick(1)
    };
    let stopper = EarlyStopping::new(2).watching(Monitor::ValLoss, MonitorMode::Min, 0.01);
    let tiny = Constant {
        learning_rate: 1e-9,
    };
    let h = fit(
        &model,
        &mut adam,
        &tiny,
        &data,
        &fit_cfg,
        &mut [Box::new(stopper)],
    )
    .unwrap();
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
    let mut adam = Adam::new(trainable_params(&model), AdamConfig::default()).unwrap();
    let nan = Constant {
        learning_rate: f64::NAN,
    };
    let h = fit(
        &model,
        &mut adam,
        &nan,
        &data,
        &quick(1),
        &mut [Box::new(TerminateOnNaN)],
    )
    .unwrap();
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
    let mut adam = Adam::new(trainable_params(&model), AdamConfig::default()).unwrap();
    let err = fit(
        &model,
        &mut adam,
        &LR,
        &data,
        &FitConfig {
            batch_size: 0,
            ..quick(1)
        },
        &mut [],
    )
    .unwrap_err();
    assert!(err.to_string().contains("batch size"));
    assert_eq!(adam.iterations(), 0);
}

/// Records the hooks it sees; stops after `stop_after` batches.
struct Recorder {
    events: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
    stop_after: usize,
    batches: usize,
}

impl Callback for Recorder {
    fn on_train_begin(&mut self, info: &TrainBegin<'_>) -> simplecnn_train::Result<()> {
        self.events.borrow_mut().push(format!(
            "train_begin {} steps {} train {} val {}",
            info.first_epoch, info.steps_per_epoch, info.train_images, info.validation_images
        ));
        Ok(())
    }
    fn on_epoch_begin(&mut self, epoch: usize) -> simplecnn_train::Result<()> {
        self.events
            .borrow_mut()
            .push(format!("epoch_begin {epoch}"));
        Ok(())
    }
    fn on_batch_end(&mut self, b: &BatchEnd<'_>) -> simplecnn_train::Result<Control> {
        self.batches += 1;
        self.events.borrow_mut().push(format!(
            "batch {}/{} lr {}",
            b.epoch, b.batch, b.learning_rate
        ));
        Ok(match self.batches == self.stop_after {
            true => Control::Stop(StopReason::NonFiniteLoss {
                epoch: b.epoch,
                batch: b.batch,
            }),
            false => Control::Continue,
        })
    }
    fn on_epoch_end(
        &mut self,
        logs: &EpochMetrics,
        state: &TrainState<'_>,
    ) -> simplecnn_train::Result<Control> {
        self.events.borrow_mut().push(format!(
            "epoch_end {} history {} iterations {}",
            logs.epoch,
            state.history.epochs.len(),
            state.optimizer.iterations()
        ));
        Ok(Control::Continue)
    }
    fn on_train_end(&mut self, h: &simplecnn_train::History) -> simplecnn_train::Result<()> {
        self.events
            .borrow_mut()
            .push(format!("train_end {}", h.epochs.len()));
        Ok(())
    }
}

#[test]
fn callbacks_see_keras_hooks_in_order_and_can_stop() {
    let data = colour_classes(100, 9);
    let events = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let recorder = Recorder {
        events: events.clone(),
        stop_after: 5,
        batches: 0,
    };
    // 80 trained images in batches of 32 with the remainder dropped: 2 steps per epoch.
    let cfg = FitConfig {
        epochs: 3,
        drop_remainder: true,
        ..quick(1)
    };
    let (_, h) = train_with(&data, &cfg, &mut [Box::new(recorder)]);
    let lr = "lr 0.001";
    assert_eq!(
        *events.borrow(),
        [
            "train_begin 1 steps 2 train 80 val 20".to_string(),
            "epoch_begin 1".into(),
            format!("batch 1/1 {lr}"),
            format!("batch 1/2 {lr}"),
            "epoch_end 1 history 1 iterations 2".into(),
            "epoch_begin 2".into(),
            format!("batch 2/1 {lr}"),
            format!("batch 2/2 {lr}"),
            "epoch_end 2 history 2 iterations 4".into(),
            "epoch_begin 3".into(),
            format!("batch 3/1 {lr}"),
            "train_end 2".into(),
        ]
    );
    assert_eq!(h.epochs.len(), 2);
    assert_eq!(
        h.stopped,
        Some(StopReason::NonFiniteLoss { epoch: 3, batch: 1 })
    );
    // 64 images trained per epoch: images/s and the means count those, not 80.
    assert!(h.epochs[0].images_per_second > 0.0);
}

#[test]
fn best_checkpoint_follows_the_monitor_and_mode() {
    let data = colour_classes(100, 10);
    let dir = tempfile::tempdir().unwrap();
    let by_max_loss = ModelCheckpoint {
        dir: dir.path().to_path_buf(),
        monitor: Monitor::Loss,
        mode: MonitorMode::Max,
    };
    let (_, h) = train_with(
        &data,
        &FitConfig {
            epochs: 3,
            ..quick(2)
        },
        &mut [Box::new(by_max_loss)],
    );
    // The training loss falls, so the largest is epoch 1's: "best" stays at epoch 1.
    assert!(h.epochs[2].loss < h.epochs[0].loss);
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("best.json")).unwrap())
            .unwrap();
    assert_eq!(best["epoch"], 1);
    let last: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("last.json")).unwrap())
            .unwrap();
    assert_eq!(last["epoch"], 3);
}

/// Augmentation is part of the seeded run: the same twice, and not the same as without it.
#[test]
fn augmentation_repeats_for_a_seed_and_changes_training() {
    let data = colour_classes(120, 11);
    let aug = FitConfig {
        augment: simplecnn_cifar::Augmentation {
            flip: simplecnn_cifar::Flip::Alternating,
            translate: 2,
        },
        ..quick(5)
    };
    let losses = |h: &simplecnn_train::History| h.epochs.iter().map(|e| e.loss).collect::<Vec<_>>();
    let (_, a) = train(&data, &aug);
    let (_, b) = train(&data, &aug);
    let (_, plain) = train(&data, &quick(5));
    assert_eq!(losses(&a), losses(&b));
    assert_ne!(losses(&a), losses(&plain));
}

/// Keeps a copy of one weight at the end of every epoch.
struct Snapshot {
    weight: &'static str,
    seen: std::rc::Rc<std::cell::RefCell<Vec<Vec<f32>>>>,
}

impl Callback for Snapshot {
    fn on_epoch_end(
        &mut self,
        _: &EpochMetrics,
        state: &TrainState<'_>,
    ) -> simplecnn_train::Result<Control> {
        let (layer, name) = self.weight.split_once('/').unwrap();
        let w = state.model.weight(layer, name).unwrap();
        let v = w.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        self.seen.borrow_mut().push(v);
        Ok(Control::Continue)
    }
}

/// Frozen weights do not move from their epoch on (bit for bit); the rest trains; a name the
/// model lacks is an error before training.
#[test]
fn frozen_weights_stay_from_their_epoch_on() {
    let data = colour_classes(100, 12);
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 3).unwrap();
    let initial_bias: Vec<f32> = model
        .weight("dense_2", "bias")
        .unwrap()
        .var
        .as_tensor()
        .to_vec1()
        .unwrap();
    let cfg = FitConfig {
        epochs: 3,
        freeze: vec![
            simplecnn_train::Freeze {
                weights: vec!["dense_2/bias".into()],
                from_epoch: 1,
            },
            simplecnn_train::Freeze {
                weights: vec!["conv2d_1/kernel".into()],
                from_epoch: 3,
            },
        ],
        ..quick(3)
    };
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let snap = Snapshot {
        weight: "conv2d_1/kernel",
        seen: seen.clone(),
    };
    let mut sgd = simplecnn_train::Sgd::new(
        trainable_params(&model),
        simplecnn_train::SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            groups: vec![],
        },
    )
    .unwrap();
    fit(&model, &mut sgd, &LR, &data, &cfg, &mut [Box::new(snap)]).unwrap();
    let bias: Vec<f32> = model
        .weight("dense_2", "bias")
        .unwrap()
        .var
        .as_tensor()
        .to_vec1()
        .unwrap();
    assert_eq!(bias, initial_bias, "frozen from the start");
    let seen = seen.borrow();
    assert_ne!(seen[0], seen[1], "trains in epochs 1 and 2");
    assert_eq!(
        seen[1], seen[2],
        "frozen in epoch 3, momentum and decay included"
    );
    let bad = FitConfig {
        freeze: vec![simplecnn_train::Freeze {
            weights: vec!["dense_9/bias".into()],
            from_epoch: 1,
        }],
        ..quick(3)
    };
    let err = fit(&model, &mut sgd, &LR, &data, &bad, &mut []).unwrap_err();
    assert!(err.to_string().contains("dense_9/bias"), "{err}");
}

/// A fractional last epoch: `max_steps` ends training mid-epoch; that epoch is recorded with
/// the images it trained on.
#[test]
fn max_steps_ends_the_last_epoch_early() {
    let data = colour_classes(100, 13);
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 3).unwrap();
    let mut adam = Adam::new(trainable_params(&model), AdamConfig::default()).unwrap();
    // 80 training images, batches of 32 with the remainder dropped: 2 steps per epoch.
    let cfg = FitConfig {
        epochs: 3,
        drop_remainder: true,
        max_steps: Some(5),
        ..quick(1)
    };
    assert_eq!(cfg.total_steps(80), 5);
    let h = fit(&model, &mut adam, &LR, &data, &cfg, &mut []).unwrap();
    assert_eq!(adam.iterations(), 5);
    assert_eq!(h.epochs.len(), 3);
    assert!(h.stopped.is_none());
    let full = h.epochs[0].images_per_second * h.epochs[0].seconds;
    assert!(full > 0.0);
}
