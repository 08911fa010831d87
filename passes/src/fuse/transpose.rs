//! `transpose`: sinks Transpose nodes through elementwise ops and cancels or merges them.
//!
//! Exporters from channels-last frameworks wrap every layer in Transposes
//! (`Conv -> Transpose(NHWC) -> Add(bias[C]) -> Relu -> Transpose(NCHW) -> Conv`). Moving a
//! Transpose below an elementwise op is exact: a unary op commutes with it; a binary op with a
//! constant operand gets the constant permuted by the inverse permutation; a binary op whose
//! two operands are Transposes with the same permutation becomes one Transpose of the result.
//! When two Transposes meet they merge into one, or vanish when they compose to the identity.
//! Moved down, the per-channel constants end up next to the Conv, where `fuse-bn` folds them.

use super::{align, f32_const, permute, single_use};
use crate::util::{can_forward_output, forward_output};
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::{AttrList, AttrValue, Attribute, Graph, Model, NodeId, NodeSpec, Op};

pub struct TransposeSink;

impl Pass for TransposeSink {
    fn name(&self) -> &str {
        "transpose"
    }
    fn description(&self) -> &str {
        "sink Transposes through elementwise ops (constants permuted), merge Transpose pairs, drop those that cancel"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let rewrites = crate::util::for_each_graph(model, &mut |g, _| run_graph(g, cx));
        Ok(PassOutcome { rewrites })
    }
}

fn is_unary(op: &Op) -> bool {
    use Op::*;
    matches!(
        op,
        Relu | Sigmoid
            | Tanh
            | Neg
            | Abs
            | Exp
            | Log
            | Sqrt
            | Reciprocal
            | Erf
            | Cast
            | LeakyRelu
            | Elu
            | Selu
            | Celu
            | HardSigmoid
            | HardSwish
            | Softplus
            | Softsign
            | Sin
            | Cos
            | Floor
            | Ceil
            | Round
            | Sign
            | Not
            | IsNaN
            | Gelu
            | Mish
            | ThresholdedRelu
            | Clip
    )
}

fn is_binary(op: &Op) -> bool {
    use Op::*;
    matches!(op, Add | Sub | Mul | Div | Pow | Equal | Greater | Less | GreaterOrEqual | LessOrEqual | And | Or | Xor)
}

fn perm_of(g: &Graph, t: NodeId) -> Option<Vec<usize>> {
    let p = g.node(t).attrs.get_ints("perm")?;
    let mut seen = vec![false; p.len()];
    let mut out = Vec::with_capacity(p.len());
    for &x in p {
        let x = usize::try_from(x).ok().filter(|&x| x < p.len())?;
        if std::mem::replace(&mut seen[x], true) {
            return None;
        }
        out.push(x);
    }
    Some(out)
}

fn is_identity(p: &[usize]) -> bool {
    p.iter().enumerate().all(|(i, &x)| i == x)
}

fn run_graph(g: &mut Graph, cx: &mut PassContext) -> usize {
    let Ok(order) = g.topo_order() else { return 0 };
    let mut work: Vec<NodeId> = order.into_iter().filter(|&n| g.node(n).op == Op::Transpose).rev().collect();
    let mut rewrites = 0;
    let mut guard = 16 * g.node_count() + 16;
    while let Some(t) = work.pop() {
        guard = guard.saturating_sub(1);
        if guard == 0 {
            break;
        }
        if !g.contains_node(t) || g.node(t).op != Op::Transpose {
            continue;
        }
        match step(g, t, cx) {
            Step::None => {}
            Step::Done => rewrites += 1,
            Step::Moved(t2) => {
                rewrites += 1;
                work.push(t2);
            }
        }
        if cx.budget.exhausted() {
            break;
        }
    }
    rewrites
}

enum Step {
    None,
    Done,
    /// The Transpose moved; this is its new node.
    Moved(NodeId),
}

