//! What a model will hold in memory, checked against what the process may use before anything
//! is allocated: a model whose weights are each within the per-tensor limit can still add up to
//! more than the machine has, and an allocation that fails aborts the process (Rust's
//! allocator does not return an error). The estimate counts the weights, the optimizer's slots,
//! the gradients and the batch's activations; the limit is the smallest of the memory the
//! system has available, the cgroup's limit and `ulimit -v`, or `SIMPLECNN_MEMORY_LIMIT`.

use crate::error::{ModelError, Result};
use crate::network::Network;

const F32: u64 = 4;

/// What a use of a model holds, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNeed {
    pub weights: u64,
    /// Gradients and the optimizer's slots (Adam: two per weight), when training.
    pub training_state: u64,
    /// The batch's activations (and, when training, their gradients).
    pub activations: u64,
    pub batch: usize,
}

impl MemoryNeed {
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.training_state)
            .saturating_add(self.activations)
    }

    /// The weights alone: what making the model allocates.
    pub fn weights_of(net: &Network) -> MemoryNeed {
        MemoryNeed {
            weights: (net.param_count() as u64).saturating_mul(F32),
            training_state: 0,
            activations: 0,
            batch: 0,
        }
    }

    /// Predicting or evaluating `batch` images: the weights and, as values are released after
    /// their last use, about the two largest layer outputs (one read, one written) twice over
    /// (the kernels' working copies).
    pub fn inference(net: &Network, batch: usize) -> MemoryNeed {
        let mut sizes = value_sizes(net);
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let per_image: u64 = sizes.iter().take(2).sum::<u64>().saturating_mul(2);
        MemoryNeed {
            activations: per_image.saturating_mul(batch as u64).saturating_mul(F32),
            batch,
            ..Self::weights_of(net)
        }
    }

    /// Training on batches of `batch` images with an optimizer that keeps `slots` values per
    /// trainable weight: the weights, a gradient and the slots per trainable weight, every
    /// layer's output kept for the backward pass, and the gradients flowing back, which are
    /// released as they go: about two of the largest output at a time. (airbench94 at batch
    /// 1024: 1.8 GiB estimated against a measured peak RSS of 1 663 MiB, data included.)
    pub fn training(net: &Network, batch: usize, slots: usize) -> MemoryNeed {
        let trainable = net.trainable_param_count() as u64;
        let outputs = value_sizes(net);
        let largest = outputs.iter().copied().max().unwrap_or(0);
        let per_image: u64 = outputs
            .iter()
            .fold(0u64, |a, &b| a.saturating_add(b))
            .saturating_add(largest.saturating_mul(2));
        MemoryNeed {
            training_state: trainable
                .saturating_mul(1 + slots as u64)
                .saturating_mul(F32),
            activations: per_image.saturating_mul(batch as u64).saturating_mul(F32),
            batch,
            ..Self::weights_of(net)
        }
    }
}

/// Values per image of every value of a forward pass: the input, then each layer's output.
fn value_sizes(net: &Network) -> Vec<u64> {
    std::iter::once(net.input_shape().elem_count() as u64)
        .chain(net.layers().iter().map(|l| l.output.elem_count() as u64))
        .collect()
}

/// How much memory this process may still use, and what says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: String,
}

/// `8G`, `512M`, `1.5GiB`, `1000000` (bytes) as bytes.
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.trim().parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    (number.is_finite() && number >= 0.0).then_some((number * scale as f64) as u64)
}

/// A `Key:   1234 kB` line of a /proc file, in bytes.
fn proc_kb(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

/// The cgroup v2 limit left to this process: `memory.max` less `memory.current`.
fn cgroup_left() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let max: u64 = std::fs::read_to_string(dir.join("memory.max"))
        .ok()?
        .trim()
        .parse()
        .ok()?; // "max": no limit
    let current: u64 = std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(max.saturating_sub(current))
}

/// `ulimit -v` less the address space already in use.
fn address_space_left() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let used = proc_kb(&status, "VmSize:").unwrap_or(0);
    Some(limit.rlim_cur.saturating_sub(used))
}

/// The memory this process may use: `SIMPLECNN_MEMORY_LIMIT` when set (a size such as `8G`,
/// replacing what is detected; `off` turns the check off), else the smallest of the system's
/// available memory, the cgroup's limit and `ulimit -v`. `None` when nothing is known.
pub fn memory_limit() -> Result<Option<MemoryLimit>> {
    if let Ok(text) = std::env::var("SIMPLECNN_MEMORY_LIMIT") {
        if text.trim() == "off" {
            return Ok(None);
        }
        let bytes = parse_size(&text).ok_or_else(|| {
            ModelError::Config(format!(
                "SIMPLECNN_MEMORY_LIMIT={text:?} is not a size (e.g. 8G, 512M) or \"off\""
            ))
        })?;
        return Ok(Some(MemoryLimit {
            bytes,
            source: "SIMPLECNN_MEMORY_LIMIT".into(),
        }));
    }
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| proc_kb(&m, "MemAvailable:"));
    let candidates = [
        (available, "available memory"),
        (cgroup_left(), "the cgroup's memory.max"),
        (address_space_left(), "ulimit -v"),
    ];
    Ok(candidates
        .into_iter()
        .filter_map(|(bytes, source)| {
            bytes.map(|bytes| MemoryLimit {
                bytes,
                source: source.to_string(),
            })
        })
        .min_by_key(|l| l.bytes))
}

