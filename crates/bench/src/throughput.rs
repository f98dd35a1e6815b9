//! Training steps and inference batches of the tutorial's model on real images, timed one by one.

use std::time::Instant;

use candle_core::Device;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use simplecnn_cifar::LabeledImages;
use simplecnn_model::ops::BatchShard;
use simplecnn_model::{zoo, Kernels, Mode, Model, TrainingPass};
use simplecnn_train::{
    batch_share, loss::Loss, train_step, trainable_params, Adam, AdamConfig, Optimizer, TrainError,
};

use crate::process::{cpu_seconds, peak_rss_mib};

/// Multiply-adds of one SimpleCNN forward pass per image (conv 884 736 + 4 718 592, dense
/// 524 288 + 1 280). A training step costs about three forward passes.
pub const FORWARD_MACS_PER_IMAGE: u64 = 6_128_896;

/// The images one epoch of the tutorial's recipe touches.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct EpochShape {
    /// Trained on (the first 90 % of 50 000).
    pub train_images: usize,
    /// Predicted for val_loss / val_acc (the last 10 %).
    pub validation_images: usize,
}

pub const EPOCH: EpochShape = EpochShape {
    train_images: 45_000,
    validation_images: 5_000,
};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Train(#[from] TrainError),
    #[error("{0}")]
    Model(#[from] simplecnn_model::ModelError),
    #[error("{0}")]
    Data(#[from] simplecnn_cifar::CifarError),
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct BenchConfig {
    pub batch_size: usize,
    /// Steps run before timing starts (first-touch allocations, caches).
    pub warmup_steps: usize,
    pub train_steps: usize,
    pub inference_images: usize,
    pub inference_batch: usize,
    pub seed: u64,
    #[serde(skip)]
    pub kernels: Kernels,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            batch_size: 128,
            warmup_steps: 3,
            train_steps: 30,
            inference_images: 5_000,
            inference_batch: 1_000,
            seed: 0,
            kernels: Kernels::Fast,
        }
    }
}

/// One measurement; per-epoch figures follow [`EPOCH`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThroughputReport {
    pub train_steps: usize,
    pub batch_size: usize,
    pub train_step_ms_median: f64,
    pub train_images_per_s: f64,
    /// CPU time of all threads over the timed steps, per step.
    pub train_cpu_ms_per_step: f64,
    pub train_gflop_per_s: f64,
    pub inference_images: usize,
    pub inference_batch: usize,
    pub inference_batch_ms_median: f64,
    pub inference_images_per_s: f64,
    pub inference_cpu_ms_per_1000: f64,
    pub inference_gflop_per_s: f64,
    /// Training 45 000 images and predicting 5 000, at the measured rates.
    pub cpu_s_per_epoch: f64,
    pub wall_s_per_epoch: f64,
    pub peak_rss_mib: f64,
    /// Mean loss of the timed steps: a sanity check that the steps trained something.
    pub mean_train_loss: f64,
}

/// The middle value (the mean of the two middle ones for an even count); NaN for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// What a timed run trains: a model with its optimizer, loss and learning rate (the
/// tutorial's SimpleCNN with Adam by default; any experiment's through the CLI).
pub struct Workload {
    pub model: Model,
    pub optimizer: Box<dyn Optimizer>,
    pub loss: Loss,
    pub learning_rate: f64,
}

impl Workload {
    /// A fresh SimpleCNN with Keras' Adam, seeded.
    pub fn simple_cnn(device: &Device, seed: u64, kernels: Kernels) -> Result<Self, BenchError> {
        let mut model = Model::new(zoo::simple_cnn(), device, seed)?;
        model.set_kernels(kernels)?;
        let adam = Adam::new(trainable_params(&model), AdamConfig::default())?;
        Ok(Self {
            learning_rate: adam.config.learning_rate,
            optimizer: Box::new(adam),
            model,
            loss: Loss::default(),
        })
    }
}

/// Trains a fresh SimpleCNN for `warmup_steps + train_steps` batches of `train` (seeded order,
/// wrapping around), then predicts `inference_images` images of `test` (wrapping around).
pub fn measure(
    train: &LabeledImages,
    test: &LabeledImages,
    device: &Device,
    config: &BenchConfig,
) -> Result<RawMeasurement, BenchError> {
    let mut workload = Workload::simple_cnn(device, config.seed, config.kernels)?;
    measure_workload(&mut workload, train, test, device, config)
}

