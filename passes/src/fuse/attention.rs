//! `fuse-attention`: the self-attention block of BERT/ViT-style encoders, exported as a chain of
//! standard ops, fused into one `com.microsoft::Attention` (targets with `contrib_ops`).
//!
//! The matched block, starting from its `Softmax` over the last axis:
//!
//! ```text
//! q, k, v = x @ Wq + bq, x @ Wk + bk, x @ Wv + bv      (or one MatMul + Add + Split, as fuse-qkv writes)
//! Q = Transpose(Reshape(q, [B, S, H, D]), [0,2,1,3])   (V likewise)
//! Kt = Transpose(Reshape(k, [B, S, H, D]), [0,2,3,1])  (or [0,2,1,3] then [0,1,3,2])
//! p = Softmax(MatMul(Q, Kt) / c (or * c) [+ (1 - Cast(Unsqueeze(mask, [1, 2]))) * f], axis=-1)
//! y = Reshape(Transpose(MatMul(p, V), [0,2,1,3]), [B, S, H*D])
//! ```
//!
//! becomes `Attention(x, [Wq|Wk|Wv], [bq|bk|bv], Cast(mask, int32))` with `num_heads = H`,
//! `scale = 1/c` (or `c`, or 1 without a scaling) and `mask_filter_value = f`. onnxruntime reads
//! a 2-D `mask_index` as "1 attends, 0 is masked with `mask_filter_value`", which is what the
//! chain computes for a 0/1 attention mask (the values an attention mask holds). The fused op
//! computes the same function up to float rounding: the scores are scaled inside the product,
//! and the projections run as one GEMM.

use super::{
    add_f32, add_op, ensure_domain, f32_const, feeds_quantizer, producer_op, replace_chain, scalar, single_use,
};
use crate::util::const_ints;
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::infer::Facts;
use optc_ir::{AttrList, Attribute, DType, Dim, DimValue, Graph, Model, NodeId, Op, ValueId};
use std::collections::HashMap;

pub struct FuseAttention;

impl Pass for FuseAttention {
    fn name(&self) -> &str {
        "fuse-attention"
    }
    fn description(&self) -> &str {
        "fuse BERT/ViT self-attention (Q/K/V projections, head Reshape/Transpose, scaled QK^T, additive \
         attention mask, Softmax, weighted V, head merge) into com.microsoft Attention (contrib-op targets)"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Rounding { rtol: 1e-4, atol: 1e-5 }
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        if !cx.target.contrib_ops {
            cx.note(|| "attention not fused: the target does not run com.microsoft ops".to_string());
            return Ok(PassOutcome { rewrites: 0 });
        }
        let rewrites = crate::util::for_each_graph(model, &mut |g, opset| run_graph(g, opset, cx));
        if rewrites > 0 {
            ensure_domain(model, "com.microsoft");
        }
        Ok(PassOutcome { rewrites })
    }
}

/// One projection of `x`: `x @ w (+ b)` with `w` row-major `[k, n]`.
struct Proj {
    x: ValueId,
    w: Vec<f32>,
    k: usize,
    n: usize,
    b: Option<Vec<f32>>,
}

/// A matched attention block.
struct Matched {
    x: ValueId,
    q: Proj,
    k: Proj,
    v: Proj,
    heads: i64,
    scale: f32,
    /// The 2-D attention mask and the value masked scores get.
    mask: Option<(ValueId, f32)>,
    /// The head-merging Reshape whose output the fused op takes over.
    last: NodeId,
}

fn run_graph(g: &mut Graph, opset: i64, cx: &mut PassContext) -> usize {
    let Ok(order) = g.topo_order() else { return 0 };
    let facts = optc_ir::infer::infer(g, opset);
    let mut mask_casts: HashMap<ValueId, ValueId> = HashMap::new();
    let mut n = 0;
    for id in order {
        if !g.contains_node(id) || g.node(id).op != Op::Softmax {
            continue;
        }
        let name = g.node(id).display_name();
        match match_block(g, id, opset, &facts) {
            Ok(m) => {
                if emit(g, m, &facts, &mut mask_casts, cx) {
                    n += 1;
                }
            }
            Err(Skip::Quiet) => {}
            Err(Skip::Why(why)) => cx.note(|| format!("attention at Softmax '{name}' not fused: {why}")),
        }
    }
    n
}

