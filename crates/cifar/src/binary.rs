//! The official binary distribution: `data_batch_{1..5}.bin`, `test_batch.bin`, `batches.meta.txt`.

use std::path::{Path, PathBuf};

use crate::error::{io_err, CifarError, Result};
use crate::images::{LabeledImages, IMAGE_BYTES};
use crate::{Cifar10, CLASS_NAMES};

/// One record: a label byte, then the R, G and B planes.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Records in each official batch file.
pub const RECORDS_PER_FILE: usize = 10_000;
/// The folder name inside the official archive.
pub const BATCHES_DIR: &str = "cifar-10-batches-bin";
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILE: &str = "test_batch.bin";

/// The folder holding the `.bin` files: `dir` itself or `dir/cifar-10-batches-bin`, if either has them.
pub fn find_batches_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join(BATCHES_DIR)]
        .into_iter()
        .find(|d| d.join(TEST_FILE).is_file())
}

/// Parses one batch file. With `expected_records`, the file must hold exactly that many records.
pub fn read_batch_file(path: &Path, expected_records: Option<usize>) -> Result<LabeledImages> {
    // The size is checked from the metadata first: a huge (or sparse) file is refused before
    // anything is read into memory.
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(CifarError::Layout {
            path: path.into(),
            message: "not a regular file".into(),
        });
    }
    let len = meta.len();
    let limit = expected_records.unwrap_or(MAX_RECORDS_PER_FILE) as u64 * RECORD_BYTES as u64;
    match expected_records {
        Some(records) if len != limit => {
            return Err(CifarError::WrongSize {
                path: path.into(),
                len,
                expected: limit,
                records,
                record: RECORD_BYTES,
            })
        }
        None if len > limit => {
            return Err(CifarError::Layout {
                path: path.into(),
                message: format!(
                    "{len} bytes is more than the {MAX_RECORDS_PER_FILE} records a batch file \
                     may hold here ({limit} bytes)"
                ),
            })
        }
        _ => {}
    }
    let bytes = simplecnn_files::read(path).map_err(io_err(path))?;
    parse_batch(path, &bytes, expected_records)
}

/// The most records a batch file of unknown size may hold (the official ones have 10 000).
pub const MAX_RECORDS_PER_FILE: usize = 1_000_000;

