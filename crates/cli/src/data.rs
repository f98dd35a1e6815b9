//! `data`: fetch the official binary archive.

use std::path::PathBuf;

use anyhow::Result;
use simplecnn_cifar::download;

#[derive(clap::Args)]
pub struct DataArgs {
    /// Where to put `cifar-10-batches-bin/` (default: CIFAR10_DIR, else data/).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Download from this URL instead of the dataset's official site (a mirror).
    #[arg(long, default_value = download::OFFICIAL_URL)]
    pub url: String,
    /// Expected MD5 of the archive.
    #[arg(long, default_value = download::OFFICIAL_MD5)]
    pub md5: String,
}

/// `--data`, else `CIFAR10_DIR`, else `data/`.
pub fn data_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("CIFAR10_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Downloads the official archive into `dest` (no-op when a copy is there).
pub fn download_into(dest: &std::path::Path) -> Result<PathBuf> {
    Ok(download::download_binary(
        download::OFFICIAL_URL,
        download::OFFICIAL_MD5,
        dest,
        true,
    )?)
}

pub fn run(args: DataArgs) -> Result<()> {
    let dest = data_dir(args.data);
    let dir = download::download_binary(&args.url, &args.md5, &dest, true)?;
    let data = simplecnn_cifar::load(&dir)?;
    println!(
        "CIFAR-10 ready in {}: {} training, {} test images",
        dir.display(),
        data.train.len(),
        data.test.len()
    );
    Ok(())
}
