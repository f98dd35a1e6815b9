//! Functional models (graphs) against files Keras wrote (`tests/data/graphs/`, made by
//! `benches/reference/keras_graph_fixtures.py`): one small graph with a residual Add, a
//! squeeze-and-excite Multiply, Concatenate, ZeroPadding2D, ReLU(6) and random BatchNorm
//! statistics, and one with DepthwiseConv2D, SeparableConv2D, Reshape and `same` pooling,
//! each saved by Keras 3.15.1 as `.keras` and `.h5` (Keras 3's node form) and by tf-keras
//! 2.21 as `.h5` (Keras 2's `inbound_nodes` lists). Each loads and predicts what
//! Keras predicted; what we write lists the layers in Keras' own order and loads back the
//! same; bad graphs are errors naming the layer.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::{json, Value};
use simplecnn_store::layout::{model_config, network_from_config};
use simplecnn_store::{load_model, read_model_config, save_model};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/graphs")
        .join(name)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn graphs_keras_wrote_predict_what_keras_predicted() {
    let v = expected();
    let x = common::nhwc_batch(&v["input_nhwc"]);
    let more_x = common::nhwc_batch(&v["more_input_nhwc"]);
    for (file, writer) in [
        ("keras3.keras", "keras3"),
        ("keras3.h5", "keras3"),
        ("keras2.h5", "keras2"),
        ("more3.keras", "more3"),
        ("more3.h5", "more3"),
        ("more2.h5", "more2"),
        ("nested3.keras", "nested3"),
    ] {
        let model = load_model(&fixture(file), &Device::Cpu).unwrap();
        assert!(model.spec().is_functional(), "{file}");
        let input = match file.starts_with("more") {
            true => &more_x,
            false => &x,
        };
        let ours = common::predict(&model, input);
        let diff = common::max_diff(&ours, &common::rows(&v[writer]["predictions"]));
        assert!(diff < 1e-5, "{file}: max difference {diff}");
    }
}

#[test]
fn the_summary_is_keras_functional_table() {
    let model = load_model(&fixture("keras2.h5"), &Device::Cpu).unwrap();
    let summary = model.summary();
    let lines: Vec<&str> = summary.lines().collect();
    assert!(lines[1].trim_end().ends_with("Connected to"), "{summary}");
    assert!(lines.iter().all(|l| l.chars().count() <= 98));
    // The join takes the stem and the second BatchNormalization: one row each.
    let at = lines
        .iter()
        .position(|l| l.starts_with("join (Add)"))
        .unwrap();
    assert!(
        lines[at].trim_end().ends_with("stem[0][0]"),
        "{}",
        lines[at]
    );
    assert!(lines[at + 1].trim_start().starts_with("bn2[0][0]"));
    assert!(lines[at + 1].starts_with("    "));
    // tf-keras 2.21's count for this graph (`model.count_params()`).
    assert_eq!(model.spec().param_count(), 1310);
    assert!(summary.contains("Total params: 1,310"), "{summary}");
}

