//! ONNX writer. The IR is lowered to a tree of [`Parts`]: fields the IR models are encoded with
//! prost, fields it carried verbatim are spliced back by field number, and tensor data stays a
//! shared slice until it is streamed to disk.

use bytes::Bytes;
use optc_ir::{
    AttrValue, Attribute, Decl, DimValue, Graph, Init, MetaProp, Model, Node, OpsetImport, RawFields, SparseTensor,
    Tensor, TensorData, Type, TypeKind, TypedData,
};
use optc_proto::Message;
use optc_proto::onnx as pb;
use optc_proto::wire::{Chunk, Parts};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Field numbers known to the schema (unknown ones are written last).
mod known {
    pub const MODEL: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25, 26];
    pub const GRAPH: &[u32] = &[1, 2, 5, 10, 11, 12, 13, 14, 15, 16];
    pub const NODE: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    pub const ATTR: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 20, 21, 22, 23];
    pub const TENSOR: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16];
    pub const VALUE_INFO: &[u32] = &[1, 2, 3, 4];
    pub const SPARSE: &[u32] = &[1, 2, 3];
    pub const OPSET: &[u32] = &[1, 2];
    pub const STRING_ENTRY: &[u32] = &[1, 2];
}

/// Protobuf messages cannot exceed 2 GiB.
pub const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExternalData {
    /// Keep tensors that were external external; move tensors out when the file would pass 2 GiB.
    #[default]
    Auto,
    /// Every tensor of at least `threshold` bytes goes to the data file.
    Always,
    /// Everything inline (an error past 2 GiB).
    Never,
}

impl std::str::FromStr for ExternalData {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ExternalData::Auto),
            "always" => Ok(ExternalData::Always),
            "never" => Ok(ExternalData::Never),
            _ => Err(format!("'{s}' is not one of auto, always, never")),
        }
    }
}

/// Called with (bytes written, bytes to write) while saving.
pub type Progress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

#[derive(Clone)]
pub struct SaveOptions {
    pub external: ExternalData,
    /// Smallest tensor (bytes) moved to the data file.
    pub threshold: u64,
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for SaveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaveOptions")
            .field("external", &self.external)
            .field("threshold", &self.threshold)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { external: ExternalData::Auto, threshold: 1024, progress: None }
    }
}

/// A writer that reports progress every few megabytes.
struct Counting<'a, W: Write> {
    inner: W,
    written: u64,
    reported: u64,
    total: u64,
    progress: Option<&'a Progress>,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if let Some(p) = self.progress
            && (self.written - self.reported >= 8 << 20 || self.written == self.total)
        {
            self.reported = self.written;
            p(self.written, self.total);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Clone, Debug, Default)]
pub struct SaveReport {
    pub model_bytes: u64,
    /// The data file and its size, when tensors were written externally.
    pub external: Option<(PathBuf, u64)>,
}

#[derive(Debug, Error)]
pub enum SaveError {
    #[error("cannot write '{path}': {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("the model is {size} bytes, over protobuf's 2 GiB limit; use --external-data auto or always")]
    TooLarge { size: u64 },
    #[error("{0}")]
    Invalid(String),
}

