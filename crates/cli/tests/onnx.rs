//! `export --format onnx` against the real `onnx` and `onnxruntime` packages: the file passes
//! ONNX's full check, and ONNX Runtime's class probabilities on real CIFAR-10 test images (the
//! shared copy's JPEGs, decoded once and fed to both sides as the same PNG pixels) equal
//! `predict`'s to 1e-5, for SimpleCNN, airbench94's network (BatchNorm, GELU, no-bias layers,
//! Rescaling) and ResNet-20 (a graph: shortcuts, stride-2 projections), each trained here for
//! an epoch on a tiny set.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::{python_with, tiny_folders};

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_simplecnn"))
        .args(args)
        .env_remove("CIFAR10_DIR")
        // Some model files were just written by this test process, whose HDF5 library may
        // still hold their lock (as in hostile.rs and experiment.rs).
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
        .output()
        .unwrap()
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Five real test images of each class from the shared data, as PNGs.
fn real_test_images() -> Option<Vec<PathBuf>> {
    let tarball = common::shared_cifar_tarball()?;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-test-images");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&dir)
        .args(["--wildcards", "cifar10-jpg/test/*/000[0-4].jpg"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut pngs = Vec::new();
    for class in simplecnn_cifar::CLASS_NAMES {
        for i in 0..5 {
            let jpg = dir.join(format!("cifar10-jpg/test/{class}/000{i}.jpg"));
            let png = dir.join(format!("{class}-{i}.png"));
            image::open(&jpg).unwrap().to_rgb8().save(&png).unwrap();
            pngs.push(png);
        }
    }
    Some(pngs)
}

/// `predict`'s probabilities for every class of each image.
fn our_probabilities(model: &Path, images: &[PathBuf]) -> Vec<Vec<f64>> {
    let mut args = vec![
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--top",
        "10",
    ];
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    let o = cli(&args);
    ok(&o);
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut row = vec![f64::NAN; 10];
            for t in p["top"].as_array().unwrap() {
                row[t["index"].as_u64().unwrap() as usize] = t["probability"].as_f64().unwrap();
            }
            row
        })
        .collect()
}

#[test]
fn onnx_runtime_predicts_what_we_predict() {
    let Some(py) = python_with("onnx, onnxruntime, PIL, numpy") else {
        return;
    };
    let Some(images) = real_test_images() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_folders(&data, 20);
    for experiment in ["baseline", "airbench94", "resnet20"] {
        let out = tmp.path().join(experiment);
        let o = cli(&[
            "experiment",
            experiment,
            "--data",
            data.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--out",
            out.to_str().unwrap(),
        ]);
        ok(&o);
        let model = out.join("latest/model.h5");
        let onnx = tmp.path().join(format!("{experiment}.onnx"));
        ok(&cli(&[
            "export",
            model.to_str().unwrap(),
            "-o",
            onnx.to_str().unwrap(),
        ]));
        let mut args = vec![
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/python/onnx_check.py")
                .display()
                .to_string(),
            onnx.display().to_string(),
        ];
        args.extend(images.iter().map(|p| p.display().to_string()));
        let o = Command::new(&py).args(&args).output().unwrap();
        ok(&o);
        let runtime: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(runtime["opset"], serde_json::json!([17]));
        assert_eq!(runtime["input"], serde_json::json!(["batch", 32, 32, 3]));
        let names: Vec<String> =
            serde_json::from_str(runtime["metadata"]["class_names"].as_str().unwrap()).unwrap();
        assert_eq!(names, simplecnn_cifar::CLASS_NAMES);
        let ours = our_probabilities(&model, &images);
        let theirs = runtime["probabilities"].as_array().unwrap();
        assert_eq!(theirs.len(), images.len());
        let mut worst = 0.0f64;
        for (a, b) in ours.iter().zip(theirs) {
            for (x, y) in a.iter().zip(b.as_array().unwrap()) {
                worst = worst.max((x - y.as_f64().unwrap()).abs());
            }
        }
        assert!(
            worst <= 1e-5,
            "{experiment}: ONNX Runtime differs by {worst}"
        );
        eprintln!("{experiment}: largest difference {worst:e}");
    }
}

