//! Every file the commands write goes through here: written under a temporary name beside its
//! place, then renamed, so a crash never leaves half a file where a good one was.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `loss.png` → `loss.tmp.png`: the extension stays last, for writers that go by it.
fn tmp_name(path: &Path) -> PathBuf {
    let ext = path
        .extension()
        .map_or("tmp".into(), |e| format!("tmp.{}", e.to_string_lossy()));
    path.with_extension(ext)
}

/// Runs `write` on the temporary name, then renames it to `path`.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_name(path);
    let written = write(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
        });
    if written.is_err() {
        // A full disk or a failed writer leaves no partial temporary file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_neither_the_file_nor_its_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.json");
        let err = write_atomic(&path, |tmp| {
            std::fs::write(tmp, "half")?;
            anyhow::bail!("disk full")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("disk full"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&path, |tmp| Ok(std::fs::write(tmp, "whole")?)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "whole");
    }
}
