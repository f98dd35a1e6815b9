//! Checkpoints at the end of an epoch: weights, Adam's state and the history so far, so that a
//! run resumes exactly. Safetensors for tensors, JSON beside it; both written atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use simplecnn_model::Model;

use crate::adam::Adam;
use crate::error::{file_err, write_atomic, Result, TrainError};
use crate::history::History;

/// What a checkpoint records beside the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The last finished epoch (1-based); training resumes with the next.
    pub epoch: usize,
    pub iterations: u64,
    pub history: History,
    pub weight_names: Vec<String>,
}

/// The paths of a checkpoint called `stem` in `dir`: `<stem>.safetensors`, `<stem>.json`.
pub fn checkpoint_paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.safetensors")),
        dir.join(format!("{stem}.json")),
    )
}

/// Saves the model and optimizer after `history`'s last epoch as `dir/<stem>.*`.
pub fn save_checkpoint(
    dir: &Path,
    stem: &str,
    model: &Model,
    adam: &Adam,
    history: &History,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir)(e.to_string()))?;
    let (tensors_path, meta_path) = checkpoint_paths(dir, stem);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let (m, v) = adam.moments();
    let mut names = Vec::new();
    for w in model.weights() {
        let name = format!("{}/{}", w.layer, w.name);
        tensors.insert(
            format!("weight/{name}"),
            w.var.as_tensor().to_device(&Device::Cpu)?,
        );
        names.push(name);
    }
    // Adam's moments follow the trainable weights, in the same order.
    for (i, w) in model.trainable_weights().enumerate() {
        let name = format!("{}/{}", w.layer, w.name);
        tensors.insert(format!("adam_m/{name}"), m[i].to_device(&Device::Cpu)?);
        tensors.insert(format!("adam_v/{name}"), v[i].to_device(&Device::Cpu)?);
    }
    write_atomic(&tensors_path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(|e| file_err(tmp)(e.to_string()))
    })?;
    let meta = CheckpointMeta {
        epoch: history.epochs.len(),
        iterations: adam.iterations(),
        history: history.clone(),
        weight_names: names,
    };
    let json = serde_json::to_string_pretty(&meta).expect("serialisable");
    write_atomic(&meta_path, |tmp| {
        std::fs::write(tmp, json).map_err(|e| file_err(tmp)(e.to_string()))
    })
}

/// Loads `dir/<stem>.*` into `model` and `adam` (same architecture), returning what it recorded.
pub fn load_checkpoint(
    dir: &Path,
    stem: &str,
    model: &Model,
    adam: &mut Adam,
) -> Result<CheckpointMeta> {
    let (tensors_path, meta_path) = checkpoint_paths(dir, stem);
    let text =
        std::fs::read_to_string(&meta_path).map_err(|e| file_err(&meta_path)(e.to_string()))?;
    let meta: CheckpointMeta =
        serde_json::from_str(&text).map_err(|e| file_err(&meta_path)(e.to_string()))?;
    let tensors = candle_core::safetensors::load(&tensors_path, model.device())
        .map_err(|e| file_err(&tensors_path)(e.to_string()))?;
    let get = |key: String| {
        tensors.get(&key).cloned().ok_or_else(|| TrainError::File {
            path: tensors_path.clone(),
            message: format!("no tensor {key}: not a checkpoint of this model"),
        })
    };
    let (mut m, mut v) = (Vec::new(), Vec::new());
    for w in model.weights() {
        let name = format!("{}/{}", w.layer, w.name);
        model.set_weight(&w.layer, w.name, &get(format!("weight/{name}"))?)?;
        if w.trainable {
            m.push(get(format!("adam_m/{name}"))?);
            v.push(get(format!("adam_v/{name}"))?);
        }
    }
    adam.set_state(m, v, meta.iterations)?;
    Ok(meta)
}