/// [`measure`] for any model and optimizer: `warmup_steps + train_steps` training steps of
/// `config.batch_size` images, then `inference_images` predicted.
pub fn measure_workload(
    workload: &mut Workload,
    train: &LabeledImages,
    test: &LabeledImages,
    device: &Device,
    config: &BenchConfig,
) -> Result<RawMeasurement, BenchError> {
    let c = config;
    if c.batch_size == 0 || c.train_steps == 0 || c.inference_batch == 0 || c.inference_images == 0
    {
        return Err(BenchError::Config(
            "batch sizes, steps and image counts must be at least 1".into(),
        ));
    }
    if train.len() < c.batch_size || test.is_empty() {
        return Err(BenchError::Config(format!(
            "need at least {} training images and 1 test image, got {} and {}",
            c.batch_size,
            train.len(),
            test.len()
        )));
    }
    let (model, learning_rate) = (&workload.model, workload.learning_rate);
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(c.seed));
    let mut dropout = TrainingPass::new(c.seed);
    // On several processes (under mpirun), each trains its share of every batch.
    let world = model.collective();

    let (mut step_ms, mut loss_sum, mut cpu_start) = (Vec::new(), 0.0, cpu_seconds());
    for step in 0..c.warmup_steps + c.train_steps {
        if step == c.warmup_steps {
            cpu_start = cpu_seconds();
        }
        let idx: Vec<usize> = (0..c.batch_size)
            .map(|i| order[(step * c.batch_size + i) % order.len()])
            .collect();
        let (first, count) = batch_share(c.batch_size, world.size(), world.rank());
        let shard = BatchShard::new(c.batch_size, first, world.clone());
        dropout.start_batch((step * c.batch_size + first) as u64, shard);
        let batch = train.batch(&idx[first..first + count], device)?;
        let start = Instant::now();
        let loss = train_step(
            model,
            workload.optimizer.as_mut(),
            &workload.loss,
            &batch,
            &mut dropout,
            learning_rate,
        )?
        .loss;
        if step >= c.warmup_steps {
            step_ms.push(start.elapsed().as_secs_f64() * 1e3);
            loss_sum += loss;
        }
    }
    let train_cpu_seconds = cpu_seconds() - cpu_start;

    let batches = c.inference_images.div_ceil(c.inference_batch);
    let (mut batch_ms, mut predicted) = (Vec::new(), 0);
    let cpu_start = cpu_seconds();
    for b in 0..batches {
        let n = c.inference_batch.min(c.inference_images - predicted);
        let idx: Vec<usize> = (0..n)
            .map(|i| (b * c.inference_batch + i) % test.len())
            .collect();
        let batch = test.batch(&idx, device)?;
        let start = Instant::now();
        let probs = model.forward(&batch.images, Mode::Inference)?;
        // Bring the result to the host, as `predict` does, so lazy devices finish the work.
        let _ = probs.to_vec2::<f32>()?;
        // A short last batch counts as its share of a full one.
        batch_ms.push(start.elapsed().as_secs_f64() * 1e3 * c.inference_batch as f64 / n as f64);
        predicted += n;
    }
    Ok(RawMeasurement {
        batch_size: c.batch_size,
        forward_macs_per_image: model.spec().forward_macs(),
        step_ms,
        train_cpu_seconds,
        mean_train_loss: loss_sum / c.train_steps as f64,
        inference_batch: c.inference_batch,
        batch_ms,
        inference_images: predicted,
        inference_cpu_seconds: cpu_seconds() - cpu_start,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// What a harness records; ours and the reference scripts write the same fields, and
/// [`RawMeasurement::report`] derives every figure from them with one formula.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RawMeasurement {
    pub batch_size: usize,
    /// Multiply-adds of one image's forward pass (SimpleCNN's when a harness leaves it out).
    #[serde(default = "simple_cnn_macs")]
    pub forward_macs_per_image: u64,
    /// Wall time of each timed training step (forward, backward, optimizer update).
    pub step_ms: Vec<f64>,
    /// CPU time of the process, all threads, over the timed steps.
    pub train_cpu_seconds: f64,
    pub mean_train_loss: f64,
    pub inference_batch: usize,
    /// Wall time of each inference batch.
    pub batch_ms: Vec<f64>,
    pub inference_images: usize,
    pub inference_cpu_seconds: f64,
    pub peak_rss_mib: f64,
}

fn simple_cnn_macs() -> u64 {
    FORWARD_MACS_PER_IMAGE
}

impl RawMeasurement {
    /// One measurement out of several runs of the same thing: all timings pooled, CPU time
    /// and images added up, the largest peak RSS.
    pub fn pooled(runs: &[RawMeasurement]) -> Option<RawMeasurement> {
        let first = runs.first()?;
        let mut all = first.clone();
        for r in &runs[1..] {
            all.step_ms.extend(&r.step_ms);
            all.batch_ms.extend(&r.batch_ms);
            all.train_cpu_seconds += r.train_cpu_seconds;
            all.inference_cpu_seconds += r.inference_cpu_seconds;
            all.inference_images += r.inference_images;
            all.peak_rss_mib = all.peak_rss_mib.max(r.peak_rss_mib);
        }
        let steps = all.step_ms.len().max(1) as f64;
        all.mean_train_loss = runs
            .iter()
            .map(|r| r.mean_train_loss * r.step_ms.len() as f64)
            .sum::<f64>()
            / steps;
        Some(all)
    }

    pub fn report(&self) -> ThroughputReport {
        let train_steps = self.step_ms.len().max(1);
        let train_step_ms_median = median(self.step_ms.clone());
        let train_images_per_s = self.batch_size as f64 / (train_step_ms_median / 1e3);
        let inference_batch_ms_median = median(self.batch_ms.clone());
        let inference_images_per_s =
            self.inference_batch as f64 / (inference_batch_ms_median / 1e3);
        let train_cpu_per_image = self.train_cpu_seconds / (train_steps * self.batch_size) as f64;
        let inference_cpu_per_image =
            self.inference_cpu_seconds / self.inference_images.max(1) as f64;
        let flop = 2.0 * self.forward_macs_per_image as f64;
        ThroughputReport {
            train_steps,
            batch_size: self.batch_size,
            train_step_ms_median,
            train_images_per_s,
            train_cpu_ms_per_step: self.train_cpu_seconds / train_steps as f64 * 1e3,
            train_gflop_per_s: 3.0 * flop * train_images_per_s / 1e9,
            inference_images: self.inference_images,
            inference_batch: self.inference_batch,
            inference_batch_ms_median,
            inference_images_per_s,
            inference_cpu_ms_per_1000: inference_cpu_per_image * 1e6,
            inference_gflop_per_s: flop * inference_images_per_s / 1e9,
            cpu_s_per_epoch: train_cpu_per_image * EPOCH.train_images as f64
                + inference_cpu_per_image * EPOCH.validation_images as f64,
            wall_s_per_epoch: EPOCH.train_images as f64 / train_images_per_s
                + EPOCH.validation_images as f64 / inference_images_per_s,
            peak_rss_mib: self.peak_rss_mib,
            mean_train_loss: self.mean_train_loss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(n: usize, seed: u8) -> LabeledImages {
        let pixels = (0..n * 3072)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        LabeledImages::new(pixels, labels, 10).unwrap()
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn a_tiny_run_reports_consistent_figures() {
        let config = BenchConfig {
            batch_size: 8,
            warmup_steps: 1,
            train_steps: 3,
            inference_images: 20,
            inference_batch: 16,
            ..BenchConfig::default()
        };
        let r = measure(&tiny(12, 7), &tiny(5, 3), &Device::Cpu, &config)
            .unwrap()
            .report();
        assert_eq!(r.inference_images, 20);
        assert!(r.train_step_ms_median > 0.0 && r.inference_batch_ms_median > 0.0);
        let want = 8.0 / (r.train_step_ms_median / 1e3);
        assert!((r.train_images_per_s - want).abs() < 1e-9 * want);
        assert!(r.mean_train_loss.is_finite() && r.mean_train_loss > 0.0);
        assert!(r.cpu_s_per_epoch >= 0.0 && r.peak_rss_mib > 0.0);
        // Three forward passes' worth of multiply-adds, two flops each.
        let gflop = 6.0 * FORWARD_MACS_PER_IMAGE as f64 * r.train_images_per_s / 1e9;
        assert!((r.train_gflop_per_s - gflop).abs() < 1e-9 * gflop);
    }

    #[test]
    fn any_workload_is_timed_with_its_own_multiply_adds() {
        use simplecnn_model::{
            Activation, ActivationConfig, BatchNormConfig, FeatureShape, LayerKind, Network,
            Padding,
        };
        use simplecnn_train::{Sgd, SgdConfig};
        let mut spec = Network::new("small", FeatureShape::image(3, 32, 32));
        spec.add(LayerKind::conv2d(4, 3, Padding::Same, Activation::Linear))
            .unwrap()
            .add(LayerKind::BatchNorm(BatchNormConfig::default()))
            .unwrap()
            .add(LayerKind::Activation(ActivationConfig {
                activation: Activation::Gelu,
            }))
            .unwrap()
            .add(LayerKind::Flatten)
            .unwrap()
            .add(LayerKind::dense(10, Activation::Softmax))
            .unwrap();
        let macs = (32 * 32 * 4 * 27 + 32 * 32 * 4 * 10) as u64;
        assert_eq!(spec.forward_macs(), macs);
        let model = Model::new(spec, &Device::Cpu, 1).unwrap();
        let sgd = Sgd::new(trainable_params(&model), SgdConfig::default()).unwrap();
        let mut workload = Workload {
            model,
            optimizer: Box::new(sgd),
            loss: Loss::default(),
            learning_rate: 0.01,
        };
        let config = BenchConfig {
            batch_size: 4,
            warmup_steps: 0,
            train_steps: 2,
            inference_images: 3,
            inference_batch: 3,
            ..BenchConfig::default()
        };
        let raw = measure_workload(
            &mut workload,
            &tiny(6, 5),
            &tiny(3, 2),
            &Device::Cpu,
            &config,
        )
        .unwrap();
        assert_eq!(raw.forward_macs_per_image, macs);
        let r = raw.report();
        let gflop = 6.0 * macs as f64 * r.train_images_per_s / 1e9;
        assert!((r.train_gflop_per_s - gflop).abs() < 1e-9 * gflop);
        assert!(r.mean_train_loss.is_finite());
    }

    #[test]
    fn per_epoch_figures_follow_the_raw_numbers() {
        let raw = RawMeasurement {
            batch_size: 100,
            forward_macs_per_image: FORWARD_MACS_PER_IMAGE,
            step_ms: vec![200.0, 100.0, 300.0],
            train_cpu_seconds: 0.6,
            mean_train_loss: 2.0,
            inference_batch: 1000,
            batch_ms: vec![500.0, 500.0],
            inference_images: 2000,
            inference_cpu_seconds: 2.0,
            peak_rss_mib: 1.0,
        };
        let r = raw.report();
        assert_eq!(r.train_images_per_s, 500.0);
        // Pooling a run with itself changes no rate.
        let twice = RawMeasurement::pooled(&[raw.clone(), raw.clone()]).unwrap();
        assert_eq!(twice.step_ms.len(), 6);
        assert_eq!(twice.report().cpu_s_per_epoch, r.cpu_s_per_epoch);
        assert_eq!(r.inference_images_per_s, 2000.0);
        assert!((r.train_cpu_ms_per_step - 200.0).abs() < 1e-9);
        // 45 000 images at 2 ms CPU each, 5 000 at 1 ms.
        assert!((r.cpu_s_per_epoch - (90.0 + 5.0)).abs() < 1e-9);
        assert!((r.wall_s_per_epoch - (90.0 + 2.5)).abs() < 1e-9);
    }

    #[test]
    fn too_little_data_is_an_error() {
        let err = measure(
            &tiny(4, 1),
            &tiny(1, 1),
            &Device::Cpu,
            &BenchConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("need at least 128"), "{err}");
    }
}
