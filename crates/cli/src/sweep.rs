//! `sweep FILE`: the runs of a sweep file (`simplecnn_experiment::sweep`) here, one after
//! another or K at a time; one of them (`--index I`, what a Slurm array task runs); all of them
//! as a Slurm job array (`--submit`); and the summary of whichever have finished (`--summary`,
//! and after every sweep run here).
//!
//! A run of a sweep is an ordinary run in the experiment's results folder whose `config.json`
//! also records the sweep's name, the run's index and its overrides. That record is how a
//! sweep finds its runs again: a finished one is not run twice, an unfinished one with a
//! checkpoint is resumed, and the summary reads them wherever and however they were run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use simplecnn_experiment::{Sweep, SweepRun};

use crate::experiment::{self, Shorthands, INCOMPLETE};

#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// The sweep file (TOML: `experiment`, `seeds`, `set`, `[[grid]]` tables of `key` and
    /// `values`; see sweeps/).
    pub file: PathBuf,
    /// Run only this run of the sweep (0-based; a Slurm array task passes
    /// $SLURM_ARRAY_TASK_ID).
    #[arg(long, conflicts_with_all = ["jobs", "list", "summary", "submit"])]
    pub index: Option<usize>,
    /// Runs at a time here, each a process of its own with cores/K threads; with --submit,
    /// the most array tasks Slurm runs at once.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Print the runs (index, setting, seed, state, folder) and stop.
    #[arg(long, conflicts_with_all = ["summary", "submit"])]
    pub list: bool,
    /// Write and print the summary of the runs that have finished, and stop.
    #[arg(long, conflicts_with = "submit")]
    pub summary: bool,
    /// Write a Slurm array script (`<sweep folder>/sweep.sbatch`: array task I runs
    /// `sweep FILE --index I`, a last job writes the summary) and submit it with sbatch.
    #[arg(long)]
    pub submit: bool,
    /// With --submit: one more `#SBATCH` line, e.g. `--sbatch=--time=02:00:00`.
    #[arg(long = "sbatch", value_name = "OPTION", requires = "submit")]
    pub sbatch: Vec<String>,
    /// With --submit: write the script, do not submit it.
    #[arg(long, requires = "submit")]
    pub no_submit: bool,
    /// Sets a key of every run (not one the sweep varies).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub shorthands: Shorthands,
    /// Where the runs go (every run's outputs.dir), and the sweep's folder
    /// (`<out>/sweeps/<name>`); by default the experiment's folder and `results/sweeps/<name>`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: SweepArgs) -> Result<()> {
    let sweep = Sweep::load(&args.file)?;
    let mut sets = args.set.clone();
    sets.extend(args.shorthands.overrides());
    let plan = SweepPlan {
        sets,
        out: args.out.clone(),
        folder: args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("results"))
            .join("sweeps")
            .join(&sweep.name),
        sweep,
    };
    plan.sweep.check_overrides(&plan.overrides())?;
    if let Some(index) = args.index {
        crate::stop::install()?;
        return plan.run_one(index);
    }
    // Every run is read and checked before anything starts.
    let members = plan.members()?;
    if args.list {
        print!("{}", plan.list(&members));
        return Ok(());
    }
    if args.submit {
        return crate::slurm::submit(&plan, &args);
    }
    if !args.summary {
        crate::stop::install()?;
        let outcome = match args.jobs.unwrap_or(1) {
            1 => plan.run_here(&members),
            jobs => plan.run_processes(&members, jobs as usize, &args),
        };
        // The summary of what finished, even when some runs failed: the folders as they are
        // now.
        let summary = plan.write_summary(&plan.members()?)?;
        print!("{summary}");
        return outcome;
    }
    print!("{}", plan.write_summary(&members)?);
    Ok(())
}

/// A sweep with the command line's overrides, and the folder for its summary and logs.
pub struct SweepPlan {
    pub sweep: Sweep,
    /// `--set` and the shorthand flags, as overrides.
    pub sets: Vec<String>,
    /// `--out`: where the runs go and the sweep's folder is.
    pub out: Option<PathBuf>,
    /// `<out>/sweeps/<name>`: summary.{csv,md}, sweep.sbatch, logs/.
    pub folder: PathBuf,
}

/// One run of the sweep, read and checked, and where it stands.
pub struct Member {
    pub run: SweepRun,
    pub experiment: simplecnn_experiment::Experiment,
    pub state: RunState,
}

/// Where a run of the sweep stands, from the run folders.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    NotStarted,
    /// A folder still marked INCOMPLETE (running, killed, or failed).
    Unfinished(PathBuf),
    Finished(PathBuf),
}

impl RunState {
    fn word(&self) -> &'static str {
        match self {
            RunState::NotStarted => "not started",
            RunState::Unfinished(_) => "unfinished",
            RunState::Finished(_) => "finished",
        }
    }

    fn folder(&self) -> Option<&Path> {
        match self {
            RunState::NotStarted => None,
            RunState::Unfinished(d) | RunState::Finished(d) => Some(d),
        }
    }
}

