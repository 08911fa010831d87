//! ONNX reader. The file is memory-mapped and walked at the wire level: each message the IR
//! lifts (model, graph, node, attribute, tensor, value info) is split into the fields the IR
//! models, decoded with prost from a filtered copy of just those fields, and the rest, unknown
//! fields included, kept verbatim in the IR's `RawFields`. Tensor bytes are never copied.

pub mod external;

use bytes::Bytes;
use external::ExternalFiles;
use optc_ir::{
    AttrValue, Attribute, DType, Decl, Dim, DimValue, ExternalRef, Graph, Init, MetaProp, Model, NodeSpec, Op,
    OpsetImport, RawField, RawFields, SparseTensor, Tensor, TensorData, Type, TypeKind, TypedData, ValueId,
};
use optc_proto::Message;
use optc_proto::onnx as pb;
use optc_proto::wire::{self, Field};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The newest default-domain opset this build understands.
pub const MAX_ONNX_OPSET: i64 = 27;
/// The newest IR version this build understands.
pub const MAX_IR_VERSION: i64 = 13;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read '{path}': {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("'{0}' is empty (0 bytes): not an ONNX model")]
    Empty(PathBuf),
    #[error("'{path}' is not a valid ONNX model: protobuf decode failed in {context}: {message}")]
    Decode { path: PathBuf, context: String, message: String },
    #[error("'{path}' is not an ONNX model: {message}")]
    NotOnnx { path: PathBuf, message: String },
    #[error("'{path}': {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("'{path}': tensor '{tensor}': {message}")]
    Tensor { path: PathBuf, tensor: String, message: String },
    #[error("'{path}': unsupported opset: {message}")]
    Opset { path: PathBuf, message: String },
}

/// How to read a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Accept default-domain opsets newer than this build knows (ops are then kept opaque).
    pub allow_unknown_opset: bool,
}

/// Reads an ONNX model from a file, mapping it (and its external data) into memory.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model, LoadError> {
    let io = |err| LoadError::Io { path: path.to_path_buf(), err };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Err(LoadError::Empty(path.to_path_buf()));
    }
    // SAFETY: read-only map; optc writes outputs through a temporary file and a rename, so a
    // file it has mapped is never modified by optc.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let bytes = Bytes::from_owner(map);
    let base = path.parent().map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_path_buf() });
    let mut model = lift_model(bytes, path, base, opts)?;
    model.source = Some(path.to_path_buf());
    Ok(model)
}

/// Reads an ONNX model from bytes; external data is resolved against `base_dir` if given.
pub fn load_bytes(bytes: Bytes, base_dir: Option<&Path>, opts: &LoadOptions) -> Result<Model, LoadError> {
    if bytes.is_empty() {
        return Err(LoadError::Empty(PathBuf::from("<memory>")));
    }
    lift_model(bytes, Path::new("<memory>"), base_dir.map(Path::to_path_buf), opts)
}

/// Reads one serialized `TensorProto` (as in the onnx backend tests' `input_0.pb`).
/// External data is resolved against `base_dir` when given.
pub fn load_tensor(bytes: Bytes, base_dir: Option<&Path>) -> Result<optc_ir::Tensor, LoadError> {
    let path = Path::new("<tensor>");
    let mut lf = Lifter { path, ext: ExternalFiles::new(base_dir.map(Path::to_path_buf)) };
    lf.tensor(bytes, "<tensor>")
}

// Field numbers of the messages the IR lifts (onnx-ml.proto).
pub mod fields {
    pub const MODEL_KNOWN: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25, 26];
    pub const MODEL_MODELLED: &[u32] = &[1, 2, 3, 4, 5, 6, 8, 14];
    pub const GRAPH_KNOWN: &[u32] = &[1, 2, 5, 10, 11, 12, 13, 14, 15, 16];
    pub const GRAPH_MODELLED: &[u32] = &[1, 2, 5, 10, 11, 12, 13, 15];
    pub const NODE_KNOWN: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    pub const NODE_MODELLED: &[u32] = &[1, 2, 3, 4, 5, 6, 7];
    pub const ATTR_KNOWN: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 20, 21, 22, 23];
    pub const ATTR_HEADER: &[u32] = &[1, 13, 20, 21];
    pub const TENSOR_KNOWN: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16];
    pub const TENSOR_HEADER: &[u32] = &[1, 2, 8, 12, 13, 14];
    pub const VALUE_INFO_KNOWN: &[u32] = &[1, 2, 3, 4];
    pub const VALUE_INFO_MODELLED: &[u32] = &[1, 2, 3];
    pub const SPARSE_KNOWN: &[u32] = &[1, 2, 3];
    pub const OPSET_KNOWN: &[u32] = &[1, 2];
    pub const STRING_ENTRY_KNOWN: &[u32] = &[1, 2];
}
use fields::*;

