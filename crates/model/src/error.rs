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

impl ModelError {
    /// The error of a layer's forward pass, naming the layer once.
    pub(crate) fn in_layer(self, layer: &str) -> Self {
        match self {
            ModelError::Shape { .. } => self,
            other => ModelError::Shape {
                layer: layer.to_string(),
                message: other.to_string(),
            },
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
