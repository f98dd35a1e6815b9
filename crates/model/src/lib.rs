//! Keras-style convolutional networks on candle.
//!
//! # Brief overview
//! * [`Network`] is the architecture: a graph of layers ([`LayerKind`]: Conv2D, pooling,
//!   Dense, BatchNormalization, Add, Concatenate, …), each naming the layers it takes
//!   ([`Source`]), with Keras' default names and inferred shapes; a straight stack (Keras'
//!   `Sequential`) is the chain case. It prints Keras' [`Network::summary`] table and a
//!   Graphviz graph, and holds no weights.
//! * [`Model`] is a `Network` with its weights on a candle device (Glorot-uniform kernels,
//!   zero biases, seeded) and the forward pass; [`Mode::Training`] turns dropout on.
//! * [`zoo`] has the tutorial's [`zoo::simple_cnn`] (545 098 parameters) and [`zoo::vgg16`].
//!
//! Tensors are NCHW, as candle computes them; shapes are *shown* channels-last, as Keras shows
//! them. Conv kernels are stored `(out, in, kh, kw)`, Dense kernels `(in, out)` as in Keras.
//! This crate knows nothing of data files, training loops or model files.
//!
//! # Example
//! ```
//! use simplecnn_model::{zoo, Mode, Model};
//! let spec = zoo::simple_cnn();
//! assert_eq!(spec.param_count(), 545_098);
//! let model = Model::new(spec, &candle_core::Device::Cpu, 42)?;
//! let x = candle_core::Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, &candle_core::Device::Cpu)?;
//! let probs = model.forward(&x, Mode::Inference)?;
//! assert_eq!(probs.dims(), &[2, 10]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
pub mod init;
mod layers;
pub mod memory;
mod model;
mod network;
pub mod ops;
mod plan;
pub mod zoo;

pub use error::{ModelError, Result};
pub use layers::{
    Activation, ActivationConfig, Add, AveragePooling2D, BatchNormConfig, Concatenate,
    Conv2dConfig, Cropping2D, DenseConfig, DepthwiseConv2dConfig, DropoutConfig, FanInScale,
    FanMode, FeatureShape, Flatten, ForwardCtx, GlobalAveragePooling2D, GlobalMaxPooling2D, Init,
    InputLayer, Layer, LayerKind, LayerNormConfig, LayerScale, MaxPooling2D, Multiply,
    NormalizationConfig, Padding, Padding2d, Pool2dConfig, ReluConfig, RescalingConfig, Reshape,
    ScalarOp, ScalarOpKind, SeparableConv2dConfig, StochasticDepth, WeightRole, WeightSpec,
    ZeroPadding2D, NORMALIZATION_EPSILON,
};
pub use model::{argmax, Kernels, Mode, Model, NamedWeight, TrainingPass};
pub use network::{
    check_element_limit, max_tensor_elements, thousands, LayerSpec, Network, Source,
    DEFAULT_MAX_TENSOR_ELEMENTS,
};
pub use ops::Precision;
