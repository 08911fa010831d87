//! `fold-gather`: simplifies `Gather` from a constant table (embeddings, lookup tables).
//!
//! - **Uniform indices.** When every index is the same constant `c` (a constant, or an
//!   `Expand`/`Slice`/`Reshape`/... of one, as in the `token_type_ids` buffer BERT exports use
//!   when the caller gives none), every gathered row is `table[c]`. A broadcasting
//!   `Add`/`Sub`/`Mul`/`Div` reader whose other operand already has the gathered shape reads
//!   the row constant instead.
//! - **A constant op after the Gather.** `Gather(T, i) + K`, with `K` constant over the
//!   gathered rows, is `Gather(T + K, i)`: the table absorbs the op (also `-`, `*`, `/`).
//! - **A prefix of `arange`.** `Gather(T, Slice(arange(N), s, e))` with `N` rows in `T` is
//!   `Slice(T, s, e)` (position embeddings).
//!
//! Every rewrite computes the same float operations on the same values: the result is
//! bit-identical.

use super::{align, drop_dead_from, f32_const, single_use};
use crate::util::{can_forward_output, const_ints, const_tensor, forward_output};
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::infer::Facts;
use optc_ir::{AttrList, DType, DimValue, Graph, Model, NodeId, Op, Tensor, Use, ValueId};

pub struct FoldGather;

impl Pass for FoldGather {
    fn name(&self) -> &str {
        "fold-gather"
    }
    fn description(&self) -> &str {
        "Gather from a constant table: equal indices -> the row; a constant Add/Sub/Mul/Div after it -> into the table; arange indices -> Slice"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let rewrites = crate::util::for_each_graph(model, &mut |g, opset| run_graph(g, opset, cx));
        Ok(PassOutcome { rewrites })
    }
}

/// Index constants larger than this are not scanned for a uniform value or an arange.
const MAX_INDEX_CONST: u64 = 1 << 20;

fn run_graph(g: &mut Graph, opset: i64, cx: &mut PassContext) -> usize {
    let Ok(order) = g.topo_order() else { return 0 };
    let facts = optc_ir::infer::infer(g, opset);
    let mut n = 0;
    for node in order {
        if !g.contains_node(node) || g.node(node).op != Op::Gather {
            continue;
        }
        if g.node(node).attrs.get_int("axis").unwrap_or(0) != 0 {
            continue;
        }
        let Some(table) = g.node(node).input(0) else { continue };
        let Some(t) = const_tensor(g, table) else { continue };
        if uniform_row(g, node, &t, &facts, cx)
            || arange_slice(g, node, &t, opset, cx)
            || fold_consumer(g, node, &t, &facts, cx)
        {
            n += 1;
        }
    }
    n
}

/// The value every element of `v` has, when `v` is an integer constant with one value
/// throughout, or a shape-only op of one.
fn uniform_int(g: &Graph, v: ValueId, depth: usize) -> Option<i64> {
    if let Some(t) = const_tensor(g, v) {
        if t.numel()? == 0 || t.numel()? > MAX_INDEX_CONST {
            return None;
        }
        let vals = t.to_i64_vec()?;
        let first = *vals.first()?;
        return vals.iter().all(|&x| x == first).then_some(first);
    }
    if depth == 0 {
        return None;
    }
    let (p, _) = g.producer(v)?;
    let node = g.node(p);
    match node.op {
        Op::Expand
        | Op::Slice
        | Op::Reshape
        | Op::Unsqueeze
        | Op::Squeeze
        | Op::Identity
        | Op::Transpose
        | Op::Tile
        | Op::Flatten => uniform_int(g, node.input(0)?, depth - 1),
        Op::ConstantOfShape => match node.attrs.get_tensor("value") {
            Some(t) => {
                let vals = t.to_i64_vec()?;
                (vals.len() == 1 && t.dtype.is_int()).then(|| vals[0])
            }
            None => None,
        },
        _ => None,
    }
}

