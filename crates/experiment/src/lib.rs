//! Experiments as files.
//!
//! # Brief overview
//! * [`Experiment`] is the file's format (TOML; see `experiments/baseline.toml`): model (a zoo
//!   name, or layers written out as Keras configs), data, optimizer, schedule, fit, callbacks
//!   and outputs. Unknown keys, wrong types and impossible values are errors naming the file
//!   and the key, found before any data is read ([`load`] and [`Experiment::check`]).
//! * [`load`] also takes `key.path=value` overrides (`fit.epochs=2`) and a run's
//!   `config.json`, whose `experiment` key is the fully resolved experiment: that replays it.
//! * The `build_*` methods make what `simplecnn_train::fit` takes: the model's architecture
//!   (through `store`'s Keras mapping, so a layer's keys are exactly Keras'), the optimizer,
//!   the schedule and the callbacks that print nothing.
//!
//! This crate reads no data and writes no files; the CLI runs the experiment.

mod graph;
mod spec;
pub mod sweep;
pub use sweep::{Sweep, SweepRun};

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use simplecnn_model::{zoo, FeatureShape, Model, Network};
use simplecnn_train::{
    loss::Loss, trainable_params, Adam, AdamConfig, Callback, Constant, CsvLogger, EarlyStopping,
    FitConfig, ModelCheckpoint, Optimizer, ParamGroup, PiecewiseLinear, Schedule, Sgd, SgdConfig,
    TerminateOnNaN,
};

pub use spec::{
    BaseSpec, BlockSpec, CallbackSpec, DataSpec, DeviceName, Experiment, FitSpec, InitSpec,
    KernelsName, LossSpec, ModelSpec, OptimizerSpec, OutputSpec, ParamGroupSpec, PrecisionName,
    ScheduleSpec, TestSpec, UpdateFreq,
};

/// What is wrong with an experiment: the file, the key (`fit.epochs`) when one is to blame,
/// and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{message}", file.display(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ExperimentError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, ExperimentError>;

/// An experiment read from a file, with what the file said about an earlier run.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub experiment: Experiment,
    pub file: PathBuf,
    /// For a run's `config.json`: the commit that run was made at.
    pub recorded_commit: Option<String>,
}

/// Reads an experiment from a `.toml` file or a run's `config.json`, applies `overrides`
/// (`fit.epochs=2`, values in TOML syntax, bare words as strings) and checks it.
pub fn load(file: &Path, overrides: &[String]) -> Result<Loaded> {
    load_text(&read_file(file)?, file, overrides)
}

/// A file's text (a regular file only), or an error naming it.
fn read_file(file: &Path) -> Result<String> {
    simplecnn_files::read_to_string(file).map_err(|e| ExperimentError {
        file: file.to_path_buf(),
        key: None,
        message: e.to_string(),
    })
}

/// The experiments that come with the program (`experiments/*.toml` when it was built), for
/// runs outside a checkout.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "baseline",
        include_str!("../../../experiments/baseline.toml"),
    ),
    (
        "simple_cnn_3conv",
        include_str!("../../../experiments/simple_cnn_3conv.toml"),
    ),
    (
        "resnet20",
        include_str!("../../../experiments/resnet20.toml"),
    ),
    ("plain20", include_str!("../../../experiments/plain20.toml")),
    (
        "airbench94",
        include_str!("../../../experiments/airbench94.toml"),
    ),
];

/// A run's own `config.json`, read to resume or inspect that run in its folder: [`load`], except that the
/// recorded `outputs.dir` is dropped (the run continues in the folder the user named, and
/// `latest` goes beside it), so a run made with `--out` anywhere resumes.
pub fn load_run_config(file: &Path) -> Result<Loaded> {
    load_value(&read_file(file)?, file, &[], Resolve::ToResume)
}

/// How a file's `outputs.dir` is taken.
#[derive(Clone, Copy, PartialEq)]
enum Resolve {
    /// As a file written by someone else: a relative folder that does not climb.
    AsWritten,
    /// Dropped: a resumed run writes where its folder is.
    ToResume,
}

/// [`load`] for text that `file` names (its extension says TOML or JSON).
pub fn load_text(text: &str, file: &Path, overrides: &[String]) -> Result<Loaded> {
    load_value(text, file, overrides, Resolve::AsWritten)
}

fn load_value(text: &str, file: &Path, overrides: &[String], resolve: Resolve) -> Result<Loaded> {
    let err = |key: Option<String>, message: String| ExperimentError {
        file: file.to_path_buf(),
        key,
        message,
    };
    let is_json = file.extension().is_some_and(|e| e == "json");
    let (mut value, recorded_commit) = if is_json {
        let v: Value = serde_json::from_str(text).map_err(|e| err(None, e.to_string()))?;
        let commit = v["provenance"]["git_commit"].as_str().map(str::to_string);
        let exp = v.get("experiment").cloned().ok_or_else(|| {
            err(
                None,
                "no `experiment` key: not a run's config.json from this version".into(),
            )
        })?;
        (exp, commit)
    } else {
        let t: toml::Value = toml::from_str(text).map_err(|e| err(None, e.to_string()))?;
        (
            serde_json::to_value(t).map_err(|e| err(None, e.to_string()))?,
            None,
        )
    };
    match resolve {
        // The command line may choose any folder; a file's choice counts only when it stands.
        Resolve::AsWritten if !overrides.iter().any(|o| sets_key(o, "outputs.dir")) => {
            if let Some(dir) = value.pointer("/outputs/dir").and_then(Value::as_str) {
                check_dir_from_file(dir).map_err(|m| err(Some("outputs.dir".into()), m))?;
            }
        }
        Resolve::AsWritten => {}
        Resolve::ToResume => {
            if let Some(outputs) = value.get_mut("outputs").and_then(Value::as_object_mut) {
                outputs.remove("dir");
            }
        }
    }
    for o in overrides {
        apply_override(&mut value, o).map_err(|(k, m)| err(k, m))?;
    }
    let experiment: Experiment = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        err((path != ".").then_some(path), e.into_inner().to_string())
    })?;
    experiment.check().map_err(|(k, m)| err(Some(k), m))?;
    Ok(Loaded {
        experiment,
        file: file.to_path_buf(),
        recorded_commit,
    })
}

