//! Categorical cross-entropy on logits, computed through log-softmax so it stays finite, with
//! Keras' label smoothing and a choice of mean or sum over the batch.

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How a batch's per-image losses become the value gradients are taken of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// Keras' default: the mean over the batch.
    #[default]
    Mean,
    /// The sum over the batch (PyTorch's `reduction="sum"`), as airbench trains.
    Sum,
}

/// Keras' `CategoricalCrossentropy(from_logits=True, label_smoothing)`: targets
/// `(1 - s)·one_hot + s / classes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Loss {
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default)]
    pub reduction: Reduction,
}

impl Loss {
    pub fn validate(&self) -> Result<()> {
        match (0.0..1.0).contains(&self.label_smoothing) {
            true => Ok(()),
            false => Err(TrainError::Config(format!(
                "label_smoothing {} is not in [0, 1)",
                self.label_smoothing
            ))),
        }
    }

    /// The value to differentiate (mean or sum over the batch) of `logits (N, K)` against
    /// `one_hot (N, K)`.
    pub fn objective(&self, logits: &Tensor, one_hot: &Tensor) -> Result<Tensor> {
        let per_image = self.per_image(logits, one_hot)?;
        self.reduce(&per_image, logits.dim(0)?)
    }

    /// Each row's cross-entropy: `(N,)`.
    pub fn per_image(&self, logits: &Tensor, one_hot: &Tensor) -> Result<Tensor> {
        let s = self.label_smoothing;
        let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        Ok(if s == 0.0 {
            // The tutorial's loss, kept op for op so its runs repeat to the last digit.
            (one_hot * log_p)?.sum(D::Minus1)?.neg()?
        } else {
            let k = one_hot.dim(D::Minus1)? as f64;
            let target = one_hot.affine(1.0 - s, s / k)?;
            (target * log_p)?.sum(D::Minus1)?.neg()?
        })
    }

    /// The objective of a global batch of `global` images from this process' per-image
    /// losses: their sum, divided by `global` for the mean. Its gradient for an image is the
    /// same whichever process holds the image.
    pub fn reduce(&self, per_image: &Tensor, global: usize) -> Result<Tensor> {
        let sum = per_image.sum_all()?;
        Ok(match self.reduction {
            // `mean_all`'s own arithmetic (a sum, then an affine by 1/N) with the global N.
            Reduction::Mean => sum.affine(1.0 / global.max(1) as f64, 0.0)?,
            Reduction::Sum => sum,
        })
    }
}

/// Mean over the batch of `-sum(one_hot * log_softmax(logits))`: a scalar tensor.
pub fn categorical_cross_entropy(logits: &Tensor, one_hot: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok((one_hot * log_p)?.sum(D::Minus1)?.neg()?.mean_all()?)
}

/// How many rows' largest logit is at the labelled class.
pub fn correct_count(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    Ok(pred
        .eq(labels)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Label smoothing and sum reduction against the formula written out.
    #[test]
    fn label_smoothing_and_sum_follow_keras_formula() {
        let dev = Device::Cpu;
        let logits = [[1.0f64, 2.0, 3.0], [0.5, -1.0, 0.0]];
        let labels = [2usize, 0];
        let one_hot = Tensor::new(&[[0.0f32, 0.0, 1.0], [1.0, 0.0, 0.0]], &dev).unwrap();
        let t = Tensor::new(&[[1.0f32, 2.0, 3.0], [0.5, -1.0, 0.0]], &dev).unwrap();
        let s = 0.2;
        let mut expected = 0.0;
        for (row, &label) in logits.iter().zip(&labels) {
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            for (k, v) in row.iter().enumerate() {
                let target = if k == label { 1.0 - s } else { 0.0 } + s / 3.0;
                expected -= target * (v - lse);
            }
        }
        let loss = Loss {
            label_smoothing: s,
            reduction: Reduction::Sum,
        };
        let got = loss
            .objective(&t, &one_hot)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        // This process' two images of a global batch of four: the mean divides by four.
        let global_mean = Loss {
            reduction: Reduction::Mean,
            ..loss
        }
        .reduce(&loss.per_image(&t, &one_hot).unwrap(), 4)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
        assert!((global_mean - expected / 4.0).abs() < 1e-5, "{global_mean}");
        let mean = Loss {
            label_smoothing: s,
            reduction: Reduction::Mean,
        };
        let got = mean
            .objective(&t, &one_hot)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((got - expected / 2.0).abs() < 1e-5);
        // No smoothing, mean: the tutorial's loss.
        let plain = Loss::default().objective(&t, &one_hot).unwrap();
        let reference = categorical_cross_entropy(&t, &one_hot).unwrap();
        assert_eq!(
            plain.to_scalar::<f32>().unwrap(),
            reference.to_scalar::<f32>().unwrap()
        );
        assert!(Loss {
            label_smoothing: 1.0,
            ..Loss::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn matches_the_definition_and_stays_finite() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32, 2.0, 3.0], [1000.0, 0.0, -1000.0]], &dev).unwrap();
        let one_hot = Tensor::new(&[[0.0f32, 0.0, 1.0], [0.0, 1.0, 0.0]], &dev).unwrap();
        let loss = categorical_cross_entropy(&logits, &one_hot)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let row0 = -(3.0f64 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln());
        let row1 = 1000.0; // log-softmax of the middle class is -1000 (to f32 precision)
        assert!(((loss as f64) - (row0 + row1) / 2.0).abs() < 1e-3, "{loss}");
    }

    /// Finite differences agree with the autograd gradient of the loss.
    #[test]
    fn gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let init = [0.3f32, -1.2, 0.7, 2.0, 0.1, -0.4];
        let x = Var::new(&init, &dev).unwrap();
        let one_hot = Tensor::new(&[[0.0f32, 1.0, 0.0], [1.0, 0.0, 0.0]], &dev).unwrap();
        let f = |v: &Tensor| {
            let target = one_hot.to_dtype(v.dtype()).unwrap();
            categorical_cross_entropy(&v.reshape((2, 3)).unwrap(), &target).unwrap()
        };
        let grads = f(x.as_tensor()).backward().unwrap();
        let g: Vec<f32> = grads.get(&x).unwrap().to_vec1().unwrap();
        let h = 1e-2f64;
        for i in 0..init.len() {
            let at = |d: f64| {
                let mut p: Vec<f64> = init.iter().map(|&v| v as f64).collect();
                p[i] += d;
                let t = Tensor::new(p.as_slice(), &dev).unwrap();
                f(&t).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (numeric - g[i] as f64).abs() < 1e-3,
                "coordinate {i}: {numeric} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn counts_correct_predictions() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[0.1f32, 0.9], [0.8, 0.2], [0.3, 0.7]], &dev).unwrap();
        let labels = Tensor::new(&[1u32, 1, 1], &dev).unwrap();
        assert_eq!(correct_count(&logits, &labels).unwrap(), 2);
    }
}
