//! Keras 3's own format (`keras/src/saving/saving_lib.py`): a `.keras` file is a zip of
//! `metadata.json`, `config.json` and `model.weights.h5`, entries stored; the weights tree is
//! `layers/<path>/vars/<i>` with `<path>` Keras' snake-case class name made unique in
//! `model.layers` order (`conv2d`, `conv2d_1`, …) and, for a compiled model,
//! `optimizer/vars/<i>`. A `.weights.h5` from `save_weights` is that tree alone. Files are told
//! apart by content: a zip, or an HDF5 file with a `layers` group and no `layer_names`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use simplecnn_model::{Activation, LayerKind, Model, Network, Precision};

use crate::error::{fail, Context, Result};
use crate::h5::{write_scalar, write_string};
use crate::keras_file::{check_dataset, set_layer_weights, tmp_path, AdamState, FileLayer};
use crate::layout::{
    input_layer_name, is_op_node, keras_dims, keras_order, layer_config, op_node_entry, snake_case,
    source_names, to_keras, weight_layout, MAX_CONFIG_SIZE,
};

/// The Keras version our `.keras` files say they follow (the one they are tested against).
pub const KERAS3_FORMAT_VERSION: &str = "3.15.1";

const CONFIG_ENTRY: &str = "config.json";
const METADATA_ENTRY: &str = "metadata.json";
const WEIGHTS_ENTRY: &str = "model.weights.h5";

/// The largest `metadata.json` read (Keras writes about 60 bytes).
const MAX_METADATA_SIZE: u64 = 1 << 20;
/// The largest weights entry unpacked: 16 GiB (VGG-16's is 0.5 GiB).
const MAX_WEIGHTS_SIZE: u64 = 1 << 34;
/// Keras' zip-bomb rule: an entry over 256 MiB that unpacks to over 100x its packed size.
const BOMB_FLOOR: u64 = 1 << 28;
const BOMB_RATIO: u64 = 100;

/// Whether the file at `path` starts as a zip does.
pub(crate) fn is_zip(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    simplecnn_files::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| &magic == b"PK\x03\x04")
}

/// Whether an HDF5 file holds Keras 3's weights tree (`save_weights` or `.keras`' weights).
pub(crate) fn is_weights_tree(file: &hdf5::File) -> bool {
    let legacy = file.attr("layer_names").is_ok()
        || file
            .group("model_weights")
            .is_ok_and(|g| g.attr("layer_names").is_ok());
    !legacy && file.group("layers").is_ok()
}

/// Each of the model's layers with its path in Keras 3's weights tree, in Keras' layer order:
/// a Sequential's without its input, a graph's with it (Keras keeps `layers/input_layer`).
pub(crate) fn layer_paths(spec: &Network) -> Vec<(String, String)> {
    let mut names = TreeNames::default();
    let mut out = Vec::new();
    let functional = spec.is_functional();
    if functional
        && spec
            .layers()
            .first()
            .is_none_or(|l| l.kind != LayerKind::Input)
    {
        out.push((input_layer_name(spec), names.next("InputLayer", "")));
    }
    for i in keras_order(spec) {
        let l = &spec.layers()[i];
        // Operation nodes are not layers to Keras: no place in the tree.
        if matches!(l.kind, LayerKind::ScalarOp(_)) {
            continue;
        }
        if functional || l.kind != LayerKind::Input {
            out.push((l.name.clone(), names.next(l.kind.class_name(), "")));
        }
    }
    out
}

/// Keras' names in a weights tree: the snake_case class, then `_1`, `_2`, … for later layers
/// of the same class (counted within one container).
#[derive(Default)]
struct TreeNames(HashMap<String, usize>);

impl TreeNames {
    fn next(&mut self, class: &str, prefix: &str) -> String {
        let base = snake_case(class);
        let n = self.0.entry(base.clone()).or_insert(0);
        let path = match *n {
            0 => format!("{prefix}{base}"),
            k => format!("{prefix}{base}_{k}"),
        };
        *n += 1;
        path
    }
}

/// The numbered datasets `0, 1, …` of a `vars` group, in order, each checked and read.
fn read_vars(group: &hdf5::Group, label: &Path, what: &str) -> Result<Vec<(String, Tensor)>> {
    let names = group.member_names().at(label, || what.to_string())?;
    let mut out = Vec::with_capacity(names.len());
    for i in 0..names.len() {
        let name = i.to_string();
        let ds = group.dataset(&name).at(label, || {
            format!("{what}: {} members but no {what}/{name}", names.len())
        })?;
        check_dataset(&ds, label, what, &name)?;
        let data: Vec<f32> = ds.read_raw().at(label, || format!("{what}/{name}"))?;
        let t = Tensor::from_vec(data, ds.shape(), &Device::Cpu)
            .at(label, || format!("{what}/{name}"))?;
        out.push((format!("{what}/{name}"), t));
    }
    Ok(out)
}

