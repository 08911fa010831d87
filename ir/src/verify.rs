//! The IR verifier: the invariants every pass must keep. The pass manager runs it after each
//! pass under `--verify-each` (and always in tests) and names the pass that broke one.

use crate::{AttrValue, DType, Graph, Init, Model, NodeId, Tensor, TensorData, Use, ValueId};
use std::collections::HashSet;
use std::fmt;

/// One broken invariant, located by graph path and node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `main`, or `main/If_3.then_branch` for subgraphs.
    pub graph: String,
    pub node: Option<String>,
    pub op: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.node, &self.op) {
            (Some(n), Some(op)) => write!(f, "node '{n}' ({op}) in graph {}: {}", self.graph, self.message),
            _ => write!(f, "graph {}: {}", self.graph, self.message),
        }
    }
}

/// Checks a whole model: graph invariants, opset imports for every op domain, tensor sizes.
pub fn verify_model(model: &Model) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    if model.has_graph {
        let mut domains = HashSet::new();
        collect_domains(&model.graph, &mut domains);
        for d in domains {
            if model.opset(&d).is_none() {
                problems.push(Problem {
                    graph: "main".into(),
                    node: None,
                    op: None,
                    message: format!(
                        "ops of domain '{}' are used but the model imports no opset for it",
                        if d.is_empty() { "ai.onnx" } else { &d }
                    ),
                });
            }
        }
        verify_graph_into(&model.graph, "main", &HashSet::new(), &mut problems);
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

fn collect_domains(g: &Graph, out: &mut HashSet<String>) {
    for n in g.nodes() {
        let node = g.node(n);
        out.insert(node.op.domain().to_string());
        for sg in node.subgraphs() {
            collect_domains(sg, out);
        }
    }
}

/// Checks one graph (and its subgraphs). `outer` are the names visible from enclosing graphs.
pub fn verify_graph(g: &Graph) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    verify_graph_into(g, "main", &HashSet::new(), &mut problems);
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

fn verify_graph_into(g: &Graph, path: &str, outer: &HashSet<String>, problems: &mut Vec<Problem>) {
    let graph_problem = |message: String| Problem { graph: path.to_string(), node: None, op: None, message };
    if let Some(name) = g.name_index_ok() {
        problems.push(graph_problem(format!("value '{name}' is missing from the name index")));
    }
    let inputs: HashSet<ValueId> = g.inputs.iter().map(|d| d.value).collect();
    for v in g.values() {
        let val = g.value(v);
        let produced = g.producer(v).is_some();
        let defined = produced || val.init.is_some() || inputs.contains(&v) || val.outer;
        if val.outer && !outer.contains(&val.name) {
            problems.push(graph_problem(format!(
                "value '{}' is read from an enclosing graph that does not define it",
                val.name
            )));
        }
        if produced && (val.init.is_some() || inputs.contains(&v)) {
            let (p, _) = g.producer(v).expect("checked above");
            problems.push(graph_problem(format!(
                "value '{}' is produced by node '{}' and is also a graph input or initializer",
                val.name,
                g.node(p).display_name()
            )));
        }
        if !defined {
            for (n, u) in g.uses(v) {
                if u != Use::Capture {
                    let node = g.node(n);
                    problems.push(Problem {
                        graph: path.into(),
                        node: Some(node.display_name()),
                        op: Some(node.op.to_string()),
                        message: format!(
                            "reads value '{}', which no node produces and which is neither a graph input nor an initializer",
                            val.name
                        ),
                    });
                }
            }
            if g.is_graph_output(v) {
                problems.push(graph_problem(format!("graph output '{}' is never produced", val.name)));
            }
        }
        if let Some(Init::Dense(t)) = &val.init
            && let Err(m) = check_tensor(t)
        {
            problems.push(graph_problem(format!("initializer '{}': {m}", val.name)));
        }
    }
    let order = g.topo_order();
    if let Err(stuck) = &order {
        let names: Vec<String> = stuck.iter().take(8).map(|&n| g.node(n).display_name()).collect();
        problems.push(graph_problem(format!("the graph has a cycle through nodes {}", names.join(", "))));
    }
    for n in g.nodes() {
        verify_node(g, n, path, outer, problems);
    }
}

fn verify_node(g: &Graph, n: NodeId, path: &str, outer: &HashSet<String>, problems: &mut Vec<Problem>) {
    let node = g.node(n);
    let mut problem = |message: String| {
        problems.push(Problem {
            graph: path.to_string(),
            node: Some(node.display_name()),
            op: Some(node.op.to_string()),
            message,
        })
    };
    let (ins, outs) = g.edges_of(n);
    let mut edge_inputs: Vec<(usize, ValueId)> =
        ins.iter().filter_map(|(v, u)| if let Use::Input(i) = u { Some((*i, *v)) } else { None }).collect();
    edge_inputs.sort();
    let list_inputs: Vec<(usize, ValueId)> =
        node.inputs().iter().enumerate().filter_map(|(i, v)| v.map(|v| (i, v))).collect();
    if edge_inputs != list_inputs {
        problem("input list and graph edges disagree".into());
    }
    let mut edge_outputs = outs.clone();
    edge_outputs.sort_by_key(|(_, i)| *i);
    let list_outputs: Vec<(ValueId, usize)> =
        node.outputs().iter().enumerate().filter_map(|(i, v)| v.map(|v| (v, i))).collect();
    if edge_outputs != list_outputs {
        problem("output list and graph edges disagree".into());
    }
    for v in node.inputs().iter().flatten().chain(node.outputs().iter().flatten()) {
        if !g.contains_value(*v) {
            problem("refers to a removed value".into());
        }
    }
    for (name, kind) in node.op.attr_schema() {
        if let Some(a) = node.attrs.iter().find(|a| a.name == *name) {
            let ok = a.value.onnx_type() == kind.onnx_type() || matches!(a.value, AttrValue::None);
            if !ok {
                problem(format!("attribute '{}' must be of type {:?}, found {}", name, kind, a.value.kind_name()));
            }
        }
    }
    let mut seen = HashSet::new();
    for a in &node.attrs {
        if !seen.insert(a.name.as_str()) {
            problem(format!("attribute '{}' appears twice", a.name));
        }
    }
    // Subgraphs see this graph's names and everything this graph sees.
    if node.subgraphs().next().is_some() {
        let mut visible: HashSet<String> = outer.clone();
        for v in g.values() {
            visible.insert(g.value(v).name.clone());
        }
        let captured: HashSet<String> = node.captures().iter().map(|&v| g.value(v).name.clone()).collect();
        for (i, sg) in node.subgraphs().enumerate() {
            let sub_path = format!("{path}/{}[{i}]", node.display_name());
            for v in sg.values() {
                let val = sg.value(v);
                if val.outer && !captured.contains(&val.name) && !outer.contains(&val.name) {
                    problems.push(Problem {
                        graph: sub_path.clone(),
                        node: None,
                        op: None,
                        message: format!("outer value '{}' is not recorded as a capture of its node", val.name),
                    });
                }
            }
            verify_graph_into(sg, &sub_path, &visible, problems);
        }
    }
}

/// Checks that a tensor's stored data matches its dims and dtype.
pub fn check_tensor(t: &Tensor) -> Result<(), String> {
    if let Some(d) = t.dims.iter().find(|&&d| d < 0) {
        return Err(format!("negative dimension {d}"));
    }
    let numel = t.numel().ok_or_else(|| "element count overflows".to_string())?;
    let expect = |len: u64, what: &str| -> Result<(), String> {
        match t.dtype.storage_bytes(numel) {
            Some(want) if want != len => {
                Err(format!("{what} holds {len} bytes but dims {:?} of {} need {want}", t.dims, t.dtype))
            }
            _ => Ok(()),
        }
    };
    match &t.data {
        TensorData::Raw(b) => {
            if t.dtype == DType::String {
                return Err("string tensors cannot use raw_data".into());
            }
            expect(b.len() as u64, "raw_data")
        }
        TensorData::External { bytes, reference } => {
            expect(bytes.len() as u64, &format!("external data in '{}'", reference.location))
        }
        TensorData::Typed(td) => {
            let per = match (td, t.dtype.bits()) {
                (crate::TypedData::Int32(_), Some(4)) => 2,
                (crate::TypedData::Int32(_), Some(2)) => 4,
                _ => 1,
            };
            let needed = numel.div_ceil(per);
            if td.len() as u64 != needed && !(numel == 0 && td.is_empty()) {
                let alt = numel; // some writers store one element per entry for packed types
                if td.len() as u64 != alt {
                    return Err(format!("holds {} values but dims {:?} need {needed}", td.len(), t.dims));
                }
            }
            Ok(())
        }
        TensorData::Empty => {
            if numel == 0 {
                Ok(())
            } else {
                Err(format!("has no data but dims {:?} need {numel} elements", t.dims))
            }
        }
    }
}
