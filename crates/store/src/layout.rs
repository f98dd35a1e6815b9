//! Keras' names, JSON and tensor layouts for our layers: the mapping both ways.

use candle_core::Tensor;
use serde_json::{json, Value};
use std::collections::HashMap;

use simplecnn_model::{
    Activation, AveragePooling2D, BatchNormConfig, Conv2dConfig, Cropping2D, DenseConfig,
    DepthwiseConv2dConfig, FanInScale, FanMode, FeatureShape, GlobalAveragePooling2D,
    GlobalMaxPooling2D, Init, LayerKind, LayerNormConfig, LayerScale, LayerSpec, MaxPooling2D,
    Network, NormalizationConfig, Padding, Padding2d, Pool2dConfig, ReluConfig, RescalingConfig,
    Reshape, ScalarOp, ScalarOpKind, SeparableConv2dConfig, Source, StochasticDepth, WeightRole,
    ZeroPadding2D,
};

/// The Keras version whose `.h5` layout we write (Keras 2.9's; Keras 3 reads it too).
pub const KERAS_FORMAT_VERSION: &str = "2.9.0";

/// Keras' `naming.to_snake_case`: `MaxPooling2D` → `max_pooling2d`.
pub fn snake_case(class: &str) -> String {
    let chars: Vec<char> = class.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            // `(.)([A-Z][a-z]+)` then `([a-z])([A-Z])`, as Keras' two regular expressions.
            if (next_lower && prev != '_') || prev.is_ascii_lowercase() {
                out.push('_');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Keras' config of a kernel initialiser.
fn initializer_config(init: Init) -> Value {
    match init {
        Init::FanInUniform(scale) => json!({"class_name": "VarianceScaling", "config": {
            "scale": scale.value(), "mode": "fan_in", "distribution": "uniform", "seed": null}}),
        Init::Zeros => json!({"class_name": "Zeros", "config": {}}),
        Init::Ones => json!({"class_name": "Ones", "config": {}}),
        Init::Constant { bits } => {
            json!({"class_name": "Constant", "config": {"value": f32::from_bits(bits) as f64}})
        }
        Init::GlorotUniform => json!({"class_name": "GlorotUniform", "config": {"seed": null}}),
        Init::TruncatedNormal { scale, mode } => {
            json!({"class_name": "VarianceScaling", "config": {
            "scale": scale.value(), "mode": mode.keras_name(),
            "distribution": "truncated_normal", "seed": null}})
        }
        Init::FanOutUniform(scale) => json!({"class_name": "VarianceScaling", "config": {
            "scale": scale.value(), "mode": "fan_out", "distribution": "uniform", "seed": null}}),
    }
}

/// Reads `kernel_initializer`: a name (`"glorot_uniform"`) or `{class_name, config}`.
fn kernel_initializer(cfg: &Value) -> Result<Init, String> {
    initializer_at(cfg, "kernel_initializer")
}

/// Reads the initializer at `key`: a name (`"glorot_uniform"`) or `{class_name, config}`.
fn initializer_at(cfg: &Value, key: &str) -> Result<Init, String> {
    let Some(v) = cfg.get(key) else {
        return Ok(Init::GlorotUniform);
    };
    let (class, config) = match v {
        Value::String(s) => (s.as_str(), Value::Null),
        Value::Object(o) => (
            o.get("class_name").and_then(Value::as_str).unwrap_or(""),
            o.get("config").cloned().unwrap_or(Value::Null),
        ),
        _ => return Err(format!("{key} must be a name or {{class_name, config}}")),
    };
    let fan_in = |scale: f64| {
        [FanInScale::Torch, FanInScale::Lecun, FanInScale::He]
            .into_iter()
            .find(|s| (s.value() - scale).abs() < 1e-6)
            .map(Init::FanInUniform)
    };
    let scale_of = |scale: f64| {
        [FanInScale::Torch, FanInScale::Lecun, FanInScale::He]
            .into_iter()
            .find(|s| (s.value() - scale).abs() < 1e-6)
    };
    let normal = |scale: f64, mode: FanMode| {
        scale_of(scale).map(|scale| Init::TruncatedNormal { scale, mode })
    };
    let found = match class {
        "GlorotUniform" | "glorot_uniform" => Some(Init::GlorotUniform),
        "HeUniform" | "he_uniform" => fan_in(2.0),
        "LecunUniform" | "lecun_uniform" => fan_in(1.0),
        "HeNormal" | "he_normal" => normal(2.0, FanMode::In),
        "LecunNormal" | "lecun_normal" => normal(1.0, FanMode::In),
        "GlorotNormal" | "glorot_normal" => normal(1.0, FanMode::Average),
        "VarianceScaling" | "variance_scaling" => {
            let get = |k: &str| config.get(k).and_then(Value::as_str);
            let scale = config.get("scale").and_then(Value::as_f64).unwrap_or(1.0);
            let mode = match get("mode") {
                Some("fan_in") => Some(FanMode::In),
                Some("fan_out") => Some(FanMode::Out),
                Some("fan_avg") => Some(FanMode::Average),
                _ => None,
            };
            match (get("distribution"), mode) {
                (Some("uniform"), Some(FanMode::In)) => fan_in(scale),
                (Some("uniform"), Some(FanMode::Out)) => scale_of(scale).map(Init::FanOutUniform),
                (Some("truncated_normal"), Some(mode)) => normal(scale, mode),
                _ => None,
            }
        }
        _ => None,
    };
    found.ok_or_else(|| {
        format!(
            "{key} {v} is not supported (glorot_uniform/normal, he_uniform/normal, \
             lecun_uniform/normal, or VarianceScaling with scale 1/3, 1 or 2: uniform on \
             fan_in or fan_out, truncated_normal on any)"
        )
    })
}

fn initializers(kernel: Init) -> Value {
    json!({
        "kernel_initializer": initializer_config(kernel),
        "bias_initializer": {"class_name": "Zeros", "config": {}},
        "kernel_regularizer": null, "bias_regularizer": null, "activity_regularizer": null,
        "kernel_constraint": null, "bias_constraint": null
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// One layer's `{"class_name", "config"}` as Keras 2.9 writes it.
pub fn layer_config(layer: &LayerSpec) -> Value {
    let base = json!({"name": layer.name, "trainable": layer.trainable, "dtype": "float32"});
    let config = match &layer.kind {
        LayerKind::Input => json!({
            "batch_input_shape": keras_batch_shape(&layer.input), "dtype": "float32",
            "sparse": false, "ragged": false, "name": layer.name
        }),
        LayerKind::Conv2d(c) => merge(
            merge(
                base,
                json!({
                    "filters": c.filters, "kernel_size": [c.kernel_size.0, c.kernel_size.1],
                    "strides": [c.strides.0, c.strides.1], "padding": c.padding.keras_name(),
                    "data_format": "channels_last", "dilation_rate": [1, 1], "groups": c.groups,
                    "activation": c.activation.keras_name(), "use_bias": c.use_bias
                }),
            ),
            initializers(c.kernel_initializer),
        ),
        LayerKind::MaxPool2d(MaxPooling2D(p)) | LayerKind::AvgPool2d(AveragePooling2D(p)) => merge(
            base,
            json!({
                "pool_size": [p.pool_size.0, p.pool_size.1], "padding": p.padding.keras_name(),
                "strides": [p.strides.0, p.strides.1], "data_format": "channels_last"
            }),
        ),
        LayerKind::Dropout(d) => {
            let noise_shape = match d.per_example {
                true => {
                    let mut dims = vec![Value::Null];
                    dims.extend(layer.input.keras_dims().iter().map(|_| json!(1)));
                    Value::Array(dims)
                }
                false => Value::Null,
            };
            merge(
                base,
                json!({"rate": d.rate as f64, "noise_shape": noise_shape, "seed": null}),
            )
        }
        LayerKind::Normalization(n) => {
            let list = |v: &[f32]| json!(v.iter().map(|x| *x as f64).collect::<Vec<_>>());
            let (mean, variance) = match &n.fixed {
                Some((m, v)) => (list(m), list(v)),
                None => (Value::Null, Value::Null),
            };
            merge(
                base,
                json!({"axis": -1, "mean": mean, "variance": variance, "invert": n.invert}),
            )
        }
        LayerKind::Flatten => merge(base, json!({"data_format": "channels_last"})),
        LayerKind::Activation(a) => merge(base, json!({"activation": a.activation.keras_name()})),
        LayerKind::Rescaling(r) => {
            let one_or_list = |v: &[f32]| match v {
                [x] => json!(*x as f64),
                _ => json!(v.iter().map(|x| *x as f64).collect::<Vec<_>>()),
            };
            merge(
                base,
                json!({"scale": one_or_list(&r.scale), "offset": one_or_list(&r.offset)}),
            )
        }
        LayerKind::GlobalAvgPool2d(GlobalAveragePooling2D { keepdims })
        | LayerKind::GlobalMaxPool2d(GlobalMaxPooling2D { keepdims }) => merge(
            base,
            json!({"data_format": "channels_last", "keepdims": keepdims}),
        ),
        LayerKind::BatchNorm(BatchNormConfig {
            epsilon,
            momentum,
            center,
            scale,
        }) => merge(
            base,
            json!({
                "axis": -1, "momentum": *momentum as f64, "epsilon": *epsilon as f64,
                "center": center, "scale": scale,
                "beta_initializer": {"class_name": "Zeros", "config": {}},
                "gamma_initializer": {"class_name": "Ones", "config": {}},
                "moving_mean_initializer": {"class_name": "Zeros", "config": {}},
                "moving_variance_initializer": {"class_name": "Ones", "config": {}},
                "beta_regularizer": null, "gamma_regularizer": null,
                "beta_constraint": null, "gamma_constraint": null
            }),
        ),
        LayerKind::DepthwiseConv2d(d) => merge(
            base,
            json!({
                "kernel_size": [d.kernel_size.0, d.kernel_size.1],
                "strides": [d.strides.0, d.strides.1], "padding": d.padding.keras_name(),
                "data_format": "channels_last", "dilation_rate": [1, 1],
                "depth_multiplier": d.depth_multiplier,
                "activation": d.activation.keras_name(), "use_bias": d.use_bias,
                "depthwise_initializer": initializer_config(d.depthwise_initializer),
                "bias_initializer": {"class_name": "Zeros", "config": {}},
                "depthwise_regularizer": null, "bias_regularizer": null,
                "activity_regularizer": null, "depthwise_constraint": null, "bias_constraint": null
            }),
        ),
        LayerKind::SeparableConv2d(c) => merge(
            base,
            json!({
                "filters": c.filters, "kernel_size": [c.kernel_size.0, c.kernel_size.1],
                "strides": [c.strides.0, c.strides.1], "padding": c.padding.keras_name(),
                "data_format": "channels_last", "dilation_rate": [1, 1],
                "depth_multiplier": c.depth_multiplier,
                "activation": c.activation.keras_name(), "use_bias": c.use_bias,
                "depthwise_initializer": initializer_config(Init::GlorotUniform),
                "pointwise_initializer": initializer_config(Init::GlorotUniform),
                "bias_initializer": {"class_name": "Zeros", "config": {}},
                "depthwise_regularizer": null, "pointwise_regularizer": null,
                "bias_regularizer": null, "activity_regularizer": null,
                "depthwise_constraint": null, "pointwise_constraint": null, "bias_constraint": null
            }),
        ),
        LayerKind::Reshape(r) => merge(base, json!({"target_shape": r.target.keras_dims()})),
        LayerKind::Add | LayerKind::Multiply => base,
        LayerKind::ScalarOp(_) => json!({"name": layer.name}),
        LayerKind::LayerScale(l) => merge(
            base,
            json!({"init_values": l.init_values as f64, "projection_dim": l.projection_dim}),
        ),
        LayerKind::StochasticDepth(d) => {
            merge(base, json!({"drop_path_rate": d.drop_path_rate as f64}))
        }
        LayerKind::LayerNorm(l) => merge(
            base,
            json!({
                "axis": -1, "epsilon": l.epsilon as f64, "center": l.center, "scale": l.scale,
                "rms_scaling": false,
                "beta_initializer": {"class_name": "Zeros", "config": {}},
                "gamma_initializer": {"class_name": "Ones", "config": {}},
                "beta_regularizer": null, "gamma_regularizer": null,
                "beta_constraint": null, "gamma_constraint": null
            }),
        ),
        LayerKind::Concatenate => merge(base, json!({"axis": -1})),
        LayerKind::ZeroPadding2d(z) => {
            let ((top, bottom), (left, right)) = z.padding;
            merge(
                base,
                json!({"padding": [[top, bottom], [left, right]], "data_format": "channels_last"}),
            )
        }
        LayerKind::Cropping2d(c) => {
            let ((top, bottom), (left, right)) = c.cropping;
            merge(
                base,
                json!({"cropping": [[top, bottom], [left, right]], "data_format": "channels_last"}),
            )
        }
        LayerKind::Relu(r) => merge(
            base,
            json!({
                "max_value": r.max_value.map(|m| m as f64),
                "negative_slope": r.negative_slope as f64, "threshold": r.threshold as f64
            }),
        ),
        LayerKind::Dense(DenseConfig {
            units,
            activation,
            use_bias,
            kernel_initializer,
        }) => merge(
            merge(
                base,
                json!({"units": units, "activation": activation.keras_name(), "use_bias": use_bias}),
            ),
            initializers(*kernel_initializer),
        ),
    };
    let mut entry = json!({"class_name": layer.kind.class_name(), "config": config});
    if let LayerKind::LayerScale(_) | LayerKind::StochasticDepth(_) = layer.kind {
        // Not layers of keras.layers: Keras finds them by their module (its legacy .h5 loader
        // too).
        entry["module"] = json!("keras.src.applications.convnext");
        entry["registered_name"] = json!(layer.kind.class_name());
    }
    entry
}

fn keras_batch_shape(shape: &FeatureShape) -> Value {
    let mut dims = vec![Value::Null];
    dims.extend(shape.keras_dims().into_iter().map(Value::from));
    Value::Array(dims)
}

/// The order Keras gives a functional model's layers (`Functional.layers`, from
/// `keras/src/ops/function.py`'s `map_graph`): by depth — the longest path to the output —
/// deepest first, ties in the order a depth-first walk from the output meets them. Keras
/// rebuilds that order from a file's graph, and pairs `.keras` weights and legacy `.h5`
/// weights (in Keras 3) by it, so files are written in it. A chain keeps its order.
pub fn keras_order(spec: &Network) -> Vec<usize> {
    let layers = spec.layers();
    let n = layers.len();
    if !spec.is_functional() || n == 0 {
        return (0..n).collect();
    }
    // Pre-order indices of a depth-first walk from the output, inputs in order.
    let mut visit_index = vec![usize::MAX; n];
    let mut post_order = Vec::with_capacity(n);
    let mut counter = 0;
    // (layer, next input to visit)
    let mut stack = vec![(n - 1, 0usize)];
    visit_index[n - 1] = 0;
    counter += 1;
    while let Some((i, k)) = stack.pop() {
        match layers[i].sources.get(k) {
            Some(Source::Layer(j)) => {
                stack.push((i, k + 1));
                if visit_index[*j] == usize::MAX {
                    visit_index[*j] = counter;
                    counter += 1;
                    stack.push((*j, 0));
                }
            }
            Some(Source::Input) => stack.push((i, k + 1)),
            None => post_order.push(i),
        }
    }
    let mut depth = vec![0usize; n];
    for &i in post_order.iter().rev() {
        for s in &layers[i].sources {
            if let Source::Layer(j) = s {
                depth[*j] = depth[*j].max(depth[i] + 1);
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(depth[i]), visit_index[i]));
    order
}

/// The name of a functional model's input layer: its own `InputLayer`, or Keras 3's default.
pub fn input_layer_name(spec: &Network) -> String {
    match spec.layers().first() {
        Some(l) if l.kind == LayerKind::Input => l.name.clone(),
        _ => "input_layer".into(),
    }
}

/// The names of the layers (or the input) `layer` takes, in order.
pub fn source_names(spec: &Network, layer: &LayerSpec) -> Vec<String> {
    layer
        .sources
        .iter()
        .map(|s| match s {
            Source::Input => input_layer_name(spec),
            Source::Layer(j) => spec.layers()[*j].name.clone(),
        })
        .collect()
}

/// `model_config`: a Keras 2.9 `Sequential` with an explicit `InputLayer`, or for a graph a
/// `Functional` with Keras 2's `inbound_nodes` (`[[["conv2d_1", 0, 0, {}], …]]`).
pub fn model_config(spec: &Network) -> Value {
    if spec.is_functional() {
        return functional_config(spec);
    }
    let mut layers = vec![json!({
        "class_name": "InputLayer",
        "config": {
            "batch_input_shape": keras_batch_shape(&spec.input_shape()), "dtype": "float32",
            "sparse": false, "ragged": false, "name": format!("{}_input", spec.layers().first().map_or("input", |l| &l.name))
        }
    })];
    layers.extend(
        spec.layers()
            .iter()
            .filter(|l| l.kind != LayerKind::Input)
            .map(layer_config),
    );
    json!({"class_name": "Sequential", "config": {"name": spec.name(), "layers": layers}})
}

/// A graph as Keras 2.9 writes it: an `InputLayer` first (the model's own or one made for it),
/// every layer with its `name` and `inbound_nodes`, in Keras' layer order.
fn functional_config(spec: &Network) -> Value {
    let input_name = input_layer_name(spec);
    let mut layers = Vec::new();
    if spec
        .layers()
        .first()
        .is_none_or(|l| l.kind != LayerKind::Input)
    {
        layers.push(json!({
            "class_name": "InputLayer", "name": input_name, "inbound_nodes": [],
            "config": {
                "batch_input_shape": keras_batch_shape(&spec.input_shape()), "dtype": "float32",
                "sparse": false, "ragged": false, "name": input_name
            }
        }));
    }
    for i in keras_order(spec) {
        let l = &spec.layers()[i];
        if let LayerKind::ScalarOp(op) = &l.kind {
            // Keras 2 has no such node; Keras 3 reads each node in its own form.
            layers.push(op_node_entry(spec, l, op));
            continue;
        }
        let mut entry = layer_config(l);
        entry["name"] = json!(l.name);
        entry["inbound_nodes"] = match l.kind {
            LayerKind::Input => json!([]),
            _ => {
                let node: Vec<Value> = source_names(spec, l)
                    .into_iter()
                    .map(|n| json!([n, 0, 0, {}]))
                    .collect();
                json!([node])
            }
        };
        layers.push(entry);
    }
    let output = spec
        .layers()
        .last()
        .map_or(input_name.clone(), |l| l.name.clone());
    json!({"class_name": "Functional", "config": {
        "name": spec.name(), "layers": layers,
        "input_layers": [[input_name, 0, 0]], "output_layers": [[output, 0, 0]]
    }})
}

/// Why a `model_config` cannot be rebuilt: the layer (if any) and the problem.
#[derive(Debug)]
pub struct ConfigError {
    /// The layer's name, or its class for a layer without one, when `message` does not
    /// name it already.
    pub layer: Option<String>,
    /// The layer's position in the config's `layers` list (an input layer counted).
    pub index: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.layer {
            Some(l) => write!(f, "layer {l}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// The largest size (units, filters, a side of a kernel, stride, pool or input) a
/// `model_config` may give: far above any real network, and small enough that products of a
/// few of them cannot overflow before the model's element limit is checked.
pub const MAX_CONFIG_SIZE: u64 = 1 << 24;

/// A size from the config: a whole number in `1..=MAX_CONFIG_SIZE`.
fn size_value(v: &Value, key: &str) -> Result<usize, String> {
    match v.as_u64() {
        Some(n) if (1..=MAX_CONFIG_SIZE).contains(&n) => Ok(n as usize),
        _ => Err(format!(
            "{key} {v} is not a whole number from 1 to {MAX_CONFIG_SIZE}"
        )),
    }
}

/// A required size (`units`, `filters`).
fn size(cfg: &Value, key: &str) -> Result<usize, String> {
    match cfg.get(key) {
        Some(v) => size_value(v, key),
        None => Err(format!("no {key}")),
    }
}

/// `kernel_size`, `strides`, `pool_size`: one size or two; `None` when the key is absent or
/// null, an error when it holds anything but sizes.
fn pair(v: &Value, key: &str) -> Result<Option<(usize, usize)>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.len() == 2 => {
            Ok(Some((size_value(&a[0], key)?, size_value(&a[1], key)?)))
        }
        Some(n @ Value::Number(_)) => {
            let n = size_value(n, key)?;
            Ok(Some((n, n)))
        }
        Some(other) => Err(format!("{key} {other} is not one size or two")),
    }
}

fn activation(v: &Value) -> Result<Activation, String> {
    let name = v
        .get("activation")
        .and_then(Value::as_str)
        .unwrap_or("linear");
    Activation::from_keras_name(name)
        .ok_or_else(|| format!("activation {name:?} is not supported (relu, softmax, linear are)"))
}

/// Keras' `use_bias`, true unless the config says otherwise.
fn use_bias(cfg: &Value) -> bool {
    cfg.get("use_bias").and_then(Value::as_bool).unwrap_or(true)
}

fn input_shape(config: &Value) -> Option<FeatureShape> {
    let dims = config
        .get("batch_input_shape")
        .or_else(|| config.get("batch_shape"))?
        .as_array()?;
    let d: Vec<usize> = dims
        .get(1..)?
        .iter()
        .map(|v| size_value(v, "input shape").ok())
        .collect::<Option<_>>()?;
    match d.as_slice() {
        [h, w, c] => Some(FeatureShape::image(*c, *h, *w)),
        [f] => Some(FeatureShape::Flat(*f)),
        _ => None,
    }
}

/// The shape the next layer receives: the last layer's output, or the model input.
fn input_so_far(seq: &Option<Network>, input: Option<FeatureShape>) -> Option<FeatureShape> {
    seq.as_ref().map(Network::output_shape).or(input)
}

/// Puts a `Rescaling(scale)` layer named `input_scale` before the first layer of a
/// `model_config`'s `layers` (after its InputLayer, if it has one): the inputs of a model
/// trained on pixels in `[0, 255]` (`scale = 255`) while this workbench's are in `[0, 1]`.
/// Keras 2.9 keeps the input shape on the first layer: it moves to the new first layer.
pub fn insert_input_scale(layers: &mut Vec<Value>, scale: f64) {
    let at = usize::from(
        layers
            .first()
            .is_some_and(|l| l["class_name"] == "InputLayer"),
    );
    let mut rescaling = json!({"class_name": "Rescaling", "config": {"name": "input_scale", "scale": scale, "offset": 0.0}});
    if at == 0 {
        if let Some(shape) = layers
            .first_mut()
            .and_then(|l| l["config"].as_object_mut())
            .and_then(|c| c.remove("batch_input_shape"))
        {
            rescaling["config"]["batch_input_shape"] = shape;
        }
    }
    layers.insert(at, rescaling);
}

/// One layer's kind from its Keras class and config; `input` is the shape it takes first.
fn layer_kind(class: &str, cfg: &Value, input: Option<FeatureShape>) -> Result<LayerKind, String> {
    if let Some(df) = cfg.get("data_format").and_then(Value::as_str) {
        if df != "channels_last" {
            return Err(format!("data_format {df} is not supported"));
        }
    }
    Ok(match class {
        "Conv2D" => {
            if pair(cfg, "dilation_rate")?.is_some_and(|d| d != (1, 1)) {
                return Err("dilated convolutions are not supported".into());
            }
            let padding = conv_padding(cfg)?;
            LayerKind::Conv2d(Conv2dConfig {
                filters: size(cfg, "filters")?,
                kernel_size: pair(cfg, "kernel_size")?.ok_or("no kernel_size")?,
                strides: pair(cfg, "strides")?.unwrap_or((1, 1)),
                padding,
                activation: activation(cfg)?,
                use_bias: use_bias(cfg),
                kernel_initializer: kernel_initializer(cfg)?,
                groups: match cfg.get("groups") {
                    None => 1,
                    Some(v) => size_value(v, "groups")?,
                },
            })
        }
        "MaxPooling2D" | "AveragePooling2D" => {
            let pool_size = pair(cfg, "pool_size")?.unwrap_or((2, 2));
            let p = Pool2dConfig {
                pool_size,
                strides: pair(cfg, "strides")?.unwrap_or(pool_size),
                padding: conv_padding(cfg)?,
            };
            if class == "MaxPooling2D" {
                LayerKind::MaxPool2d(MaxPooling2D(p))
            } else {
                LayerKind::AvgPool2d(AveragePooling2D(p))
            }
        }
        "Dropout" => {
            let rate = cfg.get("rate").and_then(Value::as_f64).unwrap_or(0.0) as f32;
            // Keras' noise_shape: none (one draw per value) or 1 on every axis but the
            // batch's (one per example).
            let per_example = match cfg.get("noise_shape") {
                None | Some(Value::Null) => false,
                Some(Value::Array(a))
                    if a.len() > 1 && a[0].is_null() && a[1..].iter().all(|d| d == 1) =>
                {
                    true
                }
                Some(other) => {
                    return Err(format!(
                        "noise_shape {other} is not supported (none, or [null, 1, …])"
                    ))
                }
            };
            LayerKind::Dropout(simplecnn_model::DropoutConfig { rate, per_example })
        }
        "StochasticDepth" => LayerKind::StochasticDepth(StochasticDepth {
            drop_path_rate: cfg
                .get("drop_path_rate")
                .and_then(Value::as_f64)
                .ok_or("no drop_path_rate")? as f32,
        }),
        "LayerScale" => LayerKind::LayerScale(LayerScale {
            init_values: cfg
                .get("init_values")
                .and_then(Value::as_f64)
                .ok_or("no init_values")? as f32,
            projection_dim: size(cfg, "projection_dim")?,
        }),
        "LayerNormalization" => {
            channel_axis_only(cfg, input, class)?;
            if cfg.get("rms_scaling").and_then(Value::as_bool) == Some(true) {
                return Err("LayerNormalization with rms_scaling is not supported".into());
            }
            let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(true);
            LayerKind::LayerNorm(LayerNormConfig {
                epsilon: cfg.get("epsilon").and_then(Value::as_f64).unwrap_or(1e-3) as f32,
                center: flag("center"),
                scale: flag("scale"),
            })
        }
        "Normalization" => {
            channel_axis_only(cfg, input, class)?;
            let given = |key: &str| match cfg.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => numbers(v, key).map(Some),
            };
            let fixed = match (given("mean")?, given("variance")?) {
                (Some(m), Some(v)) => Some((m, v)),
                (None, None) => None,
                _ => return Err("Normalization needs both mean and variance, or neither".into()),
            };
            let invert = cfg.get("invert").and_then(Value::as_bool).unwrap_or(false);
            LayerKind::Normalization(NormalizationConfig { invert, fixed })
        }
        "Flatten" => LayerKind::Flatten,
        "Activation" => LayerKind::Activation(simplecnn_model::ActivationConfig {
            activation: activation(cfg)?,
        }),
        "Rescaling" => {
            let or_default = |key: &str, default: f32| match cfg.get(key) {
                None => Ok(vec![default]),
                Some(v) => numbers(v, key),
            };
            LayerKind::Rescaling(RescalingConfig {
                scale: or_default("scale", 1.0)?,
                offset: or_default("offset", 0.0)?,
            })
        }
        "GlobalAveragePooling2D" | "GlobalMaxPooling2D" => {
            let keepdims = cfg.get("keepdims").and_then(Value::as_bool) == Some(true);
            match class {
                "GlobalAveragePooling2D" => {
                    LayerKind::GlobalAvgPool2d(GlobalAveragePooling2D { keepdims })
                }
                _ => LayerKind::GlobalMaxPool2d(GlobalMaxPooling2D { keepdims }),
            }
        }
        "BatchNormalization" => {
            channel_axis_only(cfg, input, class)?;
            let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(true);
            LayerKind::BatchNorm(BatchNormConfig {
                epsilon: cfg.get("epsilon").and_then(Value::as_f64).unwrap_or(1e-3) as f32,
                momentum: cfg.get("momentum").and_then(Value::as_f64).unwrap_or(0.99) as f32,
                center: flag("center"),
                scale: flag("scale"),
            })
        }
        "Dense" => LayerKind::Dense(DenseConfig {
            units: size(cfg, "units")?,
            activation: activation(cfg)?,
            use_bias: use_bias(cfg),
            kernel_initializer: kernel_initializer(cfg)?,
        }),
        "DepthwiseConv2D" | "SeparableConv2D" => {
            if pair(cfg, "dilation_rate")?.is_some_and(|d| d != (1, 1)) {
                return Err("dilated convolutions are not supported".into());
            }
            let kernel_size = pair(cfg, "kernel_size")?.ok_or("no kernel_size")?;
            let strides = pair(cfg, "strides")?.unwrap_or((1, 1));
            let padding = conv_padding(cfg)?;
            let depth_multiplier = match cfg.get("depth_multiplier") {
                None => 1,
                Some(v) => size_value(v, "depth_multiplier")?,
            };
            let activation = activation(cfg)?;
            match class {
                "DepthwiseConv2D" => LayerKind::DepthwiseConv2d(DepthwiseConv2dConfig {
                    kernel_size,
                    strides,
                    padding,
                    depth_multiplier,
                    activation,
                    use_bias: use_bias(cfg),
                    depthwise_initializer: initializer_at(cfg, "depthwise_initializer")?,
                }),
                _ => LayerKind::SeparableConv2d(SeparableConv2dConfig {
                    filters: size(cfg, "filters")?,
                    kernel_size,
                    strides,
                    padding,
                    depth_multiplier,
                    activation,
                    use_bias: use_bias(cfg),
                }),
            }
        }
        "Reshape" => {
            let dims: Vec<usize> = cfg
                .get("target_shape")
                .and_then(Value::as_array)
                .ok_or("no target_shape")?
                .iter()
                .map(|v| size_value(v, "target_shape"))
                .collect::<Result<_, _>>()?;
            let target = match dims.as_slice() {
                [h, w, c] => FeatureShape::image(*c, *h, *w),
                [f] => FeatureShape::Flat(*f),
                _ => {
                    return Err(format!(
                        "Reshape to {dims:?} is not supported (an image [h, w, c] or a vector)"
                    ))
                }
            };
            LayerKind::Reshape(Reshape { target })
        }
        "Add" => LayerKind::Add,
        "Multiply" => LayerKind::Multiply,
        "Concatenate" => {
            let axis = cfg.get("axis").and_then(Value::as_i64).unwrap_or(-1);
            let rank = match input {
                Some(FeatureShape::Image { .. }) => 4,
                _ => 2,
            };
            if axis != -1 && axis != rank - 1 {
                return Err(format!(
                    "Concatenate along axis {axis} is not supported (only the channels, -1)"
                ));
            }
            LayerKind::Concatenate
        }
        "ZeroPadding2D" => LayerKind::ZeroPadding2d(ZeroPadding2D {
            padding: padding_2d(cfg, "padding")?,
        }),
        "Cropping2D" => LayerKind::Cropping2d(Cropping2D {
            cropping: padding_2d(cfg, "cropping")?,
        }),
        "ReLU" => {
            let number = |key: &str| cfg.get(key).and_then(Value::as_f64);
            LayerKind::Relu(ReluConfig {
                max_value: number("max_value").map(|m| m as f32),
                negative_slope: number("negative_slope").unwrap_or(0.0) as f32,
                threshold: number("threshold").unwrap_or(0.0) as f32,
            })
        }
        other => return Err(format!("layer class {other} is not supported")),
    })
}

/// Checks that a normalising layer's `axis` is the channels: Keras 2 writes it as 3 or [3]
/// for NHWC images (1 for vectors), Keras 3 as -1; the channels are the only axis we
/// normalise over.
fn channel_axis_only(cfg: &Value, input: Option<FeatureShape>, class: &str) -> Result<(), String> {
    let rank = match input {
        Some(FeatureShape::Image { .. }) => 4,
        _ => 2,
    };
    let axis = match cfg.get("axis") {
        Some(Value::Array(a)) if a.len() == 1 => a[0].as_i64(),
        Some(v) => v.as_i64(),
        None => Some(-1),
    };
    match axis {
        Some(a) if a == -1 || a == rank - 1 => Ok(()),
        _ => Err(format!(
            "{class} over axis {axis:?} is not supported (only the channels)"
        )),
    }
}

/// A number or a list of numbers from a config (`Rescaling`'s scale, `Normalization`'s mean).
fn numbers(v: &Value, key: &str) -> Result<Vec<f32>, String> {
    match v {
        Value::Number(n) => Ok(vec![n.as_f64().unwrap_or(f64::NAN) as f32]),
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("{key} must be numbers")),
        _ => Err(format!("{key} must be a number or a list of numbers")),
    }
}

/// A convolution's `padding`: `valid` (the default) or `same`.
fn conv_padding(cfg: &Value) -> Result<Padding, String> {
    match cfg
        .get("padding")
        .and_then(Value::as_str)
        .unwrap_or("valid")
    {
        "same" => Ok(Padding::Same),
        "valid" => Ok(Padding::Valid),
        p => Err(format!("padding {p:?} is not supported")),
    }
}

/// `ZeroPadding2D`'s `padding` or `Cropping2D`'s `cropping` (`key`): one size, `[rows,
/// columns]` or `[[top, bottom], [left, right]]`.
fn padding_2d(cfg: &Value, key: &str) -> Result<Padding2d, String> {
    let amount = |v: &Value| match v.as_u64() {
        Some(n) if n <= MAX_CONFIG_SIZE => Ok(n as usize),
        _ => Err(format!(
            "padding {v} is not a whole number up to {MAX_CONFIG_SIZE}"
        )),
    };
    let side = |v: &Value| match v {
        Value::Array(a) if a.len() == 2 => Ok((amount(&a[0])?, amount(&a[1])?)),
        v => amount(v).map(|n| (n, n)),
    };
    match cfg.get(key) {
        // Keras' defaults: ZeroPadding2D pads 1, Cropping2D crops nothing.
        None if key == "padding" => Ok(((1, 1), (1, 1))),
        None => Ok(((0, 0), (0, 0))),
        Some(Value::Array(a)) if a.len() == 2 => Ok((side(&a[0])?, side(&a[1])?)),
        Some(v @ Value::Number(_)) => {
            let n = amount(v)?;
            Ok(((n, n), (n, n)))
        }
        Some(other) => Err(format!(
            "padding {other} is not one size, two, or two pairs"
        )),
    }
}

/// The inputs of one layer entry of a functional config: the names of the layers whose outputs
/// it takes, in order. Keras 3 writes `[{"args": [tensor or [tensors]], "kwargs": {}}]` with
/// each tensor's `keras_history` `[layer, node, index]`; Keras 2 `[[["layer", node, index,
/// {}], …]]`. A layer called more than once (shared weights), a tensor of a layer's second
/// call or its second output is refused by name.
fn inbound_names(entry: &Value) -> Result<Vec<String>, String> {
    let nodes = match entry.get("inbound_nodes") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(nodes)) => nodes,
        Some(other) => return Err(format!("inbound_nodes {other} is not a list")),
    };
    if nodes.len() > 1 {
        return Err(format!(
            "the layer is called {} times (shared weights), which is not supported",
            nodes.len()
        ));
    }
    let mut names = Vec::new();
    let mut reference = |history: &[Value]| -> Result<(), String> {
        let name = history.first().and_then(Value::as_str);
        let node = history.get(1).and_then(Value::as_u64);
        let index = history.get(2).and_then(Value::as_u64);
        match (name, node, index) {
            (Some(n), Some(0), Some(0)) => {
                names.push(n.to_string());
                Ok(())
            }
            (Some(n), Some(_), Some(0)) => Err(format!(
                "it takes a later call of layer {n} (shared weights), which is not supported"
            )),
            (Some(n), Some(_), Some(_)) => Err(format!(
                "it takes a second output of layer {n}, which is not supported"
            )),
            _ => Err(format!(
                "inbound reference {history:?} is not [layer, node, index]"
            )),
        }
    };
    fn keras3_tensors(
        v: &Value,
        out: &mut dyn FnMut(&[Value]) -> Result<(), String>,
    ) -> Result<(), String> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| keras3_tensors(i, out)),
            Value::Object(o)
                if o.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__") =>
            {
                match o
                    .get("config")
                    .and_then(|c| c.get("keras_history"))
                    .and_then(Value::as_array)
                {
                    Some(h) => out(h),
                    None => Err("a tensor without keras_history".into()),
                }
            }
            Value::Object(o) => o.values().try_for_each(|i| keras3_tensors(i, out)),
            _ => Ok(()),
        }
    }
    for node in nodes {
        match node {
            Value::Object(o) => {
                if let Some(args) = o.get("args") {
                    keras3_tensors(args, &mut reference)?;
                }
                if let Some(kwargs) = o.get("kwargs") {
                    keras3_tensors(kwargs, &mut reference)?;
                }
            }
            Value::Array(refs) => {
                for r in refs {
                    match r.as_array() {
                        Some(h) => reference(h)?,
                        None => return Err(format!("inbound reference {r} is not a list")),
                    }
                }
            }
            other => return Err(format!("inbound node {other} is neither Keras 2's nor 3's")),
        }
    }
    Ok(names)
}

