//! The IR's text form, for people (`optc inspect --ir`) and golden tests. Nodes print in
//! topological order; small constants print their values, large ones a size.

use crate::{AttrValue, Graph, Init, Model, Tensor, TensorData, Type};
use std::fmt::Write;

/// The whole model as text.
pub fn model_to_text(m: &Model) -> String {
    let mut s = String::new();
    let opsets: Vec<String> = m
        .opset_imports
        .iter()
        .map(|o| {
            let d = if o.domain_name().is_empty() { "ai.onnx" } else { o.domain_name() };
            format!("{d}:{}", o.version.map(|v| v.to_string()).unwrap_or("?".into()))
        })
        .collect();
    let _ = write!(s, "model ir_version={} opsets=[{}]", opt(m.ir_version), opsets.join(", "));
    if let Some(p) = &m.producer_name {
        let _ = write!(s, " producer={:?}", p);
    }
    s.push('\n');
    if m.has_graph {
        graph_text(&m.graph, "graph", 0, &mut s);
    }
    s
}

/// One graph as text.
pub fn graph_to_text(g: &Graph) -> String {
    let mut s = String::new();
    graph_text(g, "graph", 0, &mut s);
    s
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

fn ty(t: &Option<Type>) -> String {
    t.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "?".into())
}

fn graph_text(g: &Graph, label: &str, depth: usize, s: &mut String) {
    let pad = "  ".repeat(depth);
    let _ = writeln!(s, "{pad}{label} {} {{", g.name.as_deref().unwrap_or("\"\""));
    for d in &g.inputs {
        let v = g.value(d.value);
        let _ = writeln!(s, "{pad}  input %{}: {}", v.name, ty(&v.ty));
    }
    for &i in g.initializers.iter().chain(&g.sparse_initializers) {
        let v = g.value(i);
        let desc = match &v.init {
            Some(Init::Dense(t)) => tensor_text(t),
            Some(Init::Sparse(sp)) => format!("sparse{:?}", sp.dims),
            None => "?".into(),
        };
        let _ = writeln!(s, "{pad}  init %{} = {desc}", v.name);
    }
    let order = g.topo_order().unwrap_or_else(|_| g.nodes().collect());
    for n in order {
        let node = g.node(n);
        let outs: Vec<String> = node
            .outputs()
            .iter()
            .map(|o| o.map(|v| format!("%{}", g.value(v).name)).unwrap_or_else(|| "_".into()))
            .collect();
        let ins: Vec<String> = node
            .inputs()
            .iter()
            .map(|o| o.map(|v| format!("%{}", g.value(v).name)).unwrap_or_else(|| "_".into()))
            .collect();
        let mut attrs = Vec::new();
        let mut subgraphs = Vec::new();
        for a in &node.attrs {
            match &a.value {
                AttrValue::Graph(sg) => subgraphs.push((a.name.clone(), sg.as_ref())),
                AttrValue::Graphs(gs) => {
                    for (i, sg) in gs.iter().enumerate() {
                        subgraphs.push((format!("{}[{i}]", a.name), sg));
                    }
                }
                v => attrs.push(format!("{}={}", a.name, attr_text(v))),
            }
        }
        let _ = write!(s, "{pad}  {} = {}({})", outs.join(", "), node.op, ins.join(", "));
        if !attrs.is_empty() {
            let _ = write!(s, " {{{}}}", attrs.join(", "));
        }
        if let Some(name) = &node.name {
            let _ = write!(s, "  # {name}");
        }
        s.push('\n');
        for (label, sg) in subgraphs {
            graph_text(sg, &label, depth + 2, s);
        }
    }
    for d in &g.outputs {
        let v = g.value(d.value);
        let _ = writeln!(s, "{pad}  output %{}: {}", v.name, ty(&v.ty));
    }
    let _ = writeln!(s, "{pad}}}");
}

fn list<T: ToString>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(","))
}

fn attr_text(v: &AttrValue) -> String {
    match v {
        AttrValue::Float(f) => format!("{f:?}"),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::String(b) => format!("{:?}", String::from_utf8_lossy(b)),
        AttrValue::Tensor(t) => tensor_text(t),
        AttrValue::Floats(v) => list(&v.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>()),
        AttrValue::Ints(v) => list(v),
        AttrValue::Strings(v) => {
            list(&v.iter().map(|b| format!("{:?}", String::from_utf8_lossy(b))).collect::<Vec<_>>())
        }
        AttrValue::Tensors(v) => list(&v.iter().map(tensor_text).collect::<Vec<_>>()),
        AttrValue::Type(t) => t.to_string(),
        AttrValue::Types(v) => list(v),
        AttrValue::SparseTensor(sp) => format!("sparse{:?}", sp.dims),
        AttrValue::SparseTensors(v) => format!("[{} sparse tensors]", v.len()),
        AttrValue::Graph(_) | AttrValue::Graphs(_) => "<graph>".into(),
        AttrValue::None => "none".into(),
    }
}

/// `f32[2,3] = [..]` for small tensors, `f32[64,3,7,7] <37632 B>` for large ones.
pub fn tensor_text(t: &Tensor) -> String {
    let head = format!("{}{}", t.dtype, list(&t.dims));
    let numel = t.numel().unwrap_or(u64::MAX);
    if numel <= 8 {
        if let Some(v) = t.to_f32_vec() {
            return format!("{head} = {}", list(&v.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>()));
        }
        if let Some(v) = t.to_i64_vec() {
            return format!("{head} = {}", list(&v));
        }
    }
    let ext = if let TensorData::External { reference, .. } = &t.data {
        format!(" external:{}", reference.location)
    } else {
        String::new()
    };
    format!("{head} <{} B{ext}>", t.byte_size())
}
