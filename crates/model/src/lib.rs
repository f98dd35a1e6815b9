//! Keras-style convolutional networks on candle.
//!
//! # Brief overview
//! * [`Sequential`] is the architecture: layers ([`LayerKind`]: Conv2D, MaxPooling2D,
//!   AveragePooling2D, Dropout, Flatten, Dense) with Keras' default names and inferred
//!   shapes. It prints Keras' [`Sequential::summary`] table and a Graphviz graph, and holds no
//!   weights.
//! * [`Model`] is a `Sequential` with its weights on a candle device (Glorot-uniform kernels,
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
mod model;
pub mod ops;
mod plan;
mod sequential;
pub mod zoo;

pub use error::{ModelError, Result};
pub use layers::{
    Activation, ActivationConfig, AveragePooling2D, BatchNormConfig, Conv2dConfig, DenseConfig,
    DropoutConfig, FanInScale, FeatureShape, Flatten, ForwardCtx, GlobalAveragePooling2D,
    GlobalMaxPooling2D, Init, InputLayer, Layer, LayerKind, MaxPooling2D, Padding, Pool2dConfig,
    RescalingConfig, WeightRole, WeightSpec,
};
pub use model::{argmax, DropoutRng, Kernels, Mode, Model, NamedWeight};
pub use sequential::{
    check_element_limit, max_tensor_elements, thousands, LayerSpec, Sequential,
    DEFAULT_MAX_TENSOR_ELEMENTS,
};
