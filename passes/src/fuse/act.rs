//! `fuse-act`: activation functions exported as chains of elementwise ops, fused into one op.
//!
//! - HardSigmoid: `Clip(x + 3, 0, 6) / 6` (or `* (1/6)`) -> `HardSigmoid(alpha=1/6, beta=0.5)`.
//! - HardSwish: `x * Clip(x + 3, 0, 6) / 6`, `x * HardSigmoid(x)` with alpha 1/6 and beta 0.5 ->
//!   `HardSwish` (opset 14 and later).
//! - GELU (erf form): `x * 0.5 * (1 + Erf(x / sqrt 2))` in its exported orderings -> `Gelu`
//!   (opset 20 and later), or `com.microsoft::Gelu` on targets that run contrib ops.
//!
//! The fused ops compute the same function with fewer roundings, so results differ from the
//! original by float rounding only.

use super::single_use;
use crate::util::{const_tensor, forward_output};
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::{AttrList, Attribute, Graph, Model, NodeId, NodeSpec, Op, OpsetImport, ValueId};

pub struct FuseAct;

impl Pass for FuseAct {
    fn name(&self) -> &str {
        "fuse-act"
    }
    fn description(&self) -> &str {
        "fuse exported activation chains: HardSigmoid, HardSwish, GELU (erf form)"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Rounding { rtol: 1e-4, atol: 1e-5 }
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let opset = model.opset("").unwrap_or(1);
        let contrib = cx.target.contrib_ops;
        let mut used_contrib = false;
        let rewrites =
            crate::util::for_each_graph(model, &mut |g, _| run_graph(g, opset, contrib, &mut used_contrib, cx));
        if used_contrib && model.opset("com.microsoft").is_none() {
            model.opset_imports.push(OpsetImport::new("com.microsoft", 1));
        }
        Ok(PassOutcome { rewrites })
    }
}

fn run_graph(g: &mut Graph, opset: i64, contrib: bool, used_contrib: &mut bool, cx: &mut PassContext) -> usize {
    let mut n = 0;
    // HardSigmoid first: HardSwish then matches `x * HardSigmoid(x)`.
    for pass in 0..3 {
        let Ok(order) = g.topo_order() else { return n };
        for id in order {
            if !g.contains_node(id) {
                continue;
            }
            let done = match pass {
                0 => hard_sigmoid(g, id, cx),
                1 => opset >= 14 && hard_swish(g, id, cx),
                _ => gelu(g, id, opset, contrib, used_contrib, cx),
            };
            n += done as usize;
        }
    }
    n
}