/// Whether the override `text` (`key=value`) sets `key` or a table holding it.
fn sets_key(text: &str, key: &str) -> bool {
    text.split_once('=').is_some_and(|(k, _)| {
        let k = k.trim();
        k == key
            || key
                .strip_prefix(k)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Sets `a.b.c` (array items by index: `callbacks.0.patience`) to the value after `=`.
fn apply_override(
    root: &mut Value,
    text: &str,
) -> std::result::Result<(), (Option<String>, String)> {
    let (key, raw) = text.split_once('=').ok_or_else(|| {
        (
            None,
            format!("override {text:?} is not key=value (e.g. fit.epochs=2)"),
        )
    })?;
    let key = key.trim();
    let value = parse_value(raw.trim());
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err((Some(key.into()), "empty part in the key".into()));
    }
    let mut at = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        at = match at {
            Value::Object(map) => {
                if last {
                    map.insert(part.to_string(), value);
                    return Ok(());
                }
                map.entry(part.to_string())
                    .or_insert_with(|| Value::Object(Map::new()))
            }
            Value::Array(items) => {
                let index: usize = part
                    .parse()
                    .map_err(|_| (Some(key.into()), format!("{part:?} is not an array index")))?;
                let len = items.len();
                let item = items.get_mut(index).ok_or_else(|| {
                    (
                        Some(key.into()),
                        format!("index {index} is past the {len} items"),
                    )
                })?;
                if last {
                    *item = value;
                    return Ok(());
                }
                item
            }
            _ => {
                let parent = parts[..i].join(".");
                return Err((Some(key.into()), format!("{parent} is not a table")));
            }
        };
    }
    Ok(())
}

/// A value in TOML syntax (`2`, `0.5`, `true`, `"x"`, `[1, 2]`); anything else is a string.
fn parse_value(raw: &str) -> Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

type Check = std::result::Result<(), (String, String)>;

/// The TensorBoard callback's folder in a run folder, as Keras' `log_dir` default.
pub const LOG_DIR: &str = "logs";

/// Where a file (an experiment shared with the user, a run's config.json) may send a run's
/// results: a relative folder that does not climb (`..`), so under the folder the user runs in.
/// Anywhere else is the user's to choose, with `--out` or `--set outputs.dir=…`.
fn check_dir_from_file(dir: &str) -> std::result::Result<(), String> {
    use std::path::Component;
    let path = Path::new(dir);
    let climbs = path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    match climbs {
        false => Ok(()),
        true => Err(format!(
            "{dir:?} is outside the folder this runs in (absolute, or climbing with ..); a \
             file may not send results there: give it on the command line (--out {dir})"
        )),
    }
}

/// A name without folders: what the run folder can hold.
fn is_file_name(name: &str) -> bool {
    Path::new(name).file_name().is_some_and(|n| n == name)
}

fn ensure(ok: bool, key: &str, message: impl FnOnce() -> String) -> Check {
    match ok {
        true => Ok(()),
        false => Err((key.to_string(), message())),
    }
}

impl Experiment {
    /// Values no run could use, as `(key, why)`: checked before any data is read.
    pub fn check(&self) -> Check {
        ensure(!self.name.trim().is_empty(), "name", || "is empty".into())?;
        ensure(is_file_name(&self.name), "name", || {
            format!(
                "{:?} must be a plain name without folders or '..' (results go in results/<name>/)",
                self.name
            )
        })?;
        let mixed = self.fit.precision == PrecisionName::MixedBfloat16;
        let fast_cpu = self.fit.kernels == KernelsName::Fast && self.fit.device == DeviceName::Cpu;
        ensure(!mixed || fast_cpu, "fit.precision", || {
            "mixed_bfloat16 is the CPU fast path's (fit.device = \"cpu\", fit.kernels = \"fast\")"
                .into()
        })?;
        let epochs = self.fit.epochs;
        ensure(epochs.is_finite() && epochs > 0.0, "fit.epochs", || {
            format!("{epochs} must be a positive number")
        })?;
        ensure(self.fit.batch_size >= 1, "fit.batch_size", || {
            "must be at least 1".into()
        })?;
        let split = self.data.validation_split;
        ensure((0.0..1.0).contains(&split), "data.validation_split", || {
            format!("{split} is not in [0, 1)")
        })?;
        ensure(self.data.subset != Some(0), "data.subset", || {
            "must be at least 1".into()
        })?;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let lr = self.optimizer.learning_rate();
        ensure(positive(lr), "optimizer.learning_rate", || {
            format!("{lr} is not a positive number")
        })?;
        match &self.optimizer {
            OptimizerSpec::Adam {
                beta_1,
                beta_2,
                epsilon,
                ..
            } => {
                for (key, b) in [("optimizer.beta_1", beta_1), ("optimizer.beta_2", beta_2)] {
                    ensure((0.0..1.0).contains(b), key, || {
                        format!("{b} is not in [0, 1)")
                    })?;
                }
                ensure(positive(*epsilon), "optimizer.epsilon", || {
                    format!("{epsilon} is not a positive number")
                })?;
            }
            OptimizerSpec::Sgd {
                momentum,
                nesterov,
                weight_decay,
                groups,
                ..
            } => {
                ensure((0.0..1.0).contains(momentum), "optimizer.momentum", || {
                    format!("{momentum} is not in [0, 1)")
                })?;
                ensure(!*nesterov || *momentum > 0.0, "optimizer.nesterov", || {
                    "Nesterov needs a momentum".into()
                })?;
                let decays = std::iter::once(("optimizer.weight_decay".to_string(), *weight_decay))
                    .chain(groups.iter().enumerate().map(|(i, g)| {
                        (format!("optimizer.groups.{i}.weight_decay"), g.weight_decay)
                    }));
                for (key, d) in decays {
                    ensure(d.is_finite() && d >= 0.0, &key, || {
                        format!("{d} is negative")
                    })?;
                }
                for (i, g) in groups.iter().enumerate() {
                    ensure(
                        positive(g.lr_scale),
                        &format!("optimizer.groups.{i}.lr_scale"),
                        || format!("{} is not a positive number", g.lr_scale),
                    )?;
                    for r in &g.roles {
                        let known = simplecnn_model::WeightRole::from_keras_name(r).is_some();
                        ensure(known, &format!("optimizer.groups.{i}.roles"), || {
                            format!("{r:?} is not a weight role (kernel, bias, gamma, beta)")
                        })?;
                    }
                }
            }
        }
        if let ScheduleSpec::PiecewiseLinear { points } = &self.schedule {
            let points = points.iter().map(|p| (p[0], p[1])).collect();
            PiecewiseLinear::new(lr, 1, points)
                .map_err(|why| ("schedule.points".to_string(), why))?;
        }
        self.augment
            .validate()
            .map_err(|why| ("augment.translate".to_string(), why))?;
        let loss = self.loss_config();
        loss.validate()
            .map_err(|e| ("loss.label_smoothing".to_string(), e.to_string()))?;
        for (i, c) in self.callbacks.iter().enumerate() {
            if let CallbackSpec::Lookahead {
                every,
                decay,
                power,
            } = c
            {
                let key = format!("callbacks.{i}");
                ensure(*every >= 1, &key, || "every must be at least 1".into())?;
                ensure((0.0..=1.0).contains(decay), &key, || {
                    format!("decay {decay} is not in [0, 1]")
                })?;
                ensure(power.is_finite() && *power >= 0.0, &key, || {
                    format!("power {power} is negative")
                })?;
            }
            if let CallbackSpec::Tensorboard { update_freq, .. } = c {
                update_freq
                    .steps()
                    .map_err(|why| (format!("callbacks.{i}.update_freq"), why))?;
            }
            if let CallbackSpec::CsvLogger { filename } = c {
                ensure(
                    is_file_name(filename),
                    &format!("callbacks.{i}.filename"),
                    || {
                        format!(
                            "{filename:?} must be a plain file name (it goes in the run folder)"
                        )
                    },
                )?;
            }
        }
        for (i, name) in self.outputs.save.iter().enumerate() {
            let key = format!("outputs.save.{i}");
            ensure(is_file_name(name), &key, || {
                format!("{name:?} must be a plain file name (it goes in the run folder)")
            })?;
            ensure(
                name.ends_with(".h5") || name.ends_with(".keras"),
                &key,
                || {
                    format!("{name:?}: model files are .h5 (Keras' HDF5 layout) or .keras (Keras 3's zip)")
                },
            )?;
        }
        ensure(self.data.per_class != Some(0), "data.per_class", || {
            "must be at least 1".into()
        })?;
        if let Some(base) = &self.model.base {
            ensure(
                base.file.is_some() != base.zoo.is_some(),
                "model.base",
                || "give either `file` (a model file) or `zoo` (a network), not both".into(),
            )?;
            ensure(
                base.weights.is_none() || base.zoo.is_some(),
                "model.base.weights",
                || "weights go with a `zoo` base; a model file has its own".into(),
            )?;
            if let Some(zoo) = &base.zoo {
                ensure(zoo == "vgg16", "model.base.zoo", || {
                    format!("{zoo:?} has no base in the zoo (vgg16)")
                })?;
            }
        }
        // A model on a base is known only once the CLI has read the base's file.
        match self.model.base {
            None => self.check_spec(&self.build_spec()?),
            Some(_) => Ok(()),
        }
    }

    /// The checks that need the built architecture: frozen weights and layers, and the
    /// initialisations, name what the model has.
    pub fn check_spec(&self, spec: &Network) -> Check {
        // A classifier ends in one score per class (an image out, e.g. a Dense on every pixel
        // with no Flatten or pooling before it, cannot be trained on labels).
        ensure(
            matches!(spec.output_shape(), FeatureShape::Flat(_)),
            "model.layers",
            || {
                format!(
                    "the model's output {} is not a vector of class scores (add a Flatten or a \
                     global pooling before the last Dense)",
                    spec.output_shape()
                )
            },
        )?;
        let weights: Vec<String> = spec
            .layers()
            .iter()
            .flat_map(|l| {
                l.kind
                    .weights(&l.input)
                    .into_iter()
                    .map(move |w| format!("{}/{}", l.name, w.role.keras_name()))
            })
            .collect();
        for (i, f) in self.fit.freeze.iter().enumerate() {
            for w in &f.weights {
                ensure(
                    weights.contains(w),
                    &format!("fit.freeze.{i}.weights"),
                    || format!("the model has no weight {w:?} (e.g. {:?})", weights.first()),
                )?;
            }
            ensure(
                f.from_epoch >= 1,
                &format!("fit.freeze.{i}.from_epoch"),
                || "epochs count from 1".into(),
            )?;
        }
        for (i, step) in self.model.init.iter().enumerate() {
            let key = format!("model.init.{i}");
            let names: Vec<&String> = match step {
                InitSpec::Dirac { layers } => layers.iter().collect(),
                InitSpec::Whitening { layer, images, .. } => {
                    ensure(*images >= 1, &format!("{key}.images"), || {
                        "must be at least 1".into()
                    })?;
                    vec![layer]
                }
            };
            for name in names {
                let conv = spec
                    .layers()
                    .iter()
                    .find(|l| &l.name == name)
                    .is_some_and(|l| matches!(l.kind, simplecnn_model::LayerKind::Conv2d(_)));
                ensure(conv, &key, || {
                    format!("{name:?} is not a Conv2D layer of the model")
                })?;
            }
        }
        Ok(())
    }

    /// The architecture, checked layer by layer (errors as `(key, why)`). A model on a
    /// `model.base` needs the base file's `model_config`: [`Experiment::build_spec_on`].
    pub fn build_spec(&self) -> std::result::Result<Network, (String, String)> {
        match &self.model.base {
            None => self.build_spec_on(None),
            Some(b) => Err((
                "model.base".into(),
                format!(
                    "the model is built on {}: read its model_config first",
                    b.file
                        .as_ref()
                        .map_or_else(|| format!("{:?}", b.zoo), |f| f.display().to_string())
                ),
            )),
        }
    }

    /// [`Experiment::build_spec`] with the base's Keras `model_config` (its `layers` up to
    /// `model.base.until`, then `model.layers` on top), and `model.frozen` applied.
    pub fn build_spec_on(
        &self,
        base_config: Option<&Value>,
    ) -> std::result::Result<Network, (String, String)> {
        let mut spec = match (&self.model.base, base_config) {
            (Some(base), Some(config)) => {
                ensure(self.model.zoo.is_none(), "model.zoo", || {
                    "give either `zoo` or `base`, not both".into()
                })?;
                self.layers_spec(Some(base_layers(base, config)?))?
            }
            (None, None) => self.plain_spec()?,
            _ => {
                return Err((
                    "model.base".into(),
                    "a base's model_config goes with a model.base, and only with one".into(),
                ))
            }
        };
        for (i, name) in self.model.frozen.iter().enumerate() {
            if spec.set_trainable(name, false).is_err() {
                let names: Vec<&str> = spec.layers().iter().map(|l| l.name.as_str()).collect();
                return Err((
                    format!("model.frozen.{i}"),
                    format!(
                        "the model has no layer {name:?} (its layers: {})",
                        names.join(", ")
                    ),
                ));
            }
        }
        Ok(spec)
    }

    fn plain_spec(&self) -> std::result::Result<Network, (String, String)> {
        let m = &self.model;
        let [h, w, c] = m.input;
        let input = FeatureShape::image(c, h, w);
        match (&m.zoo, m.layers.is_empty()) {
            (Some(_), false) => Err((
                "model".into(),
                "give either `zoo` or `layers`, not both".into(),
            )),
            (None, true) => Err((
                "model".into(),
                "no model: give `zoo = \"simple_cnn\"` or a list of `layers`".into(),
            )),
            (Some(name), true) => match name.as_str() {
                "simple_cnn" => zoo::simple_cnn_for(input, m.classes)
                    .map_err(|e| ("model".to_string(), e.to_string())),
                "vgg16" => {
                    let defaults = m.input == [224, 224, 3] && m.classes == 1000;
                    ensure(defaults, "model", || {
                        "vgg16 takes input [224, 224, 3] and 1000 classes".into()
                    })?;
                    Ok(zoo::vgg16())
                }
                other => Err((
                    "model.zoo".into(),
                    format!("{other:?} is not in the zoo (simple_cnn, vgg16)"),
                )),
            },
            (None, false) => self.layers_spec(None),
        }
    }

    /// Layers written out: each becomes Keras' `{class_name, config}` and goes through
    /// `store`'s mapping; keys that mapping does not write for the layer are unknown. With a
    /// base, its layers (Keras configs, an input layer first) come before them. Layers that
    /// name their inputs, or use blocks, or a functional base make a functional model.
    fn layers_spec(
        &self,
        base: Option<Vec<Value>>,
    ) -> std::result::Result<Network, (String, String)> {
        let m = &self.model;
        let base_is_graph = base
            .as_ref()
            .is_some_and(|b| b.iter().any(|l| l.get("inbound_nodes").is_some()));
        let mut layers = base.unwrap_or_else(|| {
            vec![json!({
                "class_name": "InputLayer",
                "config": {"batch_input_shape": [null, m.input[0], m.input[1], m.input[2]], "name": "input"}
            })]
        });
        let taken: Vec<String> = layers
            .iter()
            .filter_map(|l| l["config"]["name"].as_str().map(str::to_string))
            .collect();
        let expanded = graph::expand(&m.layers, &m.blocks, &taken)?;
        for e in &expanded {
            match e.entry.get("class_name") {
                Some(Value::String(c)) if c == "InputLayer" => {
                    return Err((e.key.clone(), "give the input as `model.input`".into()))
                }
                Some(Value::String(_)) => {}
                _ => {
                    return Err((
                        e.key.clone(),
                        "needs a `class_name` (Conv2D, Dense, …)".into(),
                    ))
                }
            }
        }
        let functional = base_is_graph || graph::is_graph(&expanded);
        let head_starts = layers.len() - 1;
        let name = m.name.clone().unwrap_or_else(|| match functional {
            true => "functional_1".into(),
            false => "sequential_1".into(),
        });
        let config = match functional {
            false => {
                for e in &expanded {
                    let mut config = e.entry.clone();
                    if e.generated_name {
                        config.remove("name");
                    }
                    let class = config.remove("class_name").unwrap_or(Value::Null);
                    layers.push(json!({"class_name": class, "config": config}));
                }
                json!({"class_name": "Sequential", "config": {"name": name, "layers": layers}})
            }
            true => {
                let layers = graph_layers(layers)?;
                let last_base = layers
                    .last()
                    .and_then(|l| l["config"]["name"].as_str())
                    .unwrap_or("input")
                    .to_string();
                let mut all = layers;
                all.extend(graph::with_inbound_nodes(&expanded, &last_base));
                let output = all
                    .last()
                    .and_then(|l| l["config"]["name"].as_str())
                    .unwrap_or("")
                    .to_string();
                let input = all[0]["config"]["name"].clone();
                json!({"class_name": "Functional", "config": {"name": name, "layers": all,
                    "input_layers": [[input, 0, 0]], "output_layers": [[output, 0, 0]]}})
            }
        };
        let spec = simplecnn_store::layout::network_from_config(&config).map_err(|e| {
            // The config's layers: the input (or the base's layers), then model.layers.
            let head = e.index.and_then(|pos| pos.checked_sub(head_starts + 1));
            match head.and_then(|i| expanded.get(i)) {
                Some(x) => {
                    // The key names the layer; the message keeps its name when it has one.
                    let message = match x.generated_name {
                        false => e.to_string(),
                        true => e.message.clone(),
                    };
                    (x.key.clone(), message)
                }
                None if e.index.is_some() => ("model.base".to_string(), e.to_string()),
                None => ("model.layers".to_string(), e.to_string()),
            }
        })?;
        for x in &expanded {
            let Some(name) = x.entry.get("name").and_then(Value::as_str) else {
                continue;
            };
            let Some(built) = spec.layers().iter().find(|l| l.name == name) else {
                // A generated name in a stack: the layer is named by store, in order.
                continue;
            };
            let known = simplecnn_store::layout::layer_config(built);
            let known = known["config"].as_object().cloned().unwrap_or_default();
            for k in x.entry.keys() {
                if k != "class_name" && !known.contains_key(k) {
                    let mut keys: Vec<&String> = known.keys().collect();
                    keys.sort();
                    return Err((
                        format!("{}.{k}", x.key),
                        format!(
                            "unknown key for {} (Keras' keys: {})",
                            built.kind.class_name(),
                            keys.iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(spec)
    }

    /// The weights' seed: `model.init_seed`, else `fit.seed`.
    pub fn init_seed(&self) -> u64 {
        self.model.init_seed.unwrap_or(self.fit.seed)
    }

    pub fn fit_config(&self) -> FitConfig {
        FitConfig {
            epochs: self.fit.epochs.ceil() as usize,
            batch_size: self.fit.batch_size,
            validation_split: self.data.validation_split,
            shuffle: self.fit.shuffle,
            seed: self.fit.seed,
            drop_remainder: self.fit.drop_remainder,
            loss: self.loss_config(),
            augment: self.augment,
            max_steps: None,
            freeze: self
                .fit
                .freeze
                .iter()
                .map(|f| simplecnn_train::Freeze {
                    weights: f.weights.clone(),
                    from_epoch: f.from_epoch,
                })
                .collect(),
        }
    }

    /// The optimizer steps of the whole run when `fit.epochs` is fractional, for
    /// `steps_per_epoch`; `None` when whole (every epoch runs all its steps).
    pub fn max_steps(&self, steps_per_epoch: usize) -> Option<u64> {
        let e = self.fit.epochs;
        (e.fract() != 0.0).then(|| (steps_per_epoch as f64 * e).ceil() as u64)
    }

    pub fn loss_config(&self) -> Loss {
        Loss {
            label_smoothing: self.loss.label_smoothing,
            reduction: self.loss.reduction,
        }
    }

    /// The optimizer over `model`'s trainable weights.
    pub fn build_optimizer(&self, model: &Model) -> simplecnn_train::Result<Box<dyn Optimizer>> {
        Ok(match self.optimizer {
            OptimizerSpec::Adam {
                learning_rate,
                beta_1,
                beta_2,
                epsilon,
            } => {
                let config = AdamConfig {
                    learning_rate,
                    beta_1,
                    beta_2,
                    epsilon,
                };
                Box::new(Adam::new(trainable_params(model), config)?)
            }
            OptimizerSpec::Sgd {
                momentum,
                nesterov,
                weight_decay,
                ref groups,
                ..
            } => {
                let groups = groups
                    .iter()
                    .map(|g| ParamGroup {
                        roles: g.roles.clone(),
                        lr_scale: g.lr_scale,
                        weight_decay: g.weight_decay,
                    })
                    .collect();
                let config = SgdConfig {
                    momentum,
                    nesterov,
                    weight_decay,
                    groups,
                };
                Box::new(Sgd::new(trainable_params(model), config)?)
            }
        })
    }

    /// The schedule for a run of `total_steps` optimizer steps.
    pub fn build_schedule(&self, total_steps: u64) -> Box<dyn Schedule> {
        let learning_rate = self.optimizer.learning_rate();
        match &self.schedule {
            ScheduleSpec::Constant {} => Box::new(Constant { learning_rate }),
            ScheduleSpec::PiecewiseLinear { points } => {
                let points = points.iter().map(|p| (p[0], p[1])).collect();
                Box::new(
                    PiecewiseLinear::new(learning_rate, total_steps, points)
                        .expect("checked by Experiment::check"),
                )
            }
        }
    }

    /// The callbacks that print nothing, in the file's order, for a run in `run_dir`; the
    /// printing ones (`keras_log`, `progress_bar`) are the program's to make (`None` here).
    pub fn build_callback(&self, spec: &CallbackSpec, run_dir: &Path) -> Option<Box<dyn Callback>> {
        Some(match *spec {
            CallbackSpec::KerasLog {} | CallbackSpec::ProgressBar {} => return None,
            CallbackSpec::TerminateOnNan {} => Box::new(TerminateOnNaN),
            CallbackSpec::CsvLogger { ref filename } => Box::new(CsvLogger {
                path: run_dir.join(filename),
            }),
            CallbackSpec::ModelCheckpoint { monitor, mode } => Box::new(ModelCheckpoint {
                dir: run_dir.join("checkpoints"),
                monitor,
                mode,
            }),
            CallbackSpec::EarlyStopping {
                monitor,
                mode,
                patience,
                min_delta,
            } => Box::new(EarlyStopping::new(patience).watching(monitor, mode, min_delta)),
            CallbackSpec::Lookahead {
                every,
                decay,
                power,
            } => Box::new(simplecnn_train::Lookahead::new(every, decay, power)),
            CallbackSpec::Tensorboard {
                ref update_freq,
                histogram_freq,
            } => Box::new(simplecnn_train::TensorBoard::new(
                run_dir.join(LOG_DIR),
                update_freq.steps().expect("checked when the file was read"),
                histogram_freq,
            )),
        })
    }

    /// Where runs go: `outputs.dir`, else `results/<name>`.
    pub fn output_dir(&self) -> PathBuf {
        self.outputs
            .dir
            .clone()
            .unwrap_or_else(|| Path::new("results").join(&self.name))
    }
}

/// The base's layers as Keras configs, an input layer first, up to and including
/// `base.until`, with `trainable` set where `base.trainable` says.
fn base_layers(
    base: &spec::BaseSpec,
    config: &Value,
) -> std::result::Result<Vec<Value>, (String, String)> {
    let file = match (&base.file, &base.zoo) {
        (Some(f), _) => f.display().to_string(),
        (None, zoo) => format!("zoo {}", zoo.as_deref().unwrap_or("?")),
    };
    let bad = |why: String| ("model.base".to_string(), format!("{file}: {why}"));
    if matches!(config["class_name"].as_str(), Some("Functional" | "Model")) {
        return graph_base_layers(base, config, &file);
    }
    let inner = &config["config"];
    let mut layers: Vec<Value> = inner
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| bad("model_config has no layers".into()))?;
    let is_input = |l: &Value| l["class_name"] == "InputLayer";
    // Keras 2.9 puts the input shape on the first layer (or the Network), Keras 3 in an
    // InputLayer: make it an InputLayer so that every other layer is the base's own.
    if !layers.first().is_some_and(is_input) {
        let shape = layers
            .first()
            .and_then(|l| l["config"].get("batch_input_shape").cloned())
            .or_else(|| inner.get("build_input_shape").cloned())
            .ok_or_else(|| bad("model_config has no input shape".into()))?;
        if let Some(c) = layers.first_mut().and_then(|l| l["config"].as_object_mut()) {
            c.remove("batch_input_shape");
        }
        layers.insert(
            0,
            json!({"class_name": "InputLayer", "config": {"batch_input_shape": shape, "name": "input"}}),
        );
    }
    let name_of = |l: &Value| l["config"]["name"].as_str().map(str::to_string);
    if let Some(until) = &base.until {
        let Some(at) = layers
            .iter()
            .position(|l| !is_input(l) && name_of(l).as_deref() == Some(until))
        else {
            let names: Vec<String> = layers
                .iter()
                .filter(|l| !is_input(l))
                .filter_map(name_of)
                .collect();
            return Err((
                "model.base.until".into(),
                format!(
                    "{file} has no layer {until:?} (its layers: {})",
                    names.join(", ")
                ),
            ));
        };
        layers.truncate(at + 1);
    }
    if let Some(trainable) = base.trainable {
        for l in layers.iter_mut().filter(|l| !is_input(l)) {
            l["config"]["trainable"] = Value::Bool(trainable);
        }
    }
    if let Some(scale) = base.input_scale {
        simplecnn_store::layout::insert_input_scale(&mut layers, scale);
    }
    Ok(layers)
}

/// A functional base: its layers up to `until` and those it depends on (Keras'
/// `Model(base.input, base.get_layer(until).output)`), with `trainable` applied, as Keras 2
/// configs with their `inbound_nodes`.
fn graph_base_layers(
    base: &spec::BaseSpec,
    config: &Value,
    file: &str,
) -> std::result::Result<Vec<Value>, (String, String)> {
    let bad = |key: &str, why: String| (key.to_string(), format!("{file}: {why}"));
    let mut net = simplecnn_store::layout::network_from_config(config)
        .map_err(|e| bad("model.base", e.to_string()))?;
    if let Some(until) = &base.until {
        net = net.truncated(until).map_err(|_| {
            let names: Vec<&str> = net.layers().iter().map(|l| l.name.as_str()).collect();
            bad(
                "model.base.until",
                format!("has no layer {until:?} (its layers: {})", names.join(", ")),
            )
        })?;
    }
    if let Some(trainable) = base.trainable {
        let names: Vec<String> = net.layers().iter().map(|l| l.name.clone()).collect();
        for n in names {
            net.set_trainable(&n, trainable)
                .map_err(|e| bad("model.base", e.to_string()))?;
        }
    }
    if base.input_scale.is_some() {
        return Err(bad(
            "model.base.input_scale",
            "input_scale on a functional base is not supported".into(),
        ));
    }
    let config = simplecnn_store::layout::model_config(&net);
    let layers = config["config"]["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(layers)
}

/// A base's layers (an input layer first) as a graph's: a stack's get `inbound_nodes` from the
/// layer before each, a graph's keep theirs.
fn graph_layers(mut layers: Vec<Value>) -> std::result::Result<Vec<Value>, (String, String)> {
    let mut previous: Option<String> = None;
    for l in layers.iter_mut() {
        let name = l["config"]["name"].as_str().map(str::to_string);
        if l.get("inbound_nodes").is_none() {
            l["inbound_nodes"] = match &previous {
                None => json!([]),
                Some(p) => json!([[[p, 0, 0, {}]]]),
            };
        }
        if let Some(n) = &name {
            l["name"] = json!(n);
        }
        previous = name;
    }
    match layers.first() {
        Some(l) if l["class_name"] == "InputLayer" => Ok(layers),
        _ => Err((
            "model.base".into(),
            "the base's layers do not start with its input".into(),
        )),
    }
}

/// `name` as a file (`path/to/x.toml`, a run's `config.json`) or as `<dir>/<name>.toml`.
pub fn find(name: &str, dir: &Path) -> std::result::Result<PathBuf, String> {
    let as_path = Path::new(name);
    match std::fs::metadata(as_path) {
        Ok(m) if m.is_file() => return Ok(as_path.to_path_buf()),
        // A FIFO or a device is named for what it is, never read (it could block).
        Ok(m) if !m.is_dir() => {
            if let Err(e) = simplecnn_files::check_regular(as_path) {
                return Err(format!("{name}: {e}"));
            }
        }
        _ => {}
    }
    let named = dir.join(format!("{name}.toml"));
    if named.is_file() {
        return Ok(named);
    }
    let mut known: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let stem = p.file_stem()?.to_string_lossy().into_owned();
            (p.extension()? == "toml").then_some(stem)
        })
        .collect();
    known.sort();
    Err(format!(
        "no experiment {name:?}: not a file, and no {} (experiments there: {})",
        named.display(),
        if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(overrides: &[&str]) -> Result<Loaded> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        load_text(BUILT_IN[0].1, Path::new("baseline.toml"), &overrides)
    }

    /// Keras' policy names; mixed_bfloat16 only where the bf16 products run.
    #[test]
    fn precision_is_keras_policy_name_on_the_cpu_fast_path() {
        assert_eq!(
            baseline(&[]).unwrap().experiment.fit.precision,
            PrecisionName::Float32
        );
        let mixed = baseline(&["fit.precision=mixed_bfloat16"]).unwrap();
        assert_eq!(
            mixed.experiment.fit.precision.precision(),
            simplecnn_model::Precision::MixedBf16
        );
        for other in ["fit.device=cuda", "fit.kernels=candle"] {
            let e = baseline(&["fit.precision=mixed_bfloat16", other]).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("fit.precision"), "{e}");
        }
        let e = baseline(&["fit.precision=bfloat16"]).unwrap_err();
        assert!(e.to_string().contains("mixed_bfloat16"), "{e}");
    }

    /// Plain-20 is ResNet-20 without its shortcuts: the same layers but the projections and
    /// the Adds, a chain, and the same recipe.
    #[test]
    fn plain20_is_resnet20_without_shortcuts() {
        let load = |name: &str| {
            let text = BUILT_IN.iter().find(|(n, _)| *n == name).unwrap().1;
            load_text(text, Path::new("x.toml"), &[])
                .unwrap()
                .experiment
        };
        let (plain, res) = (load("plain20"), load("resnet20"));
        let (p, r) = (plain.build_spec().unwrap(), res.build_spec().unwrap());
        assert!(p.is_chain());
        assert_eq!(p.param_count(), 274_442 - (16 * 32 + 32) - (32 * 64 + 64));
        let kinds = |s: &simplecnn_model::Network| -> Vec<&'static str> {
            s.layers().iter().map(|l| l.kind.class_name()).collect()
        };
        let mut without: Vec<&str> = kinds(&r);
        without.retain(|k| *k != "Add");
        assert_eq!(without.len() - 2, kinds(&p).len(), "two projections fewer");
        assert_eq!(plain.optimizer, res.optimizer);
        assert_eq!(plain.schedule, res.schedule);
        assert_eq!(plain.fit, res.fit);
        assert_eq!(plain.augment, res.augment);
    }

    #[test]
    fn resnet20_is_he_et_al_s_network_with_keras_count() {
        let text = BUILT_IN.iter().find(|(n, _)| *n == "resnet20").unwrap().1;
        let loaded = load_text(text, Path::new("resnet20.toml"), &[]).unwrap();
        let spec = loaded.experiment.build_spec().unwrap();
        // Keras' cifar10_resnet example: ResNet-20 v1 has 274 442 parameters.
        assert_eq!(spec.param_count(), 274_442);
        assert!(spec.is_functional());
        // 19 convolutions + 2 projections + the Dense: 6n + 2 = 20 weighted layers on the
        // main path.
        let convs = spec
            .layers()
            .iter()
            .filter(|l| l.kind.class_name() == "Conv2D")
            .count();
        assert_eq!(convs, 21);
        let add = spec.index_of("stage2a_add").unwrap();
        let sources: Vec<&str> = spec.layers()[add]
            .sources
            .iter()
            .map(|s| match s {
                simplecnn_model::Source::Layer(j) => spec.layers()[*j].name.as_str(),
                simplecnn_model::Source::Input => "input",
            })
            .collect();
        assert_eq!(sources, ["stage2a_shortcut", "stage2a_bn2"]);
        // The second repeat of stage 1 takes the first's output.
        let conv = spec.index_of("stage1_2_conv1").unwrap();
        assert_eq!(
            spec.layers()[conv].sources,
            [simplecnn_model::Source::Layer(
                spec.index_of("stage1_1_out").unwrap()
            )]
        );
    }

    fn graph_experiment(layers: &str) -> std::result::Result<Network, (String, String)> {
        let text = format!(
            "name = \"g\"\n[model]\ninput = [8, 8, 3]\nlayers = [\n{layers}\n]\n[optimizer]\nkind = \"adam\"\n[fit]\nepochs = 1\nbatch_size = 2\n"
        );
        let loaded = load_text(&text, Path::new("g.toml"), &[])
            .map_err(|e| (e.key.unwrap_or_default(), e.message))?;
        loaded.experiment.build_spec()
    }

    #[test]
    fn graph_errors_name_the_experiment_key() {
        let e = graph_experiment(
            r#"{ class_name = "Conv2D", name = "a", filters = 2, kernel_size = 1 },
               { class_name = "Conv2D", name = "b", filters = 3, kernel_size = 1 },
               { class_name = "Add", inputs = ["a", "b"] }"#,
        )
        .unwrap_err();
        assert_eq!(e.0, "model.layers.2");
        assert!(e.1.contains("cannot add"), "{e:?}");
        let e = graph_experiment(
            r#"{ class_name = "Conv2D", filters = 2, kernel_size = 1, inputs = ["nope"] }"#,
        )
        .unwrap_err();
        assert_eq!(e.0, "model.layers.0");
        assert!(e.1.contains("\"nope\""), "{e:?}");
        let e = graph_experiment(
            r#"{ class_name = "Conv2D", filters = 2, kernel_size = 1, inputs = ["input"], stride = 2 }"#,
        )
        .unwrap_err();
        assert_eq!(e.0, "model.layers.0.stride");
        // A layer without inputs takes the one before it, in a graph too.
        let spec = graph_experiment(
            r#"{ class_name = "Conv2D", name = "a", filters = 2, kernel_size = 1 },
               { class_name = "Conv2D", filters = 2, kernel_size = 1 },
               { class_name = "Add", inputs = ["a", "conv2d_1"] },
               { class_name = "Flatten" }"#,
        )
        .unwrap();
        let flat = &spec.layers()[spec.layers().len() - 1];
        assert_eq!(
            flat.sources,
            [simplecnn_model::Source::Layer(spec.layers().len() - 2)]
        );
    }

    #[test]
    fn built_in_experiments_load_and_build() {
        for (name, text) in BUILT_IN {
            let l = load_text(text, Path::new(name), &[]).unwrap();
            assert_eq!(l.experiment.name, *name);
            let spec = l.experiment.build_spec().unwrap();
            assert_eq!(spec.output_shape(), FeatureShape::Flat(10));
        }
        let b = baseline(&[]).unwrap().experiment;
        assert_eq!(b.build_spec().unwrap().param_count(), 545_098);
        assert_eq!(b.fit_config(), FitConfig::default());
        assert_eq!(b.output_dir(), Path::new("results/baseline"));
    }

    #[test]
    fn overrides_set_any_key_in_toml_syntax() {
        let e = baseline(&[
            "fit.epochs=2",
            "optimizer.learning_rate=5e-4",
            "data.dir=some/where",
            "fit.shuffle=false",
            "callbacks.4.mode=\"max\"",
        ])
        .unwrap()
        .experiment;
        assert_eq!(e.fit.epochs, 2.0);
        assert_eq!(e.optimizer.learning_rate(), 5e-4);
        assert_eq!(e.data.dir, Some(PathBuf::from("some/where")));
        assert!(!e.fit.shuffle);
        assert!(matches!(
            e.callbacks[4],
            CallbackSpec::ModelCheckpoint {
                mode: simplecnn_train::MonitorMode::Max,
                ..
            }
        ));
        // The schedule follows the optimizer's rate.
        assert_eq!(e.build_schedule(1000).learning_rate(123), 5e-4);
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let msg = |o: &[&str]| baseline(o).unwrap_err().to_string();
        assert!(msg(&["fit.epochs=0"])
            .starts_with("baseline.toml: fit.epochs: 0 must be a positive number"));
        assert!(msg(&["fit.epochs=\"two\""]).contains("fit.epochs"));
        assert!(msg(&["fit.epoch=2"]).contains("unknown field `epoch`"));
        assert!(msg(&["optimizer.kind=\"rmsprop\""]).contains("unknown variant `rmsprop`"));
        assert!(msg(&["optimizer.kind=\"sgd\""]).contains("unknown field `beta_1`"));
        assert!(msg(&["callbacks.9.kind=\"x\""]).contains("index 9 is past the 5 items"));
        assert!(msg(&["name.x=1"]).contains("name is not a table"));
        assert!(msg(&["outputs.save=[\"model.json\"]"]).contains("outputs.save.0"));
        assert!(msg(&["model.zoo=\"resnet\""]).contains("model.zoo"));
        assert!(msg(&["model.classes=0"]).contains("units must be at least 1"));
    }

    #[test]
    fn layers_use_keras_keys_and_default_names() {
        let text = r#"
            name = "t"
            [model]
            input = [8, 8, 3]
            layers = [
              { class_name = "Conv2D", filters = 4, kernel_size = [3, 3], strides = 2, padding = "valid", activation = "relu" },
              { class_name = "GlobalMaxPooling2D" },
              { class_name = "Dense", units = 2, activation = "softmax", name = "head" },
            ]
            [optimizer]
            kind = "adam"
            [fit]
            epochs = 1
            batch_size = 4
        "#;
        let e = load_text(text, Path::new("t.toml"), &[])
            .unwrap()
            .experiment;
        let spec = e.build_spec().unwrap();
        let names: Vec<&str> = spec.layers().iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["conv2d_1", "global_max_pooling2d_1", "head"]);
        assert_eq!(spec.layers()[0].output, FeatureShape::image(4, 3, 3));
        // Keras' `trainable` in a layer's config, or by name in `model.frozen`.
        let frozen = text.replace("name = \"head\"", "name = \"head\", trainable = false");
        let e = load_text(&frozen, Path::new("t.toml"), &[])
            .unwrap()
            .experiment;
        let spec = e.build_spec().unwrap();
        let trainable: Vec<bool> = spec.layers().iter().map(|l| l.trainable).collect();
        assert_eq!(trainable, [true, true, false]);
        let e = load_text(
            text,
            Path::new("t.toml"),
            &["model.frozen=[\"conv2d_1\"]".into()],
        )
        .unwrap()
        .experiment;
        let spec = e.build_spec().unwrap();
        assert!(!spec.layers()[0].trainable);
        assert_eq!(
            spec.trainable_param_count(),
            spec.param_count() - spec.layers()[0].param_count()
        );
        let err = load_text(
            text,
            Path::new("t.toml"),
            &["model.frozen=[\"conv9\"]".into()],
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("model.frozen.0"));
    }

    #[test]
    fn names_and_folders_from_a_file_stay_inside_the_folder_the_user_chose() {
        let msg = |o: &[&str]| baseline(o).unwrap_err().to_string();
        for name in ["../../escaped", "a/b", "..", ".", "/tmp/x"] {
            let says = msg(&[&format!("name={name:?}")]);
            assert!(
                says.starts_with("baseline.toml: name: ") && says.contains("plain name"),
                "{says}"
            );
        }
        // outputs.dir written in the file: relative and not climbing; the command line may
        // choose any folder.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shared.toml");
        for bad in ["../outside", "/tmp/elsewhere", "results/../../x"] {
            let text = BUILT_IN[0]
                .1
                .replace("# dir = \"results/baseline\"", &format!("dir = {bad:?}"));
            assert_ne!(text, BUILT_IN[0].1);
            std::fs::write(&file, &text).unwrap();
            let says = load(&file, &[]).map(|_| ()).unwrap_err().to_string();
            assert!(
                says.contains("outputs.dir") && says.contains("--out"),
                "{says}"
            );
        }
        let e = baseline(&["outputs.dir=\"/tmp/chosen\""])
            .unwrap()
            .experiment;
        assert_eq!(e.output_dir(), Path::new("/tmp/chosen"));
        let mut e = serde_json::to_value(baseline(&[]).unwrap().experiment).unwrap();
        e["name"] = json!("x/../../y");
        let config = json!({ "experiment": e });
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        assert!(load(&path, &[]).unwrap_err().to_string().contains("name"));
    }

    #[test]
    fn the_tensorboard_callback_takes_keras_update_freq() {
        let with = |freq: &str| {
            let text = format!(
                "{}\n[[callbacks]]\nkind = \"tensorboard\"\nupdate_freq = {freq}\n",
                BUILT_IN[0].1
            );
            load_text(&text, Path::new("tb.toml"), &[])
        };
        for (freq, steps) in [
            ("\"epoch\"", None),
            ("\"batch\"", Some(1)),
            ("25", Some(25)),
        ] {
            let e = with(freq).unwrap().experiment;
            match e.callbacks.last() {
                Some(CallbackSpec::Tensorboard { update_freq, .. }) => {
                    assert_eq!(update_freq.steps(), Ok(steps))
                }
                other => panic!("{other:?}"),
            }
        }
        for bad in ["\"weekly\"", "0"] {
            let says = with(bad).map(|_| ()).unwrap_err().to_string();
            assert!(says.contains("callbacks.5.update_freq"), "{says}");
        }
    }

    #[test]
    fn a_run_config_replays_its_experiment() {
        let e = baseline(&["fit.epochs=3"]).unwrap().experiment;
        let config = json!({"experiment": e, "provenance": {"git_commit": "abc"}});
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let l = load(&path, &["fit.seed=4".into()]).unwrap();
        assert_eq!(l.recorded_commit.as_deref(), Some("abc"));
        assert_eq!(l.experiment.fit.epochs, 3.0);
        assert_eq!(l.experiment.fit.seed, 4);
        std::fs::write(&path, "{}").unwrap();
        assert!(load(&path, &[])
            .unwrap_err()
            .to_string()
            .contains("no `experiment` key"));
    }
}

#[cfg(test)]
mod recipe_tests {
    use super::*;

    /// airbench's recipe pieces in a file: SGD with Nesterov and a BatchNorm-bias group, the
    /// piecewise-linear schedule, label smoothing with a summed loss.
    #[test]
    fn sgd_schedule_and_loss_entries_build() {
        let text = r#"
            name = "sgd"
            [model]
            zoo = "simple_cnn"
            [optimizer]
            kind = "sgd"
            learning_rate = 0.0015
            momentum = 0.85
            nesterov = true
            weight_decay = 1.36
            groups = [ { roles = ["bias"], lr_scale = 64.0, weight_decay = 0.02 } ]
            [schedule]
            kind = "piecewise_linear"
            points = [[0.0, 0.2], [0.23, 1.0], [1.0, 0.07]]
            [loss]
            label_smoothing = 0.2
            reduction = "sum"
            [augment]
            flip = "alternating"
            translate = 2
            [test]
            tta = "mirror_translate"
            [fit]
            epochs = 2
            batch_size = 64
            drop_remainder = true
        "#;
        let e = load_text(text, Path::new("sgd.toml"), &[])
            .unwrap()
            .experiment;
        let model = Model::new(e.build_spec().unwrap(), &candle_core::Device::Cpu, 0).unwrap();
        let opt = e.build_optimizer(&model).unwrap();
        assert_eq!(opt.name(), "SGD");
        let cfg = opt.config();
        assert_eq!(cfg["groups"][0]["lr_scale"], 64.0);
        let s = e.build_schedule(100);
        assert!((s.learning_rate(0) - 0.0015 * 0.2).abs() < 1e-15);
        assert!((s.learning_rate(23) - 0.0015).abs() < 1e-15);
        let fit = e.fit_config();
        assert_eq!(fit.loss.label_smoothing, 0.2);
        assert!(fit.drop_remainder);
        assert_eq!(fit.augment.translate, 2);
        assert_eq!(fit.augment.flip, simplecnn_cifar::Flip::Alternating);
        assert_eq!(e.test.tta, simplecnn_train::Tta::MirrorTranslate);
        let bad = |from: &str, to: &str| {
            load_text(&text.replace(from, to), Path::new("sgd.toml"), &[])
                .unwrap_err()
                .to_string()
        };
        assert!(bad("momentum = 0.85", "momentum = 1.5").contains("optimizer.momentum"));
        assert!(bad("[\"bias\"]", "[\"weights\"]").contains("optimizer.groups.0.roles"));
        assert!(bad("[1.0, 0.07]", "[0.9, 0.07]").contains("schedule.points"));
        assert!(
            bad("label_smoothing = 0.2", "label_smoothing = 1.2").contains("loss.label_smoothing")
        );
    }
}
