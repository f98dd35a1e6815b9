//! Writing a file whole or not at all.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `loss.png` → `loss.<pid>-<n>.tmp.png` beside it: unique to this process and this call, so
/// two processes (or threads) writing the same file never share a temporary; the extension
/// stays last, for writers that go by it.
pub fn temporary_name(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{pid}-{n}.tmp.{}", ext.to_string_lossy()),
        None => format!("{stem}.{pid}-{n}.tmp"),
    };
    path.with_file_name(name)
}

/// Runs `write` on a temporary name beside `path`, then renames it to `path`: a crash, a full
/// disk or a failed writer never leaves half a file where a good one was, nor the temporary.
pub fn write_atomic<E: From<io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temporary_name(path);
    let written = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(E::from));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_differ_per_call_and_keep_the_extension() {
        let a = temporary_name(Path::new("out/loss.png"));
        let b = temporary_name(Path::new("out/loss.png"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("out")));
        assert_eq!(a.extension().unwrap(), "png");
        assert!(a
            .to_string_lossy()
            .contains(&std::process::id().to_string()));
    }

    #[test]
    fn a_failed_write_leaves_neither_the_file_nor_its_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.json");
        let err = write_atomic(&path, |tmp| {
            std::fs::write(tmp, "half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&path, |tmp| std::fs::write(tmp, "whole")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
