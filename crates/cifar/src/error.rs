use std::path::PathBuf;

/// Everything that can go wrong while reading CIFAR-10. Each variant names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum CifarError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: missing file or folder; {hint}")]
    Missing { path: PathBuf, hint: String },
    #[error("{path}: truncated or wrong size: {len} bytes is not a whole number of {record}-byte records")]
    Truncated {
        path: PathBuf,
        len: u64,
        record: usize,
    },
    #[error("{path}: {len} bytes, expected {expected} ({records} records of {record} bytes)")]
    WrongSize {
        path: PathBuf,
        len: u64,
        expected: u64,
        records: usize,
        record: usize,
    },
    #[error("{path}: record {record}: label byte {label} is out of range 0..=9")]
    LabelOutOfRange {
        path: PathBuf,
        record: usize,
        label: u8,
    },
    #[error("{path}: image is {width}x{height}, expected 32x32 as CIFAR-10's (scale the images first, or read them resized: an experiment's `data.resize = true`; `predict` takes any size)")]
    WrongImageSize {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("{path}: not a readable image: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, CifarError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CifarError {
    let path = path.into();
    move |source| CifarError::Io { path, source }
}
