//! `keep_freed_memory`: a block larger than glibc's largest mmap threshold (32 MiB), freed and
//! asked for again, comes back without the kernel handing out (and zeroing) its pages again.

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    freed_blocks_come_back_without_page_faults();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn freed_blocks_come_back_without_page_faults() {
    simplecnn_train::keep_freed_memory();
    const LEN: usize = 96 << 20;
    const PAGE: usize = 4096;
    let minor_faults = || {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes into the struct it is given.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
        usage.ru_minflt as usize
    };
    let touch = || {
        let mut block = vec![0u8; LEN];
        for page in block.chunks_mut(PAGE) {
            page[0] = 1;
        }
        std::hint::black_box(&block);
    };
    touch();
    let before = minor_faults();
    touch();
    let faults = minor_faults() - before;
    let pages = LEN / PAGE;
    assert!(
        faults < pages / 10,
        "a freed {} MiB block came back with {faults} page faults ({pages} pages)",
        LEN >> 20
    );
    println!("freed_blocks_come_back_without_page_faults: ok ({faults} faults, {pages} pages)");
}
