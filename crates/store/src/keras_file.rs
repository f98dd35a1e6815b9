//! `save_model`, `load_model`, `load_weights` in Keras' `.h5` layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::json;
use simplecnn_model::{LayerKind, Model, Network};

use crate::error::{fail, Context, Result};
use crate::h5::{read_string, read_strings, write_string, write_string_list};
use crate::layout::{
    from_keras, input_layer_name, keras_dims, keras_order, model_config, network_from_config,
    to_keras, weight_layout, KERAS_FORMAT_VERSION,
};

/// Adam's state in our layouts, so training resumes from a file: `slots` are keyed by weight
/// and slot, `conv2d_1/kernel/m` and `conv2d_1/kernel/v` (the train crate's naming).
#[derive(Clone, Debug)]
pub struct AdamState {
    pub learning_rate: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    pub iterations: u64,
    pub slots: BTreeMap<String, Tensor>,
}

/// How `load_weights` pairs the file's layers with the model's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchBy {
    /// The i-th layer with weights in the file goes to the i-th in the model (what Keras does).
    Order,
    /// Layers are paired by name; every model layer with weights must be in the file.
    Name,
}

/// The names of the model's layers that have weights, in order.
fn weighted_layers(spec: &Network) -> Vec<&str> {
    spec.layers()
        .iter()
        .filter(|l| l.param_count() > 0)
        .map(|l| l.name.as_str())
        .collect()
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or("model.h5".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

pub(crate) fn write_tensor(group: &hdf5::Group, name: &str, t: &Tensor, path: &Path) -> Result<()> {
    let data: Vec<f32> = t
        .flatten_all()
        .and_then(|t| t.to_device(&Device::Cpu))
        .and_then(|t| t.to_vec1())
        .at(path, || name.to_string())?;
    group
        .new_dataset::<f32>()
        .shape(t.dims())
        .create(name)
        .and_then(|d| d.write_raw(&data))
        .at(path, || format!("cannot write dataset {name}"))
}

/// What a model file may hold besides the model.
#[derive(Clone, Copy, Debug, Default)]
pub struct SaveOptions<'a> {
    /// Adam's state, so training can resume from the file.
    pub optimizer: Option<&'a AdamState>,
    /// The names of the classes the outputs stand for, as the root attribute
    /// [`CLASS_NAMES_ATTRIBUTE`], a JSON list in a UTF-8 string (Keras ignores attributes it
    /// does not know).
    pub class_names: Option<&'a [String]>,
}

/// The root attribute holding the class names: a list of strings.
pub const CLASS_NAMES_ATTRIBUTE: &str = "class_names";

/// Saves `model` (and optionally Adam's state) as Keras' `model.save('x.h5')` would, or as Keras
/// 3's `model.save('x.keras')` for a path ending in `.keras`: written to a temporary file in the
/// same folder and renamed, so a crash never leaves half a file.
pub fn save_model(model: &Model, path: &Path, optimizer: Option<&AdamState>) -> Result<()> {
    save_model_with(
        model,
        path,
        &SaveOptions {
            optimizer,
            class_names: None,
        },
    )
}

/// [`save_model`] with everything [`SaveOptions`] may add.
pub fn save_model_with(model: &Model, path: &Path, options: &SaveOptions<'_>) -> Result<()> {
    let classes = model.spec().output_shape().elem_count();
    if let Some(names) = options.class_names {
        if names.len() != classes {
            return fail(
                path,
                format!(
                    "{} class names for a model with {classes} outputs",
                    names.len()
                ),
            );
        }
    }
    if path.extension().is_some_and(|e| e == "keras") {
        return crate::keras3::save_keras(model, path, options.optimizer, options.class_names);
    }
    let tmp = tmp_path(path);
    let result = write_file(model, &tmp, path, options);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    std::fs::rename(&tmp, path).at(path, || "cannot move the finished file into place".into())
}

fn write_file(model: &Model, tmp: &Path, path: &Path, options: &SaveOptions<'_>) -> Result<()> {
    let optimizer = options.optimizer;
    let file =
        crate::h5::create_file(tmp).at(path, || format!("cannot create {}", tmp.display()))?;
    let spec = model.spec();
    write_string(&file, "keras_version", written_keras_version(spec), path)?;
    if let Some(names) = options.class_names {
        let json = serde_json::to_string(names).at(path, || CLASS_NAMES_ATTRIBUTE.into())?;
        write_string(&file, CLASS_NAMES_ATTRIBUTE, &json, path)?;
    }
    write_string(&file, "backend", "tensorflow", path)?;
    write_string(&file, "model_config", &model_config(spec).to_string(), path)?;
    let adam = optimizer.map_or(json!({"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}), |a| {
        json!({"learning_rate": a.learning_rate, "beta_1": a.beta_1, "beta_2": a.beta_2, "epsilon": a.epsilon})
    });
    let mut adam_config = json!({"name": "Adam", "decay": 0.0, "amsgrad": false});
    adam_config
        .as_object_mut()
        .expect("object")
        .extend(adam.as_object().expect("object").clone());
    let training = json!({
        "loss": "categorical_crossentropy", "metrics": ["accuracy"], "weighted_metrics": null,
        "loss_weights": null, "optimizer_config": {"class_name": "Adam", "config": adam_config}
    });
    write_string(&file, "training_config", &training.to_string(), path)?;

    let weights = file
        .create_group("model_weights")
        .at(path, || "cannot create /model_weights".into())?;
    // A graph lists its input layer too, every layer in Keras' order (Keras 3 pairs a legacy
    // file's weights by that order).
    let order = keras_order(spec);
    let input_name = input_layer_name(spec);
    let mut layers: Vec<String> = Vec::new();
    if spec.is_functional()
        && spec
            .layers()
            .first()
            .is_none_or(|l| l.kind != LayerKind::Input)
    {
        layers.push(input_name);
    }
    layers.extend(
        order
            .iter()
            .map(|&i| &spec.layers()[i])
            .filter(|l| spec.is_functional() || l.kind != LayerKind::Input)
            // Operation nodes are not layers to Keras: no weights group.
            .filter(|l| !matches!(l.kind, LayerKind::ScalarOp(_)))
            .map(|l| l.name.clone()),
    );
    write_string_list(&weights, "layer_names", &layers, path)?;
    write_string(&weights, "backend", "tensorflow", path)?;
    write_string(&weights, "keras_version", written_keras_version(spec), path)?;
    let model_weights: Vec<_> = model.weights().collect();
    for name in &layers {
        let g = weights
            .create_group(name)
            .at(path, || format!("layer {name}: cannot create group"))?;
        let ws: Vec<_> = model_weights.iter().filter(|w| &w.layer == name).collect();
        let names: Vec<String> = ws.iter().map(|w| format!("{name}/{}:0", w.name)).collect();
        write_string_list(&g, "weight_names", &names, path)?;
        if ws.is_empty() {
            continue;
        }
        let inner = g.create_group(name).at(path, || format!("layer {name}"))?;
        for w in ws {
            let layout = weight_layout(spec, w);
            let t = to_keras(w.var.as_tensor(), layout).at(path, || format!("layer {name}"))?;
            write_tensor(&inner, &format!("{}:0", w.name), &t, path)?;
        }
    }
    if let Some(adam) = optimizer {
        write_optimizer(&file, model, adam, path)?;
    }
    file.close().at(path, || "cannot finish the file".into())
}

/// Keras 2.9's `/optimizer_weights`: `Adam/iter:0`, then every `m:0`, then every `v:0`.
fn write_optimizer(file: &hdf5::File, model: &Model, adam: &AdamState, path: &Path) -> Result<()> {
    let spec = model.spec();
    let ws: Vec<_> = model.trainable_weights().collect();
    let g = file
        .create_group("optimizer_weights")
        .at(path, || "cannot create /optimizer_weights".into())?;
    let mut names = vec!["Adam/iter:0".to_string()];
    let a = g
        .create_group("Adam")
        .at(path, || "optimizer_weights/Adam".into())?;
    let iterations = adam.iterations as i64;
    crate::h5::write_scalar(&a, "iter:0", iterations, "Adam/iter:0", path)?;
    for slot in ["m", "v"] {
        for w in &ws {
            let key = format!("{}/{slot}", w.path());
            let Some(t) = adam.slots.get(&key) else {
                return fail(path, format!("optimizer state has no {key}"));
            };
            let layout = weight_layout(spec, w);
            let group = w.path();
            let sub = a
                .group(&group)
                .or_else(|_| a.create_group(&group))
                .at(path, || group.clone())?;
            let t = to_keras(t, layout).at(path, || group.clone())?;
            write_tensor(&sub, &format!("{slot}:0"), &t, path)?;
            names.push(format!("Adam/{group}/{slot}:0"));
        }
    }
    write_string_list(&g, "weight_names", &names, path)
}

/// A model file must be a regular file; says what it is otherwise.
pub(crate) fn check_regular_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dangling = std::fs::symlink_metadata(path).is_ok();
            fail(
                path,
                match dangling {
                    true => "a symbolic link to nothing (its target does not exist)",
                    false => "no such file",
                },
            )
        }
        Err(e) => fail(path, e.to_string()),
        Ok(m) if m.is_dir() => fail(path, "a folder, not a model file"),
        Ok(_) => simplecnn_files::check_regular(path).or_else(|e| fail(path, e.to_string())),
    }
}

