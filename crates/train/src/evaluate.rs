//! `evaluate` and `predict`, in inference mode (dropout off).

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use simplecnn_cifar::LabeledImages;
use simplecnn_model::{Mode, Model};

use crate::error::Result;
use crate::loss::categorical_cross_entropy;

/// Loss and accuracy over a set, with the confusion matrix (`confusion[true][predicted]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub count: usize,
    pub per_class_accuracy: Vec<f64>,
    pub confusion: Vec<Vec<usize>>,
}

/// Keras' `model.evaluate(x, y)` over all of `data`.
pub fn evaluate(model: &Model, data: &LabeledImages, batch_size: usize) -> Result<Evaluation> {
    let all: Vec<usize> = (0..data.len()).collect();
    evaluate_indices(model, data, &all, batch_size)
}

/// [`evaluate`] over the images at `indices`.
pub fn evaluate_indices(
    model: &Model,
    data: &LabeledImages,
    indices: &[usize],
    batch_size: usize,
) -> Result<Evaluation> {
    let classes = data.num_classes();
    let mut confusion = vec![vec![0usize; classes]; classes];
    let mut loss_sum = 0.0;
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = data.batch(chunk, model.device())?;
        let logits = model.logits(&batch.images, Mode::Inference)?;
        let loss = categorical_cross_entropy(&logits, &batch.one_hot)?.to_scalar::<f32>()? as f64;
        loss_sum += loss * chunk.len() as f64;
        let pred: Vec<u32> = logits.argmax(candle_core::D::Minus1)?.to_vec1()?;
        for (&i, &p) in chunk.iter().zip(&pred) {
            confusion[data.label(i) as usize][p as usize] += 1;
        }
    }
    let count = indices.len();
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    let per_class_accuracy = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let n: usize = row.iter().sum();
            if n == 0 {
                0.0
            } else {
                row[c] as f64 / n as f64
            }
        })
        .collect();
    Ok(Evaluation {
        loss: if count == 0 {
            f64::NAN
        } else {
            loss_sum / count as f64
        },
        accuracy: if count == 0 {
            f64::NAN
        } else {
            correct as f64 / count as f64
        },
        count,
        per_class_accuracy,
        confusion,
    })
}

/// Keras' `model.predict(x)`: class probabilities `(N, classes)`, on the CPU.
pub fn predict(model: &Model, data: &LabeledImages, batch_size: usize) -> Result<Tensor> {
    let mut parts = Vec::new();
    for batch in data.batches(batch_size, model.device()) {
        let batch = batch?;
        parts.push(
            model
                .forward(&batch.images, Mode::Inference)?
                .to_device(&Device::Cpu)?,
        );
    }
    Ok(Tensor::cat(&parts, 0)?)
}
