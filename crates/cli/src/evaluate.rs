//! `evaluate`: Keras' `model.evaluate` on the test split, with top-5, per-class accuracy and
//! pictures of the confusion matrix and the most confident mistakes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use simplecnn_cifar::LabeledImages;
use simplecnn_train::Evaluation;

use crate::data::data_dir;

#[derive(clap::Args)]
pub struct EvaluateArgs {
    /// A Keras-layout .h5 model file (ours or one Keras wrote), or a run's checkpoint
    /// (`<run>/checkpoints/last.safetensors`, read with the run's config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// CIFAR-10 folder (default: CIFAR10_DIR, else data/).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Where confusion.png and mistakes.png go (default: the model file's folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Multiply the pixels (in [0, 1] here) by this before the model's first layer: 255 for a
    /// model trained on raw pixel values, as many Keras models are.
    #[arg(long, default_value_t = 1.0)]
    pub input_scale: f64,
    /// Also write every test image's class probabilities to this CSV (`index,label,predicted,
    /// p_0,…`), e.g. to compare with another framework image by image.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
}

/// Top-1, top-k and per-class accuracy as lines to print.
pub fn report_lines(test: &Evaluation, class_names: &[String]) -> String {
    let mut out = format!(
        "test loss: {:.4} - test accuracy: {:.4}",
        test.loss, test.accuracy
    );
    // With five classes or fewer every class is in the top 5: nothing to say.
    if test.top_k < class_names.len() {
        out += &format!(" - top-{} accuracy: {:.4}", test.top_k, test.top_k_accuracy);
    }
    out += "\n";
    let width = class_names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0);
    for (name, (acc, row)) in class_names
        .iter()
        .zip(test.per_class_accuracy.iter().zip(&test.confusion))
    {
        let n: usize = row.iter().sum();
        out += &format!("  {name:<width$}  {acc:.4}  ({n} images)\n");
    }
    out
}

/// `confusion.png` and `mistakes.png` of `test` (an evaluation of `set`) in `dir`.
pub fn write_pictures(
    dir: &Path,
    set: &LabeledImages,
    test: &Evaluation,
    class_names: &[String],
) -> Result<()> {
    crate::pictures::confusion_png(&dir.join("confusion.png"), class_names, &test.confusion)?;
    crate::pictures::mistakes_png(&dir.join("mistakes.png"), set, &test.mistakes, class_names)
}

/// A checkpoint of a run (`<run>/checkpoints/last.safetensors`): the model its `config.json`
/// describes, with the checkpoint's weights.
fn load_checkpoint_model(path: &Path) -> Result<simplecnn_model::Model> {
    let run = path
        .parent()
        .and_then(Path::parent)
        .filter(|run| run.join("config.json").is_file())
        .with_context(|| {
            format!(
                "{}: a checkpoint is read with its run's config.json (in the folder above \
                 checkpoints/), which is not there",
                path.display()
            )
        })?;
    let config = run.join("config.json");
    let loaded = simplecnn_experiment::load_run_config(&config)?;
    let spec = crate::experiment::build_spec(&loaded.experiment)?;
    let mut model = simplecnn_model::Model::new(spec, &candle_core::Device::Cpu, 0)?;
    model.set_precision(loaded.experiment.fit.precision.precision())?;
    simplecnn_train::load_checkpoint_weights(path, &model)?;
    Ok(model)
}

/// The data's classes in the model's order. Where the model names its classes, the data's
/// names must be the same: in the same order, or all found (the labels are then matched by
/// name); otherwise scoring by position would count against shifted labels.
fn match_classes(
    data: simplecnn_cifar::Cifar10,
    model_names: Option<&[String]>,
    model_path: &Path,
) -> Result<simplecnn_cifar::Cifar10> {
    let Some(names) = model_names else {
        return Ok(data);
    };
    if names == data.class_names.as_slice() {
        return Ok(data);
    }
    let all_found =
        names.len() == data.class_names.len() && names.iter().all(|n| data.class_names.contains(n));
    if all_found {
        return Ok(data.keep_classes(names)?);
    }
    anyhow::bail!(
        "{}: the model's classes are not the data's: the model names [{}], the data in {} \
         names [{}]",
        model_path.display(),
        names.join(", "),
        data.source.display(),
        data.class_names.join(", ")
    )
}

/// A model file the commands take: a run's checkpoint (`.safetensors`, read with its run's
/// config.json), else a Keras-layout `.h5`/`.keras` with `input_scale` before its layers.
pub fn load_model_file(path: &Path, input_scale: f64) -> Result<simplecnn_model::Model> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => load_checkpoint_model(path),
        _ => Ok(simplecnn_store::load_model_scaled(
            path,
            &candle_core::Device::Cpu,
            input_scale,
        )?),
    }
}

/// Every image's label, top class and class probabilities, as a CSV.
fn write_predictions(path: &Path, set: &LabeledImages, probabilities: &[Vec<f32>]) -> Result<()> {
    crate::files::write_atomic(path, |tmp| {
        let mut out = csv::Writer::from_path(tmp)?;
        let classes = probabilities.first().map_or(0, Vec::len);
        let mut header = vec!["index".to_string(), "label".into(), "predicted".into()];
        header.extend((0..classes).map(|c| format!("p_{c}")));
        out.write_record(&header)?;
        for (i, p) in probabilities.iter().enumerate() {
            let top = simplecnn_train::top_classes(p, 1)[0];
            let mut row = vec![i.to_string(), set.label(i).to_string(), top.to_string()];
            row.extend(p.iter().map(|x| x.to_string()));
            out.write_record(&row)?;
        }
        out.flush()?;
        Ok(())
    })
}

pub fn run(args: EvaluateArgs) -> Result<()> {
    let model = load_model_file(&args.model, args.input_scale)?;
    let data_dir = data_dir(args.data);
    let data = simplecnn_cifar::load(&data_dir)?;
    let classes = model.spec().output_shape().elem_count();
    let stored = crate::predict::stored_class_names(&args.model, classes)?;
    let data = match_classes(data, stored.as_deref(), &args.model)?;
    if classes != data.test.num_classes() {
        anyhow::bail!(
            "{}: the model predicts {classes} classes, the data in {} has {}",
            args.model.display(),
            data_dir.display(),
            data.test.num_classes()
        );
    }
    let batch = (args.batch_size as usize).min(data.test.len());
    simplecnn_model::memory::check_memory(
        &simplecnn_model::memory::MemoryNeed::inference(model.spec(), batch),
        &format!("evaluating {}", args.model.display()),
    )?;
    if model.precision() != simplecnn_model::Precision::F32 {
        println!("dtype policy {}", model.precision().keras_name());
    }
    let batch_size = args.batch_size as usize;
    let (test, probabilities) = match args.predictions {
        // One pass for both: the report and the CSV.
        Some(_) => {
            let (test, p) =
                simplecnn_train::evaluate_with_probabilities(&model, &data.test, batch_size)?;
            (test, Some(p))
        }
        None => (
            simplecnn_train::evaluate(&model, &data.test, batch_size)?,
            None,
        ),
    };
    print!("{}", report_lines(&test, &data.class_names));
    if let (Some(csv_path), Some(probabilities)) = (&args.predictions, &probabilities) {
        write_predictions(csv_path, &data.test, probabilities)?;
        println!("wrote {}", csv_path.display());
    }
    let out = match args.out {
        Some(dir) => dir,
        None => match args.model.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    write_pictures(&out, &data.test, &test, &data.class_names)?;
    println!(
        "wrote {} and {}",
        out.join("confusion.png").display(),
        out.join("mistakes.png").display()
    );
    Ok(())
}
