//! Optimizers: one update from a backward pass's gradients at the learning rate the schedule
//! gives, with their state named by weight (`conv2d_1/kernel`), never paired by position, so a
//! model whose trainable set changes (frozen layers) keeps each slot with its weight.

mod adam;
mod sgd;

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{backprop::GradStore, Tensor, Var};
use simplecnn_model::Model;

use crate::error::{Result, TrainError};

pub use adam::{Adam, AdamConfig};
pub use sgd::{ParamGroup, Sgd, SgdConfig};

/// One weight an optimizer updates: its path (`layer/name`) and variable.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub var: Var,
}

/// The weights of `model` an optimizer trains, by name, in the model's order.
pub fn trainable_params(model: &Model) -> Vec<Param> {
    model
        .trainable_weights()
        .map(|w| Param {
            name: w.path(),
            var: w.var.clone(),
        })
        .collect()
}

/// An optimizer's state: its step count and every slot, keyed `<weight path>/<slot>`
/// (`conv2d_1/kernel/m`).
#[derive(Clone, Debug, Default)]
pub struct OptimizerState {
    pub iterations: u64,
    pub slots: BTreeMap<String, Tensor>,
}

/// What `fit` needs of an optimizer.
pub trait Optimizer {
    /// Keras' class name (`Adam`).
    fn name(&self) -> &'static str;

    /// One update from `grads` at `learning_rate` (the schedule's value for this step).
    /// Weights without a gradient are left alone.
    fn step(&mut self, grads: &GradStore, learning_rate: f64) -> Result<()>;

    /// Updates done so far.
    fn iterations(&self) -> u64;

    /// The slot names per weight (`["m", "v"]` for Adam).
    fn slot_names(&self) -> &'static [&'static str];

    /// A copy of the state, by name.
    fn state(&self) -> Result<OptimizerState>;

    /// Restores state saved by [`Optimizer::state`]: every slot of every weight this optimizer
    /// trains must be there with the weight's shape; slots of weights it does not train are
    /// ignored.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()>;

    /// The settings as JSON, for run records.
    fn config(&self) -> serde_json::Value;

    /// From now on leaves the weights named in `frozen` alone (no update, decay or momentum),
    /// and trains the others again.
    fn set_frozen(&mut self, frozen: &BTreeSet<String>);
}

/// Takes `<param>/<slot>` from `state`, checked against the parameter's shape.
pub(crate) fn slot(state: &OptimizerState, param: &Param, slot: &str) -> Result<Tensor> {
    let key = format!("{}/{slot}", param.name);
    let t = state
        .slots
        .get(&key)
        .ok_or_else(|| TrainError::Config(format!("optimizer state has no {key}")))?;
    if t.dims() != param.var.dims() {
        return Err(TrainError::Config(format!(
            "optimizer state {key} has shape {:?}, the weight {:?}",
            t.dims(),
            param.var.dims()
        )));
    }
    // Own copy on the weight's device: the CPU path updates slots in place.
    Ok(t.to_device(param.var.device())?.copy()?)
}
