//! `simplify`: exact clean-up of data-movement chains that exporters leave behind.
//!
//! - **Reshape chains.** `Reshape`/`Squeeze`/`Unsqueeze`/`Flatten` reading another of them (its
//!   only reader) becomes one `Reshape` of the first input, to the shape inference gives the last
//!   one (symbolic dims copied with `0` where they sit at the same position, one left to `-1`);
//!   `identity` then removes it if that is the input's shape.
//! - **Reshapes sink through elementwise ops** when a reshape-like op reads the result:
//!   `Reshape(f(Reshape(x)))` with `f` unary elementwise (or a binary one with a scalar constant)
//!   is `Reshape(Reshape(f(x)))`, and the two Reshapes then merge.
//! - **Slice of a Slice** with constant starts/ends, step 1: one Slice.
//! - **Concat of every output of a Split**, in order and on the same axis: the Split's input.
//! - **Concat inside a Concat** on the same axis (its only reader): its inputs inline.
//! - **Cast chains.** `Cast(Cast(x, T1), T2)` where `T1` holds every value of `x`'s type exactly
//!   (`int32 -> int64`, `float16 -> float32`, `bool -> anything`, ...) is `Cast(x, T2)`.

use crate::fuse::{add_i64, single_use};
use crate::util::{const_ints, forward_output};
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::infer::Facts;
use optc_ir::{AttrList, AttrValue, DType, DimValue, Graph, Model, NodeId, Op, ValueId};

pub struct Simplify;

impl Pass for Simplify {
    fn name(&self) -> &str {
        "simplify"
    }
    fn description(&self) -> &str {
        "merge Reshape/Squeeze/Unsqueeze/Flatten chains, Slice of Slice, Concat of a whole Split, nested Concats and lossless Cast chains"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let rewrites = crate::util::for_each_graph(model, &mut |g, opset| run_graph(g, opset, cx));
        Ok(PassOutcome { rewrites })
    }
}

fn run_graph(g: &mut Graph, opset: i64, cx: &mut PassContext) -> usize {
    let Ok(order) = g.topo_order() else { return 0 };
    let facts = optc_ir::infer::infer(g, opset);
    let mut n = 0;
    for node in order {
        if !g.contains_node(node) {
            continue;
        }
        let op = g.node(node).op.clone();
        let done = match op {
            Op::Reshape | Op::Squeeze | Op::Unsqueeze | Op::Flatten => reshape_chain(g, node, opset, &facts, cx),
            Op::Slice => slice_of_slice(g, node, opset, &facts, cx),
            Op::Concat => concat_of_split(g, node, &facts, cx) || nested_concat(g, node, &facts, cx),
            Op::Cast => cast_chain(g, node, &facts, cx) || sink_reshape(g, node, cx),
            _ => sink_reshape(g, node, cx),
        };
        if done {
            n += 1;
        }
    }
    n
}

fn is_reshape_like(op: &Op) -> bool {
    matches!(op, Op::Reshape | Op::Squeeze | Op::Unsqueeze | Op::Flatten)
}

/// A constant Reshape target giving `want` from an input of shape `input`: known dims as they
/// are, a symbolic dim at the same position as in the input as `0`, one other as `-1`.
fn target_for(want: &[DimValue], input: &[DimValue]) -> Option<Vec<i64>> {
    let mut inferred = false;
    let mut out = Vec::with_capacity(want.len());
    for (i, d) in want.iter().enumerate() {
        out.push(match d {
            DimValue::Known(k) if *k > 0 => *k,
            DimValue::Known(_) => return None,
            DimValue::Sym(_) if input.get(i) == Some(d) => 0,
            DimValue::Sym(_) | DimValue::Unknown if !inferred => {
                inferred = true;
                -1
            }
            _ => return None,
        });
    }
    Some(out)
}

