//! `optc gguf`: show what is in a GGUF file and write its tensors, dequantised, as `.npy`.

use crate::runcmd::UsageError;
use clap::Args;
use optc::frontends::gguf::{GgmlType, Gguf, GgufError, MetaValue, TensorInfo};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct GgufArgs {
    /// The GGUF file.
    input: PathBuf,
    /// Write this tensor, dequantised to float32, as DIR/<name>.npy (repeatable; needs -o).
    #[arg(long = "tensor", value_name = "NAME")]
    tensors: Vec<String>,
    /// Write every tensor, dequantised to float32 (needs -o).
    #[arg(long)]
    all: bool,
    /// The directory the .npy files go to (created if missing).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: Option<PathBuf>,
    /// Print the metadata (in full) and the tensor list as JSON.
    #[arg(long)]
    json: bool,
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

/// Items of a long array shown in the text listing.
const SHOWN_ITEMS: usize = 5;
/// Characters of a long string shown in the text listing.
const SHOWN_CHARS: usize = 80;

pub fn run(a: GgufArgs) -> anyhow::Result<()> {
    let extracting = a.all || !a.tensors.is_empty();
    if extracting && a.output.is_none() {
        return Err(usage("--tensor and --all need -o DIR (where the .npy files go)".into()));
    }
    if !extracting && a.output.is_some() {
        return Err(usage("-o DIR needs --tensor NAME or --all (what to write)".into()));
    }
    let path = a.input.as_path();
    let g = Gguf::open(path).map_err(|e| match e {
        GgufError::Io { .. } => usage(e.to_string()),
        e => usage(format!("'{}': {e}", path.display())),
    })?;

    // Resolve and check the selection before writing anything.
    let selected: Vec<&TensorInfo> = if a.all {
        g.tensors().iter().collect()
    } else {
        let mut seen = HashSet::new();
        let mut v = vec![];
        for name in &a.tensors {
            let t = g.tensor(name).ok_or_else(|| {
                usage(format!(
                    "'{}' has no tensor named '{name}' ({} tensors; `optc gguf FILE` lists them)",
                    path.display(),
                    g.tensors().len()
                ))
            })?;
            if seen.insert(name.as_str()) {
                v.push(t);
            }
        }
        v
    };
    for t in &selected {
        let why = match t.ty {
            GgmlType::Unknown(id) => Some(format!("unknown ggml type id {id}")),
            ty if !ty.can_dequantize() => {
                Some(format!("dequantizing {} (ggml type id {}) is not supported", ty.name(), ty.id()))
            }
            _ => None,
        };
        if let Some(why) = why {
            return Err(usage(format!("'{}': tensor '{}': {why}", path.display(), t.name)));
        }
    }

    if a.json {
        emit(&(serde_json::to_string_pretty(&to_json(&g, path))? + "\n"))?;
    } else if !extracting {
        emit(&listing(&g, path))?;
    }

    if let Some(dir) = &a.output {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create '{}': {e}", dir.display()))?;
        let mut files = HashSet::new();
        for t in selected {
            let file = dir.join(format!("{}.npy", file_stem(&t.name)));
            if !files.insert(file.clone()) {
                return Err(usage(format!(
                    "tensor '{}' would overwrite '{}' (names differ only in characters not allowed in file names)",
                    t.name,
                    file.display()
                )));
            }
            let values = g.dequantize(t).map_err(|e| usage(format!("'{}': {e}", path.display())))?;
            write_npy(t, values, &file)?;
            if !a.json {
                emit(&format!("wrote {} ({}, shape {:?})\n", file.display(), t.ty.name(), t.shape()))?;
            }
        }
    }
    Ok(())
}

/// Writes to stdout; a closed pipe (`optc gguf F | head`) ends the output quietly.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::anyhow!("cannot write to stdout: {e}")),
        _ => Ok(()),
    }
}

/// A file name for a tensor: path separators and NUL become `_`, and `.`/`..` get a prefix.
fn file_stem(name: &str) -> String {
    let s: String = name.chars().map(|c| if matches!(c, '/' | '\\' | '\0') { '_' } else { c }).collect();
    if s.is_empty() || s == "." || s == ".." { format!("_{s}") } else { s }
}

/// Writes dequantised values as float32 `.npy` in numpy order (the reverse of the GGUF dims).
fn write_npy(t: &TensorInfo, values: Vec<f32>, file: &Path) -> anyhow::Result<()> {
    let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect(); // < 2^63, checked at open
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    drop(values);
    let ir = optc::ir::Tensor::from_raw(Some(t.name.clone()), optc::ir::DType::F32, dims, raw.into());
    let tensor = optc::eval::Tensor::from_ir(&ir)?;
    drop(ir);
    optc::eval::npy::write_npy(file, &tensor)?;
    Ok(())
}

/// An f32 as the shortest decimal that reads back as it, in an f64 (so 1e-5 prints as 1e-5).
fn f32_json(x: f32) -> Value {
    let v = x.to_string().parse::<f64>().unwrap_or(x as f64);
    json!(v)
}

fn meta_json(v: &MetaValue) -> Value {
    match v {
        MetaValue::U8(x) => json!(x),
        MetaValue::I8(x) => json!(x),
        MetaValue::U16(x) => json!(x),
        MetaValue::I16(x) => json!(x),
        MetaValue::U32(x) => json!(x),
        MetaValue::I32(x) => json!(x),
        MetaValue::U64(x) => json!(x),
        MetaValue::I64(x) => json!(x),
        MetaValue::F32(x) => f32_json(*x),
        MetaValue::F64(x) => json!(x),
        MetaValue::Bool(x) => json!(x),
        MetaValue::Str(s) => json!(s),
        MetaValue::Array(items) => Value::Array(items.iter().map(meta_json).collect()),
    }
}

