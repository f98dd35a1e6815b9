//! The experiment file's format: every key that decides a run, with Keras' defaults where
//! Keras has one. Unknown keys are errors (`deny_unknown_fields` everywhere).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use simplecnn_train::{Monitor, MonitorMode};

/// One experiment: what to train, on what, how, and what to keep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Names the results folder (`results/<name>/` unless `outputs.dir` says otherwise).
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub model: ModelSpec,
    #[serde(default)]
    pub data: DataSpec,
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// Keras' `compile(loss=…)`: categorical cross-entropy on logits.
    #[serde(default)]
    pub loss: LossSpec,
    /// Flips and translations of the training images (`flip = "none" | "random" |
    /// "alternating"`, `translate = pixels`).
    #[serde(default)]
    pub augment: simplecnn_cifar::Augmentation,
    /// How the test split is scored after training.
    #[serde(default)]
    pub test: TestSpec,
    pub fit: FitSpec,
    /// Keras' `callbacks=[…]`, in the order they run.
    #[serde(default)]
    pub callbacks: Vec<CallbackSpec>,
    #[serde(default)]
    pub outputs: OutputSpec,
}

/// The network: a ready-made one from the zoo, or layers written out as Keras configs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `simple_cnn` (the tutorial's, for `input` and `classes`) or `vgg16` (224x224x3, 1000
    /// classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoo: Option<String>,
    /// Keras' model name (default `sequential_1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The input as Keras writes it: `[height, width, channels]`.
    #[serde(default = "cifar_input")]
    pub input: [usize; 3],
    /// The classes a zoo model predicts.
    #[serde(default = "ten")]
    pub classes: usize,
    /// Layers as Keras configs with the class name beside them, e.g.
    /// `{ class_name = "Conv2D", filters = 32, kernel_size = 3, padding = "same" }`.
    /// A layer may name what it takes (`inputs = ["conv2d_3", "add_1"]`; default: the layer
    /// before it) and may be a block from `blocks` (`{ block = "basic", repeat = 3, filters =
    /// 16 }`): then the model is a graph (Keras' functional API).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Blocks written once, used by name in `layers`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub blocks: std::collections::BTreeMap<String, BlockSpec>,
    /// Seeds the initial weights (default: `fit.seed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_seed: Option<u64>,
    /// Initialisations after the layers' own, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init: Vec<InitSpec>,
    /// Start from a saved model: its layers up to `until` with their weights, then `layers`
    /// (the new head) on top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseSpec>,
    /// Layers whose weights `fit` leaves alone (Keras' `layer.trainable = False`: counted as
    /// non-trainable, a BatchNormalization among them runs in inference mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frozen: Vec<String>,
}

/// A block of layers used by name in `model.layers`, as often as `repeat` says. Its layers
/// are Keras configs; `inputs` names layers of the block (before it), `"$in"` (what the
/// block takes: the layer before its use, or the use's `inputs`) or any layer of the model.
/// A string `"$key"` in a config is the using entry's `key` (`filters = "$filters"`), `"$i"`
/// the repeat's number. Layers are named `<use's name>_<repeat>_<layer's name>` (no repeat
/// number when it is used once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    pub layers: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// A trained model to build on (fine-tuning, transfer learning): a model file, or a zoo
/// network with weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    /// A model file (`model.save`: ours or Keras'); its layers are matched by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// `vgg16`: Keras' `applications.VGG16(include_top=False)` at `model.input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoo: Option<String>,
    /// The zoo network's weights: `imagenet` (Keras' published file, downloaded once into
    /// `$KERAS_HOME/models`, else `~/.keras/models`, MD5-checked) or a weights file in Keras'
    /// `save_weights` layout, matched by position as Keras' legacy loader does (default: the
    /// layers' own initial weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// The last layer kept, by name (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// A `Rescaling(input_scale)` layer before the base's first: 255 for a base trained on raw
    /// pixel values (this workbench's images are in [0, 1]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_scale: Option<f64>,
    /// Set every kept layer's `trainable` (default: as the file says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<bool>,
}

/// An initialisation step that needs more than a weight's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InitSpec {
    /// The first `min(filters, in_channels)` filters of each layer's kernel become identities
    /// (PyTorch's `dirac_`).
    Dirac { layers: Vec<String> },
    /// airbench's whitening: the layer's kernel from the eigenvectors of the second moments of
    /// its input's patches over the first `images` training images.
    Whitening {
        layer: String,
        #[serde(default = "five_thousand")]
        images: usize,
        #[serde(default = "whitening_eps")]
        epsilon: f64,
    },
}

fn five_thousand() -> usize {
    5000
}

fn whitening_eps() -> f64 {
    5e-4
}

fn cifar_input() -> [usize; 3] {
    [32, 32, 3]
}

fn ten() -> usize {
    10
}

