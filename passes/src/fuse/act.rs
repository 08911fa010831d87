//! `fuse-act`: activation functions exported as chains of elementwise ops, fused into one op.
//!
//! - HardSigmoid: `Clip(x + 3, 0, 6) / 6` (or `* (1/6)`) -> `HardSigmoid(alpha=1/6, beta=0.5)`.
//! - HardSwish: `x * Clip(x + 3, 0, 6) / 6`, `x * HardSigmoid(x)` with alpha 1/6 and beta 0.5 ->
//!   `HardSwish` (opset 14 and later).
//! - GELU, erf form: `x * 0.5 * (1 + Erf(x / sqrt 2))` in its exported orderings -> `Gelu`
//!   (opset 20 and later), or `com.microsoft::Gelu` on targets that run contrib ops.
//! - GELU, tanh form: `0.5 x (1 + Tanh(sqrt(2/pi) (x + 0.044715 x^3)))` -> `Gelu(approximate=tanh)`
//!   (opset 20 and later) or `com.microsoft::FastGelu`.
//!
//! On targets that run `com.microsoft` ops:
//! - SiLU / QuickGELU: `x * Sigmoid(x)`, `x * Sigmoid(alpha x)` -> `QuickGelu(alpha)`.
//! - Bias + GELU: `Gelu(x + b)` with a constant bias over the last axis -> `BiasGelu(x, b)`
//!   (erf form) or `FastGelu(x, b)` (tanh form).
//! - On targets that also fuse activations into convolutions (`fused_activations`): `Conv`
//!   followed by Relu, LeakyRelu, Sigmoid, Tanh, HardSigmoid or Clip -> `FusedConv`.
//!
//! The fused ops compute the same function with fewer roundings, so results differ from the
//! original by float rounding only.

use super::{near, producer_op, scalar, single_use, with_scalar};
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::{AttrList, AttrValue, Attribute, Graph, Model, NodeId, Op, OpsetImport, ValueId};

pub struct FuseAct;

impl Pass for FuseAct {
    fn name(&self) -> &str {
        "fuse-act"
    }
    fn description(&self) -> &str {
        "fuse exported activation chains: HardSigmoid, HardSwish, GELU (erf and tanh forms); with com.microsoft \
         ops also SiLU/QuickGELU, bias+GELU, and Conv+activation (FusedConv) where the target fuses activations"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Rounding { rtol: 1e-4, atol: 1e-5 }
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let opset = model.opset("").unwrap_or(1);
        let contrib = cx.target.contrib_ops;
        let fused_conv = contrib && cx.target.fused_activations;
        let mut used_contrib = false;
        let rewrites = crate::util::for_each_graph(model, &mut |g, _| {
            run_graph(g, opset, contrib, fused_conv, &mut used_contrib, cx)
        });
        if used_contrib && model.opset("com.microsoft").is_none() {
            model.opset_imports.push(OpsetImport::new("com.microsoft", 1));
        }
        Ok(PassOutcome { rewrites })
    }
}

