//! `Sequential`: an ordered stack of layers with inferred shapes, Keras' default names,
//! `summary()` and a Graphviz view. It holds no weights (see [`crate::Model`]), so even
//! VGG-16's table costs nothing to print.

use std::collections::HashMap;
use std::fmt::Write;

use crate::error::{ModelError, Result};
use crate::layers::{FeatureShape, LayerKind};

/// The most values one tensor of a layer may hold (a weight, or one image's output): 2^28,
/// 1 GiB of f32 (VGG-16's largest weight has 103 M). Sizes in a model file are checked against
/// it before anything is allocated; `SIMPLECNN_MAX_TENSOR_ELEMENTS` raises it.
pub const DEFAULT_MAX_TENSOR_ELEMENTS: u64 = 1 << 28;

/// The element limit in force: `SIMPLECNN_MAX_TENSOR_ELEMENTS`, else the default.
pub fn max_tensor_elements() -> u64 {
    std::env::var("SIMPLECNN_MAX_TENSOR_ELEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_TENSOR_ELEMENTS)
}

fn shape_dims(shape: &FeatureShape) -> Vec<usize> {
    match *shape {
        FeatureShape::Image {
            channels,
            height,
            width,
        } => vec![height, width, channels],
        FeatureShape::Flat(n) => vec![n],
    }
}

/// A tensor of `dims` within the element limit (checked arithmetic), or why not: "of A x B = N
/// values is over the limit …", for the caller to put after what the tensor is. Every size
/// that comes from a file goes through here before it is allocated.
pub fn check_element_limit(dims: &[usize]) -> std::result::Result<(), String> {
    let limit = max_tensor_elements();
    let count = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    match count {
        Some(n) if n <= limit => Ok(()),
        n => Err(format!(
            "of {} = {} values is over the limit of {limit} values per tensor \
             (SIMPLECNN_MAX_TENSOR_ELEMENTS raises it)",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" x "),
            n.map_or("more than 2^64".to_string(), |n| n.to_string())
        )),
    }
}

/// `what` of layer `name`, of `dims`, within the element limit.
fn check_size(name: &str, what: &str, dims: &[usize]) -> Result<()> {
    check_element_limit(dims).map_err(|why| ModelError::Shape {
        layer: name.to_string(),
        message: format!("{what} {why}"),
    })
}

/// One layer in a [`Sequential`]: its name, kind and the shapes around it.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    pub name: String,
    pub kind: LayerKind,
    pub input: FeatureShape,
    pub output: FeatureShape,
    /// Keras' `layer.trainable`: false freezes every weight of the layer, and a
    /// BatchNormalization then runs in inference mode even while the rest trains.
    pub trainable: bool,
}

impl LayerSpec {
    pub fn param_count(&self) -> usize {
        self.kind.param_count(&self.input)
    }

    pub fn trainable_param_count(&self) -> usize {
        match self.trainable {
            true => self.kind.trainable_param_count(&self.input),
            false => 0,
        }
    }
}

/// A linear stack of layers, as Keras' `Sequential`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequential {
    name: String,
    input: FeatureShape,
    layers: Vec<LayerSpec>,
    name_counts: HashMap<&'static str, usize>,
}

impl Sequential {
    /// An empty model taking examples of shape `input`.
    pub fn new(name: impl Into<String>, input: FeatureShape) -> Self {
        Self {
            name: name.into(),
            input,
            layers: Vec::new(),
            name_counts: HashMap::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn input_shape(&self) -> FeatureShape {
        self.input
    }

    pub fn output_shape(&self) -> FeatureShape {
        self.layers.last().map_or(self.input, |l| l.output)
    }

    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// Adds a layer with Keras' default name (`conv2d_1`, `conv2d_2`, `dense_1`, …).
    pub fn add(&mut self, kind: LayerKind) -> Result<&mut Self> {
        // Only default-named layers advance the counter, as in Keras; skip names taken by hand.
        let stem = kind.default_name_stem();
        let count = self.name_counts.entry(stem).or_insert(0);
        let name = loop {
            *count += 1;
            let name = format!("{stem}_{count}");
            if !self.layers.iter().any(|l| l.name == name) {
                break name;
            }
        };
        self.add_named(name, kind)
    }

    /// Adds a layer with the given name (names must be unique).
    pub fn add_named(&mut self, name: impl Into<String>, kind: LayerKind) -> Result<&mut Self> {
        let name = name.into();
        if self.layers.iter().any(|l| l.name == name) {
            return Err(ModelError::Config(format!(
                "layer name {name} is used twice"
            )));
        }
        let input = self.output_shape();
        if self.layers.is_empty() {
            check_size(&name, "the model's input", &shape_dims(&input))?;
        }
        let output = kind.output_shape(&name, &input)?;
        check_size(&name, "its output", &shape_dims(&output))?;
        for w in kind.weights(&input) {
            check_size(&name, w.role.keras_name(), &w.shape)?;
        }
        self.layers.push(LayerSpec {
            name,
            kind,
            input,
            output,
            trainable: true,
        });
        Ok(self)
    }

    /// Sets Keras' `trainable` flag of layer `name` (see [`LayerSpec::trainable`]).
    pub fn set_trainable(&mut self, name: &str, trainable: bool) -> Result<()> {
        let layer = self
            .layers
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| ModelError::Config(format!("no layer {name}")))?;
        layer.trainable = trainable;
        Ok(())
    }

    pub fn param_count(&self) -> usize {
        self.layers.iter().map(LayerSpec::param_count).sum()
    }

    /// Multiply-adds of one example's forward pass through the convolutions and dense layers.
    pub fn forward_macs(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.kind.layer().forward_macs(&l.input, &l.output))
            .sum()
    }

