//! Fusion and layout passes: `transpose` (sinking and cancelling Transposes), `fuse-bn`
//! (BatchNormalization and per-channel affine chains folded into Conv/Gemm/MatMul weights) and
//! `fuse-act` (activation patterns into single ops). Helpers shared by them live here.

pub mod act;
pub mod affine;
pub mod attention;
pub mod bias;
pub mod gather;
pub mod norm;
pub mod pad;
pub mod qkv;
pub mod transpose;

use crate::PassContext;
use crate::util::{const_tensor, forward_output};
use optc_ir::{Attribute, DType, Graph, Model, NodeId, NodeSpec, Op, OpsetImport, Tensor, Use, ValueId};

/// The one node input reading `v`, when `v` has exactly one reader and is not a graph output.
pub(crate) fn single_use(g: &Graph, v: ValueId) -> Option<(NodeId, usize)> {
    if g.is_graph_output(v) {
        return None;
    }
    let uses = g.uses(v);
    match uses.as_slice() {
        [(n, Use::Input(slot))] => Some((*n, *slot)),
        _ => None,
    }
}

/// A scalar float constant's value (any shape with one element).
pub(crate) fn scalar(g: &Graph, v: ValueId) -> Option<f64> {
    let t = const_tensor(g, v)?;
    if t.numel()? != 1 {
        return None;
    }
    match t.dtype {
        optc_ir::DType::F32 => t.to_f32_vec()?.first().map(|&x| x as f64),
        _ => None,
    }
}

pub(crate) fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

/// The node producing `v` if it is `op`.
pub(crate) fn producer_op(g: &Graph, v: ValueId, op: Op) -> Option<NodeId> {
    let (p, _) = g.producer(v)?;
    (g.node(p).op == op).then_some(p)
}

/// For a binary node with one scalar-constant operand: (the other operand, the constant, its slot).
pub(crate) fn with_scalar(g: &Graph, n: NodeId) -> Option<(ValueId, f64, usize)> {
    let node = g.node(n);
    if node.inputs().len() != 2 {
        return None;
    }
    let (a, b) = (node.input(0)?, node.input(1)?);
    if let Some(k) = scalar(g, b) {
        return Some((a, k, 1));
    }
    scalar(g, a).map(|k| (b, k, 0))
}

/// Replaces the chain ending at `last` by one node `op(inputs)` writing `last`'s (first)
/// output, then removes what the chain left dead. Returns the new node, or `None` (nothing
/// changed) when `last` writes a graph output that cannot be renamed.
pub(crate) fn replace_chain(
    g: &mut Graph,
    last: NodeId,
    op: Op,
    inputs: Vec<Option<ValueId>>,
    attrs: Vec<Attribute>,
    cx: &mut PassContext,
) -> Option<NodeId> {
    replace_chain_n(g, last, op, inputs, attrs, &[true], cx).map(|(id, _)| id)
}

/// [`replace_chain`] for an op with several outputs: `out_slots[i]` says whether output `i`
/// gets a value (the first takes over `last`'s output; the others are fresh values, returned
/// by slot, that the caller connects).
pub(crate) fn replace_chain_n(
    g: &mut Graph,
    last: NodeId,
    op: Op,
    inputs: Vec<Option<ValueId>>,
    attrs: Vec<Attribute>,
    out_slots: &[bool],
    cx: &mut PassContext,
) -> Option<(NodeId, Vec<Option<ValueId>>)> {
    let out = g.node(last).output(0)?;
    let name = g.node(last).display_name();
    let mut outs = Vec::with_capacity(out_slots.len().max(1));
    for (i, &want) in out_slots.iter().enumerate() {
        if i > 0 && !want {
            outs.push(None);
            continue;
        }
        let base =
            if i == 0 { format!("{}_fused", g.value(out).name) } else { format!("{}_fused_{i}", g.value(out).name) };
        let fresh = g.fresh_name(&base);
        outs.push(Some(g.add_value(fresh, None).ok()?));
    }
    let cleanup = |g: &mut Graph, outs: &[Option<ValueId>]| {
        for v in outs.iter().flatten() {
            if g.contains_value(*v) {
                g.remove_value(*v);
            }
        }
    };
    let mut spec = NodeSpec::new(op.clone(), inputs, outs.clone()).attrs(attrs);
    if let Some(nm) = &g.node(last).name {
        spec = spec.named(format!("{nm}_{}", op.op_type()));
    }
    let Ok(id) = g.add_node(spec) else {
        cleanup(g, &outs);
        return None;
    };
    g.place_like(id, last);
    let old_inputs: Vec<ValueId> = g.node(last).inputs().iter().flatten().copied().collect();
    if !forward_output(g, last, outs[0]?) {
        g.remove_node(id);
        cleanup(g, &outs);
        cx.note(|| format!("{op} ending at '{name}' not fused: it writes a graph output that cannot be renamed"));
        return None;
    }
    for v in old_inputs {
        drop_dead_from(g, v);
    }
    cx.note(|| format!("fused {op} ending at '{name}'"));
    Some((id, outs))
}

/// Whether a quantiser reads `v`. Fusions that change float rounding stay away from such
/// values: a one-ulp change can move a value across a rounding boundary of the quantiser and
/// change the quantised result by a whole step.
pub(crate) fn feeds_quantizer(g: &Graph, v: ValueId) -> bool {
    g.uses(v).iter().any(|(n, _)| {
        matches!(&g.node(*n).op, Op::QuantizeLinear | Op::DynamicQuantizeLinear)
            || matches!(&g.node(*n).op, Op::Opaque { op_type, .. } if op_type.contains("Quantize"))
    })
}

