//! `Network`: a directed acyclic graph of layers with inferred shapes, Keras' default names,
//! `summary()` and a Graphviz view. Each layer names the layers whose outputs it takes (Keras'
//! inbound nodes); a straight stack (Keras' `Sequential`) is the chain case, where every layer
//! takes the one before it. Layers are held in an order where every layer comes after the
//! layers it takes (topological), the model's one output is the last layer's. It holds no
//! weights (see [`crate::Model`]), so even VGG-16's table costs nothing to print.

use std::collections::{HashMap, HashSet};
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

/// Where a layer's input comes from: the model's input, or another layer's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Input,
    /// The output of the layer at this index of [`Network::layers`] (always an earlier one).
    Layer(usize),
}

/// One layer in a [`Network`]: its name, kind, what it takes and the shapes around it.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    pub name: String,
    pub kind: LayerKind,
    /// The shape of its first input: what its weights are sized for.
    pub input: FeatureShape,
    /// What it takes, in Keras' order (`Add()([a, b])` takes `a`, then `b`).
    pub sources: Vec<Source>,
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

/// A network of layers: Keras' `Sequential` (the chain) and `Functional` (any DAG with one
/// input and one output) alike.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    name: String,
    input: FeatureShape,
    layers: Vec<LayerSpec>,
    name_counts: HashMap<&'static str, usize>,
    functional: bool,
    /// The layers' names, so that adding a layer costs no scan of the others (a graph from a
    /// file may have 100 000 of them).
    names: HashSet<String>,
    /// Every layer so far takes exactly the one before it.
    chain: bool,
}

impl Network {
    /// An empty model taking examples of shape `input`; [`Network::add`] makes it a stack.
    pub fn new(name: impl Into<String>, input: FeatureShape) -> Self {
        Self {
            name: name.into(),
            input,
            layers: Vec::new(),
            name_counts: HashMap::new(),
            functional: false,
            names: HashSet::new(),
            chain: true,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn input_shape(&self) -> FeatureShape {
        self.input
    }

    /// The model's output: the last layer's.
    pub fn output_shape(&self) -> FeatureShape {
        self.layers.last().map_or(self.input, |l| l.output)
    }

    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// Whether Keras would call it `Functional` (saved and shown as a graph) rather than
    /// `Sequential`: set when a layer takes anything but the one before it, or by
    /// [`Network::set_functional`] (a functional model that happens to be a chain, as VGG-16).
    pub fn is_functional(&self) -> bool {
        self.functional
    }

    pub fn set_functional(&mut self, functional: bool) {
        self.functional = functional || !self.is_chain();
    }

    /// Every layer takes exactly the one before it (the first, the model's input).
    pub fn is_chain(&self) -> bool {
        self.chain
    }

    /// The index of the layer called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name)
    }

    /// Per layer, the layers that take its output, in order (one pass over the graph).
    pub fn all_consumers(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.layers.len()];
        for (i, l) in self.layers.iter().enumerate() {
            for s in &l.sources {
                if let Source::Layer(j) = s {
                    if out[*j].last() != Some(&i) {
                        out[*j].push(i);
                    }
                }
            }
        }
        out
    }

    /// The shape `source` gives.
    pub fn shape_of(&self, source: Source) -> FeatureShape {
        match source {
            Source::Input => self.input,
            Source::Layer(i) => self.layers[i].output,
        }
    }

    /// Keras' next default name for a kind (`conv2d_1`, `conv2d_2`, …), skipping taken names.
    pub fn default_name(&mut self, kind: &LayerKind) -> String {
        // Only default-named layers advance the counter, as in Keras; skip names taken by hand.
        let stem = kind.default_name_stem();
        let count = self.name_counts.entry(stem).or_insert(0);
        loop {
            *count += 1;
            let name = format!("{stem}_{count}");
            if !self.names.contains(&name) {
                break name;
            }
        }
    }

