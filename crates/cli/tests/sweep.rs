//! `simplecnn sweep`: a sweep's runs are the experiment with each setting and seed, found again
//! by their folders (finished ones not rerun, killed ones resumed), summarised from their
//! files; and the same sweep as a job array on a real Slurm (CI starts one: `cargo xtask
//! slurm-up`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::{first_checkpointed_run, slurm_is_up, tiny_folders};

fn simplecnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simplecnn"))
        .args(args)
        .env_remove("CIFAR10_DIR")
        .output()
        .expect("run simplecnn")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A sweep of the baseline on `data`: 1 epoch, seeds 0 and 1, batch sizes 8 and 16.
fn write_sweep(dir: &Path, data: &Path, name: &str, epochs: u32) -> PathBuf {
    let file = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"
experiment = "baseline"
seeds = [0, 1]
set = ["fit.epochs={epochs}", "data.dir='{data}'", "outputs.plots=false"]

[[grid]]
key = "fit.batch_size"
values = [8, 16]
"#,
        data = data.display()
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// [`write_sweep`]'s sweep `name` in `tmp` on `per_class` tiny images a class (0: an empty
/// data folder), and the folder its runs go to: `(sweep file, out)`.
fn sweep_in(tmp: &Path, name: &str, per_class: usize, epochs: u32) -> (PathBuf, PathBuf) {
    let data = tmp.join("data");
    match per_class {
        0 => std::fs::create_dir_all(&data).unwrap(),
        n => tiny_folders(&data, n),
    }
    (write_sweep(tmp, &data, name, epochs), tmp.join("out"))
}

/// Run folders under `out` (not `latest`, not `sweeps`), by name.
fn run_folders(out: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir() && e.file_name() != "sweeps")
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks the four runs of [`write_sweep`]'s sweep under `out` and its summary in
/// `out/sweeps/<name>`: each run is the experiment with its setting and seed, finished, and the
/// summary's means and ranges are those of the runs' own test.json.
fn check_sweep_results(out: &Path, name: &str) {
    let runs = run_folders(out);
    assert_eq!(runs.len(), 4, "{runs:?}");
    let mut by_setting: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut indices = Vec::new();
    for run in &runs {
        assert!(!run.join("INCOMPLETE").exists(), "{}", run.display());
        let config = json(&run.join("config.json"));
        let tag = &config["sweep"];
        assert_eq!(tag["sweep"], name);
        let index = tag["index"].as_u64().unwrap() as usize;
        indices.push(index);
        // Settings are the grid's values in order, seeds within them.
        let (setting, seed) = (index / 2, index % 2);
        assert_eq!(tag["setting"].as_u64().unwrap() as usize, setting);
        let fit = &config["experiment"]["fit"];
        assert_eq!(fit["seed"].as_u64().unwrap() as usize, seed);
        assert_eq!(fit["batch_size"].as_u64().unwrap(), [8, 16][setting]);
        assert_eq!(fit["epochs"].as_f64().unwrap(), 1.0);
        let accuracy = json(&run.join("test.json"))["accuracy"].as_f64().unwrap();
        by_setting[setting].push(accuracy);
    }
    indices.sort();
    assert_eq!(indices, [0, 1, 2, 3]);

    let summary = out.join("sweeps").join(name);
    let mut csv = csv::Reader::from_path(summary.join("summary.csv")).unwrap();
    let header = csv.headers().unwrap().clone();
    let column = |row: &csv::StringRecord, name: &str| -> f64 {
        let i = header.iter().position(|h| h == name).unwrap();
        row[i].parse().unwrap()
    };
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    for (setting, row) in rows.iter().enumerate() {
        let values = &by_setting[setting];
        assert_eq!(column(row, "runs"), 2.0);
        assert_eq!(column(row, "fit.batch_size"), [8.0, 16.0][setting]);
        let mean = (values[0] + values[1]) / 2.0;
        assert!((column(row, "accuracy_mean") - mean).abs() < 1e-12);
        assert_eq!(column(row, "accuracy_min"), values[0].min(values[1]));
        assert_eq!(column(row, "accuracy_max"), values[0].max(values[1]));
        let std = (values[0] - values[1]).abs() / 2f64.sqrt();
        assert!((column(row, "accuracy_std") - std).abs() < 1e-12);
    }
    assert!(summary.join("summary.md").is_file());
}

/// `sweep FILE --jobs 2` runs every setting and seed, two processes at a time, and summarises
/// them; run again, it starts nothing (every run has finished).
#[test]
fn a_sweep_runs_every_setting_and_seed_and_summarises_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, out) = sweep_in(tmp.path(), "tiny", 2, 1);
    let (file_s, out_s) = (file.to_str().unwrap(), out.to_str().unwrap());
    let o = simplecnn(&["sweep", file_s, "--out", out_s, "--jobs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_sweep_results(&out, "tiny");
    // Each run wrote its log.
    let logs = out.join("sweeps/tiny/logs");
    for i in 0..4 {
        assert!(logs.join(format!("run-{i}.log")).is_file());
    }

    let before = run_folders(&out);
    let o = simplecnn(&["sweep", file_s, "--out", out_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(run_folders(&out), before, "finished runs are not run again");

    // The same sweep with another --set is other runs.
    let o = simplecnn(&[
        "sweep",
        file_s,
        "--out",
        out_s,
        "--index",
        "0",
        "--set",
        "fit.shuffle=false",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(run_folders(&out).len(), 5);
}

/// A run of a sweep killed after its first epoch is resumed in its folder by the next
/// `--index`, not started again.
#[test]
fn a_killed_sweep_run_is_resumed_in_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, out) = sweep_in(tmp.path(), "killed", 40, 4);
    let (file_s, out_s) = (file.to_str().unwrap(), out.to_str().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_simplecnn"))
        .args(["sweep", file_s, "--out", out_s, "--index", "1"])
        .env_remove("CIFAR10_DIR")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run = first_checkpointed_run(&out);
    child.kill().unwrap();
    child.wait().unwrap();
    if !run.join("INCOMPLETE").is_file() {
        eprintln!("the run finished before it was killed; nothing to resume");
        return;
    }
    let o = simplecnn(&["sweep", file_s, "--out", out_s, "--index", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        run_folders(&out),
        std::slice::from_ref(&run),
        "resumed, not started again"
    );
    assert!(!run.join("INCOMPLETE").exists());
    let epochs = simplecnn_train::History::read_csv(&run.join("epochs.csv")).unwrap();
    assert_eq!(epochs.epochs.len(), 4);
    assert_eq!(json(&run.join("config.json"))["sweep"]["index"], 1);
}

#[test]
fn bad_sweeps_and_arguments_are_refused_before_any_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, out) = sweep_in(tmp.path(), "bad", 0, 1);
    let (file_s, out_s) = (file.to_str().unwrap(), out.to_str().unwrap());
    let cases: [(&[&str], &str); 4] = [
        (&["--index", "4"], "no run 4"),
        (&["--seed", "3"], "fit.seed"),
        (&["--set", "fit.batch_size=4"], "fit.batch_size"),
        (&["--set", "fit.epochs=0"], "fit.epochs"),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["sweep", file_s, "--out", out_s];
        args.extend(extra);
        let o = simplecnn(&args);
        assert!(!o.status.success(), "{extra:?}");
        let err = stderr(&o);
        assert!(
            err.contains(expected) && err.contains(file_s),
            "{extra:?}: {err}"
        );
        assert!(!out.exists(), "{extra:?}: nothing is written");
    }
    // A sweep file that would send results outside the folder it runs in.
    let escaping = tmp.path().join("escaping.toml");
    std::fs::write(
        &escaping,
        "experiment = \"baseline\"\nset = [\"outputs.dir='../../escaped'\"]\n",
    )
    .unwrap();
    let o = simplecnn(&["sweep", escaping.to_str().unwrap(), "--list"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("set.0"), "{}", stderr(&o));
}

/// `sweep FILE --submit` on a real Slurm: the array's tasks run the sweep's runs, the
/// summary job writes the same summary as a sweep run here.
#[test]
fn a_sweep_submitted_to_slurm_runs_as_a_job_array() {
    if !slurm_is_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (file, out) = sweep_in(tmp.path(), "slurm", 2, 1);
    let (file_s, out_s) = (file.to_str().unwrap(), out.to_str().unwrap());
    let o = simplecnn(&[
        "sweep",
        file_s,
        "--out",
        out_s,
        "--jobs",
        "2",
        "--submit",
        "--sbatch=--time=00:10:00",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = out.join("sweeps/slurm/summary.csv");
    let started = Instant::now();
    // The summary job runs after the array, however it ended.
    while !summary.is_file() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no summary after 10 minutes; logs: {:?}",
            std::fs::read_dir(out.join("sweeps/slurm/logs")).map(|d| d
                .flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<Vec<_>>())
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    check_sweep_results(&out, "slurm");
    let logs: Vec<_> = std::fs::read_dir(out.join("sweeps/slurm/logs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // One log per array task and one of the summary job.
    assert_eq!(logs.len(), 5, "{logs:?}");
}