/// The names of a config's layers, in the order it lists them.
fn layer_order(config: &Value) -> Vec<String> {
    config["config"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["config"]["name"]
                .as_str()
                .or(l["name"].as_str())
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn what_we_write_lists_layers_in_keras_order_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let v = expected();
    for fixture_file in ["keras3.keras", "keras2.h5", "more3.keras", "more2.h5"] {
        // (nested3.keras is written back flattened: its layer order differs from Keras' by design;
        // it is checked below.)
        let x = match fixture_file.starts_with("more") {
            true => common::nhwc_batch(&v["more_input_nhwc"]),
            false => common::nhwc_batch(&v["input_nhwc"]),
        };
        let keras_config = read_model_config(&fixture(fixture_file)).unwrap();
        let model = load_model(&fixture(fixture_file), &Device::Cpu).unwrap();
        // Keras pairs weights by its layer order, which it derives from the graph: ours
        // must be the same, whatever order we hold the layers in.
        assert_eq!(
            layer_order(&model_config(model.spec())),
            layer_order(&keras_config),
            "{fixture_file}"
        );
        let before = common::predict(&model, &x);
        for ext in ["h5", "keras"] {
            let path = dir.path().join(format!("graph.{ext}"));
            save_model(&model, &path, None).unwrap();
            let written = read_model_config(&path).unwrap();
            assert_eq!(written["class_name"], "Functional");
            assert_eq!(layer_order(&written), layer_order(&keras_config));
            let back = load_model(&path, &Device::Cpu).unwrap();
            assert_eq!(back.summary(), model.summary());
            assert_eq!(
                common::predict(&back, &x),
                before,
                "{fixture_file} → .{ext}"
            );
        }
    }
}

/// A Sequential nested in the model (ConvNeXt's stem) is flattened into it: its layers join the
/// graph under their own names, take their weights from the nested tree, and the flattened
/// model saves and loads back the same.
#[test]
fn a_nested_sequential_is_flattened_into_the_graph() {
    let v = expected();
    let x = common::nhwc_batch(&v["input_nhwc"]);
    let model = load_model(&fixture("nested3.keras"), &Device::Cpu).unwrap();
    let names: Vec<&str> = model
        .spec()
        .layers()
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert!(
        names.contains(&"stem_conv") && names.contains(&"stem_ln"),
        "{names:?}"
    );
    assert!(!names.contains(&"stem"));
    let before = common::predict(&model, &x);
    let dir = tempfile::tempdir().unwrap();
    for ext in ["keras", "h5"] {
        let path = dir.path().join(format!("flat.{ext}"));
        save_model(&model, &path, None).unwrap();
        let back = load_model(&path, &Device::Cpu).unwrap();
        assert_eq!(common::predict(&back, &x), before, ".{ext}");
    }
}

/// A functional config in Keras 2's form: (name, class, config, inputs).
fn graph(layers: &[(&str, &str, Value, &[&str])]) -> Value {
    let mut list = vec![
        json!({"class_name": "InputLayer", "name": "in", "inbound_nodes": [],
        "config": {"name": "in", "batch_input_shape": [null, 4, 4, 2]}}),
    ];
    for (name, class, config, inputs) in layers {
        let mut config = config.clone();
        config["name"] = json!(name);
        let node: Vec<Value> = inputs.iter().map(|i| json!([i, 0, 0, {}])).collect();
        list.push(json!({"class_name": class, "name": name, "config": config,
                         "inbound_nodes": [node]}));
    }
    let last = layers.last().map_or("in", |l| l.0);
    json!({"class_name": "Functional", "config": {"name": "g", "layers": list,
        "input_layers": [["in", 0, 0]], "output_layers": [[last, 0, 0]]}})
}

fn conv(filters: usize) -> Value {
    json!({"filters": filters, "kernel_size": 1})
}

#[test]
fn bad_graphs_are_errors_naming_the_layer() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            graph(&[
                ("a", "Conv2D", conv(2), &["b"]),
                ("b", "Conv2D", conv(2), &["a"]),
            ]),
            "a",
            "cycle",
        ),
        (
            graph(&[("a", "Conv2D", conv(2), &["nowhere"])]),
            "a",
            "\"nowhere\"",
        ),
        (
            graph(&[
                ("a", "Conv2D", conv(2), &["in"]),
                ("b", "Conv2D", conv(3), &["in"]),
                ("sum", "Add", json!({}), &["a", "b"]),
            ]),
            "sum",
            "cannot add",
        ),
        (
            graph(&[
                ("a", "Conv2D", conv(2), &["in"]),
                ("p", "MaxPooling2D", json!({}), &["in"]),
                ("cat", "Concatenate", json!({}), &["a", "p"]),
            ]),
            "cat",
            "cannot concatenate",
        ),
        (graph(&[("a", "LSTM", json!({}), &["in"])]), "a", "LSTM"),
        (
            graph(&[
                ("a", "Conv2D", conv(2), &["in"]),
                ("stray", "Conv2D", conv(2), &["in"]),
                ("b", "Conv2D", conv(2), &["a"]),
            ]),
            "stray",
            "does not lead to the model's output",
        ),
    ];
    for (config, layer, why) in cases {
        let e = network_from_config(&config).unwrap_err().to_string();
        assert!(
            e.contains(&format!("layer {layer}")) && e.contains(why),
            "{e}"
        );
    }
    // A layer called twice shares its weights: refused by name.
    let mut shared = graph(&[("a", "Conv2D", conv(2), &["in"])]);
    shared["config"]["layers"][1]["inbound_nodes"] =
        json!([[["in", 0, 0, {}]], [["in", 0, 0, {}]]]);
    let e = network_from_config(&shared).unwrap_err().to_string();
    assert!(e.contains("layer a") && e.contains("shared weights"), "{e}");
    // Two inputs.
    let mut two = graph(&[("a", "Conv2D", conv(2), &["in"])]);
    let second = json!({"class_name": "InputLayer", "name": "in2", "inbound_nodes": [],
        "config": {"name": "in2", "batch_input_shape": [null, 4, 4, 2]}});
    two["config"]["layers"].as_array_mut().unwrap().push(second);
    let e = network_from_config(&two).unwrap_err().to_string();
    assert!(e.contains("2 inputs") && e.contains("in2"), "{e}");
}

