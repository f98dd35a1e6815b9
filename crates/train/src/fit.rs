//! `fit`: Keras' training loop semantics over CIFAR batches.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use simplecnn_cifar::LabeledImages;
use simplecnn_model::{DropoutRng, Mode, Model};

use crate::adam::Adam;
use crate::checkpoint::{load_checkpoint, save_checkpoint};
use crate::error::{Result, TrainError};
use crate::evaluate::evaluate_indices;
use crate::history::{EpochMetrics, History, StopReason};
use crate::loss::{categorical_cross_entropy, correct_count};

/// Stop when the validation loss (the training loss without validation data) has not improved
/// by more than `min_delta` for `patience` epochs, as Keras' `EarlyStopping`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub patience: usize,
    pub min_delta: f64,
}

/// Keras' `fit` arguments, plus the callbacks people expect.
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
    /// Off by default.
    pub early_stopping: Option<EarlyStopping>,
    /// Writes `last.*` after every epoch and `best.*` whenever the validation loss improves.
    pub checkpoint_dir: Option<PathBuf>,
    /// Print Keras' `verbose=2` line after each epoch (stdout) and a progress bar inside the
    /// epoch when stderr is a terminal.
    pub verbose: bool,
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
            early_stopping: None,
            checkpoint_dir: None,
            verbose: false,
        }
    }
}

impl FitConfig {
    /// How many of `data_len` images are trained on; the rest, the tail, is validation.
    /// Keras: `split_at = int(n * (1 - validation_split))`.
    pub fn split_at(&self, data_len: usize) -> usize {
        (data_len as f64 * (1.0 - self.validation_split)) as usize
    }

    pub fn validate(&self, data_len: usize) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
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
        if self.split_at(data_len) == 0 {
            return bad(format!("{data_len} images leave nothing to train on"));
        }
        Ok(())
    }
}

/// Derives an independent seed for one use in one epoch.
fn epoch_seed(seed: u64, epoch: usize, salt: u64) -> u64 {
    // splitmix64 of the combination: cheap, and distinct inputs give unrelated streams.
    let mut z = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Trains `model` on `data` with `adam`, as Keras' `model.fit(x, y, …)`.
pub fn fit(
    model: &Model,
    adam: &mut Adam,
    data: &LabeledImages,
    config: &FitConfig,
) -> Result<History> {
    fit_from(model, adam, data, config, History::default())
}

/// Continues the run checkpointed in `config.checkpoint_dir` (`last.*`): restores weights,
/// optimizer and history, then trains the remaining epochs.
pub fn resume(
    model: &Model,
    adam: &mut Adam,
    data: &LabeledImages,
    config: &FitConfig,
) -> Result<History> {
    let dir = config
        .checkpoint_dir
        .as_ref()
        .ok_or_else(|| TrainError::Config("resume needs a checkpoint directory".into()))?;
    let meta = load_checkpoint(dir, "last", model, adam)?;
    tracing::info!(epoch = meta.epoch, "resuming from {}", dir.display());
    fit_from(model, adam, data, config, meta.history)
}

fn fit_from(
    model: &Model,
    adam: &mut Adam,
    data: &LabeledImages,
    config: &FitConfig,
    mut history: History,
) -> Result<History> {
    config.validate(data.len())?;
    // Validation is the tail, taken before any shuffling.
    let split_at = config.split_at(data.len());
    let val_indices: Vec<usize> = (split_at..data.len()).collect();
    let mut best = history
        .epochs
        .iter()
        .map(|e| e.val_loss.unwrap_or(e.loss))
        .enumerate()
        .fold(None, |best: Option<(usize, f64)>, (i, l)| match best {
            Some((_, b)) if b <= l => best,
            _ => Some((i + 1, l)),
        });
    let steps = split_at.div_ceil(config.batch_size);
    let bar = if config.verbose && std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(steps as u64).with_style(
            indicatif::ProgressStyle::with_template("{pos}/{len} [{bar:30}] {elapsed} - {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };

    for epoch in history.epochs.len() + 1..=config.epochs {
        let start = Instant::now();
        let mut order: Vec<usize> = (0..split_at).collect();
        if config.shuffle {
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(epoch_seed(
                config.seed,
                epoch,
                1,
            )));
        }
        let mut dropout = DropoutRng::new(epoch_seed(config.seed, epoch, 2));
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        bar.reset();
        for (step, idx) in order.chunks(config.batch_size).enumerate() {
            let batch = data.batch(idx, model.device())?;
            let logits = model.logits(&batch.images, Mode::Training(&mut dropout))?;
            let loss = categorical_cross_entropy(&logits, &batch.one_hot)?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                let reason = StopReason::NonFiniteLoss {
                    epoch,
                    batch: step + 1,
                };
                tracing::error!("{reason}");
                bar.finish_and_clear();
                history.stopped = Some(reason);
                return Ok(history);
            }
            adam.step(&loss.backward()?)?;
            loss_sum += loss_value * idx.len() as f64;
            correct += correct_count(&logits, &batch.labels)?;
            let seen = (step * config.batch_size + idx.len()).min(split_at);
            bar.set_position(step as u64 + 1);
            bar.set_message(format!(
                "loss: {:.4} - acc: {:.4}",
                loss_sum / seen as f64,
                correct as f64 / seen as f64
            ));
            tracing::trace!(epoch, step, loss = loss_value);
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
            loss: loss_sum / split_at as f64,
            acc: correct as f64 / split_at as f64,
            val_loss: val.as_ref().map(|v| v.loss),
            val_acc: val.as_ref().map(|v| v.accuracy),
            learning_rate: adam.config.learning_rate,
            images_per_second: split_at as f64 / train_seconds,
        };
        bar.finish_and_clear();
        if config.verbose {
            println!("{}", metrics.keras_line(config.epochs));
        }
        tracing::info!(?metrics, "epoch done");
        let monitored = metrics.val_loss.unwrap_or(metrics.loss);
        history.epochs.push(metrics);

        let min_delta = config.early_stopping.map_or(0.0, |e| e.min_delta);
        let improved = best.is_none_or(|(_, b)| monitored < b - min_delta);
        if improved {
            best = Some((epoch, monitored));
        }
        if let Some(dir) = &config.checkpoint_dir {
            save_checkpoint(dir, "last", model, adam, &history)?;
            if improved {
                save_checkpoint(dir, "best", model, adam, &history)?;
            }
        }
        if let (Some(es), Some((best_epoch, best_loss))) = (config.early_stopping, best) {
            if epoch - best_epoch >= es.patience && epoch < config.epochs {
                let reason = StopReason::EarlyStopping {
                    best_epoch,
                    best: best_loss,
                };
                if config.verbose {
                    println!("{reason}");
                }
                history.stopped = Some(reason);
                break;
            }
        }
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
    }
}