pub(crate) fn open(path: &Path) -> Result<hdf5::File> {
    check_regular_file(path)?;
    hdf5::silence_errors(true);
    crate::h5::open_file(path).at(path, || {
        "not a readable HDF5 file (truncated or another format?)".into()
    })
}

/// Weights are floats (16, 32 or 64 bits, converted to f32 as they are read; HDF5 would also
/// convert integers silently, truncating what a model computes with) of a size within the
/// element limit.
pub(crate) fn check_dataset(
    ds: &hdf5::Dataset,
    path: &Path,
    layer: &str,
    name: &str,
) -> Result<()> {
    use hdf5::types::TypeDescriptor;
    let dtype = ds.dtype().and_then(|t| t.to_descriptor()).at(path, || {
        format!("layer {layer}: dataset {name}: unreadable type")
    })?;
    // Floats; or one integer (Normalization's `count`), read as a float.
    let scalar_integer = matches!(
        dtype,
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_)
    ) && ds.shape().is_empty();
    if !matches!(dtype, TypeDescriptor::Float(_)) && !scalar_integer {
        return fail(
            path,
            format!("layer {layer}: dataset {name} holds {dtype}, not floating-point weights"),
        );
    }
    // Its size, before it is read.
    simplecnn_model::check_element_limit(&ds.shape())
        .or_else(|why| fail(path, format!("layer {layer}: dataset {name} {why}")))
}

