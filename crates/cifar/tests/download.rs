//! The downloader against a local HTTP server on loopback serving a small archive.
#![cfg(feature = "download")]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use md5::{Digest, Md5};
use simplecnn_cifar::{binary, download, LabeledImages, IMAGE_BYTES};

/// A `.tar.gz` with `cifar-10-batches-bin/` holding 3-record batches.
fn small_archive() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let set = LabeledImages::new(vec![7; 3 * IMAGE_BYTES], vec![0, 1, 2], 10).unwrap();
    for f in binary::TRAIN_FILES.iter().chain([&binary::TEST_FILE]) {
        binary::write_batch_file(&dir.join(f), &set).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut tar = tar::Builder::new(&mut gz);
        tar.append_dir_all("cifar-10-batches-bin", &dir).unwrap();
        tar.finish().unwrap();
    }
    gz.finish().unwrap()
}

/// Serves `body` to each of `requests` connections; returns the URL.
fn serve(body: Vec<u8>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut s = stream.unwrap();
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
                req.push(byte[0]);
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&body).unwrap();
        }
    });
    format!("http://{addr}/cifar-10-binary.tar.gz")
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn no_staging_left(dest: &Path) -> bool {
    std::fs::read_dir(dest).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".cifar-download")
    })
}

#[test]
fn downloads_checks_md5_and_unpacks() {
    let body = small_archive();
    let md5 = md5_hex(&body);
    let url = serve(body, 1);
    let dest = tempfile::tempdir().unwrap();
    let dir = download::download_binary(&url, &md5, dest.path(), false).unwrap();
    assert_eq!(dir, dest.path().join("cifar-10-batches-bin"));
    let data = binary::load_binary_with(dest.path(), None).unwrap();
    assert_eq!(data.test.labels(), &[0, 1, 2]);
    assert!(no_staging_left(dest.path()));
    // Already there: no second request is made (the server only answers one).
    download::download_binary(&url, &md5, dest.path(), false).unwrap();
}

#[test]
fn md5_mismatch_leaves_nothing_behind() {
    let url = serve(small_archive(), 1);
    let dest = tempfile::tempdir().unwrap();
    let err =
        download::download_binary(&url, download::OFFICIAL_MD5, dest.path(), false).unwrap_err();
    assert!(err.to_string().contains("MD5"), "{err}");
    assert!(!dest.path().join("cifar-10-batches-bin").exists());
    assert!(no_staging_left(dest.path()));
}

#[test]
fn unreachable_server_fails_fast_with_instructions() {
    // Bind then drop: the port is closed, the connection is refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dest = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let err = download::download_binary(
        &format!("http://127.0.0.1:{port}/x.tar.gz"),
        "00",
        dest.path(),
        false,
    )
    .unwrap_err();
    assert!(started.elapsed().as_secs() < 15);
    let says = err.to_string();
    assert!(says.contains("CIFAR-10's binary archive"), "{says}");
    assert!(says.contains(&dest.path().display().to_string()), "{says}");
    assert!(says.contains("CIFAR10_DIR"), "{says}");
}

/// A failed file download says what it fetched, where it would go and how to put it there by
/// hand, not the data set's advice.
#[test]
fn a_failed_file_download_names_the_file_its_place_and_the_way_by_hand() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("models/vgg16_notop.h5");
    let err = download::download_file(
        &format!("http://127.0.0.1:{port}/vgg16_notop.h5"),
        &"0".repeat(32),
        &dest,
        "VGG-16's ImageNet weights",
        false,
    )
    .unwrap_err();
    let says = err.to_string();
    assert!(
        says.contains("cannot download VGG-16's ImageNet weights from"),
        "{says}"
    );
    assert!(says.contains(&dest.display().to_string()), "{says}");
    assert!(says.contains("copy it there"), "{says}");
    assert!(
        !says.contains("CIFAR") && !says.contains("tar xzf"),
        "{says}"
    );
    assert!(!dest.exists());
}

#[test]
fn a_file_download_is_md5_checked_and_a_good_copy_is_kept() {
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("cache/models/weights.h5");
    let url = serve(body.clone(), 2);
    // Wrong MD5: an error naming the URL, and nothing at dest or beside it.
    let err =
        download::download_file(&url, &"0".repeat(32), &dest, "the weights", false).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(!dest.exists());
    assert_eq!(
        std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
        0
    );
    let got = download::download_file(&url, &md5_hex(&body), &dest, "the weights", false).unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), body);
    // Already there with the right MD5: no request is made (the server has served both).
    let again = download::download_file(
        "http://127.0.0.1:9/x",
        &md5_hex(&body),
        &dest,
        "the weights",
        false,
    );
    assert_eq!(again.unwrap(), dest);
    // A damaged copy in the cache is named, not used.
    std::fs::write(&dest, b"truncated").unwrap();
    let err = download::download_file(
        "http://127.0.0.1:9/x",
        &md5_hex(&body),
        &dest,
        "the weights",
        false,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("weights.h5") && err.to_string().contains("delete it"),
        "{err}"
    );
}
