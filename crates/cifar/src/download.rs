//! Fetching the official binary archive: streamed with a progress bar, MD5-checked, unpacked
//! into a temporary folder and renamed into place, so a failed download leaves nothing behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use crate::binary::{find_batches_dir, BATCHES_DIR};
use crate::error::{io_err, CifarError, Result};

/// Where the dataset's authors publish the binary version.
pub const OFFICIAL_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// The MD5 the authors publish for that archive.
pub const OFFICIAL_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";

/// Downloads `url` (a `.tar.gz` holding `cifar-10-batches-bin/`), checks `md5`, and unpacks it
/// as `dest/cifar-10-batches-bin`. Returns that folder; does nothing if it is already there.
pub fn download_binary(url: &str, md5: &str, dest: &Path, progress: bool) -> Result<PathBuf> {
    if let Some(dir) = find_batches_dir(dest) {
        return Ok(dir);
    }
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    let staging = tempfile::Builder::new()
        .prefix(".cifar-download-")
        .tempdir_in(dest)
        .map_err(io_err(dest))?;
    let archive = staging.path().join("cifar-10-binary.tar.gz");
    let by_hand = format!(
        "it would be unpacked into {}. Without network access, fetch cifar-10-binary.tar.gz \
         (MD5 {md5}) elsewhere and unpack it (tar xzf) into {}, or point --data / CIFAR10_DIR \
         at an existing copy (binary layout or train/ and test/ image folders)",
        dest.join(BATCHES_DIR).display(),
        dest.display()
    );
    let digest = fetch(
        url,
        &archive,
        progress,
        "CIFAR-10's binary archive",
        &by_hand,
    )?;
    if !digest.eq_ignore_ascii_case(md5) {
        return Err(CifarError::Other(format!(
            "{url}: MD5 {digest} does not match the published {md5}; the download is corrupt \
             (nothing was unpacked)"
        )));
    }
    let unpacked = staging.path().join("unpacked");
    let file = std::fs::File::open(&archive).map_err(io_err(&archive))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(&unpacked)
        .map_err(|e| CifarError::Other(format!("{url}: cannot unpack the archive: {e}")))?;
    let inner = unpacked.join(BATCHES_DIR);
    if find_batches_dir(&inner).is_none() {
        return Err(CifarError::Other(format!(
            "{url}: the archive holds no {BATCHES_DIR}/test_batch.bin"
        )));
    }
    let target = dest.join(BATCHES_DIR);
    std::fs::rename(&inner, &target).map_err(io_err(&target))?;
    Ok(target)
}

/// Downloads `url` to the file `dest` (e.g. pretrained weights into a cache folder) unless a
/// file with the `md5` is already there: fetched into a temporary file beside it, checked, and
/// renamed, so a failed or corrupt download never leaves a file at `dest`. `what` names the
/// file in errors ("VGG-16's ImageNet weights").
pub fn download_file(
    url: &str,
    md5: &str,
    dest: &Path,
    what: &str,
    progress: bool,
) -> Result<PathBuf> {
    if dest.is_file() {
        let digest = md5_of_file(dest)?;
        if digest.eq_ignore_ascii_case(md5) {
            return Ok(dest.to_path_buf());
        }
        return Err(CifarError::Other(format!(
            "{}: MD5 {digest} is not the published {md5}: a truncated or different file; \
             delete it to download it again",
            dest.display()
        )));
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let staging = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let by_hand = format!(
        "it would be saved as {}. Without network access, fetch that file elsewhere (MD5 \
         {md5}) and copy it there",
        dest.display()
    );
    let digest = fetch(url, staging.path(), progress, what, &by_hand)?;
    if !digest.eq_ignore_ascii_case(md5) {
        return Err(CifarError::Other(format!(
            "{url}: MD5 {digest} does not match the published {md5}; the download is corrupt \
             (nothing was kept)"
        )));
    }
    staging.persist(dest).map_err(|e| CifarError::Io {
        path: dest.into(),
        source: e.error,
    })?;
    Ok(dest.to_path_buf())
}

fn md5_of_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Md5::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_err(path))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams `url` into `path`, returning the hex MD5 of what arrived. A failure says `what` was
/// being fetched and, in `by_hand`, where it goes and how to put a copy there by hand.
fn fetch(url: &str, path: &Path, progress: bool, what: &str, by_hand: &str) -> Result<String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(60))
        .build();
    let offline = |e: String| {
        CifarError::Other(format!(
            "cannot download {what} from {url}: {e}\n{}{}",
            by_hand[..1].to_uppercase(),
            &by_hand[1..]
        ))
    };
    let response = agent.get(url).call().map_err(|e| offline(e.to_string()))?;
    let total: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.parse().ok());
    let bar = if progress {
        indicatif::ProgressBar::new(total.unwrap_or(0)).with_style(
            indicatif::ProgressStyle::with_template(
                "{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} {eta}",
            )
            .expect("valid template"),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut reader = response.into_reader();
    let mut out = std::fs::File::create(path).map_err(io_err(path))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| offline(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(path))?;
        received += n as u64;
        bar.set_position(received);
    }
    bar.finish_and_clear();
    if let Some(total) = total {
        if received != total {
            return Err(offline(format!(
                "connection closed after {received} of {total} bytes"
            )));
        }
    }
    Ok(hex(&hasher.finalize()))
}
