//! The CPU fast path's plan: which layers [`crate::ops`] runs, which of them fuse, and the
//! image layout between steps, decided once when a model is built or its kernels are chosen
//! (not on every forward call).

use crate::error::{ModelError, Result};
use crate::layers::{Activation, Conv2dConfig, FeatureShape, LayerKind, Pool2dConfig};
use crate::network::{LayerSpec, Network, Source};
use crate::ops::{self, ImageLayout};

/// What one step of a forward pass computes; `layer` indexes [`Network::layers`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    /// The layer's own forward pass on candle's ops ([`crate::layers::Layer::forward_all`]).
    Layer(usize),
    /// Conv2D → MaxPool2D (→ Dropout) as one op: `layers` of them, from `layer`.
    ConvPool {
        layer: usize,
        layers: usize,
        block: ops::ConvPoolShape,
        dropout: Option<f32>,
    },
    /// A Conv2D with a linear or ReLU activation, taking and giving the layouts shown; `norm`
    /// is the BatchNormalization that is its output's sole consumer, whose training
    /// statistics it sums while writing each image.
    Conv {
        layer: usize,
        shape: ops::ConvShape,
        relu: bool,
        layouts: (ImageLayout, ImageLayout),
        norm: Option<usize>,
    },
    /// A Conv2D whose activation (softmax, GELU) runs on candle's ops after the kernel.
    ConvThen {
        layer: usize,
        shape: ops::ConvShape,
        activation: Activation,
    },
    MaxPool {
        layer: usize,
        shape: ops::PoolShape,
    },
    /// BatchNormalization, and the Activation layer after it when there is one (`layers` 2),
    /// giving images in the layout it takes. With `join`, that Add (its output's only
    /// consumer, the other input the step's second) and the ReLU after it (`layers` 3) as
    /// [`ops::batch_norm_add_relu`]: a residual block's end.
    BatchNorm {
        layer: usize,
        layers: usize,
        activation: ops::NormActivation,
        layout: ImageLayout,
        join: Option<usize>,
    },
    Dropout {
        layer: usize,
        rate: f32,
    },
    /// A Dense layer on flat features on [`ops::dense`], its activation after on candle's ops.
    Dense {
        layer: usize,
        activation: Activation,
        precision: ops::Precision,
    },
    /// Add of two values of one shape → ReLU (an Activation layer, the Add's sole consumer) as
    /// [`ops::add_relu`]: a residual block's end.
    AddRelu {
        layer: usize,
    },
    /// A DepthwiseConv2D on [`ops::depthwise_conv2d`], its bias and activation after.
    Depthwise {
        layer: usize,
        shape: ops::DepthwiseShape,
    },
}

/// A value of the forward pass: the model's input (0) or layer `i`'s output (`i + 1`).
pub(crate) fn value_of(source: Source) -> usize {
    match source {
        Source::Input => 0,
        Source::Layer(i) => i + 1,
    }
}

/// One step: an op on values computed before, giving one value, after which the values whose
/// last use it was are released (so a graph holds only the tensors still needed).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Step {
    pub op: Op,
    pub inputs: Vec<usize>,
    pub output: usize,
    pub release: Vec<usize>,
}

/// Turns ops (with the values each takes and gives) into steps that release every value after
/// its last use; the model's output (the last value) is never released.
fn with_releases(ops: Vec<(Op, Vec<usize>, usize)>, values: usize) -> Vec<Step> {
    let mut last_use = vec![None; values];
    for (k, (_, inputs, _)) in ops.iter().enumerate() {
        for &v in inputs {
            last_use[v] = Some(k);
        }
    }
    let output = values - 1;
    ops.into_iter()
        .enumerate()
        .map(|(k, (op, inputs, out))| {
            let mut release: Vec<usize> = inputs
                .iter()
                .copied()
                .filter(|&v| last_use[v] == Some(k) && v != output)
                .collect();
            release.dedup();
            Step {
                op,
                inputs,
                output: out,
                release,
            }
        })
        .collect()
}

