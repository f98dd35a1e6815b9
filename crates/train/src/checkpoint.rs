//! Checkpoints at the end of an epoch: weights, the optimizer's state (by weight name), the
//! callbacks' state (lookahead's average) and the history so far, so that a run resumes
//! exactly. One safetensors file holds it all, the record (epoch, history, …) as JSON in its
//! header, so that a run killed while saving never pairs one epoch's weights with another's
//! record; a JSON copy of the record beside it is for people. Both are written atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use simplecnn_model::Model;

use crate::error::{file_err, write_atomic, Result, TrainError};
use crate::history::History;
use crate::optim::{Optimizer, OptimizerState};

/// What a checkpoint records beside the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The last finished epoch (1-based); training resumes with the next.
    pub epoch: usize,
    pub iterations: u64,
    pub history: History,
    pub weight_names: Vec<String>,
    /// The optimizer's class name (`Adam`).
    #[serde(default)]
    pub optimizer: String,
}

/// The key of the record in the tensors file's header metadata.
const RECORD_KEY: &str = "simplecnn.checkpoint";

/// The paths of a checkpoint called `stem` in `dir`: `<stem>.safetensors`, `<stem>.json`.
pub fn checkpoint_paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.safetensors")),
        dir.join(format!("{stem}.json")),
    )
}

/// Saves the model, optimizer and callbacks after `history`'s last epoch as `dir/<stem>.*`:
/// weights as `weight/<layer>/<name>`, optimizer slots as `optimizer/<layer>/<name>/<slot>`,
/// the callbacks' tensors ([`crate::Callback::state`]) as `callback/<name>`.
pub fn save_checkpoint(
    dir: &Path,
    stem: &str,
    model: &Model,
    optimizer: &dyn Optimizer,
    callbacks: &[(String, Tensor)],
    history: &History,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir)(e.to_string()))?;
    let (tensors_path, meta_path) = checkpoint_paths(dir, stem);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut names = Vec::new();
    for w in model.weights() {
        let name = w.path();
        tensors.insert(
            format!("weight/{name}"),
            w.var.as_tensor().to_device(&Device::Cpu)?,
        );
        names.push(name);
    }
    let state = optimizer.state()?;
    for (slot, t) in &state.slots {
        tensors.insert(format!("optimizer/{slot}"), t.to_device(&Device::Cpu)?);
    }
    for (name, t) in callbacks {
        tensors.insert(format!("callback/{name}"), t.to_device(&Device::Cpu)?);
    }
    let meta = CheckpointMeta {
        epoch: history.epochs.len(),
        iterations: state.iterations,
        history: history.clone(),
        weight_names: names,
        optimizer: optimizer.name().to_string(),
    };
    let json = serde_json::to_string_pretty(&meta).expect("serialisable");
    let header = HashMap::from([(RECORD_KEY.to_string(), json.clone())]);
    write_atomic(&tensors_path, |tmp| {
        safetensors::serialize_to_file(&tensors, Some(header), tmp)
            .map_err(|e| file_err(tmp)(e.to_string()))
    })?;
    write_atomic(&meta_path, |tmp| {
        std::fs::write(tmp, json).map_err(|e| file_err(tmp)(e.to_string()))
    })
}

/// The weights of a checkpoint's `.safetensors` file into `model` (same architecture), for
/// evaluating it; returns every tensor of the file.
pub fn load_checkpoint_weights(
    tensors_path: &Path,
    model: &Model,
) -> Result<HashMap<String, Tensor>> {
    let bytes =
        simplecnn_files::read(tensors_path).map_err(|e| file_err(tensors_path)(e.to_string()))?;
    load_weights_from(tensors_path, &bytes, model)
}

fn load_weights_from(
    tensors_path: &Path,
    bytes: &[u8],
    model: &Model,
) -> Result<HashMap<String, Tensor>> {
    let tensors = candle_core::safetensors::load_buffer(bytes, model.device())
        .map_err(|e| file_err(tensors_path)(e.to_string()))?;
    for w in model.weights() {
        let key = format!("weight/{}", w.path());
        let t = tensors.get(&key).ok_or_else(|| TrainError::File {
            path: tensors_path.to_path_buf(),
            message: format!("no tensor {key}: not a checkpoint of this model"),
        })?;
        if t.dims() != w.var.dims() {
            return Err(TrainError::File {
                path: tensors_path.to_path_buf(),
                message: format!(
                    "{key} has shape {:?}, the model's needs {:?}",
                    t.dims(),
                    w.var.dims()
                ),
            });
        }
        model.set_weight(&w.layer, w.name, t)?;
    }
    Ok(tensors)
}

/// The record in a tensors file's header; `None` for a checkpoint written before the record
/// moved there (its `.json` is then the record).
fn record_in(tensors_path: &Path, bytes: &[u8]) -> Result<Option<CheckpointMeta>> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| file_err(tensors_path)(format!("not a safetensors file: {e}")))?;
    let Some(json) = header.metadata().as_ref().and_then(|m| m.get(RECORD_KEY)) else {
        return Ok(None);
    };
    serde_json::from_str(json)
        .map(Some)
        .map_err(|e| file_err(tensors_path)(format!("its checkpoint record: {e}")))
}

/// A checkpoint loaded back: what it recorded, and the callbacks' tensors by the names
/// [`crate::Callback::state`] gave them.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    pub meta: CheckpointMeta,
    pub callbacks: HashMap<String, Tensor>,
}

/// Loads `dir/<stem>.*` into `model` and `optimizer` (same architecture), returning what it
/// recorded and the callbacks' state.
pub fn load_checkpoint(
    dir: &Path,
    stem: &str,
    model: &Model,
    optimizer: &mut dyn Optimizer,
) -> Result<LoadedCheckpoint> {
    let (tensors_path, meta_path) = checkpoint_paths(dir, stem);
    let bytes =
        simplecnn_files::read(&tensors_path).map_err(|e| file_err(&tensors_path)(e.to_string()))?;
    let (meta, record_path) = match record_in(&tensors_path, &bytes)? {
        Some(meta) => (meta, tensors_path.clone()),
        None => {
            let text = simplecnn_files::read_to_string(&meta_path)
                .map_err(|e| file_err(&meta_path)(e.to_string()))?;
            let meta =
                serde_json::from_str(&text).map_err(|e| file_err(&meta_path)(e.to_string()))?;
            (meta, meta_path)
        }
    };
    if !meta.optimizer.is_empty() && meta.optimizer != optimizer.name() {
        return Err(TrainError::File {
            path: record_path,
            message: format!(
                "the checkpoint holds {} state, this run trains with {}",
                meta.optimizer,
                optimizer.name()
            ),
        });
    }
    let tensors = load_weights_from(&tensors_path, &bytes, model)?;
    let under = |prefix: &str| -> HashMap<String, Tensor> {
        tensors
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix(prefix)?.to_string(), t.clone())))
            .collect()
    };
    let slots = under("optimizer/").into_iter().collect();
    let state = OptimizerState {
        iterations: meta.iterations,
        slots,
    };
    optimizer
        .load_state(&state)
        .map_err(|e| file_err(&tensors_path)(e.to_string()))?;
    Ok(LoadedCheckpoint {
        meta,
        callbacks: under("callback/"),
    })
}
