//! `fit`: Keras' training loop semantics over CIFAR batches.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use simplecnn_cifar::{Augmentation, LabeledImages};
use simplecnn_collective::share;
use simplecnn_model::ops::{images_per_partial, BatchShard};
use simplecnn_model::{Model, TrainingPass};

use crate::callbacks::{any_stop, BatchEnd, Callback, Control, TrainBegin, TrainState};
use crate::checkpoint::{load_checkpoint, LoadedCheckpoint};
use crate::error::{Result, TrainError};
use crate::evaluate::evaluate_indices;
use crate::history::{EpochMetrics, History};
use crate::loss::Loss;
use crate::optim::Optimizer;
use crate::schedule::Schedule;
use crate::step::train_step;

/// Keras' `fit` arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// The last fraction of the training data held out for validation, taken before shuffling.
    pub validation_split: f64,
    /// Reshuffle the training part every epoch.
    pub shuffle: bool,
    /// Seeds the shuffles and dropout masks: same seed, same machine → same losses on CPU.
    pub seed: u64,
    /// Leave out each epoch's last batch when it is smaller than `batch_size`.
    #[serde(default)]
    pub drop_remainder: bool,
    /// What is minimised (Keras' `compile(loss=…)`).
    #[serde(default)]
    pub loss: Loss,
    /// Flips and translations of the training images, per batch.
    #[serde(default)]
    pub augment: Augmentation,
    /// Stop after this many optimizer steps over the whole run (a fractional last epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Weights the optimizer leaves alone, from an epoch on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<Freeze>,
}

/// Weights (`layer/name`) that stop training from epoch `from_epoch` (1-based; 1: never
/// trained), as airbench's whitening bias after three epochs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub weights: Vec<String>,
    #[serde(default = "first_epoch")]
    pub from_epoch: usize,
}

fn first_epoch() -> usize {
    1
}

impl FitConfig {
    /// Optimizer steps over the whole run for `train_images`.
    pub fn total_steps(&self, train_images: usize) -> u64 {
        let all = (self.steps_per_epoch(train_images) * self.epochs) as u64;
        self.max_steps.map_or(all, |m| m.min(all))
    }

    /// The weights frozen during `epoch`.
    pub fn frozen_in(&self, epoch: usize) -> BTreeSet<String> {
        self.freeze
            .iter()
            .filter(|f| f.from_epoch <= epoch)
            .flat_map(|f| f.weights.iter().cloned())
            .collect()
    }
}

impl Default for FitConfig {
    /// The tutorial's recipe: 10 epochs, batch 128, validation split 0.1, shuffling.
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            validation_split: 0.1,
            shuffle: true,
            seed: 0,
            drop_remainder: false,
            loss: Loss::default(),
            augment: Augmentation::default(),
            freeze: Vec::new(),
            max_steps: None,
        }
    }
}

impl FitConfig {
    /// How many of `data_len` images are trained on; the rest, the tail, is validation.
    /// Keras: `split_at = int(n * (1 - validation_split))`.
    pub fn split_at(&self, data_len: usize) -> usize {
        (data_len as f64 * (1.0 - self.validation_split)) as usize
    }

    /// Optimizer steps per epoch for `train_images`.
    pub fn steps_per_epoch(&self, train_images: usize) -> usize {
        match self.drop_remainder {
            true => train_images / self.batch_size.max(1),
            false => train_images.div_ceil(self.batch_size.max(1)),
        }
    }

    /// Whether `size` processes can share every batch of `train_images` images: each needs at
    /// least one whole group of [`images_per_partial`] images of every batch.
    pub fn check_processes(&self, size: usize, train_images: usize) -> Result<()> {
        if size == 1 {
            return Ok(());
        }
        let full = self.batch_size.min(train_images);
        let last = match (self.drop_remainder, train_images % self.batch_size.max(1)) {
            (true, _) | (false, 0) => full,
            (false, r) => r,
        };
        for n in [full, last] {
            let per = images_per_partial(n);
            let groups = n.div_ceil(per);
            if groups < size {
                return Err(TrainError::Config(format!(
                    "{size} processes: a batch of {n} images is {groups} group(s) of {per}, \
                     and every process needs at least one; use at most {groups} processes, a \
                     larger batch, or drop_remainder"
                )));
            }
        }
        Ok(())
    }

    pub fn validate(&self, data_len: usize) -> Result<()> {
        self.loss.validate()?;
        let bad = |m: String| Err(TrainError::Config(m));
        if let Err(why) = self.augment.validate() {
            return bad(why);
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.validation_split) {
            return bad(format!(
                "validation_split {} is not in [0, 1)",
                self.validation_split
            ));
        }
        let train = self.split_at(data_len);
        if train == 0 {
            return bad(format!("{data_len} images leave nothing to train on"));
        }
        if self.steps_per_epoch(train) == 0 {
            return bad(format!(
                "{train} training images make no full batch of {} (drop_remainder is on)",
                self.batch_size
            ));
        }
        Ok(())
    }
}

