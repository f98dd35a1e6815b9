//! Keras' `CSVLogger`: the history so far as CSV after every epoch (written atomically, so a
//! killed run leaves every finished epoch).

use std::path::PathBuf;

use super::{Callback, Control, TrainState};
use crate::error::Result;
use crate::history::{EpochMetrics, History};

#[derive(Clone, Debug)]
pub struct CsvLogger {
    pub path: PathBuf,
}

impl Callback for CsvLogger {
    fn on_epoch_end(&mut self, _: &EpochMetrics, state: &TrainState<'_>) -> Result<Control> {
        state.history.write_csv(&self.path)?;
        Ok(Control::Continue)
    }

    fn on_train_end(&mut self, history: &History) -> Result<()> {
        history.write_csv(&self.path)
    }
}
