//! Keras' `TensorBoard` callback: `logs/train/` and `logs/validation/` event files with
//! `epoch_loss`, `epoch_accuracy` and `epoch_learning_rate` at step = epoch index (0-based, as
//! Keras counts), `batch_loss` and `batch_accuracy` (the epoch's running means, as Keras'
//! batch logs are) every `update_freq` optimizer steps, and weight histograms
//! (`<layer>/<weight>/histogram`) every `histogram_freq` epochs. Flushed after every epoch; a
//! resumed run continues its folders' logs from where its checkpoint is, so the steps done
//! again are not there twice. It must run before `ModelCheckpoint` at an epoch's end (the
//! experiment puts it first), so that an epoch a checkpoint records is always logged.

use std::path::{Path, PathBuf};

use simplecnn_tensorboard::{EventWriter, What};

use super::{BatchEnd, Callback, Control, TrainBegin, TrainState};
use crate::error::{file_err, Result, TrainError};
use crate::history::{EpochMetrics, History};

/// TensorBoard's default number of histogram buckets.
const HISTOGRAM_BUCKETS: usize = 30;

pub struct TensorBoard {
    pub log_dir: PathBuf,
    /// Batch scalars every this many optimizer steps (Keras' integer `update_freq`); `None`:
    /// per epoch only (Keras' `"epoch"`).
    pub update_freq: Option<u64>,
    /// Weight histograms every this many epochs; 0: none.
    pub histogram_freq: usize,
    train: Option<EventWriter>,
    validation: Option<EventWriter>,
    /// Where a resumed run starts: epochs and optimizer steps already logged.
    resumed_at: Option<(usize, u64)>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| file_err(path)(e.to_string())
}

impl TensorBoard {
    pub fn new(log_dir: PathBuf, update_freq: Option<u64>, histogram_freq: usize) -> Self {
        Self {
            log_dir,
            update_freq,
            histogram_freq,
            train: None,
            validation: None,
            resumed_at: None,
        }
    }

    /// A writer for `logs/<split>/`: a new file, or, when resuming, one continuing the
    /// folder's events from before the resume.
    fn open(&self, split: &str) -> Result<EventWriter> {
        let dir = self.log_dir.join(split);
        match self.resumed_at {
            None => EventWriter::create(&dir),
            Some((epochs, steps)) => EventWriter::continue_in(&dir, |event| {
                let batch_scalar = match &event.what {
                    Some(What::Summary(s)) => s.value.iter().any(|v| v.tag.starts_with("batch_")),
                    _ => false,
                };
                match batch_scalar {
                    true => event.step <= steps as i64,
                    false => event.step < epochs as i64,
                }
            }),
        }
        .map_err(io_err(&dir))
    }

    fn train_writer(&mut self) -> Result<&mut EventWriter> {
        if self.train.is_none() {
            self.train = Some(self.open("train")?);
        }
        Ok(self.train.as_mut().expect("just opened"))
    }

    fn validation_writer(&mut self) -> Result<&mut EventWriter> {
        if self.validation.is_none() {
            self.validation = Some(self.open("validation")?);
        }
        Ok(self.validation.as_mut().expect("just opened"))
    }
}

fn write_err(w: &EventWriter) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    io_err(w.path())
}

impl Callback for TensorBoard {
    fn on_train_begin(&mut self, info: &TrainBegin<'_>) -> Result<()> {
        let done = info.first_epoch.saturating_sub(1);
        self.resumed_at = (done > 0).then_some((done, (done * info.steps_per_epoch) as u64));
        self.train_writer()?;
        // A resumed run's validation logs are trimmed too, whether or not it validates.
        if self.resumed_at.is_some() && self.log_dir.join("validation").is_dir() {
            self.validation_writer()?;
        }
        Ok(())
    }

    fn on_batch_end(&mut self, b: &BatchEnd<'_>) -> Result<Control> {
        if let Some(n) = self.update_freq {
            if b.step.is_multiple_of(n) {
                let w = self.train_writer()?;
                let step = b.step as i64;
                // Flushed at once: per-batch scalars are asked for to watch an epoch live.
                w.scalar("batch_loss", step, b.mean_loss)
                    .and_then(|()| w.scalar("batch_accuracy", step, b.mean_acc))
                    .and_then(|()| w.flush())
                    .map_err(write_err(w))?;
            }
        }
        Ok(Control::Continue)
    }

    fn on_epoch_end(&mut self, logs: &EpochMetrics, state: &TrainState<'_>) -> Result<Control> {
        let epoch = logs.epoch as i64 - 1;
        let histograms =
            self.histogram_freq > 0 && (epoch as usize).is_multiple_of(self.histogram_freq);
        let w = self.train_writer()?;
        w.scalar("epoch_loss", epoch, logs.loss)
            .and_then(|()| w.scalar("epoch_accuracy", epoch, logs.acc))
            .and_then(|()| w.scalar("epoch_learning_rate", epoch, logs.learning_rate))
            .map_err(write_err(w))?;
        if histograms {
            for weight in state.model.weights() {
                let values: Vec<f32> = weight
                    .var
                    .as_tensor()
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?;
                let tag = format!("{}/{}/histogram", weight.layer, weight.name);
                w.histogram(&tag, epoch, &values, HISTOGRAM_BUCKETS)
                    .map_err(write_err(w))?;
            }
        }
        w.flush().map_err(write_err(w))?;
        if let (Some(loss), Some(acc)) = (logs.val_loss, logs.val_acc) {
            let w = self.validation_writer()?;
            w.scalar("epoch_loss", epoch, loss)
                .and_then(|()| w.scalar("epoch_accuracy", epoch, acc))
                .and_then(|()| w.flush())
                .map_err(write_err(w))?;
        }
        Ok(Control::Continue)
    }

    fn on_train_end(&mut self, _: &History) -> Result<()> {
        for w in [&mut self.train, &mut self.validation]
            .into_iter()
            .flatten()
        {
            w.flush().map_err(write_err(w))?;
        }
        Ok(())
    }
}
