//! The image-folder layout: `<root>/train/<class>/*.{png,jpg}` and `<root>/test/<class>/*`.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{io_err, CifarError, Result};
use crate::images::{LabeledImages, IMAGE_BYTES, IMAGE_SIDE};
use crate::resize::resize_bilinear;
use crate::{Cifar10, CLASS_NAMES};

/// How image folders are read.
#[derive(Clone, Debug)]
pub struct ImageFolderOptions {
    /// Scale images of another size to 32x32 instead of rejecting them.
    pub resize: bool,
    /// Folders are sorted by class; this seeded shuffle mixes them so that a Keras-style
    /// "last 10 %" validation split is not all one class. `None` keeps folder order.
    pub shuffle_seed: Option<u64>,
}

impl Default for ImageFolderOptions {
    fn default() -> Self {
        Self {
            resize: false,
            shuffle_seed: Some(DEFAULT_SHUFFLE_SEED),
        }
    }
}

/// The seed of the default shuffle (the tutorial's date, as in `make_cifar_bin.py`).
pub const DEFAULT_SHUFFLE_SEED: u64 = 20181003;

/// The folder holding `train/` and `test/`: `dir` itself, or its only subfolder that has them.
pub fn find_split_root(dir: &Path) -> Option<PathBuf> {
    let has_splits = |d: &Path| d.join("train").is_dir() && d.join("test").is_dir();
    if has_splits(dir) {
        return Some(dir.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| has_splits(p))
        .collect();
    (found.len() == 1).then(|| found.remove(0))
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io_err(dir)))
        .collect::<Result<_>>()?;
    entries.retain(|p| !is_hidden(p));
    entries.sort();
    Ok(entries)
}

/// The class folders of a split, sorted. Entries that cannot be classes are errors, not
/// skipped: a name that is not UTF-8, a link that loops or leads nowhere, an unreadable entry.
/// Plain files beside the class folders (a README) are ignored.
fn class_folders(split_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for p in sorted_entries(split_dir)? {
        let meta = std::fs::metadata(&p).map_err(|e| CifarError::Layout {
            path: p.clone(),
            message: format!("cannot be read as a class folder: {e}"),
        })?;
        if !meta.is_dir() {
            continue;
        }
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            return Err(CifarError::Layout {
                path: p.clone(),
                message: "a class folder whose name is not UTF-8".into(),
            });
        };
        names.push(name.to_string());
    }
    Ok(names)
}

/// Class names from a split's class folders (sorted, as [`class_folders`] gives them): the
/// CIFAR-10 order when the folders are exactly the CIFAR-10 classes, otherwise sorted names.
fn class_names(train_dir: &Path, folders: &[String]) -> Result<Vec<String>> {
    let mut names = folders.to_vec();
    if names.is_empty() {
        return Err(CifarError::Layout {
            path: train_dir.into(),
            message: "no class folders found".into(),
        });
    }
    let mut cifar: Vec<String> = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    cifar.sort();
    if names == cifar {
        names = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    }
    if names.len() > u8::MAX as usize {
        return Err(CifarError::Layout {
            path: train_dir.into(),
            message: format!("{} class folders; at most 255 are supported", names.len()),
        });
    }
    Ok(names)
}

/// Decodes one image into CHW planes, checking (or fixing, with `resize`) its size. Resizing
/// is `tf.image.resize`'s bilinear (as Keras' `image_dataset_from_directory`), rounded to
/// bytes.
pub fn decode_image(path: &Path, resize: bool) -> Result<Vec<u8>> {
    let img = crate::resize::decode_bounded(path)?;
    let side = IMAGE_SIDE as u32;
    let img = if img.width() != side || img.height() != side {
        if !resize || img.width() == 0 || img.height() == 0 {
            return Err(CifarError::WrongImageSize {
                path: path.into(),
                width: img.width(),
                height: img.height(),
            });
        }
        let (w, h) = (img.width() as usize, img.height() as usize);
        let pixels: Vec<f32> = img
            .to_rgb8()
            .into_raw()
            .into_iter()
            .map(f32::from)
            .collect();
        let resized = resize_bilinear(&pixels, (h, w, 3), (IMAGE_SIDE, IMAGE_SIDE));
        let bytes = resized.iter().map(|v| v.round().clamp(0.0, 255.0) as u8);
        let rgb = image::RgbImage::from_raw(side, side, bytes.collect())
            .expect("32x32x3 bytes make a 32x32 image");
        image::DynamicImage::ImageRgb8(rgb)
    } else {
        img
    };
    let rgb = img.to_rgb8();
    let mut planes = vec![0u8; IMAGE_BYTES];
    let plane = IMAGE_SIDE * IMAGE_SIDE;
    for (i, px) in rgb.pixels().enumerate() {
        planes[i] = px[0];
        planes[plane + i] = px[1];
        planes[2 * plane + i] = px[2];
    }
    Ok(planes)
}

fn load_split(
    split_dir: &Path,
    classes: &[String],
    opts: &ImageFolderOptions,
) -> Result<LabeledImages> {
    let mut files: Vec<(PathBuf, u8)> = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = split_dir.join(class);
        if !dir.is_dir() {
            return Err(CifarError::Missing {
                path: dir,
                hint: format!(
                    "every split needs a folder for each class ({})",
                    classes.join(", ")
                ),
            });
        }
        let images: Vec<PathBuf> = sorted_entries(&dir)?
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        if images.is_empty() {
            return Err(CifarError::Layout {
                path: dir,
                message: "class folder holds no images".into(),
            });
        }
        files.extend(images.into_iter().map(|p| (p, label as u8)));
    }
    // Decoding dominates; do it on every core. Errors are checked in file order afterwards so
    // the one reported does not depend on thread timing.
    let decoded: Vec<Result<Vec<u8>>> = files
        .par_iter()
        .map(|(p, _)| decode_image(p, opts.resize))
        .collect();
    let decoded = decoded.into_iter().collect::<Result<Vec<_>>>()?;
    let labels = files.iter().map(|(_, l)| *l).collect();
    let mut set = LabeledImages::new(decoded.concat(), labels, classes.len())?;
    if let Some(seed) = opts.shuffle_seed {
        set.shuffle(seed);
    }
    Ok(set)
}

/// Loads `train/` and `test/` image folders under `dir` (or under its only subfolder that has them).
pub fn load_image_folders(dir: &Path, opts: &ImageFolderOptions) -> Result<Cifar10> {
    let root = find_split_root(dir).ok_or_else(|| CifarError::Missing {
        path: dir.join("train"),
        hint: "expected image folders train/<class>/ and test/<class>/".into(),
    })?;
    let train_set = class_folders(&root.join("train"))?;
    let classes = class_names(&root.join("train"), &train_set)?;
    // The test split must have the same classes: a folder more or less would relabel or drop
    // images without a word.
    let test_set = class_folders(&root.join("test"))?;
    if train_set != test_set {
        return Err(CifarError::Layout {
            path: root.join("test"),
            message: format!(
                "its class folders ({}) are not those of train/ ({})",
                test_set.join(", "),
                train_set.join(", ")
            ),
        });
    }
    let train = load_split(&root.join("train"), &classes, opts)?;
    let test = load_split(&root.join("test"), &classes, opts)?;
    Ok(Cifar10 {
        train,
        test,
        class_names: classes,
        source: root,
    })
}