/// Rule 1: indices all `c` -> the readers use the row `table[c]`.
fn uniform_row(g: &mut Graph, n: NodeId, t: &Tensor, facts: &Facts, cx: &mut PassContext) -> bool {
    let node = g.node(n);
    let (Some(table), Some(idx), Some(out)) = (node.input(0), node.input(1), node.output(0)) else { return false };
    let Some(c) = uniform_int(g, idx, 8) else { return false };
    let name = node.display_name();
    if t.dtype != DType::F32 || t.dims.is_empty() || g.is_graph_output(out) {
        return false;
    }
    let rows = t.dims[0];
    let c = if c < 0 { c + rows } else { c };
    if c < 0 || c >= rows {
        return false;
    }
    let Some(out_shape) = facts.shape(out) else { return false };
    let uses = g.uses(out);
    // Every reader broadcasts the Gather's output against an operand that already has its shape.
    for (r, u) in &uses {
        let rn = g.node(*r);
        let Use::Input(slot) = u else { return false };
        if !matches!(rn.op, Op::Add | Op::Sub | Op::Mul | Op::Div) || rn.inputs().len() != 2 {
            cx.note(|| format!("Gather '{name}': indices are all {c}, but {} '{}' reads it", rn.op, rn.display_name()));
            return false;
        }
        let Some(other) = rn.input(1 - slot) else { return false };
        let covers =
            facts.shape(other).is_some_and(|o| {
                o.len() >= out_shape.len()
                    && out_shape.iter().rev().zip(o.iter().rev()).all(|(a, b)| {
                        a.value == DimValue::Known(1) || (a.value != DimValue::Unknown && a.value == b.value)
                    })
            });
        if !covers {
            cx.note(|| {
                format!(
                    "Gather '{name}': indices are all {c}, but the other operand of {} '{}' may not have the gathered shape",
                    rn.op,
                    rn.display_name()
                )
            });
            return false;
        }
    }
    if uses.is_empty() || !cx.rewrite() {
        return false;
    }
    let Some((data, dims)) = f32_const(g, table) else { return false };
    let row_len = dims[1..].iter().product::<i64>() as usize;
    let row = &data[c as usize * row_len..(c as usize + 1) * row_len];
    let base = format!("{}_row{c}", g.value(table).name);
    let Some(rv) = super::add_f32(g, &base, dims[1..].to_vec(), row) else { return false };
    for (r, u) in uses {
        if let Use::Input(slot) = u {
            g.set_input(r, slot, Some(rv));
        }
    }
    drop_dead_from(g, out);
    cx.note(|| format!("Gather '{name}': indices are all {c}; its readers use row {c} of the table"));
    true
}

