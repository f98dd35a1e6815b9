//! What each epoch measured, the Keras-style log line, and the per-epoch CSV.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{file_err, write_atomic, Result};

/// One epoch's numbers, as Keras' `History` records them, plus timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based, as Keras prints it.
    pub epoch: usize,
    /// Wall seconds for the epoch, validation included.
    pub seconds: f64,
    pub loss: f64,
    pub acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    pub learning_rate: f64,
    /// Training images per wall second (validation not counted).
    pub images_per_second: f64,
}

impl EpochMetrics {
    /// Keras' `verbose=2` line: `Epoch 3/10 - 54s - loss: 1.2093 - acc: 0.5706 - val_loss: …`.
    pub fn keras_line(&self, epochs: usize) -> String {
        let mut line = format!(
            "Epoch {}/{} - {:.0}s - loss: {:.4} - acc: {:.4}",
            self.epoch, epochs, self.seconds, self.loss, self.acc
        );
        if let (Some(vl), Some(va)) = (self.val_loss, self.val_acc) {
            line.push_str(&format!(" - val_loss: {vl:.4} - val_acc: {va:.4}"));
        }
        line
    }
}

/// Why training ended before its last epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StopReason {
    /// Early stopping: the monitored loss did not improve for `patience` epochs.
    EarlyStopping { best_epoch: usize, best: f64 },
    /// The training loss became NaN or infinite at this epoch and batch (1-based).
    NonFiniteLoss { epoch: usize, batch: usize },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::EarlyStopping { best_epoch, best } => {
                write!(
                    f,
                    "early stopping: no improvement since epoch {best_epoch} (val_loss {best:.4})"
                )
            }
            StopReason::NonFiniteLoss { epoch, batch } => write!(
                f,
                "training stopped: the loss became NaN/infinite at epoch {epoch}, batch {batch} \
                 (try a lower learning rate)"
            ),
        }
    }
}

/// Every epoch's metrics, and the reason training stopped early, if it did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub epochs: Vec<EpochMetrics>,
    pub stopped: Option<StopReason>,
}

impl History {
    /// Writes `epoch,seconds,loss,acc,val_loss,val_acc,learning_rate,images_per_second`.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        write_atomic(path, |tmp| {
            let err = |e: String| file_err(path)(e);
            let mut w = csv::Writer::from_path(tmp).map_err(|e| err(e.to_string()))?;
            for e in &self.epochs {
                w.serialize(e).map_err(|e| err(e.to_string()))?;
            }
            w.flush().map_err(|e| err(e.to_string()))
        })
    }

    /// Reads a CSV written by [`History::write_csv`].
    pub fn read_csv(path: &Path) -> Result<Self> {
        let mut r = csv::Reader::from_path(path).map_err(|e| file_err(path)(e.to_string()))?;
        let epochs = r
            .deserialize()
            .collect::<std::result::Result<Vec<EpochMetrics>, _>>()
            .map_err(|e| file_err(path)(e.to_string()))?;
        Ok(Self {
            epochs,
            stopped: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(epoch: usize) -> EpochMetrics {
        EpochMetrics {
            epoch,
            seconds: 54.2,
            loss: 1.20934,
            acc: 0.57061,
            val_loss: Some(1.11364),
            val_acc: Some(0.6146),
            learning_rate: 0.001,
            images_per_second: 830.0,
        }
    }

    #[test]
    fn keras_line_format() {
        assert_eq!(
            metrics(3).keras_line(10),
            "Epoch 3/10 - 54s - loss: 1.2093 - acc: 0.5706 - val_loss: 1.1136 - val_acc: 0.6146"
        );
    }

    #[test]
    fn csv_round_trip_with_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epochs.csv");
        let mut h = History {
            epochs: vec![metrics(1), metrics(2)],
            stopped: None,
        };
        h.epochs[1].val_loss = None;
        h.epochs[1].val_acc = None;
        h.write_csv(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(
            "epoch,seconds,loss,acc,val_loss,val_acc,learning_rate,images_per_second\n"
        ));
        assert_eq!(History::read_csv(&path).unwrap(), h);
    }
}