enum Skip {
    /// Not an attention Softmax at all (nothing worth explaining).
    Quiet,
    /// A near miss, with the reason.
    Why(String),
}

fn why<T>(s: impl Into<String>) -> Result<T, Skip> {
    Err(Skip::Why(s.into()))
}

/// The node reading `v` as its only use, when it is `op`.
fn next_op(g: &Graph, v: ValueId, op: Op) -> Option<NodeId> {
    let (n, _) = single_use(g, v)?;
    (g.node(n).op == op).then_some(n)
}

fn perm(g: &Graph, n: NodeId) -> Option<Vec<i64>> {
    g.node(n).attrs.get_ints("perm").map(|p| p.to_vec())
}

fn same_dim(a: &Dim, b: &Dim) -> bool {
    match (&a.value, &b.value) {
        (DimValue::Known(x), DimValue::Known(y)) => x == y,
        (DimValue::Sym(x), DimValue::Sym(y)) => x == y,
        _ => false,
    }
}

/// Whether the Reshape `r` maps `[B, S, ...]` to `[B, S] ++ tail` (`tail` all known): from the
/// inferred shapes, or from a constant target shape whose first two entries copy (0), infer
/// (-1, at most once) or repeat the known input dims.
fn reshape_keeps_lead(g: &Graph, facts: &Facts, r: NodeId, tail: &[i64]) -> bool {
    let node = g.node(r);
    let (Some(inp), Some(out)) = (node.input(0), node.output(0)) else { return false };
    let Some(si) = facts.shape(inp) else { return false };
    if si.len() != 2 + if tail.len() == 2 { 1 } else { 2 } {
        return false;
    }
    if let Some(so) = facts.shape(out)
        && so.len() == 2 + tail.len()
        && same_dim(&si[0], &so[0])
        && same_dim(&si[1], &so[1])
        && so[2..].iter().zip(tail).all(|(d, &t)| d.as_known() == Some(t))
    {
        return true;
    }
    let Some(s) = node.input(1).and_then(|v| const_ints(g, v)) else { return false };
    if s.len() != 2 + tail.len() || s[2..] != *tail {
        return false;
    }
    let allowzero = node.attrs.get_int("allowzero").unwrap_or(0) == 1;
    let ok = |x: i64, d: &Dim| (x == 0 && !allowzero) || x == -1 || d.as_known() == Some(x);
    ok(s[0], &si[0]) && ok(s[1], &si[1]) && !(s[0] == -1 && s[1] == -1)
}

/// `x @ W (+ b)` behind `v`: a MatMul with a constant float32 `[k, n]` weight, with an Add of a
/// constant `[n]` bias or without.
fn linear(g: &Graph, v: ValueId) -> Result<Proj, Skip> {
    let (p, _) = g.producer(v).ok_or(Skip::Quiet)?;
    let (mm, bias) = match g.node(p).op {
        Op::MatMul => (p, None),
        Op::Add => {
            let node = g.node(p);
            let (a, b) = (node.input(0).ok_or(Skip::Quiet)?, node.input(1).ok_or(Skip::Quiet)?);
            let (mv, bv) = if producer_op(g, a, Op::MatMul).is_some() { (a, b) } else { (b, a) };
            let Some(mm) = producer_op(g, mv, Op::MatMul) else {
                return why("a projection is not MatMul + Add");
            };
            if single_use(g, mv).is_none() {
                return why("a projection's MatMul has other readers");
            }
            let Some((b, dims)) = f32_const(g, bv) else { return why("a projection's bias is not a float32 constant") };
            (mm, Some((b, dims)))
        }
        _ => return why(format!("a projection is {}, not MatMul (+ Add)", g.node(p).op)),
    };
    let node = g.node(mm);
    let x = node.input(0).ok_or(Skip::Quiet)?;
    let Some((w, dims)) = node.input(1).and_then(|w| f32_const(g, w)) else {
        return why("a projection's weight is not a float32 constant");
    };
    let [k, n] = dims[..] else { return why("a projection's weight is not 2-D") };
    let b = match bias {
        None => None,
        Some((b, bd)) if bd == [n] => Some(b),
        Some(_) => return why("a projection's bias is not a vector over its outputs"),
    };
    Ok(Proj { x, w, k: k as usize, n: n as usize, b })
}

