//! GGUF reader (llama.cpp's model format, versions 2 and 3, little-endian).
//!
//! The file is memory-mapped; [`Gguf::open`] parses the header, the metadata and the tensor
//! infos and checks every tensor's data range, and tensor bytes are read on demand with
//! [`Gguf::tensor_bytes`] or decoded with [`Gguf::dequantize`] (see [`dequant`] for the block
//! formats). Malformed input gives a [`GgufError`] naming the file offset, key or tensor; a
//! count or length is never trusted past the bytes that are left, so a corrupt file cannot make
//! the reader allocate more than a small multiple of its size.
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count; metadata as
//! (string key, u32 type, value); tensor infos as (string name, u32 n_dims, u64 dims[n_dims],
//! u32 ggml type, u64 offset); then the data section at the next multiple of
//! `general.alignment` (default 32). Strings are a u64 length and UTF-8 bytes.

pub mod dequant;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use dequant::{QBlocks, to_blocks};

/// The data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// The most dimensions a tensor info may have.
pub const MAX_DIMS: u32 = 8;
/// How deeply metadata arrays may nest.
const MAX_ARRAY_DEPTH: u32 = 16;

/// Everything that can go wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read '{path}': {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("not a GGUF file: {0}")]
    NotGguf(String),
    #[error("GGUF version {0} is not supported (this reader handles versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error(
        "big-endian GGUF file (the version field reads {0:#010x} little-endian); only little-endian files are supported"
    )]
    BigEndian(u32),
    #[error("truncated: {what} at offset {offset} needs {need} bytes, only {left} left in the file")]
    Truncated { what: String, offset: u64, need: u64, left: u64 },
    #[error("at offset {offset}: {message}")]
    Invalid { offset: u64, message: String },
    #[error("metadata key '{key}': {message}")]
    Metadata { key: String, message: String },
    #[error("tensor '{name}': {message}")]
    Tensor { name: String, message: String },
    #[error("{ty}: {message}")]
    Data { ty: String, message: String },
    #[error("cannot dequantize type {ty} (ggml type id {id})")]
    Unsupported { ty: String, id: u32 },
}

/// A ggml tensor element type, by its id in the file.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    /// An id this reader does not know (including ids ggml has retired: 4, 5, 31-33, 36-38).
    Unknown(u32),
}

/// (type, id, name, elements per block, bytes per block, dequantisable here).
const TYPES: &[(GgmlType, u32, &str, usize, usize, bool)] = {
    use GgmlType::*;
    &[
        (F32, 0, "F32", 1, 4, true),
        (F16, 1, "F16", 1, 2, true),
        (Q4_0, 2, "Q4_0", 32, 18, true),
        (Q4_1, 3, "Q4_1", 32, 20, true),
        (Q5_0, 6, "Q5_0", 32, 22, true),
        (Q5_1, 7, "Q5_1", 32, 24, true),
        (Q8_0, 8, "Q8_0", 32, 34, true),
        // sizeof(block_q8_1) in ggml: two f16 and 32 bytes (gguf-py's table says 40).
        (Q8_1, 9, "Q8_1", 32, 36, false),
        (Q2_K, 10, "Q2_K", 256, 84, true),
        (Q3_K, 11, "Q3_K", 256, 110, true),
        (Q4_K, 12, "Q4_K", 256, 144, true),
        (Q5_K, 13, "Q5_K", 256, 176, true),
        (Q6_K, 14, "Q6_K", 256, 210, true),
        (Q8_K, 15, "Q8_K", 256, 292, true),
        (IQ2_XXS, 16, "IQ2_XXS", 256, 66, false),
        (IQ2_XS, 17, "IQ2_XS", 256, 74, false),
        (IQ3_XXS, 18, "IQ3_XXS", 256, 98, false),
        (IQ1_S, 19, "IQ1_S", 256, 50, false),
        (IQ4_NL, 20, "IQ4_NL", 32, 18, true),
        (IQ3_S, 21, "IQ3_S", 256, 110, false),
        (IQ2_S, 22, "IQ2_S", 256, 82, false),
        (IQ4_XS, 23, "IQ4_XS", 256, 136, true),
        (I8, 24, "I8", 1, 1, true),
        (I16, 25, "I16", 1, 2, true),
        (I32, 26, "I32", 1, 4, true),
        (I64, 27, "I64", 1, 8, true),
        (F64, 28, "F64", 1, 8, true),
        (IQ1_M, 29, "IQ1_M", 256, 56, false),
        (BF16, 30, "BF16", 1, 2, true),
        (TQ1_0, 34, "TQ1_0", 256, 54, true),
        (TQ2_0, 35, "TQ2_0", 256, 66, true),
        (MXFP4, 39, "MXFP4", 32, 17, true),
        (NVFP4, 40, "NVFP4", 64, 36, true),
        (Q1_0, 41, "Q1_0", 128, 18, false),
    ]
};