/// Each layer of a `config.json` (the input aside) with its path in the weights tree.
pub(crate) fn paths_from_config(config: &Value) -> Vec<(String, String)> {
    paths_of_layers(
        config["config"]["layers"]
            .as_array()
            .map_or(&[], Vec::as_slice),
        "",
    )
}

/// The tree paths of `layers` under `prefix`: each counted by its snake_case class, and a
/// `Sequential` nested in the model (ConvNeXt's stem) as `<sequential_k>/layers/<its own>`.
fn paths_of_layers(layers: &[Value], prefix: &str) -> Vec<(String, String)> {
    let mut names = TreeNames::default();
    let mut out = Vec::new();
    for l in layers
        .iter()
        .filter(|l| l["class_name"] != "InputLayer" && !is_op_node(l))
    {
        let path = names.next(l["class_name"].as_str().unwrap_or(""), prefix);
        match l["config"]["layers"].as_array() {
            Some(inner) if l["class_name"] == "Sequential" => {
                out.extend(paths_of_layers(inner, &format!("{path}/layers/")));
            }
            _ => out.push((l["config"]["name"].as_str().unwrap_or("").to_string(), path)),
        }
    }
    out
}

/// Each layer group of a weights tree with the layer name its `vars` group records.
pub(crate) fn paths_from_names(file: &hdf5::File, label: &Path) -> Result<Vec<(String, String)>> {
    let layers = file.group("layers").at(label, || "layers".into())?;
    let mut out = Vec::new();
    for path in layers.member_names().at(label, || "layers".into())? {
        let vars = layers
            .group(&format!("{path}/vars"))
            .at(label, || format!("layers/{path}/vars"))?;
        let name = crate::h5::read_string(&vars, "name", label)?;
        out.push((name, path));
    }
    Ok(out)
}

/// Loads Keras 3 weights (`label` names the file in errors) into the model: each of `paths`
/// (layer name, group under `layers/`) whose layer is in `only` (every one without it). Every
/// layer of the model with weights must be covered, or, with `only`, every layer named there;
/// a layer of the file with weights that the model lacks is an error, as in Keras.
pub(crate) fn load_weights_tree(
    model: &Model,
    file: &hdf5::File,
    label: &Path,
    paths: &[(String, String)],
    only: Option<&[String]>,
) -> Result<()> {
    let layers = file
        .group("layers")
        .at(label, || "no layers group: not Keras 3 weights".into())?;
    let spec = model.spec();
    let mut read = Vec::new();
    for (name, path) in paths {
        if only.is_some_and(|o| !o.contains(name)) {
            continue;
        }
        let vars = match layers.group(&format!("{path}/vars")) {
            Ok(g) => read_vars(&g, label, &format!("layers/{path}/vars"))?,
            Err(_) => Vec::new(),
        };
        let ours = spec.layers().iter().find(|l| &l.name == name);
        match ours {
            None if vars.is_empty() => continue,
            None => {
                return fail(
                    label,
                    format!(
                    "layers/{path} holds weights of a layer {name}, which the model does not have"
                ),
                )
            }
            Some(l) if l.param_count() == 0 && !vars.is_empty() => {
                return fail(
                    label,
                    format!(
                        "layers/{path} has {} weights, the model's layer {name} has none",
                        vars.len()
                    ),
                )
            }
            Some(l) if l.param_count() == 0 => continue,
            Some(_) => {}
        }
        read.push((
            name.clone(),
            FileLayer {
                name: format!("layers/{path}"),
                weights: vars,
            },
        ));
    }
    if only.is_none() {
        for group in layers.member_names().at(label, || "layers".into())? {
            let weighted = layers
                .group(&format!("{group}/vars"))
                .is_ok_and(|g| g.member_names().is_ok_and(|m| !m.is_empty()));
            if weighted && !paths.iter().any(|(_, p)| p == &group) {
                return fail(
                    label,
                    format!("layers/{group} holds weights for a layer the model does not have"),
                );
            }
        }
    }
    let wanted: Vec<&str> = match only {
        Some(o) => o.iter().map(String::as_str).collect(),
        None => spec
            .layers()
            .iter()
            .filter(|l| l.param_count() > 0)
            .map(|l| l.name.as_str())
            .collect(),
    };
    for name in wanted {
        if !read.iter().any(|(n, _)| n == name) {
            return fail(
                label,
                format!("layer {name}: no weights for it in the file"),
            );
        }
    }
    let pairs: Vec<(&str, &FileLayer)> = read.iter().map(|(n, l)| (n.as_str(), l)).collect();
    set_layer_weights(model, label, &pairs)
}