fn reshape_chain(g: &mut Graph, n: NodeId, opset: i64, facts: &Facts, cx: &mut PassContext) -> bool {
    if opset < 5 {
        return false;
    }
    let node = g.node(n);
    let (Some(mid), Some(out)) = (node.input(0), node.output(0)) else { return false };
    if node.op == Op::Reshape && node.attrs.get_int("allowzero").unwrap_or(0) != 0 {
        return false;
    }
    let Some((p, _)) = g.producer(mid) else { return false };
    if !is_reshape_like(&g.node(p).op) || single_use(g, mid).is_none() {
        return false;
    }
    if g.node(p).op == Op::Reshape && g.node(p).attrs.get_int("allowzero").unwrap_or(0) != 0 {
        return false;
    }
    let Some(x) = g.node(p).input(0) else { return false };
    if node.op == Op::Unsqueeze && g.node(p).op == Op::Unsqueeze {
        return unsqueeze_pair(g, n, p, opset, facts, cx);
    }
    let (Some(want), Some(have)) = (facts.shape(out), facts.shape(x)) else { return false };
    let want: Vec<DimValue> = want.iter().map(|d| d.value.clone()).collect();
    let have: Vec<DimValue> = have.iter().map(|d| d.value.clone()).collect();
    // The outer Reshape's own constant target, where each of its 0s (copy) reads the same dim
    // from `x` as from the inner op's output; else a target built from the inferred shape (a -1
    // must be computable: with an unknown dim elsewhere it would not be).
    let own = (node.op == Op::Reshape).then(|| node.input(1).and_then(|t| const_ints(g, t))).flatten().filter(|t| {
        let mid_shape = facts.shape(mid);
        t.iter().enumerate().all(|(i, &d)| {
            d != 0
                || mid_shape
                    .and_then(|m| m.get(i))
                    .is_some_and(|m| m.value != DimValue::Unknown && have.get(i) == Some(&m.value))
        })
    });
    let Some(target) = own.or_else(|| target_for(&want, &have)) else {
        let name = node.display_name();
        cx.note(|| format!("{} '{name}' stays after {}: its shape is not known well enough", node.op, g.node(p).op));
        return false;
    };
    if !cx.rewrite() {
        return false;
    }
    let (op, pop, name) = (node.op.clone(), g.node(p).op.clone(), node.display_name());
    let Some(t) = add_i64(g, &format!("{name}_shape"), &target) else { return false };
    let nm = g.node_mut(n);
    nm.op = Op::Reshape;
    nm.attrs.clear();
    g.set_inputs(n, vec![Some(x), Some(t)]);
    crate::fuse::drop_dead_from(g, mid);
    cx.note(|| format!("{pop} then {op} '{name}': one Reshape to {target:?}"));
    true
}

