//! A text view of any HDF5 file: groups, datasets with shape and dtype, attributes — what the
//! tutorial shows in HDFView.

use std::fmt::Write;
use std::path::Path;

use hdf5::types::TypeDescriptor;
use hdf5::{Group, Location, LocationType};

use crate::error::{Context, Result};
use crate::h5::read_strings;

const MAX_VALUE: usize = 100;

fn cut(s: String) -> String {
    if s.chars().count() <= MAX_VALUE {
        return s;
    }
    let head: String = s.chars().take(MAX_VALUE).collect();
    format!("{head}… ({} chars)", s.chars().count())
}

fn describe(td: &TypeDescriptor) -> String {
    match td {
        TypeDescriptor::Float(s) => format!("float{}", *s as usize * 8),
        TypeDescriptor::Integer(s) => format!("int{}", *s as usize * 8),
        TypeDescriptor::Unsigned(s) => format!("uint{}", *s as usize * 8),
        TypeDescriptor::FixedAscii(n) => format!("ascii[{n}]"),
        TypeDescriptor::FixedUnicode(n) => format!("utf8[{n}]"),
        TypeDescriptor::VarLenAscii => "ascii".into(),
        TypeDescriptor::VarLenUnicode => "utf8".into(),
        other => format!("{other:?}"),
    }
}

fn attributes(loc: &Location, indent: &str, out: &mut String, path: &Path) -> Result<()> {
    let mut names = loc.attr_names().at(path, || "attributes".into())?;
    names.sort();
    for name in names {
        let attr = loc.attr(&name).at(path, || name.clone())?;
        let td = attr
            .dtype()
            .and_then(|t| t.to_descriptor())
            .at(path, || name.clone())?;
        let value = match read_strings(&attr) {
            Ok(v) if attr.is_scalar() && v.len() == 1 => format!("{:?}", v[0]),
            Ok(v) => format!("{v:?}"),
            Err(_) => match attr.read_raw::<f64>() {
                Ok(v) if v.len() == 1 => v[0].to_string(),
                Ok(v) => format!("{v:?}"),
                Err(_) => "…".into(),
            },
        };
        let _ = writeln!(
            out,
            "{indent}@{name} ({}, {:?}) = {}",
            describe(&td),
            attr.shape(),
            cut(value)
        );
    }
    Ok(())
}

fn walk(group: &Group, indent: &str, out: &mut String, path: &Path) -> Result<()> {
    attributes(group, &format!("{indent}  "), out, path)?;
    let mut names = group.member_names().at(path, || "members".into())?;
    names.sort();
    for name in names {
        match group.loc_type_by_name(&name).at(path, || name.clone())? {
            LocationType::Group => {
                let _ = writeln!(out, "{indent}  {name}/");
                let g = group.group(&name).at(path, || name.clone())?;
                walk(&g, &format!("{indent}  "), out, path)?;
            }
            LocationType::Dataset => {
                let d = group.dataset(&name).at(path, || name.clone())?;
                let td = d
                    .dtype()
                    .and_then(|t| t.to_descriptor())
                    .at(path, || name.clone())?;
                let _ = writeln!(out, "{indent}  {name}  {} {:?}", describe(&td), d.shape());
                attributes(&d, &format!("{indent}    "), out, path)?;
            }
            other => {
                let _ = writeln!(out, "{indent}  {name}  ({other:?})");
            }
        }
    }
    Ok(())
}

/// The whole tree of an HDF5 file as text.
pub fn inspect(path: &Path) -> Result<String> {
    if !path.is_file() {
        return crate::error::fail(path, "no such file");
    }
    hdf5::silence_errors(true);
    let file = hdf5::File::open(path).at(path, || "not a readable HDF5 file".into())?;
    let mut out = format!("{}\n/\n", path.display());
    walk(&file, "", &mut out, path)?;
    Ok(out)
}