/// One optimizer slot of weight `w` from dataset `what`: a float tensor of the weight's Keras
/// shape, in our layout on the model's device.
fn slot_tensor(
    ds: &hdf5::Dataset,
    label: &Path,
    what: &str,
    model: &Model,
    w: &simplecnn_model::NamedWeight,
    slot: &str,
) -> Result<Tensor> {
    check_dataset(ds, label, "optimizer", what)?;
    let layout = weight_layout(model.spec(), w);
    let expected = keras_dims(w.var.dims(), layout);
    if ds.shape() != expected {
        return fail(
            label,
            format!(
                "{what} has shape {:?}, {}'s {slot} needs {expected:?}",
                ds.shape(),
                w.path()
            ),
        );
    }
    let data: Vec<f32> = ds.read_raw().at(label, || what.to_string())?;
    Tensor::from_vec(data, ds.shape(), &Device::Cpu)
        .and_then(|t| crate::layout::from_keras(&t, layout))
        .and_then(|t| t.to_device(model.device()))
        .at(label, || what.to_string())
}

/// Adam's state from `optimizer/vars`: the iteration count, the learning rate, then each
/// trainable weight's momentum and velocity in the model's order.
pub(crate) fn read_optimizer_tree(
    model: &Model,
    file: &hdf5::File,
    label: &Path,
    optimizer_config: &Value,
) -> Result<Option<AdamState>> {
    let Ok(vars) = file.group("optimizer/vars") else {
        return Ok(None);
    };
    let class = optimizer_config["class_name"].as_str().unwrap_or("Adam");
    if class != "Adam" {
        return Ok(None);
    }
    let count = vars
        .member_names()
        .at(label, || "optimizer/vars".into())?
        .len();
    let trainable: Vec<_> = model.trainable_weights().collect();
    if count != 2 + 2 * trainable.len() {
        return fail(
            label,
            format!(
                "optimizer/vars has {count} variables; Adam over the model's {} trainable weights has {}",
                trainable.len(),
                2 + 2 * trainable.len()
            ),
        );
    }
    let scalar = |i: usize| -> Result<f64> {
        let ds = vars
            .dataset(&i.to_string())
            .at(label, || format!("optimizer/vars/{i}"))?;
        if ds.size() != 1 {
            return fail(label, format!("optimizer/vars/{i} is not a single value"));
        }
        let v: Vec<f64> = ds.read_raw().at(label, || format!("optimizer/vars/{i}"))?;
        Ok(v[0])
    };
    let iterations = scalar(0)?;
    if !(iterations >= 0.0 && iterations.fract() == 0.0) {
        return fail(
            label,
            format!("optimizer/vars/0: iteration count {iterations}"),
        );
    }
    let learning_rate = scalar(1)?;
    let mut slots = BTreeMap::new();
    for (i, w) in trainable.iter().enumerate() {
        for (j, slot) in ["m", "v"].into_iter().enumerate() {
            let name = (2 + 2 * i + j).to_string();
            let ds = vars
                .dataset(&name)
                .at(label, || format!("optimizer/vars/{name}"))?;
            let t = slot_tensor(
                &ds,
                label,
                &format!("optimizer/vars/{name}"),
                model,
                w,
                slot,
            )?;
            slots.insert(format!("{}/{slot}", w.path()), t);
        }
    }
    Ok(Some(adam_state(
        &optimizer_config["config"],
        learning_rate,
        iterations,
        slots,
    )))
}

/// Adam's state with the betas and epsilon of an optimizer config (Keras' defaults for any
/// left out).
fn adam_state(
    config: &Value,
    learning_rate: f64,
    iterations: f64,
    slots: BTreeMap<String, Tensor>,
) -> AdamState {
    let get = |k: &str, d: f64| config.get(k).and_then(Value::as_f64).unwrap_or(d);
    AdamState {
        learning_rate,
        beta_1: get("beta_1", 0.9),
        beta_2: get("beta_2", 0.999),
        epsilon: get("epsilon", 1e-7),
        iterations: iterations as u64,
        slots,
    }
}