pub(crate) fn parse_batch(
    path: &Path,
    bytes: &[u8],
    expected_records: Option<usize>,
) -> Result<LabeledImages> {
    let len = bytes.len() as u64;
    if let Some(records) = expected_records {
        if bytes.len() != records * RECORD_BYTES {
            return Err(CifarError::WrongSize {
                path: path.into(),
                len,
                expected: (records * RECORD_BYTES) as u64,
                records,
                record: RECORD_BYTES,
            });
        }
    }
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(CifarError::Truncated {
            path: path.into(),
            len,
            record: RECORD_BYTES,
        });
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
    for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if rec[0] as usize >= CLASS_NAMES.len() {
            return Err(CifarError::LabelOutOfRange {
                path: path.into(),
                record: i,
                label: rec[0],
            });
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    LabeledImages::new(pixels, labels, CLASS_NAMES.len())
}

/// Loads the five training batches (in order) and the test batch from `dir`
/// (the `cifar-10-batches-bin` folder or its parent). Each file must hold exactly
/// [`RECORDS_PER_FILE`] records, as the official files do.
pub fn load_binary(dir: &Path) -> Result<Cifar10> {
    load_binary_with(dir, Some(RECORDS_PER_FILE))
}

/// Like [`load_binary`]; `records_per_file: None` accepts any whole number of records
/// (small data sets made for tests or experiments).
pub fn load_binary_with(dir: &Path, records_per_file: Option<usize>) -> Result<Cifar10> {
    let root = find_batches_dir(dir).ok_or_else(|| CifarError::Missing {
        path: dir.join(BATCHES_DIR).join(TEST_FILE),
        hint: "expected the CIFAR-10 binary layout (cifar-10-batches-bin/*.bin)".into(),
    })?;
    let mut files: Vec<PathBuf> = TRAIN_FILES.iter().map(|f| root.join(f)).collect();
    files.push(root.join(TEST_FILE));
    for f in &files {
        if !f.is_file() {
            return Err(CifarError::Missing {
                path: f.clone(),
                hint: "the binary layout needs data_batch_1..5.bin and test_batch.bin".into(),
            });
        }
    }
    // Six files of 30 MB: read them in parallel. Results are gathered first and checked in
    // file order, so a bad set reports its first bad file whichever thread finished first.
    use rayon::prelude::*;
    let results: Vec<Result<LabeledImages>> = files
        .par_iter()
        .map(|f| read_batch_file(f, records_per_file))
        .collect();
    let mut parts = results.into_iter().collect::<Result<Vec<_>>>()?;
    let test = parts.pop().expect("six files");
    let mut parts = parts.into_iter();
    let mut train = parts.next().expect("five training files");
    for p in parts {
        train.append(p);
    }
    let class_names = read_meta(&root.join("batches.meta.txt"))?;
    Ok(Cifar10 {
        train,
        test,
        class_names,
        source: root,
    })
}

/// Class names from `batches.meta.txt` when present, else the standard CIFAR-10 names.
fn read_meta(path: &Path) -> Result<Vec<String>> {
    if !path.is_file() {
        return Ok(CLASS_NAMES.iter().map(|s| s.to_string()).collect());
    }
    let text = simplecnn_files::read_to_string(path).map_err(io_err(path))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != CLASS_NAMES.len() {
        return Err(CifarError::Layout {
            path: path.into(),
            message: format!(
                "{} class names, expected {}",
                names.len(),
                CLASS_NAMES.len()
            ),
        });
    }
    Ok(names)
}

/// Writes images in the binary record layout (used by tests and tools that make small data sets).
pub fn write_batch_file(path: &Path, images: &LabeledImages) -> Result<()> {
    let mut out = Vec::with_capacity(images.len() * RECORD_BYTES);
    for i in 0..images.len() {
        out.push(images.label(i));
        out.extend_from_slice(images.image(i));
    }
    std::fs::write(path, out).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(labels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &l) in labels.iter().enumerate() {
            out.push(l);
            out.extend((0..IMAGE_BYTES).map(|p| ((p + i) % 256) as u8));
        }
        out
    }

    #[test]
    fn parses_records_into_labels_and_planes() {
        let bytes = records(&[3, 9, 0]);
        let set = parse_batch(Path::new("x.bin"), &bytes, None).unwrap();
        assert_eq!(set.labels(), &[3, 9, 0]);
        assert_eq!(set.image(1)[0], 1);
        assert_eq!(
            set.image(1)[IMAGE_BYTES - 1],
            ((IMAGE_BYTES - 1 + 1) % 256) as u8
        );
    }

    #[test]
    fn truncated_file_is_an_error_naming_it() {
        let mut bytes = records(&[1, 2]);
        bytes.pop();
        let err = parse_batch(Path::new("data_batch_1.bin"), &bytes, None).unwrap_err();
        assert!(matches!(err, CifarError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains("data_batch_1.bin"));
    }

    #[test]
    fn wrong_record_count_is_an_error() {
        let bytes = records(&[1, 2]);
        let err = parse_batch(Path::new("test_batch.bin"), &bytes, Some(3)).unwrap_err();
        assert!(
            matches!(err, CifarError::WrongSize { expected, .. } if expected == 3 * RECORD_BYTES as u64)
        );
    }

    #[test]
    fn label_above_nine_is_an_error_naming_the_record() {
        let bytes = records(&[1, 10]);
        let err = parse_batch(Path::new("b.bin"), &bytes, None).unwrap_err();
        assert!(
            matches!(
                err,
                CifarError::LabelOutOfRange {
                    record: 1,
                    label: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn empty_file_is_an_error() {
        assert!(parse_batch(Path::new("e.bin"), &[], None).is_err());
    }
}
