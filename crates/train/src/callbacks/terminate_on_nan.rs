//! Keras' `TerminateOnNaN`: stop when a batch's loss is NaN or infinite.

use super::{BatchEnd, Callback, Control};
use crate::error::Result;
use crate::history::StopReason;

#[derive(Clone, Copy, Debug, Default)]
pub struct TerminateOnNaN;

impl Callback for TerminateOnNaN {
    fn on_batch_end(&mut self, b: &BatchEnd<'_>) -> Result<Control> {
        Ok(match b.loss.is_finite() {
            true => Control::Continue,
            false => Control::Stop(StopReason::NonFiniteLoss {
                epoch: b.epoch,
                batch: b.batch,
            }),
        })
    }
}
