//! `fuse-norm`: normalisations exported as chains of elementwise ops, fused into one op.
//!
//! - LayerNorm: `(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * gamma + beta` (the
//!   `ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add` form exporters write before opset 17,
//!   `Mul(d, d)` for the square and `Mul(d, Reciprocal(std))` for the division accepted) ->
//!   `LayerNormalization` (opset 17 and later).
//! - RMSNorm: `x / sqrt(mean(x^2) + eps) * gamma` (`Pow/ReduceMean/Add/Sqrt` then `Reciprocal`
//!   and `Mul`, or `Div`) -> `RMSNormalization` (opset 23 and later).
//! - On targets that run `com.microsoft` ops, a normalisation over the last axis of a residual
//!   `Add` becomes `SkipLayerNormalization` / `SkipSimplifiedLayerNormalization`, which also
//!   takes a bias added just before (`Add(MatMul(..), bias)`) and gives the sum to the readers
//!   of the `Add`. This also applies to existing `LayerNormalization`/`RMSNormalization` nodes,
//!   and lets models below opset 17 fuse their normalisations.
//!
//! The axes must be a suffix of the input's axes and gamma/beta constants that vary only over
//! them. The fused ops compute the same function with fewer roundings.

use super::{
    add_f32, add_op, align, ensure_domain, f32_const, feeds_quantizer, producer_op, replace_chain_n, single_use,
    with_scalar,
};
use crate::util::const_ints;
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::infer::Facts;
use optc_ir::{AttrList, Attribute, DType, DimValue, Graph, Model, NodeId, Op, Use, ValueId};

pub struct FuseNorm;

impl Pass for FuseNorm {
    fn name(&self) -> &str {
        "fuse-norm"
    }
    fn description(&self) -> &str {
        "fuse decomposed LayerNorm / RMSNorm into LayerNormalization (opset >= 17) / RMSNormalization \
         (opset >= 23), and with a residual Add into com.microsoft Skip(Simplified)LayerNormalization"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Rounding { rtol: 1e-4, atol: 1e-5 }
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let contrib = cx.target.contrib_ops;
        let mut used_contrib = false;
        let rewrites = crate::util::for_each_graph(model, &mut |g, opset| {
            let mut env = Env { opset, contrib, used_contrib: false };
            let n = run_graph(g, &mut env, cx);
            used_contrib |= env.used_contrib;
            n
        });
        if used_contrib {
            ensure_domain(model, "com.microsoft");
        }
        Ok(PassOutcome { rewrites })
    }
}

struct Env {
    opset: i64,
    contrib: bool,
    used_contrib: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Layer,
    Rms,
}

/// A matched normalisation: `x` normalised over its last `k` axes.
struct Norm {
    kind: Kind,
    x: ValueId,
    k: usize,
    eps: f32,
    gamma: Option<ValueId>,
    beta: Option<ValueId>,
    /// The node whose output is the normalisation's result.
    last: NodeId,
    /// The nodes of the chain that read `x` (they disappear with the fusion).
    readers_of_x: Vec<NodeId>,
    /// A single normalised axis that is not the last (channels-first LayerNorm over axis 1
    /// of NCHW): fused as Transpose -> LayerNormalization -> Transpose.
    inner_axis: Option<usize>,
}

fn run_graph(g: &mut Graph, env: &mut Env, cx: &mut PassContext) -> usize {
    let Ok(order) = g.topo_order() else { return 0 };
    let mut facts = optc_ir::infer::infer(g, env.opset);
    let mut n = 0;
    for id in order {
        if !g.contains_node(id) {
            continue;
        }
        let m = match g.node(id).op {
            Op::ReduceMean => match_layer(g, id, &facts, cx).or_else(|| match_rms(g, id, &facts, cx)),
            Op::LayerNormalization | Op::RMSNormalization if env.contrib => existing(g, id, &facts),
            _ => None,
        };
        if let Some(m) = m
            && emit(g, m, env, &facts, cx)
        {
            n += 1;
            // The fused op writes new values: later matches need their shapes.
            facts = optc_ir::infer::infer(g, env.opset);
        }
    }
    n
}

