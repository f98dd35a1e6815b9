//! `evaluate` and `predict`, in inference mode (dropout off).

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use simplecnn_cifar::LabeledImages;
use simplecnn_collective::Collective;
use simplecnn_model::{Mode, Model};

use crate::error::{Result, TrainError};
use crate::fit::batch_share;
use crate::loss::categorical_cross_entropy;

/// Loss and accuracy over a set, with the confusion matrix (`confusion[true][predicted]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub loss: f64,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// The share of images whose class is among the `top_k` most probable (Keras'
    /// `top_k_categorical_accuracy`; ties broken towards the lower class index).
    pub top_k_accuracy: f64,
    /// 5, or the number of classes when there are fewer.
    pub top_k: usize,
    pub count: usize,
    pub per_class_accuracy: Vec<f64>,
    pub confusion: Vec<Vec<usize>>,
    /// The most confidently misclassified images, most confident first (at most
    /// [`MISTAKES_KEPT`]).
    pub mistakes: Vec<Mistake>,
}

/// An image the model got wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mistake {
    /// Its index in the evaluated set.
    pub index: usize,
    pub label: usize,
    pub predicted: usize,
    /// The probability the model gave `predicted`.
    pub probability: f64,
}

/// How many mistakes an [`Evaluation`] keeps.
pub const MISTAKES_KEPT: usize = 64;

/// The `k` most probable classes of `probabilities`, most probable first (ties: lower index
/// first, so results never depend on sort stability).
pub fn top_classes(probabilities: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    order.truncate(k);
    order
}

/// Test-time augmentation: logits averaged over views of each image (airbench's levels).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tta {
    /// The image alone.
    #[default]
    None,
    /// ½ the image + ½ its mirror.
    Mirror,
    /// ½ of `Mirror` on the image + ¼ of it on the image shifted one pixel down-right and ¼
    /// shifted up-left (reflect padding).
    MirrorTranslate,
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
    evaluate_with(model, data, indices, batch_size, Tta::None)
}

/// Index maps along one image axis of `len`: reversed, and shifted by `d` with reflection.
fn axis_map(
    len: usize,
    map: impl Fn(isize) -> isize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let n = len as isize;
    let idx: Vec<u32> = (0..n)
        .map(|i| {
            let j = map(i);
            let j = if j < 0 { -j } else { j };
            (if j >= n { 2 * (n - 1) - j } else { j }) as u32
        })
        .collect();
    Ok(Tensor::new(idx.as_slice(), device)?)
}

/// The logits of `x (N, C, H, W)` under `tta`.
pub fn tta_logits(model: &Model, x: &Tensor, tta: Tta) -> Result<Tensor> {
    let plain = |x: &Tensor| -> Result<Tensor> { Ok(model.logits(x, Mode::Inference)?) };
    if tta == Tta::None {
        return plain(x);
    }
    let (_, _, h, w) = x.dims4()?;
    let dev = x.device();
    let mirror = |x: &Tensor| -> Result<Tensor> {
        let flipped = x.index_select(&axis_map(w, |i| w as isize - 1 - i, dev)?, 3)?;
        Ok(((plain(x)? + plain(&flipped)?)? * 0.5)?)
    };
    let m = mirror(x)?;
    if tta == Tta::Mirror {
        return Ok(m);
    }
    let shifted = |d: isize| -> Result<Tensor> {
        Ok(x.index_select(&axis_map(h, |i| i + d, dev)?, 2)?
            .index_select(&axis_map(w, |i| i + d, dev)?, 3)?)
    };
    // Output (y, x) from input (y - 1, x - 1): airbench's padded[0:32]; then padded[2:34].
    let down_right = mirror(&shifted(-1)?)?;
    let up_left = mirror(&shifted(1)?)?;
    Ok(((m * 0.5)? + ((down_right + up_left)? * 0.25)?)?)
}

/// [`evaluate_indices`] with test-time augmentation: loss and accuracy of the averaged logits.
pub fn evaluate_with(
    model: &Model,
    data: &LabeledImages,
    indices: &[usize],
    batch_size: usize,
    tta: Tta,
) -> Result<Evaluation> {
    evaluate_keeping(model, data, indices, batch_size, tta, None)
}

/// [`evaluate`] and every image's class probabilities, in the set's order, from the same
/// pass (`evaluate --predictions`).
pub fn evaluate_with_probabilities(
    model: &Model,
    data: &LabeledImages,
    batch_size: usize,
) -> Result<(Evaluation, Vec<Vec<f32>>)> {
    let all: Vec<usize> = (0..data.len()).collect();
    let mut kept = Vec::with_capacity(data.len());
    let evaluation = evaluate_keeping(model, data, &all, batch_size, Tta::None, Some(&mut kept))?;
    Ok((evaluation, kept))
}