/// The projection behind `v`: [`linear`] directly, or one output of a Split over the last axis
/// of a wider [`linear`] (the columns of that output).
fn projection(g: &Graph, v: ValueId, opset: i64) -> Result<Proj, Skip> {
    let (p, slot) = g.producer(v).ok_or(Skip::Quiet)?;
    if g.node(p).op != Op::Split {
        return linear(g, v);
    }
    let node = g.node(p);
    let src = node.input(0).ok_or(Skip::Quiet)?;
    if single_use(g, src).is_none() {
        return why("the merged projection has other readers");
    }
    let full = linear(g, src)?;
    let axis = node.attrs.get_int("axis").unwrap_or(0);
    if axis != -1 && axis != 2 {
        return why("the projections are split along another axis than the last");
    }
    let outs = node.outputs().len();
    let sizes: Vec<i64> = match (node.input(1).filter(|_| opset >= 13), node.attrs.get_ints("split")) {
        (Some(s), _) => const_ints(g, s).ok_or(Skip::Why("the Split sizes are not constant".into()))?,
        (None, Some(s)) if opset < 13 => s.to_vec(),
        _ if full.n % outs == 0 => vec![(full.n / outs) as i64; outs],
        _ => return why("the Split sizes are not known"),
    };
    if sizes.len() != outs || sizes.iter().sum::<i64>() != full.n as i64 || sizes.iter().any(|&s| s <= 0) {
        return why("the Split sizes do not cover the merged projection");
    }
    let off: usize = sizes[..slot].iter().map(|&s| s as usize).sum();
    let n = sizes[slot] as usize;
    let mut w = Vec::with_capacity(full.k * n);
    for r in 0..full.k {
        w.extend_from_slice(&full.w[r * full.n + off..r * full.n + off + n]);
    }
    let b = full.b.as_ref().map(|b| b[off..off + n].to_vec());
    Ok(Proj { x: full.x, w, k: full.k, n, b })
}

/// The head split feeding the score or value MatMul: `Transpose(Reshape(p, [B, S, H, D]))`
/// with the permutation `[0,2,1,3]` (`kt` false) or the key's `[0,2,3,1]` (`kt` true, also as
/// `[0,2,1,3]` then `[0,1,3,2]`). Returns the projection value `p`, H and D.
fn head_split(g: &Graph, facts: &Facts, t: ValueId, kt: bool) -> Result<(ValueId, i64, i64), Skip> {
    let Some(tr) = producer_op(g, t, Op::Transpose) else {
        return why("a Q/K/V operand is not a Transpose of the head Reshape");
    };
    let mut tr = tr;
    let want: &[i64] = if kt { &[0, 2, 3, 1] } else { &[0, 2, 1, 3] };
    let p = perm(g, tr).unwrap_or_default();
    if kt && p == [0, 1, 3, 2] {
        let inner = g.node(tr).input(0).and_then(|v| producer_op(g, v, Op::Transpose));
        match inner {
            Some(i)
                if perm(g, i).as_deref() == Some(&[0, 2, 1, 3][..])
                    && g.node(i).output(0).and_then(|o| single_use(g, o)).is_some() =>
            {
                tr = i
            }
            _ => return why("the key is not transposed to [B, H, D, S]"),
        }
    } else if p != want {
        return why(format!("a head Transpose has perm {p:?}, not {want:?}"));
    }
    let r_out = g.node(tr).input(0).ok_or(Skip::Quiet)?;
    let Some(r) = producer_op(g, r_out, Op::Reshape) else { return why("a head Transpose does not read a Reshape") };
    if single_use(g, r_out).is_none() {
        return why("a head Reshape has other readers");
    }
    let src = g.node(r).input(0).ok_or(Skip::Quiet)?;
    let out_shape = facts.shape(r_out);
    let hd =
        out_shape.filter(|s| s.len() == 4).and_then(|s| Some((s[2].as_known()?, s[3].as_known()?))).or_else(|| {
            let s = const_ints(g, g.node(r).input(1)?)?;
            (s.len() == 4 && s[2] > 0 && s[3] > 0).then(|| (s[2], s[3]))
        });
    let Some((h, d)) = hd else { return why("the head count and size are not known") };
    if !reshape_keeps_lead(g, facts, r, &[h, d]) {
        return why("a head Reshape is not [B, S, H*D] -> [B, S, H, D]");
    }
    if single_use(g, src).is_none() {
        return why("a projection has other readers than its head Reshape");
    }
    Ok((src, h, d))
}

