//! `simplecnn …` (what `cargo xtask …` runs): glue over the library crates; no model or data logic here.

mod bench;
mod compare;
mod data;
mod evaluate;
mod experiment;
mod export;
mod files;
mod pictures;
mod plots;
mod predict;
mod processes;
mod provenance;
mod selftest;
mod show;
mod slurm;
mod stop;
mod sweep;
mod sweep_summary;
mod tensorboard;
mod weights;

use std::path::PathBuf;

use anyhow::Result;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "simplecnn",
    about = "Train and study the Keras tutorial SimpleCNN on CIFAR-10 (also: cargo xtask …)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download CIFAR-10 (binary version) into the data folder, MD5-checked.
    Data(data::DataArgs),
    /// Print Keras' summary table of a model: `simple-cnn`, `vgg16` (both when none is named),
    /// a model file (.h5, .keras) or an experiment (a name or a .toml): a graph's table has
    /// Keras' "Connected to" column.
    Summary {
        model: Option<String>,
        /// Also write the model graph as Graphviz DOT to this file (and SVG beside it when `dot` is installed).
        #[arg(long)]
        dot: Option<PathBuf>,
    },
    /// Write images of the data set as upscaled PNGs with their class names.
    Show(show::ShowArgs),
    /// Run a sweep file (an experiment over seeds and a grid of settings) here, one run of it
    /// (`--index`), or as a Slurm job array (`--submit`); and summarise its runs.
    Sweep(sweep::SweepArgs),
    /// Run an experiment file (experiments/<name>.toml, any .toml, or a run's config.json to
    /// replay it) and record everything under results/<name>/.
    Experiment(experiment::ExperimentArgs),
    /// Keras' `model.evaluate` on the test split for a saved model (ours or one Keras wrote):
    /// top-1, top-5 and per-class accuracy; writes confusion.png and mistakes.png.
    Evaluate(evaluate::EvaluateArgs),
    /// A model (ours or Keras' .h5/.keras, a run's checkpoint) as an ONNX file for ONNX Runtime
    Export(export::ExportArgs),
    /// The top classes a saved model gives your own images (PNG/JPEG files or folders).
    Predict(predict::PredictArgs),
    /// The baseline on several devices (`compare cpu cuda`), same seed and data, side by side.
    Compare(compare::CompareArgs),
    /// Training and inference throughput on real data; with --reference beside Keras and PyTorch.
    Bench(bench::BenchArgs),
    /// Every layer's forward pass and gradients on a device (CUDA) against the CPU's kernels.
    Selftest(selftest::SelftestArgs),
    /// HDF5 model files.
    H5 {
        #[command(subcommand)]
        command: H5Command,
    },
}

#[derive(Subcommand)]
enum H5Command {
    /// Print the file's tree: groups, datasets (shape, dtype), attributes — HDFView's view.
    Inspect { file: PathBuf },
}

/// The architecture in a model file (its config only: no weights are read) or an experiment.
fn summary_of(name: &str) -> anyhow::Result<simplecnn_model::Network> {
    let path = std::path::Path::new(name);
    let is_model_file = path
        .extension()
        .is_some_and(|e| e == "h5" || e == "keras" || e == "hdf5");
    if is_model_file {
        let config = simplecnn_store::read_model_config(path)?;
        return simplecnn_store::layout::network_from_config(&config)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let loaded = experiment::load(name, &[])?;
    experiment::build_spec(&loaded.experiment)
}

/// Errors are printed as one line with their causes (`error: a: b`), never with a backtrace:
/// they are about the user's files and settings, not the program (RUST_BACKTRACE, often set by
/// Rust users, would otherwise print one for every bad argument).
fn main() -> std::process::ExitCode {
    let code = match run() {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<stop::Interrupted>() {
            Some(stopped) => {
                eprintln!("{stopped}");
                stopped.exit_code()
            }
            None => {
                eprintln!("error: {e:#}");
                1
            }
        },
    };
    processes::finish((code != 0).then_some(i32::from(code)));
    std::process::ExitCode::from(code)
}

fn run() -> Result<()> {
    // Training speed depends on it (see simplecnn_train::tune_cpu_runtime).
    simplecnn_train::tune_cpu_runtime();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Data(args) => data::run(args),
        Command::Summary { model, dot } => {
            let models = match model.as_deref() {
                Some("simple-cnn" | "simple_cnn") => vec![simplecnn_model::zoo::simple_cnn()],
                Some("vgg16") => vec![simplecnn_model::zoo::vgg16()],
                Some(other) => vec![summary_of(other)?],
                None => vec![
                    simplecnn_model::zoo::simple_cnn(),
                    simplecnn_model::zoo::vgg16(),
                ],
            };
            for m in &models {
                println!("Model: \"{}\"\n{}", m.name(), m.summary());
            }
            if let Some(path) = dot {
                plots::write_dot(&models[0], &path)?;
            }
            Ok(())
        }
        Command::Show(args) => show::run(args),
        Command::Experiment(args) => experiment::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Export(args) => export::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Selftest(args) => selftest::run(args),
        Command::Compare(args) => compare::run(args),
        Command::H5 {
            command: H5Command::Inspect { file },
        } => {
            print!("{}", simplecnn_store::inspect(&file)?);
            Ok(())
        }
    }
}
