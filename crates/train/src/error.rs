use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Model(#[from] simplecnn_model::ModelError),
    #[error("{0}")]
    Data(#[from] simplecnn_cifar::CifarError),
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// A callback ended training at once (the CLI's, on SIGINT or SIGTERM).
    #[error("training stopped by {0}")]
    Stopped(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;

/// Writes `path` through `write(tmp)` on a temporary name beside it, then renames it into
/// place, so a crash never leaves half a file where a good one was.
pub(crate) fn write_atomic(
    path: &std::path::Path,
    write: impl FnOnce(&std::path::Path) -> Result<()>,
) -> Result<()> {
    /// Why the write failed: the writer's error, or the rename's (named by the file).
    enum Failed {
        Write(TrainError),
        Rename(std::io::Error),
    }
    impl From<std::io::Error> for Failed {
        fn from(e: std::io::Error) -> Self {
            Failed::Rename(e)
        }
    }
    // A temporary unique to the process: two processes writing one run's checkpoints never
    // share it.
    simplecnn_files::write_atomic(path, |tmp| write(tmp).map_err(Failed::Write)).map_err(
        |f| match f {
            Failed::Write(e) => e,
            Failed::Rename(e) => file_err(path)(e.to_string()),
        },
    )
}

pub(crate) fn file_err(path: &std::path::Path) -> impl FnOnce(String) -> TrainError + '_ {
    move |message| TrainError::File {
        path: path.to_path_buf(),
        message,
    }
}
