//! One process at a time in a folder, as Cargo holds its target folder: an advisory lock on a
//! file inside it, released when the process ends however it ends (the kernel drops it).

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file a [`FolderLock`] holds, in the folder.
pub const LOCK_FILE: &str = ".lock";

/// A held lock on a folder; dropping it releases the lock. The file stays (removing it would
/// let a process that opened it before the removal and one that makes it anew both hold
/// "the" lock).
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock; `holder` is what it wrote in the lock file (its pid and
    /// host), since the lock itself cannot name it.
    Held { lock_file: PathBuf, holder: String },
    Io {
        lock_file: PathBuf,
        error: io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { lock_file, holder } => write!(
                f,
                "{}: another process is working in this folder ({holder})",
                lock_file.display()
            ),
            LockError::Io { lock_file, error } => {
                write!(f, "{}: cannot lock: {error}", lock_file.display())
            }
        }
    }
}

impl std::error::Error for LockError {}

/// This machine's host name (`gethostname`), if it has one.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid; gethostname NUL-terminates within them.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    (ok && end > 0).then(|| String::from_utf8_lossy(&buf[..end]).into_owned())
}

impl FolderLock {
    /// Takes the folder's lock without waiting, and writes this process' pid and host into
    /// the lock file; refuses with the holder's if another process has it.
    pub fn acquire(folder: &Path) -> Result<FolderLock, LockError> {
        let lock_file = folder.join(LOCK_FILE);
        let io_err = |error| LockError::Io {
            lock_file: lock_file.clone(),
            error,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_file)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "its pid is not written yet".to_string(),
                    h => h.to_string(),
                };
                return Err(LockError::Held { lock_file, holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let host = host_name().unwrap_or_else(|| "an unknown host".into());
        let holder = format!("pid {} on {host}", std::process::id());
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        file.write_all(holder.as_bytes()).map_err(io_err)?;
        Ok(FolderLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_folder_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path()).unwrap();
        // A second open file description conflicts as a second process would.
        let err = FolderLock::acquire(dir.path()).unwrap_err();
        let says = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{says}");
        assert!(
            says.contains(&format!("pid {}", std::process::id())),
            "{says}"
        );
        drop(first);
        let again = FolderLock::acquire(dir.path()).unwrap();
        drop(again);
    }

    #[test]
    fn a_folder_that_is_not_there_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let err = FolderLock::acquire(&dir.path().join("gone")).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err}");
    }
}
