//! One training step: forward in training mode, cross-entropy, backward, one optimizer
//! update. `fit`, the throughput harness and the criterion benchmarks all call this.

use candle_core::Tensor;
use simplecnn_cifar::Batch;
use simplecnn_model::{Mode, Model, TrainingPass};

use crate::error::Result;
use crate::loss::{correct_count, Loss};
use crate::optim::Optimizer;

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutput {
    /// The batch's mean loss per image before the update.
    pub loss: f64,
    /// Images whose largest logit was the label, before the update.
    pub correct: usize,
    pub images: usize,
}

/// Trains `model` on `batch` once: logits with dropout from `pass`, `loss` (the tutorial's
/// mean cross-entropy by default), its gradients, and `optimizer.step` at `learning_rate`.
///
/// `batch` is this process' share of a global batch (`pass.shard()` says where it lies; the
/// whole batch on one process): the loss is the global batch's, so every process computes the
/// same gradients (the ops fold their sums over the batch across processes) and applies the
/// same update. The loss and accuracy reported are the global batch's, from every image's
/// values added in image order.
pub fn train_step(
    model: &Model,
    optimizer: &mut dyn Optimizer,
    loss: &Loss,
    batch: &Batch,
    pass: &mut TrainingPass,
    learning_rate: f64,
) -> Result<StepOutput> {
    let shard = pass.shard().clone();
    let local = images(&batch.images)?;
    let global = shard.global(local);
    let logits = model.logits(&batch.images, Mode::Training(pass))?;
    let per_image = loss.per_image(&logits, &batch.one_hot)?;
    let objective = loss.reduce(&per_image, global)?;
    optimizer.step(&objective.backward()?, learning_rate)?;
    // Every process' per-image losses and correct count, in rank (so image) order.
    let mut mine: Vec<f64> = per_image
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    mine.push(correct_count(&logits, &batch.labels)? as f64);
    let gathered = shard
        .collective()
        .all_gather_f64(&mine)
        .map_err(|e| crate::error::TrainError::Config(format!("gathering the losses: {e}")))?;
    let (mut sum, mut correct) = (0f64, 0usize);
    for values in &gathered {
        let (count, losses) = values.split_last().unwrap_or((&0.0, &[]));
        sum += losses.iter().sum::<f64>();
        correct += *count as usize;
    }
    Ok(StepOutput {
        loss: sum / global.max(1) as f64,
        correct,
        images: global,
    })
}

fn images(x: &Tensor) -> Result<usize> {
    Ok(x.dim(0)?)
}