/// Adam's state from Keras 3's legacy `.h5` (`optimizer_weights/adam`): `iteration`,
/// `learning_rate` and, per trainable weight, `<model>_<layer>_<weight>_momentum` and
/// `…_velocity` (the variable's path with `/` as `_`).
pub(crate) fn read_legacy_optimizer(
    model: &Model,
    file: &hdf5::File,
    path: &Path,
) -> Result<Option<AdamState>> {
    let adam = file
        .group("optimizer_weights/adam")
        .at(path, || "optimizer_weights/adam".into())?;
    let scalar = |name: &str| -> Result<f64> {
        let ds = adam
            .dataset(name)
            .at(path, || format!("optimizer_weights/adam/{name} missing"))?;
        if ds.size() != 1 {
            return fail(
                path,
                format!("optimizer_weights/adam/{name} is not a single value"),
            );
        }
        let v: Vec<f64> = ds
            .read_raw()
            .at(path, || format!("optimizer_weights/adam/{name}"))?;
        Ok(v[0])
    };
    let iterations = scalar("iteration")?;
    if !(iterations >= 0.0 && iterations.fract() == 0.0) {
        return fail(
            path,
            format!("optimizer_weights/adam/iteration: {iterations}"),
        );
    }
    let learning_rate = scalar("learning_rate")?;
    let spec = model.spec();
    let mut slots = BTreeMap::new();
    for w in model.trainable_weights() {
        for (suffix, slot) in [("momentum", "m"), ("velocity", "v")] {
            let name = format!("{}_{}_{}_{suffix}", spec.name(), w.layer, w.name);
            let what = format!("optimizer_weights/adam/{name}");
            let ds = adam.dataset(&name).at(path, || format!("{what} missing"))?;
            let t = slot_tensor(&ds, path, &what, model, w, slot)?;
            slots.insert(format!("{}/{slot}", w.path()), t);
        }
    }
    let training: Value = crate::h5::read_string(file, "training_config", path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let cfg = &training["optimizer_config"]["config"];
    Ok(Some(adam_state(cfg, learning_rate, iterations, slots)))
}

/// A `.keras` file opened: its config and metadata, and its weights unpacked to a temporary
/// HDF5 file (removed when this is dropped).
pub(crate) struct KerasArchive {
    pub config: Value,
    pub metadata: Value,
    /// What the zip holds: each entry's name, size and packed size.
    pub entries: Vec<(String, u64, u64)>,
    pub weights: tempfile::NamedTempFile,
    /// `<file>: model.weights.h5`, for errors about the weights.
    pub weights_label: PathBuf,
}

impl KerasArchive {
    pub fn open_weights(&self) -> Result<hdf5::File> {
        hdf5::silence_errors(true);
        crate::h5::open_file(self.weights.path())
            .at(&self.weights_label, || "not a readable HDF5 file".into())
    }
}

fn read_entry<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    path: &Path,
    name: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>> {
    let mut entry = match zip.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return fail(path, format!("entry {name}: {e}")),
    };
    if entry.size() > limit {
        return fail(
            path,
            format!(
                "entry {name} is {} bytes, over the {limit} allowed",
                entry.size()
            ),
        );
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    (&mut entry)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .at(path, || format!("entry {name}: cannot be unpacked"))?;
    if bytes.len() as u64 > limit {
        return fail(path, format!("entry {name} unpacks to over {limit} bytes"));
    }
    Ok(Some(bytes))
}

/// Opens a `.keras` zip, checking every entry's name and size before anything is unpacked.
pub(crate) fn open_archive(path: &Path) -> Result<KerasArchive> {
    crate::keras_file::check_regular_file(path)?;
    let file = simplecnn_files::open(path).at(path, || "cannot open".into())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).at(path, || {
        "not a .keras file (not a readable zip archive)".into()
    })?;
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let entry = zip.by_index(i).at(path, || format!("zip entry {i}"))?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .at(path, || format!("zip entry {i}: unreadable name"))?;
        let outside = entry.enclosed_name().is_none()
            || name.starts_with('/')
            || name.split(['/', '\\']).any(|part| part == "..");
        if outside {
            return fail(
                path,
                format!(
                    "entry {name:?} points outside the archive (an absolute path or ..): refused"
                ),
            );
        }
        entries.push((name, entry.size(), entry.compressed_size()));
    }
    let config = read_entry(&mut zip, path, CONFIG_ENTRY, MAX_CONFIG_SIZE)?.ok_or_else(|| {
        crate::error::StoreError {
            path: path.to_path_buf(),
            message: format!("no {CONFIG_ENTRY} entry: not a Keras 3 model file"),
        }
    })?;
    let config: Value =
        serde_json::from_slice(&config).at(path, || format!("{CONFIG_ENTRY} is not JSON"))?;
    let metadata = match read_entry(&mut zip, path, METADATA_ENTRY, MAX_METADATA_SIZE)? {
        Some(b) => {
            serde_json::from_slice(&b).at(path, || format!("{METADATA_ENTRY} is not JSON"))?
        }
        None => Value::Null,
    };
    let Some(&(_, size, packed)) = entries.iter().find(|(n, _, _)| n == WEIGHTS_ENTRY) else {
        let npz = entries.iter().any(|(n, _, _)| n == "model.weights.npz");
        return fail(
            path,
            match npz {
                true => "weights as model.weights.npz (weights_format=\"npz\") are not supported; save with the default h5",
                false => "no model.weights.h5 entry",
            },
        );
    };
    if size > MAX_WEIGHTS_SIZE || (size > BOMB_FLOOR && size > BOMB_RATIO * packed.max(1)) {
        return fail(
            path,
            format!(
                "entry {WEIGHTS_ENTRY} unpacks to {size} bytes from {packed}: refused (a zip bomb, or over {MAX_WEIGHTS_SIZE} bytes)"
            ),
        );
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let mut weights = tempfile::Builder::new()
        .prefix(".keras-weights-")
        .suffix(".h5")
        .tempfile_in(std::env::temp_dir())
        .or_else(|_| tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new("."))))
        .at(path, || {
            "cannot make a temporary file for its weights".into()
        })?;
    let mut entry = zip
        .by_name(WEIGHTS_ENTRY)
        .at(path, || WEIGHTS_ENTRY.into())?;
    let copied = std::io::copy(&mut (&mut entry).take(size), weights.as_file_mut())
        .at(path, || {
            format!("entry {WEIGHTS_ENTRY}: cannot be unpacked")
        })?;
    if copied != size {
        return fail(
            path,
            format!("entry {WEIGHTS_ENTRY}: {copied} bytes unpacked, its header says {size}"),
        );
    }
    drop(entry);
    weights
        .as_file_mut()
        .flush()
        .at(path, || WEIGHTS_ENTRY.into())?;
    Ok(KerasArchive {
        config,
        metadata,
        entries,
        weights,
        weights_label: PathBuf::from(format!("{}: {WEIGHTS_ENTRY}", path.display())),
    })
}