/// [`evaluate_with`], appending each image's class probabilities to `kept` when given.
fn evaluate_keeping(
    model: &Model,
    data: &LabeledImages,
    indices: &[usize],
    batch_size: usize,
    tta: Tta,
    mut kept: Option<&mut Vec<Vec<f32>>>,
) -> Result<Evaluation> {
    let classes = data.num_classes();
    let top_k = classes.min(5);
    let mut confusion = vec![vec![0usize; classes]; classes];
    let mut in_top_k = 0usize;
    let mut mistakes = Vec::new();
    let mut loss_sum = 0.0;
    let world = model.collective();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = data.batch(chunk, model.device())?;
        let logits = match world.size() {
            1 => tta_logits(model, &batch.images, tta)?,
            _ => shared_logits(model, world.as_ref(), &batch.images, classes, tta)?,
        };
        let loss = categorical_cross_entropy(&logits, &batch.one_hot)?.to_scalar::<f32>()? as f64;
        loss_sum += loss * chunk.len() as f64;
        let probabilities: Vec<Vec<f32>> = candle_nn::ops::softmax_last_dim(&logits)?
            .to_device(&Device::Cpu)?
            .to_vec2()?;
        for (&i, p) in chunk.iter().zip(&probabilities) {
            let label = data.label(i) as usize;
            let top = top_classes(p, top_k);
            let predicted = top[0];
            confusion[label][predicted] += 1;
            in_top_k += usize::from(top.contains(&label));
            if predicted != label {
                mistakes.push(Mistake {
                    index: i,
                    label,
                    predicted,
                    probability: p[predicted] as f64,
                });
            }
        }
        if let Some(kept) = kept.as_deref_mut() {
            kept.extend(probabilities);
        }
        // Keep the list short as we go: most confident first, then by index.
        if mistakes.len() > 4 * MISTAKES_KEPT {
            most_confident_first(&mut mistakes);
        }
    }
    most_confident_first(&mut mistakes);
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
        top_k_accuracy: if count == 0 {
            f64::NAN
        } else {
            in_top_k as f64 / count as f64
        },
        top_k,
        count,
        per_class_accuracy,
        confusion,
        mistakes,
    })
}

/// The logits of `images` on a model trained by several processes: each computes those of
/// its share (whole groups of 8 images, as in training, so every image's logits have the bits
/// one process gives them) and every process gets all of them, in image order.
fn shared_logits(
    model: &Model,
    world: &dyn Collective,
    images: &Tensor,
    classes: usize,
    tta: Tta,
) -> Result<Tensor> {
    let n = images.dim(0)?;
    let (first, count) = batch_share(n, world.size(), world.rank());
    let mine: Vec<f32> = match count {
        0 => Vec::new(),
        _ => tta_logits(model, &images.narrow(0, first, count)?, tta)?
            .flatten_all()?
            .to_vec1()?,
    };
    let all: Vec<f32> = world
        .all_gather_f32(&mine)
        .map_err(|e| TrainError::Config(format!("gathering the logits: {e}")))?
        .concat();
    if all.len() != n * classes {
        return Err(TrainError::Config(format!(
            "gathering the logits: {} values for {n} images of {classes} classes",
            all.len()
        )));
    }
    Ok(Tensor::from_vec(all, (n, classes), images.device())?)
}

fn most_confident_first(mistakes: &mut Vec<Mistake>) {
    mistakes.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then(a.index.cmp(&b.index))
    });
    mistakes.truncate(MISTAKES_KEPT);
}