/// Writes the model to `path` atomically. Returns what was written.
pub fn save(model: &Model, path: &Path, opts: &SaveOptions) -> Result<SaveReport, SaveError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| SaveError::Invalid(format!("'{}' is not a file path", path.display())))?
        .to_string_lossy()
        .to_string();
    let location = format!("{file_name}.data");
    let mut plan = ExtPlan {
        policy: Policy::from(opts.external),
        threshold: opts.threshold,
        location,
        offset: 0,
        data: Vec::new(),
    };
    let mut parts = lower_model(model, &mut plan)?;
    if opts.external == ExternalData::Auto && parts.len() > PROTOBUF_LIMIT {
        plan = ExtPlan { policy: Policy::All, offset: 0, data: Vec::new(), ..plan };
        parts = lower_model(model, &mut plan)?;
    }
    if parts.len() > PROTOBUF_LIMIT {
        return Err(SaveError::TooLarge { size: parts.len() });
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut report = SaveReport { model_bytes: parts.len(), external: None };
    let total = parts.len() + plan.offset;
    let mut done = 0u64;
    if !plan.data.is_empty() {
        let data_path = dir.join(&plan.location);
        write_atomic(&data_path, |w| {
            let mut w = Counting { inner: w, written: 0, reported: 0, total, progress: opts.progress.as_ref() };
            let w = &mut w;
            let mut at = 0u64;
            for (offset, bytes) in &plan.data {
                w.write_all(&vec![0u8; (offset - at) as usize])?;
                w.write_all(bytes)?;
                release(bytes);
                at = offset + bytes.len() as u64;
            }
            Ok(())
        })?;
        report.external = Some((data_path, plan.offset));
        done = plan.offset;
    }
    write_atomic(path, |w| {
        let mut w = Counting { inner: w, written: done, reported: done, total, progress: opts.progress.as_ref() };
        parts.write_to(&mut w)
    })?;
    Ok(report)
}

/// The model as bytes in memory, everything inline (for tests and small models).
pub fn to_bytes(model: &Model) -> Result<Vec<u8>, SaveError> {
    let mut plan =
        ExtPlan { policy: Policy::None, threshold: u64::MAX, location: String::new(), offset: 0, data: Vec::new() };
    let parts = lower_model(model, &mut plan)?;
    let mut out = Vec::with_capacity(parts.len() as usize);
    parts.write_to(&mut out).map_err(|e| SaveError::Invalid(e.to_string()))?;
    Ok(out)
}

/// Drops already-written pages of a mapped input from memory, so streaming a model larger than
/// RAM keeps the resident set small.
fn release(bytes: &Bytes) {
    optc_ir::mem::release_pages(bytes);
}

