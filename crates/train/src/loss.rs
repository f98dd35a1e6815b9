//! Categorical cross-entropy on logits, computed through log-softmax so it stays finite.

use candle_core::{Tensor, D};

use crate::error::Result;

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
