//! A trained model as an ONNX graph, for ONNX Runtime and every other inference engine.
//!
//! The graph is the model's own computation: our layers run channels-first (NCHW) with
//! convolution kernels as `(out, in, kh, kw)` and a Flatten in NCHW order (the next Dense's rows
//! match it), which is ONNX's layout, so weights go in as they are. The input is what Keras'
//! export takes, a float32 `(batch, height, width, channels)` image (pixels scaled as the model
//! was trained: in [0, 1] for ours), transposed once; the batch dimension is dynamic; the
//! output is the class probabilities (a softmax is added to a model that ends in logits, as
//! `predict` does). Opset 17: GELU is written with `Erf` (ONNX's `Gelu` is
//! opset 20), BatchNormalization in its inference form, Dropout left out, Rescaling and
//! Normalization as `Mul`/`Add`/`Sub`/`Div`. A layer ONNX (or this exporter) cannot express
//! is one error naming it. ONNX's messages are generated from the official `onnx.proto` at
//! build time (protox + prost-build, no `protoc`).

use std::collections::HashMap;

use candle_core::Tensor;
use prost::Message;
use simplecnn_model::{
    Activation, FeatureShape, LayerKind, LayerSpec, Model, Padding, Pool2dConfig, ScalarOpKind,
    Source, WeightRole,
};

/// ONNX's messages, generated from `proto/onnx.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use proto::attribute_proto::AttributeType;
use proto::tensor_proto::DataType;
use proto::tensor_shape_proto::{dimension, Dimension};
use proto::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The operator set written (ONNX Runtime has run it since 1.14).
pub const OPSET: i64 = 17;
/// ONNX's IR version for opset 17.
const IR_VERSION: i64 = 8;
/// The graph's input and output names.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "probabilities";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A layer ONNX (or this exporter) cannot express.
    #[error("layer {layer} ({class}): {why}")]
    Unsupported {
        layer: String,
        class: String,
        why: String,
    },
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, ExportError>;

/// What goes in the file besides the graph.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions<'a> {
    /// The classes' names, in the model's output order: the `class_names` metadata entry
    /// (a JSON list).
    pub class_names: Option<&'a [String]>,
    /// Who made it (`producer_version`).
    pub producer_version: &'a str,
}

