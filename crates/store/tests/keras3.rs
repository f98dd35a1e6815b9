//! Keras 3's own format against files Keras 3.15.1 wrote (`tests/data/keras3/`, made by
//! `benches/reference/keras3_fixtures.py`): a `.keras` zip, a `save_weights` `.weights.h5`
//! and a legacy `.h5`, all of one small model with every layer kind and Adam's state. We load
//! each and predict what Keras predicted; a `.keras` we write has, for Python's zipfile and
//! h5py, the same entries, layers and weights tree as Keras' own; bad archives are errors
//! that name the file and the entry.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use simplecnn_model::{Model, Precision};
use simplecnn_store::{
    load_model, load_optimizer, load_weights, read_class_names, save_model_with, AdamState,
    MatchBy, SaveOptions,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keras3")
        .join(name)
}

struct Expected {
    input: Tensor,
    predictions: Vec<Vec<f32>>,
    iterations: u64,
    learning_rate: f64,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let input = common::nhwc_batch(&v["input_nhwc"]);
    let predictions = common::rows(&v["predictions"]);
    Expected {
        input,
        predictions,
        iterations: v["iterations"].as_u64().unwrap(),
        learning_rate: v["learning_rate"].as_f64().unwrap(),
    }
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len());
    let diff = common::max_diff(a, b);
    assert!(diff < 1e-5, "{what}: max difference {diff}");
}

fn slots(state: &AdamState) -> Vec<(String, Vec<f32>)> {
    state
        .slots
        .iter()
        .map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

#[test]
fn keras_files_load_and_predict_what_keras_predicted() {
    let e = expected();
    let keras = load_model(&fixture("model.keras"), &Device::Cpu).unwrap();
    assert_close(
        &common::predict(&keras, &e.input),
        &e.predictions,
        "model.keras",
    );
    let legacy = load_model(&fixture("legacy.h5"), &Device::Cpu).unwrap();
    assert_close(
        &common::predict(&legacy, &e.input),
        &e.predictions,
        "legacy.h5",
    );
    // save_weights' file into a model built from the config, by structure and by name.
    for by in [MatchBy::Order, MatchBy::Name] {
        let fresh = Model::new(keras.spec().clone(), &Device::Cpu, 5).unwrap();
        assert!(common::max_diff(&common::predict(&fresh, &e.input), &e.predictions) > 1e-3);
        load_weights(&fresh, &fixture("model.weights.h5"), by).unwrap();
        assert_close(
            &common::predict(&fresh, &e.input),
            &e.predictions,
            "model.weights.h5",
        );
    }
    // Adam's state, the same in all three files.
    let states: Vec<AdamState> = ["model.keras", "legacy.h5", "model.weights.h5"]
        .iter()
        .map(|f| load_optimizer(&keras, &fixture(f)).unwrap().expect(f))
        .collect();
    for s in &states {
        assert_eq!(s.iterations, e.iterations);
        assert!((s.learning_rate - e.learning_rate).abs() < 1e-9);
        assert_eq!(slots(s), slots(&states[0]));
    }
    assert_eq!(states[0].slots.len(), 2 * keras.trainable_weights().count());
    // Momentum can be negative, velocity never: m and v are not swapped.
    let (m, v) = (&slots(&states[0])[0], &slots(&states[0])[1]);
    assert!(m.0.ends_with("/m") && v.0.ends_with("/v"));
    assert!(m.1.iter().any(|x| *x < 0.0) && v.1.iter().all(|x| *x >= 0.0));
}

/// Ours, written from the model Keras' file gave: it loads back with the same predictions,
/// optimizer state and class names, and Python's zipfile and h5py see what they see in
/// Keras' own file, line for line.
#[test]
fn a_keras_file_we_write_is_keras_file_for_python() {
    let e = expected();
    let keras = load_model(&fixture("model.keras"), &Device::Cpu).unwrap();
    let adam = load_optimizer(&keras, &fixture("model.keras"))
        .unwrap()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours.keras");
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    save_model_with(
        &keras,
        &ours,
        &SaveOptions {
            optimizer: Some(&adam),
            class_names: Some(&names),
        },
    )
    .unwrap();
    let back = load_model(&ours, &Device::Cpu).unwrap();
    assert_close(
        &common::predict(&back, &e.input),
        &e.predictions,
        "ours.keras",
    );
    let state = load_optimizer(&back, &ours).unwrap().unwrap();
    assert_eq!(state.iterations, adam.iterations);
    assert_eq!(slots(&state), slots(&adam));
    assert_eq!(read_class_names(&ours).unwrap(), Some(names));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "only the file: {leftovers:?}");

    let Some(py) = common::python() else { return };
    let tree = |p: &Path| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/keras3_tree.py");
        let out = std::process::Command::new(&py)
            .env("HDF5_USE_FILE_LOCKING", "FALSE")
            .arg(script)
            .arg(p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(tree(&ours), tree(&fixture("model.keras")));
}

fn write_zip(path: &Path, entries: &[(&str, &[u8])], method: zip::CompressionMethod) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(true);
    for (name, bytes) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Each bad archive fails with the file and the problem named.
#[test]
fn bad_keras_files_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("model.keras")).unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&good)).unwrap();
    let mut entry = |name: &str| -> Vec<u8> {
        let mut f = archive.by_name(name).unwrap();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut v).unwrap();
        v
    };
    let (config, weights, metadata) = (
        entry("config.json"),
        entry("model.weights.h5"),
        entry("metadata.json"),
    );
    let stored = zip::CompressionMethod::Stored;
    let case = |name: &str| tmp.path().join(name);

    std::fs::write(case("text.keras"), b"not a zip at all").unwrap();
    write_zip(
        &case("noconfig.keras"),
        &[("model.weights.h5", &weights)],
        stored,
    );
    write_zip(
        &case("noweights.keras"),
        &[("config.json", &config)],
        stored,
    );
    write_zip(
        &case("escape.keras"),
        &[
            ("../evil.json", b"{}"),
            ("config.json", &config),
            ("model.weights.h5", &weights),
        ],
        stored,
    );
    write_zip(
        &case("absolute.keras"),
        &[
            ("/etc/evil", b"{}"),
            ("config.json", &config),
            ("model.weights.h5", &weights),
        ],
        stored,
    );
    // The config says Dense(6) where the weights hold Dense(5).
    let wider =
        String::from_utf8(config.clone())
            .unwrap()
            .replacen("\"units\": 5", "\"units\": 6", 1);
    assert_ne!(wider.as_bytes(), config.as_slice());
    write_zip(
        &case("disagree.keras"),
        &[
            ("metadata.json", &metadata),
            ("config.json", wider.as_bytes()),
            ("model.weights.h5", &weights),
        ],
        stored,
    );
    // 300 MiB of zeros deflated to a few hundred KiB: refused before it is unpacked.
    let zeros = vec![0u8; 300 << 20];
    write_zip(
        &case("bomb.keras"),
        &[("config.json", &config), ("model.weights.h5", &zeros)],
        zip::CompressionMethod::Deflated,
    );
    drop(zeros);
    assert!(std::fs::metadata(case("bomb.keras")).unwrap().len() < 10 << 20);

    for (file, expect) in [
        ("text.keras", "not a readable HDF5"),
        ("noconfig.keras", "no config.json"),
        ("noweights.keras", "no model.weights.h5"),
        ("escape.keras", "../evil.json"),
        ("absolute.keras", "/etc/evil"),
        ("disagree.keras", "layers/dense/vars/0"),
        ("bomb.keras", "zip bomb"),
    ] {
        let err = load_model(&case(file), &Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{file} loaded"))
            .to_string();
        assert!(err.contains(file) && err.contains(expect), "{file}: {err}");
    }
}

