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

/// How deep groups may nest and how many entries a file may have before `inspect` stops: a
/// crafted file can nest tens of thousands deep or link a group into itself.
pub const MAX_DEPTH: usize = 64;
pub const MAX_ENTRIES: usize = 100_000;

/// Where the walk is: the groups above (to see a link back into one of them) and the count.
struct Walk<'a> {
    path: &'a Path,
    ancestors: Vec<(u64, hdf5::LocationToken)>,
    entries: usize,
}

/// The links of `group` that are not plain hard or soft links inside the file.
pub(crate) fn external_links(group: &Group) -> hdf5::Result<Vec<String>> {
    let mut out = Vec::new();
    group.iter_visit_default(|name, info| {
        if info.link_type == hdf5::LinkType::External {
            out.push(name.to_string());
        }
        Ok(())
    })?;
    Ok(out)
}

fn walk(group: &Group, indent: &str, out: &mut String, w: &mut Walk<'_>) -> Result<()> {
    let path = w.path;
    if w.ancestors.len() > MAX_DEPTH {
        return crate::error::fail(path, format!("groups nest more than {MAX_DEPTH} deep"));
    }
    attributes(group, &format!("{indent}  "), out, path)?;
    let mut names = group.member_names().at(path, || "members".into())?;
    names.sort();
    let external = external_links(group).at(path, || "links".into())?;
    for name in names {
        w.entries += 1;
        if w.entries > MAX_ENTRIES {
            return crate::error::fail(path, format!("more than {MAX_ENTRIES} entries"));
        }
        if external.contains(&name) {
            // Another file on disk: not followed (the file could point anywhere).
            let _ = writeln!(out, "{indent}  {name}  (external link, not followed)");
            continue;
        }
        let Ok(kind) = group.loc_type_by_name(&name) else {
            let _ = writeln!(out, "{indent}  {name}  (dangling link)");
            continue;
        };
        match kind {
            LocationType::Group => {
                let g = group.group(&name).at(path, || name.clone())?;
                let info = g.loc_info().at(path, || name.clone())?;
                let id = (info.fileno, info.token);
                if w.ancestors.contains(&id) {
                    let _ = writeln!(out, "{indent}  {name}/  (a link back to a group above)");
                    continue;
                }
                let _ = writeln!(out, "{indent}  {name}/");
                w.ancestors.push(id);
                walk(&g, &format!("{indent}  "), out, w)?;
                w.ancestors.pop();
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

/// The whole tree of an HDF5 file as text; for a `.keras` zip, its entries, layers and weights
/// tree.
pub fn inspect(path: &Path) -> Result<String> {
    if crate::keras3::is_zip(path) {
        return crate::keras3::inspect_archive(path);
    }
    inspect_h5(path, path)
}

/// The tree of the HDF5 file at `path`, `label` naming it in the text and in errors.
pub(crate) fn inspect_h5(file_path: &Path, label: &Path) -> Result<String> {
    let path = label;
    crate::keras_file::check_regular_file(file_path)?;
    hdf5::silence_errors(true);
    let file = crate::h5::open_file(file_path).at(path, || {
        "not a readable HDF5 file (truncated or another format?)".into()
    })?;
    let mut out = format!("{}\n/\n", path.display());
    let root = file.loc_info().at(path, || "root group".into())?;
    let mut w = Walk {
        path,
        ancestors: vec![(root.fileno, root.token)],
        entries: 0,
    };
    walk(&file, "", &mut out, &mut w)?;
    Ok(out)
}