/// The axes a `ReduceMean` reduces (attribute before opset 18, input from 18), when it keeps
/// dims and the axes are given.
fn reduce_axes(g: &Graph, n: NodeId) -> Option<Vec<i64>> {
    let node = g.node(n);
    if node.attrs.get_int("keepdims").unwrap_or(1) != 1 {
        return None;
    }
    let axes = match node.attrs.get_ints("axes") {
        Some(a) => a.to_vec(),
        None => const_ints(g, node.input(1)?)?,
    };
    (!axes.is_empty()).then_some(axes)
}

/// The number of trailing axes `axes` covers, when they are exactly the last `k` axes of a
/// tensor of rank `rank` (if known; negative axes need no rank).
fn suffix_len(axes: &[i64], rank: Option<usize>) -> Option<usize> {
    let mut neg: Vec<i64> = axes
        .iter()
        .map(|&a| match (a < 0, rank) {
            (true, _) => Some(a),
            (false, Some(r)) if (a as usize) < r => Some(a - r as i64),
            _ => None,
        })
        .collect::<Option<_>>()?;
    neg.sort_unstable();
    neg.dedup();
    let k = neg.len();
    let ok = neg.iter().enumerate().all(|(i, &a)| a == -(k as i64) + i as i64);
    (ok && rank.is_none_or(|r| k <= r)).then_some(k)
}

fn rank(facts: &Facts, v: ValueId) -> Option<usize> {
    facts.shape(v).map(|s| s.len())
}

/// The known trailing `k` dims of `v`.
fn trailing_dims(facts: &Facts, v: ValueId, k: usize) -> Option<Vec<i64>> {
    let s = facts.shape(v)?;
    if s.len() < k {
        return None;
    }
    s[s.len() - k..]
        .iter()
        .map(|d| match d.value {
            DimValue::Known(x) => Some(x),
            _ => None,
        })
        .collect()
}

/// The binary node reading `v` as its only use, with the other operand.
fn next_binary(g: &Graph, v: ValueId, op: Op) -> Option<(NodeId, ValueId)> {
    let (n, slot) = single_use(g, v)?;
    let node = g.node(n);
    if node.op != op || node.inputs().len() != 2 {
        return None;
    }
    Some((n, node.input(1 - slot)?))
}

fn is_f32_const(g: &Graph, v: ValueId) -> bool {
    f32_const(g, v).is_some()
}

/// `Mul(n, gamma)` and then `Add(., beta)` after the normalised value `n` (produced by `last`).
fn affine_tail(g: &Graph, mut last: NodeId, want_beta: bool) -> (NodeId, Option<ValueId>, Option<ValueId>) {
    let (mut gamma, mut beta) = (None, None);
    let Some(out) = g.node(last).output(0) else { return (last, None, None) };
    if let Some((m, c)) = next_binary(g, out, Op::Mul)
        && is_f32_const(g, c)
    {
        gamma = Some(c);
        last = m;
    }
    if want_beta
        && let Some(out) = g.node(last).output(0)
        && let Some((a, c)) = next_binary(g, out, Op::Add)
        && is_f32_const(g, c)
    {
        beta = Some(c);
        last = a;
    }
    (last, gamma, beta)
}

/// `Add(v, eps)` -> `Sqrt` after `v`: (the Sqrt node, eps).
fn eps_sqrt(g: &Graph, v: ValueId) -> Option<(NodeId, f32)> {
    let (add, _) = single_use(g, v)?;
    if g.node(add).op != Op::Add {
        return None;
    }
    let (other, eps, _) = with_scalar(g, add)?;
    if other != v {
        return None;
    }
    let (sqrt, _) = single_use(g, g.node(add).output(0)?)?;
    (g.node(sqrt).op == Op::Sqrt).then_some((sqrt, eps as f32))
}

