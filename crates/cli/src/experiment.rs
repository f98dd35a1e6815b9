//! `experiment NAME|FILE`: runs an experiment file (`experiments/<name>.toml`, any `.toml`, or
//! a run's `config.json` to replay it) and records everything under its results folder.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;
use simplecnn_experiment::{
    BaseSpec, CallbackSpec, DeviceName, Experiment, InitSpec, KernelsName, Loaded, OptimizerSpec,
    SweepRun,
};
use simplecnn_model::{FeatureShape, Kernels, Model};
use simplecnn_store::MatchBy;
use simplecnn_train::callbacks::{BatchEnd, TrainBegin, TrainState};
use simplecnn_train::{
    evaluate, evaluate_with, fit, resume, Callback, Control, EpochMetrics, History, StopReason, Tta,
};

use simplecnn_bench::{cpu_seconds, peak_rss_mib};

use crate::{data::data_dir, plots, provenance};

/// Today's flags, as shorthands for the experiment's common keys.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Shorthands {
    /// fit.epochs
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub epochs: Option<u32>,
    /// fit.batch_size
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,
    /// data.dir: CIFAR-10 folder, binary layout or image folders (default: CIFAR10_DIR, else data/).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// fit.seed
    #[arg(long)]
    pub seed: Option<u64>,
    /// data.subset: train on the first N training images only (the test split stays whole).
    #[arg(long)]
    pub subset: Option<usize>,
}