/// Every layer on candle's ops: what CUDA and [`crate::Kernels::Candle`] run.
pub(crate) fn candle_plan(spec: &Network) -> Vec<Step> {
    let ops = spec
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let inputs = l.sources.iter().map(|s| value_of(*s)).collect();
            (Op::Layer(i), inputs, i + 1)
        })
        .collect();
    with_releases(ops, spec.layers().len() + 1)
}

/// Activations the CPU kernels apply inside a convolution; others run after it on candle's ops.
fn fuses(a: Activation) -> bool {
    matches!(a, Activation::Linear | Activation::Relu)
}

/// The activations the BatchNormalization op applies itself.
fn norm_activation(a: Activation) -> Option<ops::NormActivation> {
    match a {
        Activation::Linear => Some(ops::NormActivation::Linear),
        Activation::Relu => Some(ops::NormActivation::Relu),
        Activation::Gelu => Some(ops::NormActivation::Gelu),
        _ => None,
    }
}

/// The one layer that takes layer `i`'s output, when it takes nothing else: the only case
/// where `i` may fuse with it or hand it channels-last images.
fn sole_consumer(spec: &Network, consumers: &[Vec<usize>], i: usize) -> Option<usize> {
    match consumers[i].as_slice() {
        [j] if spec.layers()[*j].sources == [Source::Layer(i)] => Some(*j),
        _ => None,
    }
}

/// The Add that alone takes BatchNormalization `i`'s output, with another value of the same
/// shape, and whose only consumer is a ReLU: `(add, relu)`, where the three fuse.
fn norm_join(spec: &Network, consumers: &[Vec<usize>], i: usize) -> Option<(usize, usize)> {
    let layers = spec.layers();
    let &[add] = consumers[i].as_slice() else {
        return None;
    };
    let sources = &layers[add].sources;
    let joins = matches!(layers[add].kind, LayerKind::Add)
        && sources.len() == 2
        && spec.shape_of(sources[0]) == spec.shape_of(sources[1])
        && sources.iter().filter(|&&s| s == Source::Layer(i)).count() == 1;
    let relu = sole_consumer(spec, consumers, add).filter(|&j| {
        matches!(&layers[j].kind, LayerKind::Activation(a) if a.activation == Activation::Relu)
    });
    let norm = matches!(layers[i].kind, LayerKind::BatchNorm(_));
    relu.filter(|_| norm && joins).map(|relu| (add, relu))
}

/// How an op treats the layout of the images it takes and gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LayoutRole {
    /// A convolution (with its pool): takes its first input and gives its output in any layout.
    Free,
    /// BatchNormalization, Add → ReLU: elementwise per channel, gives the layout it takes
    /// (every input alike).
    Through,
    /// Everything else: takes and gives NCHW.
    Nchw,
}

fn layout_role(op: &Op) -> LayoutRole {
    match op {
        Op::Conv { .. } | Op::ConvPool { .. } => LayoutRole::Free,
        Op::BatchNorm { .. } | Op::AddRelu { .. } => LayoutRole::Through,
        _ => LayoutRole::Nchw,
    }
}