impl GgmlType {
    fn entry(self) -> Option<&'static (GgmlType, u32, &'static str, usize, usize, bool)> {
        TYPES.iter().find(|e| e.0 == self)
    }

    /// The type with this id; ids ggml does not define become [`GgmlType::Unknown`].
    pub fn from_id(id: u32) -> GgmlType {
        TYPES.iter().find(|e| e.1 == id).map_or(GgmlType::Unknown(id), |e| e.0)
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::Unknown(id) => id,
            t => t.entry().map_or(u32::MAX, |e| e.1),
        }
    }

    /// The name gguf-py and llama.cpp's tools print (`Q4_K`, `BF16`, `IQ2_XXS`), or
    /// `unknown(<id>)`.
    pub fn name(self) -> String {
        match self.entry() {
            Some(e) => e.2.to_string(),
            None => format!("unknown({})", self.id()),
        }
    }

    /// Elements per block (1 for plain element types); `None` for unknown ids.
    pub fn block_size(self) -> Option<usize> {
        self.entry().map(|e| e.3)
    }

    /// Bytes per block; `None` for unknown ids.
    pub fn type_size(self) -> Option<usize> {
        self.entry().map(|e| e.4)
    }

    /// Whether [`dequant::dequantize`] decodes this type.
    pub fn can_dequantize(self) -> bool {
        self.entry().is_some_and(|e| e.5)
    }

    /// True for the plain float element types (F32, F16, BF16, F64).
    pub fn is_float(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::F64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float or integer (64-bit integers may round).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v as f64),
            MetaValue::I16(v) => Some(v as f64),
            MetaValue::I32(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of the value's type (`UINT32`, `STRING`, `ARRAY`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "UINT8",
            MetaValue::I8(_) => "INT8",
            MetaValue::U16(_) => "UINT16",
            MetaValue::I16(_) => "INT16",
            MetaValue::U32(_) => "UINT32",
            MetaValue::I32(_) => "INT32",
            MetaValue::U64(_) => "UINT64",
            MetaValue::I64(_) => "INT64",
            MetaValue::F32(_) => "FLOAT32",
            MetaValue::F64(_) => "FLOAT64",
            MetaValue::Bool(_) => "BOOL",
            MetaValue::Str(_) => "STRING",
            MetaValue::Array(_) => "ARRAY",
        }
    }
}

/// GGUF value type ids.
const VALUE_TYPES: [&str; 13] = [
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY", "UINT64", "INT64",
    "FLOAT64",
];

/// The fewest bytes one value of a (valid) type id takes.
fn min_value_size(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        _ => 12, // array: element type and count
    }
}

/// One tensor's header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the fastest-varying (ggml's ne0); numpy's shape is the reverse.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Relative to the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    /// The bytes of the tensor's data (0 for an unknown type, whose size cannot be known).
    pub n_bytes: usize,
}

impl TensorInfo {
    /// The shape in numpy / ONNX order (slowest-varying first).
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

enum Data {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// An opened GGUF file.
pub struct Gguf {
    data: Data,
    version: u32,
    alignment: u32,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("file_len", &self.file_len())
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Maps and parses a file.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let io = |err| GgufError::Io { path: path.to_path_buf(), err };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(GgufError::NotGguf("it is a directory".into()));
        }
        let len = meta.len();
        if len == 0 {
            return Err(GgufError::NotGguf("the file is empty".into()));
        }
        // SAFETY: a read-only map; optc never writes a file it has mapped (outputs go through
        // a temporary file and a rename). Another process truncating it is outside our model.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Gguf::parse(Data::Map(map))
    }

