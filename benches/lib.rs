//! Criterion benchmarks live in `benches/`: `cargo bench -p simplecnn-benches`.
//!
//! Work per image of the tutorial model, for turning images/s into GFLOP/s: the forward pass
//! is [`FORWARD_MACS_PER_IMAGE`] multiply-adds; a training step is about three times that.

/// conv2d_1 884 736 + conv2d_2 4 718 592 + dense_1 524 288 + dense_2 1 280.
pub const FORWARD_MACS_PER_IMAGE: u64 = 884_736 + 4_718_592 + 524_288 + 1_280;