/// This process' images of a global batch of `n` split over `size` processes: whole groups
/// of [`images_per_partial`] images, contiguous runs as even as groups allow. `(first, count)`.
pub fn batch_share(n: usize, size: usize, rank: usize) -> (usize, usize) {
    let per = images_per_partial(n);
    let (first, groups) = share(n.div_ceil(per), size, rank);
    let (start, end) = ((first * per).min(n), ((first + groups) * per).min(n));
    (start, end - start)
}

/// Refuses, before training, a run on several processes that could not give one process'
/// numbers: a batch with fewer groups than processes, or a layer whose gradients candle sums.
fn check_processes(model: &Model, config: &FitConfig, train_images: usize) -> Result<()> {
    let size = model.collective().size();
    if size == 1 {
        return Ok(());
    }
    config.check_processes(size, train_images)?;
    let inexact = model.layers_without_exact_batch_sums();
    if !inexact.is_empty() {
        return Err(TrainError::Config(format!(
            "{size} processes: the gradients of layer(s) {} are summed over the batch by \
             candle's ops, in an order that depends on the split; train them on one process",
            inexact.join(", ")
        )));
    }
    Ok(())
}

/// Derives an independent seed for one use in one epoch.
fn epoch_seed(seed: u64, epoch: usize, salt: u64) -> u64 {
    // splitmix64 of the combination: cheap, and distinct inputs give unrelated streams.
    let mut z = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Trains `model` on `data` with `optimizer` at the rates `schedule` gives, as Keras'
/// `model.fit(x, y, callbacks=…)`.
pub fn fit(
    model: &Model,
    optimizer: &mut dyn Optimizer,
    schedule: &dyn Schedule,
    data: &LabeledImages,
    config: &FitConfig,
    callbacks: &mut [Box<dyn Callback>],
) -> Result<History> {
    fit_from(model, optimizer, schedule, data, config, callbacks, None)
}

/// Continues the run checkpointed in `checkpoint_dir` (`last.*`): restores weights,
/// optimizer, callbacks' state and history, then trains the remaining epochs.
pub fn resume(
    model: &Model,
    optimizer: &mut dyn Optimizer,
    schedule: &dyn Schedule,
    data: &LabeledImages,
    config: &FitConfig,
    callbacks: &mut [Box<dyn Callback>],
    checkpoint_dir: &Path,
) -> Result<History> {
    let loaded = load_checkpoint(checkpoint_dir, "last", model, optimizer)?;
    tracing::info!(
        epoch = loaded.meta.epoch,
        "resuming from {}",
        checkpoint_dir.display()
    );
    fit_from(
        model,
        optimizer,
        schedule,
        data,
        config,
        callbacks,
        Some(loaded),
    )
}

fn fit_from(
    model: &Model,
    optimizer: &mut dyn Optimizer,
    schedule: &dyn Schedule,
    data: &LabeledImages,
    config: &FitConfig,
    callbacks: &mut [Box<dyn Callback>],
    resumed: Option<LoadedCheckpoint>,
) -> Result<History> {
    let (mut history, restored) = match resumed {
        Some(c) => (c.meta.history, Some(c.callbacks)),
        None => (History::default(), None),
    };
    config.validate(data.len())?;
    for name in config.freeze.iter().flat_map(|f| &f.weights) {
        let known = model.weights().any(|w| &w.path() == name);
        if !known {
            return Err(TrainError::Config(format!(
                "freeze: the model has no weight {name} (weights are named layer/kernel, layer/bias, …)"
            )));
        }
    }
    // Validation is the tail, taken before any shuffling.
    let split_at = config.split_at(data.len());
    let world = model.collective();
    check_processes(model, config, split_at)?;
    let val_indices: Vec<usize> = (split_at..data.len()).collect();
    let steps = config.steps_per_epoch(split_at);
    let begin = TrainBegin {
        model,
        total_steps: config.total_steps(split_at),
        first_epoch: history.epochs.len() + 1,
        epochs: config.epochs,
        steps_per_epoch: steps,
        train_images: split_at,
        validation_images: val_indices.len(),
    };
    for c in callbacks.iter_mut() {
        c.on_train_begin(&begin)?;
        if let Some(saved) = &restored {
            c.restore_state(saved)?;
        }
    }

    'epochs: for epoch in begin.first_epoch..=config.epochs {
        for c in callbacks.iter_mut() {
            c.on_epoch_begin(epoch)?;
        }
        optimizer.set_frozen(&config.frozen_in(epoch));
        let start = Instant::now();
        let mut order: Vec<usize> = (0..split_at).collect();
        if config.shuffle {
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(epoch_seed(
                config.seed,
                epoch,
                1,
            )));
        }
        let mut pass = TrainingPass::new(epoch_seed(config.seed, epoch, 2))
            .with_frozen(config.frozen_in(epoch));
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut learning_rate = schedule.learning_rate(optimizer.iterations());
        let total_steps = begin.total_steps;
        for (step, idx) in order.chunks(config.batch_size).take(steps).enumerate() {
            if optimizer.iterations() >= total_steps {
                break;
            }
            // This process' share of the global batch: whole groups of images.
            let (first, mine) = batch_share(idx.len(), world.size(), world.rank());
            let shard = BatchShard::new(idx.len(), first, world.clone());
            pass.start_batch((step * config.batch_size + first) as u64, shard);
            let global_idx = idx;
            let idx = &global_idx[first..first + mine];
            let batch = match config.augment.is_none() {
                true => data.batch(idx, model.device())?,
                // One seed for the run: alternating flips keep each image's own coin.
                false => data.augmented_batch(
                    idx,
                    model.device(),
                    &config.augment,
                    epoch_seed(config.seed, 0, 3),
                    epoch - 1,
                )?,
            };
            learning_rate = schedule.learning_rate(optimizer.iterations());
            let out = train_step(
                model,
                optimizer,
                &config.loss,
                &batch,
                &mut pass,
                learning_rate,
            )?;
            loss_sum += out.loss * out.images as f64;
            correct += out.correct;
            seen += out.images;
            let logs = BatchEnd {
                model,
                step: optimizer.iterations(),
                epoch,
                batch: step + 1,
                loss: out.loss,
                mean_loss: loss_sum / seen as f64,
                mean_acc: correct as f64 / seen as f64,
                learning_rate,
            };
            tracing::trace!(epoch, step, loss = out.loss);
            if let Control::Stop(reason) = any_stop(callbacks, |c| c.on_batch_end(&logs))? {
                tracing::warn!("{reason}");
                history.stopped = Some(reason);
                break 'epochs;
            }
        }
        let train_seconds = start.elapsed().as_secs_f64();
        let val = if val_indices.is_empty() {
            None
        } else {
            Some(evaluate_indices(
                model,
                data,
                &val_indices,
                config.batch_size,
            )?)
        };
        let metrics = EpochMetrics {
            epoch,
            seconds: start.elapsed().as_secs_f64(),
            loss: loss_sum / seen as f64,
            acc: correct as f64 / seen as f64,
            val_loss: val.as_ref().map(|v| v.loss),
            val_acc: val.as_ref().map(|v| v.accuracy),
            learning_rate,
            images_per_second: seen as f64 / train_seconds,
        };
        tracing::info!(?metrics, "epoch done");
        history.epochs.push(metrics.clone());
        let mut callback_state = Vec::new();
        for c in callbacks.iter() {
            callback_state.extend(c.state()?);
        }
        let state = TrainState {
            model,
            optimizer: &*optimizer,
            history: &history,
            callbacks: &callback_state,
        };
        if let Control::Stop(reason) = any_stop(callbacks, |c| c.on_epoch_end(&metrics, &state))? {
            history.stopped = Some(reason);
            break;
        }
    }
    for c in callbacks.iter_mut() {
        c.on_train_end(&history)?;
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seeds_differ_by_epoch_and_use() {
        let a = epoch_seed(0, 1, 1);
        assert_ne!(a, epoch_seed(0, 2, 1));
        assert_ne!(a, epoch_seed(0, 1, 2));
        assert_ne!(a, epoch_seed(1, 1, 1));
        assert_eq!(a, epoch_seed(0, 1, 1));
    }

    #[test]
    fn bad_configs_are_rejected_before_training() {
        let ok = FitConfig::default();
        assert!(ok.validate(100).is_ok());
        assert!(FitConfig {
            epochs: 0,
            ..ok.clone()
        }
        .validate(100)
        .is_err());
        assert!(FitConfig {
            batch_size: 0,
            ..ok.clone()
        }
        .validate(100)
        .is_err());
        assert!(FitConfig {
            validation_split: 1.0,
            ..ok.clone()
        }
        .validate(100)
        .is_err());
        assert!(ok.validate(0).is_err());
        // 100 images, 90 trained: no full batch of 128 when the remainder is dropped.
        let drop = FitConfig {
            drop_remainder: true,
            ..ok.clone()
        };
        assert!(drop.validate(100).is_err());
        assert_eq!(drop.steps_per_epoch(300), 2);
        assert_eq!(ok.steps_per_epoch(300), 3);
    }
}
