//! `fuse-qkv`: projections that read the same input, merged into one wider MatMul.
//!
//! Two or more `MatMul(x, W_i)` with constant float32 `W_i` of shape `[K, N_i]` (the Q, K and V
//! projections of an attention block, the gate and up projections of a gated MLP) become one
//! `MatMul(x, [W_1 | W_2 | ...])`, followed by one `Add` of the concatenated biases when every
//! projection is followed by an `Add` of a constant `[N_i]` bias, and a `Split` along the last
//! axis. One larger GEMM replaces several small ones; standard ops only, so it runs anywhere.
//! Each output element is computed by the same dot product as before: the result is exact.

use super::{add_f32, add_op, f32_const, single_use};
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::{Attribute, Graph, Model, NodeId, NodeSpec, Op, ValueId};
use std::collections::BTreeMap;

pub struct FuseQkv;

impl Pass for FuseQkv {
    fn name(&self) -> &str {
        "fuse-qkv"
    }
    fn description(&self) -> &str {
        "merge MatMuls (and their bias Adds) that read the same input with constant weights into one MatMul + Split \
         (shared Q/K/V and gate/up projections)"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let rewrites = crate::util::for_each_graph(model, &mut |g, opset| run_graph(g, opset, cx));
        Ok(PassOutcome { rewrites })
    }
}

/// One projection: the MatMul, its weight data, and its bias Add (node, bias data) if any.
struct Proj {
    mm: NodeId,
    w: Vec<f32>,
    n: i64,
    bias: Option<(NodeId, Vec<f32>)>,
}

fn run_graph(g: &mut Graph, opset: i64, cx: &mut PassContext) -> usize {
    if opset < 13 {
        // Split takes its sizes as an input from opset 13; older models keep their MatMuls.
        return 0;
    }
    let Ok(order) = g.topo_order() else { return 0 };
    // Group MatMuls by their left operand, in graph order.
    let mut groups: BTreeMap<usize, (ValueId, Vec<NodeId>)> = BTreeMap::new();
    let mut first_seen: std::collections::HashMap<ValueId, usize> = Default::default();
    for (i, id) in order.iter().enumerate() {
        let node = g.node(*id);
        if node.op != Op::MatMul || node.outputs().len() != 1 {
            continue;
        }
        let Some(x) = node.input(0) else { continue };
        let k = *first_seen.entry(x).or_insert(i);
        groups.entry(k).or_insert((x, vec![])).1.push(*id);
    }
    let mut n = 0;
    for (_, (x, mms)) in groups {
        if mms.len() < 2 {
            continue;
        }
        n += usize::from(merge(g, x, &mms, cx));
    }
    n
}

fn merge(g: &mut Graph, x: ValueId, mms: &[NodeId], cx: &mut PassContext) -> bool {
    let mut projs: Vec<Proj> = Vec::new();
    let mut k_dim = None;
    for &mm in mms {
        let Some(w) = g.node(mm).input(1) else { continue };
        let Some((data, dims)) = f32_const(g, w) else { continue };
        if dims.len() != 2 || k_dim.is_some_and(|k| k != dims[0]) {
            continue;
        }
        k_dim = Some(dims[0]);
        let Some(out) = g.node(mm).output(0) else { continue };
        let bias = single_use(g, out).and_then(|(add, slot)| {
            let node = g.node(add);
            if node.op != Op::Add || node.inputs().len() != 2 {
                return None;
            }
            let (b, bd) = f32_const(g, node.input(1 - slot)?)?;
            (bd == [dims[1]]).then_some((add, b))
        });
        projs.push(Proj { mm, w: data, n: dims[1], bias });
    }
    if projs.len() < 2 {
        return false;
    }
    // Biases merge only when every projection has one.
    let with_bias = projs.iter().all(|p| p.bias.is_some());
    let names: Vec<String> = projs.iter().map(|p| g.node(p.mm).display_name()).collect();
    if !cx.rewrite() {
        return false;
    }
    let k = k_dim.unwrap_or(0) as usize;
    let total: i64 = projs.iter().map(|p| p.n).sum();
    let mut w = vec![0f32; k * total as usize];
    let mut col = 0usize;
    for p in &projs {
        let nc = p.n as usize;
        for r in 0..k {
            w[r * total as usize + col..r * total as usize + col + nc].copy_from_slice(&p.w[r * nc..(r + 1) * nc]);
        }
        col += nc;
    }
    let Some(wv) = add_f32(g, "qkv.weight", vec![k as i64, total], &w) else { return false };
    let first = projs[0].mm;
    let base = g.node(first).name.clone().unwrap_or_else(|| "qkv".into());
    let Some(mut cur) = add_op(g, Op::MatMul, vec![Some(x), Some(wv)], vec![], &format!("{base}_merged"), first) else {
        return false;
    };
    if with_bias {
        let b: Vec<f32> = projs.iter().flat_map(|p| p.bias.as_ref().map(|b| b.1.clone()).unwrap_or_default()).collect();
        let Some(bv) = add_f32(g, "qkv.bias", vec![total], &b) else { return false };
        let Some(v) = add_op(g, Op::Add, vec![Some(cur), Some(bv)], vec![], &format!("{base}_merged_bias"), first)
        else {
            return false;
        };
        cur = v;
    }
    let sizes: Vec<i64> = projs.iter().map(|p| p.n).collect();
    let Some(sv) = super::add_i64(g, "qkv.split", &sizes) else {
        return false;
    };
    // The Split's outputs take over the projections' outputs (after their bias Adds).
    let outs: Vec<ValueId> = projs
        .iter()
        .filter_map(|p| {
            let last = if with_bias { p.bias.as_ref().map(|b| b.0).unwrap_or(p.mm) } else { p.mm };
            g.node(last).output(0)
        })
        .collect();
    if outs.len() != projs.len() {
        return false;
    }
    let fresh: Vec<ValueId> = outs
        .iter()
        .filter_map(|&o| {
            let nm = g.fresh_name(&format!("{}_split", g.value(o).name));
            g.add_value(nm, None).ok()
        })
        .collect();
    let spec = NodeSpec::new(Op::Split, vec![Some(cur), Some(sv)], fresh.iter().map(|&v| Some(v)).collect())
        .attrs(vec![Attribute::int("axis", -1)])
        .named(format!("{base}_split"));
    let Ok(split) = g.add_node(spec) else { return false };
    g.place_like(split, first);
    for (p, &new) in projs.iter().zip(&fresh) {
        let last = if with_bias { p.bias.as_ref().map(|b| b.0).unwrap_or(p.mm) } else { p.mm };
        // `new` is written by the Split, so the forward cannot fail.
        crate::util::forward_output(g, last, new);
    }
    for p in &projs {
        for id in [Some(p.mm), p.bias.as_ref().map(|b| b.0)].into_iter().flatten() {
            if g.contains_node(id) && g.node(id).outputs().iter().flatten().all(|&o| g.is_unused(o)) {
                g.remove_node(id);
            }
        }
    }
    cx.note(|| format!("merged {} projections of one input: {}", names.len(), names.join(", ")));
    true
}
