//! `experiment baseline`: the tutorial's recipe, recorded under results/baseline/.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;
use simplecnn_model::{zoo, Model};
use simplecnn_train::{evaluate, fit, Adam, AdamConfig, FitConfig};

use simplecnn_bench::{cpu_seconds, peak_rss_mib};

use crate::{data::data_dir, plots, provenance};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceName {
    Cpu,
    Cuda,
}

/// The tutorial's recipe, as far as a command line changes it.
#[derive(clap::Args, Clone, Debug)]
pub struct RecipeArgs {
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub epochs: u32,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// CIFAR-10 folder, binary layout or image folders (default: CIFAR10_DIR, else data/).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training images only (the test split stays whole).
    #[arg(long)]
    pub subset: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceName,
    /// Where runs go: a folder per run, and `latest` pointing at the newest.
    #[arg(long, default_value = "results/baseline")]
    pub out: PathBuf,
    /// Write into exactly this folder (made here), with no `latest` link: for `compare`.
    #[arg(skip)]
    pub run_dir: Option<PathBuf>,
}

/// What a finished baseline run hands back to a caller that compares runs.
pub struct BaselineOutcome {
    pub history: simplecnn_train::History,
    pub test: simplecnn_train::Evaluation,
    pub train_images: usize,
}

impl DeviceName {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceName::Cpu => "cpu",
            DeviceName::Cuda => "cuda",
        }
    }
}

pub fn device(name: DeviceName) -> Result<Device> {
    match name {
        DeviceName::Cpu => Ok(Device::Cpu),
        DeviceName::Cuda if cfg!(feature = "cuda") => {
            Device::new_cuda(0).context("CUDA device 0 is not usable")
        }
        DeviceName::Cuda => bail!("this build has no CUDA support: rebuild with `--features cuda`"),
    }
}

/// Everything that decides the run's result, and where it ran.
#[derive(Serialize)]
struct RunConfig<'a> {
    experiment: &'static str,
    model: &'static str,
    params: usize,
    data_dir: String,
    data_layout: String,
    train_images: usize,
    test_images: usize,
    subset: Option<usize>,
    device: DeviceName,
    fit: &'a FitConfig,
    optimizer: &'static str,
    adam: AdamConfig,
    loss: &'static str,
    init_seed: u64,
    provenance: provenance::Provenance,
}

#[derive(Serialize)]
struct RunTotals {
    wall_seconds: f64,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    data_load_seconds: f64,
    epochs_run: usize,
    stopped: Option<String>,
}

#[derive(Serialize)]
struct TestReport<'a> {
    loss: f64,
    accuracy: f64,
    count: usize,
    per_class_accuracy: Vec<(&'a str, f64)>,
    class_names: &'a [String],
    /// `confusion[true][predicted]`.
    confusion: &'a [Vec<usize>],
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    crate::files::write_atomic(path, |tmp| Ok(std::fs::write(tmp, text)?))
}

/// Makes `<out>/<run-id>/`, checking that `out` is writable before any work starts.
fn make_run_dir(out: &Path, device: DeviceName) -> Result<PathBuf> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let stamp = provenance::utc_stamp();
    let dir = unique_dir(out, &format!("{stamp}-{}", device.as_str()));
    std::fs::create_dir(&dir)
        .with_context(|| format!("cannot write to output folder {}", out.display()))?;
    Ok(dir)
}

/// `out/base`, or `out/base-2`, `-3`, … when that exists already.
pub fn unique_dir(out: &Path, base: &str) -> PathBuf {
    let mut dir = out.join(base);
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = out.join(format!("{base}-{n}"));
    }
    dir
}

/// Points `<out>/latest` at `run_dir` (a relative symlink, replaced atomically).
fn update_latest(out: &Path, run_dir: &Path) -> Result<()> {
    let name = run_dir.file_name().context("run folder has a name")?;
    let tmp = out.join(".latest.tmp");
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(name, &tmp)?;
    #[cfg(not(unix))]
    std::fs::write(&tmp, name.to_string_lossy().as_bytes())?;
    std::fs::rename(&tmp, out.join("latest"))?;
    Ok(())
}

