//! The real data in ../shared/data: the JPEG copy and the binary layout `make_cifar_bin.py` makes
//! from it both load as 50 000 / 10 000 images with 5 000 / 1 000 per class.
//!
//! The data is unpacked (once) under cargo's target tmpdir. Without ../shared (a lone checkout)
//! the tests say so and pass; under CI (`CI` set) a missing copy is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("SIMPLECNN_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if dir.join("cifar10-jpg.tar.gz").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI needs the shared data at {}",
        dir.display()
    );
    eprintln!("skipping: no shared CIFAR-10 copy at {}", dir.display());
    None
}

/// Unpacks the JPEG tarball once into the target tmpdir (a marker file says it finished).
fn jpeg_dir(shared: &Path) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cifar10-jpg-shared");
    let done = out.join(".unpacked");
    if !done.is_file() {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let status = Command::new("tar")
            .arg("xzf")
            .arg(shared.join("cifar10-jpg.tar.gz"))
            .arg("-C")
            .arg(&out)
            .status()
            .expect("run tar");
        assert!(status.success(), "tar failed");
        std::fs::write(&done, b"").unwrap();
    }
    out
}

fn check_counts(data: &simplecnn_cifar::Cifar10) {
    assert_eq!(data.train.len(), 50_000);
    assert_eq!(data.test.len(), 10_000);
    assert_eq!(data.train.class_counts(), vec![5_000; 10]);
    assert_eq!(data.test.class_counts(), vec![1_000; 10]);
    assert_eq!(data.class_names, simplecnn_cifar::CLASS_NAMES);
}

#[test]
fn shared_jpeg_copy_and_its_binary_form_load_in_full() {
    let Some(shared) = shared_data() else { return };
    let jpg = jpeg_dir(&shared);
    let from_jpeg = simplecnn_cifar::load(&jpg).unwrap();
    check_counts(&from_jpeg);

    // The binary layout, as make_cifar_bin.py writes it (needs python3 with Pillow).
    let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cifar10-bin-shared");
    if !bin.join("cifar-10-batches-bin/test_batch.bin").is_file() {
        let ok = Command::new("python3")
            .arg(shared.join("make_cifar_bin.py"))
            .arg(jpg.join("cifar10-jpg"))
            .arg(&bin)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "make_cifar_bin.py failed (Pillow installed?)"
            );
            eprintln!("skipping the binary half: make_cifar_bin.py failed (pip install pillow)");
            return;
        }
    }
    let from_bin = simplecnn_cifar::load(&bin).unwrap();
    check_counts(&from_bin);
    // The same images: the binary file's first test image is among the decoded JPEGs, up to the
    // rounding of another JPEG decoder (Pillow/libjpeg-turbo there, the `image` crate here).
    let first = from_bin.test.image(0);
    let mean_diff = |img: &[u8]| {
        img.iter()
            .zip(first)
            .map(|(a, b)| a.abs_diff(*b) as f64)
            .sum::<f64>()
            / img.len() as f64
    };
    let best = (0..from_jpeg.test.len())
        .filter(|&i| from_jpeg.test.label(i) == from_bin.test.label(0))
        .map(|i| mean_diff(from_jpeg.test.image(i)))
        .fold(f64::INFINITY, f64::min);
    eprintln!("closest decoded JPEG differs by {best:.3} per pixel value on average");
    assert!(
        best < 1.5,
        "the binary file's first test image is not among the JPEGs (best {best})"
    );
}