/// `d / s` where `s` is the output of `sqrt`: `Div(d, s)`, or `Mul(d, Reciprocal(s))`, or
/// `Mul(d, Div(1, s))`. Returns the node producing the quotient.
fn divided_by(g: &Graph, d: ValueId, sqrt: NodeId) -> Option<NodeId> {
    let s = g.node(sqrt).output(0)?;
    let (n, slot) = single_use(g, s)?;
    let node = g.node(n);
    match node.op {
        Op::Div if slot == 1 && node.input(0) == Some(d) => Some(n),
        Op::Reciprocal => {
            let (m, _) = next_binary(g, node.output(0)?, Op::Mul)?;
            (g.node(m).inputs().contains(&Some(d))).then_some(m)
        }
        Op::Div if slot == 1 && with_scalar(g, n).is_some_and(|(_, k, s)| s == 0 && (k - 1.0).abs() < 1e-12) => {
            let (m, _) = next_binary(g, node.output(0)?, Op::Mul)?;
            (g.node(m).inputs().contains(&Some(d))).then_some(m)
        }
        _ => None,
    }
}

/// The square of `v` read by the node `sq`: `Pow(v, 2)` or `Mul(v, v)`.
fn is_square_of(g: &Graph, sq: NodeId, v: ValueId) -> bool {
    let node = g.node(sq);
    match node.op {
        Op::Pow => node.input(0) == Some(v) && with_scalar(g, sq).is_some_and(|(_, k, s)| s == 1 && k == 2.0),
        Op::Mul => node.input(0) == Some(v) && node.input(1) == Some(v),
        _ => false,
    }
}

fn match_layer(g: &Graph, m1: NodeId, facts: &Facts, cx: &mut PassContext) -> Option<Norm> {
    let x = g.node(m1).input(0)?;
    let axes = reduce_axes(g, m1)?;
    let mean = g.node(m1).output(0)?;
    let (sub, slot) = single_use(g, mean)?;
    if g.node(sub).op != Op::Sub || slot != 1 || g.node(sub).input(0) != Some(x) {
        return None;
    }
    let d = g.node(sub).output(0)?;
    if g.is_graph_output(d) {
        return None;
    }
    // d is read by the square and by the division, nothing else.
    let mut readers: Vec<NodeId> = g.uses(d).into_iter().map(|(n, _)| n).collect();
    readers.sort_unstable();
    readers.dedup();
    if readers.len() != 2 {
        return None;
    }
    let (sq, div) = if is_square_of(g, readers[0], d) { (readers[0], readers[1]) } else { (readers[1], readers[0]) };
    if !is_square_of(g, sq, d) {
        return None;
    }
    let (m2, _) = single_use(g, g.node(sq).output(0)?)?;
    if g.node(m2).op != Op::ReduceMean {
        return None;
    }
    let r = rank(facts, x);
    let name = g.node(m1).display_name();
    let axes2 = reduce_axes(g, m2)?;
    let single = |a: &[i64]| match (a, r) {
        ([a], Some(r)) => {
            let a = if *a < 0 { *a + r as i64 } else { *a };
            (0..r as i64).contains(&a).then_some(a as usize)
        }
        _ => None,
    };
    let inner_axis = match (suffix_len(&axes, r), single(&axes), single(&axes2), r) {
        (None, Some(a), Some(b), Some(r)) if a == b && a + 1 < r => Some(a),
        _ => None,
    };
    let k = suffix_len(&axes, r).or(inner_axis.map(|_| 1));
    let k2 = suffix_len(&axes2, r).or(inner_axis.map(|_| 1));
    let (Some(k), Some(k2)) = (k, k2) else {
        cx.note(|| format!("LayerNorm at '{name}': the mean is not over the last axes (axes {axes:?})"));
        return None;
    };
    if k != k2 {
        cx.note(|| format!("LayerNorm at '{name}': the two means reduce different axes"));
        return None;
    }
    let Some((sqrt, eps)) = eps_sqrt(g, g.node(m2).output(0)?) else {
        cx.note(|| format!("LayerNorm at '{name}': epsilon is not a constant added before Sqrt"));
        return None;
    };
    let q = divided_by(g, d, sqrt)?;
    if q != div {
        return None;
    }
    let (last, gamma, beta) = affine_tail(g, q, true);
    Some(Norm { kind: Kind::Layer, x, k, eps, gamma, beta, last, readers_of_x: vec![m1, sub], inner_axis })
}

