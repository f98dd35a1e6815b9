//! One training step: forward in training mode, cross-entropy, backward, one optimizer
//! update. `fit`, the throughput harness and the criterion benchmarks all call this.

use candle_core::Tensor;
use simplecnn_cifar::Batch;
use simplecnn_model::{DropoutRng, Mode, Model};

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

/// Trains `model` on `batch` once: logits with dropout from `dropout`, `loss` (the tutorial's
/// mean cross-entropy by default), its gradients, and `optimizer.step` at `learning_rate`.
pub fn train_step(
    model: &Model,
    optimizer: &mut dyn Optimizer,
    loss: &Loss,
    batch: &Batch,
    dropout: &mut DropoutRng,
    learning_rate: f64,
) -> Result<StepOutput> {
    let logits = model.logits(&batch.images, Mode::Training(dropout))?;
    let objective = loss.objective(&logits, &batch.one_hot)?;
    let value = objective.to_scalar::<f32>()? as f64;
    optimizer.step(&objective.backward()?, learning_rate)?;
    let images = images(&batch.images)?;
    Ok(StepOutput {
        loss: loss.mean_per_image(value, images),
        correct: correct_count(&logits, &batch.labels)?,
        images,
    })
}

fn images(x: &Tensor) -> Result<usize> {
    Ok(x.dim(0)?)
}
