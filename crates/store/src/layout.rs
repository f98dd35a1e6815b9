//! Keras' names, JSON and tensor layouts for our layers: the mapping both ways.

use candle_core::Tensor;
use serde_json::{json, Value};
use simplecnn_model::{
    Activation, AveragePooling2D, BatchNormConfig, Conv2dConfig, DenseConfig, FanInScale,
    FeatureShape, Init, LayerKind, LayerSpec, MaxPooling2D, Padding, Pool2dConfig, RescalingConfig,
    Sequential, WeightRole,
};

/// The Keras version whose `.h5` layout we write (Keras 2.9's; Keras 3 reads it too).
pub const KERAS_FORMAT_VERSION: &str = "2.9.0";

/// Keras' config of a kernel initialiser.
fn initializer_config(init: Init) -> Value {
    match init {
        Init::FanInUniform(scale) => json!({"class_name": "VarianceScaling", "config": {
            "scale": scale.value(), "mode": "fan_in", "distribution": "uniform", "seed": null}}),
        Init::Zeros => json!({"class_name": "Zeros", "config": {}}),
        Init::Ones => json!({"class_name": "Ones", "config": {}}),
        Init::GlorotUniform => json!({"class_name": "GlorotUniform", "config": {"seed": null}}),
    }
}

/// Reads `kernel_initializer`: a name (`"glorot_uniform"`) or `{class_name, config}`.
fn kernel_initializer(cfg: &Value) -> Result<Init, String> {
    let Some(v) = cfg.get("kernel_initializer") else {
        return Ok(Init::GlorotUniform);
    };
    let (class, config) = match v {
        Value::String(s) => (s.as_str(), Value::Null),
        Value::Object(o) => (
            o.get("class_name").and_then(Value::as_str).unwrap_or(""),
            o.get("config").cloned().unwrap_or(Value::Null),
        ),
        _ => return Err("kernel_initializer must be a name or {class_name, config}".into()),
    };
    let fan_in = |scale: f64| {
        [FanInScale::Torch, FanInScale::Lecun, FanInScale::He]
            .into_iter()
            .find(|s| (s.value() - scale).abs() < 1e-6)
            .map(Init::FanInUniform)
    };
    let found = match class {
        "GlorotUniform" | "glorot_uniform" => Some(Init::GlorotUniform),
        "HeUniform" | "he_uniform" => fan_in(2.0),
        "LecunUniform" | "lecun_uniform" => fan_in(1.0),
        "VarianceScaling" | "variance_scaling" => {
            let get = |k: &str| config.get(k).and_then(Value::as_str);
            let uniform = get("distribution") == Some("uniform") && get("mode") == Some("fan_in");
            let scale = config.get("scale").and_then(Value::as_f64).unwrap_or(1.0);
            uniform.then(|| fan_in(scale)).flatten()
        }
        _ => None,
    };
    found.ok_or_else(|| {
        format!(
            "kernel_initializer {v} is not supported (glorot_uniform, he_uniform, \
             lecun_uniform, or VarianceScaling fan_in uniform with scale 1/3, 1 or 2)"
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
                    "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1,
                    "activation": c.activation.keras_name(), "use_bias": c.use_bias
                }),
            ),
            initializers(c.kernel_initializer),
        ),
        LayerKind::MaxPool2d(MaxPooling2D(p)) | LayerKind::AvgPool2d(AveragePooling2D(p)) => merge(
            base,
            json!({
                "pool_size": [p.pool_size.0, p.pool_size.1], "padding": "valid",
                "strides": [p.strides.0, p.strides.1], "data_format": "channels_last"
            }),
        ),
        LayerKind::Dropout(d) => merge(
            base,
            json!({"rate": d.rate as f64, "noise_shape": null, "seed": null}),
        ),
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
        LayerKind::GlobalAvgPool2d | LayerKind::GlobalMaxPool2d => merge(
            base,
            json!({"data_format": "channels_last", "keepdims": false}),
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
    json!({"class_name": layer.kind.class_name(), "config": config})
}

fn keras_batch_shape(shape: &FeatureShape) -> Value {
    let mut dims = vec![Value::Null];
    dims.extend(shape.keras_dims().into_iter().map(Value::from));
    Value::Array(dims)
}