pub fn run_baseline(args: BaselineArgs) -> Result<BaselineOutcome> {
    // Every argument is checked before the data is read or a folder is made.
    let device = device(args.device)?;
    let explicit_data = args.recipe.data.is_some() || std::env::var_os("CIFAR10_DIR").is_some();
    let data_dir = data_dir(args.recipe.data.clone());
    if args.recipe.subset == Some(0) {
        bail!("--subset must be at least 1");
    }
    let started = Instant::now();
    let cpu_start = cpu_seconds();
    if !explicit_data && simplecnn_cifar::detect(&data_dir).is_err() {
        // Like Keras' cifar10.load_data(): fetch the data on first use into the default folder.
        println!(
            "No CIFAR-10 in {}: downloading it (cargo xtask data)",
            data_dir.display()
        );
        crate::data::download_into(&data_dir)?;
    }
    let mut data = simplecnn_cifar::load(&data_dir)?;
    let data_load_seconds = started.elapsed().as_secs_f64();
    if let Some(n) = args.recipe.subset {
        if n > data.train.len() {
            bail!(
                "--subset {n} is larger than the {} training images in {}",
                data.train.len(),
                data_dir.display()
            );
        }
        data.train = data.train.take(n);
    }
    let fit_config = FitConfig {
        epochs: args.recipe.epochs as usize,
        batch_size: args.recipe.batch_size as usize,
        validation_split: 0.1,
        shuffle: true,
        seed: args.recipe.seed,
        early_stopping: None,
        checkpoint_dir: None,
        verbose: true,
    };
    fit_config.validate(data.train.len())?;
    let run_dir = match &args.run_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create output folder {}", dir.display()))?;
            dir.clone()
        }
        None => make_run_dir(&args.out, args.device)?,
    };
    let fit_config = FitConfig {
        checkpoint_dir: Some(run_dir.join("checkpoints")),
        ..fit_config
    };

    let spec = zoo::simple_cnn();
    let model = Model::new(spec, &device, args.recipe.seed)?;
    let summary = model.summary();
    print!("{summary}");
    std::fs::write(run_dir.join("summary.txt"), &summary)?;
    let adam_config = AdamConfig::default();
    let config = RunConfig {
        experiment: "baseline",
        model: "simple_cnn",
        params: model.spec().param_count(),
        data_dir: data_dir.display().to_string(),
        data_layout: format!("{:?}", simplecnn_cifar::detect(&data_dir)?),
        train_images: data.train.len(),
        test_images: data.test.len(),
        subset: args.recipe.subset,
        device: args.device,
        fit: &fit_config,
        optimizer: "Adam",
        adam: adam_config,
        loss: "categorical_crossentropy",
        init_seed: args.recipe.seed,
        provenance: provenance::collect(),
    };
    write_json(&run_dir.join("config.json"), &config)?;
    let split_at = fit_config.split_at(data.train.len());
    println!(
        "Train on {split_at} samples, validate on {} samples; results in {}",
        data.train.len() - split_at,
        run_dir.display()
    );

    let mut adam = Adam::new(model.vars(), adam_config)?;
    let history = fit(&model, &mut adam, &data.train, &fit_config)?;
    history.write_csv(&run_dir.join("epochs.csv"))?;
    if let Some(reason) = &history.stopped {
        println!("{reason}");
    }
    if !history.epochs.is_empty() {
        plots::loss_and_accuracy(&history, &run_dir)?;
    }

    // model.save('model.h5'), with Adam's state so training can resume from the file.
    let (m, v) = adam.moments();
    let adam_state = simplecnn_store::AdamState {
        learning_rate: adam.config.learning_rate,
        beta_1: adam.config.beta_1,
        beta_2: adam.config.beta_2,
        epsilon: adam.config.epsilon,
        iterations: adam.iterations(),
        m: m.to_vec(),
        v: v.to_vec(),
    };
    simplecnn_store::save_model(&model, &run_dir.join("model.h5"), Some(&adam_state))?;

    let test = evaluate(&model, &data.test, fit_config.batch_size)?;
    println!(
        "test loss: {:.4} - test accuracy: {:.4}",
        test.loss, test.accuracy
    );
    let report = TestReport {
        loss: test.loss,
        accuracy: test.accuracy,
        count: test.count,
        per_class_accuracy: data
            .class_names
            .iter()
            .map(String::as_str)
            .zip(test.per_class_accuracy.iter().copied())
            .collect(),
        class_names: &data.class_names,
        confusion: &test.confusion,
    };
    write_json(&run_dir.join("test.json"), &report)?;
    let totals = RunTotals {
        wall_seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu_start,
        peak_rss_mib: peak_rss_mib(),
        data_load_seconds,
        epochs_run: history.epochs.len(),
        stopped: history.stopped.as_ref().map(|s| s.to_string()),
    };
    write_json(&run_dir.join("run.json"), &totals)?;
    if args.run_dir.is_none() {
        update_latest(&args.out, &run_dir)?;
    }
    println!("results in {}", run_dir.display());
    if history
        .stopped
        .as_ref()
        .is_some_and(|s| matches!(s, simplecnn_train::StopReason::NonFiniteLoss { .. }))
    {
        bail!("training diverged");
    }
    Ok(BaselineOutcome {
        history,
        test,
        train_images: split_at,
    })
}
