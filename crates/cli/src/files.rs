//! Every file the commands write goes through here: written under a temporary name beside its
//! place (unique to the process, so two runs never share one), then renamed, so a crash never
//! leaves half a file where a good one was.

use std::path::Path;

use anyhow::{Context, Result};

/// Runs `write` on a temporary name, then renames it to `path`; errors name the file.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    simplecnn_files::write_atomic(path, write)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// [`write_atomic`] of `contents` (text or bytes) as they are.
pub fn write_contents(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    write_atomic(path, |tmp| Ok(std::fs::write(tmp, contents)?))
}
