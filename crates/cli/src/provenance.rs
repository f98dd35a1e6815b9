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

pub fn collect() -> Provenance {
    let git_commit = output("git", &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
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
    }
}

/// `2026-11-28T054012Z`-like stamp for run folders (UTC, from the system clock).
pub fn utc_stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "")
}
