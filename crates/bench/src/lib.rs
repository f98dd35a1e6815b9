//! The throughput harness behind `cargo xtask bench`: a number of training steps and of
//! inference images on real data, reported as medians, CPU-seconds (user + system) and peak RSS.
//!
//! The machines this runs on have two cores that are not always both free, so every report
//! carries CPU-seconds beside wall time, and [`EPOCH`] turns both into per-epoch figures with
//! the same formula the reference scripts (`benches/reference/`) use: comparisons are ratios
//! of numbers taken in one run.

mod process;
mod throughput;

pub use process::{cpu_seconds, peak_rss_mib};
pub use throughput::{
    measure, measure_workload, median, BenchConfig, BenchError, EpochShape, RawMeasurement,
    ThroughputReport, Workload, EPOCH, FORWARD_MACS_PER_IMAGE,
};