struct Lifter<'a> {
    path: &'a Path,
    ext: ExternalFiles,
}

fn lift_model(bytes: Bytes, path: &Path, base: Option<PathBuf>, opts: &LoadOptions) -> Result<Model, LoadError> {
    let mut lf = Lifter { path, ext: ExternalFiles::new(base) };
    let fs = lf.fields(&bytes, "ModelProto")?;
    let header: pb::ModelProto = lf.decode(&wire::filtered(&bytes, &fs, MODEL_MODELLED), "ModelProto")?;
    let graph_field = fs.iter().rev().find(|f| f.number == 7 && f.wire_type == 2);
    if header.ir_version.is_none() && graph_field.is_none() && header.opset_import.is_empty() {
        return Err(LoadError::NotOnnx {
            path: path.to_path_buf(),
            message: "it has no ir_version, no graph and no opset_import".into(),
        });
    }
    if let Some(v) = header.ir_version
        && !(0..=MAX_IR_VERSION).contains(&v)
    {
        return Err(LoadError::Opset {
            path: path.to_path_buf(),
            message: format!("IR version {v} is not supported (this build reads up to {MAX_IR_VERSION})"),
        });
    }
    let opset_raw: Vec<&Field> = fs.iter().filter(|f| f.number == 8).collect();
    let mut opset_imports = Vec::new();
    for (o, f) in header.opset_import.iter().zip(&opset_raw) {
        let extra = lf.extras(&bytes.slice(f.payload.clone()), OPSET_KNOWN)?;
        opset_imports.push(OpsetImport { domain: o.domain.clone(), version: o.version, extra });
    }
    for o in &opset_imports {
        if o.domain_name().is_empty() {
            match o.version {
                Some(v) if v > MAX_ONNX_OPSET && !opts.allow_unknown_opset => {
                    return Err(LoadError::Opset {
                        path: path.to_path_buf(),
                        message: format!(
                            "the model imports opset ai.onnx version {v}, but this build knows versions 1 to {MAX_ONNX_OPSET}"
                        ),
                    });
                }
                Some(v) if v < 1 => {
                    return Err(LoadError::Opset {
                        path: path.to_path_buf(),
                        message: format!("the model imports opset ai.onnx version {v}, which does not exist"),
                    });
                }
                _ => {}
            }
        }
    }
    let meta_raw: Vec<&Field> = fs.iter().filter(|f| f.number == 14).collect();
    let metadata_props = lf.meta_props(&bytes, &header.metadata_props, &meta_raw)?;
    let graph = match graph_field {
        Some(f) => lf.graph(bytes.slice(f.payload.clone()), false, "main")?,
        None => Graph::default(),
    };
    let extra = lf.extras_from(&bytes, &fs, MODEL_MODELLED, &[7]);
    Ok(Model {
        ir_version: header.ir_version,
        opset_imports,
        producer_name: header.producer_name,
        producer_version: header.producer_version,
        domain: header.domain,
        model_version: header.model_version,
        doc_string: header.doc_string,
        metadata_props,
        graph,
        has_graph: graph_field.is_some(),
        extra,
        source: None,
    })
}

