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

pub(crate) fn file_err(path: &std::path::Path) -> impl FnOnce(String) -> TrainError + '_ {
    move |message| TrainError::File {
        path: path.to_path_buf(),
        message,
    }
}
