//! Training for simplecnn models, with Keras' semantics.
//!
//! # Brief overview
//! * [`fit`] runs the loop: the last `validation_split` of the data held out before shuffling,
//!   the rest reshuffled each epoch, one [`train_step`] per batch (dropout on, cross-entropy
//!   through log-softmax ([`loss`]), one [`Optimizer`] update at the rate a [`Schedule`]
//!   gives). It returns a [`History`] of [`EpochMetrics`] (CSV by [`History::write_csv`]).
//! * [`Optimizer`] is the seam: [`Adam`] with Keras' defaults and update rule; state is named
//!   by weight (`conv2d_1/kernel/m`), never paired by position.
//! * [`callbacks`]: Keras' hooks ([`Callback`]); [`ModelCheckpoint`] (with [`resume`]),
//!   [`EarlyStopping`], [`CsvLogger`], [`TerminateOnNaN`]. This crate prints nothing: logs
//!   and progress bars are callbacks of the program that trains.
//! * [`evaluate`] and [`predict`] run in inference mode.
//!
//! Data comes from `simplecnn-cifar` as `u8` images and becomes `f32` one batch at a time.
//! This crate never reads or writes model files (that is `store`'s job); its checkpoints are
//! its own safetensors files for resuming.
//!
//! # Example
//! ```no_run
//! use simplecnn_model::{zoo, Model};
//! use simplecnn_train::{evaluate, fit, trainable_params, Adam, AdamConfig, Constant, FitConfig};
//! let data = simplecnn_cifar::load(std::path::Path::new("data"))?;
//! let model = Model::new(zoo::simple_cnn(), &candle_core::Device::Cpu, 0)?;
//! let mut adam = Adam::new(trainable_params(&model), AdamConfig::default())?;
//! let schedule = Constant { learning_rate: 1e-3 };
//! let history = fit(&model, &mut adam, &schedule, &data.train, &FitConfig::default(), &mut [])?;
//! let test = evaluate(&model, &data.test, 128)?;
//! println!("test loss: {:.4} - test accuracy: {:.4}", test.loss, test.accuracy);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod alloc;
pub mod callbacks;
mod checkpoint;
mod error;
mod evaluate;
mod fit;
mod history;
pub mod loss;
pub mod optim;
pub mod schedule;
mod step;

pub use alloc::{keep_freed_memory, tune_cpu_runtime};
pub use callbacks::{
    Callback, Control, CsvLogger, EarlyStopping, Lookahead, ModelCheckpoint, Monitor, MonitorMode,
    TensorBoard, TerminateOnNaN,
};
pub use checkpoint::{
    checkpoint_paths, load_checkpoint, load_checkpoint_weights, save_checkpoint, CheckpointMeta,
    LoadedCheckpoint,
};
pub use error::{Result, TrainError};
pub use evaluate::{
    class_probabilities, evaluate, evaluate_indices, evaluate_with, evaluate_with_probabilities,
    predict, top_classes, tta_logits, Evaluation, Mistake, Tta, MISTAKES_KEPT,
};
pub use fit::{batch_share, fit, resume, FitConfig, Freeze};
pub use history::{EpochMetrics, History, StopReason};
pub use optim::{
    trainable_params, Adam, AdamConfig, Optimizer, OptimizerState, Param, ParamGroup, Sgd,
    SgdConfig,
};
pub use schedule::{Constant, PiecewiseLinear, Schedule};
pub use step::{train_step, StepOutput};