/// A 2-D attention mask behind the additive mask `m`: `Mul(Sub(1, Cast<float>(mask
/// unsqueezed to [B, 1, 1, T])), f)`. Returns the 2-D mask and `f`.
fn mask_2d(g: &Graph, facts: &Facts, m: ValueId) -> Result<(ValueId, f32), Skip> {
    let not_mask = || why("the added mask is not (1 - Cast(Unsqueeze(mask, [1, 2]))) * c of a 2-D mask");
    let Some(mul) = producer_op(g, m, Op::Mul) else { return not_mask() };
    let Some((inv, f, _)) = super::with_scalar(g, mul) else { return not_mask() };
    let Some(sub) = producer_op(g, inv, Op::Sub) else { return not_mask() };
    let node = g.node(sub);
    if node.input(0).and_then(|v| scalar(g, v)) != Some(1.0) {
        return not_mask();
    }
    let mut cur = node.input(1).ok_or(Skip::Quiet)?;
    // Walk back through the Unsqueezes and the Cast, recording the unsqueeze axes.
    let mut axes_back: Vec<Vec<i64>> = Vec::new();
    let mut cast = false;
    for _ in 0..6 {
        let Some((p, _)) = g.producer(cur) else { break };
        let n = g.node(p);
        match n.op {
            Op::Cast if !cast && n.attrs.get_int("to") == Some(DType::F32.onnx_code() as i64) => cast = true,
            Op::Unsqueeze => {
                let axes = match n.attrs.get_ints("axes") {
                    Some(a) => a.to_vec(),
                    None => match n.input(1).and_then(|a| const_ints(g, a)) {
                        Some(a) => a,
                        None => return not_mask(),
                    },
                };
                axes_back.push(axes);
            }
            _ => break,
        }
        cur = n.input(0).ok_or(Skip::Quiet)?;
    }
    if !cast || facts.shape(cur).is_none_or(|s| s.len() != 2) {
        return not_mask();
    }
    // Replay the Unsqueezes: where do the mask's two axes end up?
    let mut pos: Vec<Option<usize>> = vec![Some(0), Some(1)];
    for axes in axes_back.iter().rev() {
        let r = pos.len() + axes.len();
        let mut ins: Vec<usize> = Vec::new();
        for &a in axes {
            let a = if a < 0 { a + r as i64 } else { a };
            if !(0..r as i64).contains(&a) || ins.contains(&(a as usize)) {
                return not_mask();
            }
            ins.push(a as usize);
        }
        let mut old = pos.into_iter();
        pos = (0..r).map(|i| if ins.contains(&i) { None } else { old.next().flatten() }).collect();
    }
    if pos != [Some(0), None, None, Some(1)] {
        return not_mask();
    }
    Ok((cur, f as f32))
}

