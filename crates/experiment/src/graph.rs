//! `model.layers` as a graph: layers that name what they take (`inputs = ["conv2d_3",
//! "add_1"]`; without it, a layer takes the one before it) and blocks written once and used
//! many times (`model.blocks.<name>`, used as `{ block = "<name>", repeat = 3, … }`). They are
//! expanded here into Keras layer entries with names and inputs; `store`'s mapping builds the
//! network from them, as from any Keras file.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::spec::BlockSpec;

/// One layer after expansion: its Keras entry (`class_name` and config keys, a `name`
/// always), what it takes (names; `None`: the previous layer), and the experiment key it came
/// from (`model.layers.3`, or `model.layers.3 (block basic #2, layer conv1)`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Expanded {
    pub entry: Map<String, Value>,
    pub inputs: Option<Vec<String>>,
    pub key: String,
    /// The name was made here (Keras' default), not written.
    pub generated_name: bool,
}

/// Names unnamed layers as Keras 2 does (`conv2d_1`, `conv2d_2`, … per class).
#[derive(Default)]
struct Namer {
    counts: HashMap<String, usize>,
    taken: std::collections::HashSet<String>,
}

impl Namer {
    fn fresh(&mut self, class: &str) -> String {
        let stem = simplecnn_store::layout::snake_case(class);
        let n = self.counts.entry(stem.clone()).or_insert(0);
        loop {
            *n += 1;
            let name = format!("{stem}_{n}");
            if !self.taken.contains(&name) {
                return name;
            }
        }
    }
}

/// `"$name"` strings in a block's layer config replaced by the using entry's values
/// (`filters = "$filters"`), recursively; `$i` is the repeat's number (1, 2, …).
fn substitute(v: &Value, params: &Map<String, Value>, index: usize) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) if s.starts_with('$') => match &s[1..] {
            "i" => Value::from(index),
            "in" => v.clone(),
            key => params.get(key).cloned().ok_or_else(|| {
                format!(
                    "{s} is not given (the block's parameters: {})",
                    params.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?,
        },
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| substitute(x, params, index))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), substitute(x, params, index)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn string_list(v: &Value, what: &str) -> Result<Vec<String>, String> {
    v.as_array()
        .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect())
        .ok_or_else(|| format!("{what} must be a list of layer names"))
}

