//! Shared helpers: the small network the Python helper also knows, and running the helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use simplecnn_model::{Mode, Model};
use std::process::Command;

use simplecnn_model::{Activation, Conv2dConfig, FeatureShape, LayerKind, Network, Padding};

/// The network of tests/python/keras_h5.py, with Keras 2's default names.
pub fn small_cnn() -> Network {
    let mut s = Network::new("sequential_1", FeatureShape::image(3, 8, 8));
    s.add(LayerKind::Conv2d(Conv2dConfig::new(
        4,
        3,
        Padding::Same,
        Activation::Relu,
    )))
    .unwrap();
    s.add(LayerKind::max_pool(2)).unwrap();
    s.add(LayerKind::dropout(0.25)).unwrap();
    s.add(LayerKind::Conv2d(Conv2dConfig::new(
        6,
        2,
        Padding::Valid,
        Activation::Relu,
    )))
    .unwrap();
    s.add(LayerKind::Flatten).unwrap();
    s.add(LayerKind::dropout(0.5)).unwrap();
    s.add(LayerKind::dense(7, Activation::Relu)).unwrap();
    s.add(LayerKind::dense(5, Activation::Softmax)).unwrap();
    s
}

pub fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/keras_h5.py")
}

/// A python3 with h5py and numpy; `None` (test skipped) outside CI when there is none.
pub fn python() -> Option<String> {
    let py = std::env::var("SIMPLECNN_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import h5py, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI needs {py} with h5py and numpy"
    );
    eprintln!("skipping: {py} has no h5py/numpy (pip install h5py numpy)");
    None
}

pub fn run(py: &str, args: &[&str]) -> String {
    // The HDF5 C library opens files without O_CLOEXEC, so a helper spawned while another test
    // thread has a file open inherits its descriptor and lock; h5py would then fail to lock
    // that file. The helper only reads files the test finished writing: no locking needed.
    let out = Command::new(py)
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
        .arg(helper())
        .args(args)
        .output()
        .expect("run python helper");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helper {args:?} failed:\n{text}");
    text
}

/// The largest absolute difference between two batches of predictions.
pub fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The model's outputs for `x` (NCHW), inference mode.
pub fn predict(model: &Model, x: &Tensor) -> Vec<Vec<f32>> {
    model
        .forward(x, Mode::Inference)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// A batch of NHWC images from Keras' JSON (`x.tolist()`), as an NCHW tensor.
pub fn nhwc_batch(v: &serde_json::Value) -> Tensor {
    let dims = |v: &serde_json::Value| v.as_array().map_or(0, Vec::len);
    let (n, h, w, c) = (dims(v), dims(&v[0]), dims(&v[0][0]), dims(&v[0][0][0]));
    let values: Vec<f32> = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a.as_array().unwrap())
        .flat_map(|a| a.as_array().unwrap())
        .flat_map(|a| a.as_array().unwrap())
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    Tensor::from_vec(values, (n, h, w, c), &candle_core::Device::Cpu)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap()
}

/// Rows of numbers from JSON (`predictions.tolist()`).
pub fn rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}