/// Chooses every value's layout and writes it into the ops: channels-last wherever every op
/// that gives or takes the value can, so that no transpose is left between a convolution and
/// the next one through BatchNormalization and residual joins. An op that gives the layout it
/// takes ties its inputs and output into one class; a class is channels-last unless the
/// model's input or output or an NCHW-only op gives or takes one of its values.
fn assign_layouts(ops: &mut [(Op, Vec<usize>, usize)], values: usize) {
    let mut class: Vec<usize> = (0..values).collect();
    fn root(class: &[usize], mut v: usize) -> usize {
        while class[v] != v {
            v = class[v];
        }
        v
    }
    for (op, inputs, out) in ops.iter() {
        if layout_role(op) == LayoutRole::Through {
            for &v in inputs {
                let (a, b) = (root(&class, v), root(&class, *out));
                class[a] = b;
            }
        }
    }
    let mut channels_last = vec![true; values];
    channels_last[root(&class, 0)] = false;
    channels_last[root(&class, values - 1)] = false;
    for (op, inputs, out) in ops.iter() {
        let nchw: Vec<usize> = match layout_role(op) {
            LayoutRole::Free => inputs[1..].to_vec(),
            LayoutRole::Through => Vec::new(),
            LayoutRole::Nchw => inputs.iter().copied().chain([*out]).collect(),
        };
        for v in nchw {
            channels_last[root(&class, v)] = false;
        }
    }
    let layout = |v: usize| match channels_last[root(&class, v)] {
        true => ImageLayout::Nhwc,
        false => ImageLayout::Nchw,
    };
    for (op, inputs, out) in ops.iter_mut() {
        let (input, output) = (layout(inputs[0]), layout(*out));
        match op {
            Op::Conv { layouts, .. } => *layouts = (input, output),
            Op::ConvPool { block, .. } => (block.input, block.output) = (input, output),
            Op::BatchNorm { layout, .. } => *layout = input,
            _ => {}
        }
    }
}

