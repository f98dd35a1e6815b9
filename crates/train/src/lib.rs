//! Training for simplecnn models, with Keras' semantics.
//!
//! # Brief overview
//! * [`fit`] runs the loop: the last `validation_split` of the data held out before shuffling,
//!   the rest reshuffled each epoch, dropout on, [`Adam`] with Keras' defaults and update rule,
//!   cross-entropy through log-softmax ([`loss`]). It returns a [`History`] of
//!   [`EpochMetrics`] (written as CSV by [`History::write_csv`]).
//! * Callbacks people expect from Keras are options of [`FitConfig`]: checkpoints each epoch
//!   (the best by validation loss kept), [`resume`], [`EarlyStopping`], and a stop with a
//!   message when the loss becomes NaN.
//! * [`evaluate`] and [`predict`] run in inference mode.
//!
//! Data comes from `simplecnn-cifar` as `u8` images and becomes `f32` one batch at a time.
//! This crate never reads or writes model files (that is `store`'s job); its checkpoints are
//! its own safetensors files for resuming.
//!
//! # Example
//! ```no_run
//! use simplecnn_model::{zoo, Model};
//! use simplecnn_train::{fit, evaluate, Adam, AdamConfig, FitConfig};
//! let data = simplecnn_cifar::load(std::path::Path::new("data"))?;
//! let model = Model::new(zoo::simple_cnn(), &candle_core::Device::Cpu, 0)?;
//! let mut adam = Adam::new(model.vars(), AdamConfig::default())?;
//! let history = fit(&model, &mut adam, &data.train, &FitConfig { verbose: true, ..Default::default() })?;
//! let test = evaluate(&model, &data.test, 128)?;
//! println!("test loss: {:.4} - test accuracy: {:.4}", test.loss, test.accuracy);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod adam;
mod alloc;
mod checkpoint;
mod error;
mod evaluate;
mod fit;
mod history;
pub mod loss;

pub use adam::{Adam, AdamConfig};
pub use alloc::{keep_freed_memory, tune_cpu_runtime};
pub use checkpoint::{checkpoint_paths, load_checkpoint, save_checkpoint, CheckpointMeta};
pub use error::{Result, TrainError};
pub use evaluate::{evaluate, evaluate_indices, predict, Evaluation};
pub use fit::{fit, resume, EarlyStopping, FitConfig};
pub use history::{EpochMetrics, History, StopReason};