/// `model_config`: a Keras 2.9 `Sequential` with an explicit `InputLayer`.
pub fn model_config(spec: &Sequential) -> Value {
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
fn input_so_far(seq: &Option<Sequential>, input: Option<FeatureShape>) -> Option<FeatureShape> {
    seq.as_ref().map(Sequential::output_shape).or(input)
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

/// Rebuilds the architecture from Keras' `model_config` JSON (Keras 2 or 3).
pub fn sequential_from_config(config: &Value) -> Result<Sequential, ConfigError> {
    let top = |m: &str| ConfigError {
        layer: None,
        index: None,
        message: m.to_string(),
    };
    let class = config
        .get("class_name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if class != "Sequential" {
        return Err(top(&format!(
            "model class {class:?} is not supported (only Sequential)"
        )));
    }
    let inner = &config["config"];
    let layers = inner
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| top("model_config has no layers"))?;
    let name = inner
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("sequential");
    let mut input = inner
        .get("build_input_shape")
        .and_then(|s| input_shape(&json!({"batch_input_shape": s})));
    let mut seq: Option<Sequential> = None;
    for (index, layer) in layers.iter().enumerate() {
        let class = layer
            .get("class_name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let cfg = &layer["config"];
        // A layer without a name gets Keras' default (`conv2d_1`, …) when it is added.
        let given_name = cfg.get("name").and_then(Value::as_str).map(str::to_string);
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
        if let Some(df) = cfg.get("data_format").and_then(Value::as_str) {
            if df != "channels_last" {
                return Err(err(format!("data_format {df} is not supported")));
            }
        }
        let kind = match class {
            "Conv2D" => {
                if pair(cfg, "dilation_rate")
                    .map_err(err)?
                    .is_some_and(|d| d != (1, 1))
                {
                    return Err(err("dilated convolutions are not supported".into()));
                }
                let padding = match cfg
                    .get("padding")
                    .and_then(Value::as_str)
                    .unwrap_or("valid")
                {
                    "same" => Padding::Same,
                    "valid" => Padding::Valid,
                    p => return Err(err(format!("padding {p:?} is not supported"))),
                };
                LayerKind::Conv2d(Conv2dConfig {
                    filters: size(cfg, "filters").map_err(err)?,
                    kernel_size: pair(cfg, "kernel_size")
                        .map_err(err)?
                        .ok_or_else(|| err("no kernel_size".into()))?,
                    strides: pair(cfg, "strides").map_err(err)?.unwrap_or((1, 1)),
                    padding,
                    activation: activation(cfg).map_err(err)?,
                    use_bias: use_bias(cfg),
                    kernel_initializer: kernel_initializer(cfg).map_err(err)?,
                })
            }
            "MaxPooling2D" | "AveragePooling2D" => {
                if cfg
                    .get("padding")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p != "valid")
                {
                    return Err(err(
                        "pooling with padding other than valid is not supported".into(),
                    ));
                }
                let pool_size = pair(cfg, "pool_size").map_err(err)?.unwrap_or((2, 2));
                let p = Pool2dConfig {
                    pool_size,
                    strides: pair(cfg, "strides").map_err(err)?.unwrap_or(pool_size),
                };
                if class == "MaxPooling2D" {
                    LayerKind::MaxPool2d(MaxPooling2D(p))
                } else {
                    LayerKind::AvgPool2d(AveragePooling2D(p))
                }
            }
            "Dropout" => {
                LayerKind::dropout(cfg.get("rate").and_then(Value::as_f64).unwrap_or(0.0) as f32)
            }
            "Flatten" => LayerKind::Flatten,
            "Activation" => LayerKind::Activation(simplecnn_model::ActivationConfig {
                activation: activation(cfg).map_err(err)?,
            }),
            "Rescaling" => {
                let numbers = |key: &str, default: f64| -> Result<Vec<f32>, ConfigError> {
                    match cfg.get(key) {
                        None => Ok(vec![default as f32]),
                        Some(Value::Number(n)) => Ok(vec![n.as_f64().unwrap_or(f64::NAN) as f32]),
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|v| v.as_f64().map(|x| x as f32))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| err(format!("{key} must be numbers"))),
                        Some(_) => Err(err(format!("{key} must be a number or a list of numbers"))),
                    }
                };
                LayerKind::Rescaling(RescalingConfig {
                    scale: numbers("scale", 1.0)?,
                    offset: numbers("offset", 0.0)?,
                })
            }
            "GlobalAveragePooling2D" | "GlobalMaxPooling2D" => {
                if cfg.get("keepdims").and_then(Value::as_bool) == Some(true) {
                    return Err(err(format!("{class} with keepdims=true is not supported")));
                }
                match class {
                    "GlobalAveragePooling2D" => LayerKind::GlobalAvgPool2d,
                    _ => LayerKind::GlobalMaxPool2d,
                }
            }
            "BatchNormalization" => {
                // Keras 2 writes the axis as 3 or [3] for NHWC images, Keras 3 as -1: all mean
                // the channels, the only axis we normalise over.
                let rank = match input_so_far(&seq, input) {
                    Some(FeatureShape::Image { .. }) => 4,
                    _ => 2,
                };
                let axis = match cfg.get("axis") {
                    Some(Value::Array(a)) if a.len() == 1 => a[0].as_i64(),
                    Some(v) => v.as_i64(),
                    None => Some(-1),
                };
                if !matches!(axis, Some(a) if a == -1 || a == rank - 1) {
                    return Err(err(format!("BatchNormalization over axis {axis:?} is not supported (only the channels)")));
                }
                let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(true);
                LayerKind::BatchNorm(BatchNormConfig {
                    epsilon: cfg.get("epsilon").and_then(Value::as_f64).unwrap_or(1e-3) as f32,
                    momentum: cfg.get("momentum").and_then(Value::as_f64).unwrap_or(0.99) as f32,
                    center: flag("center"),
                    scale: flag("scale"),
                })
            }
            "Dense" => LayerKind::Dense(DenseConfig {
                units: size(cfg, "units").map_err(err)?,
                activation: activation(cfg).map_err(err)?,
                use_bias: use_bias(cfg),
                kernel_initializer: kernel_initializer(cfg).map_err(err)?,
            }),
            other => return Err(err(format!("layer class {other} is not supported"))),
        };
        let s = match seq.as_mut() {
            Some(s) => s,
            None => {
                let shape = input.ok_or_else(|| {
                    err("no input shape (batch_input_shape) before the first layer".into())
                })?;
                seq.insert(Sequential::new(name, shape))
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
    seq.ok_or_else(|| top("model_config has no layers"))
}

/// How a weight of `layer` is laid out in Keras, relative to ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KerasLayout {
    Same,
    /// Conv kernel: ours `(out, in, kh, kw)`, Keras `(kh, kw, in, out)`.
    ConvKernel,
    /// First Dense after a Flatten of an image: rows in NCHW order for us, NHWC for Keras.
    FlattenedDense {
        channels: usize,
        height: usize,
        width: usize,
    },
}

/// The layout of each layer's kernel; biases are always the same.
pub fn kernel_layout(spec: &Sequential, index: usize) -> KerasLayout {
    let layers = spec.layers();
    match layers[index].kind {
        LayerKind::Conv2d(_) => KerasLayout::ConvKernel,
        LayerKind::Dense(_) => {
            // Walk back over layers that keep the flat order (Dropout) to a Flatten.
            for l in layers[..index].iter().rev() {
                match l.kind {
                    LayerKind::Dropout(_) | LayerKind::Input => continue,
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
pub fn weight_layout(spec: &Sequential, weight: &simplecnn_model::NamedWeight) -> KerasLayout {
    match spec.layers().iter().position(|l| l.name == weight.layer) {
        Some(index) if weight.role == WeightRole::Kernel => kernel_layout(spec, index),
        _ => KerasLayout::Same,
    }
}

/// Our tensor → Keras' layout.
pub fn to_keras(t: &Tensor, layout: KerasLayout) -> candle_core::Result<Tensor> {
    match layout {
        KerasLayout::Same => Ok(t.clone()),
        KerasLayout::ConvKernel => t.permute((2, 3, 1, 0))?.contiguous(),
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
        let back = sequential_from_config(&model_config(&spec)).unwrap();
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
        let back = sequential_from_config(&config).unwrap();
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
        let e = sequential_from_config(&cfg).unwrap_err();
        assert!(
            e.to_string().contains("lstm_1") && e.to_string().contains("LSTM"),
            "{e}"
        );
    }
}