/// Rule 3: `Gather(T, Slice(arange(N), s, e, axis))` with `N` rows in `T` -> `Slice(T', s, e, axis)`
/// where `T'` is `T` with the index constant's leading dims.
fn arange_slice(g: &mut Graph, n: NodeId, t: &Tensor, opset: i64, cx: &mut PassContext) -> bool {
    if opset < 10 {
        return false;
    }
    let node = g.node(n);
    let (Some(table), Some(idx), Some(out)) = (node.input(0), node.input(1), node.output(0)) else { return false };
    let Some((s, _)) = g.producer(idx) else { return false };
    let sl = g.node(s);
    if sl.op != Op::Slice {
        return false;
    }
    let Some(a) = sl.input(0) else { return false };
    let Some(at) = const_tensor(g, a) else { return false };
    let rank = at.dims.len();
    if rank == 0 || at.numel().is_none_or(|k| k > MAX_INDEX_CONST) || at.dims[..rank - 1].iter().any(|&d| d != 1) {
        return false;
    }
    let len = at.dims[rank - 1];
    if t.dims.first() != Some(&len) {
        return false;
    }
    let Some(vals) = at.to_i64_vec() else { return false };
    if vals.iter().enumerate().any(|(i, &v)| v != i as i64) {
        return false;
    }
    // One axis, the last, step 1.
    let axes = sl.input(3).and_then(|v| const_ints(g, v));
    if !matches!(axes.as_deref(), Some([x]) if *x == -1 || *x == rank as i64 - 1) {
        return false;
    }
    if let Some(st) = sl.input(4)
        && const_ints(g, st).as_deref() != Some(&[1])
    {
        return false;
    }
    if !can_forward_output(g, n, out) || g.is_graph_output(out) || !cx.rewrite() {
        return false;
    }
    let (gname, tname) = (node.display_name(), g.value(table).name.clone());
    let slice_inputs: Vec<Option<ValueId>> = sl.inputs().to_vec();
    let mut t2: Tensor = t.clone();
    t2.dims = at.dims[..rank - 1].iter().copied().chain(t.dims.iter().copied()).collect();
    let name2 = g.fresh_name(&format!("{tname}_{}d", t2.dims.len()));
    t2.name = Some(name2.clone());
    let Ok(tv) = g.add_initializer(name2, t2) else { return false };
    let mut inputs = slice_inputs;
    inputs[0] = Some(tv);
    let oname = g.fresh_name(&format!("{}_rows", g.value(out).name));
    let Some(ov) = super::add_op(g, Op::Slice, inputs, vec![], &oname, n) else { return false };
    g.replace_uses(out, ov);
    drop_dead_from(g, out);
    cx.note(|| format!("Gather '{gname}': indices are a prefix of arange({len}); now a Slice of '{tname}'"));
    true
}

/// Rule 2: `op(Gather(T, i), K)` with `K` constant over the gathered rows -> `Gather(op(T, K), i)`.
fn fold_consumer(g: &mut Graph, n: NodeId, t: &Tensor, facts: &Facts, cx: &mut PassContext) -> bool {
    let node = g.node(n);
    let (Some(table), Some(idx), Some(out)) = (node.input(0), node.input(1), node.output(0)) else { return false };
    let Some((c, slot)) = single_use(g, out) else { return false };
    let cn = g.node(c);
    if !matches!(cn.op, Op::Add | Op::Sub | Op::Mul | Op::Div) || cn.inputs().len() != 2 {
        return false;
    }
    let Some(kv) = cn.input(1 - slot) else { return false };
    let (gname, cop, cname) = (node.display_name(), cn.op.clone(), cn.display_name());
    // The table must be read by this Gather only: it is rewritten, not copied.
    if g.uses(table).len() != 1 || g.is_graph_output(table) || g.is_graph_input(table) {
        cx.note(|| format!("{cop} '{cname}' stays after Gather '{gname}': the table has other readers"));
        return false;
    }
    let Some(idx_rank) = facts.shape(idx).map(|s| s.len()) else { return false };
    let Some(kt) = const_tensor(g, kv) else { return false };
    if kt.dtype != DType::F32 || t.dtype != DType::F32 || t.dims.is_empty() {
        return false;
    }
    let row_dims = &t.dims[1..];
    let out_rank = idx_rank + row_dims.len();
    let Some(kd) = align(&kt.dims, out_rank) else {
        cx.note(|| format!("{cop} '{cname}' stays after Gather '{gname}': the constant has a higher rank"));
        return false;
    };
    let over_rows =
        kd[..idx_rank].iter().all(|&d| d == 1) && kd[idx_rank..].iter().zip(row_dims).all(|(&k, &r)| k == 1 || k == r);
    if !over_rows {
        cx.note(|| format!("{cop} '{cname}' stays after Gather '{gname}': the constant varies across the indices"));
        return false;
    }
    if !can_forward_output(g, c, out) || !cx.rewrite() {
        return false;
    }
    let Some((k, _)) = f32_const(g, kv) else { return false };
    let Some(src) = t.packed_bytes() else { return false };
    let kd = &kd[idx_rank..];
    // Strides of K (broadcast: stride 0 on its size-1 dims) over the row's dims.
    let mut kstride = vec![0usize; kd.len()];
    let mut acc = 1usize;
    for i in (0..kd.len()).rev() {
        if kd[i] != 1 {
            kstride[i] = acc;
        }
        acc *= kd[i] as usize;
    }
    let row_len: usize = row_dims.iter().product::<i64>() as usize;
    let rd: Vec<usize> = row_dims.iter().map(|&d| d as usize).collect();
    let krow: Vec<f32> = (0..row_len)
        .map(|mut e| {
            let mut off = 0;
            for i in (0..rd.len()).rev() {
                off += (e % rd[i]) * kstride[i];
                e /= rd[i];
            }
            k[off]
        })
        .collect();
    // The new table, written straight from the old one's bytes (tables are large).
    fn apply(src: &[u8], krow: &[f32], f: impl Fn(f32, f32) -> f32) -> Vec<u8> {
        let mut out = Vec::with_capacity(src.len());
        for row in src.chunks(krow.len().max(1) * 4) {
            for (c, &k) in row.chunks_exact(4).zip(krow) {
                out.extend_from_slice(&f(f32::from_le_bytes([c[0], c[1], c[2], c[3]]), k).to_le_bytes());
            }
        }
        out
    }
    let bytes = match (&cop, slot) {
        (Op::Add, _) => apply(&src, &krow, |x, k| x + k),
        (Op::Mul, _) => apply(&src, &krow, |x, k| x * k),
        (Op::Sub, 0) => apply(&src, &krow, |x, k| x - k),
        (Op::Sub, _) => apply(&src, &krow, |x, k| k - x),
        (Op::Div, 0) => apply(&src, &krow, |x, k| x / k),
        _ => apply(&src, &krow, |x, k| k / x),
    };
    if bytes.len() != src.len() {
        return false;
    }
    let name = g.fresh_name(&format!("{}_{}", g.value(table).name, cop.to_string().to_lowercase()));
    let dims = t.dims.clone();
    let Ok(tv) = g.add_initializer(name.clone(), Tensor::from_raw(Some(name), DType::F32, dims, bytes.into())) else {
        return false;
    };
    if !forward_output(g, c, out) {
        return false;
    }
    g.set_input(n, 0, Some(tv));
    cx.note(|| format!("folded {cop} '{cname}' into the table of Gather '{gname}'"));
    true
}