/// Class probabilities of the images `x`: a softmax over the last layer's output before its
/// own softmax. The same as [`Model::forward`] for a model that ends in a softmax; a model that
/// ends in logits (or a ReLU trained on them) gets probabilities too.
pub fn class_probabilities(model: &Model, x: &Tensor) -> Result<Tensor> {
    let logits = model.logits(x, Mode::Inference)?;
    Ok(candle_nn::ops::softmax_last_dim(&logits)?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use simplecnn_model::{Activation, FeatureShape, LayerKind, Network};

    /// A Dense layer whose kernel is set by hand: every pixel is 1, every kernel row of class
    /// `c` is `c / 3072`, so class `c` gets logit `c` and the ranking is 6, 5, …, 0 with
    /// probabilities ∝ e^c.
    #[test]
    fn top_k_and_mistakes_follow_a_model_whose_answers_are_known() {
        let classes = 7;
        let mut s = Network::new("m", FeatureShape::image(3, 32, 32));
        s.add(LayerKind::Flatten).unwrap();
        s.add(LayerKind::dense(classes, Activation::Softmax))
            .unwrap();
        let model = Model::new(s, &Device::Cpu, 1).unwrap();
        let name = model.spec().layers()[1].name.clone();
        let inputs = 3 * 32 * 32;
        let w: Vec<f32> = (0..inputs)
            .flat_map(|_| (0..classes).map(|c| c as f32 / inputs as f32))
            .collect();
        let kernel = Tensor::from_vec(w, (inputs, classes), &Device::Cpu).unwrap();
        model.set_weight(&name, "kernel", &kernel).unwrap();
        let zeros = Tensor::zeros(classes, candle_core::DType::F32, &Device::Cpu).unwrap();
        model.set_weight(&name, "bias", &zeros).unwrap();
        // Pixel 255 (x = 1): the order is 6, 5, 4, 3, 2, 1, 0 with probabilities ∝ e^c.
        let labels: Vec<u8> = vec![6, 5, 2, 1, 0, 4];
        let data = LabeledImages::new(vec![255; labels.len() * inputs], labels, classes).unwrap();
        let e = evaluate(&model, &data, 4).unwrap();
        assert_eq!(e.top_k, 5);
        // Top-1: only label 6. Top-5 = {6, 5, 4, 3, 2}: labels 6, 5, 2, 4.
        assert!((e.accuracy - 1.0 / 6.0).abs() < 1e-12);
        assert!((e.top_k_accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(e.mistakes.len(), 5);
        let z: f64 = (0..classes).map(|c| (c as f64).exp()).sum();
        for m in &e.mistakes {
            assert_eq!(m.predicted, 6);
            assert!((m.probability - 6f64.exp() / z).abs() < 1e-5, "{m:?}");
        }
        // Equal confidence: ordered by index.
        let order: Vec<usize> = e.mistakes.iter().map(|m| m.index).collect();
        assert_eq!(order, vec![1, 2, 3, 4, 5]);
        assert_eq!(top_classes(&[0.1, 0.5, 0.1, 0.3], 3), vec![1, 3, 0]);
        // The same evaluation with every image's probabilities kept (two batches of 4 and 2).
        let (kept_eval, kept) = evaluate_with_probabilities(&model, &data, 4).unwrap();
        assert_eq!(kept_eval.loss.to_bits(), e.loss.to_bits());
        assert_eq!(kept_eval.accuracy, e.accuracy);
        assert_eq!(kept.len(), data.len());
        for p in &kept {
            for (c, &v) in p.iter().enumerate() {
                assert!((v as f64 - (c as f64).exp() / z).abs() < 1e-5, "{p:?}");
            }
        }
    }

    /// A model that is linear in its input (Flatten → Dense, no activation) turns the average
    /// of views into the view of the average: the TTA logits equal the logits of the images
    /// averaged by hand with airbench's weights and reflect padding.
    #[test]
    fn tta_averages_the_views_with_airbench_weights() {
        let mut s = Network::new("m", FeatureShape::image(1, 4, 5));
        s.add(LayerKind::Flatten).unwrap();
        s.add(LayerKind::dense(3, Activation::Linear)).unwrap();
        let model = Model::new(s, &Device::Cpu, 1).unwrap();
        let (h, w) = (4usize, 5usize);
        let img: Vec<f32> = (0..h * w).map(|i| (i * i % 7) as f32).collect();
        let at = |y: isize, x: isize| {
            let r = |i: isize, n: usize| {
                let i = i.abs();
                (if i >= n as isize {
                    2 * (n as isize - 1) - i
                } else {
                    i
                }) as usize
            };
            img[r(y, h) * w + r(x, w)]
        };
        let view = |d: isize, flip: bool| -> Vec<f32> {
            (0..h as isize)
                .flat_map(|y| {
                    (0..w as isize).map(move |x| {
                        let x = if flip { w as isize - 1 - x } else { x };
                        (y, x)
                    })
                })
                .map(|(y, x)| at(y + d, x + d))
                .collect()
        };
        let mut expected = vec![0f32; h * w];
        for (d, weight) in [(0, 0.25f32), (-1, 0.125), (1, 0.125)] {
            for flip in [false, true] {
                for (e, v) in expected.iter_mut().zip(view(d, flip)) {
                    *e += weight * v;
                }
            }
        }
        let x = Tensor::from_vec(img.clone(), (1, 1, h, w), &Device::Cpu).unwrap();
        let avg = Tensor::from_vec(expected, (1, 1, h, w), &Device::Cpu).unwrap();
        let got: Vec<f32> = tta_logits(&model, &x, Tta::MirrorTranslate)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = model
            .logits(&avg, Mode::Inference)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{got:?} vs {want:?}");
        }
        let plain: Vec<f32> = tta_logits(&model, &x, Tta::None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(plain, got);
    }
}
