//! Output buffers for ops whose kernels write every element.

use std::sync::atomic::{AtomicBool, Ordering};

static FILL_WITH_NAN: AtomicBool = AtomicBool::new(false);

/// From now on, [`unwritten`] buffers start as NaN: a test's way to see an element a kernel
/// forgot to write (otherwise it holds whatever the allocator left there, often a plausible
/// value from an earlier tensor).
#[doc(hidden)]
pub fn fill_unwritten_outputs_with_nan() {
    FILL_WITH_NAN.store(true, Ordering::Relaxed);
}

/// `len` f32s for an op's output, not zeroed: zeroing an activation that the kernel then
/// overwrites was ~4 % of a ResNet-20 step (memset; glibc recycles freed blocks of that size,
/// so calloc cannot hand back pages it knows are zero).
///
/// # Safety
/// The caller writes every element before anything reads one (candle's CPU backend allocates
/// its own outputs this way).
pub(crate) unsafe fn unwritten(len: usize) -> Vec<f32> {
    if FILL_WITH_NAN.load(Ordering::Relaxed) {
        return vec![f32::NAN; len];
    }
    let mut v = Vec::with_capacity(len);
    // SAFETY: f32 has no invalid bit patterns; the caller's contract covers the reads.
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(len)
    };
    v
}