/// Whether a functional entry is an operation node: Keras 3's arithmetic on tensors
/// (`x + 3.0`), saved under `keras.src.ops.numpy` with a layer's class name (`Add`), or, in
/// Keras 3's `.h5` (which drops `module`), told apart by a config that holds only its name.
pub fn is_op_node(entry: &Value) -> bool {
    match entry.get("module").and_then(Value::as_str) {
        Some(m) => m.starts_with("keras.src.ops"),
        None => {
            entry["config"]
                .as_object()
                .is_some_and(|c| c.len() == 1 && c.contains_key("name"))
                && entry.get("inbound_nodes").is_some_and(|n| {
                    n.as_array()
                        .and_then(|n| n.first())
                        .is_some_and(Value::is_object)
                })
        }
    }
}

/// An operation node's kind: a tensor and a number (`Add`, `Subtract`, `Multiply`,
/// `TrueDivide`) or two tensors (`Add`, `Multiply`: the joining layers); `None` for a layer.
fn op_node(entry: &Value) -> Result<Option<LayerKind>, String> {
    if !is_op_node(entry) {
        return Ok(None);
    }
    let class = entry["class_name"].as_str().unwrap_or("?");
    let unsupported = || format!("the operation {class} on tensors is not supported");
    let kind = ScalarOpKind::from_keras_name(class).ok_or_else(unsupported)?;
    let args = entry["inbound_nodes"][0]["args"]
        .as_array()
        .ok_or("an operation node without args")?;
    let is_tensor = |v: &Value| v["class_name"] == "__keras_tensor__";
    match args.as_slice() {
        [a, b] if is_tensor(a) && is_tensor(b) => match kind {
            ScalarOpKind::Add => Ok(Some(LayerKind::Add)),
            ScalarOpKind::Multiply => Ok(Some(LayerKind::Multiply)),
            _ => Err(unsupported()),
        },
        [a, b] if is_tensor(a) || is_tensor(b) => {
            let number = if is_tensor(a) { b } else { a };
            let value = number
                .as_f64()
                .ok_or_else(|| format!("{class} of a tensor and {number}, not a number"))?;
            Ok(Some(LayerKind::ScalarOp(ScalarOp {
                op: kind,
                value: value as f32,
                number_first: !is_tensor(a),
            })))
        }
        _ => Err(unsupported()),
    }
}