impl Lifter<'_> {
    fn fields(&self, buf: &[u8], context: &str) -> Result<Vec<Field>, LoadError> {
        wire::fields(buf).map_err(|e| LoadError::Decode {
            path: self.path.to_path_buf(),
            context: context.into(),
            message: e.0,
        })
    }

    fn decode<M: Message + Default>(&self, buf: &[u8], context: &str) -> Result<M, LoadError> {
        M::decode(buf).map_err(|e| LoadError::Decode {
            path: self.path.to_path_buf(),
            context: context.into(),
            message: e.to_string(),
        })
    }

    fn invalid(&self, message: String) -> LoadError {
        LoadError::Invalid { path: self.path.to_path_buf(), message }
    }

    /// Fields of `buf` whose numbers are not in `modelled` and not in `skip`.
    fn extras_from(&self, buf: &Bytes, fs: &[Field], modelled: &[u32], skip: &[u32]) -> RawFields {
        RawFields(
            fs.iter()
                .filter(|f| !modelled.contains(&f.number) && !skip.contains(&f.number))
                .map(|f| RawField { number: f.number, encoded: buf.slice(f.full.clone()) })
                .collect(),
        )
    }

    fn extras(&self, buf: &Bytes, modelled: &[u32]) -> Result<RawFields, LoadError> {
        let fs = self.fields(buf, "message")?;
        Ok(self.extras_from(buf, &fs, modelled, &[]))
    }

    fn meta_props(
        &self,
        buf: &Bytes,
        props: &[pb::StringStringEntryProto],
        raw: &[&Field],
    ) -> Result<Vec<MetaProp>, LoadError> {
        props
            .iter()
            .zip(raw)
            .map(|(p, f)| {
                Ok(MetaProp {
                    key: p.key.clone(),
                    value: p.value.clone(),
                    extra: self.extras(&buf.slice(f.payload.clone()), STRING_ENTRY_KNOWN)?,
                })
            })
            .collect()
    }

    fn graph(&mut self, buf: Bytes, is_sub: bool, path: &str) -> Result<Graph, LoadError> {
        let fs = self.fields(&buf, &format!("graph {path}"))?;
        let header: pb::GraphProto =
            self.decode(&wire::filtered(&buf, &fs, &[2, 10, 11, 12, 13]), &format!("graph {path}"))?;
        let mut g = Graph::default();
        g.name = header.name.clone();
        g.doc_string = header.doc_string.clone();
        g.extra = self.extras_from(&buf, &fs, GRAPH_MODELLED, &[]);
        let graph_name = header.name.clone().unwrap_or_else(|| path.to_string());

        // Initializers.
        for f in fs.iter().filter(|f| f.number == 5) {
            let t = self.tensor(buf.slice(f.payload.clone()), &graph_name)?;
            let name = t.name.clone().unwrap_or_default();
            if g.find_value(&name).is_some() {
                return Err(self.invalid(format!("graph '{graph_name}' has two initializers named '{name}'")));
            }
            let v = g.add_initializer(name, t).map_err(|e| self.invalid(e.to_string()))?;
            g.value_mut(v).ty = None;
        }
        for f in fs.iter().filter(|f| f.number == 15) {
            let sp = self.sparse(buf.slice(f.payload.clone()), &graph_name)?;
            let name = sp.values.as_ref().and_then(|t| t.name.clone()).unwrap_or_default();
            let v = g
                .add_value(name.clone(), None)
                .map_err(|_| self.invalid(format!("graph '{graph_name}' has two initializers named '{name}'")))?;
            g.value_mut(v).init = Some(Init::Sparse(sp));
            g.sparse_initializers.push(v);
        }
        // Inputs.
        let value_infos = |number: u32| fs.iter().filter(move |f| f.number == number);
        let infos = |list: &[pb::ValueInfoProto]| list.to_vec();
        let inputs = infos(&header.input);
        for (vi, f) in inputs.iter().zip(value_infos(11)) {
            let name = vi.name.clone().unwrap_or_default();
            let v = match g.find_value(&name) {
                Some(v) => v,
                None => g.add_value(name.clone(), None).map_err(|e| self.invalid(e.to_string()))?,
            };
            if g.is_graph_input(v) {
                return Err(self.invalid(format!("graph '{graph_name}' lists input '{name}' twice")));
            }
            let decl = self.decl(&buf, f, vi, v)?;
            self.set_type(&mut g, v, vi)?;
            g.inputs.push(decl);
        }
        // Nodes: lift all, create every output first so that file order does not matter.
        let node_fields: Vec<&Field> = value_infos(1).collect();
        let mut lifted = Vec::with_capacity(node_fields.len());
        for (i, f) in node_fields.iter().enumerate() {
            lifted.push(self.node(buf.slice(f.payload.clone()), &graph_name, i)?);
        }
        for n in &lifted {
            for name in n.outputs.iter().filter(|s| !s.is_empty()) {
                if let Some(existing) = g.find_value(name) {
                    let val = g.value(existing);
                    let what = if val.init.is_some() {
                        "an initializer"
                    } else if g.is_graph_input(existing) {
                        "a graph input"
                    } else {
                        "another node's output"
                    };
                    return Err(self.invalid(format!(
                        "node '{}' ({}) writes value '{name}', which is already {what}",
                        n.display_name(),
                        n.op
                    )));
                }
                g.add_value(name.clone(), None).map_err(|e| self.invalid(e.to_string()))?;
            }
        }
        for n in lifted {
            let mut inputs = Vec::with_capacity(n.inputs.len());
            for name in &n.inputs {
                inputs.push(if name.is_empty() {
                    None
                } else {
                    Some(self.resolve(&mut g, name, is_sub, &graph_name, &n)?)
                });
            }
            let outputs: Vec<Option<ValueId>> =
                n.outputs.iter().map(|s| if s.is_empty() { None } else { g.find_value(s) }).collect();
            let display = n.display_name();
            let op_name = n.op.to_string();
            let mut captures = Vec::new();
            for sg in n.attrs.iter().flat_map(|a| match &a.value {
                AttrValue::Graph(sg) => vec![sg.as_ref()],
                AttrValue::Graphs(gs) => gs.iter().collect(),
                _ => vec![],
            }) {
                for v in sg.values() {
                    let val = sg.value(v);
                    if val.outer {
                        let probe = LiftedNode {
                            name: Some(display.clone()),
                            op: n.op.clone(),
                            domain_raw: None,
                            attrs: Vec::new(),
                            doc_string: None,
                            extra: RawFields::default(),
                            inputs: Vec::new(),
                            outputs: Vec::new(),
                        };
                        let outer = self.resolve(&mut g, &val.name, is_sub, &graph_name, &probe)?;
                        if !captures.contains(&outer) {
                            captures.push(outer);
                        }
                    }
                }
            }
            let spec = NodeSpec { name: n.name, op: n.op, attrs: n.attrs, inputs, outputs };
            let id = g.add_node(spec).map_err(|e| self.invalid(format!("node '{display}' ({op_name}): {e}")))?;
            let node = g.node_mut(id);
            node.domain_raw = n.domain_raw;
            node.doc_string = n.doc_string;
            node.extra = n.extra;
            if !captures.is_empty() {
                g.set_captures(id, captures);
            }
        }
        // Outputs and value_info.
        for (vi, f) in header.output.iter().zip(value_infos(12)) {
            let name = vi.name.clone().unwrap_or_default();
            let v = match g.find_value(&name) {
                Some(v) => v,
                None if is_sub => {
                    // A subgraph may return an outer value directly.
                    let v = g.add_value(name.clone(), None).map_err(|e| self.invalid(e.to_string()))?;
                    g.value_mut(v).outer = true;
                    v
                }
                None => {
                    return Err(self.invalid(format!(
                        "graph output '{name}' of graph '{graph_name}' is produced by no node and is neither an input nor an initializer"
                    )));
                }
            };
            let decl = self.decl(&buf, f, vi, v)?;
            self.set_type(&mut g, v, vi)?;
            g.outputs.push(decl);
        }
        for (vi, f) in header.value_info.iter().zip(value_infos(13)) {
            let name = vi.name.clone().unwrap_or_default();
            let v = match g.find_value(&name) {
                Some(v) => v,
                None => g.add_value(name.clone(), None).map_err(|e| self.invalid(e.to_string()))?,
            };
            let decl = self.decl(&buf, f, vi, v)?;
            self.set_type(&mut g, v, vi)?;
            g.value_info.push(decl);
        }
        if let Err(stuck) = g.topo_order() {
            let names: Vec<String> = stuck.iter().take(6).map(|&n| format!("'{}'", g.node(n).display_name())).collect();
            return Err(self.invalid(format!(
                "graph '{graph_name}' has a cycle: nodes {} depend on each other's outputs",
                names.join(", ")
            )));
        }
        // Initializers without a declared type get theirs from the tensor.
        for v in g.initializers.clone() {
            if g.value(v).ty.is_none()
                && let Some(t) = g.value(v).tensor()
            {
                let ty = Type::tensor(t.dtype, t.dims.iter().map(|&d| Dim::known(d)).collect());
                g.value_mut(v).ty = Some(ty);
            }
        }
        Ok(g)
    }

    fn resolve(
        &mut self,
        g: &mut Graph,
        name: &str,
        is_sub: bool,
        graph_name: &str,
        n: &LiftedNode,
    ) -> Result<ValueId, LoadError> {
        if let Some(v) = g.find_value(name) {
            return Ok(v);
        }
        if is_sub {
            let v = g.add_value(name.to_string(), None).map_err(|e| self.invalid(e.to_string()))?;
            g.value_mut(v).outer = true;
            return Ok(v);
        }
        Err(self.invalid(format!(
            "node '{}' ({}) in graph '{graph_name}' reads value '{name}', which no node produces and which is neither a graph input nor an initializer",
            n.display_name(),
            n.op
        )))
    }

    fn decl(&self, buf: &Bytes, f: &Field, vi: &pb::ValueInfoProto, v: ValueId) -> Result<Decl, LoadError> {
        Ok(Decl {
            value: v,
            doc_string: vi.doc_string.clone(),
            typed: vi.r#type.is_some(),
            extra: self.extras(&buf.slice(f.payload.clone()), VALUE_INFO_MODELLED)?,
        })
    }

    fn set_type(&self, g: &mut Graph, v: ValueId, vi: &pb::ValueInfoProto) -> Result<(), LoadError> {
        if g.value(v).ty.is_none()
            && let Some(t) = &vi.r#type
        {
            g.value_mut(v).ty = Some(lift_type(t));
        }
        Ok(())
    }

    fn node(&mut self, buf: Bytes, graph_name: &str, index: usize) -> Result<LiftedNode, LoadError> {
        let ctx = format!("node #{index} of graph '{graph_name}'");
        let fs = self.fields(&buf, &ctx)?;
        let header: pb::NodeProto = self.decode(&wire::filtered(&buf, &fs, &[1, 2, 3, 4, 6, 7]), &ctx)?;
        let op_type = header.op_type.clone().unwrap_or_default();
        let domain = header.domain.clone().unwrap_or_default();
        let mut n = LiftedNode {
            name: header.name.clone(),
            op: Op::from_onnx(&domain, &op_type),
            domain_raw: header.domain.clone(),
            attrs: Vec::new(),
            doc_string: header.doc_string.clone(),
            extra: self.extras_from(&buf, &fs, NODE_MODELLED, &[]),
            inputs: header.input.clone(),
            outputs: header.output.clone(),
        };
        if op_type.is_empty() {
            return Err(self.invalid(format!("node '{}' in graph '{graph_name}' has no op_type", n.display_name())));
        }
        for f in fs.iter().filter(|f| f.number == 5) {
            let a = self.attribute(buf.slice(f.payload.clone()), &n, graph_name)?;
            n.attrs.push(a);
        }
        Ok(n)
    }

    fn attribute(&mut self, buf: Bytes, n: &LiftedNode, graph_name: &str) -> Result<Attribute, LoadError> {
        let ctx = format!("an attribute of node '{}' ({})", n.display_name(), n.op);
        let fs = self.fields(&buf, &ctx)?;
        let p: pb::AttributeProto =
            self.decode(&wire::filtered(&buf, &fs, &[1, 2, 3, 4, 7, 8, 9, 13, 14, 15, 20, 21, 22, 23]), &ctx)?;
        let name = p.name.clone().unwrap_or_default();
        let has = |num: u32| fs.iter().any(|f| f.number == num);
        // The value is the field `type` names; files without `type` use whichever field is set.
        let ty = p.r#type.or_else(|| {
            [
                (2, 1),
                (3, 2),
                (4, 3),
                (5, 4),
                (6, 5),
                (22, 11),
                (14, 13),
                (7, 6),
                (8, 7),
                (9, 8),
                (10, 9),
                (11, 10),
                (23, 12),
                (15, 14),
            ]
            .iter()
            .find(|(f, _)| has(*f))
            .map(|(_, t)| *t)
        });
        let sub_path = |i: Option<usize>| match i {
            Some(i) => format!("{graph_name}/{}.{name}[{i}]", n.display_name()),
            None => format!("{graph_name}/{}.{name}", n.display_name()),
        };
        let (value, value_field) = match ty.unwrap_or(0) {
            1 => (AttrValue::Float(p.f.unwrap_or_default()), Some(2)),
            2 => (AttrValue::Int(p.i.unwrap_or_default()), Some(3)),
            3 => (AttrValue::String(p.s.clone().unwrap_or_default()), Some(4)),
            4 => match fs.iter().rev().find(|f| f.number == 5) {
                Some(f) => (AttrValue::Tensor(self.tensor(buf.slice(f.payload.clone()), graph_name)?), Some(5)),
                None => (AttrValue::None, None),
            },
            5 => match fs.iter().rev().find(|f| f.number == 6) {
                Some(f) => (
                    AttrValue::Graph(Box::new(self.graph(buf.slice(f.payload.clone()), true, &sub_path(None))?)),
                    Some(6),
                ),
                None => (AttrValue::None, None),
            },
            6 => (AttrValue::Floats(p.floats.clone()), Some(7)),
            7 => (AttrValue::Ints(p.ints.clone()), Some(8)),
            8 => (AttrValue::Strings(p.strings.clone()), Some(9)),
            9 => {
                let mut v = Vec::new();
                for f in fs.iter().filter(|f| f.number == 10) {
                    v.push(self.tensor(buf.slice(f.payload.clone()), graph_name)?);
                }
                (AttrValue::Tensors(v), Some(10))
            }
            10 => {
                let mut v = Vec::new();
                for (i, f) in fs.iter().filter(|f| f.number == 11).enumerate() {
                    v.push(self.graph(buf.slice(f.payload.clone()), true, &sub_path(Some(i)))?);
                }
                (AttrValue::Graphs(v), Some(11))
            }
            11 => match fs.iter().rev().find(|f| f.number == 22) {
                Some(f) => (AttrValue::SparseTensor(self.sparse(buf.slice(f.payload.clone()), graph_name)?), Some(22)),
                None => (AttrValue::None, None),
            },
            12 => {
                let mut v = Vec::new();
                for f in fs.iter().filter(|f| f.number == 23) {
                    v.push(self.sparse(buf.slice(f.payload.clone()), graph_name)?);
                }
                (AttrValue::SparseTensors(v), Some(23))
            }
            13 => match &p.tp {
                Some(t) => (AttrValue::Type(lift_type(t)), Some(14)),
                None => (AttrValue::None, None),
            },
            14 => (AttrValue::Types(p.type_protos.iter().map(lift_type).collect()), Some(15)),
            _ => (AttrValue::None, None),
        };
        let mut modelled: Vec<u32> = ATTR_HEADER.to_vec();
        if let Some(f) = value_field {
            modelled.push(f);
        }
        Ok(Attribute {
            name,
            value,
            declared_type: p.r#type,
            ref_attr_name: p.ref_attr_name.clone(),
            doc_string: p.doc_string.clone(),
            extra: self.extras_from(&buf, &fs, &modelled, &[]),
        })
    }

    fn tensor(&mut self, buf: Bytes, graph_name: &str) -> Result<Tensor, LoadError> {
        let fs = self.fields(&buf, &format!("a tensor of graph '{graph_name}'"))?;
        let mut keep: Vec<u32> = TENSOR_HEADER.to_vec();
        keep.extend([4, 5, 6, 7, 10, 11]);
        let p: pb::TensorProto = self.decode(&wire::filtered(&buf, &fs, &keep), "TensorProto")?;
        let name = p.name.clone();
        let tname = name.clone().unwrap_or_else(|| "<unnamed>".into());
        let terr =
            |message: String| LoadError::Tensor { path: self.path.to_path_buf(), tensor: tname.clone(), message };
        let code = p.data_type.unwrap_or(0);
        let dtype = DType::from_onnx(code).unwrap_or(DType::Undefined);
        let raw = fs.iter().rev().find(|f| f.number == 9).map(|f| buf.slice(f.payload.clone()));
        let (data, data_field) = if p.data_location == Some(1) {
            let mut entries = Vec::new();
            for e in &p.external_data {
                entries.push((e.key.clone().unwrap_or_default(), e.value.clone().unwrap_or_default()));
            }
            let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let location = get("location").ok_or_else(|| terr("external data without a 'location' entry".into()))?;
            let num = |k: &str| -> Result<Option<u64>, LoadError> {
                get(k)
                    .map(|s| {
                        s.trim().parse::<u64>().map_err(|_| terr(format!("external data '{k}' is not a number: '{s}'")))
                    })
                    .transpose()
            };
            let (offset, length) = (num("offset")?, num("length")?);
            let bytes = self.ext.slice(&location, offset.unwrap_or(0), length).map_err(terr)?;
            (TensorData::External { reference: ExternalRef { location, offset, length, entries }, bytes }, None)
        } else if let Some(raw) = raw {
            (TensorData::Raw(raw), Some(9))
        } else if !p.float_data.is_empty() {
            (TensorData::Typed(TypedData::Float(p.float_data.clone())), Some(4))
        } else if !p.int32_data.is_empty() {
            (TensorData::Typed(TypedData::Int32(p.int32_data.clone())), Some(5))
        } else if !p.string_data.is_empty() {
            (TensorData::Typed(TypedData::String(p.string_data.clone())), Some(6))
        } else if !p.int64_data.is_empty() {
            (TensorData::Typed(TypedData::Int64(p.int64_data.clone())), Some(7))
        } else if !p.double_data.is_empty() {
            (TensorData::Typed(TypedData::Double(p.double_data.clone())), Some(10))
        } else if !p.uint64_data.is_empty() {
            (TensorData::Typed(TypedData::Uint64(p.uint64_data.clone())), Some(11))
        } else {
            (TensorData::Empty, None)
        };
        let mut modelled = TENSOR_HEADER.to_vec();
        if let Some(f) = data_field {
            modelled.push(f);
        }
        let t = Tensor {
            name,
            dtype,
            dtype_code: p.data_type,
            dims: p.dims.clone(),
            data,
            doc_string: p.doc_string.clone(),
            data_location: p.data_location,
            extra: self.extras_from(&buf, &fs, &modelled, &[]),
        };
        if dtype != DType::Undefined {
            optc_ir::verify::check_tensor(&t).map_err(terr)?;
        }
        Ok(t)
    }

    fn sparse(&mut self, buf: Bytes, graph_name: &str) -> Result<SparseTensor, LoadError> {
        let fs = self.fields(&buf, "SparseTensorProto")?;
        let p: pb::SparseTensorProto = self.decode(&wire::filtered(&buf, &fs, &[3]), "SparseTensorProto")?;
        let mut sp = SparseTensor {
            values: None,
            indices: None,
            dims: p.dims,
            extra: self.extras_from(&buf, &fs, &[1, 2, 3], &[]),
        };
        if let Some(f) = fs.iter().rev().find(|f| f.number == 1) {
            sp.values = Some(self.tensor(buf.slice(f.payload.clone()), graph_name)?);
        }
        if let Some(f) = fs.iter().rev().find(|f| f.number == 2) {
            sp.indices = Some(self.tensor(buf.slice(f.payload.clone()), graph_name)?);
        }
        Ok(sp)
    }
}

