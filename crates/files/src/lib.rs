//! Files as the workbench touches them. Every file read from a path a user or a file named goes
//! through [`open`] (or [`check_regular`], for libraries that open paths themselves), so a FIFO,
//! a device or a socket named as a model, an experiment or an image is refused by what it is
//! instead of blocking the process forever. Writes go to a temporary name unique to the
//! process and are renamed into place ([`write_atomic`]); a folder one process works in is
//! held with an advisory lock ([`FolderLock`]).
//!
//! The errors are `std::io::Error`s whose message says what the path is; callers put the path
//! in front of it, as they do for any other I/O error.

mod lock;
mod write;

pub use lock::{host_name, FolderLock, LockError};
pub use write::{temporary_name, write_atomic};

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;

/// The error for a path that is not a regular file, saying what it is when it is a kind with
/// a name (a folder, a FIFO, a socket, a device).
fn refuse(meta: &Metadata) -> io::Error {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = [
        (t.is_dir(), "a folder"),
        (t.is_fifo(), "a FIFO (named pipe)"),
        (t.is_socket(), "a socket"),
        (t.is_char_device(), "a character device"),
        (t.is_block_device(), "a block device"),
    ]
    .into_iter()
    .find_map(|(is, name)| is.then_some(name));
    let message = match kind {
        Some(what) => format!("{what}, not a regular file"),
        None => "not a regular file".to_string(),
    };
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// `Ok` if `path` (after following links) is a regular file; otherwise an error saying what it
/// is. For libraries that open a path themselves (HDF5); there is a moment between this check
/// and their open, which [`open`] does not have.
pub fn check_regular(path: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    match meta.is_file() {
        true => Ok(()),
        false => Err(refuse(&meta)),
    }
}

/// Opens `path` for reading if it is a regular file. The open itself cannot block: it is made
/// with `O_NONBLOCK` (which opening a FIFO would otherwise wait on a writer for, and which does
/// nothing to a regular file's reads), and what was opened is checked before it is returned.
pub fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    match meta.is_file() {
        true => Ok(file),
        false => Err(refuse(&meta)),
    }
}

/// The whole of a regular file.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The whole of a regular file, as UTF-8 text.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    let mut file = open(path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn a_fifo_is_refused_at_once_by_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("model.h5");
        mkfifo(&fifo);
        let started = Instant::now();
        for err in [
            read(&fifo).unwrap_err(),
            read_to_string(&fifo).unwrap_err(),
            check_regular(&fifo).unwrap_err(),
        ] {
            assert_eq!(err.to_string(), "a FIFO (named pipe), not a regular file");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // Through a symbolic link, too.
        let link = dir.path().join("link.h5");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(open(&link).unwrap_err().to_string().contains("FIFO"));
    }

    #[test]
    fn devices_and_folders_are_refused_and_regular_files_read() {
        let err = read(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(err.to_string(), "a character device, not a regular file");
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("folder") || err.kind() == io::ErrorKind::IsADirectory);
        let file = dir.path().join("a.txt");
        std::fs::write(&file, "text").unwrap();
        assert_eq!(read_to_string(&file).unwrap(), "text");
        assert_eq!(read(&file).unwrap(), b"text");
        check_regular(&file).unwrap();
        let missing = read(&dir.path().join("nope")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