/// One layer's weights as stored: its name and the tensors (Keras layout) in file order.
pub(crate) struct FileLayer {
    pub name: String,
    pub weights: Vec<(String, Tensor)>,
}

fn read_file_layers(file: &hdf5::File, path: &Path) -> Result<Vec<FileLayer>> {
    // model.save() files keep weights under /model_weights; save_weights() files at the root.
    let root: hdf5::Group = match file.group("model_weights") {
        Ok(g) => g,
        Err(_) => file.as_group().at(path, || "root group".into())?,
    };
    let attr = root.attr("layer_names").at(path, || {
        "no layer_names: not a Keras model or weights file".into()
    })?;
    let names = read_strings(&attr).at(path, || "layer_names".into())?;
    // Links to other files are refused: a model file is one file.
    let refuse_external = |g: &hdf5::Group, what: &str| -> Result<()> {
        let external = crate::inspect::external_links(g).at(path, || what.to_string())?;
        match external.first() {
            Some(link) => fail(
                path,
                format!("{what}: {link} is a link to another file (not followed)"),
            ),
            None => Ok(()),
        }
    };
    refuse_external(&root, "weights")?;
    let mut out = Vec::new();
    for name in names {
        let g = root
            .group(&name)
            .at(path, || format!("layer {name}: group missing"))?;
        refuse_external(&g, &format!("layer {name}"))?;
        for inner in g.groups().at(path, || format!("layer {name}"))? {
            refuse_external(&inner, &format!("layer {name}"))?;
        }
        let wattr = g
            .attr("weight_names")
            .at(path, || format!("layer {name}: no weight_names"))?;
        let wnames = read_strings(&wattr).at(path, || format!("layer {name}: weight_names"))?;
        let mut weights = Vec::new();
        for w in wnames {
            let ds = g
                .dataset(&w)
                .at(path, || format!("layer {name}: dataset {w} missing"))?;
            check_dataset(&ds, path, &name, &w)?;
            let data: Vec<f32> = ds
                .read_raw()
                .at(path, || format!("layer {name}: dataset {w} unreadable"))?;
            let t = Tensor::from_vec(data, ds.shape(), &Device::Cpu)
                .at(path, || format!("layer {name}: {w}"))?;
            weights.push((w, t));
        }
        out.push(FileLayer { name, weights });
    }
    Ok(out)
}