/// Adds one `op` node named `name` with one fresh output (`{name}_output_0`), placed where
/// `like` is in the node order; returns the output.
pub(crate) fn add_op(
    g: &mut Graph,
    op: Op,
    inputs: Vec<Option<ValueId>>,
    attrs: Vec<Attribute>,
    name: &str,
    like: NodeId,
) -> Option<ValueId> {
    let vname = g.fresh_name(&format!("{name}_output_0"));
    let out = g.add_value(vname, None).ok()?;
    let id = g.add_node(NodeSpec::new(op, inputs, vec![Some(out)]).attrs(attrs).named(name.to_string())).ok()?;
    g.place_like(id, like);
    Some(out)
}

/// Adds an import of `domain` (version 1) when the model has none.
pub(crate) fn ensure_domain(model: &mut Model, domain: &str) {
    if model.opset(domain).is_none() {
        model.opset_imports.push(OpsetImport::new(domain, 1));
    }
}

/// Removes the producer of `v` when nothing reads `v` or the producer's other outputs, then
/// does the same for that producer's inputs: clears a chain a fusion left dead. Initializers
/// are left to `dce`.
pub(crate) fn drop_dead_from(g: &mut Graph, v: ValueId) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        if !g.contains_value(v) || !g.is_unused(v) {
            continue;
        }
        let Some((p, _)) = g.producer(v) else { continue };
        let node = g.node(p);
        if node.subgraphs().next().is_some() || node.outputs().iter().flatten().any(|&o| !g.is_unused(o)) {
            continue;
        }
        stack.extend(node.inputs().iter().flatten().copied());
        g.remove_node(p);
    }
}

/// A float32 constant: its values and dims.
pub(crate) fn f32_const(g: &Graph, v: ValueId) -> Option<(Vec<f32>, Vec<i64>)> {
    let t = const_tensor(g, v)?;
    if t.dtype != DType::F32 {
        return None;
    }
    let data = t.to_f32_vec()?;
    (data.len() as u64 == t.numel()?).then_some((data, t.dims.clone()))
}

/// Adds a float32 initializer named after `base`.
pub(crate) fn add_f32(g: &mut Graph, base: &str, dims: Vec<i64>, data: &[f32]) -> Option<ValueId> {
    let name = g.fresh_name(base);
    let mut bytes: Vec<u8> = Vec::with_capacity(data.len() * 4);
    for x in data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    g.add_initializer(name.clone(), Tensor::from_raw(Some(name), DType::F32, dims, bytes.into())).ok()
}

/// Adds a 1-D int64 initializer named after `base` (shapes, axes, split sizes).
pub(crate) fn add_i64(g: &mut Graph, base: &str, vals: &[i64]) -> Option<ValueId> {
    let name = g.fresh_name(base);
    let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = Tensor::from_raw(Some(name.clone()), DType::I64, vec![vals.len() as i64], raw.into());
    g.add_initializer(name, t).ok()
}

/// Dims of `dims` right-aligned to `rank` (leading 1s), or `None` when longer than `rank`.
pub(crate) fn align(dims: &[i64], rank: usize) -> Option<Vec<i64>> {
    if dims.len() > rank {
        return None;
    }
    let mut out = vec![1; rank - dims.len()];
    out.extend_from_slice(dims);
    Some(out)
}

/// Permutes a constant (`data` with `dims`, already right-aligned) so that
/// `out.dims[i] = dims[perm[i]]` (the ONNX Transpose semantics). `None` on a bad
/// permutation, negative dims or a size mismatch.
pub(crate) fn permute(data: &[f32], dims: &[i64], perm: &[usize]) -> Option<(Vec<f32>, Vec<i64>)> {
    let dims: Vec<usize> = dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let (out, out_dims) = optc_ir::transpose_elems(data, &dims, perm)?;
    Some((out, out_dims.into_iter().map(|d| d as i64).collect()))
}

/// Values of a constant broadcast along one axis: `Some(per-index values)` of length `len`
/// when `dims` (right-aligned to `rank`) is 1 everywhere except possibly at `axis` (where it
/// is `len` or 1).
pub(crate) fn per_axis(data: &[f32], dims: &[i64], rank: usize, axis: usize, len: usize) -> Option<Vec<f32>> {
    let d = align(dims, rank)?;
    for (i, &x) in d.iter().enumerate() {
        if i != axis && x != 1 {
            return None;
        }
    }
    match d.get(axis).copied() {
        Some(1) | None => Some(vec![*data.first()?; len]),
        Some(x) if x as usize == len && data.len() == len => Some(data.to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_matches_transpose_semantics() {
        // dims [2, 3] -> perm [1, 0] -> [3, 2]
        let (d, dims) = permute(&[0., 1., 2., 3., 4., 5.], &[2, 3], &[1, 0]).unwrap();
        assert_eq!(dims, vec![3, 2]);
        assert_eq!(d, vec![0., 3., 1., 4., 2., 5.]);
        let (d, dims) = permute(&[1., 2., 3.], &[1, 1, 3], &[0, 2, 1]).unwrap();
        assert_eq!(dims, vec![1, 3, 1]);
        assert_eq!(d, vec![1., 2., 3.]);
    }

    #[test]
    fn per_axis_accepts_channel_vectors_and_scalars() {
        assert_eq!(per_axis(&[1., 2.], &[1, 2, 1, 1], 4, 1, 2), Some(vec![1., 2.]));
        assert_eq!(per_axis(&[1., 2.], &[2, 1, 1], 4, 1, 2), Some(vec![1., 2.]));
        assert_eq!(per_axis(&[5.], &[], 4, 1, 3), Some(vec![5., 5., 5.]));
        assert_eq!(per_axis(&[1., 2.], &[1, 1, 1, 2], 4, 1, 2), None);
        assert_eq!(per_axis(&[1., 2.], &[1, 1, 1, 1, 2], 4, 1, 2), None);
    }
}