/// The steps for f32 on the CPU, convolutions' products in `precision`: Conv2D → MaxPool2D (→
/// Dropout) fused, single Conv2D, BatchNormalization (→ activation), Add → ReLU, MaxPool2D,
/// Dropout and Dense layers on [`crate::ops`], everything else on candle's ops. A layer fuses
/// with the next only when that one is its output's sole consumer (a convolution whose output
/// also feeds a shortcut keeps it whole); layouts as [`assign_layouts`] chooses them.
pub(crate) fn fast_plan(spec: &Network, precision: ops::Precision) -> Result<Vec<Step>> {
    let layers = spec.layers();
    let consumers = spec.all_consumers();
    let sole = |i: usize| sole_consumer(spec, &consumers, i);
    // A BatchNormalization that fuses with the join after it runs where the join is, when
    // both of the join's inputs are computed: the join's Add → its normalisation.
    let joined_norm: Vec<Option<(usize, usize)>> = {
        let mut at_add = vec![None; layers.len()];
        for i in 0..layers.len() {
            if let Some((add, relu)) = norm_join(spec, &consumers, i) {
                at_add[add].get_or_insert((i, relu));
            }
        }
        at_add
    };
    // Layouts are chosen once every op is known; NCHW until then.
    let nchw = ImageLayout::Nchw;
    let mut done = vec![false; layers.len()];
    for (norm, _) in joined_norm.iter().flatten() {
        done[*norm] = true;
    }
    let mut ops = Vec::new();
    for i in 0..layers.len() {
        if done[i] {
            continue;
        }
        let l = &layers[i];
        let mut inputs: Vec<usize> = l.sources.iter().map(|s| value_of(*s)).collect();
        let image = match l.input {
            FeatureShape::Image {
                channels,
                height,
                width,
            } => Some((channels, height, width)),
            FeatureShape::Flat(_) => None,
        };
        // The op and the layers it covers (this one and the sole consumers it fuses).
        let (op, covered) = if let Some((norm, relu)) = joined_norm[i] {
            let residual = l.sources.iter().find(|&&s| s != Source::Layer(norm));
            inputs = [layers[norm].sources[0]]
                .iter()
                .chain(residual)
                .map(|s| value_of(*s))
                .collect();
            let op = Op::BatchNorm {
                layer: norm,
                layers: 3,
                activation: ops::NormActivation::Linear,
                layout: nchw,
                join: Some(i),
            };
            (op, vec![norm, i, relu])
        } else {
            match (&l.kind, image) {
                (LayerKind::Dropout(d), _) if !d.per_example => (
                    Op::Dropout {
                        layer: i,
                        rate: d.rate,
                    },
                    vec![i],
                ),
                (LayerKind::Conv2d(cfg), Some(chw)) if cfg.groups == 1 && fuses(cfg.activation) => {
                    let conv = conv_shape(l, cfg, chw)?.with_precision(precision);
                    let relu = cfg.activation == Activation::Relu;
                    let pool = sole(i).and_then(|j| match &layers[j].kind {
                        LayerKind::MaxPool2d(p) if p.padding == crate::Padding::Valid => {
                            Some((j, p))
                        }
                        _ => None,
                    });
                    match pool {
                        Some((j, p)) => {
                            let pool = pool_shape(&layers[j], p, (conv.out_h, conv.out_w))?;
                            let dropout = sole(j).and_then(|k| match &layers[k].kind {
                                LayerKind::Dropout(d) if !d.per_example => Some((k, d.rate)),
                                _ => None,
                            });
                            let mut covered = vec![i, j];
                            covered.extend(dropout.map(|(k, _)| k));
                            let block = ops::ConvPoolShape {
                                conv,
                                pool,
                                relu,
                                input: nchw,
                                output: nchw,
                            };
                            let op = Op::ConvPool {
                                layer: i,
                                layers: covered.len(),
                                block,
                                dropout: dropout.map(|(_, rate)| rate),
                            };
                            (op, covered)
                        }
                        None => {
                            let norm = sole(i)
                                .filter(|&j| matches!(layers[j].kind, LayerKind::BatchNorm(_)));
                            let op = Op::Conv {
                                layer: i,
                                shape: conv,
                                relu,
                                layouts: (nchw, nchw),
                                norm,
                            };
                            (op, vec![i])
                        }
                    }
                }
                (LayerKind::Conv2d(cfg), Some(chw)) if cfg.groups == 1 => {
                    let op = Op::ConvThen {
                        layer: i,
                        shape: conv_shape(l, cfg, chw)?.with_precision(precision),
                        activation: cfg.activation,
                    };
                    (op, vec![i])
                }
                (LayerKind::BatchNorm(_), _) => {
                    let next = sole(i).and_then(|j| match &layers[j].kind {
                        LayerKind::Activation(a) => norm_activation(a.activation).map(|a| (j, a)),
                        _ => None,
                    });
                    let mut covered = vec![i];
                    covered.extend(next.map(|(j, _)| j));
                    let op = Op::BatchNorm {
                        layer: i,
                        layers: covered.len(),
                        activation: next.map_or(ops::NormActivation::Linear, |(_, a)| a),
                        layout: nchw,
                        join: None,
                    };
                    (op, covered)
                }
                (LayerKind::Add, _)
                    if l.sources.len() == 2
                        && spec.shape_of(l.sources[0]) == spec.shape_of(l.sources[1]) =>
                {
                    let relu = sole(i).filter(|&j| {
                    matches!(&layers[j].kind, LayerKind::Activation(a) if a.activation == Activation::Relu)
                });
                    match relu {
                        Some(j) => (Op::AddRelu { layer: i }, vec![i, j]),
                        None => (Op::Layer(i), vec![i]),
                    }
                }
                (LayerKind::Dense(d), None) => {
                    let op = Op::Dense {
                        layer: i,
                        activation: d.activation,
                        precision,
                    };
                    (op, vec![i])
                }
                (LayerKind::DepthwiseConv2d(d), Some((c, h, w))) => {
                    let ((out_h, pad_top, _), (out_w, pad_left, _)) = d
                        .as_conv()
                        .geometry(h, w)
                        .ok_or_else(|| ModelError::Shape {
                            layer: l.name.clone(),
                            message: format!("input {h}x{w} is too small"),
                        })?;
                    let shape = ops::DepthwiseShape {
                        channels: c,
                        multiplier: d.depth_multiplier,
                        in_h: h,
                        in_w: w,
                        kernel: d.kernel_size,
                        strides: d.strides,
                        pad_top,
                        pad_left,
                        out_h,
                        out_w,
                    };
                    (Op::Depthwise { layer: i, shape }, vec![i])
                }
                (LayerKind::MaxPool2d(p), Some((_, h, w)))
                    if p.padding == crate::Padding::Valid =>
                {
                    let op = Op::MaxPool {
                        layer: i,
                        shape: pool_shape(l, p, (h, w))?,
                    };
                    (op, vec![i])
                }
                _ => (Op::Layer(i), vec![i]),
            }
        };
        let last = *covered.last().unwrap_or(&i);
        for &c in &covered {
            done[c] = true;
        }
        ops.push((op, inputs, last + 1));
    }
    assign_layouts(&mut ops, layers.len() + 1);
    Ok(with_releases(ops, layers.len() + 1))
}

