//! Small helpers shared by passes: constants, element types, walking subgraphs.

use optc_ir::{AttrList, DType, Graph, Model, NodeId, Op, Tensor, ValueId};

/// Runs `f` on every graph of the model, innermost subgraphs first, passing the default opset.
pub fn for_each_graph(model: &mut Model, f: &mut dyn FnMut(&mut Graph, i64) -> usize) -> usize {
    let opset = model.opset("").unwrap_or(1);
    walk(&mut model.graph, opset, f)
}

fn walk(g: &mut Graph, opset: i64, f: &mut dyn FnMut(&mut Graph, i64) -> usize) -> usize {
    let mut n = 0;
    let nodes: Vec<NodeId> = g.nodes().collect();
    for id in nodes {
        for sg in g.node_mut(id).subgraphs_mut() {
            n += walk(sg, opset, f);
        }
    }
    n + f(g, opset)
}

/// The constant tensor behind `v`: a non-overridable initializer or a `Constant` node's value.
pub fn const_tensor(g: &Graph, v: ValueId) -> Option<Tensor> {
    if let Some(t) = g.const_tensor(v) {
        return Some(t.clone());
    }
    let (p, _) = g.producer(v)?;
    let node = g.node(p);
    if node.op != Op::Constant {
        return None;
    }
    if let Some(t) = node.attrs.get_tensor("value") {
        return Some(t.clone());
    }
    let raw = |dtype: DType, dims: Vec<i64>, bytes: Vec<u8>| Tensor::from_raw(None, dtype, dims, bytes.into());
    if let Some(i) = node.attrs.get_int("value_int") {
        return Some(raw(DType::I64, vec![], i.to_le_bytes().to_vec()));
    }
    if let Some(v) = node.attrs.get_ints("value_ints") {
        return Some(raw(DType::I64, vec![v.len() as i64], v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    if let Some(f) = node.attrs.get_float("value_float") {
        return Some(raw(DType::F32, vec![], f.to_le_bytes().to_vec()));
    }
    if let Some(v) = node.attrs.get_floats("value_floats") {
        return Some(raw(DType::F32, vec![v.len() as i64], v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    None
}

/// Integer constant values of `v` (i64/i32/u8/i8 tensors), widened.
pub fn const_ints(g: &Graph, v: ValueId) -> Option<Vec<i64>> {
    const_tensor(g, v)?.to_i64_vec()
}

/// The element type of `v` when known.
pub fn elem_type(g: &Graph, v: ValueId) -> Option<DType> {
    g.value(v).ty.as_ref().and_then(|t| t.elem())
}

/// Whether [`forward_output`] would succeed for node `n` and replacement `src` (it fails only
/// when `n` writes a graph output and `src` cannot take over its name). Passes check this
/// before spending rewrite budget.
pub fn can_forward_output(g: &Graph, n: NodeId, src: ValueId) -> bool {
    let Some(out) = g.node(n).output(0) else { return false };
    if !g.is_graph_output(out) {
        return true;
    }
    g.producer(src).is_some()
        && !g.is_graph_output(src)
        && !g.is_graph_input(src)
        && g.value(src).init.is_none()
        && !g.value(src).outer
}

/// Removes node `n` whose only (used) output becomes `src`: uses are redirected to `src`. When
/// the output is a graph output, `src` takes over its name if nothing else depends on `src`'s
/// name. Returns false (and changes nothing) when the node must stay to name a graph output.
pub fn forward_output(g: &mut Graph, n: NodeId, src: ValueId) -> bool {
    let out = match g.node(n).output(0) {
        Some(o) => o,
        None => return false,
    };
    if !can_forward_output(g, n, src) {
        return false;
    }
    if g.is_graph_output(out) {
        g.replace_uses(out, src);
        let name = g.value(out).name.clone();
        let ty = g.value(out).ty.clone();
        for d in g.outputs.iter_mut().chain(g.value_info.iter_mut()) {
            if d.value == out {
                d.value = src;
            }
        }
        // Keep one value_info entry per value.
        let mut seen = false;
        g.value_info.retain(|d| {
            if d.value != src {
                return true;
            }
            let keep = !seen;
            seen = true;
            keep
        });
        g.remove_node(n);
        if g.contains_value(out) {
            g.remove_value(out);
        }
        if g.rename_value(src, name).is_err() {
            return false;
        }
        if ty.is_some() {
            g.value_mut(src).ty = ty;
        }
        return true;
    }
    g.replace_uses(out, src);
    g.remove_node(n);
    true
}