fn match_block(g: &Graph, sm: NodeId, opset: i64, facts: &Facts) -> Result<Matched, Skip> {
    let node = g.node(sm);
    let s_in = node.input(0).ok_or(Skip::Quiet)?;
    let s_out = node.output(0).ok_or(Skip::Quiet)?;
    // The probabilities feed MatMul(p, V); anything else is not attention.
    let Some((pv, 0)) = single_use(g, s_out) else { return Err(Skip::Quiet) };
    if g.node(pv).op != Op::MatMul {
        return Err(Skip::Quiet);
    }
    let rank = facts.shape(s_in).map(|s| s.len());
    if rank != Some(4) {
        return why("the scores are not known to be 4-D [B, H, S, T]");
    }
    let axis = node.attrs.get_int("axis").unwrap_or(if opset >= 13 { -1 } else { 1 });
    if axis != -1 && axis != 3 {
        return why(format!("Softmax is over axis {axis}, not the last"));
    }
    // Scores, then the optional mask Add.
    let mut scores = s_in;
    let mut mask = None;
    if let Some(add) = producer_op(g, s_in, Op::Add) {
        let n = g.node(add);
        let (a, b) = (n.input(0).ok_or(Skip::Quiet)?, n.input(1).ok_or(Skip::Quiet)?);
        // The scores: a MatMul, or a MatMul divided or multiplied by a scalar constant.
        let is_scores = |v: ValueId| {
            let Some((p, _)) = g.producer(v) else { return false };
            match g.node(p).op {
                Op::MatMul => true,
                Op::Div | Op::Mul => {
                    super::with_scalar(g, p).is_some_and(|(other, _, _)| producer_op(g, other, Op::MatMul).is_some())
                }
                _ => false,
            }
        };
        let (sc, m) = match (is_scores(a), is_scores(b)) {
            (true, false) => (a, b),
            (false, true) => (b, a),
            (false, false) => return why("neither operand of the mask Add is the (scaled) QK^T (a causal Where?)"),
            (true, true) => return why("both operands of the mask Add look like scores"),
        };
        if single_use(g, s_in).is_none() || single_use(g, sc).is_none() {
            return why("the masked scores have other readers");
        }
        scores = sc;
        mask = Some(mask_2d(g, facts, m)?);
    } else if single_use(g, s_in).is_none() {
        return why("the scores have other readers");
    }
    let mut scale = 1.0f64;
    let mm = match g.producer(scores).map(|(p, _)| (p, g.node(p).op.clone())) {
        Some((p, Op::MatMul)) => p,
        Some((p, op @ (Op::Div | Op::Mul))) => {
            let n = g.node(p);
            let c = n.input(1).and_then(|v| scalar(g, v));
            let (other, c) = match (op, c) {
                (Op::Div, Some(c)) if c != 0.0 => (n.input(0), 1.0 / c),
                (Op::Mul, Some(c)) => (n.input(0), c),
                (Op::Mul, None) => (n.input(1), n.input(0).and_then(|v| scalar(g, v)).ok_or(Skip::Quiet)?),
                _ => return why("the scores are not scaled by a scalar constant"),
            };
            let other = other.ok_or(Skip::Quiet)?;
            let Some(mm) = producer_op(g, other, Op::MatMul) else {
                return why("the scaled scores are not a MatMul");
            };
            if single_use(g, other).is_none() {
                return why("the unscaled scores have other readers");
            }
            scale = c;
            mm
        }
        _ => return why("the scores are not MatMul(Q, K^T), scaled or not"),
    };
    if !(scale.is_finite() && scale > 0.0) {
        return why(format!("the score scale {scale} is not positive"));
    }
    let mn = g.node(mm);
    let (qt, kt) = (mn.input(0).ok_or(Skip::Quiet)?, mn.input(1).ok_or(Skip::Quiet)?);
    let vt = g.node(pv).input(1).ok_or(Skip::Quiet)?;
    let (q, h, d) = head_split(g, facts, qt, false)?;
    let (k, hk, dk) = head_split(g, facts, kt, true)?;
    let (v, hv, dv) = head_split(g, facts, vt, false)?;
    if (hk, dk) != (h, d) || (hv, dv) != (h, d) {
        return why("Q, K and V have different head shapes");
    }
    // The head merge: Transpose [0,2,1,3] then Reshape to [B, S, H*D].
    let pv_out = g.node(pv).output(0).ok_or(Skip::Quiet)?;
    let Some(tr) = next_op(g, pv_out, Op::Transpose) else {
        return why("the weighted values are not transposed back");
    };
    if perm(g, tr).as_deref() != Some(&[0, 2, 1, 3][..]) {
        return why("the head merge Transpose is not [0,2,1,3]");
    }
    let Some(last) = g.node(tr).output(0).and_then(|o| next_op(g, o, Op::Reshape)) else {
        return why("the heads are not merged by a Reshape");
    };
    if !reshape_keeps_lead(g, facts, last, &[h * d]) {
        return why("the head merge Reshape is not [B, S, H, D] -> [B, S, H*D]");
    }
    let (pq, pk, pvv) = (projection(g, q, opset)?, projection(g, k, opset)?, projection(g, v, opset)?);
    if pq.x != pk.x || pq.x != pvv.x {
        return why("Q, K and V project different inputs (cross-attention)");
    }
    let hidden = (h * d) as usize;
    if [&pq, &pk, &pvv].iter().any(|p| p.n != hidden || p.k != pq.k) {
        return why("the Q/K/V projection widths differ from heads * head size");
    }
    if facts.shape(pq.x).is_none_or(|s| s.len() != 3) {
        return why("the attention input is not known to be 3-D [B, S, hidden]");
    }
    if facts.elem(pq.x) != Some(DType::F32) {
        return why("only float32 attention is fused");
    }
    if let Some((m, _)) = mask {
        let (xs, ms) = (facts.shape(pq.x), facts.shape(m));
        let same = match (xs, ms) {
            (Some(xs), Some(ms)) => same_dim(&xs[0], &ms[0]) && same_dim(&xs[1], &ms[1]),
            _ => false,
        };
        if !same {
            return why("the attention mask is not known to be [batch, sequence] of the input");
        }
    }
    Ok(Matched { x: pq.x, q: pq, k: pk, v: pvv, heads: h, scale: scale as f32, mask, last })
}

