//! `simplecnn …` (what `cargo xtask …` runs): glue over the library crates; no model or data logic here.

mod bench;
mod compare;
mod data;
mod experiment;
mod files;
mod plots;
mod provenance;
mod show;

use std::path::PathBuf;

use anyhow::Result;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Print Keras' summary table of a model (both when none is named).
    Summary {
        model: Option<ModelName>,
        /// Also write the model graph as Graphviz DOT to this file (and SVG beside it when `dot` is installed).
        #[arg(long)]
        dot: Option<PathBuf>,
    },
    /// Write images of the data set as upscaled PNGs with their class names.
    Show(show::ShowArgs),
    /// Run an experiment file (experiments/<name>.toml, any .toml, or a run's config.json to
    /// replay it) and record everything under results/<name>/.
    Experiment(experiment::ExperimentArgs),
    /// Keras' `model.evaluate` on the test split for a saved model (ours or one Keras wrote).
    Evaluate {
        /// A Keras-layout .h5 model file.
        #[arg(long)]
        model: PathBuf,
        /// CIFAR-10 folder (default: CIFAR10_DIR, else data/).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
        batch_size: u32,
    },
    /// The baseline on several devices (`compare cpu cuda`), same seed and data, side by side.
    Compare(compare::CompareArgs),
    /// Training and inference throughput on real data; with --reference beside Keras and PyTorch.
    Bench(bench::BenchArgs),
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

#[derive(Clone, Copy, ValueEnum)]
enum ModelName {
    SimpleCnn,
    Vgg16,
}

fn main() -> Result<()> {
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
            let models = match model {
                Some(ModelName::SimpleCnn) => vec![simplecnn_model::zoo::simple_cnn()],
                Some(ModelName::Vgg16) => vec![simplecnn_model::zoo::vgg16()],
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
        Command::Evaluate {
            model,
            data,
            batch_size,
        } => {
            let model = simplecnn_store::load_model(&model, &candle_core::Device::Cpu)?;
            let data = simplecnn_cifar::load(&data::data_dir(data))?;
            let test = simplecnn_train::evaluate(&model, &data.test, batch_size as usize)?;
            println!(
                "test loss: {:.4} - test accuracy: {:.4}",
                test.loss, test.accuracy
            );
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
        Command::Compare(args) => compare::run(args),
        Command::H5 {
            command: H5Command::Inspect { file },
        } => {
            print!("{}", simplecnn_store::inspect(&file)?);
            Ok(())
        }
    }
}
