//! `mpirun -np N simplecnn experiment baseline` on tiny data: the same epochs.csv (timing
//! aside), test.json and weights on 1, 2 and 3 processes, rank 0 alone writing; a rank killed
//! mid-run ends the job with an error naming it, and the run resumes on another number of
//! processes to the same result. Needs the `mpi` feature and Open MPI's `mpirun` (`cargo
//! xtask` installs them); skipped without them outside CI.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{
    first_checkpointed_run, results_without_timing, saved_weights, slurm_is_up, tiny_folders,
};

/// `mpirun` as root, on more ranks than cores, in a container; ended after 5 minutes, so a
/// job that hangs fails the test instead of holding CI.
fn mpirun(np: usize) -> Command {
    let mut c = Command::new("timeout");
    c.args(["300", "mpirun", "--oversubscribe", "-np", &np.to_string()])
        .arg(env!("CARGO_BIN_EXE_simplecnn"))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
        .env_remove("CIFAR10_DIR");
    c
}

fn have_mpirun() -> bool {
    let found = Command::new("mpirun").arg("--version").output().is_ok();
    assert!(found || std::env::var_os("CI").is_none(), "CI needs mpirun");
    found
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every epochs.csv number but the timing columns, as bits.
fn epochs(run: &Path) -> Vec<Vec<u64>> {
    let bits = |v: Option<f64>| v.map_or(u64::MAX, f64::to_bits);
    results_without_timing(run)
        .into_iter()
        .map(|(epoch, loss, acc, val_loss, val_acc, rate)| {
            vec![
                epoch as u64,
                loss.to_bits(),
                acc.to_bits(),
                bits(val_loss),
                bits(val_acc),
                rate.to_bits(),
            ]
        })
        .collect()
}

/// Every weight of the saved model, as bits.
fn weights(run: &Path) -> Vec<(String, Vec<u32>)> {
    saved_weights(&run.join("model.h5"))
        .into_iter()
        .map(|(name, v)| (name, v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

/// What a finished run leaves that must not depend on the number of processes: epochs.csv
/// without timing, test.json, the saved weights.
type Outcome = (Vec<Vec<u64>>, String, Vec<(String, Vec<u32>)>);

fn outcome(run: &Path) -> Outcome {
    let test = std::fs::read_to_string(run.join("test.json")).unwrap();
    (epochs(run), test, weights(run))
}

/// 12 images a class: 108 trained in batches of 36 (3 batches of 4-5 groups of 8 … and the
/// last partial group), 12 validated.
fn args(data: &Path, out: &Path, epochs: &str) -> Vec<String> {
    [
        "experiment",
        "baseline",
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        epochs,
        "--batch-size",
        "36",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn run_on(np: usize, data: &Path, out: &Path) -> PathBuf {
    let o = mpirun(np).args(args(data, out, "2")).output().unwrap();
    assert!(o.status.success(), "{np} processes: {}", text(&o));
    let entries: Vec<_> = std::fs::read_dir(out).unwrap().collect();
    assert_eq!(
        entries.len(),
        2,
        "one run folder and `latest`, written by rank 0"
    );
    out.join("latest").canonicalize().unwrap()
}

#[test]
fn baseline_gives_the_same_numbers_on_one_two_and_three_processes() {
    if !have_mpirun() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_folders(&data, 12);
    let one = run_on(1, &data, &tmp.path().join("np1"));
    let reference = outcome(&one);
    for np in [2, 3] {
        let run = run_on(np, &data, &tmp.path().join(format!("np{np}")));
        let got = outcome(&run);
        assert_eq!(got.0, reference.0, "{np} processes: epochs.csv");
        assert_eq!(got.1, reference.1, "{np} processes: test.json");
        assert!(got.2 == reference.2, "{np} processes: the weights differ");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["processes"]["count"], np);
        assert!(config["processes"]["implementation"]
            .as_str()
            .is_some_and(|s| s.contains("MPI")));
        // run.json counts every process' CPU-seconds.
        let totals: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
        let each = totals["cpu_seconds_per_process"].as_array().unwrap();
        assert_eq!(each.len(), np);
        let sum: f64 = each.iter().map(|v| v.as_f64().unwrap()).sum();
        assert!(each.iter().all(|v| v.as_f64().unwrap() > 0.0));
        assert_eq!(totals["cpu_seconds"].as_f64().unwrap(), sum);
    }
}

/// `srun -n 2 --mpi=MPI simplecnn …` in a Slurm step (CI starts a one-node Slurm), ended
/// after 5 minutes.
fn srun(np: usize, mpi: &str) -> Command {
    let mut c = Command::new("timeout");
    c.args(["300", "srun", "--time=00:05:00", "-n", &np.to_string()])
        .arg(format!("--mpi={mpi}"))
        .arg(env!("CARGO_BIN_EXE_simplecnn"))
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
        .env_remove("CIFAR10_DIR");
    c
}

/// Under Slurm, `srun` starts the processes (PMIx tells them apart, not mpirun's variables):
/// the same run as one process; `srun` with no MPI plugin is refused before anything is
/// written, not run twice.
#[test]
fn srun_starts_the_same_run_and_without_an_mpi_plugin_is_refused() {
    if !have_mpirun() || !slurm_is_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_folders(&data, 12);
    let one = run_on(1, &data, &tmp.path().join("np1"));
    let out = tmp.path().join("srun");
    let o = srun(2, "pmix")
        .args(args(&data, &out, "2"))
        .output()
        .unwrap();
    assert!(o.status.success(), "srun --mpi=pmix: {}", text(&o));
    let run = out.join("latest").canonicalize().unwrap();
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        2,
        "rank 0 alone writes"
    );
    assert!(
        outcome(&run) == outcome(&one),
        "srun's run differs from one process'"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["processes"]["count"], 2);

    let bare = tmp.path().join("bare");
    let o = srun(2, "none")
        .args(args(&data, &bare, "1"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("--mpi=pmix"), "{}", text(&o));
    assert!(!bare.exists(), "nothing written");
}

/// Ranks started with other settings than rank 0's (mpirun's MPMD form: rank 1 trains 3
/// epochs where rank 0 trains 2) are refused before training, by rank, with nothing written.
#[test]
fn ranks_with_another_experiment_are_refused_by_name() {
    let Some((_tmp, data, out)) = tiny_data_and_out() else {
        return;
    };
    let o = mpirun(1)
        .args(args(&data, &out, "2"))
        .args([":", "-np", "1", env!("CARGO_BIN_EXE_simplecnn")])
        .args(args(&data, &out, "3"))
        .output()
        .unwrap();
    refused_before_writing(
        &o,
        "rank(s) 1 run another program or experiment than rank 0",
        &out,
    );
}

#[test]
fn too_many_processes_are_refused_by_name_before_training() {
    let Some((_tmp, data, out)) = tiny_data_and_out() else {
        return;
    };
    // 27 training images in batches of 8: a batch is one group of 8.
    let mut a = args(&data, &out, "1");
    a[7] = "8".into();
    let o = mpirun(2).args(a).output().unwrap();
    refused_before_writing(
        &o,
        "2 processes: a batch of 8 images is 1 group(s) of 8",
        &out,
    );
}

/// 3 images a class in a temporary folder, and an output folder there (not made); `None`
/// without mpirun outside CI.
fn tiny_data_and_out() -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    if !have_mpirun() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_folders(&data, 3);
    let out = tmp.path().join("out");
    Some((tmp, data, out))
}

/// The job failed with `message` and left nothing in `out`.
fn refused_before_writing(o: &Output, message: &str, out: &Path) {
    assert!(!o.status.success());
    assert!(text(o).contains(message), "{}", text(o));
    let written = std::fs::read_dir(out).map_or(0, |d| d.count());
    assert_eq!(written, 0, "nothing written");
}

#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes_on_other_processes() {
    if !have_mpirun() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_folders(&data, 12);
    let whole = run_on(1, &data, &tmp.path().join("whole"));
    let killed = tmp.path().join("killed");
    let child = mpirun(2)
        .args(args(&data, &killed, "2"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = first_checkpointed_run(&killed);
    // Rank 1: the newest simplecnn process under mpirun (itself under `timeout`).
    let newest_child = |parent: &str, name: &str| {
        let o = Command::new("pgrep")
            .args(["-n", "-P", parent, name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let launcher = newest_child(&child.id().to_string(), "mpirun");
    let rank = newest_child(&launcher, "simplecnn");
    if launcher.is_empty() || rank.is_empty() {
        child.wait_with_output().unwrap();
        eprintln!("the run finished before a rank could be killed");
        return;
    }
    let killed_at = Instant::now();
    Command::new("kill").args(["-9", &rank]).status().unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(killed_at.elapsed() < Duration::from_secs(30), "no hang");
    let last: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/last.json")).unwrap())
            .unwrap();
    if o.status.success() && last["epoch"] == 2 {
        eprintln!("the run finished before the rank was killed");
        return;
    }
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rank 1") || err.contains("rank: 1"), "{err}");
    assert!(run.join("INCOMPLETE").is_file(), "a killed run is marked");
    // Resumed on three processes: the uninterrupted run's numbers.
    let o = mpirun(3)
        .args(["experiment", "--resume", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!run.join("INCOMPLETE").exists());
    assert_eq!(outcome(&run), outcome(&whole));
}

/// airbench94 (BatchNorm, GELU, lookahead, label smoothing, the summed loss, and a test with
/// test-time augmentation, which the processes share) on 1 and 2 processes.
#[test]
fn airbench94_with_its_test_time_augmentation_is_the_same_on_two_processes() {
    if !have_mpirun() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_folders(&data, 8);
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/airbench94.toml");
    let runs: Vec<Outcome> = [1, 2]
        .iter()
        .map(|&np| {
            let out = tmp.path().join(format!("np{np}"));
            let o = mpirun(np)
                .arg("experiment")
                .arg(&file)
                .args(["--data", data.to_str().unwrap(), "--batch-size", "16"])
                .args(["--set", "fit.epochs=1.5", "--set", "model.init.0.images=40"])
                .args(["--set", "fit.freeze.1.from_epoch=2"])
                .args(["--out", out.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(o.status.success(), "{np} processes: {}", text(&o));
            outcome(&out.join("latest").canonicalize().unwrap())
        })
        .collect();
    assert!(runs[1].1.contains("mirror_translate"), "{}", runs[1].1);
    assert_eq!(runs[0].0, runs[1].0, "epochs.csv");
    assert_eq!(runs[0].1, runs[1].1, "test.json");
    assert!(runs[0].2 == runs[1].2, "the weights differ");
}