/// The images.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// CIFAR-10 folder, binary layout or image folders (default: `CIFAR10_DIR`, else `data/`,
    /// downloaded there on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Train on the first N training images only (the test split stays whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<usize>,
    /// Only these classes, by name, in this order: labels become `0..classes.len()` in both
    /// splits and the names are kept (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// At most this many training images per class, the first in load order (the test split
    /// stays whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<usize>,
    /// Image folders: scale images of another size to 32x32 (`tf.image.resize`'s bilinear, as
    /// Keras' `image_dataset_from_directory`) instead of rejecting them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resize: bool,
    /// The last fraction of the training images held out for validation (Keras'
    /// `validation_split`, taken before shuffling).
    #[serde(default)]
    pub validation_split: f64,
}

/// The optimizer and its settings (Keras' defaults for any left out).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    Adam {
        #[serde(default = "adam_lr")]
        learning_rate: f64,
        #[serde(default = "adam_beta_1")]
        beta_1: f64,
        #[serde(default = "adam_beta_2")]
        beta_2: f64,
        #[serde(default = "adam_epsilon")]
        epsilon: f64,
    },
    /// PyTorch's `torch.optim.SGD` (Keras' `SGD` without decay is the same rule).
    Sgd {
        #[serde(default = "sgd_lr")]
        learning_rate: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<ParamGroupSpec>,
    },
}

fn sgd_lr() -> f64 {
    0.01
}

/// The test after training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    /// Test-time augmentation: `none`, `mirror`, `mirror_translate` (airbench's level 2). With
    /// one, test.json has the plain scores too.
    #[serde(default)]
    pub tta: simplecnn_train::Tta,
}

/// What is minimised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    /// Keras' `label_smoothing`: targets `(1 - s)·one_hot + s / classes`.
    #[serde(default)]
    pub label_smoothing: f64,
    /// `mean` over the batch (Keras) or `sum` (PyTorch's `reduction="sum"`).
    #[serde(default)]
    pub reduction: simplecnn_train::loss::Reduction,
}

/// A parameter group of SGD: weights with one of `roles` get their own rate scale and decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGroupSpec {
    /// Weight roles: `kernel`, `bias`, `gamma`, `beta`.
    pub roles: Vec<String>,
    #[serde(default = "one")]
    pub lr_scale: f64,
    #[serde(default)]
    pub weight_decay: f64,
}

fn one() -> f64 {
    1.0
}

fn adam_lr() -> f64 {
    1e-3
}
fn adam_beta_1() -> f64 {
    0.9
}
fn adam_beta_2() -> f64 {
    0.999
}
fn adam_epsilon() -> f64 {
    1e-7
}

impl OptimizerSpec {
    /// The base learning rate a schedule starts from.
    pub fn learning_rate(&self) -> f64 {
        match self {
            OptimizerSpec::Adam { learning_rate, .. }
            | OptimizerSpec::Sgd { learning_rate, .. } => *learning_rate,
        }
    }
}

/// How the learning rate moves with the steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleSpec {
    /// The optimizer's learning rate at every step.
    Constant {},
    /// The optimizer's rate times a factor that runs in straight lines between
    /// `[fraction of the run's steps, factor]` points, from fraction 0 to 1 (airbench:
    /// `[[0, 0.2], [0.23, 1], [1, 0.07]]`).
    PiecewiseLinear { points: Vec<[f64; 2]> },
}

/// Keras' `fit` arguments, and where it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitSpec {
    /// May be fractional (airbench: 9.9): the last epoch stops after its share of the steps.
    #[serde(serialize_with = "whole_as_integer")]
    pub epochs: f64,
    pub batch_size: usize,
    /// Seeds the shuffles and dropout masks (and the initial weights, unless
    /// `model.init_seed` is set).
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Leave out each epoch's last batch when it is smaller than `batch_size`.
    #[serde(default)]
    pub drop_remainder: bool,
    #[serde(default)]
    pub device: DeviceName,
    /// `fast` (this project's CPU kernels) or `candle` (candle's own ops, the reference).
    #[serde(default)]
    pub kernels: KernelsName,
    /// Keras' dtype policy: `float32`, or `mixed_bfloat16` (the convolutions' and Dense layers'
    /// matrix products on bf16 operands with f32 sums, on the CPU fast path; everything else
    /// f32).
    #[serde(default)]
    pub precision: PrecisionName,
    /// Weights the optimizer leaves alone from an epoch on: `[[fit.freeze]] weights =
    /// ["conv2d_1/kernel"]` (from epoch 1: never trained), `from_epoch = 4`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<FreezeSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeSpec {
    pub weights: Vec<String>,
    #[serde(default = "epoch_one")]
    pub from_epoch: usize,
}

fn epoch_one() -> usize {
    1
}

/// `10` rather than `10.0` in config.json when the number is whole.
fn whole_as_integer<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    match v.fract() == 0.0 && v.abs() < 1e15 {
        true => s.serialize_u64(*v as u64),
        false => s.serialize_f64(*v),
    }
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceName {
    #[default]
    Cpu,
    Cuda,
}