impl SweepPlan {
    /// The command line's overrides, applied after the run's own: the `--set`s, then
    /// `--out` as `outputs.dir`.
    pub fn overrides(&self) -> Vec<String> {
        let mut overrides = self.sets.clone();
        if let Some(out) = &self.out {
            let dir = toml::Value::String(out.display().to_string());
            overrides.push(format!("outputs.dir={dir}"));
        }
        overrides
    }

    /// The arguments after `sweep FILE` that give another process this plan.
    pub fn arguments(&self) -> Vec<String> {
        let mut args: Vec<String> = self.sets.iter().map(|o| format!("--set={o}")).collect();
        if let Some(out) = &self.out {
            args.extend(["--out".into(), out.display().to_string()]);
        }
        args
    }

    /// Run `run` as this plan runs it: the command line's overrides after its own (they are
    /// part of what the run records, so a trial with `--epochs 1` is not taken for the run).
    fn with_command_line(&self, mut run: SweepRun) -> SweepRun {
        run.overrides.extend(self.overrides());
        run
    }

    /// The experiment of `run` (from [`Self::with_command_line`]).
    fn experiment_of(&self, run: &SweepRun) -> Result<simplecnn_experiment::Experiment> {
        let loaded =
            experiment::load(&self.sweep.experiment, &run.overrides).with_context(|| {
                format!(
                    "{}: run {} ({})",
                    self.sweep.file.display(),
                    run.index,
                    describe(run)
                )
            })?;
        Ok(loaded.experiment)
    }

    /// Every run with its experiment and state (the results folders are read once each).
    pub fn members(&self) -> Result<Vec<Member>> {
        let mut found = FoundRuns::default();
        self.sweep
            .runs()
            .map(|run| self.member(run, &mut found))
            .collect()
    }

    /// `run` as this plan runs it, its experiment, and where it stands in `found`.
    fn member(&self, run: SweepRun, found: &mut FoundRuns) -> Result<Member> {
        let run = self.with_command_line(run);
        let experiment = self.experiment_of(&run)?;
        let state = found.state_of(&experiment.output_dir(), &run);
        Ok(Member {
            run,
            experiment,
            state,
        })
    }

    /// `--index I`: runs (or resumes, or skips as finished) one run.
    fn run_one(&self, index: usize) -> Result<()> {
        let run = self.sweep.run(index).with_context(|| {
            format!(
                "{}: no run {index}: the sweep has runs 0 to {}",
                self.sweep.file.display(),
                self.sweep.len() - 1
            )
        })?;
        self.run_member(&self.member(run, &mut FoundRuns::default())?)
    }

    fn run_member(&self, member: &Member) -> Result<()> {
        let index = member.run.index;
        match &member.state {
            RunState::Finished(dir) => {
                println!("run {index}: finished already in {}", dir.display());
                Ok(())
            }
            RunState::Unfinished(dir) if resumable(dir) => {
                println!("run {index}: resuming {}", dir.display());
                experiment::resume_run(dir)
            }
            _ => {
                println!("run {index}: {}", describe(&member.run));
                experiment::run_sweep_member(member.experiment.clone(), &member.run).map(|_| ())
            }
        }
    }

    /// The runs one after another in this process; a failed run is reported and the others
    /// go on, a signal stops the sweep.
    fn run_here(&self, members: &[Member]) -> Result<()> {
        let mut failed = Vec::new();
        for member in members {
            if let Err(e) = self.run_member(member) {
                if crate::stop::received().is_some() {
                    return Err(e);
                }
                eprintln!("run {} failed: {e:#}", member.run.index);
                failed.push(member.run.index);
            }
        }
        self.failures(&failed)
    }

