//! `export --format onnx MODEL -o model.onnx`: a model the workbench can load (ours or Keras'
//! `.h5`/`.keras`, a run's checkpoint) as an ONNX file for ONNX Runtime; `--format keras`
//! writes it as Keras 3's `.keras` (with the run's dtype policy, for a checkpoint).

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Onnx,
    Keras,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A model file (.h5, .keras: ours or Keras'), or a run's checkpoint
    /// (`<run>/checkpoints/last.safetensors`, read with the run's config.json)
    pub model: PathBuf,
    #[arg(long, value_enum, default_value = "onnx")]
    pub format: Format,
    /// The file to write (`model.onnx`, `model.keras`)
    #[arg(short, long)]
    pub output: PathBuf,
    /// Multiply the pixels by this before the model's first layer, inside the exported graph:
    /// 255 for a model trained on raw pixel values, so the ONNX model takes pixels in [0, 1]
    #[arg(long, default_value_t = 1.0)]
    pub input_scale: f64,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let model = crate::evaluate::load_model_file(&args.model, args.input_scale)?;
    let classes = model.spec().output_shape().elem_count();
    let names = crate::predict::stored_class_names(&args.model, classes)?;
    if args.format == Format::Keras {
        let options = simplecnn_store::SaveOptions {
            optimizer: None,
            class_names: names.as_deref(),
        };
        simplecnn_store::save_model_with(&model, &args.output, &options)?;
        println!(
            "wrote {} (Keras {}, dtype policy {})",
            args.output.display(),
            simplecnn_store::KERAS3_FORMAT_VERSION,
            model.precision().keras_name()
        );
        return Ok(());
    }
    let options = simplecnn_onnx::ExportOptions {
        class_names: names.as_deref(),
        producer_version: env!("CARGO_PKG_VERSION"),
    };
    let bytes = simplecnn_onnx::export(&model, &options)
        .with_context(|| format!("{}: cannot export to ONNX", args.model.display()))?;
    crate::files::write_atomic(&args.output, |tmp| {
        std::fs::write(tmp, &bytes).map_err(Into::into)
    })?;
    println!(
        "wrote {} (ONNX opset {}, {} bytes): input {:?} float32 (batch, height, width, \
         channels), output {:?} ({classes} class probabilities)",
        args.output.display(),
        simplecnn_onnx::OPSET,
        bytes.len(),
        simplecnn_onnx::INPUT,
        simplecnn_onnx::OUTPUT
    );
    Ok(())
}