#[cfg(test)]
mod tests {
    use crate::quant::Rng;
    use crate::{PassContext, PassManager, PassRegistry};
    use optc_eval::{Evaluator, Value};
    use optc_ir::builder::GraphBuilder;
    use optc_ir::{Attribute, DType, Dim, Model, Op, Tensor};

    const V: i64 = 10;
    const P: i64 = 8;
    const H: i64 = 4;

    /// BERT embeddings without token types given: `Gather(W, ids) + Gather(T, Expand(Slice(zeros)))
    /// + Gather(Pe, Slice(arange))`, all shapes computed from `ids [batch, seq]`.
    fn embeddings() -> Model {
        let mut r = Rng(5);
        let mut b = GraphBuilder::new("g");
        let ids = b.input("ids", DType::I64, vec![Dim::sym("batch"), Dim::sym("seq")]).unwrap();
        let w = b.init_f32("w", &[V, H], &(0..V * H).map(|_| r.normal()).collect::<Vec<_>>()).unwrap();
        let t = b.init_f32("t", &[2, H], &(0..2 * H).map(|_| r.normal()).collect::<Vec<_>>()).unwrap();
        let pe = b.init_f32("pe", &[P, H], &(0..P * H).map(|_| r.normal()).collect::<Vec<_>>()).unwrap();
        let zeros = b.init_i64("zeros", &[1, P], &[0; P as usize]).unwrap();
        let arange = b.init_i64("arange", &[1, P], &(0..P).collect::<Vec<_>>()).unwrap();
        let zero = b.init_i64("zero", &[1], &[0]).unwrap();
        let one = b.init_i64("one", &[1], &[1]).unwrap();
        let shape = b.op(Op::Shape, &[ids], vec![]).unwrap();
        let seq = b.op(Op::Shape, &[ids], vec![Attribute::int("start", 1), Attribute::int("end", 2)]).unwrap();
        let tt = b.op(Op::Slice, &[zeros, zero, seq, one], vec![]).unwrap();
        let tt = b.op(Op::Expand, &[tt, shape], vec![]).unwrap();
        let pos = b.op(Op::Slice, &[arange, zero, seq, one], vec![]).unwrap();
        let we = b.op(Op::Gather, &[w, ids], vec![]).unwrap();
        let te = b.op(Op::Gather, &[t, tt], vec![]).unwrap();
        let s = b.op(Op::Add, &[we, te], vec![]).unwrap();
        let p = b.op(Op::Gather, &[pe, pos], vec![]).unwrap();
        let y = b.op(Op::Add, &[s, p], vec![]).unwrap();
        b.output(y, "y", None).unwrap();
        Model::new(b.finish(), 17)
    }

