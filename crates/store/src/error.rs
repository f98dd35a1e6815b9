use std::path::PathBuf;

/// A model file that cannot be written or read. Names the file, and the layer where one is involved.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct StoreError {
    pub path: PathBuf,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Attaches `path` (and a context phrase) to any error.
pub(crate) trait Context<T> {
    fn at(self, path: &std::path::Path, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn at(self, path: &std::path::Path, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| StoreError {
            path: path.to_path_buf(),
            message: format!("{}: {e}", what()),
        })
    }
}

pub(crate) fn fail<T>(path: &std::path::Path, message: impl Into<String>) -> Result<T> {
    Err(StoreError {
        path: path.to_path_buf(),
        message: message.into(),
    })
}