/// Pairs the model's layers `names` with the file's layers that have weights: by name, or the
/// i-th with the file's i-th (Keras' legacy loader). `whole`: `names` are all of the model's
/// layers with weights and the file must have as many; otherwise (a base under a new head) the
/// file may have more, and its first are used.
fn pair_layers<'f, 'n>(
    path: &Path,
    in_file: &'f [FileLayer],
    names: &[&'n str],
    by: MatchBy,
    whole: bool,
) -> Result<Vec<(&'n str, &'f FileLayer)>> {
    let weighted: Vec<&FileLayer> = in_file.iter().filter(|l| !l.weights.is_empty()).collect();
    match by {
        MatchBy::Order => {
            let fits = match whole {
                true => weighted.len() == names.len(),
                false => weighted.len() >= names.len(),
            };
            if !fits {
                let ours = if whole {
                    "the model"
                } else {
                    "the model's base"
                };
                return fail(
                    path,
                    format!(
                        "{} layers with weights in the file, {ours} has {}",
                        weighted.len(),
                        names.len()
                    ),
                );
            }
            Ok(names.iter().copied().zip(weighted).collect())
        }
        MatchBy::Name => names
            .iter()
            .map(|&o| match weighted.iter().find(|l| l.name == o) {
                Some(l) => Ok((o, *l)),
                None => fail(path, format!("layer {o}: not in the file")),
            })
            .collect(),
    }
}

/// Loads weights from a Keras `.h5` (model or weights file) into `model`, checking every shape.
pub fn load_weights(model: &Model, path: &Path, by: MatchBy) -> Result<()> {
    if crate::keras3::is_zip(path) {
        return load_archive_weights(model, path, by, None);
    }
    let file = open(path)?;
    if crate::keras3::is_weights_tree(&file) {
        return load_tree_weights(model, &file, path, by, None);
    }
    let in_file = read_file_layers(&file, path)?;
    let ours = weighted_layers(model.spec());
    let pairs = pair_layers(path, &in_file, &ours, by, true)?;
    set_layer_weights(model, path, &pairs)
}

/// Loads the weights of the model's layers named in `layers` (a base's layers under a new
/// head), checking every shape: from the file's layers of the same names, or by position, the
/// i-th of `layers` from the file's i-th layer with weights (Keras' legacy loader; the file may
/// hold more layers, of which the first are used).
pub fn load_layer_weights(
    model: &Model,
    path: &Path,
    layers: &[String],
    by: MatchBy,
) -> Result<()> {
    if crate::keras3::is_zip(path) {
        return load_archive_weights(model, path, by, Some(layers));
    }
    let file = open(path)?;
    if crate::keras3::is_weights_tree(&file) {
        return load_tree_weights(model, &file, path, by, Some(layers));
    }
    let in_file = read_file_layers(&file, path)?;
    let names: Vec<&str> = layers.iter().map(String::as_str).collect();
    let pairs = pair_layers(path, &in_file, &names, by, false)?;
    set_layer_weights(model, path, &pairs)
}

/// Keras 3 weights (a `.weights.h5`) into `model`: by the model's structure (Keras' own
/// pairing: the k-th Conv2D is `layers/conv2d_k`) or by the layer names the file records.
fn load_tree_weights(
    model: &Model,
    file: &hdf5::File,
    label: &Path,
    by: MatchBy,
    only: Option<&[String]>,
) -> Result<()> {
    let paths = match by {
        MatchBy::Order => crate::keras3::layer_paths(model.spec()),
        MatchBy::Name => crate::keras3::paths_from_names(file, label)?,
    };
    crate::keras3::load_weights_tree(model, file, label, &paths, only)
}

/// A `.keras` file's weights into `model`: by structure, or by the names in its config.
fn load_archive_weights(
    model: &Model,
    path: &Path,
    by: MatchBy,
    only: Option<&[String]>,
) -> Result<()> {
    let archive = crate::keras3::open_archive(path)?;
    let file = archive.open_weights()?;
    let paths = match by {
        MatchBy::Order => crate::keras3::layer_paths(model.spec()),
        MatchBy::Name => crate::keras3::paths_from_config(&archive.config),
    };
    crate::keras3::load_weights_tree(model, &file, &archive.weights_label, &paths, only)
}

pub(crate) fn set_layer_weights(
    model: &Model,
    path: &Path,
    pairs: &[(&str, &FileLayer)],
) -> Result<()> {
    let model_weights: Vec<_> = model.weights().collect();
    for &(name, file_layer) in pairs {
        let targets: Vec<_> = model_weights.iter().filter(|w| w.layer == name).collect();
        if targets.len() != file_layer.weights.len() {
            return fail(
                path,
                format!(
                    "layer {}: {} weights in the file, the model's {name} has {}",
                    file_layer.name,
                    file_layer.weights.len(),
                    targets.len()
                ),
            );
        }
        for (w, (wname, t)) in targets.iter().zip(&file_layer.weights) {
            let layout = weight_layout(model.spec(), w);
            let expected = keras_dims(w.var.dims(), layout);
            if t.dims() != expected.as_slice() {
                return fail(
                    path,
                    format!(
                        "layer {}: {wname} has shape {:?}, the model's {name}/{} needs {:?}",
                        file_layer.name,
                        t.dims(),
                        w.name,
                        expected
                    ),
                );
            }
            let ours = from_keras(t, layout).at(path, || format!("layer {name}"))?;
            model
                .set_weight(name, w.name, &ours)
                .at(path, || format!("layer {name}"))?;
        }
    }
    Ok(())
}

/// The class names [`save_model_with`] stored, if the file has them.
pub fn read_class_names(path: &Path) -> Result<Option<Vec<String>>> {
    if crate::keras3::is_zip(path) {
        let archive = crate::keras3::open_archive(path)?;
        return crate::keras3::class_names_in(&archive, path);
    }
    let file = open(path)?;
    if file.attr(CLASS_NAMES_ATTRIBUTE).is_err() {
        return Ok(None);
    }
    let text = read_string(&file, CLASS_NAMES_ATTRIBUTE, path)?;
    let names: Vec<String> = serde_json::from_str(&text).at(path, || {
        format!("attribute {CLASS_NAMES_ATTRIBUTE} is not a JSON list of names")
    })?;
    Ok(Some(names))
}

/// The file's `model_config` (Keras' JSON for the architecture).
pub fn read_model_config(path: &Path) -> Result<serde_json::Value> {
    if crate::keras3::is_zip(path) {
        return Ok(crate::keras3::open_archive(path)?.config);
    }
    let file = open(path)?;
    let config_text = read_string(&file, "model_config", path)?;
    let config: serde_json::Value =
        serde_json::from_str(&config_text).at(path, || "model_config is not JSON".into())?;
    // `hard_sigmoid` is clip(0.2x + 0.5, 0, 1) in Keras 2 and relu6(x + 3) / 6 in Keras 3 (ours):
    // a Keras 2 file using it would compute something else here, so it is refused.
    let version = read_string(&file, "keras_version", path).unwrap_or_default();
    if version.starts_with("2.") && config_text.contains("\"hard_sigmoid\"") {
        return fail(
            path,
            format!(
                "written by Keras {version}, whose hard_sigmoid (clip(0.2x + 0.5, 0, 1)) is not \
                 supported: this workbench's is Keras 3's, relu6(x + 3) / 6"
            ),
        );
    }
    Ok(config)
}

/// The `keras_version` our `.h5` claims: Keras 2.9's layout, or Keras 3's when the model uses
/// an activation whose meaning changed in Keras 3 (`hard_sigmoid`, and `hard_silu` built on
/// it), so that no reader takes it for Keras 2's.
fn written_keras_version(spec: &Network) -> &'static str {
    let keras3_only = spec.layers().iter().any(|l| {
        let json = crate::layout::layer_config(l).to_string();
        json.contains("\"hard_sigmoid\"") || json.contains("\"hard_silu\"")
    });
    match keras3_only {
        true => crate::keras3::KERAS3_FORMAT_VERSION,
        false => KERAS_FORMAT_VERSION,
    }
}