    /// Adds a layer with Keras' default name taking the last layer's output (the stack).
    pub fn add(&mut self, kind: LayerKind) -> Result<&mut Self> {
        let name = self.default_name(&kind);
        self.add_named(name, kind)
    }

    /// Adds a layer with the given name (names must be unique) taking the last layer's output.
    pub fn add_named(&mut self, name: impl Into<String>, kind: LayerKind) -> Result<&mut Self> {
        let source = match self.layers.len() {
            0 => Source::Input,
            n => Source::Layer(n - 1),
        };
        self.connect(name, kind, &[source])
    }

    /// Adds a layer taking the outputs of `sources` (earlier layers, or the model's input):
    /// Keras' `layer([a, b])`. Shapes are checked here, so a network that builds runs.
    pub fn connect(
        &mut self,
        name: impl Into<String>,
        kind: LayerKind,
        sources: &[Source],
    ) -> Result<&mut Self> {
        let name = name.into();
        if self.names.contains(&name) {
            return Err(ModelError::Config(format!(
                "layer name {name} is used twice"
            )));
        }
        if sources.is_empty() {
            return Err(ModelError::Shape {
                layer: name,
                message: "takes no input".into(),
            });
        }
        if let Some(Source::Layer(i)) = sources
            .iter()
            .find(|s| matches!(s, Source::Layer(i) if *i >= self.layers.len()))
        {
            return Err(ModelError::Shape {
                layer: name,
                message: format!("takes layer {i}, which does not come before it"),
            });
        }
        let shapes: Vec<FeatureShape> = sources.iter().map(|s| self.shape_of(*s)).collect();
        if sources.contains(&Source::Input) {
            check_size(&name, "the model's input", &shape_dims(&self.input))?;
        }
        let output = kind.output_shape(&name, &shapes)?;
        check_size(&name, "its output", &shape_dims(&output))?;
        let input = shapes[0];
        for w in kind.weights(&input) {
            check_size(&name, w.role.keras_name(), &w.shape)?;
        }
        let next_in_chain = match self.layers.len() {
            0 => Source::Input,
            n => Source::Layer(n - 1),
        };
        self.chain = self.chain && sources == [next_in_chain];
        self.names.insert(name.clone());
        self.layers.push(LayerSpec {
            name,
            kind,
            input,
            sources: sources.to_vec(),
            output,
            trainable: true,
        });
        if !self.chain {
            self.functional = true;
        }
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

    /// The layers up to and including `last` (and only those it depends on, in order), as a
    /// network of their own: a fine-tuning base cut at a named layer.
    pub fn truncated(&self, last: &str) -> Result<Network> {
        let end = self
            .index_of(last)
            .ok_or_else(|| ModelError::Config(format!("no layer {last}")))?;
        let mut needed = vec![false; end + 1];
        needed[end] = true;
        for i in (0..=end).rev() {
            if needed[i] {
                for s in &self.layers[i].sources {
                    if let Source::Layer(j) = s {
                        needed[*j] = true;
                    }
                }
            }
        }
        let mut new_index = vec![usize::MAX; end + 1];
        let mut net = Network::new(self.name.clone(), self.input);
        for (i, l) in self.layers[..=end].iter().enumerate() {
            if !needed[i] {
                continue;
            }
            let sources: Vec<Source> = l
                .sources
                .iter()
                .map(|s| match s {
                    Source::Input => Source::Input,
                    Source::Layer(j) => Source::Layer(new_index[*j]),
                })
                .collect();
            net.connect(l.name.clone(), l.kind.clone(), &sources)?;
            net.set_trainable(&l.name, l.trainable)?;
            new_index[i] = net.layers.len() - 1;
        }
        net.set_functional(self.functional);
        Ok(net)
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

    /// Keras' `model.summary()` table (Keras 2 layout, fields cut to fit): 65 columns for a
    /// chain, and for a graph that branches 98 with "Connected to" (`conv2d_1[0][0]`, one
    /// row per input), as Keras prints a model that is not "sequential-like".
    pub fn summary(&self) -> String {
        let graph = !self.is_chain();
        let (width, positions): (usize, &[usize]) = match graph {
            false => (65, &[29, 55, 65]),
            true => (98, &[33, 55, 67, 98]),
        };
        let row = |fields: &[&str]| -> String {
            // Keras' print_row: each field is cut at its column's end, and the last character
            // before the next field becomes a space.
            let mut line = String::new();
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    line.pop();
                    line.push(' ');
                }
                line.push_str(field);
                line = line.chars().take(positions[i]).collect();
                while line.chars().count() < positions[i] {
                    line.push(' ');
                }
            }
            line
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", "_".repeat(width));
        let header: &[&str] = match graph {
            false => &["Layer (type)", "Output Shape", "Param #"],
            true => &["Layer (type)", "Output Shape", "Param #", "Connected to"],
        };
        let _ = writeln!(out, "{}", row(header));
        let _ = writeln!(out, "{}", "=".repeat(width));
        for (i, l) in self.layers.iter().enumerate() {
            let label = format!("{} ({})", l.name, l.kind.class_name());
            let shape = match (graph, &l.kind) {
                // Keras 2 shows an InputLayer's output as a list of one shape.
                (true, LayerKind::Input) => format!("[{}]", l.output),
                _ => l.output.to_string(),
            };
            let params = l.param_count().to_string();
            let connections: Vec<String> = l
                .sources
                .iter()
                .filter_map(|s| match s {
                    Source::Input => None,
                    Source::Layer(j) => Some(format!("{}[0][0]", self.layers[*j].name)),
                })
                .collect();
            match graph {
                false => {
                    let _ = writeln!(out, "{}", row(&[&label, &shape, &params]));
                }
                true => {
                    let first = connections.first().map_or("", String::as_str);
                    let _ = writeln!(out, "{}", row(&[&label, &shape, &params, first]));
                    for c in connections.iter().skip(1) {
                        let _ = writeln!(out, "{}", row(&["", "", "", c]));
                    }
                }
            }
            let sep = if i + 1 == self.layers.len() { "=" } else { "_" };
            let _ = writeln!(out, "{}", sep.repeat(width));
        }
        let (total, trainable) = (self.param_count(), self.trainable_param_count());
        let _ = writeln!(out, "Total params: {}", thousands(total));
        let _ = writeln!(out, "Trainable params: {}", thousands(trainable));
        let _ = writeln!(
            out,
            "Non-trainable params: {}",
            thousands(total - trainable)
        );
        let _ = writeln!(out, "{}", "_".repeat(width));
        out
    }

    /// The graph in Graphviz DOT, like Keras' `model_to_dot(model, show_shapes=True)`: one
    /// edge per input, so branches and joins show.
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
            for s in &l.sources {
                if let Source::Layer(j) = s {
                    let _ = writeln!(out, "  layer{j} -> layer{i};");
                }
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
        let mut s = Network::new("m", FeatureShape::Flat(4));
        s.add_named("a", LayerKind::Flatten).unwrap();
        assert!(s.add_named("a", LayerKind::Flatten).is_err());
        assert!(s.add(LayerKind::dropout(1.0)).is_err());
    }

    #[test]
    fn dense_on_an_image_works_on_the_channels_and_bad_shapes_name_the_layer() {
        // Keras' Dense on an image: every pixel's channels.
        let mut s = Network::new("m", FeatureShape::image(3, 8, 8));
        s.add(LayerKind::dense(4, crate::Activation::Relu)).unwrap();
        assert_eq!(s.output_shape(), FeatureShape::image(4, 8, 8));
        assert_eq!(s.param_count(), 3 * 4 + 4);
        let err = s.add(LayerKind::global_avg_pool()).and_then(|s| {
            s.add(LayerKind::Conv2d(crate::Conv2dConfig::new(
                2,
                3,
                crate::Padding::Same,
                crate::Activation::Relu,
            )))
        });
        let err = err.unwrap_err();
        assert!(err.to_string().contains("conv2d_1"), "{err}");
    }
}
