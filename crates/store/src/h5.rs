//! Reading and writing the HDF5 pieces: strings in every encoding Keras used, weight groups.

use std::path::Path;

use hdf5::types::{FixedAscii, FixedUnicode, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Attribute, Location};

use crate::error::{fail, Context, Result};

/// Fixed-length strings are read through a buffer this long (HDF5 converts between fixed sizes);
/// Keras' names and JSON are far shorter in fixed-length files.
const FIXED_MAX: usize = 4096;

/// Opens an HDF5 file read-only, without HDF5's advisory file lock (see [`create_file`]).
pub fn open_file(path: &Path) -> hdf5::Result<hdf5::File> {
    unlocked().open(path)
}

/// Opens an HDF5 file to change it, without HDF5's advisory file lock (see [`create_file`]).
pub fn open_file_rw(path: &Path) -> hdf5::Result<hdf5::File> {
    unlocked().open_rw(path)
}

/// Creates (truncating) an HDF5 file without HDF5's advisory file lock. The lock sits on the
/// open file description, and HDF5 does not open with `O_CLOEXEC`: a child process that any
/// thread spawns while the file is open inherits the descriptor and keeps the lock for its whole
/// life, so this process's next open of the same file fails ("unable to lock file, errno = 11").
/// Nothing here needs the lock: files are written whole under a temporary name and renamed.
pub fn create_file(path: &Path) -> hdf5::Result<hdf5::File> {
    unlocked().create(path)
}

fn unlocked() -> hdf5::FileBuilder {
    let mut builder = hdf5::File::with_options();
    builder.with_fapl(|p| p.file_locking(false));
    builder
}

/// Reads a string attribute (scalar or 1-D) whatever its storage: fixed or variable length,
/// ASCII or UTF-8; an empty numeric array (Keras' `weight_names` of weightless layers) reads
/// as no strings. HDF5 does not convert fixed ↔ variable length, so dispatch on the type.
pub fn read_strings(attr: &Attribute) -> std::result::Result<Vec<String>, String> {
    let td = attr
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|e| e.to_string())?;
    let trim = |s: String| s.trim_end_matches(['\0', ' ']).to_string();
    let out = match td {
        TypeDescriptor::VarLenAscii => attr
            .read_raw::<VarLenAscii>()
            .map(|v| v.into_iter().map(|s| s.to_string()).collect()),
        TypeDescriptor::VarLenUnicode => attr
            .read_raw::<VarLenUnicode>()
            .map(|v| v.into_iter().map(|s| s.to_string()).collect()),
        TypeDescriptor::FixedAscii(n) if n <= FIXED_MAX => attr
            .read_raw::<FixedAscii<FIXED_MAX>>()
            .map(|v| v.into_iter().map(|s| trim(s.to_string())).collect()),
        TypeDescriptor::FixedUnicode(n) if n <= FIXED_MAX => attr
            .read_raw::<FixedUnicode<FIXED_MAX>>()
            .map(|v| v.into_iter().map(|s| trim(s.to_string())).collect()),
        TypeDescriptor::FixedAscii(n) | TypeDescriptor::FixedUnicode(n) => {
            return Err(format!(
                "fixed-length strings of {n} bytes are longer than {FIXED_MAX}"
            ))
        }
        TypeDescriptor::Float(_) | TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_)
            if attr.size() == 0 =>
        {
            Ok(Vec::new())
        }
        other => return Err(format!("expected strings, found {other:?}")),
    };
    out.map_err(|e| e.to_string())
}

/// The single string of a scalar (or one-element) string attribute.
pub fn read_string(loc: &Location, name: &str, path: &Path) -> Result<String> {
    let attr = loc.attr(name).at(path, || format!("no attribute {name}"))?;
    let mut v = read_strings(&attr).at(path, || format!("attribute {name}"))?;
    if v.len() != 1 {
        return fail(
            path,
            format!("attribute {name}: expected one string, found {}", v.len()),
        );
    }
    Ok(v.remove(0))
}

/// Writes a scalar variable-length UTF-8 string attribute (as Keras 2.9 and h5py do).
pub fn write_string(loc: &Location, name: &str, value: &str, path: &Path) -> Result<()> {
    let v: VarLenUnicode = value.parse().at(path, || format!("attribute {name}"))?;
    loc.new_attr::<VarLenUnicode>()
        .shape(())
        .create(name)
        .and_then(|a| a.write_scalar(&v))
        .at(path, || format!("cannot write attribute {name}"))
}

/// Writes a scalar dataset `name` in `group` (Keras' iteration counts and learning rates);
/// errors name it as `what`.
pub fn write_scalar<T: hdf5::H5Type>(
    group: &hdf5::Group,
    name: &str,
    value: T,
    what: &str,
    path: &Path,
) -> Result<()> {
    group
        .new_dataset::<T>()
        .shape(())
        .create(name)
        .and_then(|d| d.write_scalar(&value))
        .at(path, || what.to_string())
}

/// Writes a 1-D string-array attribute (variable-length ASCII, as Keras 2.9); an empty list is
/// an empty float64 array, as Keras writes for weightless layers.
pub fn write_string_list(loc: &Location, name: &str, values: &[String], path: &Path) -> Result<()> {
    let res = if values.is_empty() {
        loc.new_attr::<f64>().shape([0]).create(name).map(|_| ())
    } else {
        let v: Vec<VarLenAscii> = values
            .iter()
            .map(|s| VarLenAscii::from_ascii(s).map_err(|e| hdf5::Error::from(e.to_string())))
            .collect::<hdf5::Result<_>>()
            .at(path, || format!("attribute {name}: names must be ASCII"))?;
        loc.new_attr::<VarLenAscii>()
            .shape([v.len()])
            .create(name)
            .and_then(|a| a.write_raw(&v))
    };
    res.at(path, || format!("cannot write attribute {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child spawned while a file is open inherits its descriptor; with HDF5's lock on that
    /// descriptor, reopening the closed file failed until the child exited.
    #[test]
    fn a_child_process_holding_an_inherited_descriptor_does_not_block_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.h5");
        let file = create_file(&path).unwrap();
        write_string(&file, "a", "b", &path).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        file.close().unwrap();
        let reopened = open_file(&path).map(|f| read_string(&f, "a", &path));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(reopened.unwrap().unwrap(), "b");
    }
}
