//! Callbacks with Keras' hooks: `fit` calls them at the start and end of training, of each
//! epoch and after each batch; any of them can stop training. `fit` itself prints nothing:
//! logs and progress are callbacks too (the CLI's).

mod checkpoint;
mod csv_logger;
mod early_stopping;
mod lookahead;
mod tensorboard;
mod terminate_on_nan;

use std::collections::HashMap;

use candle_core::Tensor;
use simplecnn_model::Model;

use crate::error::Result;
use crate::history::{EpochMetrics, History, StopReason};
use crate::optim::Optimizer;

pub use checkpoint::{Mode as MonitorMode, ModelCheckpoint, Monitor};
pub use csv_logger::CsvLogger;
pub use early_stopping::EarlyStopping;
pub use lookahead::Lookahead;
pub use tensorboard::TensorBoard;
pub use terminate_on_nan::TerminateOnNaN;

/// Whether training goes on.
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    Continue,
    Stop(StopReason),
}

/// What is known when training starts.
#[derive(Clone, Copy)]
pub struct TrainBegin<'a> {
    /// The model about to train (its weights as they start).
    pub model: &'a Model,
    /// Optimizer steps over the whole run (a resumed run included).
    pub total_steps: u64,
    /// The epoch `fit` starts with (1-based; above 1 when resuming).
    pub first_epoch: usize,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub train_images: usize,
    pub validation_images: usize,
}

/// One finished batch.
#[derive(Clone, Copy)]
pub struct BatchEnd<'a> {
    pub model: &'a Model,
    /// Optimizer steps done over the whole run, this one included.
    pub step: u64,
    pub epoch: usize,
    /// 1-based within the epoch.
    pub batch: usize,
    pub loss: f64,
    /// The epoch's running means so far.
    pub mean_loss: f64,
    pub mean_acc: f64,
    pub learning_rate: f64,
}

/// The training state a callback may read at the end of an epoch (to save it, say).
pub struct TrainState<'a> {
    pub model: &'a Model,
    pub optimizer: &'a dyn Optimizer,
    /// Every finished epoch, this one included.
    pub history: &'a History,
    /// Every callback's [`Callback::state`] at the end of this epoch, for checkpoints.
    pub callbacks: &'a [(String, Tensor)],
}

/// Keras' `Callback`: each hook does nothing unless overridden.
pub trait Callback {
    fn on_train_begin(&mut self, _info: &TrainBegin<'_>) -> Result<()> {
        Ok(())
    }

    fn on_epoch_begin(&mut self, _epoch: usize) -> Result<()> {
        Ok(())
    }

    fn on_batch_end(&mut self, _batch: &BatchEnd<'_>) -> Result<Control> {
        Ok(Control::Continue)
    }

    /// `logs` is the epoch's row of the history.
    fn on_epoch_end(&mut self, _logs: &EpochMetrics, _state: &TrainState<'_>) -> Result<Control> {
        Ok(Control::Continue)
    }

    fn on_train_end(&mut self, _history: &History) -> Result<()> {
        Ok(())
    }

    /// Tensors this callback carries from batch to batch (lookahead's average), named
    /// `<callback>/<what>` so that names are unique across callbacks. A checkpoint keeps
    /// them, for a resumed run to continue exactly where the killed one was.
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Takes back what [`Callback::state`] returned, from every callback of a checkpoint,
    /// after `on_train_begin` of a resumed run. A callback with state errs when its part is
    /// missing: resuming without it would silently train a different run.
    fn restore_state(&mut self, _saved: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}

/// Calls every callback's hook in order; the first `Stop` wins, the rest still see the event.
pub(crate) fn any_stop(
    callbacks: &mut [Box<dyn Callback>],
    mut hook: impl FnMut(&mut dyn Callback) -> Result<Control>,
) -> Result<Control> {
    let mut control = Control::Continue;
    for c in callbacks.iter_mut() {
        let this = hook(c.as_mut())?;
        if control == Control::Continue {
            control = this;
        }
    }
    Ok(control)
}
