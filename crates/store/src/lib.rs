//! Keras-compatible model files: `model.save('cnn1.h5')` and `load_model` in the HDF5 layout
//! Keras writes, and Keras 3's own `.keras` zip, so HDFView, h5py and Keras open our files and
//! we open theirs.
//!
//! # Brief overview
//! * [`save_model`] writes `keras_version`, `backend`, `model_config` (Keras' JSON for the
//!   Network), `training_config`, `/model_weights/<layer>/<layer>/kernel:0` in Keras'
//!   layouts (conv kernels `(kh, kw, in, out)`, the first Dense after a Flatten with its rows in
//!   NHWC order) and optionally `/optimizer_weights` ([`AdamState`]); atomically.
//! * [`load_model`] rebuilds the network from `model_config` and loads the weights;
//!   [`load_weights`] loads into an existing model by layer order or name. Both accept Keras 2
//!   (`conv2d_1/kernel:0`) and Keras 3 (`sequential/conv2d/kernel`) naming and every string
//!   storage Keras used.
//! * A path ending in `.keras` is written as Keras 3's `model.save('x.keras')`: a zip (entries
//!   stored) of `metadata.json`, `config.json` and `model.weights.h5` (`layers/<conv2d_1>/vars/0`,
//!   `optimizer/vars/<i>`). Every reader tells formats apart by content: a zip, Keras 3's
//!   weights tree (`.keras` weights or `save_weights('x.weights.h5')`), or the legacy layout,
//!   whose Keras 3 optimizer naming (`optimizer_weights/adam/…_momentum`) is read too.
//! * [`inspect`] prints any HDF5 file's tree, or a `.keras` file's entries, layers and tree.
//!
//! This crate maps a model's named tensors to HDF5 and back; it knows nothing of training.
//!
//! # Example
//! ```no_run
//! use simplecnn_model::{zoo, Model};
//! let model = Model::new(zoo::simple_cnn(), &candle_core::Device::Cpu, 0)?;
//! simplecnn_store::save_model(&model, std::path::Path::new("cnn1.h5"), None)?;
//! let back = simplecnn_store::load_model(std::path::Path::new("cnn1.h5"), &candle_core::Device::Cpu)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod h5;
mod inspect;
mod keras3;
mod keras_file;
pub mod layout;

pub use error::{Result, StoreError};
/// Opening HDF5 files without HDF5's advisory lock, which a spawned child would inherit.
pub use h5::{create_file as create_h5, open_file as open_h5, open_file_rw as open_h5_rw};
pub use inspect::inspect;
pub use keras3::KERAS3_FORMAT_VERSION;
pub use keras_file::{
    load_layer_weights, load_model, load_model_scaled, load_optimizer, load_weights,
    read_class_names, read_model_config, save_model, save_model_with, AdamState, MatchBy,
    SaveOptions, CLASS_NAMES_ATTRIBUTE,
};