/// An operation node as Keras 3 writes it (in `.keras` and `.h5` alike): its tensor and its
/// number in order.
pub fn op_node_entry(spec: &Network, layer: &LayerSpec, op: &ScalarOp) -> Value {
    let source = layer.sources[0];
    let mut shape = vec![Value::Null];
    shape.extend(
        spec.shape_of(source)
            .keras_dims()
            .into_iter()
            .map(Value::from),
    );
    let tensor = json!({"class_name": "__keras_tensor__", "config": {
        "shape": shape, "dtype": "float32",
        "keras_history": [source_names(spec, layer)[0], 0, 0]}});
    let number = json!(op.value as f64);
    let args = match op.number_first {
        true => json!([number, tensor]),
        false => json!([tensor, number]),
    };
    json!({
        "module": "keras.src.ops.numpy", "class_name": op.op.keras_name(),
        "config": {"name": layer.name}, "registered_name": op.op.keras_name(),
        "name": layer.name, "inbound_nodes": [{"args": args, "kwargs": {}}]
    })
}

/// The one layer named by `input_layers` / `output_layers`: `["name", 0, 0]`, `[["name", 0,
/// 0]]` or Keras 3's dict form; several are refused (one input, one output).
fn endpoint(inner: &Value, key: &str) -> Result<Option<String>, String> {
    let v = match inner.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let list: Vec<&Value> = match v {
        Value::Array(a) if a.first().is_some_and(Value::is_string) => vec![v],
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        _ => Vec::new(),
    };
    match list.as_slice() {
        [one] => Ok(one
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(str::to_string)),
        [] => Err(format!("{key} {v} names no layer")),
        many => Err(format!(
            "{key} names {} layers: models with one input and one output are supported",
            many.len()
        )),
    }
}