/// Graphs Keras wrote (Keras 2 and 3, .h5 and .keras: branches, Concatenate, Multiply,
/// depthwise and separable convolutions, ReLU with threshold and cap, Reshape, LayerNorm,
/// LayerScale, a nested Sequential), exported and run in ONNX Runtime, predict what Keras
/// predicted (the fixtures of `crates/store/tests/graphs.rs`).
#[test]
fn keras_graphs_exported_predict_what_keras_predicted() {
    let Some(py) = python_with("onnx, onnxruntime, numpy") else {
        return;
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../store/tests/data/graphs");
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/onnx_check.py");
    let tmp = tempfile::tempdir().unwrap();
    for (file, writer) in [
        ("keras3.keras", "keras3"),
        ("keras3.h5", "keras3"),
        ("keras2.h5", "keras2"),
        ("more3.keras", "more3"),
        ("more3.h5", "more3"),
        ("more2.h5", "more2"),
        ("nested3.keras", "nested3"),
    ] {
        let onnx = tmp.path().join(format!("{file}.onnx"));
        let model = fixtures.join(file);
        ok(&cli(&[
            "export",
            model.to_str().unwrap(),
            "-o",
            onnx.to_str().unwrap(),
        ]));
        let input = match file.starts_with("more") {
            true => "more_input_nhwc",
            false => "input_nhwc",
        };
        let o = Command::new(&py)
            .arg(&helper)
            .arg("--keras")
            .arg(fixtures.join("expected.json"))
            .args([input, writer])
            .arg(&onnx)
            .output()
            .unwrap();
        ok(&o);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let diff = v["max_difference"].as_f64().unwrap();
        assert!(
            diff < 1e-5,
            "{file}: ONNX Runtime differs from Keras by {diff}"
        );
    }
}

/// A layer the exporter cannot write (a softmax over an image's last axis, which our layers
/// compute and ONNX's image layout has no axis for) is one error naming it; nothing is written.
#[test]
fn a_layer_onnx_cannot_take_is_named() {
    use candle_core::Device;
    use simplecnn_model::{Activation, ActivationConfig, FeatureShape, LayerKind, Model, Network};
    let tmp = tempfile::tempdir().unwrap();
    let mut net = Network::new("odd", FeatureShape::image(3, 8, 8));
    net.add(LayerKind::Activation(ActivationConfig {
        activation: Activation::Softmax,
    }))
    .unwrap();
    net.add(LayerKind::Flatten).unwrap();
    net.add(LayerKind::dense(10, Activation::Softmax)).unwrap();
    let path = tmp.path().join("odd.h5");
    let model = Model::new(net, &Device::Cpu, 0).unwrap();
    simplecnn_store::save_model(&model, &path, None).unwrap();
    let onnx = tmp.path().join("odd.onnx");
    let o = cli(&[
        "export",
        path.to_str().unwrap(),
        "-o",
        onnx.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "odd.h5: cannot export to ONNX: layer activation_1 (Activation): softmax over an image"
        ),
        "{err}"
    );
    assert!(!onnx.exists());
}

/// `bench --onnxruntime` times ONNX Runtime predicting with our exported SimpleCNN beside ours:
/// an inference-only row (no training figures) in the CSV and the table.
#[test]
fn bench_times_onnx_runtime_beside_ours() {
    let Some(py) = python_with("onnxruntime, numpy") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let batches = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&batches).unwrap();
    let images = |n: usize| {
        let pixels = (0..n * 3072).map(|i| (i % 251) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        simplecnn_cifar::LabeledImages::new(pixels, labels, 10).unwrap()
    };
    // The official layout: five training files and a test file of 10 000 records each.
    let batch = images(10_000);
    for file in simplecnn_cifar::binary::TRAIN_FILES
        .iter()
        .chain([&simplecnn_cifar::binary::TEST_FILE])
    {
        simplecnn_cifar::binary::write_batch_file(&batches.join(file), &batch).unwrap();
    }
    let out = tmp.path().join("out");
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/reference");
    let o = cli(&[
        "bench",
        "--data",
        tmp.path().to_str().unwrap(),
        "--steps",
        "1",
        "--warmup",
        "1",
        "--inference-images",
        "100",
        "--rounds",
        "1",
        "--onnxruntime",
        "--python-onnx",
        &py,
        "--scripts",
        scripts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    ok(&o);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("simplecnn vs onnxruntime: inference"),
        "{table}"
    );
    let csv = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "csv"))
        .unwrap();
    let mut reader = csv::Reader::from_path(csv).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let frameworks: Vec<&str> = rows.iter().map(|r| &r[col("framework")]).collect();
    assert_eq!(frameworks, ["simplecnn", "onnxruntime"]);
    let ort = &rows[1];
    assert!(ort[col("inference_images_per_s")].parse::<f64>().unwrap() > 0.0);
    assert!(ort[col("version")].starts_with("onnxruntime "));
    // The exported model is removed after the run.
    assert!(!out.join(".bench-simple_cnn.onnx").exists());
}