/// Expands `layers` (and the blocks they use) into named layer entries with inputs. Errors are
/// `(key, why)`.
pub(crate) fn expand(
    layers: &[Map<String, Value>],
    blocks: &BTreeMap<String, BlockSpec>,
    taken: &[String],
) -> Result<Vec<Expanded>, (String, String)> {
    let mut namer = Namer::default();
    namer.taken.extend(taken.iter().cloned());
    for l in layers
        .iter()
        .chain(blocks.values().flat_map(|b| b.layers.iter()))
    {
        if let Some(n) = l.get("name").and_then(Value::as_str) {
            namer.taken.insert(n.to_string());
        }
    }
    let mut out: Vec<Expanded> = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let key = format!("model.layers.{i}");
        let Some(block_name) = layer.get("block") else {
            let mut entry = layer.clone();
            let inputs = match entry.remove("inputs") {
                Some(v) => {
                    Some(string_list(&v, "inputs").map_err(|e| (format!("{key}.inputs"), e))?)
                }
                None => None,
            };
            let generated_name = !entry.contains_key("name");
            if generated_name {
                let class = entry
                    .get("class_name")
                    .and_then(Value::as_str)
                    .unwrap_or("layer");
                let name = namer.fresh(class);
                entry.insert("name".into(), Value::from(name));
            }
            out.push(Expanded {
                entry,
                inputs,
                key,
                generated_name,
            });
            continue;
        };
        let block_name = block_name
            .as_str()
            .ok_or_else(|| (format!("{key}.block"), "must be a block's name".to_string()))?;
        let block = blocks.get(block_name).ok_or_else(|| {
            (
                format!("{key}.block"),
                format!(
                    "no block {block_name:?} in model.blocks (blocks: {})",
                    blocks.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let repeat = match layer.get("repeat") {
            None => 1,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=10_000) => n as usize,
                _ => {
                    return Err((
                        format!("{key}.repeat"),
                        format!("{v} is not a count from 1 to 10000"),
                    ))
                }
            },
        };
        let prefix = layer
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| namer.fresh(block_name), str::to_string);
        let mut params = layer.clone();
        for k in ["block", "repeat", "name", "inputs"] {
            params.remove(k);
        }
        // The first repeat takes what the entry names (or the previous layer); each later
        // one the output of the one before.
        let mut block_input: Option<Vec<String>> = match layer.get("inputs") {
            Some(v) => Some(string_list(v, "inputs").map_err(|e| (format!("{key}.inputs"), e))?),
            None => None,
        };
        for r in 1..=repeat {
            let instance = match repeat {
                1 => prefix.clone(),
                _ => format!("{prefix}_{r}"),
            };
            let previous = out
                .last()
                .map(|e| e.entry["name"].as_str().unwrap_or("").to_string());
            let input_names: Vec<String> = block_input
                .clone()
                .or_else(|| previous.clone().map(|p| vec![p]))
                .unwrap_or_default();
            let mut local: Vec<String> = Vec::new();
            let mut local_namer = Namer::default();
            for (j, bl) in block.layers.iter().enumerate() {
                let lkey = format!("{key} (block {block_name} #{r}, layer {j})");
                let mut entry = match substitute(&Value::Object(bl.clone()), &params, r) {
                    Ok(Value::Object(o)) => o,
                    Ok(_) => unreachable!("an object stays an object"),
                    Err(e) => return Err((lkey, e)),
                };
                let local_name = match entry.remove("name") {
                    Some(Value::String(n)) => n,
                    _ => {
                        let class = entry
                            .get("class_name")
                            .and_then(Value::as_str)
                            .unwrap_or("layer");
                        local_namer.fresh(class)
                    }
                };
                let resolve = |n: &str| -> Result<Vec<String>, String> {
                    match n {
                        "$in" => Ok(input_names.clone()),
                        n if local.iter().any(|l| l == n) => Ok(vec![format!("{instance}_{n}")]),
                        n => Ok(vec![n.to_string()]),
                    }
                };
                let inputs = match entry.remove("inputs") {
                    Some(v) => {
                        let names = string_list(&v, "inputs").map_err(|e| (lkey.clone(), e))?;
                        let mut resolved = Vec::new();
                        for n in &names {
                            resolved.extend(resolve(n).map_err(|e| (lkey.clone(), e))?);
                        }
                        Some(resolved)
                    }
                    None if j == 0 => Some(input_names.clone()).filter(|v| !v.is_empty()),
                    None => None,
                };
                entry.insert(
                    "name".into(),
                    Value::from(format!("{instance}_{local_name}")),
                );
                local.push(local_name);
                out.push(Expanded {
                    entry,
                    inputs,
                    key: lkey,
                    generated_name: false,
                });
            }
            block_input = None;
        }
    }
    Ok(out)
}

/// Whether the expanded layers need a graph: some layer names what it takes.
pub(crate) fn is_graph(expanded: &[Expanded]) -> bool {
    expanded.iter().any(|e| e.inputs.is_some())
}

/// The Keras 2 `inbound_nodes` of each expanded layer: what it names, or the previous layer
/// (`first_input` for the first).
pub(crate) fn with_inbound_nodes(expanded: &[Expanded], first_input: &str) -> Vec<Value> {
    let mut previous = first_input.to_string();
    expanded
        .iter()
        .map(|e| {
            let inputs = e.inputs.clone().unwrap_or_else(|| vec![previous.clone()]);
            let node: Vec<Value> = inputs
                .iter()
                .map(|n| serde_json::json!([n, 0, 0, {}]))
                .collect();
            let name = e.entry["name"].clone();
            previous = name.as_str().unwrap_or("").to_string();
            let mut config = e.entry.clone();
            let class = config.remove("class_name").unwrap_or(Value::Null);
            serde_json::json!({"class_name": class, "name": name, "config": config,
                               "inbound_nodes": [node]})
        })
        .collect()
}
