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
}

pub type Result<T> = std::result::Result<T, TrainError>;

/// Writes `path` through `write(tmp)` on a temporary name beside it, then renames it into
/// place, so a crash never leaves half a file where a good one was.
pub(crate) fn write_atomic(
    path: &std::path::Path,
    write: impl FnOnce(&std::path::Path) -> Result<()>,
) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path)(e.to_string()))
}

pub(crate) fn file_err(path: &std::path::Path) -> impl FnOnce(String) -> TrainError + '_ {
    move |message| TrainError::File {
        path: path.to_path_buf(),
        message,
    }
}