fn step(g: &mut Graph, t: NodeId, cx: &mut PassContext) -> Step {
    let name = g.node(t).display_name();
    let Some(p) = perm_of(g, t) else { return Step::None };
    let (Some(x), Some(y)) = (g.node(t).input(0), g.node(t).output(0)) else { return Step::None };
    if is_identity(&p) {
        return Step::None; // `identity` removes it
    }
    let Some((n, slot)) = single_use(g, y) else {
        cx.note(|| format!("Transpose '{name}' stays: its output is a graph output or has several readers"));
        return Step::None;
    };
    let op = g.node(n).op.clone();
    if op == Op::Transpose {
        let Some(q) = perm_of(g, n) else { return Step::None };
        if q.len() != p.len() {
            return Step::None;
        }
        let composed: Vec<usize> = q.iter().map(|&j| p[j]).collect();
        let other = g.node(n).display_name();
        if is_identity(&composed) && !can_forward_output(g, n, x) {
            cx.note(|| format!("Transposes '{name}' and '{other}' cancel but the second names a graph output"));
            return Step::None;
        }
        if !cx.rewrite() {
            return Step::None;
        }
        if is_identity(&composed) {
            if forward_output(g, n, x) {
                g.remove_node(t);
                cx.note(|| format!("Transposes '{name}' and '{other}' cancel"));
                return Step::Done;
            }
            return Step::None;
        }
        set_perm(g, n, &composed);
        g.set_input(n, 0, Some(x));
        g.remove_node(t);
        cx.note(|| format!("merged Transpose '{name}' into '{other}'"));
        return Step::Moved(n);
    }
    let node = g.node(n);
    let real_outputs = node.outputs().iter().flatten().count();
    if real_outputs != 1 || node.output(0).is_none() || g.is_unused(node.output(0).unwrap_or(y)) {
        return Step::None;
    }
    let rank = p.len();
    let mut inputs = node.inputs().to_vec();
    let mut drop_other: Option<NodeId> = None;
    if is_unary(&op) {
        if slot != 0 {
            return Step::None;
        }
        // Clip's min/max are scalars; nothing else may be a tensor input.
        if op != Op::Clip && inputs.len() > 1 {
            return Step::None;
        }
        inputs[0] = Some(x);
    } else if is_binary(&op) && inputs.len() == 2 {
        let Some(other) = inputs[1 - slot] else { return Step::None };
        if let Some((k, dims)) = f32_const(g, other) {
            let Some(dims) = align(&dims, rank) else { return Step::None };
            let mut inv = vec![0; rank];
            for (j, &pj) in p.iter().enumerate() {
                inv[pj] = j;
            }
            let Some((data, new_dims)) = permute(&k, &dims, &inv) else { return Step::None };
            let base = format!("{}_t", g.value(other).name);
            let Some(k2) = super::add_f32(g, &base, new_dims, &data) else { return Step::None };
            inputs[1 - slot] = Some(k2);
            inputs[slot] = Some(x);
        } else if let Some((t2, _)) = g.producer(other)
            && t2 != t
            && g.node(t2).op == Op::Transpose
            && perm_of(g, t2).as_deref() == Some(&p[..])
            && single_use(g, other).is_some()
        {
            let Some(x2) = g.node(t2).input(0) else { return Step::None };
            inputs[1 - slot] = Some(x2);
            inputs[slot] = Some(x);
            drop_other = Some(t2);
        } else {
            cx.note(|| {
                format!("Transpose '{name}' stays above {op} '{}': its other operand is neither a float constant nor a matching Transpose", g.node(n).display_name())
            });
            return Step::None;
        }
    } else {
        return Step::None;
    }
    if !cx.rewrite() {
        return Step::None;
    }
    let node = g.node(n).clone();
    let Some(o) = node.output(0) else { return Step::None };
    let zname = g.fresh_name(&format!("{}_pre_transpose", g.value(o).name));
    let Ok(z) = g.add_value(zname, None) else { return Step::None };
    let mut spec = NodeSpec::new(node.op.clone(), inputs, vec![Some(z)]).attrs(node.attrs.clone());
    if let Some(nm) = &node.name {
        spec = spec.named(nm.clone());
    }
    let Ok(n2) = g.add_node(spec) else { return Step::None };
    g.node_mut(n2).domain_raw = node.domain_raw.clone();
    g.place_like(n2, n);
    g.remove_node(n);
    let mut tspec = NodeSpec::new(Op::Transpose, vec![Some(z)], vec![Some(o)]).attrs(g.node(t).attrs.clone());
    if let Some(nm) = &g.node(t).name {
        tspec = tspec.named(nm.clone());
    }
    let Ok(t2) = g.add_node(tspec) else { return Step::None };
    g.place_like(t2, n2);
    g.remove_node(t);
    if let Some(d) = drop_other {
        g.remove_node(d);
    }
    let what = node.display_name();
    cx.note(|| format!("moved Transpose '{name}' below {op} '{what}'"));
    Step::Moved(t2)
}

fn set_perm(g: &mut Graph, n: NodeId, perm: &[usize]) {
    let v = AttrValue::Ints(perm.iter().map(|&x| x as i64).collect());
    let attrs = &mut g.node_mut(n).attrs;
    match attrs.iter_mut().find(|a| a.name == "perm") {
        Some(a) => a.value = v,
        None => attrs.push(Attribute::new("perm", v)),
    }
}