/// The precision a model's config asks for: `mixed_bfloat16` when every layer with matrix
/// products (Conv2D, Dense and their kin) has that dtype policy — Keras 3's `DTypePolicy`, Keras
/// 2's `Policy` or the bare name —, float32 otherwise. Keras keeps a policy per layer; here the
/// model has one, so a model mixing policies computes in float32.
pub(crate) fn precision_of(config: &Value) -> Precision {
    let Some(layers) = config["config"]["layers"].as_array() else {
        return Precision::F32;
    };
    let products = |class: &str| {
        matches!(
            class,
            "Conv2D" | "Convolution2D" | "DepthwiseConv2D" | "SeparableConv2D" | "Dense"
        )
    };
    let policies: Vec<&str> = layers
        .iter()
        .filter(|l| l["class_name"].as_str().is_some_and(products))
        .map(|l| {
            let dtype = &l["config"]["dtype"];
            dtype
                .as_str()
                .or_else(|| dtype["config"]["name"].as_str())
                .unwrap_or("float32")
        })
        .collect();
    let mixed = Precision::MixedBf16.keras_name();
    match !policies.is_empty() && policies.iter().all(|&p| p == mixed) {
        true => Precision::MixedBf16,
        false => Precision::F32,
    }
}

/// The Sequential's config as Keras 3 writes `config.json`, with `compile_config` for Adam;
/// under `mixed_bfloat16` every layer but the input carries that `DTypePolicy`, as Keras 3
/// writes a model built under `keras.config.set_dtype_policy("mixed_bfloat16")`.
pub(crate) fn keras3_config(
    spec: &Network,
    adam: Option<&AdamState>,
    precision: Precision,
) -> Value {
    let wrap = |layer: Value, input: Option<Value>| {
        // ConvNeXt's LayerScale and StochasticDepth live in its application's module.
        let (module, registered) = match layer["class_name"].as_str() {
            Some(c @ ("LayerScale" | "StochasticDepth")) => {
                ("keras.src.applications.convnext", json!(c))
            }
            _ => ("keras.layers", Value::Null),
        };
        let mut v = json!({
            "module": module,
            "class_name": layer["class_name"],
            "config": layer["config"],
            "registered_name": registered,
        });
        if let Some(shape) = input {
            v["build_config"] = json!({"input_shape": shape});
        }
        v
    };
    let batch = |s: &simplecnn_model::FeatureShape| {
        let mut dims = vec![Value::Null];
        dims.extend(s.keras_dims().into_iter().map(Value::from));
        Value::Array(dims)
    };
    let input_shape = batch(&spec.input_shape());
    let input_name = input_layer_name(spec);
    let input_layer = wrap(
        json!({"class_name": "InputLayer", "config": {
            "batch_shape": input_shape, "dtype": "float32", "sparse": false,
            "ragged": false, "name": input_name, "optional": false
        }}),
        None,
    );
    let mut layers = Vec::new();
    if !spec.is_functional()
        || spec
            .layers()
            .first()
            .is_none_or(|l| l.kind != LayerKind::Input)
    {
        layers.push(input_layer.clone());
    }
    for i in keras_order(spec) {
        let l = &spec.layers()[i];
        if l.kind == LayerKind::Input {
            if spec.is_functional() {
                layers.push(input_layer.clone());
            }
            continue;
        }
        if let LayerKind::ScalarOp(op) = &l.kind {
            layers.push(op_node_entry(spec, l, op));
            continue;
        }
        let shapes: Vec<Value> = l
            .sources
            .iter()
            .map(|s| batch(&spec.shape_of(*s)))
            .collect();
        let build_shape = match shapes.as_slice() {
            [one] => one.clone(),
            many => Value::Array(many.to_vec()),
        };
        let mut entry = wrap(layer_config(l), Some(build_shape));
        if spec.is_functional() {
            // Keras 3's node: the tensors it takes, a list of them for a joining layer.
            // A layer under a mixed policy gives tensors in its compute dtype.
            let tensors: Vec<Value> = source_names(spec, l)
                .into_iter()
                .zip(&shapes)
                .map(|(name, shape)| {
                    let dtype = match (precision, name == input_name) {
                        (Precision::MixedBf16, false) => "bfloat16",
                        _ => "float32",
                    };
                    json!({"class_name": "__keras_tensor__", "config": {
                        "shape": shape, "dtype": dtype, "keras_history": [name, 0, 0]}})
                })
                .collect();
            let joins = matches!(
                l.kind,
                LayerKind::Add | LayerKind::Multiply | LayerKind::Concatenate
            );
            let args = match joins {
                true => json!([tensors]),
                false => json!(tensors),
            };
            entry["name"] = json!(l.name);
            entry["inbound_nodes"] = json!([{"args": args, "kwargs": {}}]);
        }
        layers.push(entry);
    }
    if spec.is_functional() {
        for l in layers
            .iter_mut()
            .filter(|l| l["class_name"] == "InputLayer")
        {
            l["name"] = l["config"]["name"].clone();
            l["inbound_nodes"] = json!([]);
        }
    }
    // Keras 3 writes a layer's dtype as a policy; the plain "float32" of Keras 2 also loads.
    let policy = json!({"module": "keras", "class_name": "DTypePolicy",
                        "config": {"name": precision.keras_name()}, "registered_name": null});
    let mixed = precision != Precision::F32;
    if mixed {
        for l in layers
            .iter_mut()
            .filter(|l| l["class_name"] != "InputLayer" && l["config"].get("dtype").is_some())
        {
            l["config"]["dtype"] = policy.clone();
        }
    }
    let adam_cfg = adam.map_or(
        json!({"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}),
        |a| json!({"learning_rate": a.learning_rate, "beta_1": a.beta_1, "beta_2": a.beta_2, "epsilon": a.epsilon}),
    );
    let mut optimizer_config = json!({
        "name": "adam", "weight_decay": null, "clipnorm": null, "global_clipnorm": null,
        "clipvalue": null, "use_ema": false, "ema_momentum": 0.99,
        "ema_overwrite_frequency": null, "loss_scale_factor": null,
        "gradient_accumulation_steps": null, "amsgrad": false
    });
    optimizer_config
        .as_object_mut()
        .expect("object")
        .extend(adam_cfg.as_object().expect("object").clone());
    // A model that ends in logits (airbench94) is compiled with from_logits.
    let softmax_out = spec.layers().iter().rev().find_map(|l| match &l.kind {
        LayerKind::Dense(d) => Some(d.activation == Activation::Softmax),
        LayerKind::Activation(a) => Some(a.activation == Activation::Softmax),
        LayerKind::Dropout(_) | LayerKind::Flatten => None,
        _ => Some(false),
    });
    let loss = match softmax_out {
        Some(true) => json!("categorical_crossentropy"),
        _ => json!({"module": "keras.losses", "class_name": "CategoricalCrossentropy",
                    "config": {"name": "categorical_crossentropy", "reduction": "sum_over_batch_size",
                               "from_logits": true, "label_smoothing": 0.0, "axis": -1},
                    "registered_name": null}),
    };
    let compile_config = json!({
        "optimizer": {"module": "keras.optimizers", "class_name": "Adam",
                      "config": optimizer_config, "registered_name": null},
        "loss": loss, "loss_weights": null, "metrics": ["accuracy"],
        "weighted_metrics": null, "run_eagerly": false, "steps_per_execution": 1,
        "jit_compile": false
    });
    if spec.is_functional() {
        let output = spec
            .layers()
            .last()
            .map_or(input_name.clone(), |l| l.name.clone());
        return json!({
            "module": "keras.src.models.functional",
            "class_name": "Functional",
            "config": {"name": spec.name(), "trainable": true, "layers": layers,
                       "input_layers": [input_name, 0, 0], "output_layers": [output, 0, 0]},
            "registered_name": "Functional",
            "build_config": {"input_shape": null},
            "compile_config": compile_config
        });
    }
    json!({
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": spec.name(), "trainable": true,
                   "dtype": if mixed { policy } else { json!("float32") }, "layers": layers},
        "registered_name": null,
        "build_config": {"input_shape": input_shape},
        "compile_config": compile_config
    })
}

fn write_vars(group: &hdf5::Group, name: &str, tensors: &[Tensor], label: &Path) -> Result<()> {
    let vars = group
        .create_group("vars")
        .at(label, || format!("{name}/vars"))?;
    write_string(&vars, "name", name, label)?;
    for (i, t) in tensors.iter().enumerate() {
        crate::keras_file::write_tensor(&vars, &i.to_string(), t, label)?;
    }
    Ok(())
}

/// Writes Keras 3's weights tree (what `save_weights('x.weights.h5')` writes) into `file`.
pub(crate) fn write_weights_tree(
    model: &Model,
    file: &hdf5::File,
    label: &Path,
    adam: Option<&AdamState>,
) -> Result<()> {
    let spec = model.spec();
    let layers = file.create_group("layers").at(label, || "layers".into())?;
    let weights: Vec<_> = model.weights().collect();
    for (name, path) in layer_paths(spec) {
        let g = layers
            .create_group(&path)
            .at(label, || format!("layers/{path}"))?;
        let tensors = weights
            .iter()
            .filter(|w| w.layer == name)
            .map(|w| to_keras(w.var.as_tensor(), weight_layout(spec, w)))
            .collect::<candle_core::Result<Vec<_>>>()
            .at(label, || format!("layer {name}"))?;
        write_vars(&g, &name, &tensors, label)?;
    }
    // The model's own variables (none) and, compiled, the optimizer's.
    let root = file.as_group().at(label, || "root".into())?;
    write_vars(&root, spec.name(), &[], label)?;
    if let Some(adam) = adam {
        let g = file
            .create_group("optimizer")
            .at(label, || "optimizer".into())?;
        let vars = g
            .create_group("vars")
            .at(label, || "optimizer/vars".into())?;
        write_string(&vars, "name", "adam", label)?;
        let iterations = adam.iterations as i64;
        write_scalar(&vars, "0", iterations, "optimizer/vars/0", label)?;
        let learning_rate = adam.learning_rate as f32;
        write_scalar(&vars, "1", learning_rate, "optimizer/vars/1", label)?;
        let mut i = 2;
        for w in model.trainable_weights() {
            for slot in ["m", "v"] {
                let key = format!("{}/{slot}", w.path());
                let Some(t) = adam.slots.get(&key) else {
                    return fail(label, format!("optimizer state has no {key}"));
                };
                let t = to_keras(t, weight_layout(spec, w)).at(label, || key.clone())?;
                crate::keras_file::write_tensor(&vars, &i.to_string(), &t, label)?;
                i += 1;
            }
        }
    }
    Ok(())
}

/// Keras' `date_saved`, `YYYY-MM-DD@HH:MM:SS` in UTC.
fn date_saved() -> String {
    let rfc3339 = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    rfc3339.trim_end_matches('Z').replacen('T', "@", 1)
}

/// Writes `model` as Keras 3's `model.save('x.keras')`: to a temporary file beside `path`,
/// renamed when whole.
pub(crate) fn save_keras(
    model: &Model,
    path: &Path,
    adam: Option<&AdamState>,
    class_names: Option<&[String]>,
) -> Result<()> {
    let tmp = tmp_path(path);
    let result = write_archive(model, path, &tmp, adam, class_names);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    std::fs::rename(&tmp, path).at(path, || "cannot move the finished file into place".into())
}

fn write_archive(
    model: &Model,
    path: &Path,
    tmp: &Path,
    adam: Option<&AdamState>,
    class_names: Option<&[String]>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let weights = tempfile::Builder::new()
        .prefix(".model.weights-")
        .suffix(".h5")
        .tempfile_in(dir)
        .at(path, || {
            "cannot make a temporary file for the weights".into()
        })?;
    {
        let h5 = crate::h5::create_file(weights.path())
            .at(path, || "cannot create the weights".into())?;
        write_weights_tree(model, &h5, path, adam)?;
        h5.close().at(path, || "cannot finish the weights".into())?;
    }
    let mut metadata = json!({
        "keras_version": KERAS3_FORMAT_VERSION,
        "date_saved": date_saved(),
        "saved_by": format!("simplecnn {}", env!("CARGO_PKG_VERSION")),
    });
    if let Some(names) = class_names {
        metadata["class_names"] = json!(names);
    }
    let config = keras3_config(model.spec(), adam, model.precision());
    let out = std::fs::File::create(tmp).at(path, || format!("cannot create {}", tmp.display()))?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(out));
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    let mut add = |name: &str, reader: &mut dyn Read| -> Result<()> {
        zip.start_file(name, stored)
            .at(path, || format!("entry {name}"))?;
        std::io::copy(reader, &mut zip).at(path, || format!("entry {name}"))?;
        Ok(())
    };
    add(METADATA_ENTRY, &mut metadata.to_string().as_bytes())?;
    add(CONFIG_ENTRY, &mut config.to_string().as_bytes())?;
    let mut h5 = std::fs::File::open(weights.path()).at(path, || "the weights".into())?;
    add(WEIGHTS_ENTRY, &mut h5)?;
    let out = zip.finish().at(path, || "cannot finish the zip".into())?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .at(path, || "cannot write the file".into())
}