fn match_rms(g: &Graph, m: NodeId, facts: &Facts, cx: &mut PassContext) -> Option<Norm> {
    let sq_out = g.node(m).input(0)?;
    let (sq, _) = g.producer(sq_out)?;
    let x = g.node(sq).input(0)?;
    if !is_square_of(g, sq, x) || single_use(g, sq_out).is_none() {
        return None;
    }
    let axes = reduce_axes(g, m)?;
    let name = g.node(m).display_name();
    let Some(k) = suffix_len(&axes, rank(facts, x)) else {
        cx.note(|| format!("RMSNorm at '{name}': the mean is not over the last axes (axes {axes:?})"));
        return None;
    };
    let Some((sqrt, eps)) = eps_sqrt(g, g.node(m).output(0)?) else {
        cx.note(|| format!("RMSNorm at '{name}': epsilon is not a constant added before Sqrt"));
        return None;
    };
    let q = divided_by(g, x, sqrt)?;
    let (last, gamma, _) = affine_tail(g, q, false);
    Some(Norm { kind: Kind::Rms, x, k, eps, gamma, beta: None, last, readers_of_x: vec![sq, q], inner_axis: None })
}

/// Whether the target runs the Skip form of a normalisation over `numel` f32 elements at least
/// as fast as the `Add` and the normalisation apart (LIFE's roofline with the target's
/// `op_efficiency`: onnxruntime's CPU SkipLayerNormalization is several times slower than the two
/// ops it replaces). `sum_out`: the residual sum is also written for other readers.
fn skip_pays(t: &optc_cost::Target, kind: Kind, numel: f64, sum_out: bool) -> bool {
    let (skip_op, norm_op) = match kind {
        Kind::Layer => ("com.microsoft::SkipLayerNormalization", "LayerNormalization"),
        Kind::Rms => ("com.microsoft::SkipSimplifiedLayerNormalization", "RMSNormalization"),
    };
    let p = optc_cost::Precision::F32;
    let (k_skip, k_norm) = (t.op_efficiency_of(skip_op), t.op_efficiency_of(norm_op));
    let (add_bytes, norm_bytes) = (12.0 * numel, 8.0 * numel);
    let skip_bytes = if sum_out { 16.0 * numel } else { 12.0 * numel };
    let fused = t.op_time(9.0 * numel / k_skip, skip_bytes / k_skip, p, true).time_s;
    let apart = t.op_time(numel, add_bytes, p, true).time_s
        + t.op_time(8.0 * numel / k_norm, norm_bytes / k_norm, p, true).time_s;
    fused <= apart
}

/// An existing `LayerNormalization`/`RMSNormalization` over the last axis, as a candidate for
/// the Skip form.
fn existing(g: &Graph, n: NodeId, facts: &Facts) -> Option<Norm> {
    let node = g.node(n);
    if node.outputs().iter().skip(1).any(|o| o.is_some_and(|o| !g.is_unused(o))) {
        return None;
    }
    let x = node.input(0)?;
    let axis = node.attrs.get_int("axis").unwrap_or(-1);
    let r = rank(facts, x)?;
    if axis != -1 && axis != r as i64 - 1 {
        return None;
    }
    if node.attrs.get_int("stash_type").unwrap_or(1) != 1 || producer_op(g, x, Op::Add).is_none() {
        return None;
    }
    let kind = if node.op == Op::LayerNormalization { Kind::Layer } else { Kind::Rms };
    let eps = node.attrs.get_float("epsilon").unwrap_or(1e-5);
    let gamma = node.input(1).filter(|&v| is_f32_const(g, v))?;
    let beta = node.input(2);
    if beta.is_some_and(|b| !is_f32_const(g, b)) {
        return None;
    }
    Some(Norm { kind, x, k: 1, eps, gamma: Some(gamma), beta, last: n, readers_of_x: vec![n], inner_axis: None })
}