impl Shorthands {
    /// As `--set` overrides, applied after the file's and the explicit ones.
    pub fn overrides(&self) -> Vec<String> {
        let mut o = Vec::new();
        if let Some(v) = self.epochs {
            o.push(format!("fit.epochs={v}"));
        }
        if let Some(v) = self.batch_size {
            o.push(format!("fit.batch_size={v}"));
        }
        if let Some(v) = &self.data {
            o.push(format!(
                "data.dir={}",
                toml_string(&v.display().to_string())
            ));
        }
        if let Some(v) = self.seed {
            o.push(format!("fit.seed={v}"));
        }
        if let Some(v) = self.subset {
            o.push(format!("data.subset={v}"));
        }
        o
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[derive(clap::Args, Debug)]
pub struct ExperimentArgs {
    /// An experiment name (experiments/<name>.toml), a .toml file, or a run's config.json
    /// (replays that run).
    #[arg(required_unless_present = "resume")]
    pub experiment: Option<String>,
    /// Continue a run that was killed, in its own folder, from its last checkpoint (the
    /// experiment comes from the folder's config.json).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["experiment", "set", "epochs", "batch_size", "data", "seed", "subset", "device", "out"])]
    pub resume: Option<PathBuf>,
    /// Sets any key of the experiment: `--set fit.epochs=2 --set optimizer.learning_rate=5e-4`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub shorthands: Shorthands,
    /// fit.device
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
    /// outputs.dir: where runs go (a folder per run, and `latest` pointing at the newest).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

impl DeviceArg {
    pub fn name(self) -> DeviceName {
        match self {
            DeviceArg::Cpu => DeviceName::Cpu,
            DeviceArg::Cuda => DeviceName::Cuda,
        }
    }
}

/// What a finished run hands back to a caller that compares runs.
pub struct RunOutcome {
    pub experiment: Experiment,
    pub history: History,
    pub test: simplecnn_train::Evaluation,
    pub train_images: usize,
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

/// Finds and reads the experiment: a file, `experiments/<name>.toml`, or one that comes with
/// the program; `overrides` applied in order.
pub fn load(name: &str, overrides: &[String]) -> Result<Loaded> {
    match simplecnn_experiment::find(name, Path::new("experiments")) {
        Ok(file) => Ok(simplecnn_experiment::load(&file, overrides)?),
        Err(why) => match simplecnn_experiment::BUILT_IN
            .iter()
            .find(|(n, _)| *n == name)
        {
            Some((n, text)) => {
                let origin = PathBuf::from(format!("<built-in experiments/{n}.toml>"));
                Ok(simplecnn_experiment::load_text(text, &origin, overrides)?)
            }
            None => {
                let built_in: Vec<&str> = simplecnn_experiment::BUILT_IN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect();
                bail!("{why}; built in: {}", built_in.join(", "))
            }
        },
    }
}

/// A fresh model for `experiment` on `dev`, initialised (dirac, whitening) from `train`: what a
/// run trains, and what `bench --experiment` times.
pub fn build_model(
    experiment: &Experiment,
    dev: &Device,
    train: &simplecnn_cifar::LabeledImages,
) -> Result<Model> {
    let base = base_config(experiment)?;
    let spec = spec_on(experiment, base.as_ref())?;
    let mut model = Model::new(spec, dev, experiment.init_seed())?;
    set_kernels(&mut model, experiment)?;
    load_base_weights(experiment, &model, base.as_ref())?;
    apply_init(experiment, &model, train)?;
    Ok(model)
}

/// The experiment's kernels and precision (`fit.kernels`, `fit.precision`) on `model`.
fn set_kernels(model: &mut Model, experiment: &Experiment) -> Result<()> {
    model.set_kernels(match experiment.fit.kernels {
        KernelsName::Fast => Kernels::Fast,
        KernelsName::Candle => Kernels::Candle,
    })?;
    model.set_precision(experiment.fit.precision.precision())?;
    Ok(())
}

/// The `model_config` of the experiment's `model.base` (from its file, or VGG-16's from the
/// zoo), if it has one.
fn base_config(experiment: &Experiment) -> Result<Option<serde_json::Value>> {
    Ok(match &experiment.model.base {
        Some(BaseSpec {
            file: Some(file), ..
        }) => Some(simplecnn_store::read_model_config(file)?),
        Some(BaseSpec { zoo: Some(_), .. }) => {
            let [h, w, c] = experiment.model.input;
            let vgg = simplecnn_model::zoo::vgg16_base(FeatureShape::image(c, h, w))
                .with_context(|| format!("model.input {:?} for VGG-16's base", [h, w, c]))?;
            Some(simplecnn_store::layout::model_config(&vgg))
        }
        _ => None,
    })
}

/// The experiment's architecture; on a `model.base`, the base's from its file or the zoo.
pub fn build_spec(experiment: &Experiment) -> Result<simplecnn_model::Network> {
    spec_on(experiment, base_config(experiment)?.as_ref())
}

/// [`build_spec`] with the base's `model_config` already read ([`base_config`]).
fn spec_on(
    experiment: &Experiment,
    base_config: Option<&serde_json::Value>,
) -> Result<simplecnn_model::Network> {
    let spec = experiment
        .build_spec_on(base_config)
        .and_then(|spec| experiment.check_spec(&spec).map(|()| spec))
        .map_err(|(key, why)| anyhow::anyhow!("{key}: {why}"))?;
    Ok(spec)
}

/// The base's layers (all but the `model.layers` on top) get their weights from its file;
/// `config` is the base's `model_config` ([`base_config`]).
fn load_base_weights(
    experiment: &Experiment,
    model: &Model,
    config: Option<&serde_json::Value>,
) -> Result<()> {
    let (Some(base), Some(config)) = (&experiment.model.base, config) else {
        return Ok(());
    };
    // The base's layers: `until` and every layer it depends on (the head's layers take it),
    // or, without `until`, every layer its config names.
    let base_names: std::collections::HashSet<String> = match &base.until {
        Some(until) => model
            .spec()
            .truncated(until)?
            .layers()
            .iter()
            .map(|l| l.name.clone())
            .collect(),
        None => config["config"]["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["config"]["name"].as_str().map(str::to_string))
            .collect(),
    };
    let kept: Vec<String> = model
        .spec()
        .layers()
        .iter()
        .filter(|l| l.param_count() > 0 && base_names.contains(&l.name))
        .map(|l| l.name.clone())
        .collect();
    match (&base.file, base.weights.as_deref()) {
        (Some(file), _) => simplecnn_store::load_layer_weights(model, file, &kept, MatchBy::Name)?,
        (None, Some(weights)) => {
            let file = match weights {
                "imagenet" => crate::weights::vgg16_imagenet_notop()?,
                path => PathBuf::from(path),
            };
            simplecnn_store::load_layer_weights(model, &file, &kept, MatchBy::Order)?
        }
        (None, None) => {}
    }
    Ok(())
}

pub fn run(args: ExperimentArgs) -> Result<()> {
    crate::stop::install()?;
    if let Some(dir) = &args.resume {
        return resume_run(dir);
    }
    let name = args
        .experiment
        .as_deref()
        .expect("clap requires it without --resume");
    let mut overrides = args.set.clone();
    overrides.extend(args.shorthands.overrides());
    if let Some(d) = args.device {
        overrides.push(format!("fit.device={}", toml_string(d.name().as_str())));
    }
    if let Some(out) = &args.out {
        overrides.push(format!(
            "outputs.dir={}",
            toml_string(&out.display().to_string())
        ));
    }
    if let Some(folder) = suite_folder(name) {
        return run_suite(&folder, &overrides, args.out.is_some());
    }
    let loaded = load(name, &overrides)?;
    if let Some(recorded) = &loaded.recorded_commit {
        let now = provenance::collect().git_commit;
        if *recorded != now {
            eprintln!(
                "warning: {} was recorded at commit {recorded}; this is commit {now}: results may differ",
                loaded.file.display()
            );
        }
    }
    run_experiment(loaded.experiment, None).map(|_| ())
}

/// A folder of experiment files run one after another (`experiments/finetune/`): `name` itself,
/// or `experiments/<name>/`.
fn suite_folder(name: &str) -> Option<PathBuf> {
    [PathBuf::from(name), Path::new("experiments").join(name)]
        .into_iter()
        .find(|p| p.is_dir())
}

/// Runs every `.toml` in `folder` in name order, each with `overrides`; a later one may build
/// on an earlier one's results (`model.base.file = "results/<name>/latest/model.h5"`).
fn run_suite(folder: &Path, overrides: &[String], out_given: bool) -> Result<()> {
    if out_given {
        bail!(
            "{}: --out does not apply to a folder of experiments (they find each other's \
             results under results/); run the files one by one to put them elsewhere",
            folder.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("cannot read {}", folder.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no experiment files (.toml) here", folder.display());
    }
    // Every file is read and checked before the first one runs.
    let loaded: Vec<Loaded> = files
        .iter()
        .map(|file| load(&file.display().to_string(), overrides))
        .collect::<Result<_>>()?;
    for (file, loaded) in files.iter().zip(loaded) {
        println!("== {}", file.display());
        run_experiment(loaded.experiment, None)
            .with_context(|| format!("experiment {}", file.display()))?;
    }
    Ok(())
}

/// The file a run keeps while it is unfinished: a killed run still has it.
pub const INCOMPLETE: &str = "INCOMPLETE";

/// `experiment --resume RUN_DIR`: the run's own experiment, continued from
/// `checkpoints/last.*` in the same folder.
pub fn resume_run(dir: &Path) -> Result<()> {
    let config = dir.join("config.json");
    if !config.is_file() {
        bail!("{}: no config.json: not a run folder", dir.display());
    }
    if !dir.join(INCOMPLETE).is_file() {
        bail!(
            "{}: the run finished (no {INCOMPLETE} marker); replay it with `experiment {}`",
            dir.display(),
            config.display()
        );
    }
    let last = simplecnn_train::checkpoint_paths(&dir.join("checkpoints"), "last").0;
    if !last.is_file() {
        bail!(
            "{}: no checkpoint to resume from (killed before its first epoch ended, or the \
             experiment has no model_checkpoint callback): start it again",
            last.display()
        );
    }
    let loaded = simplecnn_experiment::load_run_config(&config)?;
    run_in(
        loaded.experiment,
        RunFolder::Resume(dir.to_path_buf()),
        None,
    )
    .map(|_| ())
}

/// Everything that decides the run's result, and where it ran.
#[derive(Serialize)]
struct RunConfig<'a> {
    /// The fully resolved experiment: `experiment` on this file replays the run.
    experiment: &'a Experiment,
    params: usize,
    trainable_params: usize,
    /// What the model's outputs stand for, in order.
    class_names: &'a [String],
    data_layout: String,
    train_images: usize,
    test_images: usize,
    provenance: provenance::Provenance,
    /// Under `mixed_bfloat16`: which instructions computed the bf16 products.
    #[serde(skip_serializing_if = "Option::is_none")]
    bf16_products: Option<&'static str>,
    /// The sweep this run belongs to, and which of its runs it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    sweep: Option<&'a SweepRun>,
    /// How many processes trained the run, and on which MPI (absent for one).
    #[serde(skip_serializing_if = "Option::is_none")]
    processes: Option<crate::processes::ProcessesRecord>,
}

#[derive(Serialize)]
struct RunTotals {
    wall_seconds: f64,
    /// Every process' user + system seconds, added.
    cpu_seconds: f64,
    /// Each process', in rank order, when there are several.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_seconds_per_process: Option<Vec<f64>>,
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
    top_k: usize,
    top_k_accuracy: f64,
    per_class_accuracy: Vec<(&'a str, f64)>,
    class_names: &'a [String],
    /// `confusion[true][predicted]`.
    confusion: &'a [Vec<usize>],
    /// The test-time augmentation the numbers above used.
    tta: Tta,
    /// `(loss, accuracy)` of the plain images, when `tta` is not `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    without_tta: Option<(f64, f64)>,
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    crate::files::write_contents(path, text)
}

/// Makes `<out>/<run-id>/`, checking that `out` is writable before any work starts.
fn make_run_dir(out: &Path, device: DeviceName) -> Result<PathBuf> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let stamp = provenance::utc_stamp();
    create_unique_dir(out, &format!("{stamp}-{}", device.as_str()))
}

/// Makes `out/base`, or `out/base-2`, `-3`, … when that exists already. Each name is taken by
/// creating it (which fails if it exists), not by looking first: runs started at the same
/// moment (a sweep, K at a time) get different folders.
pub fn create_unique_dir(out: &Path, base: &str) -> Result<PathBuf> {
    let mut n = 1;
    loop {
        let dir = match n {
            1 => out.join(base),
            n => out.join(format!("{base}-{n}")),
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot write to output folder {}", out.display()))
            }
        }
    }
}

/// Points `<out>/latest` at `run_dir` (a relative symlink, replaced atomically).
fn update_latest(out: &Path, run_dir: &Path) -> Result<()> {
    let name = run_dir.file_name().context("run folder has a name")?;
    let latest = out.join("latest");
    // A name of this process' own: runs ending at the same moment must not share it.
    let tmp = simplecnn_files::temporary_name(&latest);
    #[cfg(unix)]
    std::os::unix::fs::symlink(name, &tmp)?;
    #[cfg(not(unix))]
    std::fs::write(&tmp, name.to_string_lossy().as_bytes())?;
    if std::fs::symlink_metadata(&latest).is_ok_and(|m| m.is_dir()) {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "{}: a folder, where the link to the newest run goes; the run is complete in {} \
             (move the folder away to have `latest` updated)",
            latest.display(),
            run_dir.display()
        );
    }
    std::fs::rename(&tmp, &latest)
        .with_context(|| format!("cannot point {} at the run", latest.display()))?;
    Ok(())
}

/// The experiment's initialisation steps (dirac, whitening from the first training images).
pub fn apply_init(
    experiment: &Experiment,
    model: &Model,
    train: &simplecnn_cifar::LabeledImages,
) -> Result<()> {
    for step in &experiment.model.init {
        match step {
            InitSpec::Dirac { layers } => {
                for layer in layers {
                    simplecnn_model::init::dirac(model, layer)?;
                }
            }
            InitSpec::Whitening {
                layer,
                images,
                epsilon,
            } => {
                let n = (*images).min(train.len());
                let idx: Vec<usize> = (0..n).collect();
                let x = train.batch(&idx, model.device())?.images;
                simplecnn_model::init::init_whitening(model, layer, &x, *epsilon)?;
            }
        }
    }
    Ok(())
}

/// The layers every one of whose trainable weights `freeze` has frozen after `epochs_run`
/// epochs.
fn frozen_at_end(
    model: &Model,
    freeze: &[simplecnn_train::Freeze],
    epochs_run: usize,
) -> Vec<String> {
    let frozen: Vec<&String> = freeze
        .iter()
        .filter(|f| f.from_epoch <= epochs_run)
        .flat_map(|f| &f.weights)
        .collect();
    model
        .spec()
        .layers()
        .iter()
        .filter(|l| {
            let mut trainable = model
                .weights()
                .filter(|w| w.layer == l.name && w.role.trainable())
                .peekable();
            trainable.peek().is_some() && trainable.all(|w| frozen.contains(&&w.path()))
        })
        .map(|l| l.name.clone())
        .collect()
}

/// Refuses, before anything is allocated, a run whose weights, optimizer state and batch
/// activations cannot fit in the memory this process may use.
fn check_run_memory(
    experiment: &Experiment,
    spec: &simplecnn_model::Network,
    batch: usize,
) -> Result<()> {
    let optimizer_slots = match experiment.optimizer {
        OptimizerSpec::Adam { .. } => 2,
        OptimizerSpec::Sgd { momentum, .. } => usize::from(momentum > 0.0),
    };
    // Lookahead keeps a copy of the weights.
    let lookahead = experiment
        .callbacks
        .iter()
        .filter(|c| matches!(c, CallbackSpec::Lookahead { .. }))
        .count();
    let need =
        simplecnn_model::memory::MemoryNeed::training(spec, batch, optimizer_slots + lookahead);
    simplecnn_model::memory::check_memory(&need, &format!("experiment {:?}", experiment.name))?;
    Ok(())
}

/// The resume command for a run folder.
fn resume_command(run_dir: &Path) -> String {
    format!("cargo xtask experiment --resume {}", run_dir.display())
}

/// An error as it ends the run: [`crate::stop::Interrupted`] if a signal was received (the
/// training error is then only its consequence), else itself.
fn interrupted_or(e: anyhow::Error, run_dir: &Path) -> anyhow::Error {
    match crate::stop::received() {
        Some(signal) => crate::stop::Interrupted {
            signal,
            resume: format!(
                "the run is resumable from its last finished epoch: {}",
                resume_command(run_dir)
            ),
        }
        .into(),
        None => e,
    }
}

/// Ends the run between its phases (training, saving, testing) once a signal came.
fn stop_if_signalled(run_dir: &Path) -> Result<()> {
    match crate::stop::received() {
        Some(_) => Err(interrupted_or(anyhow::anyhow!("stopped"), run_dir)),
        None => Ok(()),
    }
}

/// Marks `run_dir` unfinished until the run ends: a killed run keeps the marker, which says
/// how to go on.
fn write_marker(run_dir: &Path) -> Result<()> {
    let text = format!(
        "This run has not finished (or was killed). Continue it from its last checkpoint with\n  \
         {}\n",
        resume_command(run_dir)
    );
    crate::files::write_contents(&run_dir.join(INCOMPLETE), text)
}

/// Keras' `verbose=2` line after each epoch.
struct KerasLog {
    epochs: usize,
}

impl Callback for KerasLog {
    fn on_train_begin(&mut self, info: &TrainBegin<'_>) -> simplecnn_train::Result<()> {
        self.epochs = info.epochs;
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        logs: &EpochMetrics,
        _: &TrainState<'_>,
    ) -> simplecnn_train::Result<Control> {
        println!("{}", logs.keras_line(self.epochs));
        Ok(Control::Continue)
    }
}

/// A bar inside each epoch on a terminal (stderr), with the running loss and accuracy.
struct ProgressBar {
    bar: indicatif::ProgressBar,
}

impl ProgressBar {
    fn new() -> Self {
        Self {
            bar: indicatif::ProgressBar::hidden(),
        }
    }
}

impl Callback for ProgressBar {
    fn on_train_begin(&mut self, info: &TrainBegin<'_>) -> simplecnn_train::Result<()> {
        if std::io::stderr().is_terminal() {
            self.bar = indicatif::ProgressBar::new(info.steps_per_epoch as u64).with_style(
                indicatif::ProgressStyle::with_template("{pos}/{len} [{bar:30}] {elapsed} - {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
        }
        Ok(())
    }

    fn on_epoch_begin(&mut self, _: usize) -> simplecnn_train::Result<()> {
        self.bar.reset();
        Ok(())
    }

    fn on_batch_end(&mut self, b: &BatchEnd<'_>) -> simplecnn_train::Result<Control> {
        self.bar.set_position(b.batch as u64);
        self.bar
            .set_message(format!("loss: {:.4} - acc: {:.4}", b.mean_loss, b.mean_acc));
        Ok(Control::Continue)
    }

    fn on_epoch_end(
        &mut self,
        _: &EpochMetrics,
        _: &TrainState<'_>,
    ) -> simplecnn_train::Result<Control> {
        self.bar.finish_and_clear();
        Ok(Control::Continue)
    }

    fn on_train_end(&mut self, _: &History) -> simplecnn_train::Result<()> {
        self.bar.finish_and_clear();
        Ok(())
    }
}

/// What a process other than the lead does in a run: trains its share of every batch (with
/// the callbacks that steer training, none that print or write) and leaves; rank 0 evaluates
/// and writes.
fn follow(
    world: &dyn simplecnn_collective::Collective,
    experiment: Experiment,
    model: &Model,
    data: &simplecnn_cifar::Cifar10,
    fit_config: &simplecnn_train::FitConfig,
    run_dir: &Path,
    resuming: bool,
) -> Result<RunOutcome> {
    let split_at = fit_config.split_at(data.train.len());
    let mut callbacks: Vec<Box<dyn Callback>> = experiment
        .callbacks
        .iter()
        .filter(|c| c.steers_training())
        .map(|c| experiment.build_callback(c, run_dir))
        .collect::<Option<_>>()
        .context("internal error: a callback that steers training was not built")?;
    callbacks.push(Box::new(crate::stop::StopOnSignal));
    let checkpoints = resuming.then(|| run_dir.join("checkpoints"));
    let (_, history) = train(
        &experiment,
        model,
        &data.train,
        fit_config,
        &mut callbacks,
        checkpoints.as_deref(),
    )?;
    let history = history.with_context(|| format!("rank {} of {}", world.rank(), world.size()))?;
    // The same evaluations as rank 0's, which the processes share.
    let (test, _) = test_evaluations(
        model,
        &data.test,
        fit_config.batch_size,
        experiment.test.tta,
    )?;
    Ok(RunOutcome {
        experiment,
        history,
        test,
        train_images: split_at,
    })
}

/// The experiment's optimizer and schedule, and `model` trained with `callbacks`: `fit`, or
/// `resume` from `checkpoints`. What every process of a run does; the optimizer comes back
/// for rank 0 to save its state.
fn train(
    experiment: &Experiment,
    model: &Model,
    data: &simplecnn_cifar::LabeledImages,
    config: &simplecnn_train::FitConfig,
    callbacks: &mut [Box<dyn Callback>],
    checkpoints: Option<&Path>,
) -> Result<(
    Box<dyn simplecnn_train::Optimizer>,
    simplecnn_train::Result<History>,
)> {
    let mut optimizer = experiment.build_optimizer(model)?;
    let schedule = experiment.build_schedule(config.total_steps(config.split_at(data.len())));
    let (o, s) = (optimizer.as_mut(), schedule.as_ref());
    let history = match checkpoints {
        None => fit(model, o, s, data, config, callbacks),
        Some(dir) => resume(model, o, s, data, config, callbacks, dir),
    };
    Ok((optimizer, history))
}

/// The test split's evaluation with the experiment's test-time augmentation, and without it
/// when there is one. Every process of a run calls this (they share the images).
fn test_evaluations(
    model: &Model,
    test: &simplecnn_cifar::LabeledImages,
    batch_size: usize,
    tta: Tta,
) -> Result<(
    simplecnn_train::Evaluation,
    Option<simplecnn_train::Evaluation>,
)> {
    let all: Vec<usize> = (0..test.len()).collect();
    let with = evaluate_with(model, test, &all, batch_size, tta)?;
    let without = match tta {
        Tta::None => None,
        _ => Some(evaluate(model, test, batch_size)?),
    };
    Ok((with, without))
}

/// What every process of a run must agree on: the program (commit, local changes, features,
/// the binary's size) and the resolved experiment with its data folder.
fn fingerprint(
    p: &provenance::Provenance,
    experiment: &Experiment,
    data_dir: &Path,
) -> Result<Vec<u8>> {
    let exe = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map_or(0, |m| m.len());
    let mut bytes = format!(
        "{} {} {:?} {exe} {}\n",
        p.git_commit,
        p.git_dirty,
        p.build_features,
        data_dir.display()
    )
    .into_bytes();
    bytes.extend(serde_json::to_vec(experiment)?);
    Ok(bytes)
}

/// Where a run writes.
enum RunFolder {
    /// A new folder under the experiment's output folder, `latest` pointing at it at the end.
    New,
    /// Exactly this folder (made here, no `latest` link: for `compare`).
    At(PathBuf),
    /// A killed run's folder, continued from its last checkpoint.
    Resume(PathBuf),
}

/// Runs `experiment` into a new folder under its output folder, or into exactly `run_dir`
/// (made here, no `latest` link: for `compare`).
pub fn run_experiment(experiment: Experiment, run_dir: Option<PathBuf>) -> Result<RunOutcome> {
    run_in(
        experiment,
        run_dir.map_or(RunFolder::New, RunFolder::At),
        None,
    )
}

/// Runs `experiment`, run `tag.index` of a sweep, into a new folder under its output folder;
/// its `config.json` records `tag`.
pub fn run_sweep_member(experiment: Experiment, tag: &SweepRun) -> Result<RunOutcome> {
    run_in(experiment, RunFolder::New, Some(tag))
}

fn run_in(
    mut experiment: Experiment,
    folder: RunFolder,
    sweep: Option<&SweepRun>,
) -> Result<RunOutcome> {
    // Every setting is checked (in `load`) before the data is read or a folder is made.
    let dev = device(experiment.fit.device)?;
    // Rank 0 leads a run on several processes: it alone prints and writes the run folder.
    let world = crate::processes::world()?;
    let lead = world.rank() == 0;
    let explicit_data = experiment.data.dir.is_some() || std::env::var_os("CIFAR10_DIR").is_some();
    let data_dir = data_dir(experiment.data.dir.clone());
    let started = Instant::now();
    let cpu_start = cpu_seconds();
    if !explicit_data && simplecnn_cifar::detect(&data_dir).is_err() {
        if world.size() > 1 {
            bail!(
                "no CIFAR-10 in {}: fetch it first (cargo xtask data), then start the processes",
                data_dir.display()
            );
        }
        // Like Keras' cifar10.load_data(): fetch the data on first use into the default folder.
        println!(
            "No CIFAR-10 in {}: downloading it (cargo xtask data)",
            data_dir.display()
        );
        crate::data::download_into(&data_dir)?;
    }
    let folder_options = simplecnn_cifar::ImageFolderOptions {
        resize: experiment.data.resize,
        ..Default::default()
    };
    let mut data = simplecnn_cifar::load_with(&data_dir, &folder_options)?;
    let data_load_seconds = started.elapsed().as_secs_f64();
    if !experiment.data.classes.is_empty() {
        data = data.keep_classes(&experiment.data.classes)?;
    }
    if let Some(n) = experiment.data.per_class {
        data.train = data.train.first_per_class(n);
    }
    if let Some(n) = experiment.data.subset {
        if n > data.train.len() {
            bail!(
                "data.subset {n} is larger than the {} training images in {}",
                data.train.len(),
                data_dir.display()
            );
        }
        data.train = data.train.take(n);
    }
    let mut fit_config = experiment.fit_config();
    fit_config.validate(data.train.len())?;
    let train_images = fit_config.split_at(data.train.len());
    fit_config.max_steps = experiment.max_steps(fit_config.steps_per_epoch(train_images));
    let base = base_config(&experiment)?;
    let spec = spec_on(&experiment, base.as_ref())?;
    let classes = spec.output_shape().elem_count();
    if classes != data.train.num_classes() {
        bail!(
            "the model predicts {classes} classes, the data in {} has {}",
            data_dir.display(),
            data.train.num_classes()
        );
    }
    check_run_memory(&experiment, &spec, fit_config.batch_size.min(train_images))?;
    fit_config.check_processes(world.size(), train_images)?;
    // Collected once: the processes compare it, config.json records it.
    let provenance = provenance::collect();
    if world.size() > 1 {
        let print = fingerprint(&provenance, &experiment, &data_dir)?;
        crate::processes::check_same_run(world.as_ref(), &print)?;
    }
    let out = experiment.output_dir();
    let (run_dir, make_latest, resuming) = match folder {
        RunFolder::At(dir) => {
            if lead {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create output folder {}", dir.display()))?;
            }
            (dir, false, false)
        }
        RunFolder::New if lead => (make_run_dir(&out, experiment.fit.device)?, true, false),
        RunFolder::New => (PathBuf::new(), true, false),
        RunFolder::Resume(dir) => (dir, true, true),
    };
    // The other processes read the lead's folder (its checkpoints, on a resume).
    let run_dir = PathBuf::from(crate::processes::from_lead(
        world.as_ref(),
        &run_dir.to_string_lossy(),
    )?);
    // One run in a run folder at a time; the lock lasts until this function returns.
    let _lock = match lead {
        true => Some(simplecnn_files::FolderLock::acquire(&run_dir)?),
        false => None,
    };
    if resuming && !run_dir.join(INCOMPLETE).is_file() {
        bail!(
            "{}: the run finished while this process waited to start",
            run_dir.display()
        );
    }
    let out = match resuming {
        // `latest` goes beside the run, wherever it was moved.
        true => run_dir.parent().map_or(out, Path::to_path_buf),
        false => out,
    };
    if lead {
        write_marker(&run_dir)?;
    }

    let mut model = Model::new(spec, &dev, experiment.init_seed())?;
    set_kernels(&mut model, &experiment)?;
    model.set_collective(world.clone());
    if !resuming {
        load_base_weights(&experiment, &model, base.as_ref())?;
        apply_init(&experiment, &model, &data.train)?;
    }
    if !lead {
        let outcome = follow(
            world.as_ref(),
            experiment,
            &model,
            &data,
            &fit_config,
            &run_dir,
            resuming,
        )?;
        // Rank 0's run.json counts every process' CPU-seconds.
        crate::processes::each_process(world.as_ref(), cpu_seconds() - cpu_start)?;
        return Ok(outcome);
    }
    let summary = model.summary();
    print!("{summary}");
    let bf16_path = (model.precision() == simplecnn_model::Precision::MixedBf16)
        .then(simplecnn_model::ops::gemm_bf16::bf16_path);
    if let Some(path) = bf16_path {
        let slower = match simplecnn_model::ops::gemm_bf16::has_bf16_instructions() {
            true => "",
            false => ": slower than float32",
        };
        println!("mixed_bfloat16: the convolutions' products on {path}{slower}");
    }
    if !resuming {
        std::fs::write(run_dir.join("summary.txt"), &summary)?;
    }
    // The resolved experiment names the data it read.
    experiment.data.dir = Some(data_dir.clone());
    let config = RunConfig {
        experiment: &experiment,
        params: model.spec().param_count(),
        trainable_params: model.spec().trainable_param_count(),
        class_names: &data.class_names,
        data_layout: format!("{:?}", simplecnn_cifar::detect(&data_dir)?),
        train_images: data.train.len(),
        test_images: data.test.len(),
        provenance,
        bf16_products: bf16_path,
        sweep,
        processes: crate::processes::record(world.as_ref()),
    };
    if !resuming {
        write_json(&run_dir.join("config.json"), &config)?;
    }
    let split_at = fit_config.split_at(data.train.len());
    println!(
        "Train on {split_at} samples, validate on {} samples; results in {}",
        data.train.len() - split_at,
        run_dir.display()
    );
    if world.size() > 1 {
        println!("{} processes on {}", world.size(), world.describe());
    }

    // TensorBoard logs an epoch before a checkpoint records it as done (a run killed between
    // the two then logs that epoch again on resume, where its logs are trimmed, rather than
    // never).
    let mut specs: Vec<&CallbackSpec> = experiment.callbacks.iter().collect();
    specs.sort_by_key(|c| !matches!(c, CallbackSpec::Tensorboard { .. }));
    let mut callbacks: Vec<Box<dyn Callback>> = specs
        .into_iter()
        .map(|c| match c {
            CallbackSpec::KerasLog {} => Box::new(KerasLog { epochs: 0 }) as Box<dyn Callback>,
            CallbackSpec::ProgressBar {} => Box::new(ProgressBar::new()),
            other => experiment
                .build_callback(other, &run_dir)
                .expect("non-printing callbacks are built by the experiment"),
        })
        .collect();
    callbacks.push(Box::new(crate::stop::StopOnSignal));
    let checkpoints = resuming.then(|| run_dir.join("checkpoints"));
    if let Some(dir) = &checkpoints {
        println!("Resuming from {}", dir.display());
    }
    let (optimizer, history) = train(
        &experiment,
        &model,
        &data.train,
        &fit_config,
        &mut callbacks,
        checkpoints.as_deref(),
    )?;
    let history = history.map_err(|e| interrupted_or(e.into(), &run_dir))?;
    drop(callbacks);
    stop_if_signalled(&run_dir)?;
    if let Some(reason) = &history.stopped {
        println!("{reason}");
    }
    if experiment.outputs.plots && !history.epochs.is_empty() {
        plots::loss_and_accuracy(&history, &run_dir)?;
    }

    // A layer whose weights were all frozen by the end of the run is saved as Keras'
    // `trainable: false` (airbench's whitening layer).
    for layer in frozen_at_end(&model, &fit_config.freeze, history.epochs.len()) {
        model.set_trainable(&layer, false)?;
    }

    // model.save('model.h5'), with Adam's state so training can resume from the file (the
    // .h5 layout we write holds Adam's slots only; other optimizers save the model alone).
    let state = optimizer.state()?;
    let adam_state = match experiment.optimizer {
        OptimizerSpec::Adam {
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
        } => Some(simplecnn_store::AdamState {
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
            iterations: state.iterations,
            slots: state.slots,
        }),
        OptimizerSpec::Sgd { .. } => None,
    };
    let save_options = simplecnn_store::SaveOptions {
        optimizer: adam_state.as_ref(),
        class_names: Some(&data.class_names),
    };
    for name in &experiment.outputs.save {
        simplecnn_store::save_model_with(&model, &run_dir.join(name), &save_options)?;
    }

    stop_if_signalled(&run_dir)?;
    let tta = experiment.test.tta;
    let (test, without_tta) = test_evaluations(&model, &data.test, fit_config.batch_size, tta)?;
    if let Some(plain) = &without_tta {
        println!(
            "without test-time augmentation: test loss: {:.4} - test accuracy: {:.4}",
            plain.loss, plain.accuracy
        );
    }
    print!(
        "{}",
        crate::evaluate::report_lines(&test, &data.class_names)
    );
    if experiment.outputs.plots {
        crate::evaluate::write_pictures(&run_dir, &data.test, &test, &data.class_names)?;
    }
    let logs_tensorboard = experiment
        .callbacks
        .iter()
        .any(|c| matches!(c, CallbackSpec::Tensorboard { .. }));
    if logs_tensorboard {
        let last_epoch = history.epochs.len().saturating_sub(1) as i64;
        crate::tensorboard::write_test_images(
            &run_dir.join(simplecnn_experiment::LOG_DIR),
            last_epoch,
            &data.test,
            &test,
            &data.class_names,
        )?;
    }
    let report = TestReport {
        loss: test.loss,
        accuracy: test.accuracy,
        top_k: test.top_k,
        top_k_accuracy: test.top_k_accuracy,
        count: test.count,
        per_class_accuracy: data
            .class_names
            .iter()
            .map(String::as_str)
            .zip(test.per_class_accuracy.iter().copied())
            .collect(),
        class_names: &data.class_names,
        confusion: &test.confusion,
        tta,
        without_tta: without_tta.as_ref().map(|e| (e.loss, e.accuracy)),
    };
    write_json(&run_dir.join("test.json"), &report)?;
    let cpu = crate::processes::each_process(world.as_ref(), cpu_seconds() - cpu_start)?;
    let totals = RunTotals {
        wall_seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu.iter().sum(),
        cpu_seconds_per_process: (cpu.len() > 1).then(|| cpu.clone()),
        peak_rss_mib: peak_rss_mib(),
        data_load_seconds,
        epochs_run: history.epochs.len(),
        stopped: history.stopped.as_ref().map(|s| s.to_string()),
    };
    write_json(&run_dir.join("run.json"), &totals)?;
    std::fs::remove_file(run_dir.join(INCOMPLETE))
        .with_context(|| format!("cannot remove {}", run_dir.join(INCOMPLETE).display()))?;
    if make_latest {
        update_latest(&out, &run_dir)?;
    }
    println!("results in {}", run_dir.display());
    if matches!(history.stopped, Some(StopReason::NonFiniteLoss { .. })) {
        bail!("training diverged");
    }
    Ok(RunOutcome {
        experiment,
        history,
        test,
        train_images: split_at,
    })
}