/// [`load_model`] with a `Rescaling(scale)` layer named `input_scale` put before the file's
/// layers: for a model trained on pixels in `[0, 255]` (`scale = 255`) while this workbench's
/// images are in `[0, 1]`. The weights are loaded by layer name.
pub fn load_model_scaled(path: &Path, device: &Device, scale: f64) -> Result<Model> {
    if scale == 1.0 {
        return load_model(path, device);
    }
    let mut config = read_model_config(path)?;
    let Some(layers) = config["config"]["layers"].as_array_mut() else {
        return fail(path, "model_config has no layers");
    };
    crate::layout::insert_input_scale(layers, scale);
    let spec = network_from_config(&config).at(path, || "model_config".into())?;
    let mut model = Model::new(spec, device, 0).at(path, || "building the model".into())?;
    set_policy(&mut model, &config, path)?;
    load_weights(&model, path, MatchBy::Name)?;
    Ok(model)
}

/// Rebuilds the network from `model_config` and loads its weights: Keras' `load_model`.
pub fn load_model(path: &Path, device: &Device) -> Result<Model> {
    if crate::keras3::is_zip(path) {
        let archive = crate::keras3::open_archive(path)?;
        let spec = network_from_config(&archive.config).at(path, || "config.json".into())?;
        let mut model = Model::new(spec, device, 0).at(path, || "building the model".into())?;
        set_policy(&mut model, &archive.config, path)?;
        let file = archive.open_weights()?;
        let paths = crate::keras3::paths_from_config(&archive.config);
        crate::keras3::load_weights_tree(&model, &file, &archive.weights_label, &paths, None)?;
        return Ok(model);
    }
    let config = read_model_config(path)?;
    let spec = network_from_config(&config).at(path, || "model_config".into())?;
    let mut model = Model::new(spec, device, 0).at(path, || "building the model".into())?;
    set_policy(&mut model, &config, path)?;
    load_weights(&model, path, MatchBy::Order)?;
    Ok(model)
}

