//! `predict`: ask a saved model about images of one's own; the top classes of each.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use simplecnn_model::{FeatureShape, Model};

#[derive(clap::Args)]
pub struct PredictArgs {
    /// A Keras-layout .h5 model file (ours or one Keras wrote).
    #[arg(long)]
    pub model: PathBuf,
    /// Image files (PNG, JPEG; any size: resized as Keras' image_dataset_from_directory does)
    /// or folders of them (searched recursively).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// How many classes to list per image (all, if the model has fewer).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub top: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Multiply the pixels (in [0, 1] here) by this before the model's first layer: 255 for a
    /// model trained on raw pixel values.
    #[arg(long, default_value_t = 1.0)]
    pub input_scale: f64,
}

#[derive(Serialize)]
struct Guess<'a> {
    class: &'a str,
    index: usize,
    probability: f64,
}

#[derive(Serialize)]
struct Prediction<'a> {
    image: String,
    top: Vec<Guess<'a>>,
}

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The image files named: files as given, folders searched (sorted, hidden entries skipped)
/// for files with an image extension.
fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
        if depth > 32 {
            bail!("{}: folders nested more than 32 deep", dir.display());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read folder {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        entries.sort();
        for p in entries {
            // Symlinked folders are not followed (a link to a parent would never end).
            let meta = std::fs::symlink_metadata(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            if meta.is_dir() {
                walk(&p, out, depth + 1)?;
            } else if p.extension().is_some_and(|e| {
                IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str())
            }) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let before = out.len();
            walk(p, &mut out, 0)?;
            if out.len() == before {
                bail!(
                    "{}: no image files (.png, .jpg, .jpeg) in this folder",
                    p.display()
                );
            }
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    Ok(out)
}

/// The names a model's classes were given where it was made: in the model file, else in the
/// run folder it sits in (`config.json` or `test.json`; a checkpoint's run folder is the one
/// above `checkpoints/`). `None` when nothing names them.
pub fn stored_class_names(model_path: &Path, classes: usize) -> Result<Option<Vec<String>>> {
    let check = |names: Vec<String>, from: &Path| -> Result<Option<Vec<String>>> {
        if names.len() != classes {
            bail!(
                "{}: lists {} class names, the model has {classes} outputs",
                from.display(),
                names.len()
            );
        }
        Ok(Some(names))
    };
    let is_model_file = model_path
        .extension()
        .is_some_and(|e| e == "h5" || e == "keras" || e == "hdf5");
    if is_model_file {
        if let Some(names) = simplecnn_store::read_class_names(model_path)? {
            return check(names, model_path);
        }
    }
    let dir = model_path.parent().unwrap_or(Path::new("."));
    let run = match dir.file_name() {
        Some(n) if n == "checkpoints" => dir.parent().unwrap_or(dir),
        _ => dir,
    };
    for file in ["config.json", "test.json"] {
        let path = run.join(file);
        let text = match simplecnn_files::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => bail!("{}: {e}", path.display()),
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        if let Some(names) = json.get("class_names") {
            let names: Vec<String> = serde_json::from_value(names.clone()).with_context(|| {
                format!("{}: class_names is not a list of names", path.display())
            })?;
            return check(names, &path);
        }
    }
    Ok(None)
}

/// The names of a model's classes: [`stored_class_names`], else CIFAR-10's when it has 10
/// outputs, else the indices.
pub fn class_names(model_path: &Path, classes: usize) -> Result<Vec<String>> {
    if let Some(names) = stored_class_names(model_path, classes)? {
        return Ok(names);
    }
    Ok(match classes {
        10 => simplecnn_cifar::CLASS_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        n => (0..n).map(|i| i.to_string()).collect(),
    })
}

/// Images decoded and predicted together.
const PREDICT_BATCH: usize = 64;

/// Class probabilities of each image file for `model`, in the files' order.
pub fn probabilities(model: &Model, files: &[PathBuf]) -> Result<Vec<Vec<f32>>> {
    let FeatureShape::Image {
        channels,
        height,
        width,
    } = model.spec().input_shape()
    else {
        bail!(
            "the model takes {:?}, not images: predict needs a model whose input is an image",
            model.spec().input_shape()
        );
    };
    let mut out = Vec::with_capacity(files.len());
    // A few images at a time: memory stays bounded however many files are named.
    for chunk in files.chunks(PREDICT_BATCH) {
        let mut pixels = Vec::with_capacity(chunk.len() * channels * height * width);
        for file in chunk {
            pixels.extend(simplecnn_cifar::resize::load_image_for_model(
                file, height, width, channels,
            )?);
        }
        let x = Tensor::from_vec(pixels, (chunk.len(), channels, height, width), &Device::Cpu)?
            .to_device(model.device())?;
        let p: Vec<Vec<f32>> = simplecnn_train::class_probabilities(model, &x)?
            .to_device(&Device::Cpu)?
            .to_vec2()?;
        out.extend(p);
    }
    Ok(out)
}

pub fn run(args: PredictArgs) -> Result<()> {
    let model = simplecnn_store::load_model_scaled(&args.model, &Device::Cpu, args.input_scale)?;
    let classes = model.spec().output_shape().elem_count();
    let names = class_names(&args.model, classes)?;
    let files = image_files(&args.images)?;
    let batch = files.len().min(PREDICT_BATCH);
    simplecnn_model::memory::check_memory(
        &simplecnn_model::memory::MemoryNeed::inference(model.spec(), batch),
        &format!("predicting with {}", args.model.display()),
    )?;
    let probabilities = probabilities(&model, &files)?;
    let k = (args.top as usize).min(classes);
    let predictions: Vec<Prediction> = files
        .iter()
        .zip(&probabilities)
        .map(|(file, p)| Prediction {
            image: file.display().to_string(),
            top: simplecnn_train::top_classes(p, k)
                .into_iter()
                .map(|c| Guess {
                    class: &names[c],
                    index: c,
                    probability: p[c] as f64,
                })
                .collect(),
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&predictions)?);
        return Ok(());
    }
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    for p in &predictions {
        println!("{}", p.image);
        println!("  rank  {:<width$}  probability", "class");
        for (rank, g) in p.top.iter().enumerate() {
            println!(
                "  {:>4}  {:<width$}  {:>10.2} %",
                rank + 1,
                g.class,
                100.0 * g.probability
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_searched_for_images_and_missing_paths_named() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cats");
        std::fs::create_dir(&sub).unwrap();
        for f in ["b.PNG", "a.jpg", "notes.txt", ".hidden.png"] {
            std::fs::write(sub.join(f), "x").unwrap();
        }
        std::fs::write(dir.path().join("z.jpeg"), "x").unwrap();
        let files = image_files(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["cats/a.jpg", "cats/b.PNG", "z.jpeg"]);
        let err = image_files(&[dir.path().join("nope.png")]).unwrap_err();
        assert!(err.to_string().contains("nope.png: no such file"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = image_files(&[empty]).unwrap_err();
        assert!(err.to_string().contains("no image files"), "{err}");
    }
}
