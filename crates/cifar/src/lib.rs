//! CIFAR-10 for training in Rust: read the data, keep it compact, hand out batches as candle tensors.
//!
//! # Brief overview
//! [`load`] finds a data set under a folder in either layout and returns [`Cifar10`] — the
//! `train` and `test` splits as [`LabeledImages`] (pixels kept as `u8`, R/G/B planes) and the
//! class names. [`LabeledImages::batch`] turns chosen images into a [`Batch`]: images
//! `(N, 3, 32, 32)` f32 in `[0, 1]`, one-hot labels and class indices, on any candle device.
//!
//! * Binary layout (the official `cifar-10-binary.tar.gz`): [`binary::load_binary`].
//! * Image folders (`train/<class>/*.png|jpg`, `test/<class>/*`): [`folder::load_image_folders`].
//!
//! This crate knows nothing of models or training. Every error names the file and the problem
//! ([`CifarError`]).
//!
//! # Example
//! ```no_run
//! let data = simplecnn_cifar::load(std::path::Path::new("data"))?;
//! let (train, val) = data.train.split_last(0.1);
//! let batch = train.batch(&[0, 1, 2], &candle_core::Device::Cpu)?;
//! assert_eq!(batch.images.dims(), &[3, 3, 32, 32]);
//! # Ok::<(), simplecnn_cifar::CifarError>(())
//! ```

mod augment;
pub mod binary;
#[cfg(feature = "download")]
pub mod download;
mod error;
pub mod folder;
mod images;
pub mod resize;

use std::path::{Path, PathBuf};

pub use augment::{Augmentation, Flip};
pub use error::{CifarError, Result};
pub use folder::ImageFolderOptions;
pub use images::{Batch, LabeledImages, CHANNELS, IMAGE_BYTES, IMAGE_SIDE};

/// The CIFAR-10 classes, in label order.
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// A loaded data set: both splits and the class names.
#[derive(Clone, Debug)]
pub struct Cifar10 {
    pub train: LabeledImages,
    pub test: LabeledImages,
    pub class_names: Vec<String>,
    /// The folder the data came from.
    pub source: PathBuf,
}

impl Cifar10 {
    /// Only the classes named, in that order, relabelled `0..names.len()` in both splits, with
    /// their names kept (a transfer experiment's "animals" or "vehicles").
    pub fn keep_classes(&self, names: &[String]) -> Result<Cifar10> {
        let mut picked = Vec::with_capacity(names.len());
        for name in names {
            let Some(i) = self.class_names.iter().position(|n| n == name) else {
                return Err(CifarError::Layout {
                    path: self.source.clone(),
                    message: format!(
                        "no class {name:?} (the classes: {})",
                        self.class_names.join(", ")
                    ),
                });
            };
            picked.push(i as u8);
        }
        let at = |e: CifarError| CifarError::Layout {
            path: self.source.clone(),
            message: e.to_string(),
        };
        Ok(Cifar10 {
            train: self.train.keep_classes(&picked).map_err(at)?,
            test: self.test.keep_classes(&picked).map_err(at)?,
            class_names: names.to_vec(),
            source: self.source.clone(),
        })
    }
}

/// Which layout a folder holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    Binary(PathBuf),
    ImageFolders(PathBuf),
}

/// Finds the layout under `dir`: binary batches first, then image folders.
pub fn detect(dir: &Path) -> Result<Layout> {
    if !dir.is_dir() {
        return Err(CifarError::Missing {
            path: dir.into(),
            hint: missing_hint(),
        });
    }
    if let Some(d) = binary::find_batches_dir(dir) {
        return Ok(Layout::Binary(d));
    }
    if let Some(d) = folder::find_split_root(dir) {
        return Ok(Layout::ImageFolders(d));
    }
    // Batch files without the test batch: name the file that is missing.
    for d in [dir.to_path_buf(), dir.join(binary::BATCHES_DIR)] {
        if binary::TRAIN_FILES.iter().any(|f| d.join(f).exists()) {
            return Err(CifarError::Missing {
                path: d.join(binary::TEST_FILE),
                hint: "the binary layout needs the five data_batch_N.bin files and test_batch.bin"
                    .into(),
            });
        }
    }
    Err(CifarError::Missing {
        path: dir.into(),
        hint: missing_hint(),
    })
}

fn missing_hint() -> String {
    "no CIFAR-10 here: expected cifar-10-batches-bin/ (binary layout) or train/ and test/ image \
     folders; run `cargo xtask data`, or point --data / CIFAR10_DIR at an existing copy"
        .into()
}

/// Loads CIFAR-10 from `dir` in whichever layout it holds (image folders with default options).
pub fn load(dir: &Path) -> Result<Cifar10> {
    load_with(dir, &ImageFolderOptions::default())
}

/// Like [`load`], with options for the image-folder layout.
pub fn load_with(dir: &Path, opts: &ImageFolderOptions) -> Result<Cifar10> {
    match detect(dir)? {
        Layout::Binary(d) => binary::load_binary(&d),
        Layout::ImageFolders(d) => folder::load_image_folders(&d, opts),
    }
}
