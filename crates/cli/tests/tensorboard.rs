//! The `tensorboard` callback against the real TensorBoard package: its event files read back
//! with TensorBoard's own reader (CRCs checked) and served by a TensorBoard server hold every
//! number of `epochs.csv`, and a killed-and-resumed run's logs are those of an uninterrupted
//! run, one value per step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use simplecnn_train::History;

mod common;
use common::{first_checkpointed_run, python_with, tiny_folders};

/// What the helper finds in `logs`, by mode (`read` or `serve`).
fn tensorboard_says(py: &str, mode: &str, logs: &Path) -> Value {
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tensorboard_check.py");
    let o = Command::new(py)
        .arg(helper)
        .arg(mode)
        .arg(logs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The baseline with the TensorBoard callback (batch scalars every 5 steps, histograms every
/// epoch) and a checkpoint per epoch.
fn experiment_file(dir: &Path) -> PathBuf {
    let baseline = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../experiments/baseline.toml"
    ))
    .unwrap();
    let path = dir.join("tb.toml");
    std::fs::write(
        &path,
        baseline.replace("name = \"baseline\"", "name = \"tb\"")
            + "\n[[callbacks]]\nkind = \"tensorboard\"\nupdate_freq = 5\nhistogram_freq = 1\n",
    )
    .unwrap();
    path
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_simplecnn"))
        .args(args)
        .env_remove("CIFAR10_DIR")
        .output()
        .unwrap()
}

/// `[[step, value], …]` of `tag` in `run`'s scalars.
fn series(found: &Value, run: &str, tag: &str) -> Vec<(i64, f64)> {
    found[run][tag]
        .as_array()
        .unwrap_or_else(|| panic!("no {run}/{tag} in {found}"))
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    // Written as float32, as Keras writes them.
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[test]
fn event_files_hold_every_number_of_epochs_csv_for_tensorboard() {
    let Some(py) = python_with("tensorboard") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_folders(&data, 12);
    let file = experiment_file(tmp.path());
    let out = tmp.path().join("out");
    let o = run(&[
        "experiment",
        file.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run_dir = out.join("latest").canonicalize().unwrap();
    let history = History::read_csv(&run_dir.join("epochs.csv")).unwrap();
    assert_eq!(history.epochs.len(), 3);
    let logs = run_dir.join("logs");
    let read = tensorboard_says(&py, "read", &logs);
    let scalars: BTreeMap<&str, &Value> = ["train", "validation"]
        .into_iter()
        .map(|r| (r, &read[r]["scalars"]))
        .collect();
    let found = serde_json::to_value(&scalars).unwrap();
    for (run, tag, column) in [
        ("train", "epoch_loss", 0),
        ("train", "epoch_accuracy", 1),
        ("train", "epoch_learning_rate", 2),
        ("validation", "epoch_loss", 3),
        ("validation", "epoch_accuracy", 4),
    ] {
        let got = series(&found, run, tag);
        assert_eq!(
            got.len(),
            history.epochs.len(),
            "{run}/{tag}: one value per epoch"
        );
        for (i, (e, (step, value))) in history.epochs.iter().zip(got).enumerate() {
            let want = match column {
                0 => e.loss,
                1 => e.acc,
                2 => e.learning_rate,
                3 => e.val_loss.unwrap(),
                _ => e.val_acc.unwrap(),
            };
            assert_eq!(
                step, i as i64,
                "{run}/{tag}: Keras' step is the epoch index"
            );
            assert!(
                close(value, want),
                "{run}/{tag} epoch {i}: {value} vs {want}"
            );
        }
    }
    // Batch scalars every 5 steps: 108 training images at batch 8 are 14 steps an epoch.
    let batch_steps: Vec<i64> = series(&found, "train", "batch_loss")
        .iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(
        batch_steps,
        (1..=42 / 5).map(|k| k * 5).collect::<Vec<i64>>()
    );
    // A histogram per weight and epoch, counting every value (dense_1's kernel: 4096 x 128).
    let histograms = &read["train"]["histograms"];
    let dense = histograms["dense_1/kernel/histogram"].as_array().unwrap();
    assert_eq!(dense.len(), 3);
    assert!(dense.iter().all(|p| p[1].as_f64() == Some(4096.0 * 128.0)));
    assert_eq!(histograms.as_object().unwrap().len(), 8, "{histograms}");
    // The test set's pictures at the last epoch: width, height and a PNG.
    for tag in ["confusion", "mistakes"] {
        let image = &read["test"]["images"][tag];
        assert_eq!(image[0][0].as_i64(), Some(2), "{image}");
        assert!(image[0][1][2].as_u64().unwrap() > 1000, "{image}");
    }

    // A TensorBoard server on the folder serves the same scalars over its HTTP API.
    let served = tensorboard_says(&py, "serve", &logs);
    for (run, tags) in served.as_object().unwrap() {
        for tag in tags.as_object().unwrap().keys() {
            let from_server = series(&served, run, tag);
            let from_files = series(&found, run, tag);
            assert_eq!(from_server.len(), from_files.len(), "{run}/{tag}");
            for (a, b) in from_server.iter().zip(&from_files) {
                assert!(a.0 == b.0 && close(a.1, b.1), "{run}/{tag}: {a:?} vs {b:?}");
            }
        }
    }
    assert_eq!(served["validation"].as_object().unwrap().len(), 2);
}

/// Killed after its first checkpoint and resumed, a run's logs are an uninterrupted run's:
/// the steps done again are there once.
#[test]
fn a_resumed_run_continues_its_logs_without_repeated_steps() {
    let Some(py) = python_with("tensorboard") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_folders(&data, 40);
    let file = experiment_file(tmp.path());
    let args = |out: &Path| {
        vec![
            "experiment".to_string(),
            file.display().to_string(),
            "--data".into(),
            data.display().to_string(),
            "--epochs".into(),
            "4".into(),
            "--batch-size".into(),
            "4".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let whole_out = tmp.path().join("whole");
    let whole_args = args(&whole_out);
    let o = run(&whole_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = whole_out.join("latest").canonicalize().unwrap();

    let killed_out = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_simplecnn"))
        .args(args(&killed_out))
        .env_remove("CIFAR10_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let killed = first_checkpointed_run(&killed_out);
    // Let it log part of the next epoch, then kill it.
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    if !killed.join("INCOMPLETE").exists() {
        eprintln!("the run finished before it was killed; nothing to resume");
        return;
    }
    let o = run(&["experiment", "--resume", killed.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let a = tensorboard_says(&py, "read", &whole.join("logs"));
    let b = tensorboard_says(&py, "read", &killed.join("logs"));
    for run in ["train", "validation"] {
        assert_eq!(a[run]["scalars"], b[run]["scalars"], "{run}");
        assert_eq!(
            a[run]["histograms"].as_object().map(|h| h.len()),
            b[run]["histograms"].as_object().map(|h| h.len())
        );
    }
    let files = |dir: PathBuf| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("events.out.tfevents.")
            })
            .count()
    };
    assert_eq!(files(killed.join("logs/train")), 1, "one file, one curve");
    // Each (tag, step) once in the files themselves (TensorBoard's reader would also hide a
    // repeated step, by purging what comes after a step that goes back).
    for split in ["train", "validation"] {
        let mut seen = std::collections::HashMap::new();
        for entry in std::fs::read_dir(killed.join("logs").join(split)).unwrap() {
            for event in simplecnn_tensorboard::read_events(&entry.unwrap().path()).unwrap() {
                if let Some(simplecnn_tensorboard::What::Summary(s)) = event.what {
                    for v in s.value {
                        *seen.entry((v.tag, event.step)).or_insert(0) += 1;
                    }
                }
            }
        }
        let repeated: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
        assert!(repeated.is_empty(), "{split}: {repeated:?}");
    }
}