/// `bytes` as a person reads it: `1.5 GiB`, `640.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", units[unit]),
    }
}

/// `need` against `limit`: one line saying how much `what` needs and how much there is.
pub fn check_fits(need: &MemoryNeed, limit: Option<&MemoryLimit>, what: &str) -> Result<()> {
    let Some(limit) = limit else {
        return Ok(());
    };
    if need.total() <= limit.bytes {
        return Ok(());
    }
    let mut parts = vec![format!("weights {}", human_bytes(need.weights))];
    if need.training_state > 0 {
        parts.push(format!(
            "gradients and optimizer slots {}",
            human_bytes(need.training_state)
        ));
    }
    if need.activations > 0 {
        parts.push(format!(
            "activations of a batch of {} {}",
            need.batch,
            human_bytes(need.activations)
        ));
    }
    Err(ModelError::Config(format!(
        "{what} needs about {} ({}), more than the {} this process may use ({}; \
         SIMPLECNN_MEMORY_LIMIT=8G or =off overrides it)",
        human_bytes(need.total()),
        parts.join(", "),
        human_bytes(limit.bytes),
        limit.source
    )))
}

/// [`check_fits`] against [`memory_limit`].
pub fn check_memory(need: &MemoryNeed, what: &str) -> Result<()> {
    check_fits(need, memory_limit()?.as_ref(), what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Activation, FeatureShape, LayerKind};

    fn dense_stack(units: usize, layers: usize) -> Network {
        let input = FeatureShape::Image {
            channels: 3,
            height: 32,
            width: 32,
        };
        let mut net = Network::new("dense_stack", input);
        net.add(LayerKind::Flatten).unwrap();
        for _ in 0..layers {
            net.add(LayerKind::dense(units, Activation::Relu)).unwrap();
        }
        net
    }

    #[test]
    fn the_estimate_adds_weights_slots_and_activations() {
        let net = dense_stack(100, 2);
        let params = (3072 * 100 + 100 + 100 * 100 + 100) as u64;
        assert_eq!(MemoryNeed::weights_of(&net).total(), params * 4);
        let train = MemoryNeed::training(&net, 10, 2);
        assert_eq!(train.weights, params * 4);
        assert_eq!(train.training_state, params * 4 * 3);
        // input, flatten, two dense outputs kept, and two gradients of the largest (3072).
        assert_eq!(
            train.activations,
            (3072 + 3072 + 100 + 100 + 2 * 3072) * 10 * 4
        );
        let infer = MemoryNeed::inference(&net, 10);
        assert_eq!(infer.activations, (3072 + 3072) * 2 * 10 * 4);
    }

    #[test]
    fn a_model_too_big_for_the_limit_is_refused_in_one_line_saying_both_sizes() {
        let net = dense_stack(16384, 10);
        let limit = MemoryLimit {
            bytes: 3 << 30,
            source: "ulimit -v".into(),
        };
        let need = MemoryNeed::training(&net, 128, 2);
        let err = check_fits(&need, Some(&limit), "training")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("training needs about 36.8 GiB (weights 9.2 GiB, "),
            "{err}"
        );
        assert!(
            err.contains("more than the 3.0 GiB this process may use (ulimit -v"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        let small = dense_stack(10, 1);
        check_fits(
            &MemoryNeed::training(&small, 128, 2),
            Some(&limit),
            "training",
        )
        .unwrap();
        check_fits(&need, None, "training").unwrap();
    }

    /// The estimate must not refuse what runs: the tutorial's SimpleCNN at batch 128 peaks at
    /// 457 MiB of RSS in a whole run (results/baseline/latest/run.json, the data set's 184 MB
    /// and the runtime included); the estimate of what the model holds stays below that.
    #[test]
    fn the_estimate_stays_below_what_a_real_run_holds() {
        let need = MemoryNeed::training(&crate::zoo::simple_cnn(), 128, 2);
        assert!(need.total() < 457 << 20, "{}", human_bytes(need.total()));
        assert!(need.total() > 20 << 20, "{}", human_bytes(need.total()));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("512 MiB"), Some(512 << 20));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1G"), None);
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(12), "12 B");
    }

    #[test]
    fn the_limit_is_found_on_linux() {
        if std::env::var_os("SIMPLECNN_MEMORY_LIMIT").is_none() {
            let limit = memory_limit()
                .unwrap()
                .expect("/proc/meminfo says what is available");
            assert!(limit.bytes > 0);
        }
    }
}