impl DeviceName {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceName::Cpu => "cpu",
            DeviceName::Cuda => "cuda",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelsName {
    #[default]
    Fast,
    Candle,
}

/// Keras' dtype policy names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrecisionName {
    #[default]
    Float32,
    MixedBfloat16,
}

impl PrecisionName {
    /// What the model computes under this policy.
    pub fn precision(self) -> simplecnn_model::Precision {
        match self {
            PrecisionName::Float32 => simplecnn_model::Precision::F32,
            PrecisionName::MixedBfloat16 => simplecnn_model::Precision::MixedBf16,
        }
    }
}

/// One of Keras' callbacks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CallbackSpec {
    /// Keras' `verbose=2` line after each epoch.
    KerasLog {},
    /// A progress bar inside each epoch, when stderr is a terminal.
    ProgressBar {},
    /// Stop when a batch's loss is NaN or infinite.
    TerminateOnNan {},
    /// The history as CSV in the run folder, rewritten after each epoch.
    CsvLogger {
        #[serde(default = "epochs_csv")]
        filename: String,
    },
    /// `checkpoints/last.*` after each epoch, `best.*` when the monitored value improves.
    ModelCheckpoint {
        #[serde(default = "val_loss")]
        monitor: Monitor,
        #[serde(default = "min")]
        mode: MonitorMode,
    },
    /// airbench's lookahead: every `every` steps the model is reset to a running average of
    /// its weights (decay `decay^every · (step/total)^power`); it ends on the average.
    Lookahead {
        #[serde(default = "five")]
        every: u64,
        #[serde(default = "lookahead_decay")]
        decay: f64,
        #[serde(default = "three")]
        power: f64,
    },
    EarlyStopping {
        #[serde(default = "val_loss")]
        monitor: Monitor,
        #[serde(default = "min")]
        mode: MonitorMode,
        patience: usize,
        #[serde(default)]
        min_delta: f64,
    },
    /// Keras' `TensorBoard`: event files in `<run>/logs/train/` and `logs/validation/`
    /// (`cargo xtask tensorboard` shows them).
    Tensorboard {
        /// `"epoch"` (scalars per epoch), `"batch"` or a number N (batch scalars every N steps
        /// as well).
        #[serde(default)]
        update_freq: UpdateFreq,
        /// Weight histograms every this many epochs; 0: none.
        #[serde(default)]
        histogram_freq: usize,
    },
}

impl CallbackSpec {
    /// Whether the callback changes what training does (stops it, or changes the weights),
    /// so that every process of a run on several needs it; the others print or write, which
    /// rank 0 alone does.
    pub fn steers_training(&self) -> bool {
        match self {
            CallbackSpec::TerminateOnNan {}
            | CallbackSpec::EarlyStopping { .. }
            | CallbackSpec::Lookahead { .. } => true,
            CallbackSpec::KerasLog {}
            | CallbackSpec::ProgressBar {}
            | CallbackSpec::CsvLogger { .. }
            | CallbackSpec::ModelCheckpoint { .. }
            | CallbackSpec::Tensorboard { .. } => false,
        }
    }
}

/// Keras' `update_freq`: `"epoch"`, `"batch"` (every step) or a number of steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UpdateFreq {
    Steps(u64),
    Named(String),
}

impl Default for UpdateFreq {
    fn default() -> Self {
        UpdateFreq::Named("epoch".into())
    }
}

impl UpdateFreq {
    /// Batch scalars every this many steps (`None`: per epoch only), or why it is not valid.
    pub fn steps(&self) -> std::result::Result<Option<u64>, String> {
        match self {
            UpdateFreq::Named(w) if w == "epoch" => Ok(None),
            UpdateFreq::Named(w) if w == "batch" => Ok(Some(1)),
            UpdateFreq::Steps(n) if *n >= 1 => Ok(Some(*n)),
            other => Err(format!(
                "{other:?} is not \"epoch\", \"batch\" or a number of steps from 1"
            )),
        }
    }
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        ScheduleSpec::Constant {}
    }
}

fn five() -> u64 {
    5
}
fn lookahead_decay() -> f64 {
    0.95
}
fn three() -> f64 {
    3.0
}

fn epochs_csv() -> String {
    "epochs.csv".into()
}
fn val_loss() -> Monitor {
    Monitor::ValLoss
}
fn min() -> MonitorMode {
    MonitorMode::Min
}

/// What the run keeps beside its records (config.json, summary.txt, test.json, run.json).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Where runs go: a folder per run and `latest` pointing at the newest (default
    /// `results/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Model files to write after training; the extension picks the format (`.h5`: Keras'
    /// HDF5 layout, `.keras`: Keras 3's zip; both with Adam's state).
    #[serde(default = "model_h5")]
    pub save: Vec<String>,
    /// `loss.png` and `accuracy.png`.
    #[serde(default = "yes")]
    pub plots: bool,
}

fn model_h5() -> Vec<String> {
    vec!["model.h5".into(), "model.keras".into()]
}

impl Default for OutputSpec {
    fn default() -> Self {
        Self {
            dir: None,
            save: model_h5(),
            plots: true,
        }
    }
}