/// `model` as an ONNX file's bytes.
pub fn export(model: &Model, options: &ExportOptions<'_>) -> Result<Vec<u8>> {
    let spec = model.spec();
    let mut weights: HashMap<&str, Vec<(WeightRole, Tensor)>> = HashMap::new();
    for w in model.weights() {
        weights
            .entry(w.layer.as_str())
            .or_default()
            .push((w.role, w.var.as_tensor().detach()));
    }
    let input_shape = spec.input_shape();
    let FeatureShape::Image {
        channels,
        height,
        width,
    } = input_shape
    else {
        return Err(ExportError::Unsupported {
            layer: "input".into(),
            class: "InputLayer".into(),
            why: "the exporter takes image models".into(),
        });
    };
    let mut g = Graph::default();
    let first = g.node("Transpose", &[INPUT], vec![ints("perm", &[0, 3, 1, 2])]);
    let mut values: Vec<String> = vec![first];
    for layer in spec.layers() {
        let inputs: Vec<String> = layer
            .sources
            .iter()
            .map(|s| match s {
                Source::Input => values[0].clone(),
                Source::Layer(i) => values[i + 1].clone(),
            })
            .collect();
        let empty = Vec::new();
        let w = weights.get(layer.name.as_str()).unwrap_or(&empty);
        let out = LayerExport {
            layer,
            w,
            g: &mut g,
        }
        .emit(&inputs)
        .map_err(|why| match why {
            Why::Not(why) => ExportError::Unsupported {
                layer: layer.name.clone(),
                class: layer.kind.layer().class_name().to_string(),
                why,
            },
            Why::Tensor(e) => ExportError::Tensor(e),
        })?;
        values.push(out);
    }
    let mut last = values.last().expect("the input at least").clone();
    // The output is class probabilities, as `predict` gives them: a model that does not end in
    // a softmax (airbench94's scaled logits) gets one.
    if !ends_in_softmax(spec.layers().last()) {
        last = g.node("Softmax", &[&last], vec![int("axis", -1)]);
    }
    g.nodes.push(NodeProto {
        input: vec![last],
        output: vec![OUTPUT.into()],
        op_type: Some("Identity".into()),
        name: Some(OUTPUT.into()),
        ..Default::default()
    });
    let classes = spec.output_shape().elem_count() as i64;
    let batch = || dim_param("batch");
    let graph = GraphProto {
        name: Some(spec.name().to_string()),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![value_info(
            INPUT,
            vec![
                batch(),
                dim(height as i64),
                dim(width as i64),
                dim(channels as i64),
            ],
        )],
        output: vec![value_info(OUTPUT, vec![batch(), dim(classes)])],
        ..Default::default()
    };
    let mut metadata = vec![StringStringEntryProto {
        key: Some("input_layout".into()),
        value: Some("NHWC float32, pixels scaled as in training".into()),
    }];
    if let Some(names) = options.class_names {
        let json = format!(
            "[{}]",
            names
                .iter()
                .map(|n| format!("\"{}\"", n.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect::<Vec<_>>()
                .join(", ")
        );
        metadata.push(StringStringEntryProto {
            key: Some("class_names".into()),
            value: Some(json),
        });
    }
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("simplecnn".into()),
        producer_version: Some(options.producer_version.to_string()),
        graph: Some(graph),
        metadata_props: metadata,
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

fn ends_in_softmax(layer: Option<&LayerSpec>) -> bool {
    let activation = match layer.map(|l| &l.kind) {
        Some(LayerKind::Dense(d)) => d.activation,
        Some(LayerKind::Activation(a)) => a.activation,
        Some(LayerKind::Conv2d(c)) => c.activation,
        _ => return false,
    };
    activation == Activation::Softmax
}

fn dim(n: i64) -> Dimension {
    Dimension {
        value: Some(dimension::Value::DimValue(n)),
        ..Default::default()
    }
}

fn dim_param(name: &str) -> Dimension {
    Dimension {
        value: Some(dimension::Value::DimParam(name.into())),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: Vec<Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

/// The nodes and constants being written; every name made here is unique.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    count: usize,
}

impl Graph {
    fn fresh(&mut self, stem: &str) -> String {
        self.count += 1;
        format!("{stem}__{}", self.count)
    }

    /// A constant float32 tensor.
    fn constant(&mut self, stem: &str, dims: &[usize], values: &[f32]) -> String {
        let name = self.fresh(stem);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    /// A constant int64 tensor (shapes, pads).
    fn constant_i64(&mut self, stem: &str, values: &[i64]) -> String {
        let name = self.fresh(stem);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![values.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    /// A node of `op` on `inputs`, its output named after the op.
    fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let out = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(out.clone()),
            op_type: Some(op.into()),
            attribute,
            ..Default::default()
        });
        out
    }
}

/// Why a layer could not be written.
enum Why {
    Not(String),
    Tensor(candle_core::Error),
}

impl From<candle_core::Error> for Why {
    fn from(e: candle_core::Error) -> Self {
        Why::Tensor(e)
    }
}

fn not<T>(why: impl Into<String>) -> std::result::Result<T, Why> {
    Err(Why::Not(why.into()))
}

/// A weight's dims and its values, row-major.
type DimsAndValues = (Vec<usize>, Vec<f32>);

struct LayerExport<'a> {
    layer: &'a LayerSpec,
    w: &'a [(WeightRole, Tensor)],
    g: &'a mut Graph,
}

impl LayerExport<'_> {
    /// The layer's weight in `role`: its dims and values, if the layer has it.
    fn values(&self, role: WeightRole) -> std::result::Result<Option<DimsAndValues>, Why> {
        let Some((_, t)) = self.w.iter().find(|(r, _)| *r == role) else {
            return Ok(None);
        };
        Ok(Some((t.dims().to_vec(), t.flatten_all()?.to_vec1()?)))
    }

    fn stem(&self, role: WeightRole) -> String {
        format!("{}/{}", self.layer.name, role.keras_name())
    }

    /// The weight in `role` as a constant of its own shape.
    fn weight(&mut self, role: WeightRole) -> std::result::Result<Option<String>, Why> {
        let Some((dims, values)) = self.values(role)? else {
            return Ok(None);
        };
        let stem = self.stem(role);
        Ok(Some(self.g.constant(&stem, &dims, &values)))
    }

    /// A weight reshaped to broadcast over channels: `(1, C, 1, 1)` for an image, `(C)` for a
    /// vector.
    fn channel_weight(&mut self, role: WeightRole) -> std::result::Result<Option<String>, Why> {
        let Some((_, values)) = self.values(role)? else {
            return Ok(None);
        };
        let stem = self.stem(role);
        Ok(Some(self.per_channel(&stem, &values)))
    }

    /// Per-channel values as a `(1, C, 1, 1)` constant for an image, `(C)` for a vector; one
    /// value as a scalar.
    fn per_channel(&mut self, stem: &str, values: &[f32]) -> String {
        let is_image = matches!(self.layer.input, FeatureShape::Image { .. });
        match (values.len(), is_image) {
            (1, _) => self.g.constant(stem, &[], values),
            (c, true) => self.g.constant(stem, &[1, c, 1, 1], values),
            (c, false) => self.g.constant(stem, &[c], values),
        }
    }

    fn is_image(&self) -> bool {
        matches!(self.layer.output, FeatureShape::Image { .. })
    }

    fn activate(&mut self, x: String, act: Activation) -> std::result::Result<String, Why> {
        let image = self.is_image();
        let g = &mut *self.g;
        Ok(match act {
            Activation::Linear => x,
            Activation::Relu => g.node("Relu", &[&x], vec![]),
            Activation::Sigmoid => g.node("Sigmoid", &[&x], vec![]),
            Activation::Tanh => g.node("Tanh", &[&x], vec![]),
            Activation::Softmax if image => {
                return not("softmax over an image (only over a vector of classes)")
            }
            Activation::Softmax => g.node("Softmax", &[&x], vec![int("axis", -1)]),
            Activation::Gelu => {
                // 0.5 x (1 + erf(x / sqrt 2)).
                let r = g.constant("sqrt2", &[], &[std::f32::consts::SQRT_2]);
                let one = g.constant("one", &[], &[1.0]);
                let half = g.constant("half", &[], &[0.5]);
                let d = g.node("Div", &[&x, &r], vec![]);
                let e = g.node("Erf", &[&d], vec![]);
                let p = g.node("Add", &[&e, &one], vec![]);
                let m = g.node("Mul", &[&x, &p], vec![]);
                g.node("Mul", &[&m, &half], vec![])
            }
            Activation::Swish => {
                let s = g.node("Sigmoid", &[&x], vec![]);
                g.node("Mul", &[&x, &s], vec![])
            }
            Activation::Relu6 => relu_clip(g, &x, 6.0),
            Activation::HardSigmoid => hard_sigmoid(g, &x),
            Activation::HardSilu => {
                let h = hard_sigmoid(g, &x);
                g.node("Mul", &[&x, &h], vec![])
            }
        })
    }

    fn emit(mut self, inputs: &[String]) -> std::result::Result<String, Why> {
        let x = inputs.first().cloned().unwrap_or_default();
        let layer = self.layer;
        let image_in = match layer.input {
            FeatureShape::Image { height, width, .. } => Some((height, width)),
            FeatureShape::Flat(_) => None,
        };
        let out = match &layer.kind {
            LayerKind::Input | LayerKind::Dropout(_) | LayerKind::StochasticDepth(_) => {
                self.g.node("Identity", &[&x], vec![])
            }
            LayerKind::Flatten => self.g.node("Flatten", &[&x], vec![int("axis", 1)]),
            LayerKind::Conv2d(c) => {
                let group = c.groups.max(1);
                let y = self.conv(
                    &x,
                    WeightRole::Kernel,
                    (c.kernel_size, c.strides, c.padding),
                    group,
                    true,
                )?;
                self.activate(y, c.activation)?
            }
            LayerKind::DepthwiseConv2d(d) => {
                let group = layer.input.channels();
                let geometry = (d.kernel_size, d.strides, d.padding);
                let y = self.conv(&x, WeightRole::DepthwiseKernel, geometry, group, true)?;
                self.activate(y, d.activation)?
            }
            LayerKind::Dense(d) => {
                // On an image Dense acts on every pixel's channels: channels last for the
                // product, and back.
                let rows = match image_in {
                    Some(_) => self
                        .g
                        .node("Transpose", &[&x], vec![ints("perm", &[0, 2, 3, 1])]),
                    None => x.clone(),
                };
                let kernel = self.weight(WeightRole::Kernel)?.expect("a kernel");
                let y = self.g.node("MatMul", &[&rows, &kernel], vec![]);
                let y = match self.weight(WeightRole::Bias)? {
                    Some(b) => self.g.node("Add", &[&y, &b], vec![]),
                    None => y,
                };
                let y = match image_in {
                    Some(_) => self
                        .g
                        .node("Transpose", &[&y], vec![ints("perm", &[0, 3, 1, 2])]),
                    None => y,
                };
                self.activate(y, d.activation)?
            }
            LayerKind::SeparableConv2d(s) => {
                let group = layer.input.channels();
                let geometry = (s.kernel_size, s.strides, s.padding);
                let mid = self.conv(&x, WeightRole::DepthwiseKernel, geometry, group, false)?;
                let pointwise = ((1, 1), (1, 1), Padding::Valid);
                let y = self.conv(&mid, WeightRole::PointwiseKernel, pointwise, 1, true)?;
                self.activate(y, s.activation)?
            }
            LayerKind::LayerNorm(ln) => {
                // As the layer computes: over the channels (axis 1 of NCHW and of a vector).
                let mean = self.g.node("ReduceMean", &[&x], vec![ints("axes", &[1])]);
                let centred = self.g.node("Sub", &[&x, &mean], vec![]);
                let square = self.g.node("Mul", &[&centred, &centred], vec![]);
                let var = self
                    .g
                    .node("ReduceMean", &[&square], vec![ints("axes", &[1])]);
                let eps = self.g.constant("epsilon", &[], &[ln.epsilon]);
                let shifted = self.g.node("Add", &[&var, &eps], vec![]);
                let std = self.g.node("Sqrt", &[&shifted], vec![]);
                let mut y = self.g.node("Div", &[&centred, &std], vec![]);
                if let Some(gamma) = self.channel_weight(WeightRole::Gamma)? {
                    y = self.g.node("Mul", &[&y, &gamma], vec![]);
                }
                if let Some(beta) = self.channel_weight(WeightRole::Beta)? {
                    y = self.g.node("Add", &[&y, &beta], vec![]);
                }
                y
            }
            LayerKind::LayerScale(_) => {
                let gamma = self.channel_weight(WeightRole::Gamma)?.expect("gamma");
                self.g.node("Mul", &[&x, &gamma], vec![])
            }
            LayerKind::Cropping2d(c) => {
                let (h, w) = image_in.expect("cropping takes an image");
                let ((t, b), (l, r)) = c.cropping;
                let starts = self.g.constant_i64("starts", &[t as i64, l as i64]);
                let ends = self
                    .g
                    .constant_i64("ends", &[(h - b) as i64, (w - r) as i64]);
                let axes = self.g.constant_i64("axes", &[2, 3]);
                self.g.node("Slice", &[&x, &starts, &ends, &axes], vec![])
            }
            LayerKind::MaxPool2d(p) => self.pool("MaxPool", p, &x)?,
            LayerKind::AvgPool2d(p) => self.pool("AveragePool", p, &x)?,
            LayerKind::BatchNorm(bn) => {
                let c = layer.input.channels();
                let gamma = match self.weight(WeightRole::Gamma)? {
                    Some(g) => g,
                    None => self.g.constant("ones", &[c], &vec![1.0; c]),
                };
                let beta = match self.weight(WeightRole::Beta)? {
                    Some(b) => b,
                    None => self.g.constant("zeros", &[c], &vec![0.0; c]),
                };
                let mean = self.weight(WeightRole::MovingMean)?.expect("moving mean");
                let var = self
                    .weight(WeightRole::MovingVariance)?
                    .expect("moving variance");
                if image_in.is_none() {
                    return not("BatchNormalization of a vector is not exported yet");
                }
                self.g.node(
                    "BatchNormalization",
                    &[&x, &gamma, &beta, &mean, &var],
                    vec![float("epsilon", bn.epsilon)],
                )
            }
            LayerKind::GlobalAvgPool2d(p) => {
                let y = self.g.node("GlobalAveragePool", &[&x], vec![]);
                match p.keepdims {
                    true => y,
                    false => self.g.node("Flatten", &[&y], vec![int("axis", 1)]),
                }
            }
            LayerKind::GlobalMaxPool2d(p) => {
                let y = self.g.node("GlobalMaxPool", &[&x], vec![]);
                match p.keepdims {
                    true => y,
                    false => self.g.node("Flatten", &[&y], vec![int("axis", 1)]),
                }
            }
            LayerKind::Rescaling(r) => {
                let scale = self.per_channel("scale", &r.scale);
                let offset = self.per_channel("offset", &r.offset);
                let y = self.g.node("Mul", &[&x, &scale], vec![]);
                self.g.node("Add", &[&y, &offset], vec![])
            }
            LayerKind::Normalization(n) => {
                if n.invert {
                    return not("invert = true is not exported yet");
                }
                let (mean, variance): (Vec<f32>, Vec<f32>) = match &n.fixed {
                    Some((m, v)) => (m.clone(), v.clone()),
                    None => {
                        let get = |role| -> std::result::Result<Vec<f32>, Why> {
                            Ok(self.values(role)?.expect("learned statistics").1)
                        };
                        (get(WeightRole::Mean)?, get(WeightRole::Variance)?)
                    }
                };
                // As the layer computes: (x - mean) / max(sqrt(variance), epsilon).
                let std: Vec<f32> = variance
                    .iter()
                    .map(|v| v.sqrt().max(simplecnn_model::NORMALIZATION_EPSILON as f32))
                    .collect();
                let m = self.per_channel("mean", &mean);
                let s = self.per_channel("std", &std);
                let y = self.g.node("Sub", &[&x, &m], vec![]);
                self.g.node("Div", &[&y, &s], vec![])
            }
            LayerKind::Activation(a) => {
                let y = self.g.node("Identity", &[&x], vec![]);
                self.activate(y, a.activation)?
            }
            LayerKind::Relu(r) => {
                // As the layer computes: x from the threshold up, slope · (x - threshold)
                // below it, then capped at max_value.
                let y = match (r.negative_slope, r.threshold) {
                    (s, t) if s == 0.0 && t == 0.0 => self.g.node("Relu", &[&x], vec![]),
                    (s, t) => {
                        let tc = self.g.constant("threshold", &[], &[t]);
                        let sc = self.g.constant("slope", &[], &[s]);
                        let above = self.g.node("GreaterOrEqual", &[&x, &tc], vec![]);
                        let shifted = self.g.node("Sub", &[&x, &tc], vec![]);
                        let below = self.g.node("Mul", &[&shifted, &sc], vec![]);
                        self.g.node("Where", &[&above, &x, &below], vec![])
                    }
                };
                match r.max_value {
                    Some(m) => {
                        let mc = self.g.constant("max_value", &[], &[m]);
                        self.g.node("Min", &[&y, &mc], vec![])
                    }
                    None => y,
                }
            }
            LayerKind::Add | LayerKind::Multiply => {
                let op = match layer.kind {
                    LayerKind::Add => "Add",
                    _ => "Mul",
                };
                let mut acc = inputs[0].clone();
                for other in &inputs[1..] {
                    acc = self.g.node(op, &[&acc, other], vec![]);
                }
                acc
            }
            LayerKind::Concatenate => {
                let axis = match layer.output {
                    FeatureShape::Image { .. } => 1,
                    FeatureShape::Flat(_) => 1,
                };
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                self.g.node("Concat", &refs, vec![int("axis", axis)])
            }
            LayerKind::ZeroPadding2d(z) => {
                let ((t, b), (l, r)) = z.padding;
                let pads = self.g.constant_i64(
                    "pads",
                    &[0, 0, t as i64, l as i64, 0, 0, b as i64, r as i64],
                );
                self.g.node("Pad", &[&x, &pads], vec![])
            }
            LayerKind::ScalarOp(s) => {
                let v = self.g.constant("number", &[], &[s.value]);
                let op = match s.op {
                    ScalarOpKind::Add => "Add",
                    ScalarOpKind::Subtract => "Sub",
                    ScalarOpKind::Multiply => "Mul",
                    ScalarOpKind::Divide => "Div",
                };
                match s.number_first {
                    true => self.g.node(op, &[&v, &x], vec![]),
                    false => self.g.node(op, &[&x, &v], vec![]),
                }
            }
            LayerKind::Reshape(r) => {
                // Keras reshapes channels-last values: to NHWC, flat, to the target, to NCHW.
                let nhwc = match image_in {
                    Some(_) => self
                        .g
                        .node("Transpose", &[&x], vec![ints("perm", &[0, 2, 3, 1])]),
                    None => x.clone(),
                };
                let flat = self.g.node("Flatten", &[&nhwc], vec![int("axis", 1)]);
                match r.target {
                    FeatureShape::Image {
                        channels,
                        height,
                        width,
                    } => {
                        let shape = self.g.constant_i64(
                            "shape",
                            &[-1, height as i64, width as i64, channels as i64],
                        );
                        let y = self.g.node("Reshape", &[&flat, &shape], vec![]);
                        self.g
                            .node("Transpose", &[&y], vec![ints("perm", &[0, 3, 1, 2])])
                    }
                    FeatureShape::Flat(_) => flat,
                }
            }
        };
        // The layer's output carries its name, for a reader of the graph.
        let g = &mut *self.g;
        let last = g.nodes.last_mut().expect("a node was written");
        let free_name = layer.name != INPUT && layer.name != OUTPUT && !layer.name.contains("__");
        if last.output[0] == out && free_name {
            last.output[0] = layer.name.clone();
            return Ok(layer.name.clone());
        }
        Ok(g.node("Identity", &[&out], vec![]))
    }

    /// `[top, left, bottom, right]` for a window over this layer's input image.
    fn pads(&self, (kernel, strides, padding): Window) -> [i64; 4] {
        let FeatureShape::Image { height, width, .. } = self.layer.input else {
            unreachable!("windows slide over images")
        };
        let (_, t, b) = padding
            .output_len(height, kernel.0, strides.0)
            .expect("checked when built");
        let (_, l, r) = padding
            .output_len(width, kernel.1, strides.1)
            .expect("checked when built");
        [t as i64, l as i64, b as i64, r as i64]
    }

    /// A convolution of `x` with this layer's `kernel` weight (and its bias, if `bias`).
    fn conv(
        &mut self,
        x: &str,
        kernel: WeightRole,
        window: Window,
        group: usize,
        bias: bool,
    ) -> std::result::Result<String, Why> {
        let (size, strides, _) = window;
        let pads = self.pads(window);
        let mut ins = vec![x.to_string(), self.weight(kernel)?.expect("a kernel")];
        if bias {
            ins.extend(self.weight(WeightRole::Bias)?);
        }
        let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
        Ok(self.g.node(
            "Conv",
            &refs,
            vec![
                ints("kernel_shape", &[size.0 as i64, size.1 as i64]),
                ints("strides", &[strides.0 as i64, strides.1 as i64]),
                ints("pads", &pads),
                int("group", group as i64),
            ],
        ))
    }

    fn pool(&mut self, op: &str, p: &Pool2dConfig, x: &str) -> std::result::Result<String, Why> {
        let window = (p.pool_size, p.strides, p.padding);
        let mut attrs = vec![
            ints(
                "kernel_shape",
                &[p.pool_size.0 as i64, p.pool_size.1 as i64],
            ),
            ints("strides", &[p.strides.0 as i64, p.strides.1 as i64]),
            ints("pads", &self.pads(window)),
        ];
        if op == "AveragePool" {
            // Keras averages over the positions inside the image.
            attrs.push(int("count_include_pad", 0));
        }
        Ok(self.g.node(op, &[x], attrs))
    }
}

/// A sliding window: its size, strides and padding.
type Window = ((usize, usize), (usize, usize), Padding);

/// `min(max(x, 0), top)`.
fn relu_clip(g: &mut Graph, x: &str, top: f32) -> String {
    let lo = g.constant("zero", &[], &[0.0]);
    let hi = g.constant("top", &[], &[top]);
    g.node("Clip", &[x, &lo, &hi], vec![])
}

/// Keras 3's `relu6(x + 3) / 6`: ONNX's HardSigmoid with alpha 1/6, beta 1/2.
fn hard_sigmoid(g: &mut Graph, x: &str) -> String {
    g.node(
        "HardSigmoid",
        &[x],
        vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)],
    )
}
