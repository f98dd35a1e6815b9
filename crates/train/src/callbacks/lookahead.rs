//! airbench's lookahead: every `every` steps, an average of every weight of the model (the
//! moving statistics too) moves toward the weights, `avg += (1 - d)·(w - avg)` with
//! `d = decay^every · (step / total)^power`, and the model is reset to it; at the last step
//! the model becomes the average (`d = 1`). Early on `d` is near 0 (the average follows the
//! weights); near the end it is near `decay^every` (the weights follow the average).

use std::collections::HashMap;

use candle_core::Tensor;

use super::{BatchEnd, Callback, Control, TrainBegin};
use crate::error::{Result, TrainError};

/// The prefix of the average's tensors in a checkpoint: `lookahead/<layer>/<weight>`.
const STATE_PREFIX: &str = "lookahead";

#[derive(Debug)]
pub struct Lookahead {
    pub every: u64,
    pub decay: f64,
    pub power: f64,
    total: u64,
    /// The model's weights' paths (`layer/name`), in `average`'s order.
    names: Vec<String>,
    average: Vec<Tensor>,
}

impl Lookahead {
    /// airbench's settings: every 5 steps, 0.95, cubed.
    pub fn new(every: u64, decay: f64, power: f64) -> Self {
        Self {
            every: every.max(1),
            decay,
            power,
            total: 0,
            names: Vec::new(),
            average: Vec::new(),
        }
    }

    /// The decay at `step` of `total`.
    pub fn decay_at(&self, step: u64, total: u64) -> f64 {
        self.decay.powi(self.every as i32) * (step as f64 / total.max(1) as f64).powf(self.power)
    }
}

impl Callback for Lookahead {
    fn on_train_begin(&mut self, info: &TrainBegin<'_>) -> Result<()> {
        self.total = info.total_steps;
        self.names = info.model.weights().map(|w| w.path()).collect();
        self.average = info
            .model
            .weights()
            .map(|w| w.var.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        Ok(())
    }

    fn on_batch_end(&mut self, b: &BatchEnd<'_>) -> Result<Control> {
        let last = b.step >= self.total;
        if !last && !b.step.is_multiple_of(self.every) {
            return Ok(Control::Continue);
        }
        let d = if last {
            1.0
        } else {
            self.decay_at(b.step, self.total)
        };
        for (avg, w) in self.average.iter_mut().zip(b.model.weights()) {
            let current = w.var.as_tensor();
            *avg = (avg.affine(d, 0.0)? + current.affine(1.0 - d, 0.0)?)?.detach();
            w.var.set(avg)?;
        }
        Ok(Control::Continue)
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .names
            .iter()
            .zip(&self.average)
            .map(|(name, avg)| (format!("{STATE_PREFIX}/{name}"), avg.clone()))
            .collect())
    }

    fn restore_state(&mut self, saved: &HashMap<String, Tensor>) -> Result<()> {
        for (name, avg) in self.names.iter().zip(self.average.iter_mut()) {
            let key = format!("{STATE_PREFIX}/{name}");
            let t = saved.get(&key).ok_or_else(|| {
                TrainError::Config(format!(
                    "the checkpoint has no {key}: it holds no lookahead average (written \
                     without lookahead, or by an older version), so the run cannot resume exactly"
                ))
            })?;
            if t.dims() != avg.dims() {
                return Err(TrainError::Config(format!(
                    "the checkpoint's {key} has shape {:?}, the model's weight {:?}",
                    t.dims(),
                    avg.dims()
                )));
            }
            *avg = t.to_device(avg.device())?.to_dtype(avg.dtype())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use simplecnn_model::{Activation, FeatureShape, LayerKind, Model, Network};

    fn batch_end(model: &Model, step: u64) -> BatchEnd<'_> {
        BatchEnd {
            model,
            step,
            epoch: 1,
            batch: step as usize,
            loss: 1.0,
            mean_loss: 1.0,
            mean_acc: 0.0,
            learning_rate: 0.1,
        }
    }

    /// The average follows Keras-free arithmetic: `avg = d·avg + (1-d)·w` every `every`
    /// steps, the model reset to it; untouched between; the model is the average at the end.
    #[test]
    fn averages_every_k_steps_and_ends_on_the_average() {
        let mut s = Network::new("m", FeatureShape::Flat(2));
        s.add(LayerKind::dense(1, Activation::Linear)).unwrap();
        let model = Model::new(s, &Device::Cpu, 0).unwrap();
        let kernel = || model.weight("dense_1", "kernel").unwrap().var.clone();
        let set = |v: [f32; 2]| {
            kernel()
                .set(&Tensor::new(&[[v[0]], [v[1]]], &Device::Cpu).unwrap())
                .unwrap()
        };
        let get = || -> Vec<f32> {
            kernel()
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        set([1.0, 2.0]);
        let mut la = Lookahead::new(2, 0.5, 1.0);
        let begin = TrainBegin {
            model: &model,
            total_steps: 8,
            first_epoch: 1,
            epochs: 1,
            steps_per_epoch: 8,
            train_images: 8,
            validation_images: 0,
        };
        la.on_train_begin(&begin).unwrap();
        // Step 1: not a multiple of 2: nothing happens.
        set([3.0, 4.0]);
        la.on_batch_end(&batch_end(&model, 1)).unwrap();
        assert_eq!(get(), [3.0, 4.0]);
        // Step 2: d = 0.5² · (2/8) = 1/16: avg = avg/16 + 15/16 · w.
        la.on_batch_end(&batch_end(&model, 2)).unwrap();
        let d = 0.25f32 * 0.25;
        let expect = [d * 1.0 + (1.0 - d) * 3.0, d * 2.0 + (1.0 - d) * 4.0];
        for (a, b) in get().iter().zip(expect) {
            assert!((a - b).abs() < 1e-6);
        }
        // The last step: the model becomes the average, whatever the weights were.
        set([100.0, 100.0]);
        la.on_batch_end(&batch_end(&model, 8)).unwrap();
        for (a, b) in get().iter().zip(expect) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!((la.decay_at(8, 8) - 0.25).abs() < 1e-12);
    }
}