/// A constant over the normalised axes as a tensor of exactly those dims (`norm_dims`):
/// leading 1s dropped, a single value repeated.
fn over_axes(g: &mut Graph, v: Option<ValueId>, norm_dims: &[i64], fill: f32, base: &str) -> Option<ValueId> {
    let numel: i64 = norm_dims.iter().product();
    let Some(v) = v else {
        return add_f32(g, base, norm_dims.to_vec(), &vec![fill; numel as usize]);
    };
    let (data, dims) = f32_const(g, v)?;
    let stripped: Vec<i64> = dims.iter().copied().skip_while(|&d| d == 1).collect();
    if stripped.as_slice() == norm_dims {
        if dims.as_slice() == norm_dims {
            return Some(v);
        }
        return add_f32(g, base, norm_dims.to_vec(), &data);
    }
    if data.len() == 1 {
        return add_f32(g, base, norm_dims.to_vec(), &vec![data[0]; numel as usize]);
    }
    // Broadcast over the normalised axes only: right-aligned, 1 or equal per axis.
    let a = align(&stripped, norm_dims.len())?;
    if a.iter().zip(norm_dims).any(|(&d, &n)| d != 1 && d != n) {
        return None;
    }
    let mut out = vec![0f32; numel as usize];
    for (i, o) in out.iter_mut().enumerate() {
        let (mut rem, mut src, mut stride) = (i as i64, 0i64, 1i64);
        let mut idx = vec![0i64; norm_dims.len()];
        for ax in (0..norm_dims.len()).rev() {
            idx[ax] = rem % norm_dims[ax];
            rem /= norm_dims[ax];
        }
        for ax in (0..norm_dims.len()).rev() {
            if a[ax] != 1 {
                src += idx[ax] * stride;
            }
            stride *= a[ax];
        }
        *o = *data.get(src as usize)?;
    }
    add_f32(g, base, norm_dims.to_vec(), &out)
}

/// Whether the constant `v` (if any) varies only over the last `k` of `rank` axes.
fn only_over_axes(g: &Graph, v: Option<ValueId>, k: usize) -> bool {
    let Some(v) = v else { return true };
    let Some((_, dims)) = f32_const(g, v) else { return false };
    let lead = dims.len().saturating_sub(k);
    dims[..lead].iter().all(|&d| d == 1)
}

/// The residual Add feeding `x` when the Skip form applies: (input, skip, bias, whether the
/// sum has other readers).
fn skip_parts(g: &Graph, m: &Norm, facts: &Facts) -> Option<(ValueId, ValueId, Option<ValueId>, bool)> {
    if m.k != 1 {
        return None;
    }
    let r = rank(facts, m.x)?;
    if !(2..=3).contains(&r) {
        return None;
    }
    let add = producer_op(g, m.x, Op::Add)?;
    if g.is_graph_output(m.x) || g.is_graph_input(m.x) {
        return None;
    }
    let (a, b) = (g.node(add).input(0)?, g.node(add).input(1)?);
    let same = |u: ValueId, v: ValueId| match (facts.shape(u), facts.shape(v)) {
        (Some(s), Some(t)) => s == t && s.iter().all(|d| !matches!(d.value, DimValue::Unknown)),
        _ => false,
    };
    if !same(a, m.x) || !same(b, m.x) {
        return None;
    }
    let hidden = trailing_dims(facts, m.x, 1)?[0];
    let others = g.uses(m.x).into_iter().any(|(n, u)| !m.readers_of_x.contains(&n) || !matches!(u, Use::Input(_)));
    // A bias added to one operand just before: Add(t, bias[hidden]).
    for (t_in, skip) in [(a, b), (b, a)] {
        if let Some(badd) = producer_op(g, t_in, Op::Add)
            && single_use(g, t_in).is_some()
        {
            let (p, q) = (g.node(badd).input(0)?, g.node(badd).input(1)?);
            for (t, bias) in [(p, q), (q, p)] {
                if let Some((_, dims)) = f32_const(g, bias)
                    && dims == [hidden]
                    && same(t, m.x)
                {
                    return Some((t, skip, Some(bias), others));
                }
            }
        }
    }
    Some((a, b, None, others))
}

