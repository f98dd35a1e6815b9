//! Keras' `EarlyStopping`: stop when the monitored value has not improved by more than
//! `min_delta` for `patience` epochs.

use serde::{Deserialize, Serialize};

use super::checkpoint::{Mode, Monitor};
use super::{Callback, Control, TrainBegin, TrainState};
use crate::error::Result;
use crate::history::{EpochMetrics, StopReason};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub monitor: Monitor,
    pub mode: Mode,
    pub patience: usize,
    pub min_delta: f64,
    /// Training's last epoch, from `on_train_begin`: there is nothing to stop after it.
    #[serde(skip)]
    last_epoch: usize,
}

impl EarlyStopping {
    /// Keras' defaults but for patience: `val_loss`, `min`, no minimum improvement.
    pub fn new(patience: usize) -> Self {
        Self {
            monitor: Monitor::ValLoss,
            mode: Mode::Min,
            patience,
            min_delta: 0.0,
            last_epoch: usize::MAX,
        }
    }

    /// Watches `monitor` in `mode`, counting only improvements above `min_delta`.
    pub fn watching(self, monitor: Monitor, mode: Mode, min_delta: f64) -> Self {
        Self {
            monitor,
            mode,
            min_delta,
            ..self
        }
    }
}

impl Callback for EarlyStopping {
    fn on_train_begin(&mut self, info: &TrainBegin<'_>) -> Result<()> {
        self.last_epoch = info.epochs;
        Ok(())
    }

    fn on_epoch_end(&mut self, logs: &EpochMetrics, state: &TrainState<'_>) -> Result<Control> {
        // The best epoch over the whole history (a resumed run remembers it).
        let mut best: Option<(usize, f64)> = None;
        for e in &state.history.epochs {
            let v = self.monitor.value(e);
            if best.is_none_or(|(_, b)| self.mode.improves(v, b, self.min_delta)) {
                best = Some((e.epoch, v));
            }
        }
        let Some((best_epoch, best)) = best else {
            return Ok(Control::Continue);
        };
        Ok(
            match logs.epoch - best_epoch >= self.patience && logs.epoch < self.last_epoch {
                true => Control::Stop(StopReason::EarlyStopping { best_epoch, best }),
                false => Control::Continue,
            },
        )
    }
}