/// `hard_sigmoid` means clip(0.2x + 0.5) in Keras 2 and relu6(x + 3) / 6 in Keras 3 (ours):
/// our `.h5` of a model using it says Keras 3 wrote it and loads back; a Keras 2 file using it
/// is refused by name rather than computed the other way.
#[test]
fn hard_sigmoid_follows_the_keras_version_that_wrote_the_file() {
    use simplecnn_model::{Activation, ActivationConfig, FeatureShape, LayerKind, Network};
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Network::new("hs", FeatureShape::Flat(3));
    let hard = ActivationConfig {
        activation: Activation::HardSigmoid,
    };
    spec.add(LayerKind::Activation(hard)).unwrap();
    let model = simplecnn_model::Model::new(spec, &Device::Cpu, 0).unwrap();
    let path = dir.path().join("hs.h5");
    save_model(&model, &path, None).unwrap();
    let version = |p: &Path| -> String {
        let f = simplecnn_store::open_h5(p).unwrap();
        let v: hdf5::types::VarLenUnicode = f.attr("keras_version").unwrap().read_scalar().unwrap();
        v.as_str().to_string()
    };
    assert!(version(&path).starts_with("3."), "{}", version(&path));
    let x = candle_core::Tensor::new(&[[-4f32, 0.0, 1.5]], &Device::Cpu).unwrap();
    let back = load_model(&path, &Device::Cpu).unwrap();
    // relu6(x + 3) / 6: 0, 0.5, 0.75 (Keras 2's would give 0, 0.5, 0.8).
    assert_eq!(common::predict(&back, &x), [vec![0.0, 0.5, 0.75]]);
    {
        let f = simplecnn_store::open_h5_rw(&path).unwrap();
        f.delete_attr("keras_version").unwrap();
        let v: hdf5::types::VarLenUnicode = "2.9.0".parse().unwrap();
        f.new_attr::<hdf5::types::VarLenUnicode>()
            .shape(())
            .create("keras_version")
            .unwrap()
            .write_scalar(&v)
            .unwrap();
    }
    let e = load_model(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("hs.h5") && e.contains("hard_sigmoid"), "{e}");
}

/// A graph of 100 000 layers listed in reverse (not topological) order, each naming the one
/// before it, with a layer that names itself as the one error: reading it is linear in the
/// layers (no scan per layer), and the self-reference is a cycle named by the layer.
#[test]
fn a_hundred_thousand_layers_in_any_order() {
    const N: usize = 100_000;
    let mut layers: Vec<Value> = (0..N)
        .map(|i| {
            let source = match i {
                0 => "in".to_string(),
                _ => format!("a{}", i - 1),
            };
            json!({"class_name": "Activation", "name": format!("a{i}"),
                   "config": {"name": format!("a{i}"), "activation": "relu"},
                   "inbound_nodes": [[[source, 0, 0, {}]]]})
        })
        .collect();
    layers.push(
        json!({"class_name": "InputLayer", "name": "in", "inbound_nodes": [],
        "config": {"name": "in", "batch_input_shape": [null, 4]}}),
    );
    layers.reverse();
    let last = format!("a{}", N - 1);
    let config = json!({"class_name": "Functional", "config": {"name": "long",
        "layers": layers, "input_layers": [["in", 0, 0]], "output_layers": [[last, 0, 0]]}});
    let net = network_from_config(&config).unwrap();
    assert_eq!(net.layers().len(), N + 1);
    assert_eq!(net.layers()[1].name, "a0");
    assert_eq!(net.layers()[N].name, last);
    assert!(net.is_chain());
    let mut selfish = config.clone();
    selfish["config"]["layers"][3]["inbound_nodes"] = json!([[["a99997", 0, 0, {}]]]);
    let name = selfish["config"]["layers"][3]["name"].clone();
    assert_eq!(name, "a99997");
    let e = network_from_config(&selfish).unwrap_err().to_string();
    assert!(e.contains("layer a99997") && e.contains("cycle"), "{e}");
}