    /// Parses a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        Gguf::parse(Data::Owned(bytes))
    }

    fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Map(m) => m,
            Data::Owned(v) => v,
        }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data-section alignment (`general.alignment` or 32).
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Where the data section starts in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Every metadata key and value, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's stored bytes: exactly `t.n_bytes` (checked in bounds when the file was
    /// opened; empty for an unknown type or a `TensorInfo` from another file that does not fit).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_offset.checked_add(t.offset).and_then(|s| usize::try_from(s).ok());
        start.and_then(|s| self.bytes().get(s..s.checked_add(t.n_bytes)?)).unwrap_or(&[])
    }

    /// Lets the OS drop the file pages behind a tensor that has been converted, so an importer
    /// that reads tensor by tensor never holds the whole file in memory. A no-op for files
    /// held in memory; the bytes stay readable (pages come back from the file).
    pub fn release(&self, t: &TensorInfo) {
        #[cfg(unix)]
        if let Data::Map(map) = &self.data {
            let Some(start) = self.data_offset.checked_add(t.offset).and_then(|s| usize::try_from(s).ok()) else {
                return;
            };
            if start.checked_add(t.n_bytes).is_some_and(|end| end <= map.len()) && t.n_bytes > 0 {
                // SAFETY: the map is read-only and private, and nothing in optc writes through
                // it, so MADV_DONTNEED only drops clean pages that are re-read on the next access.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, t.n_bytes) };
            }
        }
    }

    /// The tensor as f32 values in storage order (`dims[0]` fastest).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let terr = |message: String| GgufError::Tensor { name: t.name.clone(), message };
        if let GgmlType::Unknown(id) = t.ty {
            return Err(terr(format!("unknown ggml type id {id}: cannot dequantize")));
        }
        if !t.ty.can_dequantize() {
            return Err(terr(format!(
                "dequantizing type {} (ggml type id {}) is not supported",
                t.ty.name(),
                t.ty.id()
            )));
        }
        let n = usize::try_from(t.n_elements)
            .map_err(|_| terr(format!("{} elements do not fit in memory", t.n_elements)))?;
        dequant::dequantize(t.ty, self.tensor_bytes(t), n).map_err(|e| terr(e.to_string()))
    }

    /// The tensor in MatMulNBits block form (see [`dequant::to_blocks`]).
    pub fn to_blocks(&self, t: &TensorInfo) -> Result<Option<QBlocks>, GgufError> {
        let terr = |message: String| GgufError::Tensor { name: t.name.clone(), message };
        let n = usize::try_from(t.n_elements)
            .map_err(|_| terr(format!("{} elements do not fit in memory", t.n_elements)))?;
        dequant::to_blocks(t.ty, self.tensor_bytes(t), n).map_err(|e| terr(e.to_string()))
    }

    pub fn file_len(&self) -> u64 {
        self.bytes().len() as u64
    }

    fn parse(data: Data) -> Result<Gguf, GgufError> {
        let bytes: &[u8] = match &data {
            Data::Map(m) => m,
            Data::Owned(v) => v,
        };
        let mut r = Reader { b: bytes, pos: 0 };
        if bytes.len() < 4 {
            return Err(GgufError::NotGguf(format!("the file is {} bytes, too short for the GGUF magic", bytes.len())));
        }
        let magic = r.take(4, || "magic".into())?;
        if magic != b"GGUF" {
            let shown = if magic.iter().all(|c| c.is_ascii_graphic()) {
                format!("\"{}\"", String::from_utf8_lossy(magic))
            } else {
                format!("{magic:02x?}")
            };
            return Err(GgufError::NotGguf(format!("the magic is {shown}, expected \"GGUF\"")));
        }
        let version = r.u32(|| "version".into())?;
        if version != 0 && version & 0xffff == 0 {
            return Err(GgufError::BigEndian(version));
        }
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64(|| "tensor count".into())?;
        let n_kv = r.u64(|| "metadata count".into())?;
        // A metadata entry takes at least 13 bytes, a tensor info at least 24.
        r.check_count(n_kv, 13, "metadata entries")?;
        r.check_count(n_tensors, 24, "tensor infos")?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut meta_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let at = r.pos as u64;
            let key = r.string(|| format!("metadata entry {i} key"))?;
            let ty = r.u32(|| format!("type of metadata key '{key}'"))?;
            let value = r.value(ty, &key, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::Invalid { offset: at, message: format!("duplicate metadata key '{key}'") });
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(MetaValue::U32(a)) if a.is_power_of_two() => *a,
            Some(MetaValue::U32(a)) => {
                return Err(GgufError::Metadata {
                    key: "general.alignment".into(),
                    message: format!("{a} is not a power of two"),
                });
            }
            Some(v) => {
                return Err(GgufError::Metadata {
                    key: "general.alignment".into(),
                    message: format!("has type {}, expected UINT32", v.type_name()),
                });
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let at = r.pos as u64;
            let name = r.string(|| format!("tensor info {i} name"))?;
            let n_dims = r.u32(|| format!("dimension count of tensor '{name}'"))?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::Tensor {
                    name,
                    message: format!("{n_dims} dimensions (at most {MAX_DIMS} are supported)"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(r.u64(|| format!("dimension {d} of tensor '{name}'"))?);
            }
            let ty = GgmlType::from_id(r.u32(|| format!("type of tensor '{name}'"))?);
            let offset = r.u64(|| format!("data offset of tensor '{name}'"))?;
            let terr = |message: String| GgufError::Tensor { name: name.clone(), message };
            if let Some(d) = dims.iter().find(|&&d| d > i64::MAX as u64) {
                return Err(terr(format!("dimension {d} is out of range")));
            }
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| terr(format!("the element count of dims {dims:?} overflows")))?;
            let n_bytes = match (ty.block_size(), ty.type_size()) {
                (Some(bs), Some(ts)) => {
                    let row = dims.first().copied().unwrap_or(1);
                    if !row.is_multiple_of(bs as u64) {
                        return Err(terr(format!(
                            "row length {row} (dims[0]) is not a multiple of the {} block size {bs}",
                            ty.name()
                        )));
                    }
                    (n_elements / bs as u64).checked_mul(ts as u64).and_then(|n| usize::try_from(n).ok()).ok_or_else(
                        || terr(format!("{n_elements} elements of {} overflow the byte count", ty.name())),
                    )?
                }
                _ => 0,
            };
            if !offset.is_multiple_of(alignment as u64) {
                return Err(terr(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Invalid { offset: at, message: format!("duplicate tensor name '{name}'") });
            }
            tensors.push(TensorInfo { name, dims, ty, offset, n_elements, n_bytes });
        }

        let end_of_infos = r.pos as u64;
        let data_offset = end_of_infos.div_ceil(alignment as u64) * alignment as u64;
        let file_len = bytes.len() as u64;
        for t in &tensors {
            if t.ty.block_size().is_none() {
                continue; // unknown type: its size is unknown, reported when it is used
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes as u64));
            if end.is_none_or(|e| e > file_len) {
                let have = file_len.saturating_sub(data_offset);
                return Err(GgufError::Tensor {
                    name: t.name.clone(),
                    message: format!(
                        "data out of bounds: {} bytes at data offset {} (file offset {}) but the data section \
                         (from file offset {data_offset}) holds {have} bytes",
                        t.n_bytes,
                        t.offset,
                        data_offset as u128 + t.offset as u128
                    ),
                });
            }
        }
        Ok(Gguf { data, version, alignment, data_offset, metadata, meta_index, tensors, tensor_index })
    }
}