/// The class names a `.keras` file of ours keeps in `metadata.json`.
pub(crate) fn class_names_in(archive: &KerasArchive, path: &Path) -> Result<Option<Vec<String>>> {
    match archive.metadata.get("class_names") {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).at(path, || {
            "metadata.json: class_names is not a list of names".into()
        }),
    }
}

/// A text view of a `.keras` file: entries, the model's layers, the weights tree.
pub(crate) fn inspect_archive(path: &Path) -> Result<String> {
    let archive = open_archive(path)?;
    let mut out = format!("{} (Keras 3 zip)\n", path.display());
    for (name, size, packed) in &archive.entries {
        out.push_str(&format!("  {name}: {size} bytes ({packed} packed)\n"));
    }
    if let Some(v) = archive.metadata["keras_version"].as_str() {
        out.push_str(&format!("keras_version {v}\n"));
    }
    let cfg = &archive.config;
    out.push_str(&format!(
        "{} {}\n",
        cfg["class_name"].as_str().unwrap_or("?"),
        cfg["config"]["name"].as_str().unwrap_or("?")
    ));
    for l in cfg["config"]["layers"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} {}\n",
            l["class_name"].as_str().unwrap_or("?"),
            l["config"]["name"].as_str().unwrap_or("?")
        ));
    }
    if let Some(opt) = cfg["compile_config"]["optimizer"]["class_name"].as_str() {
        out.push_str(&format!("compiled with {opt}\n"));
    }
    let tree = crate::inspect::inspect_h5(archive.weights.path(), &archive.weights_label)?;
    out.push_str(&tree);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_is_keras() {
        for (class, snake) in [
            ("Conv2D", "conv2d"),
            ("MaxPooling2D", "max_pooling2d"),
            ("BatchNormalization", "batch_normalization"),
            ("GlobalAveragePooling2D", "global_average_pooling2d"),
            ("Dense", "dense"),
            ("Rescaling", "rescaling"),
        ] {
            assert_eq!(snake_case(class), snake);
        }
    }
}