/// `STRING`, `UINT32`, `ARRAY[STRING]` (the element type as the first item shows it).
fn type_label(v: &MetaValue) -> String {
    match v {
        MetaValue::Array(items) => match items.first() {
            Some(first) => format!("ARRAY[{}]", type_label(first)),
            None => "ARRAY".into(),
        },
        v => v.type_name().into(),
    }
}

struct Totals {
    count: usize,
    elements: u64,
    bytes: u64,
}

fn totals(g: &Gguf) -> BTreeMap<String, Totals> {
    let mut by = BTreeMap::new();
    for t in g.tensors() {
        let e = by.entry(t.ty.name()).or_insert(Totals { count: 0, elements: 0, bytes: 0 });
        e.count += 1;
        e.elements += t.n_elements;
        e.bytes += t.n_bytes as u64;
    }
    by
}

fn to_json(g: &Gguf, path: &Path) -> Value {
    let metadata: Vec<Value> =
        g.metadata().iter().map(|(k, v)| json!({"key": k, "type": type_label(v), "value": meta_json(v)})).collect();
    let tensors: Vec<Value> = g
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ty.name(),
                "type_id": t.ty.id(),
                "dims": t.dims,
                "shape": t.shape(),
                "offset": t.offset,
                "n_elements": t.n_elements,
                "n_bytes": t.n_bytes,
            })
        })
        .collect();
    let by_type: serde_json::Map<String, Value> = totals(g)
        .into_iter()
        .map(|(k, t)| (k, json!({"tensors": t.count, "elements": t.elements, "bytes": t.bytes})))
        .collect();
    json!({
        "file": path.display().to_string(),
        "file_len": g.file_len(),
        "version": g.version(),
        "alignment": g.alignment(),
        "data_offset": g.data_offset(),
        "metadata": metadata,
        "tensors": tensors,
        "totals_by_type": by_type,
    })
}

/// A short display of a value: long strings cut, long arrays as their first few items.
fn short(v: &MetaValue) -> String {
    match v {
        MetaValue::Str(s) => {
            let n = s.chars().count();
            if n <= SHOWN_CHARS {
                format!("{s:?}")
            } else {
                let cut: String = s.chars().take(SHOWN_CHARS).collect();
                format!("{cut:?}... ({n} chars)")
            }
        }
        MetaValue::Array(items) => {
            let shown: Vec<String> = items.iter().take(SHOWN_ITEMS).map(short).collect();
            let more = if items.len() > SHOWN_ITEMS { ", ..." } else { "" };
            let noun = if items.len() == 1 { "item" } else { "items" };
            format!("{} {noun}: [{}{more}]", items.len(), shown.join(", "))
        }
        MetaValue::F32(x) => format!("{x}"),
        MetaValue::F64(x) => format!("{x}"),
        MetaValue::Bool(x) => format!("{x}"),
        v => v.as_u64().map(|x| x.to_string()).or_else(|| v.as_f64().map(|x| x.to_string())).unwrap_or_default(),
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = bytes as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{x:.1} {}", UNITS[u]) }
}

fn listing(g: &Gguf, path: &Path) -> String {
    let mut out = String::new();
    macro_rules! line {
        ($($t:tt)*) => {{
            out.push_str(&format!($($t)*));
            out.push('\n');
        }};
    }
    line!(
        "{}: GGUF version {}, {} bytes ({}), alignment {}, data section at offset {}",
        path.display(),
        g.version(),
        g.file_len(),
        human(g.file_len()),
        g.alignment(),
        g.data_offset()
    );
    line!("\nmetadata ({} keys):", g.metadata().len());
    let kw = g.metadata().iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0).min(48);
    let tw = g.metadata().iter().map(|(_, v)| type_label(v).len()).max().unwrap_or(0);
    for (k, v) in g.metadata() {
        line!("  {k:kw$}  {:tw$}  {}", type_label(v), short(v));
    }

    line!("\ntensors ({}):", g.tensors().len());
    let nw = g.tensors().iter().map(|t| t.name.chars().count()).max().unwrap_or(0).clamp(4, 48);
    let dims: Vec<String> = g
        .tensors()
        .iter()
        .map(|t| format!("[{}]", t.dims.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")))
        .collect();
    let dw = dims.iter().map(String::len).max().unwrap_or(0).max(17);
    line!("  {:nw$}  {:8}  {:dw$}  {:>12}", "name", "type", "dims (ne0 first)", "bytes");
    for (t, d) in g.tensors().iter().zip(&dims) {
        let bytes = if t.ty.block_size().is_some() { t.n_bytes.to_string() } else { "?".into() };
        line!("  {:nw$}  {:8}  {d:dw$}  {bytes:>12}", t.name, t.ty.name());
    }
    for t in g.tensors() {
        if let GgmlType::Unknown(id) = t.ty {
            line!("  note: tensor '{}' has ggml type id {id}, which this reader does not know", t.name);
        }
    }

    line!("\nby type:");
    let by = totals(g);
    let (mut count, mut elements, mut bytes) = (0, 0u64, 0u64);
    for (name, t) in &by {
        line!(
            "  {name:12}  {:>6} tensors  {:>14} elements  {:>14} bytes  ({})",
            t.count,
            t.elements,
            t.bytes,
            human(t.bytes)
        );
        count += t.count;
        elements += t.elements;
        bytes += t.bytes;
    }
    line!("  {:12}  {count:>6} tensors  {elements:>14} elements  {bytes:>14} bytes  ({})", "total", human(bytes));
    out
}