fn emit(g: &mut Graph, m: Norm, env: &mut Env, facts: &Facts, cx: &mut PassContext) -> bool {
    let name = g.node(m.last).display_name();
    let what = if m.kind == Kind::Layer { "LayerNorm" } else { "RMSNorm" };
    if facts.elem(m.x).is_some_and(|t| t != DType::F32) {
        cx.note(|| format!("{what} ending at '{name}' not fused: only float32 is handled"));
        return false;
    }
    if let Some(a) = m.inner_axis {
        return emit_inner_axis(g, &m, a, env, facts, cx);
    }
    if !only_over_axes(g, m.gamma, m.k) || !only_over_axes(g, m.beta, m.k) {
        cx.note(|| format!("{what} ending at '{name}' not fused: gamma/beta vary over other axes"));
        return false;
    }
    let quantised = g.node(m.last).output(0).is_some_and(|o| feeds_quantizer(g, o));
    if quantised {
        cx.note(|| format!("{what} ending at '{name}' not fused: a quantiser reads it (fusing changes rounding)"));
        return false;
    }
    let mut skip = if env.contrib { skip_parts(g, &m, facts) } else { None };
    if skip.is_some() && feeds_quantizer(g, m.x) {
        skip = None;
    }
    if let Some((_, _, _, others)) = skip {
        let numel =
            facts.shape(m.x).and_then(|s| s.iter().map(|d| d.as_known()).product::<Option<i64>>()).unwrap_or(1 << 16)
                as f64;
        if !skip_pays(&cx.target, m.kind, numel, others) {
            let tname = cx.target.name.clone();
            cx.note(|| {
                format!(
                    "{what} ending at '{name}': residual Add kept apart, LIFE predicts the Skip form slower than \
                     Add + norm on target '{tname}' (op_efficiency)"
                )
            });
            skip = None;
        }
    }
    let std_ok = match m.kind {
        Kind::Layer => env.opset >= 17,
        Kind::Rms => env.opset >= 23,
    };
    let is_existing = matches!(g.node(m.last).op, Op::LayerNormalization | Op::RMSNormalization);
    if skip.is_none() && (!std_ok || is_existing) {
        if !is_existing {
            let need = if m.kind == Kind::Layer { 17 } else { 23 };
            cx.note(|| {
                format!(
                    "{what} ending at '{name}' not fused: needs opset {need} (the model imports {}){}",
                    env.opset,
                    if env.contrib { " or a residual Add before it over the last axis" } else { "" }
                )
            });
        }
        return false;
    }
    let Some(norm_dims) = trailing_dims(facts, m.x, m.k) else {
        cx.note(|| format!("{what} ending at '{name}' not fused: the normalised dims are not known"));
        return false;
    };
    if !cx.rewrite() {
        return false;
    }
    let Some(gamma) = over_axes(g, m.gamma, &norm_dims, 1.0, "norm.weight") else {
        cx.note(|| format!("{what} ending at '{name}' not fused: gamma does not broadcast to the normalised dims"));
        return false;
    };
    let beta = match m.beta {
        Some(b) => match over_axes(g, Some(b), &norm_dims, 0.0, "norm.bias") {
            Some(v) => Some(v),
            None => {
                cx.note(|| format!("{what} ending at '{name}' not fused: beta does not broadcast"));
                return false;
            }
        },
        None => None,
    };
    let eps = Attribute::float("epsilon", m.eps);
    if let Some((input, skip, bias, others)) = skip {
        let add = g.producer(m.x).map(|(n, _)| n);
        let op_type = if m.kind == Kind::Layer { "SkipLayerNormalization" } else { "SkipSimplifiedLayerNormalization" };
        let mut inputs = vec![Some(input), Some(skip), Some(gamma)];
        match m.kind {
            Kind::Layer if bias.is_some() => inputs.extend([beta, bias]),
            Kind::Layer => inputs.push(beta),
            Kind::Rms => inputs.extend(bias.map(Some)),
        }
        let op = Op::from_onnx("com.microsoft", op_type);
        let sum = m.x;
        let slots: &[bool] = if others { &[true, false, false, true] } else { &[true] };
        let Some((_, outs)) = replace_chain_n(g, m.last, op, inputs, vec![eps], slots, cx) else {
            return false;
        };
        if let Some(Some(sum_out)) = outs.get(3) {
            // The other readers of the residual sum now read the fused op's fourth output.
            g.replace_uses(sum, *sum_out);
            if let Some(add) = add
                && g.contains_node(add)
            {
                let ins: Vec<ValueId> = g.node(add).inputs().iter().flatten().copied().collect();
                g.remove_node(add);
                for v in ins {
                    super::drop_dead_from(g, v);
                }
            }
        }
        env.used_contrib = true;
        return true;
    }
    let (op, inputs) = match m.kind {
        Kind::Layer => (Op::LayerNormalization, vec![Some(m.x), Some(gamma), beta]),
        Kind::Rms => (Op::RMSNormalization, vec![Some(m.x), Some(gamma)]),
    };
    let attrs = vec![Attribute::int("axis", -(m.k as i64)), eps];
    replace_chain_n(g, m.last, op, inputs, attrs, &[true], cx).is_some()
}