    fn eval(model: &Model, batch: i64, seq: i64) -> Vec<u32> {
        let ids: Vec<i64> = (0..batch * seq).map(|i| (i * 7 + 3) % V).collect();
        let raw: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = Tensor::from_raw(None, DType::I64, vec![batch, seq], raw.into());
        let feeds = [("ids".to_string(), Value::Tensor(optc_eval::Tensor::from_ir(&t).unwrap()))].into_iter().collect();
        let out = Evaluator::new(model).unwrap().run(&feeds).unwrap();
        let v = out[0].1.tensor().unwrap().to_f64_vec().unwrap();
        v.into_iter().map(|x| (x as f32).to_bits()).collect()
    }

    #[test]
    fn embeddings_lose_the_token_type_gather_and_keep_every_bit() {
        let mut model = embeddings();
        let want = [(2, 5), (1, 8)].map(|(b, s)| eval(&model, b, s));
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.explain = true;
        PassManager::new(PassRegistry::with_builtins()).run(&mut model, "fixpoint(fold-gather,dce)", &mut cx).unwrap();
        optc_ir::verify::verify_model(&model).unwrap();
        let g = &model.graph;
        let mut ops: Vec<String> = g.nodes().map(|n| g.node(n).op.to_string()).collect();
        ops.sort();
        // One Gather (words, from the table with the token-type row added), the positions a Slice.
        assert_eq!(ops, ["Add", "Gather", "Shape", "Slice"], "{:?}", cx.explanations());
        let got = [(2, 5), (1, 8)].map(|(b, s)| eval(&model, b, s));
        assert_eq!(want, got);
        let notes: Vec<&str> = cx.explanations().iter().map(|(_, n)| n.as_str()).collect();
        assert!(notes.iter().any(|n| n.contains("indices are all 0")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("prefix of arange(8)")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("into the table of Gather")), "{notes:?}");
    }

    #[test]
    fn a_table_with_other_readers_is_not_rewritten() {
        let mut b = GraphBuilder::new("g");
        let ids = b.input("ids", DType::I64, vec![Dim::sym("n")]).unwrap();
        let w = b.init_f32("w", &[V, H], &vec![0.5; (V * H) as usize]).unwrap();
        let k = b.init_f32("k", &[H], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let a = b.op(Op::Gather, &[w, ids], vec![]).unwrap();
        let a = b.op(Op::Add, &[a, k], vec![]).unwrap();
        let c = b.op(Op::Gather, &[w, ids], vec![]).unwrap();
        b.output(a, "a", None).unwrap();
        b.output(c, "c", None).unwrap();
        let mut model = Model::new(b.finish(), 17);
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.explain = true;
        PassManager::new(PassRegistry::with_builtins()).run(&mut model, "fold-gather", &mut cx).unwrap();
        assert_eq!(model.graph.node_count(), 3);
        assert!(
            cx.explanations().iter().any(|(_, n)| n.contains("the table has other readers")),
            "{:?}",
            cx.explanations()
        );
    }
}
