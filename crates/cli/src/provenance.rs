//! What every result records about where it came from: commit, machine, versions.

use std::process::Command;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Provenance {
    pub git_commit: String,
    pub git_dirty: bool,
    pub timestamp_utc: String,
    pub host: String,
    pub cpu_model: String,
    pub cpu_cores: usize,
    pub candle_threads: usize,
    pub rustc: String,
    pub crate_versions: serde_json::Value,
    /// The cargo features this binary was built with that change where and how it computes.
    pub build_features: Vec<&'static str>,
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

pub fn host() -> String {
    output("hostname", &[])
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Versions of the crates that decide speed and numerics, read from Cargo.lock.
pub fn crate_versions() -> serde_json::Value {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"))
        .unwrap_or_default();
    let mut map = serde_json::Map::new();
    map.insert("simplecnn".into(), env!("CARGO_PKG_VERSION").into());
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            if ["candle-core", "candle-nn", "gemm"].contains(&n.as_str()) {
                map.insert(n, v.trim_matches('"').into());
            }
        }
    }
    map.into()
}

/// `cuda`, `cudnn`: the GPU backends compiled in.
pub fn build_features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "cuda") {
        features.push("cuda");
    }
    if cfg!(feature = "cudnn") {
        features.push("cudnn");
    }
    features
}

pub fn collect() -> Provenance {
    // Where no repository is at hand (the GPU machine gets a copy of the tree), the commit the
    // binary was packed from, which benches/gpu/run.sh passes on.
    let git_commit = output("git", &["rev-parse", "HEAD"])
        .or_else(|| std::env::var("SIMPLECNN_GIT_COMMIT").ok())
        .unwrap_or_else(|| "unknown".into());
    let git_dirty = output("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    Provenance {
        git_commit,
        git_dirty,
        timestamp_utc: output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default(),
        host: host(),
        cpu_model: cpu_model(),
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        candle_threads: candle_core::utils::get_num_threads(),
        rustc: output("rustc", &["--version"]).unwrap_or_default(),
        crate_versions: crate_versions(),
        build_features: build_features(),
    }
}

/// `2026-11-28T054012Z`-like stamp for run folders (UTC, from the system clock).
pub fn utc_stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "")
}