    /// `jobs` runs at a time, each `sweep FILE --index I` in a process of its own with its
    /// output in `logs/run-I.log`.
    fn run_processes(&self, members: &[Member], jobs: usize, args: &SweepArgs) -> Result<()> {
        let logs = self.folder.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cores / jobs).max(1).to_string();
        let mut waiting: Vec<&Member> = members
            .iter()
            .filter(|m| !matches!(m.state, RunState::Finished(_)))
            .collect();
        waiting.reverse();
        let mut running: Vec<(usize, Child)> = Vec::new();
        let mut failed = Vec::new();
        let mut forwarded = false;
        loop {
            let stopping = crate::stop::received();
            if let (Some(signal), false) = (stopping, forwarded) {
                // A signal from a terminal reaches the children too; one sent to this
                // process alone (`kill`, Slurm's `scancel` of the step) is passed on, so every
                // run stops at its next batch, resumable.
                for (_, child) in &running {
                    let _ = Command::new("kill")
                        .arg(format!("-{signal}"))
                        .arg(child.id().to_string())
                        .status();
                }
                forwarded = true;
            }
            while running.len() < jobs && stopping.is_none() {
                let Some(member) = waiting.pop() else { break };
                let index = member.run.index;
                let log = logs.join(format!("run-{index}.log"));
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .with_context(|| format!("cannot write {}", log.display()))?;
                let mut command = Command::new(&exe);
                command
                    .arg("sweep")
                    .arg(&args.file)
                    .arg(format!("--index={index}"))
                    .args(self.arguments())
                    .stdin(Stdio::null())
                    .stdout(out.try_clone()?)
                    .stderr(out);
                if std::env::var_os("RAYON_NUM_THREADS").is_none() {
                    command.env("RAYON_NUM_THREADS", &threads);
                }
                let child = command
                    .spawn()
                    .with_context(|| format!("cannot start {}", exe.display()))?;
                println!(
                    "run {index}: started ({}), log {}",
                    describe(&member.run),
                    log.display()
                );
                running.push((index, child));
            }
            if running.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            let mut still = Vec::with_capacity(running.len());
            for (index, mut child) in running {
                match child.try_wait()? {
                    None => still.push((index, child)),
                    Some(status) if status.success() => println!("run {index}: done"),
                    Some(status) => {
                        eprintln!(
                            "run {index} failed ({status}): see {}",
                            logs.join(format!("run-{index}.log")).display()
                        );
                        failed.push(index);
                    }
                }
            }
            running = still;
        }
        if let Some(signal) = crate::stop::received() {
            bail!(
                "stopped by signal {signal}; the runs that did not finish resume with the \
                 same command"
            );
        }
        self.failures(&failed)
    }

    fn failures(&self, failed: &[usize]) -> Result<()> {
        match failed {
            [] => Ok(()),
            _ => bail!(
                "{}: runs {failed:?} failed (the others finished); the same command runs \
                 (or resumes) only what is not finished",
                self.sweep.file.display()
            ),
        }
    }

    /// `--list`: a line per run.
    fn list(&self, members: &[Member]) -> String {
        let mut text = format!(
            "sweep {} ({}): experiment {}, {} runs\n",
            self.sweep.name,
            self.sweep.file.display(),
            self.sweep.experiment,
            members.len()
        );
        for m in members {
            text += &format!(
                "{:>5}  {:<40}  {:<11}  {}\n",
                m.run.index,
                describe(&m.run),
                m.state.word(),
                m.state
                    .folder()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            );
        }
        text
    }

    /// Writes `summary.csv` and `summary.md` in the sweep's folder; returns the markdown.
    pub fn write_summary(&self, members: &[Member]) -> Result<String> {
        let summary = crate::sweep_summary::Summary::of(&self.sweep, members)?;
        std::fs::create_dir_all(&self.folder)
            .with_context(|| format!("cannot create {}", self.folder.display()))?;
        let markdown = summary.markdown();
        crate::files::write_contents(&self.folder.join("summary.md"), &markdown)?;
        crate::files::write_atomic(&self.folder.join("summary.csv"), |tmp| {
            summary.write_csv(tmp)
        })?;
        Ok(markdown)
    }
}

/// `lr=0.1 seed=2`: what sets a run apart.
pub fn describe(run: &SweepRun) -> String {
    let mut parts: Vec<String> = run.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(seed) = run.seed {
        parts.push(format!("seed={seed}"));
    }
    match parts.is_empty() {
        true => "the experiment as it is".into(),
        false => parts.join(" "),
    }
}

/// Whether an unfinished run folder has a checkpoint to go on from.
fn resumable(dir: &Path) -> bool {
    simplecnn_train::checkpoint_paths(&dir.join("checkpoints"), "last")
        .0
        .is_file()
}

/// The run folders of results folders, read once each: which sweep run each one is.
#[derive(Default)]
struct FoundRuns {
    /// Per results folder: `(folder, tag, finished)` of every run folder with a sweep tag.
    by_dir: std::collections::HashMap<PathBuf, Vec<(PathBuf, SweepRun, bool)>>,
}

impl FoundRuns {
    /// `run`'s state from the run folders under `out`: the newest finished folder, else the
    /// newest unfinished one (folder names start with the time they were made).
    fn state_of(&mut self, out: &Path, run: &SweepRun) -> RunState {
        let found = self
            .by_dir
            .entry(out.to_path_buf())
            .or_insert_with(|| tagged_runs(out));
        let mut mine: Vec<&(PathBuf, SweepRun, bool)> =
            found.iter().filter(|(_, tag, _)| tag == run).collect();
        mine.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some((dir, ..)) = mine.iter().rev().find(|(_, _, finished)| *finished) {
            return RunState::Finished(dir.clone());
        }
        match mine.last() {
            Some((dir, ..)) => RunState::Unfinished(dir.clone()),
            None => RunState::NotStarted,
        }
    }
}

/// Every run folder directly under `out` whose `config.json` has a sweep tag.
fn tagged_runs(out: &Path) -> Vec<(PathBuf, SweepRun, bool)> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let dir = e.path();
            let text = simplecnn_files::read_to_string(&dir.join("config.json")).ok()?;
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            let tag: SweepRun = serde_json::from_value(value.get("sweep")?.clone()).ok()?;
            let finished = dir.join("test.json").is_file() && !dir.join(INCOMPLETE).exists();
            Some((dir, tag, finished))
        })
        .collect()
}