/// The config.json entries of a `.keras` file.
fn archive_config(path: &Path) -> serde_json::Value {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("config.json").unwrap(), &mut text).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Each layer's name and `dtype`, Keras' bookkeeping (`shared_object_id`) left out.
fn layer_dtypes(config: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    config["config"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let mut dtype = l["config"]["dtype"].clone();
            if let Some(d) = dtype.as_object_mut() {
                d.remove("shared_object_id");
            }
            (l["config"]["name"].as_str().unwrap().to_string(), dtype)
        })
        .collect()
}

/// A graph Keras 3.15 built and trained under `set_dtype_policy("mixed_bfloat16")`: it loads
/// with that policy, its logits are Keras' within bf16's error (Keras rounds activations to
/// bf16 too, we round the convolutions' operands: 0.03 on logits of about 1, where Keras' own
/// two policies differ by up to 0.008), and in float32 they are Keras' float32 logits to 1e-4;
/// the `.keras` we write back gives every layer the policy as Keras does.
#[test]
fn a_mixed_bfloat16_keras_file_keeps_its_policy() {
    let path = fixture("mixed_bfloat16.keras");
    let text = std::fs::read_to_string(fixture("mixed_bfloat16.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let input = common::nhwc_batch(&v["input_nhwc"]);
    let mut model = load_model(&path, &Device::Cpu).unwrap();
    assert_eq!(model.precision(), Precision::MixedBf16);
    let mixed = common::predict(&model, &input);
    let diff = common::max_diff(&mixed, &common::rows(&v["logits_mixed_bfloat16"]));
    assert!(
        diff < 0.03,
        "mixed_bfloat16 logits differ from Keras' by {diff}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours.keras");
    save_model_with(&model, &ours, &SaveOptions::default()).unwrap();
    assert_eq!(
        layer_dtypes(&archive_config(&ours)),
        layer_dtypes(&archive_config(&path))
    );
    let back = load_model(&ours, &Device::Cpu).unwrap();
    assert_eq!(back.precision(), Precision::MixedBf16);
    assert_eq!(common::predict(&back, &input), mixed);

    model.set_precision(Precision::F32).unwrap();
    let f32_logits = common::predict(&model, &input);
    let diff = common::max_diff(&f32_logits, &common::rows(&v["logits_float32"]));
    assert!(diff < 1e-4, "float32 logits differ from Keras' by {diff}");
    assert_ne!(f32_logits, mixed, "the policy changed nothing");
    let f32_file = tmp.path().join("f32.keras");
    save_model_with(&model, &f32_file, &SaveOptions::default()).unwrap();
    let dtypes = layer_dtypes(&archive_config(&f32_file));
    assert!(dtypes.iter().all(|(_, d)| d == "float32"), "{dtypes:?}");
    assert_eq!(
        load_model(&f32_file, &Device::Cpu).unwrap().precision(),
        Precision::F32
    );
}