fn run_graph(
    g: &mut Graph,
    opset: i64,
    contrib: bool,
    fused_conv: bool,
    used_contrib: &mut bool,
    cx: &mut PassContext,
) -> usize {
    let mut n = 0;
    // HardSigmoid first: HardSwish then matches `x * HardSigmoid(x)`; GELU before bias+GELU;
    // FusedConv last, on the activations the earlier steps produced.
    for step in 0..6 {
        if (3..=4).contains(&step) && !contrib || step == 5 && !fused_conv {
            continue;
        }
        let Ok(order) = g.topo_order() else { return n };
        let facts = if step == 4 { Some(optc_ir::infer::infer(g, opset)) } else { None };
        for id in order {
            if !g.contains_node(id) {
                continue;
            }
            let done = match step {
                0 => hard_sigmoid(g, id, cx),
                1 => opset >= 14 && hard_swish(g, id, cx),
                2 => gelu(g, id, opset, contrib, used_contrib, cx),
                3 => quick_gelu(g, id, used_contrib, cx),
                4 => bias_gelu(g, id, facts.as_ref().expect("facts"), used_contrib, cx),
                _ => fused_conv_act(g, id, used_contrib, cx),
            };
            n += done as usize;
        }
    }
    n
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
    super::replace_chain(g, last, op, vec![Some(x)], attrs, cx).is_some()
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

/// `x^3` at value `v`: `Pow(x, 3)` or `x * x * x` in either grouping. Returns x.
fn cube_of(g: &Graph, v: ValueId) -> Option<ValueId> {
    let (p, _) = g.producer(v)?;
    let node = g.node(p);
    match node.op {
        Op::Pow => {
            let (x, k, slot) = with_scalar(g, p)?;
            (slot == 1 && k == 3.0).then_some(x)
        }
        Op::Mul => {
            let (a, b) = (node.input(0)?, node.input(1)?);
            for (x, sq) in [(a, b), (b, a)] {
                if let Some(m) = producer_op(g, sq, Op::Mul)
                    && g.node(m).input(0) == Some(x)
                    && g.node(m).input(1) == Some(x)
                {
                    return Some(x);
                }
            }
            None
        }
        _ => None,
    }
}

/// `Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))` at node `tanh`: returns x.
fn tanh_inner(g: &Graph, tanh: NodeId) -> Option<ValueId> {
    let v = g.node(tanh).input(0)?;
    let scale = producer_op(g, v, Op::Mul)?;
    let (u, k, _) = with_scalar(g, scale)?;
    if (k - (2.0 / std::f64::consts::PI).sqrt()).abs() > 1e-4 {
        return None;
    }
    let add = producer_op(g, u, Op::Add)?;
    let (a, b) = (g.node(add).input(0)?, g.node(add).input(1)?);
    for (x, w) in [(a, b), (b, a)] {
        let Some(m) = producer_op(g, w, Op::Mul) else { continue };
        let Some((c, k, _)) = with_scalar(g, m) else { continue };
        if (k - 0.044715).abs() < 1e-6 && cube_of(g, c) == Some(x) {
            return Some(x);
        }
    }
    None
}

/// The `0.5 * x * (1 + t)` tail after `t` (the output of Erf or Tanh): (last node).
fn gelu_tail(g: &Graph, t: ValueId, x: ValueId) -> Option<NodeId> {
    // 1 + t
    let (add, _) = single_use(g, t)?;
    if g.node(add).op != Op::Add || !with_scalar(g, add).is_some_and(|(_, k, _)| near(k, 1.0)) {
        return None;
    }
    let a = g.node(add).output(0)?;
    let (m1, _) = single_use(g, a)?;
    if g.node(m1).op != Op::Mul || g.node(m1).inputs().len() != 2 {
        return None;
    }
    let other = g.node(m1).inputs().iter().flatten().copied().find(|&v| v != a)?;
    // Either m1 = x * (1 + t) followed by * 0.5, or m1 = (x * 0.5) * (1 + t).
    if other == x {
        let o = g.node(m1).output(0)?;
        let (m2, _) = single_use(g, o)?;
        if g.node(m2).op != Op::Mul || !with_scalar(g, m2).is_some_and(|(_, k, _)| near(k, 0.5)) {
            return None;
        }
        return Some(m2);
    }
    let h = producer_op(g, other, Op::Mul)?;
    match with_scalar(g, h) {
        Some((hx, k, _)) if hx == x && near(k, 0.5) && single_use(g, other).is_some() => Some(m1),
        _ => None,
    }
}

fn gelu(g: &mut Graph, n: NodeId, opset: i64, contrib: bool, used_contrib: &mut bool, cx: &mut PassContext) -> bool {
    let (x, tanh) = match g.node(n).op {
        Op::Erf => match erf_of_scaled(g, n) {
            Some(x) => (x, false),
            None => return false,
        },
        Op::Tanh => match tanh_inner(g, n) {
            Some(x) => (x, true),
            None => return false,
        },
        _ => return false,
    };
    let Some(t) = g.node(n).output(0) else { return false };
    let Some(last) = gelu_tail(g, t, x) else { return false };
    let name = g.node(last).display_name();
    let form = if tanh { "GELU (tanh form)" } else { "GELU" };
    let (op, attrs) = if opset >= 20 {
        (Op::Gelu, if tanh { vec![Attribute::string("approximate", "tanh")] } else { vec![] })
    } else if contrib {
        (Op::from_onnx("com.microsoft", if tanh { "FastGelu" } else { "Gelu" }), vec![])
    } else {
        cx.note(|| format!("{form} at '{name}' not fused: needs opset 20 or a target with com.microsoft ops"));
        return false;
    };
    if !cx.rewrite() {
        return false;
    }
    let is_contrib = op.is_opaque();
    let done = replace(g, last, op, x, attrs, cx);
    *used_contrib |= done && is_contrib;
    done
}

/// `x * Sigmoid(x)` (SiLU) or `x * Sigmoid(alpha * x)` at the Mul `n` -> `QuickGelu(alpha)`.
fn quick_gelu(g: &mut Graph, n: NodeId, used_contrib: &mut bool, cx: &mut PassContext) -> bool {
    if g.node(n).op != Op::Mul || g.node(n).inputs().len() != 2 {
        return false;
    }
    let (Some(a), Some(b)) = (g.node(n).input(0), g.node(n).input(1)) else { return false };
    for (x, s) in [(a, b), (b, a)] {
        let Some(sig) = producer_op(g, s, Op::Sigmoid) else { continue };
        let Some(inner) = g.node(sig).input(0) else { continue };
        let alpha = if inner == x {
            1.0
        } else {
            match producer_op(g, inner, Op::Mul).and_then(|m| with_scalar(g, m)) {
                Some((y, k, _)) if y == x => k,
                _ => continue,
            }
        };
        if single_use(g, s).is_none() {
            continue;
        }
        if !cx.rewrite() {
            return false;
        }
        let op = Op::from_onnx("com.microsoft", "QuickGelu");
        let done = replace(g, n, op, x, vec![Attribute::float("alpha", alpha as f32)], cx);
        *used_contrib |= done;
        return done;
    }
    false
}

/// `Gelu(x + b)` (Gelu, com.microsoft Gelu or FastGelu without bias) with `b` a float32
/// constant over the last axis of `x` -> `BiasGelu(x, b)` / `FastGelu(x, b)`.
fn bias_gelu(
    g: &mut Graph,
    n: NodeId,
    facts: &optc_ir::infer::Facts,
    used_contrib: &mut bool,
    cx: &mut PassContext,
) -> bool {
    let node = g.node(n);
    let tanh = match &node.op {
        Op::Gelu if node.attrs.get_string("approximate").unwrap_or("none") == "none" => false,
        Op::Gelu => true,
        Op::Opaque { domain, op_type } if domain == "com.microsoft" && op_type == "Gelu" => false,
        Op::Opaque { domain, op_type } if domain == "com.microsoft" && op_type == "FastGelu" => {
            if node.input(1).is_some() {
                return false;
            }
            true
        }
        _ => return false,
    };
    let Some(s) = node.input(0) else { return false };
    let Some(add) = producer_op(g, s, Op::Add) else { return false };
    if single_use(g, s).is_none() {
        return false;
    }
    let (Some(p), Some(q)) = (g.node(add).input(0), g.node(add).input(1)) else { return false };
    for (x, bias) in [(p, q), (q, p)] {
        let Some((_, dims)) = super::f32_const(g, bias) else { continue };
        let last = facts.shape(x).and_then(|sh| sh.last()).and_then(|d| d.as_known());
        if dims.len() != 1 || Some(dims[0]) != last || facts.shape(x).is_none_or(|sh| sh.len() < 2) {
            continue;
        }
        if !cx.rewrite() {
            return false;
        }
        let op = Op::from_onnx("com.microsoft", if tanh { "FastGelu" } else { "BiasGelu" });
        let done = super::replace_chain(g, n, op, vec![Some(x), Some(bias)], vec![], cx).is_some();
        *used_contrib |= done;
        return done;
    }
    false
}

/// `Conv` whose only reader is an activation onnxruntime's FusedConv supports -> `FusedConv`.
fn fused_conv_act(g: &mut Graph, n: NodeId, used_contrib: &mut bool, cx: &mut PassContext) -> bool {
    let node = g.node(n);
    let Some(y) = node.input(0) else { return false };
    let Some(conv) = producer_op(g, y, Op::Conv) else { return false };
    if single_use(g, y).is_none() || g.node(conv).outputs().len() != 1 {
        return false;
    }
    let f = |name: &str, d: f32| node.attrs.get_float(name).unwrap_or(d);
    let (act, params): (&str, Vec<f32>) = match node.op {
        Op::Relu => ("Relu", vec![]),
        Op::Tanh => ("Tanh", vec![]),
        Op::Sigmoid => ("Sigmoid", vec![]),
        Op::LeakyRelu => ("LeakyRelu", vec![f("alpha", 0.01)]),
        Op::HardSigmoid => ("HardSigmoid", vec![f("alpha", 0.2), f("beta", 0.5)]),
        Op::Clip => {
            let bound = |i: usize, attr: &str, d: f32| -> Option<f32> {
                match node.input(i) {
                    Some(v) => scalar(g, v).map(|k| k as f32),
                    None if node.inputs().len() > 1 || i > 2 => Some(d),
                    None => Some(node.attrs.get_float(attr).unwrap_or(d)),
                }
            };
            match (bound(1, "min", f32::MIN), bound(2, "max", f32::MAX)) {
                (Some(lo), Some(hi)) => ("Clip", vec![lo, hi]),
                _ => return false,
            }
        }
        _ => return false,
    };
    if !cx.rewrite() {
        return false;
    }
    let cnode = g.node(conv);
    let inputs = cnode.inputs().to_vec();
    let mut attrs = cnode.attrs.clone();
    attrs.push(Attribute::string("activation", act));
    if !params.is_empty() {
        attrs.push(Attribute::new("activation_params", AttrValue::Floats(params)));
    }
    let op = Op::from_onnx("com.microsoft", "FusedConv");
    let done = super::replace_chain(g, n, op, inputs, attrs, cx).is_some();
    *used_contrib |= done;
    done
}