/// The model computes as the file's dtype policy says (see [`crate::keras3::precision_of`]).
fn set_policy(model: &mut Model, config: &serde_json::Value, path: &Path) -> Result<()> {
    let precision = crate::keras3::precision_of(config);
    model
        .set_precision(precision)
        .at(path, || format!("dtype policy {}", precision.keras_name()))
}

/// The optimizer state saved by [`save_model`] (Keras 2 naming), in our layouts; `None` when
/// the file has none.
pub fn load_optimizer(model: &Model, path: &Path) -> Result<Option<AdamState>> {
    if crate::keras3::is_zip(path) {
        let archive = crate::keras3::open_archive(path)?;
        let file = archive.open_weights()?;
        let optimizer = &archive.config["compile_config"]["optimizer"];
        return crate::keras3::read_optimizer_tree(model, &file, &archive.weights_label, optimizer);
    }
    let file = open(path)?;
    if crate::keras3::is_weights_tree(&file) {
        return crate::keras3::read_optimizer_tree(model, &file, path, &serde_json::Value::Null);
    }
    if file.group("optimizer_weights/adam").is_ok() {
        return crate::keras3::read_legacy_optimizer(model, &file, path);
    }
    let Ok(adam) = file.group("optimizer_weights/Adam") else {
        return Ok(None);
    };
    let iterations: i64 = adam
        .dataset("iter:0")
        .and_then(|d| d.read_scalar())
        .at(path, || "Adam/iter:0".into())?;
    let spec = model.spec();
    let mut slots = BTreeMap::new();
    for w in model.trainable_weights() {
        let layout = weight_layout(spec, w);
        for slot in ["m", "v"] {
            let name = format!("{}/{}/{slot}:0", w.layer, w.name);
            let ds = adam
                .dataset(&name)
                .at(path, || format!("optimizer_weights/Adam/{name} missing"))?;
            let data: Vec<f32> = ds.read_raw().at(path, || name.clone())?;
            let t = Tensor::from_vec(data, ds.shape(), &Device::Cpu).at(path, || name.clone())?;
            if t.dims() != keras_dims(w.var.dims(), layout).as_slice() {
                return fail(
                    path,
                    format!(
                        "optimizer_weights/Adam/{name}: shape {:?} does not match the weight",
                        t.dims()
                    ),
                );
            }
            slots.insert(
                format!("{}/{slot}", w.path()),
                from_keras(&t, layout)
                    .and_then(|t| t.to_device(model.device()))
                    .at(path, || name.clone())?,
            );
        }
    }
    let training: serde_json::Value = read_string(&file, "training_config", path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let cfg = &training["optimizer_config"]["config"];
    let get = |k: &str, d: f64| cfg.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    Ok(Some(AdamState {
        learning_rate: get("learning_rate", 1e-3),
        beta_1: get("beta_1", 0.9),
        beta_2: get("beta_2", 0.999),
        epsilon: get("epsilon", 1e-7),
        iterations: iterations as u64,
        slots,
    }))
}