/// A scalar float constant's value (any shape with one element).
fn scalar(g: &Graph, v: ValueId) -> Option<f64> {
    let t = const_tensor(g, v)?;
    if t.numel()? != 1 {
        return None;
    }
    match t.dtype {
        optc_ir::DType::F32 => t.to_f32_vec()?.first().map(|&x| x as f64),
        _ => None,
    }
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

/// The node producing `v` if it is `op`.
fn producer_op(g: &Graph, v: ValueId, op: Op) -> Option<NodeId> {
    let (p, _) = g.producer(v)?;
    (g.node(p).op == op).then_some(p)
}

/// For a binary node with one scalar-constant operand: (the other operand, the constant, its slot).
fn with_scalar(g: &Graph, n: NodeId) -> Option<(ValueId, f64, usize)> {
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

/// `Clip(x + 3, 0, 6)`: returns x.
fn relu6_plus3(g: &Graph, clip: NodeId) -> Option<ValueId> {
    let node = g.node(clip);
    if node.op != Op::Clip {
        return None;
    }
    let (lo, hi) = if node.inputs().len() > 1 {
        (scalar(g, node.input(1)?)?, scalar(g, node.input(2)?)?)
    } else {
        (node.attrs.get_float("min")? as f64, node.attrs.get_float("max")? as f64)
    };
    if !(near(lo, 0.0) && near(hi, 6.0)) {
        return None;
    }
    let add = producer_op(g, node.input(0)?, Op::Add)?;
    let (x, k, _) = with_scalar(g, add)?;
    near(k, 3.0).then_some(x)
}

/// `y / 6` or `y * (1/6)` at node `n`: returns y.
fn div6(g: &Graph, n: NodeId) -> Option<ValueId> {
    let op = g.node(n).op.clone();
    let (y, k, slot) = with_scalar(g, n)?;
    match op {
        Op::Div if slot == 1 && near(k, 6.0) => Some(y),
        Op::Mul if near(k, 1.0 / 6.0) => Some(y),
        _ => None,
    }
}

/// Replaces the chain ending at `last` by one node `op(x)`, writing `last`'s output.
fn replace(g: &mut Graph, last: NodeId, op: Op, x: ValueId, attrs: Vec<Attribute>, cx: &mut PassContext) -> bool {
    let Some(out) = g.node(last).output(0) else { return false };
    let name = g.node(last).display_name();
    let tmp_name = g.fresh_name(&format!("{}_fused", g.value(out).name));
    let Ok(tmp) = g.add_value(tmp_name, None) else { return false };
    let mut spec = NodeSpec::new(op.clone(), vec![Some(x)], vec![Some(tmp)]).attrs(attrs);
    if let Some(nm) = &g.node(last).name {
        spec = spec.named(format!("{nm}_{op}"));
    }
    let Ok(id) = g.add_node(spec) else { return false };
    g.place_like(id, last);
    let old_inputs: Vec<ValueId> = g.node(last).inputs().iter().flatten().copied().collect();
    if !forward_output(g, last, tmp) {
        g.remove_node(id);
        cx.note(|| format!("{op} ending at '{name}' not fused: it writes a graph output that cannot be renamed"));
        return false;
    }
    for v in old_inputs {
        super::drop_dead_from(g, v);
    }
    cx.note(|| format!("fused {op} ending at '{name}'"));
    true
}

fn hard_sigmoid(g: &mut Graph, n: NodeId, cx: &mut PassContext) -> bool {
    if !matches!(g.node(n).op, Op::Div | Op::Mul) {
        return false;
    }
    let Some(y) = div6(g, n) else { return false };
    let Some(clip) = producer_op(g, y, Op::Clip) else { return false };
    let Some(x) = relu6_plus3(g, clip) else { return false };
    if single_use(g, y).is_none() {
        cx.note(|| format!("HardSigmoid at '{}' not fused: the Clip has other readers", g.node(n).display_name()));
        return false;
    }
    if !cx.rewrite() {
        return false;
    }
    let attrs = vec![Attribute::float("alpha", 1.0 / 6.0), Attribute::float("beta", 0.5)];
    replace(g, n, Op::HardSigmoid, x, attrs, cx)
}

fn hard_swish(g: &mut Graph, n: NodeId, cx: &mut PassContext) -> bool {
    let op = g.node(n).op.clone();
    // x * HardSigmoid(x)
    if op == Op::Mul && g.node(n).inputs().len() == 2 {
        let (a, b) = match (g.node(n).input(0), g.node(n).input(1)) {
            (Some(a), Some(b)) => (a, b),
            _ => return false,
        };
        for (x, h) in [(a, b), (b, a)] {
            let Some(hs) = producer_op(g, h, Op::HardSigmoid) else { continue };
            let node = g.node(hs);
            let alpha = node.attrs.get_float("alpha").unwrap_or(0.2) as f64;
            let beta = node.attrs.get_float("beta").unwrap_or(0.5) as f64;
            if node.input(0) != Some(x) || !near(alpha, 1.0 / 6.0) || !near(beta, 0.5) || single_use(g, h).is_none() {
                continue;
            }
            if !cx.rewrite() {
                return false;
            }
            return replace(g, n, Op::HardSwish, x, vec![], cx);
        }
    }
    // (x * Clip(x + 3, 0, 6)) / 6
    if matches!(op, Op::Div | Op::Mul) {
        let Some(y) = div6(g, n) else { return false };
        let Some(m) = producer_op(g, y, Op::Mul) else { return false };
        let (Some(a), Some(b)) = (g.node(m).input(0), g.node(m).input(1)) else { return false };
        for (x, c) in [(a, b), (b, a)] {
            let Some(clip) = producer_op(g, c, Op::Clip) else { continue };
            if relu6_plus3(g, clip) != Some(x) || single_use(g, c).is_none() || single_use(g, y).is_none() {
                continue;
            }
            if !cx.rewrite() {
                return false;
            }
            return replace(g, n, Op::HardSwish, x, vec![], cx);
        }
    }
    false
}

/// `Erf(x / sqrt2)` or `Erf(x * (1/sqrt2))` at node `erf`: returns x.
fn erf_of_scaled(g: &Graph, erf: NodeId) -> Option<ValueId> {
    let v = g.node(erf).input(0)?;
    let (p, _) = g.producer(v)?;
    let (x, k, slot) = with_scalar(g, p)?;
    let s2 = std::f64::consts::SQRT_2;
    match g.node(p).op {
        Op::Div if slot == 1 && (k - s2).abs() < 1e-4 => Some(x),
        Op::Mul if (k - 1.0 / s2).abs() < 1e-4 => Some(x),
        _ => None,
    }
}

fn gelu(g: &mut Graph, n: NodeId, opset: i64, contrib: bool, used_contrib: &mut bool, cx: &mut PassContext) -> bool {
    if g.node(n).op != Op::Erf {
        return false;
    }
    let Some(x) = erf_of_scaled(g, n) else { return false };
    let Some(e) = g.node(n).output(0) else { return false };
    // 1 + erf
    let Some((add, _)) = single_use(g, e) else { return false };
    if g.node(add).op != Op::Add || !with_scalar(g, add).is_some_and(|(_, k, _)| near(k, 1.0)) {
        return false;
    }
    let Some(a) = g.node(add).output(0) else { return false };
    let Some((m1, _)) = single_use(g, a) else { return false };
    if g.node(m1).op != Op::Mul || g.node(m1).inputs().len() != 2 {
        return false;
    }
    let Some(other) = g.node(m1).inputs().iter().flatten().copied().find(|&v| v != a) else { return false };
    // Either m1 = x * (1 + erf) followed by * 0.5, or m1 = (x * 0.5) * (1 + erf).
    let (last, _) = if other == x {
        let Some(o) = g.node(m1).output(0) else { return false };
        let Some((m2, _)) = single_use(g, o) else { return false };
        if g.node(m2).op != Op::Mul || !with_scalar(g, m2).is_some_and(|(_, k, _)| near(k, 0.5)) {
            return false;
        }
        (m2, m1)
    } else {
        let Some(h) = producer_op(g, other, Op::Mul) else { return false };
        match with_scalar(g, h) {
            Some((hx, k, _)) if hx == x && near(k, 0.5) && single_use(g, other).is_some() => (m1, h),
            _ => return false,
        }
    };
    let name = g.node(last).display_name();
    let op = if opset >= 20 {
        Op::Gelu
    } else if contrib {
        Op::from_onnx("com.microsoft", "Gelu")
    } else {
        cx.note(|| format!("GELU at '{name}' not fused: needs opset 20 or a target with com.microsoft ops"));
        return false;
    };
    if !cx.rewrite() {
        return false;
    }
    let is_contrib = op.is_opaque();
    let done = replace(g, last, op, x, vec![], cx);
    *used_contrib |= done && is_contrib;
    done
}