    pub fn trainable_param_count(&self) -> usize {
        self.layers
            .iter()
            .map(LayerSpec::trainable_param_count)
            .sum()
    }

    /// Keras' `model.summary()` table (Keras 2 layout: 65 columns, type names cut to fit).
    pub fn summary(&self) -> String {
        const WIDTH: usize = 65;
        const POSITIONS: [usize; 3] = [29, 55, 65];
        fn row(fields: [&str; 3]) -> String {
            // Keras' print_row: each field is cut at its column's end, and the last character
            // before the next field becomes a space.
            let mut line = String::new();
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    line.pop();
                    line.push(' ');
                }
                line.push_str(field);
                line = line.chars().take(POSITIONS[i]).collect();
                while line.chars().count() < POSITIONS[i] {
                    line.push(' ');
                }
            }
            line
        }
        let mut out = String::new();
        let _ = writeln!(out, "{}", "_".repeat(WIDTH));
        let _ = writeln!(out, "{}", row(["Layer (type)", "Output Shape", "Param #"]));
        let _ = writeln!(out, "{}", "=".repeat(WIDTH));
        for (i, l) in self.layers.iter().enumerate() {
            let label = format!("{} ({})", l.name, l.kind.class_name());
            let _ = writeln!(
                out,
                "{}",
                row([&label, &l.output.to_string(), &l.param_count().to_string()])
            );
            let sep = if i + 1 == self.layers.len() { "=" } else { "_" };
            let _ = writeln!(out, "{}", sep.repeat(WIDTH));
        }
        let (total, trainable) = (self.param_count(), self.trainable_param_count());
        let _ = writeln!(out, "Total params: {}", thousands(total));
        let _ = writeln!(out, "Trainable params: {}", thousands(trainable));
        let _ = writeln!(
            out,
            "Non-trainable params: {}",
            thousands(total - trainable)
        );
        let _ = writeln!(out, "{}", "_".repeat(WIDTH));
        out
    }

    /// The graph in Graphviz DOT, like Keras' `model_to_dot(model, show_shapes=True)`.
    pub fn to_dot(&self) -> String {
        let mut out = String::from(
            "digraph G {\n  rankdir=TB;\n  concentrate=true;\n  node [shape=record];\n",
        );
        for (i, l) in self.layers.iter().enumerate() {
            let _ = writeln!(
                out,
                "  layer{i} [label=\"{}: {}|{{input:|output:}}|{{{{{}}}|{{{}}}}}\"];",
                l.name,
                l.kind.class_name(),
                l.input,
                l.output
            );
            if i > 0 {
                let _ = writeln!(out, "  layer{} -> layer{i};", i - 1);
            }
        }
        out.push_str("}\n");
        out
    }
}

/// `545098` → `545,098`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(896), "896");
        assert_eq!(thousands(1290), "1,290");
        assert_eq!(thousands(138_357_544), "138,357,544");
    }

    #[test]
    fn duplicate_names_and_bad_dropout_are_rejected() {
        let mut s = Sequential::new("m", FeatureShape::Flat(4));
        s.add_named("a", LayerKind::Flatten).unwrap();
        assert!(s.add_named("a", LayerKind::Flatten).is_err());
        assert!(s.add(LayerKind::dropout(1.0)).is_err());
    }

    #[test]
    fn dense_on_an_image_is_a_shape_error() {
        let mut s = Sequential::new("m", FeatureShape::image(3, 8, 8));
        let err = s
            .add(LayerKind::dense(4, crate::Activation::Relu))
            .unwrap_err();
        assert!(err.to_string().contains("dense_1"), "{err}");
    }
}
