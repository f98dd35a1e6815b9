//! Pretrained weights Keras publishes, fetched once into Keras' own cache folder.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Keras' `applications.VGG16(include_top=False, weights="imagenet")` file, in Keras 2's
/// `save_weights` layout (groups `block1_conv1` … with `block1_conv1_W_1:0`, `…_b_1:0`).
pub const VGG16_NOTOP_URL: &str = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5";
/// The MD5 Keras checks it against (`file_hash` in `keras/src/applications/vgg16.py`).
pub const VGG16_NOTOP_MD5: &str = "6d6bbae143d832006294945121d1f1fc";
const VGG16_NOTOP_FILE: &str = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5";

/// Keras' cache folder for models: `$KERAS_HOME/models`, else `~/.keras/models` (as
/// `keras.utils.get_file(cache_subdir="models")`), so a file Keras downloaded is found.
pub fn keras_models_dir() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("KERAS_HOME") {
        return Ok(PathBuf::from(home).join("models"));
    }
    let home = std::env::var_os("HOME").context("neither KERAS_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".keras").join("models"))
}

/// The VGG-16 ImageNet weights without the top, downloaded (58 889 256 bytes) on first use.
pub fn vgg16_imagenet_notop() -> Result<PathBuf> {
    let dest = keras_models_dir()?.join(VGG16_NOTOP_FILE);
    if !dest.is_file() {
        eprintln!(
            "Downloading VGG-16's ImageNet weights into {}",
            dest.display()
        );
    }
    Ok(simplecnn_cifar::download::download_file(
        VGG16_NOTOP_URL,
        VGG16_NOTOP_MD5,
        &dest,
        "VGG-16's ImageNet weights (Keras' notop file)",
        true,
    )?)
}