fn emit(
    g: &mut Graph,
    m: Matched,
    facts: &Facts,
    mask_casts: &mut HashMap<ValueId, ValueId>,
    cx: &mut PassContext,
) -> bool {
    let name = g.node(m.last).display_name();
    let out = g.node(m.last).output(0);
    if feeds_quantizer(g, m.x) || out.is_some_and(|o| feeds_quantizer(g, o)) {
        cx.note(|| format!("attention ending at '{name}' not fused: a quantiser reads it (fusing changes rounding)"));
        return false;
    }
    if !cx.rewrite() {
        return false;
    }
    let (k, n) = (m.q.k, m.q.n);
    let mut w = Vec::with_capacity(k * 3 * n);
    for r in 0..k {
        for p in [&m.q, &m.k, &m.v] {
            w.extend_from_slice(&p.w[r * n..(r + 1) * n]);
        }
    }
    let mut b = Vec::with_capacity(3 * n);
    for p in [&m.q, &m.k, &m.v] {
        match &p.b {
            Some(pb) => b.extend_from_slice(pb),
            None => b.extend(std::iter::repeat_n(0.0, n)),
        }
    }
    let Some(wv) = add_f32(g, "attention.qkv_weight", vec![k as i64, 3 * n as i64], &w) else { return false };
    let Some(bv) = add_f32(g, "attention.qkv_bias", vec![3 * n as i64], &b) else { return false };
    let mut inputs = vec![Some(m.x), Some(wv), Some(bv)];
    let mut attrs = vec![Attribute::int("num_heads", m.heads), Attribute::float("scale", m.scale)];
    if let Some((mask, filter)) = m.mask {
        let idx = match mask_casts.get(&mask) {
            Some(&v) if g.contains_value(v) => v,
            _ if facts.elem(mask) == Some(DType::I32) => mask,
            _ => {
                let mname = format!("{}_int32", g.value(mask).name);
                let to = Attribute::int("to", DType::I32.onnx_code() as i64);
                let Some(c) = add_op(g, Op::Cast, vec![Some(mask)], vec![to], &mname, m.last) else { return false };
                mask_casts.insert(mask, c);
                c
            }
        };
        inputs.push(Some(idx));
        attrs.push(Attribute::float("mask_filter_value", filter));
    }
    let heads = m.heads;
    let masked = m.mask.is_some();
    let op = Op::from_onnx("com.microsoft", "Attention");
    if replace_chain(g, m.last, op, inputs, attrs, cx).is_none() {
        return false;
    }
    cx.note(|| {
        format!(
            "attention ending at '{name}' fused into com.microsoft::Attention ({heads} heads, scale {}, {})",
            m.scale,
            if masked { "2-D attention mask" } else { "no mask" }
        )
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Rng;
    use crate::test_support::f32_value;
    use crate::{PassManager, PassRegistry};
    use optc_eval::{Evaluator, Value};
    use optc_ir::builder::GraphBuilder;
    use optc_ir::{Tensor, Type};

    const B: i64 = 2;
    const S: i64 = 5;
    const H: i64 = 2;
    const D: i64 = 4;
    const N: i64 = H * D;

    /// A BERT self-attention block over `x [B, S, N]` with a 2-D `mask`; `softmax_axis` and
    /// `merged` (one MatMul + Add + Split for Q/K/V) vary the pattern.
    fn block(softmax_axis: i64, merged: bool) -> Model {
        let mut r = Rng(7);
        let mut b = GraphBuilder::new("g");
        let dims = |d: &[i64]| d.iter().map(|&x| Dim::known(x)).collect::<Vec<_>>();
        let x = b.input("x", DType::F32, dims(&[B, S, N])).unwrap();
        let mask = b.input("mask", DType::I64, dims(&[B, S])).unwrap();
        let mut proj = |b: &mut GraphBuilder, cols: i64| {
            let w: Vec<f32> = (0..N * cols).map(|_| r.normal() * 0.5).collect();
            let bias: Vec<f32> = (0..cols).map(|_| r.normal() * 0.1).collect();
            let wv = b.init_f32("w", &[N, cols], &w).unwrap();
            let bv = b.init_f32("b", &[cols], &bias).unwrap();
            let mm = b.op(Op::MatMul, &[x, wv], vec![]).unwrap();
            b.op(Op::Add, &[mm, bv], vec![]).unwrap()
        };
        let (q, k, v) = if merged {
            let all = proj(&mut b, 3 * N);
            let sizes = b.init_i64("sizes", &[3], &[N, N, N]).unwrap();
            let o = b.op_n(Op::Split, &[Some(all), Some(sizes)], vec![Attribute::int("axis", -1)], 3).unwrap();
            (o[0], o[1], o[2])
        } else {
            (proj(&mut b, N), proj(&mut b, N), proj(&mut b, N))
        };
        let shape = b.init_i64("shape", &[4], &[0, 0, H, D]).unwrap();
        let heads = |b: &mut GraphBuilder, p: ValueId, perm: &[i64]| {
            let r = b.op(Op::Reshape, &[p, shape], vec![]).unwrap();
            b.op(Op::Transpose, &[r], vec![Attribute::ints("perm", perm.to_vec())]).unwrap()
        };
        let qt = heads(&mut b, q, &[0, 2, 1, 3]);
        let kt = heads(&mut b, k, &[0, 2, 3, 1]);
        let vt = heads(&mut b, v, &[0, 2, 1, 3]);
        let sc = b.op(Op::MatMul, &[qt, kt], vec![]).unwrap();
        let c = b.init_f32("c", &[], &[(D as f32).sqrt()]).unwrap();
        let sc = b.op(Op::Div, &[sc, c], vec![]).unwrap();
        let axes = b.init_i64("axes", &[2], &[1, 2]).unwrap();
        let m4 = b.op(Op::Unsqueeze, &[mask, axes], vec![]).unwrap();
        let mf = b.op(Op::Cast, &[m4], vec![Attribute::int("to", DType::F32.onnx_code() as i64)]).unwrap();
        let one = b.init_f32("one", &[], &[1.0]).unwrap();
        let inv = b.op(Op::Sub, &[one, mf], vec![]).unwrap();
        let big = b.init_f32("big", &[], &[-10000.0]).unwrap();
        let madd = b.op(Op::Mul, &[inv, big], vec![]).unwrap();
        let sc = b.op(Op::Add, &[sc, madd], vec![]).unwrap();
        let p = b.op(Op::Softmax, &[sc], vec![Attribute::int("axis", softmax_axis)]).unwrap();
        let o = b.op(Op::MatMul, &[p, vt], vec![]).unwrap();
        let o = b.op(Op::Transpose, &[o], vec![Attribute::ints("perm", vec![0, 2, 1, 3])]).unwrap();
        let back = b.init_i64("back", &[3], &[0, 0, N]).unwrap();
        let y = b.op(Op::Reshape, &[o, back], vec![]).unwrap();
        b.output(y, "y", Some(Type::tensor(DType::F32, dims(&[B, S, N])))).unwrap();
        Model::new(b.finish(), 17)
    }

    fn run(model: &mut Model, contrib: bool) -> Vec<(String, String)> {
        let mut target = optc_cost::Target::cpu();
        target.contrib_ops = contrib;
        let mut cx = PassContext::new(target);
        cx.explain = true;
        PassManager::new(PassRegistry::with_builtins()).run(model, "fuse-attention,dce", &mut cx).unwrap();
        optc_ir::verify::verify_model(model).unwrap();
        cx.explanations().to_vec()
    }

    fn eval(model: &Model) -> Vec<f32> {
        let mut r = Rng(3);
        let xv: Vec<f32> = (0..B * S * N).map(|_| r.normal()).collect();
        // The second sequence has its last two positions padded.
        let mask: Vec<i64> = (0..B * S).map(|i| i64::from(!(i / S == 1 && i % S >= S - 2))).collect();
        let raw: Vec<u8> = mask.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mt = Tensor::from_raw(None, DType::I64, vec![B, S], raw.into());
        let feeds = [
            ("x".to_string(), f32_value(&[B, S, N], &xv)),
            ("mask".to_string(), Value::Tensor(optc_eval::Tensor::from_ir(&mt).unwrap())),
        ]
        .into_iter()
        .collect();
        let out = Evaluator::new(model).unwrap().run(&feeds).unwrap();
        out[0].1.tensor().unwrap().to_f64_vec().unwrap().into_iter().map(|v| v as f32).collect()
    }

    fn ops(model: &Model) -> Vec<String> {
        let g = &model.graph;
        let mut v: Vec<String> = g.nodes().map(|id| g.node(id).op.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn self_attention_becomes_one_attention_op_with_the_same_outputs() {
        for merged in [false, true] {
            let mut model = block(-1, merged);
            let want = eval(&model);
            let notes = run(&mut model, true);
            assert_eq!(ops(&model), vec!["Cast", "com.microsoft::Attention"], "{notes:?}");
            assert_eq!(model.opset("com.microsoft"), Some(1));
            let g = &model.graph;
            let att = g.nodes().find(|&n| g.node(n).op.op_type() == "Attention").unwrap();
            let node = g.node(att);
            assert_eq!(node.attrs.get_int("num_heads"), Some(H));
            assert_eq!(node.attrs.get_float("scale"), Some(0.5));
            assert_eq!(node.attrs.get_float("mask_filter_value"), Some(-10000.0));
            let got = eval(&model);
            assert_eq!(want.len(), got.len());
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "[{i}] {a} vs {b} (merged {merged})");
            }
            assert!(notes.iter().any(|(_, n)| n.contains("fused into com.microsoft::Attention (2 heads")), "{notes:?}");
        }
    }

    #[test]
    fn near_misses_are_left_alone_and_explained() {
        // Softmax over the query axis is not attention's.
        let mut model = block(2, false);
        let before = ops(&model);
        let notes = run(&mut model, true);
        assert_eq!(ops(&model), before);
        assert!(notes.iter().any(|(_, n)| n.contains("Softmax is over axis 2, not the last")), "{notes:?}");
        // A target without com.microsoft ops keeps the block.
        let mut model = block(-1, false);
        let notes = run(&mut model, false);
        assert_eq!(ops(&model), before);
        assert!(notes.iter().any(|(_, n)| n.contains("does not run com.microsoft ops")), "{notes:?}");
    }
}
