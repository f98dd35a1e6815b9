//! Keras' `ModelCheckpoint` for resuming: `last.*` after every epoch and `best.*` whenever the
//! monitored value improves, each with the weights, the optimizer's and callbacks' state and the history
//! (see [`crate::checkpoint`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Callback, Control, TrainState};
use crate::checkpoint::save_checkpoint;
use crate::error::Result;
use crate::history::EpochMetrics;

/// The value an epoch is judged by. Without validation data, `val_*` falls back to the
/// training value (as the epoch records it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    Loss,
    Acc,
    ValLoss,
    ValAcc,
}

impl Monitor {
    pub fn value(self, e: &EpochMetrics) -> f64 {
        match self {
            Monitor::Loss => e.loss,
            Monitor::Acc => e.acc,
            Monitor::ValLoss => e.val_loss.unwrap_or(e.loss),
            Monitor::ValAcc => e.val_acc.unwrap_or(e.acc),
        }
    }
}

/// Whether smaller or larger is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Min,
    Max,
}

impl Mode {
    /// Whether `value` beats `best` by more than `min_delta`.
    pub fn improves(self, value: f64, best: f64, min_delta: f64) -> bool {
        match self {
            Mode::Min => value < best - min_delta,
            Mode::Max => value > best + min_delta,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ModelCheckpoint {
    pub dir: PathBuf,
    pub monitor: Monitor,
    pub mode: Mode,
}

impl Callback for ModelCheckpoint {
    fn on_epoch_end(&mut self, logs: &EpochMetrics, state: &TrainState<'_>) -> Result<Control> {
        let (model, optimizer, history) = (state.model, state.optimizer, state.history);
        let save =
            |stem| save_checkpoint(&self.dir, stem, model, optimizer, state.callbacks, history);
        save("last")?;
        let value = self.monitor.value(logs);
        let earlier = &history.epochs[..history.epochs.len().saturating_sub(1)];
        let improved = earlier
            .iter()
            .all(|e| self.mode.improves(value, self.monitor.value(e), 0.0));
        if improved {
            save("best")?;
        }
        Ok(Control::Continue)
    }
}
