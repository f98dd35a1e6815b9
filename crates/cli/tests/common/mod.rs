//! What the CLI's integration tests share: tiny data sets made on the spot.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tiny data set as image folders: `classes`, `per_class` 32x32 PNGs of each in both splits.
pub fn tiny_folders_of(root: &Path, classes: &[&str], per_class: usize) {
    for split in ["train", "test"] {
        for (c, class) in classes.iter().enumerate() {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..per_class {
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    image::Rgb([(c * 25) as u8, (x * 8) as u8, (y + i as u32) as u8])
                });
                img.save(d.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// [`tiny_folders_of`] CIFAR-10's ten classes.
pub fn tiny_folders(root: &Path, per_class: usize) {
    tiny_folders_of(root, &simplecnn_cifar::CLASS_NAMES, per_class)
}

/// A python that can `import` all of `modules` (`SIMPLECNN_PYTHON`, else python3); `None`
/// (the test is skipped) outside CI when there is none, a failure in CI.
pub fn python_with(modules: &str) -> Option<String> {
    let py = std::env::var("SIMPLECNN_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI needs {py} with {modules}"
    );
    eprintln!("skipping: {py} cannot import {modules} (cargo xtask test sets one up)");
    None
}

/// Waits for the first run folder under `out` with a checkpoint.
pub fn first_checkpointed_run(out: &Path) -> PathBuf {
    let start = std::time::Instant::now();
    loop {
        let found = std::fs::read_dir(out).ok().and_then(|mut d| {
            d.find_map(|e| {
                let p = e.ok()?.path();
                p.join("checkpoints/last.json").is_file().then_some(p)
            })
        });
        if let Some(run) = found {
            return run;
        }
        assert!(start.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The shared CIFAR-10 JPEG tarball (`SIMPLECNN_SHARED_DATA`, else `../shared/data` beside the
/// checkout); `None` (the test is skipped) outside CI when it is not there, a failure in CI.
pub fn shared_cifar_tarball() -> Option<PathBuf> {
    let shared = std::env::var_os("SIMPLECNN_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let tarball = shared.join("cifar10-jpg.tar.gz");
    if tarball.is_file() {
        return Some(tarball);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI needs {}",
        tarball.display()
    );
    eprintln!("skipping: no shared data at {}", shared.display());
    None
}

/// The epochs.csv rows without the timing columns (`seconds`, `images_per_second`).
/// epoch, loss, acc, val_loss, val_acc, learning_rate.
pub type EpochResult = (usize, f64, f64, Option<f64>, Option<f64>, f64);

pub fn results_without_timing(run: &Path) -> Vec<EpochResult> {
    simplecnn_train::History::read_csv(&run.join("epochs.csv"))
        .unwrap()
        .epochs
        .iter()
        .map(|e| {
            (
                e.epoch,
                e.loss,
                e.acc,
                e.val_loss,
                e.val_acc,
                e.learning_rate,
            )
        })
        .collect()
}

/// Every weight of a saved model, by name.
pub fn saved_weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let model = simplecnn_store::load_model(path, &candle_core::Device::Cpu).unwrap();
    model
        .weights()
        .map(|w| {
            let v = w.var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (w.path(), v)
        })
        .collect()
}

/// Whether a Slurm controller answers here; `false` (the test is skipped) outside CI, a
/// failure in CI, which starts one (`cargo xtask slurm-up`).
pub fn slurm_is_up() -> bool {
    let up = Command::new("sinfo")
        .args(["--noheader", "--format=%T"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("idle"));
    assert!(
        up || std::env::var_os("CI").is_none(),
        "CI needs a Slurm with an idle node (cargo xtask slurm-up)"
    );
    if !up {
        eprintln!("skipping: no Slurm here (cargo xtask slurm-up starts one)");
    }
    up
}