/// A bounds-checked little-endian cursor over the file.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(GgufError::Truncated { what: what(), offset: self.pos as u64, need: n, left: self.left() });
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Errors unless `count` items of at least `min_size` bytes each can fit in what is left.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.left() => Ok(()),
            _ => Err(GgufError::Invalid {
                offset: self.pos as u64,
                message: format!(
                    "{count} {what} cannot fit in the {} bytes left in the file (corrupt count?)",
                    self.left()
                ),
            }),
        }
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let at = self.pos as u64;
        let len = self.u64(|| format!("length of {}", what()))?;
        let raw = self.take(len, || format!("{} ({len} bytes)", what()))?;
        String::from_utf8(raw.to_vec())
            .map_err(|e| GgufError::Invalid { offset: at, message: format!("{} is not valid UTF-8: {e}", what()) })
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<MetaValue, GgufError> {
        let what = || format!("value of metadata key '{key}'");
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => MetaValue::Str(self.string(what)?),
            10 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Metadata {
                        key: key.into(),
                        message: format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
                    });
                }
                let at = self.pos as u64;
                let ety = self.u32(|| format!("element type of array '{key}'"))?;
                if ety as usize >= VALUE_TYPES.len() {
                    return Err(GgufError::Invalid {
                        offset: at,
                        message: format!("metadata key '{key}': unknown array element type {ety}"),
                    });
                }
                let count = self.u64(|| format!("length of array '{key}'"))?;
                self.check_count(
                    count,
                    min_value_size(ety),
                    &format!("{} elements of array '{key}'", VALUE_TYPES[ety as usize]),
                )?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(ety, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            _ => {
                return Err(GgufError::Invalid {
                    offset: self.pos as u64 - 4,
                    message: format!("metadata key '{key}' has unknown value type {ty}"),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metadata value for the test writer.
    pub(crate) enum W {
        U32(u32),
        Str(&'static str),
        F32(f32),
        Arr(u32, Vec<W>),
        Raw(u32, Vec<u8>),
    }

    fn put_str(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
    }

    fn put_value(out: &mut Vec<u8>, v: &W) {
        match v {
            W::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            W::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            W::Str(s) => put_str(out, s.as_bytes()),
            W::Arr(ety, items) => {
                out.extend_from_slice(&ety.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for i in items {
                    put_value(out, i);
                }
            }
            W::Raw(_, b) => out.extend_from_slice(b),
        }
    }

    fn type_id(v: &W) -> u32 {
        match v {
            W::U32(_) => 4,
            W::F32(_) => 6,
            W::Str(_) => 8,
            W::Arr(..) => 9,
            W::Raw(t, _) => *t,
        }
    }

    /// A tensor for the test writer: name, dims, ggml type id, data.
    pub(crate) struct WT {
        name: String,
        dims: Vec<u64>,
        ty: u32,
        data: Vec<u8>,
    }

    /// Writes a GGUF file: header, metadata, infos, data with each tensor aligned.
    pub(crate) fn write_gguf(version: u32, kvs: &[(&str, W)], tensors: &[WT], alignment: u64) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (k, v) in kvs {
            put_str(&mut out, k.as_bytes());
            out.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut off = 0u64;
        let mut offsets = vec![];
        for t in tensors {
            put_str(&mut out, t.name.as_bytes());
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
            offsets.push(off);
            off = (off + t.data.len() as u64).div_ceil(alignment) * alignment;
        }
        if !tensors.is_empty() {
            out.resize((out.len() as u64).div_ceil(alignment) as usize * alignment as usize, 0);
        }
        let base = out.len();
        for (t, o) in tensors.iter().zip(offsets) {
            out.resize(base + o as usize, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }

    fn f32_tensor(name: &str, dims: Vec<u64>, vals: &[f32]) -> WT {
        WT { name: name.into(), dims, ty: 0, data: vals.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    fn sample() -> Vec<u8> {
        let q = super::dequant::tests::random_blocks(GgmlType::Q4_1, 4, 3);
        write_gguf(
            3,
            &[
                ("general.architecture", W::Str("llama")),
                ("general.alignment", W::U32(32)),
                ("llama.rope.freq_base", W::F32(10000.0)),
                ("tokenizer.ggml.tokens", W::Arr(8, vec![W::Str("a"), W::Str("bc"), W::Str("é")])),
                ("nested", W::Arr(9, vec![W::Arr(4, vec![W::U32(1), W::U32(2)]), W::Arr(4, vec![])])),
                ("flag", W::Raw(7, vec![1])),
                ("neg", W::Raw(5, (-3i32).to_le_bytes().to_vec())),
            ],
            &[
                f32_tensor("w", vec![3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                WT { name: "q".into(), dims: vec![64, 2], ty: 3, data: q },
                f32_tensor("scalar", vec![], &[7.5]),
            ],
            32,
        )
    }

    #[test]
    fn reads_sample() {
        let bytes = sample();
        let g = Gguf::from_bytes(bytes.clone()).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.file_len(), bytes.len() as u64);
        let keys: Vec<_> = g.metadata().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "general.architecture",
                "general.alignment",
                "llama.rope.freq_base",
                "tokenizer.ggml.tokens",
                "nested",
                "flag",
                "neg"
            ]
        );
        assert_eq!(g.meta("general.architecture").and_then(MetaValue::as_str), Some("llama"));
        assert_eq!(g.meta("general.alignment").and_then(MetaValue::as_u64), Some(32));
        assert_eq!(g.meta("llama.rope.freq_base").and_then(MetaValue::as_f64), Some(10000.0));
        assert_eq!(g.meta("neg").and_then(MetaValue::as_u64), None);
        assert_eq!(g.meta("neg").and_then(MetaValue::as_f64), Some(-3.0));
        assert_eq!(g.meta("flag"), Some(&MetaValue::Bool(true)));
        let toks = g.meta("tokenizer.ggml.tokens").and_then(MetaValue::as_array).unwrap();
        assert_eq!(toks.iter().filter_map(MetaValue::as_str).collect::<Vec<_>>(), ["a", "bc", "é"]);
        let nested = g.meta("nested").unwrap().as_array().unwrap();
        assert_eq!(nested[0], MetaValue::Array(vec![MetaValue::U32(1), MetaValue::U32(2)]));
        assert_eq!(nested[1].type_name(), "ARRAY");
        assert!(g.meta("missing").is_none());

        let names: Vec<_> = g.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["w", "q", "scalar"]);
        let w = g.tensor("w").unwrap();
        assert_eq!((w.dims.clone(), w.ty, w.n_elements, w.n_bytes), (vec![3, 2], GgmlType::F32, 6, 24));
        assert_eq!(w.shape(), vec![2, 3]);
        assert_eq!(g.tensor_bytes(w).len(), 24);
        assert_eq!(g.dequantize(w).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let q = g.tensor("q").unwrap();
        assert_eq!((q.ty, q.n_elements, q.n_bytes, q.offset), (GgmlType::Q4_1, 128, 80, 32));
        let v = g.dequantize(q).unwrap();
        assert_eq!(v, dequant::dequantize(GgmlType::Q4_1, g.tensor_bytes(q), 128).unwrap());
        assert!(g.to_blocks(q).unwrap().is_some());
        let s = g.tensor("scalar").unwrap();
        assert_eq!((s.n_elements, g.dequantize(s).unwrap()), (1, vec![7.5]));
        assert!(g.tensor("nope").is_none());
    }

    #[test]
    fn opens_from_disk() {
        let dir = std::env::temp_dir().join(format!("optc-gguf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.gguf");
        std::fs::write(&p, sample()).unwrap();
        let g = Gguf::open(&p).unwrap();
        assert_eq!(g.tensors().len(), 3);
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(Gguf::open(&p), Err(GgufError::NotGguf(_))));
        let e = Gguf::open(&dir.join("missing.gguf")).unwrap_err();
        assert!(matches!(e, GgufError::Io { .. }), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn no_tensors_and_v2() {
        let b = write_gguf(2, &[("a", W::U32(1))], &[], 32);
        let g = Gguf::from_bytes(b).unwrap();
        assert_eq!((g.version(), g.tensors().len(), g.metadata().len()), (2, 0, 1));
    }

    #[test]
    fn ggml_type_table() {
        for id in 0..64 {
            let t = GgmlType::from_id(id);
            assert_eq!(t.id(), id);
            if let GgmlType::Unknown(_) = t {
                assert_eq!(t.block_size(), None);
                assert!(!t.can_dequantize());
                assert_eq!(t.name(), format!("unknown({id})"));
            } else {
                assert_eq!(GgmlType::from_id(t.id()), t);
            }
        }
        assert_eq!(GgmlType::from_id(12), GgmlType::Q4_K);
        assert_eq!(GgmlType::Q4_K.name(), "Q4_K");
        assert_eq!((GgmlType::Q6_K.block_size(), GgmlType::Q6_K.type_size()), (Some(256), Some(210)));
        assert_eq!(GgmlType::from_id(4), GgmlType::Unknown(4));
        assert_eq!(GgmlType::BF16.id(), 30);
    }

    fn err(bytes: Vec<u8>) -> String {
        match Gguf::from_bytes(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn header_errors() {
        assert!(err(b"GGU".to_vec()).contains("too short"));
        assert!(err(b"GGML\x03\0\0\0".to_vec()).contains("magic"));
        let mut v1 = sample();
        v1[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(err(v1).contains("version 1 is not supported"));
        let mut v9 = sample();
        v9[4..8].copy_from_slice(&9u32.to_le_bytes());
        assert!(err(v9).contains("version 9"));
        let mut be = sample();
        be[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(err(be).contains("big-endian"));
        let mut huge = sample();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(huge).contains("tensor infos cannot fit"));
        let mut huge = sample();
        huge[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(err(huge).contains("metadata entries cannot fit"));
    }

    #[test]
    fn metadata_errors() {
        // Unknown value type.
        let b = write_gguf(3, &[("k", W::Raw(13, vec![0; 8]))], &[], 32);
        assert!(err(b).contains("metadata key 'k' has unknown value type 13"));
        // Unknown array element type.
        let b = write_gguf(3, &[("k", W::Raw(9, [42u32.to_le_bytes(), [0; 4]].concat()))], &[], 32);
        assert!(err(b).contains("unknown array element type 42"));
        // Array count past the end.
        let raw = [4u32.to_le_bytes().to_vec(), u64::MAX.to_le_bytes().to_vec()].concat();
        let e = err(write_gguf(3, &[("k", W::Raw(9, raw))], &[], 32));
        assert!(e.contains("array 'k' cannot fit"), "{e}");
        // String length past the end.
        let e = err(write_gguf(3, &[("k", W::Raw(8, (1u64 << 40).to_le_bytes().to_vec()))], &[], 32));
        assert!(e.contains("value of metadata key 'k'") && e.contains("truncated"), "{e}");
        // Invalid UTF-8 in a key and in a value.
        let mut b = write_gguf(3, &[("kk", W::U32(1))], &[], 32);
        b[32] = 0xff;
        assert!(err(b).contains("not valid UTF-8"));
        let e =
            err(write_gguf(3, &[("k", W::Raw(8, [2u64.to_le_bytes().to_vec(), vec![0xc3, 0x28]].concat()))], &[], 32));
        assert!(e.contains("UTF-8"), "{e}");
        // Duplicate keys.
        assert!(
            err(write_gguf(3, &[("k", W::U32(1)), ("k", W::U32(2))], &[], 32)).contains("duplicate metadata key 'k'")
        );
        // Bad alignment.
        assert!(err(write_gguf(3, &[("general.alignment", W::U32(24))], &[], 32)).contains("power of two"));
        assert!(err(write_gguf(3, &[("general.alignment", W::U32(0))], &[], 32)).contains("power of two"));
        assert!(err(write_gguf(3, &[("general.alignment", W::F32(32.0))], &[], 32)).contains("expected UINT32"));
        // Deep nesting.
        let mut v = W::Arr(4, vec![]);
        for _ in 0..40 {
            v = W::Arr(9, vec![v]);
        }
        assert!(err(write_gguf(3, &[("deep", v)], &[], 32)).contains("nested"));
    }

    #[test]
    fn tensor_errors() {
        let one = |t: WT| err(write_gguf(3, &[], &[t], 32));
        // n_dims > 8.
        let e = one(WT { name: "t".into(), dims: vec![1; 9], ty: 0, data: vec![0; 4] });
        assert!(e.contains("tensor 't': 9 dimensions"), "{e}");
        // Element count overflow.
        let e = one(WT { name: "t".into(), dims: vec![1 << 40, 1 << 40], ty: 0, data: vec![] });
        assert!(e.contains("overflows"), "{e}");
        // Row not a multiple of the block.
        let e = one(WT { name: "t".into(), dims: vec![31, 2], ty: 2, data: vec![0; 36] });
        assert!(e.contains("not a multiple of the Q4_0 block size 32"), "{e}");
        // Data out of bounds.
        let e = one(WT { name: "t".into(), dims: vec![100], ty: 0, data: vec![0; 16] });
        assert!(e.contains("tensor 't': data out of bounds"), "{e}");
        // Duplicate names.
        let t = || f32_tensor("t", vec![1], &[1.0]);
        assert!(err(write_gguf(3, &[], &[t(), t()], 32)).contains("duplicate tensor name 't'"));
        // Misaligned offset.
        let mut b = write_gguf(3, &[], &[f32_tensor("a", vec![1], &[1.0]), f32_tensor("b", vec![1], &[2.0])], 32);
        // b's offset field is the last 8 bytes of the infos (before the padding).
        let infos_end = 24 + (8 + 1 + 4 + 8 + 4 + 8) * 2;
        b[infos_end - 8..infos_end].copy_from_slice(&4u64.to_le_bytes());
        assert!(err(b).contains("tensor 'b': data offset 4 is not a multiple of the alignment 32"));
        // Name truncated.
        let mut b = write_gguf(3, &[], &[f32_tensor("abc", vec![1], &[1.0])], 32);
        b[24..32].copy_from_slice(&1000u64.to_le_bytes());
        assert!(err(b).contains("tensor info 0 name"));
    }

    #[test]
    fn unknown_type_fails_at_dequantize() {
        let b = write_gguf(3, &[], &[WT { name: "odd".into(), dims: vec![4], ty: 99, data: vec![0; 8] }], 32);
        let g = Gguf::from_bytes(b).unwrap();
        let t = g.tensor("odd").unwrap();
        assert_eq!((t.ty, t.n_bytes), (GgmlType::Unknown(99), 0));
        assert!(g.tensor_bytes(t).is_empty());
        let e = g.dequantize(t).unwrap_err().to_string();
        assert!(e.contains("tensor 'odd'") && e.contains("unknown ggml type id 99"), "{e}");
        assert!(g.to_blocks(t).unwrap().is_none());
        // A known type without a dequantiser.
        let b = write_gguf(3, &[], &[WT { name: "iq".into(), dims: vec![256], ty: 16, data: vec![0; 66] }], 32);
        let g = Gguf::from_bytes(b).unwrap();
        let e = g.dequantize(g.tensor("iq").unwrap()).unwrap_err().to_string();
        assert!(e.contains("tensor 'iq'") && e.contains("IQ2_XXS"), "{e}");
    }

    #[test]
    fn every_truncation_errors_without_panic() {
        let full = sample();
        for n in 0..full.len() {
            let r = std::panic::catch_unwind(|| Gguf::from_bytes(full[..n].to_vec()));
            let r = r.unwrap_or_else(|_| panic!("panicked on a file truncated to {n} bytes"));
            // The last tensor's data may end before the file does (it is padded only before it).
            let last =
                r.as_ref().ok().and_then(|g| g.tensors().last().map(|t| g.data_offset() + t.offset + t.n_bytes as u64));
            match r {
                Err(e) => assert!(!e.to_string().is_empty()),
                Ok(_) => assert!(last.is_some_and(|l| l <= n as u64), "truncated to {n} bytes but opened"),
            }
        }
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        // Flip every byte of the header and infos to a few values; no panics, only errors or files.
        let full = sample();
        for i in 0..full.len().min(600) {
            for v in [0u8, 0xff, 0x7f, 9, 13] {
                let mut b = full.clone();
                b[i] = v;
                let r = std::panic::catch_unwind(|| {
                    if let Ok(g) = Gguf::from_bytes(b) {
                        for t in g.tensors() {
                            let _ = g.dequantize(t);
                            let _ = g.to_blocks(t);
                        }
                    }
                });
                assert!(r.is_ok(), "panicked with byte {i} set to {v}");
            }
        }
    }
}
