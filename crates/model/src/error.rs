/// Errors from building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("layer {layer}: {message}")]
    Shape { layer: String, message: String },
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
