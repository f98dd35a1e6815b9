//! The CPU fast path's plan: which layers [`crate::ops`] runs, which of them fuse, and the
//! image layout between steps, decided once when a model is built or its kernels are chosen
//! (not on every forward call).

use crate::error::{ModelError, Result};
use crate::layers::{Activation, Conv2dConfig, FeatureShape, LayerKind, Pool2dConfig};
use crate::ops::{self, ImageLayout};
use crate::sequential::{LayerSpec, Sequential};

/// One step of a forward pass; `layer` indexes [`Sequential::layers`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    /// The layer's own forward pass on candle's ops ([`crate::layers::Layer::forward`]).
    Layer(usize),
    /// Conv2D → MaxPool2D (→ Dropout) as one op: `layers` of them, from `layer`.
    ConvPool {
        layer: usize,
        layers: usize,
        block: ops::ConvPoolShape,
        dropout: Option<f32>,
    },
    /// A Conv2D with a linear or ReLU activation, taking and giving the layouts shown.
    Conv {
        layer: usize,
        shape: ops::ConvShape,
        relu: bool,
        layouts: (ImageLayout, ImageLayout),
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
    /// BatchNormalization, and the Activation layer after it when there is one (`layers` 2).
    BatchNorm {
        layer: usize,
        layers: usize,
        activation: ops::NormActivation,
    },
    Dropout {
        layer: usize,
        rate: f32,
    },
}

/// Every layer on candle's ops: what CUDA and [`crate::Kernels::Candle`] run.
pub(crate) fn candle_plan(spec: &Sequential) -> Vec<Step> {
    (0..spec.layers().len()).map(Step::Layer).collect()
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
        Activation::Softmax => None,
    }
}

/// Whether a Conv2D can take channels-last images: one with a linear or ReLU activation, on
/// its own or fused with its pool.
fn takes_channels_last(layer: Option<&LayerSpec>) -> bool {
    matches!(layer.map(|l| &l.kind), Some(LayerKind::Conv2d(c)) if fuses(c.activation))
}

fn layout_for(next: Option<&LayerSpec>) -> ImageLayout {
    match takes_channels_last(next) {
        true => ImageLayout::Nhwc,
        false => ImageLayout::Nchw,
    }
}

/// The steps for f32 on the CPU: Conv2D → MaxPool2D (→ Dropout) fused, single Conv2D,
/// MaxPool2D and Dropout layers on [`crate::ops`], everything else on candle's ops. Only a
/// Conv2D gives channels-last images, and only to a next Conv2D.
pub(crate) fn fast_plan(spec: &Sequential) -> Result<Vec<Step>> {
    let layers = spec.layers();
    let mut steps = Vec::new();
    let mut layout = ImageLayout::Nchw;
    let mut i = 0;
    while i < layers.len() {
        let l = &layers[i];
        let image = match l.input {
            FeatureShape::Image {
                channels,
                height,
                width,
            } => Some((channels, height, width)),
            FeatureShape::Flat(_) => None,
        };
        let (step, used, out_layout) = match (&l.kind, image) {
            (LayerKind::Dropout(d), _) => (
                Step::Dropout {
                    layer: i,
                    rate: d.rate,
                },
                1,
                ImageLayout::Nchw,
            ),
            (LayerKind::Conv2d(cfg), Some(chw)) if fuses(cfg.activation) => {
                let conv = conv_shape(l, cfg, chw)?;
                let relu = cfg.activation == Activation::Relu;
                match layers.get(i + 1).map(|p| (&p.kind, p)) {
                    Some((LayerKind::MaxPool2d(p), pool_layer)) => {
                        let pool = pool_shape(pool_layer, p, (conv.out_h, conv.out_w))?;
                        let (dropout, used) = match layers.get(i + 2).map(|l| &l.kind) {
                            Some(LayerKind::Dropout(d)) => (Some(d.rate), 3),
                            _ => (None, 2),
                        };
                        let output = layout_for(layers.get(i + used));
                        let block = ops::ConvPoolShape {
                            conv,
                            pool,
                            relu,
                            input: layout,
                            output,
                        };
                        let step = Step::ConvPool {
                            layer: i,
                            layers: used,
                            block,
                            dropout,
                        };
                        (step, used, output)
                    }
                    _ => {
                        let output = layout_for(layers.get(i + 1));
                        let step = Step::Conv {
                            layer: i,
                            shape: conv,
                            relu,
                            layouts: (layout, output),
                        };
                        (step, 1, output)
                    }
                }
            }
            (LayerKind::Conv2d(cfg), Some(chw)) => {
                let step = Step::ConvThen {
                    layer: i,
                    shape: conv_shape(l, cfg, chw)?,
                    activation: cfg.activation,
                };
                (step, 1, ImageLayout::Nchw)
            }
            (LayerKind::BatchNorm(_), _) => {
                let next = layers.get(i + 1).and_then(|n| match &n.kind {
                    LayerKind::Activation(a) => norm_activation(a.activation),
                    _ => None,
                });
                let step = Step::BatchNorm {
                    layer: i,
                    layers: 1 + next.is_some() as usize,
                    activation: next.unwrap_or(ops::NormActivation::Linear),
                };
                (step, 1 + next.is_some() as usize, ImageLayout::Nchw)
            }
            (LayerKind::MaxPool2d(p), Some((_, h, w))) => {
                let step = Step::MaxPool {
                    layer: i,
                    shape: pool_shape(l, p, (h, w))?,
                };
                (step, 1, ImageLayout::Nchw)
            }
            _ => (Step::Layer(i), 1, ImageLayout::Nchw),
        };
        if layout != ImageLayout::Nchw && !matches!(step, Step::Conv { .. } | Step::ConvPool { .. })
        {
            return Err(ModelError::Config(format!(
                "layer {}: internal error, channels-last input outside a convolution",
                l.name
            )));
        }
        steps.push(step);
        layout = out_layout;
        i += used;
    }
    Ok(steps)
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
        let plan = fast_plan(&zoo::simple_cnn()).unwrap();
        let kinds: Vec<String> = plan
            .iter()
            .map(|s| match s {
                Step::ConvPool { layers, block, .. } => {
                    format!("convpool{layers}:{:?}->{:?}", block.input, block.output)
                }
                Step::Layer(i) => format!("layer{i}"),
                Step::Dropout { .. } => "dropout".into(),
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
                "layer7",
                "dropout",
                "layer9"
            ]
        );
    }

    #[test]
    fn conv_chains_pass_channels_last() {
        let mut s = Sequential::new("m", FeatureShape::image(3, 8, 8));
        let conv = || LayerKind::conv2d(4, 3, crate::Padding::Same, Activation::Relu);
        s.add(conv()).unwrap().add(conv()).unwrap();
        s.add(LayerKind::max_pool(2)).unwrap();
        let plan = fast_plan(&s).unwrap();
        assert!(matches!(
            plan[0],
            Step::Conv {
                layouts: (ImageLayout::Nchw, ImageLayout::Nhwc),
                ..
            }
        ));
        assert!(matches!(
            plan[1],
            Step::ConvPool {
                block: ops::ConvPoolShape {
                    input: ImageLayout::Nhwc,
                    output: ImageLayout::Nchw,
                    ..
                },
                ..
            }
        ));
    }
}