/// Writes a file through a temporary file in the same directory and a rename, so `path` is
/// either left as it was or holds all of `body`'s output.
pub fn write_atomic(
    path: &Path,
    body: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), SaveError> {
    let io = |err| SaveError::Io { path: path.to_path_buf(), err };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.optc-tmp-{}", std::process::id()));
    // create_new never follows or reuses an existing path (a planted link included).
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let result = body(&mut w).and_then(|_| w.flush());
    if let Err(e) = result {
        drop(w);
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    drop(w);
    // rename replaces a link at `path` rather than writing through it.
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// Inline everything.
    None,
    /// Keep what was external external.
    Keep,
    /// Move every tensor over the threshold out.
    All,
}

impl From<ExternalData> for Policy {
    fn from(e: ExternalData) -> Policy {
        match e {
            ExternalData::Auto => Policy::Keep,
            ExternalData::Always => Policy::All,
            ExternalData::Never => Policy::None,
        }
    }
}

struct ExtPlan {
    policy: Policy,
    threshold: u64,
    location: String,
    offset: u64,
    data: Vec<(u64, Bytes)>,
}

impl ExtPlan {
    fn wants(&self, t: &Tensor, bytes: &Bytes) -> bool {
        match self.policy {
            Policy::None => false,
            Policy::Keep => t.is_external(),
            Policy::All => bytes.len() as u64 >= self.threshold || t.is_external(),
        }
    }
    fn place(&mut self, bytes: Bytes) -> (u64, u64) {
        // Align large tensors to pages so readers can map them.
        let align = if bytes.len() >= 4096 { 4096 } else { 1 };
        let offset = self.offset.div_ceil(align) * align;
        let len = bytes.len() as u64;
        self.offset = offset + len;
        self.data.push((offset, bytes));
        (offset, len)
    }
}

fn enc<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

fn splice_extra(parts: &mut Parts, extra: &RawFields) {
    for f in &extra.0 {
        parts.push(f.number, Chunk::Shared(f.encoded.clone()));
    }
}

fn push_prost(parts: &mut Parts, encoded: Vec<u8>) -> Result<(), SaveError> {
    parts.push_encoded(encoded).map_err(|e| SaveError::Invalid(e.0))
}

fn string_entry(p: &MetaProp) -> Result<Parts, SaveError> {
    let mut parts = Parts::new();
    push_prost(&mut parts, enc(&pb::StringStringEntryProto { key: p.key.clone(), value: p.value.clone() }))?;
    splice_extra(&mut parts, &p.extra);
    Ok(parts.finish(known::STRING_ENTRY))
}

fn opset(o: &OpsetImport) -> Result<Parts, SaveError> {
    let mut parts = Parts::new();
    push_prost(&mut parts, enc(&pb::OperatorSetIdProto { domain: o.domain.clone(), version: o.version }))?;
    splice_extra(&mut parts, &o.extra);
    Ok(parts.finish(known::OPSET))
}

fn lower_model(m: &Model, plan: &mut ExtPlan) -> Result<Parts, SaveError> {
    let mut parts = Parts::new();
    let header = pb::ModelProto {
        ir_version: m.ir_version,
        producer_name: m.producer_name.clone(),
        producer_version: m.producer_version.clone(),
        domain: m.domain.clone(),
        model_version: m.model_version,
        doc_string: m.doc_string.clone(),
        ..Default::default()
    };
    push_prost(&mut parts, enc(&header))?;
    for o in &m.opset_imports {
        parts.push(8, Chunk::Message { number: 8, body: opset(o)? });
    }
    for p in &m.metadata_props {
        parts.push(14, Chunk::Message { number: 14, body: string_entry(p)? });
    }
    if m.has_graph {
        parts.push(7, Chunk::Message { number: 7, body: lower_graph(&m.graph, plan)? });
    }
    splice_extra(&mut parts, &m.extra);
    Ok(parts.finish(known::MODEL))
}

fn lower_graph(g: &Graph, plan: &mut ExtPlan) -> Result<Parts, SaveError> {
    let mut parts = Parts::new();
    push_prost(
        &mut parts,
        enc(&pb::GraphProto { name: g.name.clone(), doc_string: g.doc_string.clone(), ..Default::default() }),
    )?;
    let order = g.topo_order().map_err(|stuck| {
        let names: Vec<String> = stuck.iter().take(5).map(|&n| g.node(n).display_name()).collect();
        SaveError::Invalid(format!("cannot write a graph with a cycle (through nodes {})", names.join(", ")))
    })?;
    for n in order {
        parts.push(1, Chunk::Message { number: 1, body: lower_node(g, g.node(n), plan)? });
    }
    for &v in &g.initializers {
        let val = g.value(v);
        if let Some(Init::Dense(t)) = &val.init {
            parts.push(5, Chunk::Message { number: 5, body: lower_tensor(t, Some(&val.name), plan)? });
        }
    }
    for &v in &g.sparse_initializers {
        let val = g.value(v);
        if let Some(Init::Sparse(sp)) = &val.init {
            parts.push(15, Chunk::Message { number: 15, body: lower_sparse(sp, plan)? });
        }
    }
    for (number, list) in [(11, &g.inputs), (12, &g.outputs), (13, &g.value_info)] {
        for d in list.iter() {
            parts.push(number, Chunk::Message { number, body: lower_decl(g, d)? });
        }
    }
    splice_extra(&mut parts, &g.extra);
    Ok(parts.finish(known::GRAPH))
}

fn lower_decl(g: &Graph, d: &Decl) -> Result<Parts, SaveError> {
    let v = g.value(d.value);
    let ty = if d.typed { v.ty.as_ref().map(lower_type) } else { None };
    let mut parts = Parts::new();
    push_prost(
        &mut parts,
        enc(&pb::ValueInfoProto {
            name: Some(v.name.clone()),
            r#type: ty,
            doc_string: d.doc_string.clone(),
            ..Default::default()
        }),
    )?;
    splice_extra(&mut parts, &d.extra);
    Ok(parts.finish(known::VALUE_INFO))
}

fn lower_node(g: &Graph, n: &Node, plan: &mut ExtPlan) -> Result<Parts, SaveError> {
    let names = |list: &[Option<optc_ir::ValueId>]| -> Vec<String> {
        list.iter().map(|v| v.map(|v| g.value(v).name.clone()).unwrap_or_default()).collect()
    };
    let header = pb::NodeProto {
        input: names(n.inputs()),
        output: names(n.outputs()),
        name: n.name.clone(),
        op_type: Some(n.op.op_type().to_string()),
        domain: n.domain().map(str::to_string),
        doc_string: n.doc_string.clone(),
        ..Default::default()
    };
    let mut parts = Parts::new();
    push_prost(&mut parts, enc(&header))?;
    for a in &n.attrs {
        parts.push(5, Chunk::Message { number: 5, body: lower_attr(a, plan)? });
    }
    splice_extra(&mut parts, &n.extra);
    Ok(parts.finish(known::NODE))
}

fn lower_attr(a: &Attribute, plan: &mut ExtPlan) -> Result<Parts, SaveError> {
    let mut p = pb::AttributeProto {
        name: Some(a.name.clone()),
        r#type: a.declared_type,
        ref_attr_name: a.ref_attr_name.clone(),
        doc_string: a.doc_string.clone(),
        ..Default::default()
    };
    let mut parts = Parts::new();
    match &a.value {
        AttrValue::Float(f) => p.f = Some(*f),
        AttrValue::Int(i) => p.i = Some(*i),
        AttrValue::String(s) => p.s = Some(s.clone()),
        AttrValue::Floats(v) => p.floats = v.clone(),
        AttrValue::Ints(v) => p.ints = v.clone(),
        AttrValue::Strings(v) => p.strings = v.clone(),
        AttrValue::Type(t) => p.tp = Some(lower_type(t)),
        AttrValue::Types(v) => p.type_protos = v.iter().map(lower_type).collect(),
        AttrValue::Tensor(t) => parts.push(5, Chunk::Message { number: 5, body: lower_tensor(t, None, plan)? }),
        AttrValue::Tensors(v) => {
            for t in v {
                parts.push(10, Chunk::Message { number: 10, body: lower_tensor(t, None, plan)? });
            }
        }
        AttrValue::Graph(sg) => parts.push(6, Chunk::Message { number: 6, body: lower_graph(sg, plan)? }),
        AttrValue::Graphs(v) => {
            for sg in v {
                parts.push(11, Chunk::Message { number: 11, body: lower_graph(sg, plan)? });
            }
        }
        AttrValue::SparseTensor(sp) => parts.push(22, Chunk::Message { number: 22, body: lower_sparse(sp, plan)? }),
        AttrValue::SparseTensors(v) => {
            for sp in v {
                parts.push(23, Chunk::Message { number: 23, body: lower_sparse(sp, plan)? });
            }
        }
        AttrValue::None => {}
    }
    push_prost(&mut parts, enc(&p))?;
    splice_extra(&mut parts, &a.extra);
    Ok(parts.finish(known::ATTR))
}

fn lower_sparse(sp: &SparseTensor, plan: &mut ExtPlan) -> Result<Parts, SaveError> {
    let mut parts = Parts::new();
    if let Some(t) = &sp.values {
        parts.push(1, Chunk::Message { number: 1, body: lower_tensor(t, None, plan)? });
    }
    if let Some(t) = &sp.indices {
        parts.push(2, Chunk::Message { number: 2, body: lower_tensor(t, None, plan)? });
    }
    push_prost(&mut parts, enc(&pb::SparseTensorProto { dims: sp.dims.clone(), ..Default::default() }))?;
    splice_extra(&mut parts, &sp.extra);
    Ok(parts.finish(known::SPARSE))
}

fn lower_tensor(t: &Tensor, name: Option<&str>, plan: &mut ExtPlan) -> Result<Parts, SaveError> {
    let mut p = pb::TensorProto {
        dims: t.dims.clone(),
        data_type: t.dtype_code,
        name: name.map(str::to_string).or_else(|| t.name.clone()),
        doc_string: t.doc_string.clone(),
        data_location: t.data_location,
        ..Default::default()
    };
    let mut parts = Parts::new();
    let bytes = match &t.data {
        TensorData::Raw(b) | TensorData::External { bytes: b, .. } => Some(b.clone()),
        _ => None,
    };
    match (&t.data, bytes) {
        (data, Some(b)) if plan.wants(t, &b) => {
            let (offset, length) = plan.place(b);
            let mut entries = vec![
                ("location".to_string(), plan.location.clone()),
                ("offset".to_string(), offset.to_string()),
                ("length".to_string(), length.to_string()),
            ];
            if let TensorData::External { reference, .. } = data {
                for (k, v) in &reference.entries {
                    if !matches!(k.as_str(), "location" | "offset" | "length") {
                        entries.push((k.clone(), v.clone()));
                    }
                }
            }
            p.external_data =
                entries.into_iter().map(|(k, v)| pb::StringStringEntryProto { key: Some(k), value: Some(v) }).collect();
            p.data_location = Some(1);
        }
        (TensorData::External { .. }, Some(b)) => {
            // Brought inline.
            p.data_location = None;
            parts.push(9, Chunk::Data { number: 9, data: b });
        }
        (TensorData::External { reference, .. }, None) => {
            return Err(SaveError::Invalid(format!("external tensor in '{}' has no data", reference.location)));
        }
        (TensorData::Raw(_), Some(b)) => parts.push(9, Chunk::Data { number: 9, data: b }),
        (TensorData::Typed(td), _) => match td {
            TypedData::Float(v) => p.float_data = v.clone(),
            TypedData::Int32(v) => p.int32_data = v.clone(),
            TypedData::Int64(v) => p.int64_data = v.clone(),
            TypedData::Double(v) => p.double_data = v.clone(),
            TypedData::Uint64(v) => p.uint64_data = v.clone(),
            TypedData::String(v) => p.string_data = v.clone(),
        },
        (TensorData::Empty, _) | (TensorData::Raw(_), None) => {}
    }
    push_prost(&mut parts, enc(&p))?;
    splice_extra(&mut parts, &t.extra);
    Ok(parts.finish(known::TENSOR))
}

/// Lowers a type to a `TypeProto`.
pub fn lower_type(t: &Type) -> pb::TypeProto {
    use pb::type_proto as tp;
    let shape = |s: &Option<Vec<optc_ir::Dim>>| {
        s.as_ref().map(|dims| pb::TensorShapeProto {
            dim: dims
                .iter()
                .map(|d| pb::tensor_shape_proto::Dimension {
                    value: match &d.value {
                        DimValue::Known(n) => Some(pb::tensor_shape_proto::dimension::Value::DimValue(*n)),
                        DimValue::Sym(s) => Some(pb::tensor_shape_proto::dimension::Value::DimParam(s.clone())),
                        DimValue::Unknown => None,
                    },
                    denotation: d.denotation.clone(),
                })
                .collect(),
        })
    };
    let value = match &t.kind {
        TypeKind::Tensor { elem, elem_code, shape: s } => Some(tp::Value::TensorType(tp::Tensor {
            elem_type: elem_code.or(elem.map(|e| e.onnx_code())),
            shape: shape(s),
        })),
        TypeKind::SparseTensor { elem, elem_code, shape: s } => Some(tp::Value::SparseTensorType(tp::SparseTensor {
            elem_type: elem_code.or(elem.map(|e| e.onnx_code())),
            shape: shape(s),
        })),
        TypeKind::Sequence(e) => Some(tp::Value::SequenceType(Box::new(tp::Sequence {
            elem_type: e.as_deref().map(|t| Box::new(lower_type(t))),
        }))),
        TypeKind::Map { key, value } => Some(tp::Value::MapType(Box::new(tp::Map {
            key_type: *key,
            value_type: value.as_deref().map(|t| Box::new(lower_type(t))),
        }))),
        TypeKind::Optional(e) => Some(tp::Value::OptionalType(Box::new(tp::Optional {
            elem_type: e.as_deref().map(|t| Box::new(lower_type(t))),
        }))),
        TypeKind::Opaque { domain, name } => {
            Some(tp::Value::OpaqueType(tp::Opaque { domain: domain.clone(), name: name.clone() }))
        }
        TypeKind::Unset => None,
    };
    pb::TypeProto { value, denotation: t.denotation.clone() }
}