/// Rebuilds the architecture from Keras' `model_config` JSON: a `Sequential`, or a graph
/// (`Functional`, older Keras' `Model`) in Keras 2's or Keras 3's serialisation.
pub fn network_from_config(config: &Value) -> Result<Network, ConfigError> {
    let top = |m: &str| ConfigError {
        layer: None,
        index: None,
        message: m.to_string(),
    };
    let class = config
        .get("class_name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let inner = &config["config"];
    let layers = inner
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| top("model_config has no layers"))?;
    match class {
        "Sequential" => sequential_from_layers(inner, layers),
        "Functional" | "Model" => functional_from_layers(inner, layers),
        _ => Err(top(&format!(
            "model class {class:?} is not supported (Sequential, Functional)"
        ))),
    }
}

/// A layer entry's class, config and name (its `name`, or its config's).
fn entry_parts(layer: &Value) -> (&str, &Value, Option<String>) {
    let class = layer
        .get("class_name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let cfg = &layer["config"];
    let name = cfg
        .get("name")
        .or_else(|| layer.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    (class, cfg, name)
}

fn sequential_from_layers(inner: &Value, layers: &[Value]) -> Result<Network, ConfigError> {
    let name = inner
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("sequential");
    let mut input = inner
        .get("build_input_shape")
        .and_then(|s| input_shape(&json!({"batch_input_shape": s})));
    let mut seq: Option<Network> = None;
    for (index, layer) in layers.iter().enumerate() {
        let (class, cfg, given_name) = entry_parts(layer);
        // A layer without a name gets Keras' default (`conv2d_1`, …) when it is added.
        let lname = given_name
            .clone()
            .unwrap_or_else(|| format!("{index} ({class})"));
        let err = |m: String| ConfigError {
            layer: Some(lname.clone()),
            index: Some(index),
            message: m,
        };
        if let Some(shape) = input_shape(cfg) {
            input = Some(shape);
        }
        if class == "InputLayer" {
            continue;
        }
        let kind = layer_kind(class, cfg, input_so_far(&seq, input)).map_err(err)?;
        let s = match seq.as_mut() {
            Some(s) => s,
            None => {
                let shape = input.ok_or_else(|| {
                    err("no input shape (batch_input_shape) before the first layer".into())
                })?;
                seq.insert(Network::new(name, shape))
            }
        };
        match given_name {
            Some(name) => s.add_named(name, kind),
            None => s.add(kind),
        }
        // The model's error names the layer itself.
        .map_err(|e| ConfigError {
            layer: None,
            index: Some(index),
            message: e.to_string(),
        })?;
        if cfg.get("trainable").and_then(Value::as_bool) == Some(false) {
            let added = s
                .layers()
                .last()
                .map(|l| l.name.clone())
                .unwrap_or_default();
            s.set_trainable(&added, false)
                .map_err(|e| err(e.to_string()))?;
        }
    }
    seq.ok_or_else(|| ConfigError {
        layer: None,
        index: None,
        message: "model_config has no layers".into(),
    })
}

/// A functional model: every layer entry with its inbound layers, put in an order where each
/// comes after what it takes (Keras' file order is one; a file need not be), the one input
/// layer first and the output layer last. Names that do not exist, cycles, layers that lead
/// nowhere and shapes that do not join are errors naming the layer.
/// A `Sequential` nested in a functional model (ConvNeXt's stem and downsampling layers)
/// flattened into it: its layers (each with the nested entry's position) chained, the first
/// taking what the nested model takes; the map renames the nested model to its last layer
/// for the layers that take it. A nested functional model is refused by name.
type Flattened = (Vec<(usize, Value)>, HashMap<String, String>);

fn flatten_nested(layers: &[Value]) -> Result<Flattened, ConfigError> {
    let mut out = Vec::with_capacity(layers.len());
    let mut renames = HashMap::new();
    for (index, layer) in layers.iter().enumerate() {
        let (class, cfg, name) = entry_parts(layer);
        let nested = cfg.get("layers").and_then(Value::as_array);
        match (class, nested) {
            ("Sequential", Some(inner)) => {
                let name = name.unwrap_or_default();
                let mut previous: Option<String> = None;
                for l in inner.iter().filter(|l| l["class_name"] != "InputLayer") {
                    let mut entry = l.clone();
                    let inner_name = entry_parts(l).2.ok_or_else(|| ConfigError {
                        layer: Some(name.clone()),
                        index: Some(index),
                        message: "a layer of the nested model has no name".into(),
                    })?;
                    entry["name"] = json!(inner_name);
                    entry["inbound_nodes"] = match &previous {
                        None => layer["inbound_nodes"].clone(),
                        Some(p) => json!([[[p, 0, 0, {}]]]),
                    };
                    previous = Some(inner_name);
                    out.push((index, entry));
                }
                let last = previous.ok_or_else(|| ConfigError {
                    layer: Some(name.clone()),
                    index: Some(index),
                    message: "the nested model has no layers".into(),
                })?;
                renames.insert(name, last);
            }
            ("Functional" | "Model", Some(_)) => {
                return Err(ConfigError {
                    layer: name,
                    index: Some(index),
                    message: "a functional model nested in the model is not supported".into(),
                })
            }
            _ => out.push((index, layer.clone())),
        }
    }
    Ok((out, renames))
}

fn functional_from_layers(inner: &Value, layers: &[Value]) -> Result<Network, ConfigError> {
    let (flat, renames) = flatten_nested(layers)?;
    let top = |m: String| ConfigError {
        layer: None,
        index: None,
        message: m,
    };
    let model_name = inner
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("functional");
    struct Entry<'a> {
        class: &'a str,
        cfg: &'a Value,
        name: String,
        inbound: Vec<String>,
        /// An operation node's kind (arithmetic on tensors, not a layer).
        op: Option<LayerKind>,
    }
    let mut entries = Vec::with_capacity(flat.len());
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut origin = Vec::with_capacity(flat.len());
    for (index, layer) in flat.iter() {
        let (index, layer) = (*index, layer);
        origin.push(index);
        let (class, cfg, name) = entry_parts(layer);
        let name = name.ok_or_else(|| ConfigError {
            layer: Some(class.to_string()),
            index: Some(index),
            message: "a layer of a functional model needs a name".into(),
        })?;
        let err = |m: String| ConfigError {
            layer: Some(name.clone()),
            index: Some(index),
            message: m,
        };
        let op = op_node(layer).map_err(err)?;
        let inbound: Vec<String> = inbound_names(layer)
            .map_err(err)?
            .into_iter()
            .map(|n| renames.get(&n).cloned().unwrap_or(n))
            .collect();
        if position.insert(name.clone(), entries.len()).is_some() {
            return Err(err("the name is used twice".into()));
        }
        entries.push(Entry {
            class,
            cfg,
            name,
            inbound,
            op,
        });
    }
    for (index, e) in entries.iter().enumerate() {
        if let Some(missing) = e.inbound.iter().find(|n| !position.contains_key(*n)) {
            return Err(ConfigError {
                layer: Some(e.name.clone()),
                index: Some(origin[index]),
                message: format!("takes layer {missing:?}, which the model does not have"),
            });
        }
    }
    let inputs: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].class == "InputLayer")
        .collect();
    let input = match inputs.as_slice() {
        [one] => *one,
        [] => return Err(top("the functional model has no InputLayer".into())),
        many => {
            return Err(top(format!(
                "the model has {} inputs ({}): models with one input are supported",
                many.len(),
                many.iter()
                    .map(|&i| entries[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    if let Some(named) = endpoint(inner, "input_layers").map_err(top)? {
        if named != entries[input].name {
            return Err(top(format!(
                "input_layers names {named:?}, which is not the model's InputLayer"
            )));
        }
    }
    // The output: the one `output_layers` names, or the one layer nothing takes.
    let output = match endpoint(inner, "output_layers").map_err(top)? {
        Some(name) => *position
            .get(renames.get(&name).unwrap_or(&name))
            .ok_or_else(|| {
                top(format!(
                    "output_layers names {name:?}, which the model does not have"
                ))
            })?,
        None => {
            let taken: std::collections::HashSet<&str> = entries
                .iter()
                .flat_map(|e| e.inbound.iter().map(String::as_str))
                .collect();
            let ends: Vec<usize> = (0..entries.len())
                .filter(|&i| !taken.contains(entries[i].name.as_str()))
                .collect();
            match ends.as_slice() {
                [one] => *one,
                _ => return Err(top("the model names no output layer (output_layers)".into())),
            }
        }
    };
    // Depth-first from the output: each layer after what it takes; a layer met again while
    // its own inputs are being visited closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; entries.len()];
    let mut stack = vec![(output, 0usize)];
    mark[output] = Mark::Open;
    while let Some((i, k)) = stack.pop() {
        match entries[i].inbound.get(k) {
            Some(name) => {
                stack.push((i, k + 1));
                let j = position[name];
                match mark[j] {
                    Mark::New => {
                        mark[j] = Mark::Open;
                        stack.push((j, 0));
                    }
                    Mark::Open => {
                        return Err(ConfigError {
                            layer: Some(entries[i].name.clone()),
                            index: Some(origin[i]),
                            message: format!("takes {name:?}, which depends on it: a cycle"),
                        })
                    }
                    Mark::Done => {}
                }
            }
            None => mark[i] = Mark::Done,
        }
    }
    if let Some(stray) = (0..entries.len()).find(|&i| mark[i] == Mark::New) {
        return Err(ConfigError {
            layer: Some(entries[stray].name.clone()),
            index: Some(origin[stray]),
            message: format!(
                "does not lead to the model's output {}",
                entries[output].name
            ),
        });
    }
    // Keep the file's order where it is already topological (Keras writes one): Kahn's
    // algorithm taking the earliest ready layer in file order (a heap: a graph from a file may
    // have 100 000 layers, listed in any order). Every layer leads to the output (checked
    // above), so the output comes last.
    let mut waiting: Vec<usize> = entries.iter().map(|e| e.inbound.len()).collect();
    let mut takers: Vec<Vec<usize>> = vec![Vec::new(); entries.len()];
    for (i, e) in entries.iter().enumerate() {
        for n in &e.inbound {
            takers[position[n]].push(i);
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..entries.len())
        .filter(|&i| waiting[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut sorted = Vec::with_capacity(entries.len());
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        sorted.push(i);
        for &t in &takers[i] {
            waiting[t] -= 1;
            if waiting[t] == 0 {
                ready.push(std::cmp::Reverse(t));
            }
        }
    }
    if sorted.len() != entries.len() {
        // Cannot happen after the walk above, which finds every cycle.
        return Err(top("the graph has a cycle".into()));
    }

    let input_entry = &entries[input];
    let shape = input_shape(input_entry.cfg).ok_or_else(|| ConfigError {
        layer: Some(input_entry.name.clone()),
        index: Some(origin[input]),
        message: "no input shape (batch_shape) or not an image or a vector".into(),
    })?;
    let mut net = Network::new(model_name, shape);
    let mut built: HashMap<&str, usize> = HashMap::new();
    for &i in &sorted {
        let e = &entries[i];
        let err = |m: String| ConfigError {
            layer: Some(e.name.clone()),
            index: Some(origin[i]),
            message: m,
        };
        let sources: Vec<Source> = match e.class {
            "InputLayer" => vec![Source::Input],
            _ if e.inbound.is_empty() => {
                return Err(err("takes nothing (no inbound_nodes)".into()))
            }
            _ => e
                .inbound
                .iter()
                .map(|n| Source::Layer(built[n.as_str()]))
                .collect(),
        };
        let kind = match (&e.op, e.class) {
            (Some(op), _) => op.clone(),
            (None, "InputLayer") => LayerKind::Input,
            (None, class) => {
                let first = Some(net.shape_of(sources[0]));
                layer_kind(class, e.cfg, first).map_err(err)?
            }
        };
        net.connect(e.name.clone(), kind, &sources)
            .map_err(|m| ConfigError {
                layer: None,
                index: Some(origin[i]),
                message: m.to_string(),
            })?;
        if e.cfg.get("trainable").and_then(Value::as_bool) == Some(false) {
            net.set_trainable(&e.name, false)
                .map_err(|m| err(m.to_string()))?;
        }
        built.insert(e.name.as_str(), net.layers().len() - 1);
    }
    net.set_functional(true);
    Ok(net)
}

/// How a weight of `layer` is laid out in Keras, relative to ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KerasLayout {
    Same,
    /// Conv kernel: ours `(out, in, kh, kw)`, Keras `(kh, kw, in, out)`.
    ConvKernel,
    /// Depthwise kernel: ours `(in · multiplier, 1, kh, kw)`, Keras `(kh, kw, in, multiplier)`.
    DepthwiseKernel {
        multiplier: usize,
    },
    /// First Dense after a Flatten of an image: rows in NCHW order for us, NHWC for Keras.
    FlattenedDense {
        channels: usize,
        height: usize,
        width: usize,
    },
}

/// The layout of each layer's kernel; biases are always the same.
pub fn kernel_layout(spec: &Network, index: usize) -> KerasLayout {
    let layers = spec.layers();
    match layers[index].kind {
        LayerKind::Conv2d(_) => KerasLayout::ConvKernel,
        LayerKind::Dense(_) => {
            // Walk back through what the Dense takes, over layers that keep the flat order
            // (Dropout), to a Flatten.
            let mut source = layers[index].sources.first().copied();
            while let Some(Source::Layer(j)) = source {
                let l = &layers[j];
                match l.kind {
                    LayerKind::Dropout(_) | LayerKind::Input => source = l.sources.first().copied(),
                    LayerKind::Flatten => {
                        if let FeatureShape::Image {
                            channels,
                            height,
                            width,
                        } = l.input
                        {
                            return KerasLayout::FlattenedDense {
                                channels,
                                height,
                                width,
                            };
                        }
                        return KerasLayout::Same;
                    }
                    _ => return KerasLayout::Same,
                }
            }
            KerasLayout::Same
        }
        _ => KerasLayout::Same,
    }
}

/// The layout of one of the model's weights: its layer's kernel layout, or `Same` for biases.
pub fn weight_layout(spec: &Network, weight: &simplecnn_model::NamedWeight) -> KerasLayout {
    match spec.layers().iter().position(|l| l.name == weight.layer) {
        Some(index) if weight.role == WeightRole::Kernel => kernel_layout(spec, index),
        Some(_) if weight.role == WeightRole::PointwiseKernel => KerasLayout::ConvKernel,
        Some(index) if weight.role == WeightRole::DepthwiseKernel => {
            let multiplier = match &spec.layers()[index].kind {
                LayerKind::DepthwiseConv2d(d) => d.depth_multiplier,
                LayerKind::SeparableConv2d(c) => c.depth_multiplier,
                _ => 1,
            };
            KerasLayout::DepthwiseKernel { multiplier }
        }
        _ => KerasLayout::Same,
    }
}

/// Our tensor → Keras' layout.
pub fn to_keras(t: &Tensor, layout: KerasLayout) -> candle_core::Result<Tensor> {
    match layout {
        KerasLayout::Same => Ok(t.clone()),
        KerasLayout::ConvKernel => t.permute((2, 3, 1, 0))?.contiguous(),
        KerasLayout::DepthwiseKernel { multiplier } => {
            let (out, _, kh, kw) = t.dims4()?;
            t.reshape((out / multiplier, multiplier, kh, kw))?
                .permute((2, 3, 0, 1))?
                .contiguous()
        }
        KerasLayout::FlattenedDense {
            channels,
            height,
            width,
        } => {
            let units = t.dim(1)?;
            t.reshape((channels, height, width, units))?
                .permute((1, 2, 0, 3))?
                .contiguous()?
                .reshape((height * width * channels, units))
        }
    }
}

/// Keras' layout → ours.
pub fn from_keras(t: &Tensor, layout: KerasLayout) -> candle_core::Result<Tensor> {
    match layout {
        KerasLayout::Same => Ok(t.clone()),
        KerasLayout::ConvKernel => t.permute((3, 2, 0, 1))?.contiguous(),
        KerasLayout::DepthwiseKernel { .. } => {
            let (kh, kw, inputs, multiplier) = t.dims4()?;
            t.permute((2, 3, 0, 1))?
                .contiguous()?
                .reshape((inputs * multiplier, 1, kh, kw))
        }
        KerasLayout::FlattenedDense {
            channels,
            height,
            width,
        } => {
            let units = t.dim(1)?;
            t.reshape((height, width, channels, units))?
                .permute((2, 0, 1, 3))?
                .contiguous()?
                .reshape((channels * height * width, units))
        }
    }
}

/// The shape Keras stores for a weight of ours with `dims`.
pub fn keras_dims(dims: &[usize], layout: KerasLayout) -> Vec<usize> {
    match (layout, dims) {
        (KerasLayout::ConvKernel, [o, i, kh, kw]) => vec![*kh, *kw, *i, *o],
        (KerasLayout::DepthwiseKernel { multiplier }, [o, _, kh, kw]) => {
            vec![*kh, *kw, o / multiplier.max(1), multiplier]
        }
        _ => dims.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use simplecnn_model::zoo;

    #[test]
    fn layouts_round_trip_and_flatten_permutes_rows() {
        let dev = Device::Cpu;
        let t = Tensor::arange(0f32, 2.0 * 3.0 * 2.0 * 4.0, &dev)
            .unwrap()
            .reshape((12, 4))
            .unwrap();
        let layout = KerasLayout::FlattenedDense {
            channels: 2,
            height: 3,
            width: 2,
        };
        let k = to_keras(&t, layout).unwrap();
        // Keras row for (h=0, w=1, c=1) is 0*2*2 + 1*2 + 1 = 3; ours is c*H*W + h*W + w = 6 + 0 + 1 = 7.
        assert_eq!(
            k.get(3).unwrap().to_vec1::<f32>().unwrap(),
            t.get(7).unwrap().to_vec1::<f32>().unwrap()
        );
        let back = from_keras(&k, layout).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());

        let conv = Tensor::arange(0f32, 2.0 * 3.0 * 3.0 * 3.0, &dev)
            .unwrap()
            .reshape((2, 3, 3, 3))
            .unwrap();
        let k = to_keras(&conv, KerasLayout::ConvKernel).unwrap();
        assert_eq!(k.dims(), &[3, 3, 3, 2]);
        assert_eq!(
            k.get(1)
                .unwrap()
                .get(2)
                .unwrap()
                .get(0)
                .unwrap()
                .get(1)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            conv.get(1)
                .unwrap()
                .get(0)
                .unwrap()
                .get(1)
                .unwrap()
                .get(2)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        );
        let back = from_keras(&k, KerasLayout::ConvKernel).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            conv.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn simple_cnn_kernel_layouts() {
        let spec = zoo::simple_cnn();
        let layouts: Vec<(String, KerasLayout)> = spec
            .layers()
            .iter()
            .enumerate()
            .filter(|(_, l)| l.param_count() > 0)
            .map(|(i, l)| (l.name.clone(), kernel_layout(&spec, i)))
            .collect();
        assert_eq!(layouts[0].1, KerasLayout::ConvKernel);
        assert_eq!(
            layouts[2].1,
            KerasLayout::FlattenedDense {
                channels: 64,
                height: 8,
                width: 8
            }
        );
        assert_eq!(layouts[3].1, KerasLayout::Same);
    }

    #[test]
    fn model_config_round_trips() {
        let spec = zoo::simple_cnn();
        let back = network_from_config(&model_config(&spec)).unwrap();
        assert_eq!(back.summary(), spec.summary());
    }

    #[test]
    fn trainable_flags_round_trip_and_count_as_non_trainable() {
        let mut spec = zoo::simple_cnn();
        spec.set_trainable("conv2d_1", false).unwrap();
        let config = model_config(&spec);
        let layers = config["config"]["layers"].as_array().unwrap();
        assert_eq!(layers[1]["config"]["trainable"], json!(false));
        assert_eq!(layers[2]["config"]["trainable"], json!(true));
        let back = network_from_config(&config).unwrap();
        assert!(!back.layers()[0].trainable && back.layers()[1].trainable);
        // conv2d_1: 3x3x3x32 + 32.
        assert_eq!(back.param_count() - back.trainable_param_count(), 896);
        assert!(back.summary().contains("Non-trainable params: 896"));
    }

    #[test]
    fn unsupported_layers_are_named() {
        let cfg = json!({"class_name": "Sequential", "config": {"name": "s", "layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [null, 8, 8, 3], "name": "in"}},
            {"class_name": "LSTM", "config": {"name": "lstm_1"}}]}});
        let e = network_from_config(&cfg).unwrap_err();
        assert!(
            e.to_string().contains("lstm_1") && e.to_string().contains("LSTM"),
            "{e}"
        );
    }
}
