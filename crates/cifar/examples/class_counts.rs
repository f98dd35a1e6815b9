//! Loads CIFAR-10 from a folder (either layout) and prints images per class.
//!
//! `cargo run --release -p simplecnn-cifar --example class_counts -- data/`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "data".into());
    let started = std::time::Instant::now();
    let data = simplecnn_cifar::load(std::path::Path::new(&dir))?;
    println!(
        "{} ({:?}) in {:.2?}",
        data.source.display(),
        simplecnn_cifar::detect(&data.source)?,
        started.elapsed()
    );
    let (train, test) = (data.train.class_counts(), data.test.class_counts());
    for (c, name) in data.class_names.iter().enumerate() {
        println!("{c} {name:<12} train {:>5}  test {:>5}", train[c], test[c]);
    }
    println!(
        "  {:<12} train {:>5}  test {:>5}",
        "total",
        data.train.len(),
        data.test.len()
    );
    Ok(())
}
