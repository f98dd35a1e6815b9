//! `bench`: our training and inference throughput on real data, optionally beside Keras and
//! PyTorch (`benches/reference/`), each in its own process, alternating, on the same data.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use simplecnn_bench::{BenchConfig, RawMeasurement, ThroughputReport, Workload};
use simplecnn_collective::metered::Metered;
use simplecnn_model::{Kernels, Model};

use crate::{data::data_dir, provenance};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelsArg {
    Fast,
    Candle,
}

impl KernelsArg {
    /// As `--worker` takes it.
    fn arg(self) -> &'static str {
        match self {
            KernelsArg::Fast => "fast",
            KernelsArg::Candle => "candle",
        }
    }

    /// The name in the results.
    fn framework(self) -> &'static str {
        match self {
            KernelsArg::Fast => "simplecnn",
            KernelsArg::Candle => "simplecnn-candle-ops",
        }
    }

    fn kernels(self) -> Kernels {
        match self {
            KernelsArg::Fast => Kernels::Fast,
            KernelsArg::Candle => Kernels::Candle,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// CIFAR-10 folder (default: CIFAR10_DIR, else data/); the binary layout for --reference.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Timed training steps (batch 128) per run.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 3)]
    pub warmup: u32,
    /// Images predicted per run, in batches of 1000.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub inference_images: u32,
    /// Runs of each framework, alternating between them.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Also run Keras and PyTorch (benches/reference/) and report our ratio to each (and,
    /// for the tutorial's model, ONNX Runtime's inference: `--onnxruntime`).
    #[arg(long)]
    pub reference: bool,
    /// Also time ONNX Runtime predicting with our SimpleCNN exported to ONNX (inference only;
    /// the binary layout). Implied by `--reference` for the tutorial's model.
    #[arg(long, conflicts_with = "experiment")]
    pub onnxruntime: bool,
    #[arg(long, default_value = "target/reference-venv/keras/bin/python")]
    pub python_keras: PathBuf,
    #[arg(long, default_value = "target/reference-venv/torch/bin/python")]
    pub python_torch: PathBuf,
    /// A Python with onnxruntime, for the inference row of our exported SimpleCNN (the
    /// tutorial's model only).
    #[arg(long, default_value = "target/py-venv/bin/python")]
    pub python_onnx: PathBuf,
    #[arg(long, default_value = "benches/reference")]
    pub scripts: PathBuf,
    /// Also run ours with candle's own convolution and pooling ops (the kernels' "before").
    #[arg(long)]
    pub candle_kernels: bool,
    #[arg(long, default_value = "results/bench")]
    pub out: PathBuf,
    /// Time this experiment's model, optimizer, loss and batch size instead of the tutorial's
    /// (a name from experiments/ or a .toml file), e.g. `--experiment airbench94 --steps 5`.
    #[arg(long)]
    pub experiment: Option<String>,
    /// Sets a key of that experiment, as `experiment --set` does.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "experiment")]
    pub set: Vec<String>,
    /// Where ours (and PyTorch's reference, `--device cuda` to its script) train and predict.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: crate::experiment::DeviceArg,
    /// Internal: measure in this process with these kernels and print one JSON line.
    #[arg(long, hide = true, value_enum)]
    pub worker: Option<KernelsArg>,
}

/// One line of a harness's output (ours or a reference script's).
#[derive(Debug, Serialize, Deserialize)]
struct WorkerOutput {
    framework: String,
    version: String,
    raw: RawMeasurement,
    /// Under `mpirun`: what the processes did together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    processes: Option<ProcessesMeasurement>,
}

/// A worker's training steps on several processes (each its share of every batch): every
/// process' CPU-seconds, and what rank 0 spent in and sent through the collective per step
/// (warm-up steps included in the per-step means: every step exchanges the same bytes).
#[derive(Debug, Serialize, Deserialize)]
struct ProcessesMeasurement {
    count: usize,
    implementation: String,
    train_cpu_seconds_per_rank: Vec<f64>,
    collective_seconds_per_step: f64,
    bytes_sent_per_step: f64,
    bytes_received_per_step: f64,
}

struct Entrant {
    framework: &'static str,
    command: Command,
}

impl BenchArgs {
    /// The options that decide what ran, as they are typed.
    fn command_line(&self) -> String {
        let mut words = Vec::new();
        if self.reference {
            words.push("--reference".to_string());
        }
        if self.candle_kernels {
            words.push("--candle-kernels".to_string());
        }
        if self.onnxruntime {
            words.push("--onnxruntime".to_string());
        }
        if let Some(e) = &self.experiment {
            words.push(format!("--experiment {e}"));
        }
        for s in &self.set {
            words.push(format!("--set {s}"));
        }
        words.push(format!(
            "--steps {} --warmup {} --inference-images {} --rounds {} --device {}",
            self.steps,
            self.warmup,
            self.inference_images,
            self.rounds,
            self.device.name().as_str()
        ));
        words.join(" ")
    }

    fn config(&self) -> BenchConfig {
        BenchConfig {
            warmup_steps: self.warmup as usize,
            train_steps: self.steps as usize,
            inference_images: self.inference_images as usize,
            ..BenchConfig::default()
        }
    }

    /// The arguments every harness takes, ours and the scripts alike.
    fn common_args(&self, data: &Path) -> Vec<String> {
        let c = self.config();
        let args = vec![
            "--data".into(),
            data.display().to_string(),
            "--steps".into(),
            c.train_steps.to_string(),
            "--warmup".into(),
            c.warmup_steps.to_string(),
            "--inference-images".into(),
            c.inference_images.to_string(),
            "--device".into(),
            self.device.name().as_str().into(),
        ];
        args
    }

    /// Our worker's arguments: the common ones and the experiment.
    fn worker_args(&self, data: &Path) -> Vec<String> {
        let mut args = self.common_args(data);
        if let Some(e) = &self.experiment {
            args.extend(["--experiment".into(), e.clone()]);
        }
        for s in &self.set {
            args.extend(["--set".into(), s.clone()]);
        }
        args
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(kernels) = args.worker {
        return worker(&args, kernels);
    }
    let dir = data_dir(args.data.clone());
    let layout = simplecnn_cifar::detect(&dir)?;
    let mut entrants = vec![ours(&args, &dir, KernelsArg::Fast)?];
    if args.candle_kernels {
        entrants.push(ours(&args, &dir, KernelsArg::Candle)?);
    }
    if args.reference {
        let simplecnn_cifar::Layout::Binary(batches) = layout else {
            bail!(
                "{}: the reference scripts read the binary layout (cifar-10-batches-bin); \
                 convert image folders with shared/data/make_cifar_bin.py or run `cargo xtask data`",
                dir.display()
            );
        };
        // The tutorial's model: keras_bench.py and torch_bench.py; an experiment E:
        // keras_E.py and torch_E.py, those that exist.
        let (experiment_name, batch_size, mixed_bf16) = match &args.experiment {
            Some(e) => {
                let x = crate::experiment::load(e, &args.set)?.experiment;
                let mixed = x.fit.precision == simplecnn_experiment::PrecisionName::MixedBfloat16;
                (Some(x.name.clone()), Some(x.fit.batch_size), mixed)
            }
            None => (None, None, false),
        };
        let mut found = 0;
        for (framework, python, prefix) in [
            ("keras", &args.python_keras, "keras"),
            ("pytorch", &args.python_torch, "torch"),
        ] {
            let script = match &experiment_name {
                None => args.scripts.join(format!("{prefix}_bench.py")),
                Some(name) => args.scripts.join(format!("{prefix}_{name}.py")),
            };
            if !script.exists() {
                match experiment_name {
                    None => bail!("{}: reference script missing", script.display()),
                    Some(_) => continue,
                }
            }
            if !python.exists() {
                bail!(
                    "{}: no Python for the {framework} reference; `cargo xtask bench --reference` \
                     sets up its virtualenv",
                    python.display()
                );
            }
            let mut command = Command::new(python);
            command.arg(&script).args(args.common_args(&batches));
            if let Some(b) = batch_size {
                command.args(["--batch-size", &b.to_string()]);
            }
            // PyTorch's counterpart of Keras' mixed_bfloat16 policy is its CPU autocast.
            if mixed_bf16 && framework == "pytorch" {
                command.args(["--autocast", "bfloat16"]);
            }
            entrants.push(Entrant { framework, command });
            found += 1;
        }
        if found == 0 {
            bail!(
                "no reference script for experiment {} in {} (torch_<name>.py or keras_<name>.py)",
                experiment_name.unwrap_or_default(),
                args.scripts.display()
            );
        }
    }

    if args.onnxruntime || (args.reference && args.experiment.is_none()) {
        let simplecnn_cifar::Layout::Binary(batches) = simplecnn_cifar::detect(&dir)? else {
            bail!(
                "{}: ONNX Runtime's harness reads the binary layout (cifar-10-batches-bin)",
                dir.display()
            );
        };
        entrants.push(onnx_runtime(&args, &batches)?);
    }
    let exported = args.out.join(EXPORTED_MODEL);
    let runs = time_rounds(&args, &mut entrants);
    let _ = std::fs::remove_file(&exported);
    write_results(&args, &runs?)
}

/// Where the harness puts the SimpleCNN it exports for ONNX Runtime while it runs.
const EXPORTED_MODEL: &str = ".bench-simple_cnn.onnx";

/// ONNX Runtime predicting with our SimpleCNN exported (`export`'s graph; the weights of a
/// fresh model, which inference speed does not depend on).
fn onnx_runtime(args: &BenchArgs, batches: &Path) -> Result<Entrant> {
    let script = args.scripts.join("onnxruntime_bench.py");
    if !args.python_onnx.exists() {
        bail!(
            "{}: no Python for the ONNX Runtime row; `cargo xtask bench --reference` sets up \
             its virtualenv",
            args.python_onnx.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let model = Model::new(
        simplecnn_model::zoo::simple_cnn(),
        &candle_core::Device::Cpu,
        0,
    )?;
    let options = simplecnn_onnx::ExportOptions {
        class_names: None,
        producer_version: env!("CARGO_PKG_VERSION"),
    };
    let bytes = simplecnn_onnx::export(&model, &options)?;
    let path = args.out.join(EXPORTED_MODEL);
    crate::files::write_contents(&path, &bytes)?;
    let mut command = Command::new(&args.python_onnx);
    command
        .arg(script)
        .arg("--model")
        .arg(&path)
        .args(args.common_args(batches));
    Ok(Entrant {
        framework: "onnxruntime",
        command,
    })
}

/// Every entrant once per round, alternating.
fn time_rounds(args: &BenchArgs, entrants: &mut [Entrant]) -> Result<Vec<(u32, WorkerOutput)>> {
    let mut runs: Vec<(u32, WorkerOutput)> = Vec::new();
    for round in 1..=args.rounds {
        for e in entrants.iter_mut() {
            eprintln!("round {round}/{}: {} …", args.rounds, e.framework);
            let out = run_worker(e)?;
            let r = out.raw.report();
            let training = match r.train_step_ms_median.is_finite() {
                true => format!(
                    "{:.1} ms/step, {:.0} train img/s, {:.1} CPU-s/epoch, ",
                    r.train_step_ms_median, r.train_images_per_s, r.cpu_s_per_epoch
                ),
                false => "inference only: ".to_string(),
            };
            eprintln!(
                "round {round}/{}: {} {training}{:.0} inference img/s",
                args.rounds, out.framework, r.inference_images_per_s
            );
            runs.push((round, out));
        }
    }
    Ok(runs)
}

/// The table on stdout, and `<date>-<host>[-simplecnn][-experiment].{csv,md}`.
fn write_results(args: &BenchArgs, runs: &[(u32, WorkerOutput)]) -> Result<()> {
    let machine = provenance::collect();
    let table = Summary::new(runs);
    let markdown = table.markdown(&machine, args);
    print!("{}", table.text());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let date = &machine.timestamp_utc[..machine.timestamp_utc.len().min(10)];
    let mut stem = match args.reference {
        true => format!("{date}-{}", machine.host),
        false => format!("{date}-{}-simplecnn", machine.host),
    };
    if let Some(e) = &args.experiment {
        let name = Path::new(e)
            .file_stem()
            .map_or(e.clone(), |s| s.to_string_lossy().into());
        stem = format!("{stem}-{name}");
    }
    let csv_path = args.out.join(format!("{stem}.csv"));
    let md_path = args.out.join(format!("{stem}.md"));
    crate::files::write_atomic(&csv_path, |tmp| write_csv(tmp, runs, &machine))?;
    crate::files::write_contents(&md_path, &markdown)?;
    println!("wrote {} and {}", csv_path.display(), md_path.display());
    Ok(())
}

fn ours(args: &BenchArgs, dir: &Path, kernels: KernelsArg) -> Result<Entrant> {
    let exe = std::env::current_exe().context("cannot find this program to run the harness")?;
    let mut command = Command::new(exe);
    command
        .arg("bench")
        .args(args.worker_args(dir))
        .args(["--worker", kernels.arg()]);
    Ok(Entrant {
        framework: kernels.framework(),
        command,
    })
}

fn run_worker(e: &mut Entrant) -> Result<WorkerOutput> {
    let out = e
        .command
        .output()
        .with_context(|| format!("cannot start the {} harness", e.framework))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    match (out.status.success(), line) {
        (true, Some(line)) => serde_json::from_str(line).with_context(|| {
            format!(
                "{} harness printed an unreadable result: {line}",
                e.framework
            )
        }),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the {} harness failed ({}):\n{}",
                e.framework,
                out.status,
                tail.join("\n")
            )
        }
    }
}

fn worker(args: &BenchArgs, kernels: KernelsArg) -> Result<()> {
    let dir = data_dir(args.data.clone());
    let data = simplecnn_cifar::load(&dir)?;
    let mut config = BenchConfig {
        kernels: kernels.kernels(),
        ..args.config()
    };
    let device = crate::experiment::device(args.device.name())?;
    let world = crate::processes::world()?;
    let metered = Arc::new(Metered::new(world.clone()));
    let mut workload = match &args.experiment {
        None => Workload::simple_cnn(&device, config.seed, config.kernels)?,
        Some(name) => {
            let experiment = crate::experiment::load(name, &args.set)?.experiment;
            config.batch_size = experiment.fit.batch_size;
            let mut model = crate::experiment::build_model(&experiment, &device, &data.train)?;
            model.set_kernels(kernels.kernels())?;
            let total_steps = (config.warmup_steps + config.train_steps) as u64;
            Workload {
                optimizer: experiment.build_optimizer(&model)?,
                // The schedule's largest rate: timing does not depend on it.
                learning_rate: experiment
                    .build_schedule(total_steps)
                    .learning_rate(total_steps / 4),
                loss: experiment.loss_config(),
                model,
            }
        }
    };
    if world.size() > 1 {
        workload.model.set_collective(metered.clone());
    }
    let raw = simplecnn_bench::measure_workload(
        &mut workload,
        &data.train,
        &data.test,
        &device,
        &config,
    )?;
    let processes = match world.size() {
        1 => None,
        count => {
            let cpu = crate::processes::each_process(world.as_ref(), raw.train_cpu_seconds)?;
            let m = metered.meter();
            let steps = (config.warmup_steps + config.train_steps) as f64;
            Some(ProcessesMeasurement {
                count,
                implementation: world.describe(),
                train_cpu_seconds_per_rank: cpu,
                collective_seconds_per_step: m.seconds / steps,
                bytes_sent_per_step: m.bytes_sent as f64 / steps,
                bytes_received_per_step: m.bytes_received as f64 / steps,
            })
        }
    };
    if world.rank() != 0 {
        return Ok(());
    }
    let versions = provenance::crate_versions();
    let out = WorkerOutput {
        framework: kernels.framework().into(),
        version: format!(
            "simplecnn {}, candle {}, {}{}, {} threads",
            env!("CARGO_PKG_VERSION"),
            versions["candle-core"].as_str().unwrap_or("?"),
            args.device.name().as_str(),
            match args.device {
                crate::experiment::DeviceArg::Cuda if cfg!(feature = "cudnn") => " with cuDNN",
                _ => "",
            },
            candle_core::utils::get_num_threads()
        ),
        raw,
        processes,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

fn write_csv(path: &Path, runs: &[(u32, WorkerOutput)], m: &provenance::Provenance) -> Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record([
        "framework",
        "version",
        "round",
        "train_steps",
        "train_step_ms_median",
        "train_images_per_s",
        "train_cpu_ms_per_step",
        "train_gflop_per_s",
        "cpu_s_per_epoch",
        "wall_s_per_epoch",
        "inference_images_per_s",
        "inference_cpu_ms_per_1000",
        "peak_rss_mib",
        "mean_train_loss",
        "host",
        "cpu_model",
        "cpu_cores",
        "git_commit",
        "timestamp_utc",
    ])?;
    for (round, out) in runs {
        let r = out.raw.report();
        let f = |v: f64| format!("{v:.3}");
        w.write_record([
            out.framework.clone(),
            out.version.clone(),
            round.to_string(),
            r.train_steps.to_string(),
            f(r.train_step_ms_median),
            f(r.train_images_per_s),
            f(r.train_cpu_ms_per_step),
            f(r.train_gflop_per_s),
            f(r.cpu_s_per_epoch),
            f(r.wall_s_per_epoch),
            f(r.inference_images_per_s),
            f(r.inference_cpu_ms_per_1000),
            f(r.peak_rss_mib),
            format!("{:.4}", r.mean_train_loss),
            m.host.clone(),
            m.cpu_model.clone(),
            m.cpu_cores.to_string(),
            m.git_commit.clone(),
            m.timestamp_utc.clone(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// Per framework, all its rounds pooled.
struct Summary {
    rows: Vec<(String, String, ThroughputReport)>,
}

impl Summary {
    fn new(runs: &[(u32, WorkerOutput)]) -> Self {
        let mut rows = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for (_, out) in runs {
            if !names.contains(&out.framework.as_str()) {
                names.push(&out.framework);
            }
        }
        for name in names {
            let mine: Vec<&WorkerOutput> = runs
                .iter()
                .map(|(_, o)| o)
                .filter(|o| o.framework == name)
                .collect();
            let raws: Vec<RawMeasurement> = mine.iter().map(|o| o.raw.clone()).collect();
            if let Some(pooled) = RawMeasurement::pooled(&raws) {
                rows.push((name.to_string(), mine[0].version.clone(), pooled.report()));
            }
        }
        Summary { rows }
    }

    fn table_rows(&self) -> Vec<[String; 8]> {
        self.rows
            .iter()
            .map(|(name, _, r)| {
                // An inference-only entrant (ONNX Runtime) has no training figures.
                let trains = r.train_step_ms_median.is_finite();
                let train = |value: f64, digits: usize| match trains {
                    true => format!("{value:.digits$}"),
                    false => "—".to_string(),
                };
                [
                    name.clone(),
                    train(r.train_images_per_s, 0),
                    train(r.train_step_ms_median, 1),
                    train(r.train_cpu_ms_per_step, 1),
                    train(r.cpu_s_per_epoch, 1),
                    train(r.wall_s_per_epoch, 1),
                    format!("{:.0}", r.inference_images_per_s),
                    format!("{:.0}", r.peak_rss_mib),
                ]
            })
            .collect()
    }

    const HEADER: [&'static str; 8] = [
        "framework",
        "train img/s",
        "ms/step",
        "CPU ms/step",
        "CPU-s/epoch",
        "wall s/epoch",
        "inference img/s",
        "peak RSS MiB",
    ];

    /// Ours against each other entrant: >1 means ours is better.
    fn ratios(&self) -> Vec<String> {
        let Some((_, _, ours)) = self.rows.first() else {
            return Vec::new();
        };
        self.rows[1..]
            .iter()
            .map(|(name, _, r)| {
                if !r.train_step_ms_median.is_finite() {
                    return format!(
                        "vs {name}: inference {:.2}x their images/s, {:.2}x their CPU-seconds \
                         per 1000 images",
                        ours.inference_images_per_s / r.inference_images_per_s,
                        ours.inference_cpu_ms_per_1000 / r.inference_cpu_ms_per_1000,
                    );
                }
                format!(
                    "vs {name}: CPU-s per epoch {:.2}x theirs, training {:.2}x their images/s, \
                     inference {:.2}x their images/s, peak RSS {:.2}x theirs",
                    ours.cpu_s_per_epoch / r.cpu_s_per_epoch,
                    ours.train_images_per_s / r.train_images_per_s,
                    ours.inference_images_per_s / r.inference_images_per_s,
                    ours.peak_rss_mib / r.peak_rss_mib,
                )
            })
            .collect()
    }

    fn text(&self) -> String {
        let rows = self.table_rows();
        let widths: Vec<usize> = (0..8)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([Self::HEADER[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| -> String {
            let mut s = format!("{:<w$}", cells[0], w = widths[0]);
            for (c, w) in cells.iter().zip(&widths).skip(1) {
                s += &format!("  {c:>w$}");
            }
            s + "\n"
        };
        let mut out = line(Self::HEADER.to_vec());
        for r in &rows {
            out += &line(r.iter().map(String::as_str).collect());
        }
        for r in self.ratios() {
            out += &format!("simplecnn {r}\n");
        }
        out
    }

    fn markdown(&self, m: &provenance::Provenance, args: &BenchArgs) -> String {
        let model = match &args.experiment {
            Some(e) => format!("experiment {e} (its batch size)"),
            None => "SimpleCNN, batch 128".into(),
        };
        let mut s = format!(
            "# Throughput: {model} on CIFAR-10\n\n\
             Machine: {} ({} cores), host `{}`; {}; commit `{}`{}; {}.\n\n\
             Each framework ran {} times in its own process, alternating: {} warm-up + {} timed \
             training steps on real images, then {} images predicted in batches of 1000. \
             Per-epoch figures: 45 000 training images and 5 000 validation images at the \
             measured rates; CPU-seconds are user + system of all threads.\n\n",
            m.cpu_model,
            m.cpu_cores,
            m.host,
            m.timestamp_utc,
            &m.git_commit[..m.git_commit.len().min(10)],
            if m.git_dirty {
                " (with local changes)"
            } else {
                ""
            },
            m.rustc,
            args.rounds,
            args.warmup,
            args.steps,
            args.inference_images,
        );
        s += &format!("| {} |\n", Self::HEADER.join(" | "));
        s += &format!("|{}\n", "---|".repeat(8));
        for r in self.table_rows() {
            s += &format!("| {} |\n", r.join(" | "));
        }
        s += "\nVersions:\n";
        for (name, version, _) in &self.rows {
            s += &format!("- {name}: {version}\n");
        }
        let ratios = self.ratios();
        if !ratios.is_empty() {
            s += "\nsimplecnn, from this run:\n";
            for r in ratios {
                s += &format!("- {r}\n");
            }
        }
        s += &format!("\nCommand: `cargo xtask bench {}`.\n", args.command_line());
        s
    }
}
