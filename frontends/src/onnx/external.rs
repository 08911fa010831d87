//! External tensor data: where a location may point, and mapping it safely.
//!
//! ONNX's external data is a well-known attack surface (reading outside the model folder through
//! `..`, absolute paths or links; huge allocations from crafted lengths). A location must be a
//! relative path inside the model's folder, without `..`, naming a regular file that is neither a
//! symbolic link nor hard-linked, and `offset + length` must lie inside it. Files are mapped, not
//! read, so a large length never allocates.

use bytes::Bytes;
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// Why an external location was refused.
pub fn check_location(location: &str) -> Result<PathBuf, String> {
    if location.is_empty() {
        return Err("external data location is empty".into());
    }
    if location.contains('\0') {
        return Err("external data location contains a NUL byte".into());
    }
    let p = Path::new(location);
    let windows_abs = location.starts_with('\\') || location.as_bytes().get(1) == Some(&b':');
    if p.is_absolute() || windows_abs {
        return Err(format!(
            "external data location '{location}' is an absolute path; only paths inside the model's folder are allowed"
        ));
    }
    for c in p.components() {
        match c {
            Component::ParentDir => {
                return Err(format!(
                    "external data location '{location}' contains '..' and would read outside the model's folder"
                ));
            }
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(format!("external data location '{location}' is not a plain relative path"));
            }
        }
    }
    if location.contains('\\') {
        return Err(format!("external data location '{location}' contains a backslash"));
    }
    Ok(p.to_path_buf())
}

/// Maps external data files once each and hands out slices.
#[derive(Default)]
pub struct ExternalFiles {
    base: Option<PathBuf>,
    maps: HashMap<PathBuf, Bytes>,
}

impl ExternalFiles {
    pub fn new(base: Option<PathBuf>) -> ExternalFiles {
        ExternalFiles { base, maps: HashMap::new() }
    }

    /// The bytes `offset .. offset+length` (or to the end) of `location`.
    pub fn slice(&mut self, location: &str, offset: u64, length: Option<u64>) -> Result<Bytes, String> {
        let rel = check_location(location)?;
        let base = self.base.clone().ok_or_else(|| {
            format!("external data '{location}' needs the model's folder, but the model was not read from a file")
        })?;
        let path = base.join(&rel);
        if !self.maps.contains_key(&path) {
            let bytes = map_file(&base, &path, location)?;
            self.maps.insert(path.clone(), bytes);
        }
        let data = &self.maps[&path];
        let size = data.len() as u64;
        let end = match length {
            Some(l) => {
                offset.checked_add(l).ok_or_else(|| format!("external data '{location}': offset + length overflows"))?
            }
            None => size,
        };
        if offset > size || end > size {
            return Err(format!(
                "external data '{location}': range {offset}..{end} lies outside the file, which has {size} bytes"
            ));
        }
        Ok(data.slice(offset as usize..end as usize))
    }
}

fn map_file(base: &Path, path: &Path, location: &str) -> Result<Bytes, String> {
    // Refuse links anywhere below the model's folder.
    let mut cur = base.to_path_buf();
    for c in Path::new(location).components() {
        if let Component::Normal(part) = c {
            cur.push(part);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!(
                        "external data location '{location}' goes through a symbolic link ({}); refused",
                        cur.display()
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(format!("external data file '{location}' not found (looked for {})", path.display()));
                }
                Err(e) => return Err(format!("external data file '{location}': {e}")),
            }
        }
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("external data file '{location}': {e}"))?;
    if !meta.is_file() {
        return Err(format!("external data location '{location}' is not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.nlink() > 1 {
            return Err(format!("external data file '{location}' is hard-linked ({} links); refused", meta.nlink()));
        }
    }
    let file = std::fs::File::open(path).map_err(|e| format!("external data file '{location}': {e}"))?;
    if meta.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only; optc never writes a file it has mapped (writes go to a
    // temporary file that is renamed into place).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| format!("external data file '{location}': cannot map: {e}"))?;
    Ok(Bytes::from_owner(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert!(check_location("weights.bin").is_ok());
        assert!(check_location("sub/weights.bin").is_ok());
        assert!(check_location("../weights.bin").unwrap_err().contains(".."));
        assert!(check_location("a/../../b").unwrap_err().contains(".."));
        assert!(check_location("/etc/passwd").unwrap_err().contains("absolute"));
        assert!(check_location("C:\\x").unwrap_err().contains("absolute"));
        assert!(check_location("").is_err());
    }
}
