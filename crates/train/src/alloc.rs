/// candle allocates and frees multi-megabyte tensors every training step, and glibc returns
/// them to the kernel each time: the page faults cost as much system time as the maths.
/// Call this once at the start of a program that trains, to keep freed memory in the heap
/// (measured: sys time per 1 800-image epoch 10–12 s → ~3 s). It changes the process-wide
/// allocator settings, so libraries never call it themselves; elsewhere than glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocator tuning; it is safe to call at any time.
    unsafe {
        // Serve blocks up to 32 MiB (glibc's largest threshold) from the heap, and larger ones
        // too: no block is mapped on its own (airbench94's activations are hundreds of MiB;
        // mapped and unmapped every step, they cost 135 000 page faults a step, ~10 % of its
        // CPU time). Grow the heap in 256 MiB steps and never trim it.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// The process-wide settings a training program wants on the CPU, to call first thing in
/// `main` (before any tensor exists): [`keep_freed_memory`], and candle's elementwise ops
/// without helper threads unless `CANDLE_NUM_THREADS` says otherwise. Those helpers spin
/// between ops and, on a 2-core machine, take a core from the convolution kernels that run
/// on rayon's pool (measured: ~10 CPU-ms less per training step, wall time no worse; candle's
/// matrix products still use `RAYON_NUM_THREADS` threads).
pub fn tune_cpu_runtime() {
    keep_freed_memory();
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Read once, when candle first runs an elementwise op; nothing has run yet.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