/// A LayerNorm over one inner axis `a` (channels-first): `Transpose` moving `a` last,
/// `LayerNormalization(axis=-1)` with gamma/beta as vectors, and the inverse `Transpose`.
fn emit_inner_axis(g: &mut Graph, m: &Norm, a: usize, env: &Env, facts: &Facts, cx: &mut PassContext) -> bool {
    let name = g.node(m.last).display_name();
    if env.opset < 17 {
        cx.note(|| format!("LayerNorm ending at '{name}' not fused: needs opset 17 (the model imports {})", env.opset));
        return false;
    }
    let (Some(shape), Some(DType::F32)) = (facts.shape(m.x), facts.elem(m.x)) else {
        cx.note(|| format!("LayerNorm ending at '{name}' not fused: the input's shape or type is not known"));
        return false;
    };
    let r = shape.len();
    let Some(c) = shape[a].as_known() else {
        cx.note(|| format!("LayerNorm ending at '{name}' not fused: the normalised dim is not known"));
        return false;
    };
    let vec_of = |g: &Graph, v: Option<ValueId>, fill: f32| -> Option<Vec<f32>> {
        match v {
            None => Some(vec![fill; c as usize]),
            Some(v) => {
                let (data, dims) = f32_const(g, v)?;
                super::per_axis(&data, &dims, r, a, c as usize)
            }
        }
    };
    let (Some(gv), Some(bv)) = (vec_of(g, m.gamma, 1.0), vec_of(g, m.beta, 0.0)) else {
        cx.note(|| format!("LayerNorm ending at '{name}' not fused: gamma/beta vary over other axes"));
        return false;
    };
    if !cx.rewrite() {
        return false;
    }
    let mut perm: Vec<i64> = (0..r as i64).filter(|&i| i != a as i64).collect();
    perm.push(a as i64);
    let mut inv = vec![0i64; r];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    let (Some(gamma), Some(beta)) = (add_f32(g, "norm.weight", vec![c], &gv), add_f32(g, "norm.bias", vec![c], &bv))
    else {
        return false;
    };
    let base = g.node(m.last).name.clone().unwrap_or_else(|| "layernorm".into());
    let Some(xt) = add_op(
        g,
        Op::Transpose,
        vec![Some(m.x)],
        vec![Attribute::ints("perm", perm)],
        &format!("{base}_to_last"),
        m.last,
    ) else {
        return false;
    };
    let attrs = vec![Attribute::int("axis", -1), Attribute::float("epsilon", m.eps)];
    let Some(y) = add_op(
        g,
        Op::LayerNormalization,
        vec![Some(xt), Some(gamma), Some(beta)],
        attrs,
        &format!("{base}_LayerNormalization"),
        m.last,
    ) else {
        return false;
    };
    replace_chain_n(g, m.last, Op::Transpose, vec![Some(y)], vec![Attribute::ints("perm", inv)], &[true], cx).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_axes() {
        assert_eq!(suffix_len(&[-1], None), Some(1));
        assert_eq!(suffix_len(&[2], Some(3)), Some(1));
        assert_eq!(suffix_len(&[-1, -2], None), Some(2));
        assert_eq!(suffix_len(&[1, 2], Some(3)), Some(2));
        assert_eq!(suffix_len(&[1], Some(3)), None);
        assert_eq!(suffix_len(&[2], None), None);
        assert_eq!(suffix_len(&[-3, -1], None), None);
    }
}