/// Elementwise ops that commute with a reshape of their (only non-scalar) input.
fn unary_like(g: &Graph, n: NodeId) -> Option<usize> {
    let node = g.node(n);
    let unary = matches!(
        node.op,
        Op::Relu
            | Op::Sigmoid
            | Op::Tanh
            | Op::Exp
            | Op::Log
            | Op::Neg
            | Op::Abs
            | Op::Sqrt
            | Op::Reciprocal
            | Op::Erf
            | Op::Softplus
            | Op::LeakyRelu
            | Op::Elu
            | Op::Selu
            | Op::HardSigmoid
            | Op::HardSwish
            | Op::Gelu
            | Op::Sin
            | Op::Cos
            | Op::Floor
            | Op::Ceil
            | Op::Round
            | Op::Sign
            | Op::Not
            | Op::Cast
    );
    if unary && node.inputs().len() == 1 {
        return Some(0);
    }
    let scalar = |v: Option<ValueId>| {
        v.and_then(|v| crate::util::const_tensor(g, v)).is_some_and(|t| t.numel() == Some(1) && t.dims.is_empty())
    };
    match node.op {
        Op::Clip if node.inputs().iter().skip(1).all(|&i| i.is_none() || scalar(i)) => Some(0),
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow | Op::Max | Op::Min if node.inputs().len() == 2 => {
            if scalar(node.input(1)) {
                Some(0)
            } else if scalar(node.input(0)) && !matches!(node.op, Op::Pow) {
                Some(1)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// `R2(f(R1(x)))` -> `R2(R1(f(x)))` for reshape-like `R1`, `R2` and elementwise `f` (or a chain
/// of them between the two, one step per call); the Reshape pair then merges in `reshape_chain`.
fn sink_reshape(g: &mut Graph, f: NodeId, cx: &mut PassContext) -> bool {
    let Some(slot) = unary_like(g, f) else { return false };
    let Some(o) = g.node(f).output(0) else { return false };
    if g.node(f).outputs().len() != 1 {
        return false;
    }
    // Downstream, through single-reader elementwise ops, a reshape-like op must come.
    let mut v = o;
    let mut reaches = false;
    for _ in 0..8 {
        let Some((c, _)) = single_use(g, v) else { break };
        if is_reshape_like(&g.node(c).op) {
            reaches = true;
            break;
        }
        match (unary_like(g, c), g.node(c).output(0)) {
            (Some(_), Some(next)) => v = next,
            _ => break,
        }
    }
    if !reaches {
        return false;
    }
    let Some(m) = g.node(f).input(slot) else { return false };
    let Some((r1, _)) = g.producer(m) else { return false };
    if !is_reshape_like(&g.node(r1).op) || single_use(g, m).is_none() || g.node(r1).outputs().len() != 1 {
        return false;
    }
    let Some(x) = g.node(r1).input(0) else { return false };
    if !cx.rewrite() {
        return false;
    }
    let (fnode, rnode) = (g.node(f).clone(), g.node(r1).clone());
    let fname = fnode.display_name();
    let mut fins = fnode.inputs().to_vec();
    fins[slot] = Some(x);
    let Some(a) = crate::fuse::add_op(g, fnode.op.clone(), fins, fnode.attrs.clone(), &fname, f) else { return false };
    let mut rins = rnode.inputs().to_vec();
    rins[0] = Some(a);
    let rname = rnode.display_name();
    let Some(b) = crate::fuse::add_op(g, rnode.op.clone(), rins, rnode.attrs.clone(), &rname, f) else { return false };
    g.replace_uses(o, b);
    crate::fuse::drop_dead_from(g, o);
    cx.note(|| format!("{} '{fname}' moved before {} '{rname}' (a reshape follows)", fnode.op, rnode.op));
    true
}

/// The axes of an Unsqueeze (input from opset 13, attribute before).
fn unsqueeze_axes(g: &Graph, n: NodeId, opset: i64) -> Option<Vec<i64>> {
    let node = g.node(n);
    if opset >= 13 { const_ints(g, node.input(1)?) } else { node.attrs.get_ints("axes").map(|a| a.to_vec()) }
}

/// `Unsqueeze(Unsqueeze(x, a1), a2)` -> `Unsqueeze(x, a)`: the inner axes land on the output
/// positions that the outer Unsqueeze does not insert, in order.
fn unsqueeze_pair(g: &mut Graph, n: NodeId, p: NodeId, opset: i64, facts: &Facts, cx: &mut PassContext) -> bool {
    let Some(x) = g.node(p).input(0) else { return false };
    let Some(rank) = facts.shape(x).map(|s| s.len()) else { return false };
    let (Some(a1), Some(a2)) = (unsqueeze_axes(g, p, opset), unsqueeze_axes(g, n, opset)) else { return false };
    let (r1, r2) = (rank + a1.len(), rank + a1.len() + a2.len());
    let norm = |a: &[i64], r: usize| -> Option<Vec<usize>> {
        a.iter().map(|&v| usize::try_from(if v < 0 { v + r as i64 } else { v }).ok().filter(|&v| v < r)).collect()
    };
    let (Some(a1), Some(a2)) = (norm(&a1, r1), norm(&a2, r2)) else { return false };
    let rest: Vec<usize> = (0..r2).filter(|i| !a2.contains(i)).collect();
    let mut axes: Vec<i64> = a2.iter().map(|&v| v as i64).collect();
    for &i in &a1 {
        let Some(&pos) = rest.get(i) else { return false };
        axes.push(pos as i64);
    }
    axes.sort_unstable();
    if !cx.rewrite() {
        return false;
    }
    let name = g.node(n).display_name();
    let Some(mid) = g.node(n).input(0) else { return false };
    if opset >= 13 {
        let Some(t) = add_i64(g, &format!("{name}_axes"), &axes) else { return false };
        g.set_inputs(n, vec![Some(x), Some(t)]);
    } else {
        let attrs = &mut g.node_mut(n).attrs;
        attrs.retain(|a| a.name != "axes");
        attrs.push(optc_ir::Attribute::ints("axes", axes.clone()));
        g.set_input(n, 0, Some(x));
    }
    crate::fuse::drop_dead_from(g, mid);
    cx.note(|| format!("Unsqueeze then Unsqueeze '{name}': one Unsqueeze on axes {axes:?}"));
    true
}

/// Constant starts, ends, axes (normalised against `rank`) of a step-1 Slice.
fn slice_params(g: &Graph, n: NodeId, rank: usize) -> Option<Vec<(usize, i64, i64)>> {
    let node = g.node(n);
    let starts = const_ints(g, node.input(1)?)?;
    let ends = const_ints(g, node.input(2)?)?;
    let axes: Vec<i64> = match node.input(3) {
        Some(a) => const_ints(g, a)?,
        None => (0..starts.len() as i64).collect(),
    };
    if let Some(s) = node.input(4)
        && const_ints(g, s)?.iter().any(|&x| x != 1)
    {
        return None;
    }
    if starts.len() != ends.len() || starts.len() != axes.len() {
        return None;
    }
    let mut out = Vec::new();
    for ((&s, &e), &a) in starts.iter().zip(&ends).zip(&axes) {
        let a = if a < 0 { a + rank as i64 } else { a };
        if a < 0 || a as usize >= rank || s < 0 || e < 0 {
            return None;
        }
        out.push((a as usize, s, e));
    }
    Some(out)
}

fn slice_of_slice(g: &mut Graph, n: NodeId, opset: i64, facts: &Facts, cx: &mut PassContext) -> bool {
    if opset < 10 {
        return false;
    }
    let node = g.node(n);
    let Some(mid) = node.input(0) else { return false };
    let Some((p, _)) = g.producer(mid) else { return false };
    if g.node(p).op != Op::Slice || single_use(g, mid).is_none() {
        return false;
    }
    let Some(x) = g.node(p).input(0) else { return false };
    let Some(rank) = facts.shape(x).map(|s| s.len()) else { return false };
    let (Some(outer), Some(inner)) = (slice_params(g, n, rank), slice_params(g, p, rank)) else { return false };
    let mut merged: Vec<(usize, i64, i64)> = inner.clone();
    for &(a, s2, e2) in &outer {
        match merged.iter_mut().find(|m| m.0 == a) {
            Some(m) => {
                let (s1, e1) = (m.1, m.2);
                *m = (a, s1.saturating_add(s2), e1.min(s1.saturating_add(e2)));
            }
            None => merged.push((a, s2, e2)),
        }
    }
    if merged.iter().map(|m| m.0).collect::<std::collections::HashSet<_>>().len() != merged.len() || !cx.rewrite() {
        return false;
    }
    let name = node.display_name();
    let starts: Vec<i64> = merged.iter().map(|m| m.1).collect();
    let ends: Vec<i64> = merged.iter().map(|m| m.2).collect();
    let axes: Vec<i64> = merged.iter().map(|m| m.0 as i64).collect();
    let (Some(s), Some(e), Some(a)) = (
        add_i64(g, &format!("{name}_starts"), &starts),
        add_i64(g, &format!("{name}_ends"), &ends),
        add_i64(g, &format!("{name}_axes"), &axes),
    ) else {
        return false;
    };
    g.set_inputs(n, vec![Some(x), Some(s), Some(e), Some(a)]);
    crate::fuse::drop_dead_from(g, mid);
    cx.note(|| format!("Slice '{name}' of a Slice: one Slice"));
    true
}

fn norm_axis(axis: i64, rank: Option<usize>) -> Option<i64> {
    if axis >= 0 {
        return Some(axis);
    }
    rank.map(|r| axis + r as i64).filter(|a| *a >= 0)
}

fn concat_of_split(g: &mut Graph, n: NodeId, facts: &Facts, cx: &mut PassContext) -> bool {
    let node = g.node(n);
    let ins: Vec<Option<ValueId>> = node.inputs().to_vec();
    let Some(Some(first)) = ins.first().copied() else { return false };
    let Some((sp, _)) = g.producer(first) else { return false };
    let split = g.node(sp);
    if split.op != Op::Split || split.outputs().len() != ins.len() || ins.len() < 2 {
        return false;
    }
    if split.outputs().iter().zip(&ins).any(|(o, i)| o != i || o.is_none_or(|o| single_use(g, o).is_none())) {
        return false;
    }
    let Some(x) = split.input(0) else { return false };
    let rank = facts.shape(x).map(|s| s.len());
    let sa = norm_axis(split.attrs.get_int("axis").unwrap_or(0), rank);
    let ca = node.attrs.get_int("axis").and_then(|a| norm_axis(a, rank));
    if sa.is_none() || sa != ca || !cx.rewrite() {
        return false;
    }
    let name = node.display_name();
    if !forward_output(g, n, x) {
        return false;
    }
    g.remove_node(sp);
    cx.note(|| format!("Concat '{name}' of every output of a Split: its input"));
    true
}

fn nested_concat(g: &mut Graph, n: NodeId, facts: &Facts, cx: &mut PassContext) -> bool {
    let node = g.node(n);
    let Some(out) = node.output(0) else { return false };
    let rank = facts.shape(out).map(|s| s.len());
    let Some(axis) = node.attrs.get_int("axis").and_then(|a| norm_axis(a, rank)) else { return false };
    let mut ins: Vec<Option<ValueId>> = Vec::new();
    let mut inner = Vec::new();
    for &i in node.inputs() {
        let Some(v) = i else { return false };
        let child = g.producer(v).filter(|(p, _)| {
            let c = g.node(*p);
            c.op == Op::Concat
                && single_use(g, v).is_some()
                && c.attrs.get_int("axis").and_then(|a| norm_axis(a, rank)) == Some(axis)
        });
        match child {
            Some((p, _)) => {
                ins.extend(g.node(p).inputs().iter().copied());
                inner.push(v);
            }
            None => ins.push(Some(v)),
        }
    }
    if inner.is_empty() || !cx.rewrite() {
        return false;
    }
    let name = node.display_name();
    g.set_inputs(n, ins);
    for v in inner {
        crate::fuse::drop_dead_from(g, v);
    }
    cx.note(|| format!("Concat '{name}': nested Concats on the same axis inlined"));
    true
}

/// Whether every value of type `from` is exactly representable in `to`.
fn lossless(from: DType, to: DType) -> bool {
    use DType::*;
    if from == to || from == Bool {
        return to != String;
    }
    matches!(
        (from, to),
        (U8, U16 | I16 | U32 | I32 | U64 | I64 | F16 | F32 | F64)
            | (I8, I16 | I32 | I64 | F16 | F32 | F64)
            | (U16, U32 | I32 | U64 | I64 | F32 | F64)
            | (I16, I32 | I64 | F32 | F64)
            | (U32, U64 | I64 | F64)
            | (I32, I64 | F64)
            | (F16 | BF16, F32 | F64)
            | (F32, F64)
    )
}

fn cast_chain(g: &mut Graph, n: NodeId, facts: &Facts, cx: &mut PassContext) -> bool {
    let node = g.node(n);
    let Some(mid) = node.input(0) else { return false };
    let Some((p, _)) = g.producer(mid) else { return false };
    let pn = g.node(p);
    if pn.op != Op::Cast || pn.attrs.iter().any(|a| a.name == "saturate" && !matches!(a.value, AttrValue::Int(1))) {
        return false;
    }
    let Some(x) = pn.input(0) else { return false };
    let (Some(from), Some(via)) = (facts.elem(x), facts.elem(mid)) else { return false };
    if !lossless(from, via) || !cx.rewrite() {
        return false;
    }
    let name = node.display_name();
    g.set_input(n, 0, Some(x));
    if g.is_unused(mid) {
        crate::fuse::drop_dead_from(g, mid);
    }
    cx.note(|| format!("Cast '{name}': the Cast before it ({from} -> {via}) loses nothing; it reads {from} directly"));
    true
}

#[cfg(test)]
mod tests {
    use super::lossless;
    use optc_ir::DType;

    #[test]
    fn lossless_widening() {
        assert!(lossless(DType::I32, DType::I64));
        assert!(lossless(DType::F16, DType::F32));
        assert!(lossless(DType::Bool, DType::F32));
        assert!(!lossless(DType::I64, DType::I32));
        assert!(!lossless(DType::F32, DType::F16));
        assert!(!lossless(DType::I32, DType::F32));
        assert!(!lossless(DType::U8, DType::I8));
    }
}