struct LiftedNode {
    name: Option<String>,
    op: Op,
    domain_raw: Option<String>,
    attrs: Vec<Attribute>,
    doc_string: Option<String>,
    extra: RawFields,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl LiftedNode {
    fn display_name(&self) -> String {
        match &self.name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => format!("<unnamed {}>", self.op),
        }
    }
}

/// Lifts a `TypeProto`.
pub fn lift_type(t: &pb::TypeProto) -> Type {
    use pb::type_proto::Value as V;
    let shape = |s: &Option<pb::TensorShapeProto>| {
        s.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| Dim {
                    value: match &d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => DimValue::Known(*v),
                        Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => DimValue::Sym(p.clone()),
                        None => DimValue::Unknown,
                    },
                    denotation: d.denotation.clone(),
                })
                .collect()
        })
    };
    let elem = |c: Option<i32>| c.and_then(DType::from_onnx);
    let kind = match &t.value {
        Some(V::TensorType(tt)) => {
            TypeKind::Tensor { elem: elem(tt.elem_type), elem_code: tt.elem_type, shape: shape(&tt.shape) }
        }
        Some(V::SparseTensorType(tt)) => {
            TypeKind::SparseTensor { elem: elem(tt.elem_type), elem_code: tt.elem_type, shape: shape(&tt.shape) }
        }
        Some(V::SequenceType(s)) => TypeKind::Sequence(s.elem_type.as_deref().map(|t| Box::new(lift_type(t)))),
        Some(V::MapType(m)) => {
            TypeKind::Map { key: m.key_type, value: m.value_type.as_deref().map(|t| Box::new(lift_type(t))) }
        }
        Some(V::OptionalType(o)) => TypeKind::Optional(o.elem_type.as_deref().map(|t| Box::new(lift_type(t)))),
        Some(V::OpaqueType(o)) => TypeKind::Opaque { domain: o.domain.clone(), name: o.name.clone() },
        None => TypeKind::Unset,
    };
    Type { kind, denotation: t.denotation.clone() }
}