/// The geometry [`crate::ops`] needs for a Conv2D layer on input `(c, h, w)`.
fn conv_shape(
    layer: &LayerSpec,
    cfg: &Conv2dConfig,
    (c, h, w): (usize, usize, usize),
) -> Result<ops::ConvShape> {
    cfg.geometry(h, w)
        .and_then(|((_, top, bottom), (_, left, right))| {
            ops::ConvShape::new(
                (c, h, w),
                cfg.filters,
                cfg.kernel_size,
                cfg.strides,
                ((top, bottom), (left, right)),
            )
        })
        .ok_or_else(|| ModelError::Shape {
            layer: layer.name.clone(),
            message: format!("input (C, H, W) = ({c}, {h}, {w}) is too small"),
        })
}

fn pool_shape(
    layer: &LayerSpec,
    cfg: &Pool2dConfig,
    (h, w): (usize, usize),
) -> Result<ops::PoolShape> {
    ops::PoolShape::new((h, w), cfg.pool_size, cfg.strides).ok_or_else(|| ModelError::Shape {
        layer: layer.name.clone(),
        message: format!("input {h}x{w} is smaller than the pool"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo;

    #[test]
    fn simple_cnn_fuses_both_blocks_which_pass_channels_last_between_them() {
        let plan = fast_plan(&zoo::simple_cnn(), ops::Precision::F32).unwrap();
        let kinds: Vec<String> = plan
            .iter()
            .map(|s| match &s.op {
                Op::ConvPool { layers, block, .. } => {
                    format!("convpool{layers}:{:?}->{:?}", block.input, block.output)
                }
                Op::Layer(i) => format!("layer{i}"),
                Op::Dropout { .. } => "dropout".into(),
                Op::Dense { layer, .. } => format!("dense{layer}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "convpool3:Nchw->Nhwc",
                "convpool2:Nhwc->Nchw",
                "layer5",
                "dropout",
                "dense7",
                "dropout",
                "dense9"
            ]
        );
    }

    #[test]
    fn conv_chains_pass_channels_last() {
        let mut s = Network::new("m", FeatureShape::image(3, 8, 8));
        let conv = || LayerKind::conv2d(4, 3, crate::Padding::Same, Activation::Relu);
        s.add(conv()).unwrap().add(conv()).unwrap();
        s.add(LayerKind::max_pool(2)).unwrap();
        let plan = fast_plan(&s, ops::Precision::F32).unwrap();
        assert!(matches!(
            plan[0].op,
            Op::Conv {
                layouts: (ImageLayout::Nchw, ImageLayout::Nhwc),
                ..
            }
        ));
        assert!(matches!(
            plan[1].op,
            Op::ConvPool {
                block: ops::ConvPoolShape {
                    input: ImageLayout::Nhwc,
                    output: ImageLayout::Nchw,
                    ..
                },
                ..
            }
        ));
    }

    /// A ResNet block: conv → BN → ReLU → conv → BN, added to the block's input, ReLU.
    fn residual_block() -> Network {
        let mut s = Network::new("res", FeatureShape::image(4, 8, 8));
        let conv = || LayerKind::conv2d(4, 3, crate::Padding::Same, Activation::Linear);
        let bn = || LayerKind::BatchNorm(crate::BatchNormConfig::default());
        let relu = || {
            LayerKind::Activation(crate::ActivationConfig {
                activation: Activation::Relu,
            })
        };
        s.add_named("stem", conv()).unwrap();
        s.add_named("c1", conv())
            .unwrap()
            .add(bn())
            .unwrap()
            .add(relu())
            .unwrap();
        s.add_named("c2", conv())
            .unwrap()
            .add_named("b2", bn())
            .unwrap();
        s.connect(
            "join",
            LayerKind::Add,
            &[Source::Layer(0), Source::Layer(5)],
        )
        .unwrap();
        s.add(relu()).unwrap();
        s
    }

    /// Two stages of a ResNet: a stem, a basic block, a stride-2 block with a 1x1 projection
    /// on its shortcut, then Flatten → Dense.
    fn two_stages() -> Network {
        let mut s = Network::new("res", FeatureShape::image(3, 8, 8));
        let conv = |filters, kernel, stride| {
            let mut k =
                LayerKind::conv2d(filters, kernel, crate::Padding::Same, Activation::Linear);
            if let LayerKind::Conv2d(c) = &mut k {
                c.strides = (stride, stride);
            }
            k
        };
        let bn = || LayerKind::BatchNorm(crate::BatchNormConfig::default());
        let relu = || {
            LayerKind::Activation(crate::ActivationConfig {
                activation: Activation::Relu,
            })
        };
        let at = |s: &Network, name: &str| Source::Layer(s.index_of(name).unwrap());
        s.add_named("stem", conv(4, 3, 1)).unwrap();
        s.add_named("stem_bn", bn()).unwrap();
        s.add_named("stem_relu", relu()).unwrap();
        s.add_named("a_conv1", conv(4, 3, 1)).unwrap();
        s.add_named("a_bn1", bn()).unwrap();
        s.add_named("a_relu1", relu()).unwrap();
        s.add_named("a_conv2", conv(4, 3, 1)).unwrap();
        s.add_named("a_bn2", bn()).unwrap();
        let (x, y) = (at(&s, "stem_relu"), at(&s, "a_bn2"));
        s.connect("a_add", LayerKind::Add, &[x, y]).unwrap();
        s.add_named("a_out", relu()).unwrap();
        s.add_named("b_conv1", conv(8, 3, 2)).unwrap();
        s.add_named("b_bn1", bn()).unwrap();
        s.add_named("b_relu1", relu()).unwrap();
        s.add_named("b_conv2", conv(8, 3, 1)).unwrap();
        s.add_named("b_bn2", bn()).unwrap();
        let a_out = at(&s, "a_out");
        s.connect("b_shortcut", conv(8, 1, 2), &[a_out]).unwrap();
        let (x, y) = (at(&s, "b_shortcut"), at(&s, "b_bn2"));
        s.connect("b_add", LayerKind::Add, &[x, y]).unwrap();
        s.add_named("b_out", relu()).unwrap();
        s.add(LayerKind::Flatten).unwrap();
        s.add(LayerKind::dense(3, Activation::Softmax)).unwrap();
        s
    }

    /// Values stay channels-last through BatchNormalization and residual joins wherever every
    /// op giving or taking them can; the stage that reaches Flatten is NCHW throughout its
    /// residual stream, and its convolutions transpose at their output.
    #[test]
    fn residual_streams_stay_channels_last_up_to_an_op_that_needs_nchw() {
        let spec = two_stages();
        let plan = fast_plan(&spec, ops::Precision::F32).unwrap();
        let name = |i: usize| spec.layers()[i].name.clone();
        let (nchw, nhwc) = (ImageLayout::Nchw, ImageLayout::Nhwc);
        let mut layouts: Vec<(String, ImageLayout, ImageLayout)> = Vec::new();
        let mut joins = Vec::new();
        for step in &plan {
            match &step.op {
                Op::Conv {
                    layer, layouts: l, ..
                } => layouts.push((name(*layer), l.0, l.1)),
                Op::BatchNorm {
                    layer,
                    layout,
                    join,
                    ..
                } => {
                    layouts.push((name(*layer), *layout, *layout));
                    joins.extend(join.map(name));
                }
                Op::AddRelu { layer } => joins.push(name(*layer)),
                _ => {}
            }
        }
        let expect = |n: &str, i, o| (n.to_string(), i, o);
        assert_eq!(
            layouts,
            [
                expect("stem", nchw, nhwc),
                expect("stem_bn", nhwc, nhwc),
                expect("a_conv1", nhwc, nhwc),
                expect("a_bn1", nhwc, nhwc),
                expect("a_conv2", nhwc, nhwc),
                expect("a_bn2", nhwc, nhwc),
                expect("b_conv1", nhwc, nhwc),
                expect("b_bn1", nhwc, nhwc),
                expect("b_conv2", nhwc, nchw),
                // The block's last normalisation runs with its join, after the shortcut.
                expect("b_shortcut", nhwc, nchw),
                expect("b_bn2", nchw, nchw),
            ]
        );
        assert_eq!(joins, ["a_add", "b_add"]);
    }

    /// A convolution sums its output for the BatchNormalization that alone takes it; the
    /// projection shortcut, which feeds the join, sums nothing.
    #[test]
    fn convolutions_sum_their_output_for_the_batch_norm_after_them() {
        let spec = two_stages();
        let plan = fast_plan(&spec, ops::Precision::F32).unwrap();
        let name = |i: usize| spec.layers()[i].name.clone();
        let sums: Vec<(String, Option<String>)> = plan
            .iter()
            .filter_map(|s| match &s.op {
                Op::Conv { layer, norm, .. } => Some((name(*layer), norm.map(name))),
                _ => None,
            })
            .collect();
        let with = |c: &str, n: Option<&str>| (c.to_string(), n.map(str::to_string));
        assert_eq!(
            sums,
            [
                with("stem", Some("stem_bn")),
                with("a_conv1", Some("a_bn1")),
                with("a_conv2", Some("a_bn2")),
                with("b_conv1", Some("b_bn1")),
                with("b_conv2", Some("b_bn2")),
                with("b_shortcut", None),
            ]
        );
    }

    #[test]
    fn a_convolution_feeding_a_shortcut_neither_fuses_nor_goes_channels_last() {
        let spec = residual_block();
        assert!(spec.is_functional() && !spec.is_chain());
        let plan = fast_plan(&spec, ops::Precision::F32).unwrap();
        // stem's output goes to c1 and to the join: it stays whole and NCHW.
        assert!(matches!(
            plan[0].op,
            Op::Conv {
                layer: 0,
                layouts: (ImageLayout::Nchw, ImageLayout::Nchw),
                ..
            }
        ));
        // The first BatchNormalization fuses the ReLU after it (its sole consumer); the
        // block's last fuses the join it alone feeds and the ReLU after that.
        let norms: Vec<usize> = plan
            .iter()
            .filter_map(|s| match s.op {
                Op::BatchNorm { layers, .. } => Some(layers),
                _ => None,
            })
            .collect();
        assert_eq!(norms, [2, 3]);
        // b2, the join and the ReLU are one op on c2's output and the shortcut, giving the output.
        let join = plan
            .iter()
            .find(|s| matches!(s.op, Op::BatchNorm { join: Some(6), .. }))
            .unwrap();
        assert_eq!(join.inputs, [5, 1]);
        assert_eq!(join.output, 8);
        // The join is the last use of c2's output and of the stem's: both are released there.
        assert_eq!(join.release, [5, 1]);
        // The model's output is never released.
        assert!(plan.iter().all(|s| !s.release.contains(&8)));
    }
}
