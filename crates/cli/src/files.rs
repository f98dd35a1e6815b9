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
    write(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
