//! UPDP's other kind of removal: a block whose activation alone goes. `L1 -> act -> L2` with
//! the activation removed is linear, and the two layers merge (reparameterise) into one:
//!
//! - `MatMul/Gemm(x, W1) (+ b1) -> act -> MatMul/Gemm(., W2) (+ b2)` becomes
//!   `x (W1 W2) + b1 W2 (+ b2)`: a transformer MLP `d -> 4d -> d` becomes one `d x d` product.
//! - `Conv(x, W1, b1) -> act -> Conv1x1(., W2, b2)` (any kernel, stride, padding, dilation and
//!   group count for the first; a pointwise, ungrouped second) becomes one convolution with
//!   `W[o, c] = sum_m W2[o, m] W1[m, c]` and `b = W2 b1 + b2`. This is exact: a pointwise
//!   convolution commutes with the first one's zero padding.
//!
//! The activation may carry the first layer's bias (`BiasGelu`, `FastGelu` with a bias). A
//! merge is only offered when LIFE predicts the merged layer cheaper (`depth.rs` checks), which
//! rules out the merges that grow the work (a depthwise conv into a full one).

use super::blocks::node_label;
use crate::fuse::{self, add_f32, single_use};
use crate::util;
use optc_ir::{AttrList, Attribute, Graph, NodeId, NodeSpec, Op, ValueId};

/// A mergeable `L1 -> act -> L2` chain.
#[derive(Clone, Debug)]
pub struct Chain {
    pub l1: NodeId,
    /// A bias Add between `L1` and the activation, with its constant.
    pub bias_add: Option<NodeId>,
    pub act: NodeId,
    pub l2: NodeId,
    pub conv: bool,
}

fn is_act(op: &Op) -> bool {
    match op {
        Op::Relu
        | Op::LeakyRelu
        | Op::Elu
        | Op::Selu
        | Op::Celu
        | Op::Gelu
        | Op::HardSwish
        | Op::Tanh
        | Op::Softplus
        | Op::Mish
        | Op::Clip
        | Op::Sigmoid => true,
        Op::Opaque { domain, op_type } => {
            domain == "com.microsoft" && matches!(op_type.as_str(), "Gelu" | "FastGelu" | "BiasGelu" | "QuickGelu")
        }
        _ => false,
    }
}

fn single_reader(g: &Graph, v: ValueId) -> Option<NodeId> {
    single_use(g, v).map(|(n, _)| n)
}

/// A float32 constant as `(dims, data)`.
fn f32_const(g: &Graph, v: Option<ValueId>) -> Option<(Vec<i64>, Vec<f32>)> {
    fuse::f32_const(g, v?).map(|(data, dims)| (dims, data))
}

/// Gemm with the plain semantics (no transA, alpha = beta = 1).
fn plain_gemm(g: &Graph, n: NodeId) -> bool {
    let a = &g.node(n).attrs;
    a.get_int("transA").unwrap_or(0) == 0
        && a.get_float("alpha").unwrap_or(1.0) == 1.0
        && a.get_float("beta").unwrap_or(1.0) == 1.0
}

/// A MatMul/Gemm weight as `(K, N, W [K, N] row-major, bias)`.
type Linear = (usize, usize, Vec<f32>, Option<Vec<f32>>);

/// `W` of a MatMul/Gemm as `[K, N]` row-major, with its bias (Gemm's C as a vector).
fn linear_weight(g: &Graph, n: NodeId) -> Option<Linear> {
    let node = g.node(n);
    let (dims, w) = f32_const(g, node.input(1))?;
    if dims.len() != 2 || g.uses(node.input(1)?).len() != 1 {
        return None;
    }
    let (r, c) = (dims[0] as usize, dims[1] as usize);
    match node.op {
        Op::MatMul => Some((r, c, w, None)),
        Op::Gemm if plain_gemm(g, n) => {
            let trans = node.attrs.get_int("transB").unwrap_or(0) != 0;
            let (k, nn) = if trans { (c, r) } else { (r, c) };
            let w = if trans {
                (0..k).flat_map(|i| (0..nn).map(move |j| (i, j))).map(|(i, j)| w[j * k + i]).collect()
            } else {
                w
            };
            let bias = match node.input(2) {
                None => None,
                Some(_) => {
                    let (bd, b) = f32_const(g, node.input(2))?;
                    if b.len() != nn || bd.len() > 1 && bd[0] != 1 {
                        return None;
                    }
                    Some(b)
                }
            };
            Some((k, nn, w, bias))
        }
        _ => None,
    }
}

/// Finds the chain through activation node `act`, if it is mergeable.
pub fn chain_at(g: &Graph, act: NodeId) -> Option<Chain> {
    let node = g.node(act);
    if is_fused_conv(&node.op) {
        // `FusedConv` is a Conv with its activation inside: it is L1 and the activation.
        let y = node.output(0)?;
        let l2 = single_reader(g, y)?;
        if g.node(l2).input(0) != Some(y) || g.node(l2).op != Op::Conv || !conv_pair(g, act, l2) {
            return None;
        }
        return Some(Chain { l1: act, bias_add: None, act, l2, conv: true });
    }
    if !is_act(&node.op) {
        return None;
    }
    let x = node.input(0)?;
    // An activation with a bias input (BiasGelu / FastGelu) carries L1's bias.
    if node.inputs().iter().skip(1).flatten().any(|&v| f32_const(g, Some(v)).is_none()) && !matches!(node.op, Op::Clip)
    {
        return None;
    }
    let (mut p, _) = g.producer(x)?;
    let mut bias_add = None;
    if g.node(p).op == Op::Add {
        let add = g.node(p);
        let (a, b) = (add.input(0)?, add.input(1)?);
        let (inner, bias) = if f32_const(g, Some(b)).is_some() { (a, b) } else { (b, a) };
        f32_const(g, Some(bias))?;
        if single_reader(g, x)? != act {
            return None;
        }
        bias_add = Some(p);
        p = g.producer(inner)?.0;
        if single_reader(g, inner)? != bias_add? {
            return None;
        }
    } else if single_reader(g, x)? != act {
        return None;
    }
    let y = node.output(0)?;
    let l2 = single_reader(g, y)?;
    if g.node(l2).input(0) != Some(y) {
        return None;
    }
    let (op1, op2) = (&g.node(p).op, &g.node(l2).op);
    let conv = match (op1, op2) {
        (Op::Conv, Op::Conv) => {
            if bias_add.is_some() || !conv_pair(g, p, l2) {
                return None;
            }
            true
        }
        (Op::MatMul | Op::Gemm, Op::MatMul | Op::Gemm) => {
            linear_weight(g, p)?;
            linear_weight(g, l2)?;
            false
        }
        _ => return None,
    };
    Some(Chain { l1: p, bias_add, act, l2, conv })
}

fn is_fused_conv(op: &Op) -> bool {
    matches!(op, Op::Opaque { domain, op_type } if domain == "com.microsoft" && op_type == "FusedConv")
}

/// Whether Conv `l1` (any) and Conv `l2` (pointwise, ungrouped, unstrided, unpadded) merge.
fn conv_pair(g: &Graph, l1: NodeId, l2: NodeId) -> bool {
    let (Some((d1, _)), Some((d2, _))) = (f32_const(g, g.node(l1).input(1)), f32_const(g, g.node(l2).input(1))) else {
        return false;
    };
    let a2 = &g.node(l2).attrs;
    let ones = |k: &str| a2.get_ints(k).is_none_or(|v| v.iter().all(|&x| x == 1));
    let zeros = a2.get_ints("pads").is_none_or(|v| v.iter().all(|&x| x == 0));
    let shared = |n: NodeId| g.node(n).input(1).is_none_or(|w| g.uses(w).len() != 1);
    d1.len() == 4
        && d2.len() == 4
        && d2[2] == 1
        && d2[3] == 1
        && a2.get_int("group").unwrap_or(1) == 1
        && ones("strides")
        && zeros
        && a2.get_string("auto_pad").is_none_or(|s| s == "NOTSET")
        && !g.node(l1).attrs.get_string("auto_pad").is_some_and(|s| s != "NOTSET" && s != "VALID")
        && !shared(l1)
        && !shared(l2)
}

/// Every mergeable chain of `g`.
pub fn find(g: &Graph) -> Vec<Chain> {
    let Ok(order) = g.topo_order() else { return Vec::new() };
    order.into_iter().filter_map(|n| chain_at(g, n)).collect()
}

/// The name a report uses for a chain.
pub fn label(g: &Graph, c: &Chain) -> String {
    node_label(g, c.act)
}

/// Weight elements of the two layers.
pub fn params(g: &Graph, c: &Chain) -> u64 {
    [c.l1, c.l2]
        .iter()
        .filter_map(|&n| g.node(n).input(1).and_then(|v| util::const_tensor(g, v)).and_then(|t| t.numel()))
        .sum()
}

/// Merges `c` in `g`: the activation is removed and the two layers become one. Returns false
/// (changing nothing) when a weight cannot be read.
pub fn merge(g: &mut Graph, c: &Chain) -> bool {
    let Some(x) = g.node(c.l1).input(0) else { return false };
    let Some(out) = g.node(c.l2).output(0) else { return false };
    // L1's bias: a bias Add, the activation's bias input, Gemm's C or Conv's B.
    let act_bias = if matches!(&g.node(c.act).op, Op::Opaque { .. }) && c.act != c.l1 {
        f32_const(g, g.node(c.act).input(1)).map(|(_, b)| b)
    } else {
        None
    };
    let add_bias = c.bias_add.and_then(|a| {
        let n = g.node(a);
        f32_const(g, n.input(1)).or_else(|| f32_const(g, n.input(0))).map(|(_, b)| b)
    });
    let name = g.node(c.l2).name.clone();
    let spec = if c.conv {
        let Some((d1, w1)) = f32_const(g, g.node(c.l1).input(1)) else { return false };
        let Some((d2, w2)) = f32_const(g, g.node(c.l2).input(1)) else { return false };
        let [m, cg, kh, kw] = [d1[0], d1[1], d1[2], d1[3]].map(|v| v as usize);
        let o = d2[0] as usize;
        if d2[1] as usize != m {
            return false;
        }
        let groups = g.node(c.l1).attrs.get_int("group").unwrap_or(1).max(1) as usize;
        if m % groups != 0 {
            return false;
        }
        let mg = m / groups;
        let cin = cg * groups;
        let b1 = match g.node(c.l1).input(2) {
            Some(v) => match f32_const(g, Some(v)) {
                Some((_, b)) if b.len() == m => b,
                _ => return false,
            },
            None => vec![0.0; m],
        };
        let b2 = match g.node(c.l2).input(2) {
            Some(v) => match f32_const(g, Some(v)) {
                Some((_, b)) if b.len() == o => b,
                _ => return false,
            },
            None => vec![0.0; o],
        };
        let k2 = kh * kw;
        let mut w = vec![0f32; o * cin * k2];
        let mut b = b2.clone();
        for oo in 0..o {
            for mm in 0..m {
                let s = w2[oo * m + mm];
                if s == 0.0 {
                    continue;
                }
                b[oo] += s * b1[mm];
                let grp = mm / mg;
                for cl in 0..cg {
                    let ci = grp * cg + cl;
                    for k in 0..k2 {
                        w[(oo * cin + ci) * k2 + k] += s * w1[(mm * cg + cl) * k2 + k];
                    }
                }
            }
        }
        let (Some(wv), Some(bv)) = (
            add_f32(g, "merged_w", vec![o as i64, cin as i64, kh as i64, kw as i64], &w),
            add_f32(g, "merged_b", vec![o as i64], &b),
        ) else {
            return false;
        };
        let mut attrs: Vec<Attribute> = g
            .node(c.l1)
            .attrs
            .iter()
            .filter(|a| !matches!(a.name.as_str(), "group" | "activation" | "activation_params"))
            .cloned()
            .collect();
        attrs.retain(|a| a.name != "kernel_shape");
        attrs.push(Attribute::ints("kernel_shape", vec![kh as i64, kw as i64]));
        NodeSpec::new(Op::Conv, vec![Some(x), Some(wv), Some(bv)], vec![]).attrs(attrs)
    } else {
        let Some((k, m, w1, gb1)) = linear_weight(g, c.l1) else { return false };
        let Some((m2, n, w2, gb2)) = linear_weight(g, c.l2) else { return false };
        if m != m2 {
            return false;
        }
        let mut b1 = vec![0f32; m];
        let mut has_b1 = false;
        for b in [gb1, add_bias, act_bias].into_iter().flatten() {
            if b.len() != m {
                return false;
            }
            has_b1 = true;
            b1.iter_mut().zip(&b).for_each(|(a, x)| *a += x);
        }
        let mut w = vec![0f32; k * n];
        for i in 0..k {
            for j in 0..m {
                let a = w1[i * m + j];
                if a != 0.0 {
                    let row = &w2[j * n..(j + 1) * n];
                    for (o, &bv) in w[i * n..(i + 1) * n].iter_mut().zip(row) {
                        *o += a * bv;
                    }
                }
            }
        }
        let mut bias: Vec<f32> = (0..n).map(|j| (0..m).map(|i| b1[i] * w2[i * n + j]).sum()).collect();
        if let Some(b2) = &gb2 {
            bias.iter_mut().zip(b2).for_each(|(a, x)| *a += x);
        }
        let has_bias = has_b1 || gb2.is_some();
        let Some(wv) = add_f32(g, "merged_w", vec![k as i64, n as i64], &w) else { return false };
        let gemm = g.node(c.l1).op == Op::Gemm || g.node(c.l2).op == Op::Gemm;
        if gemm {
            let Some(bv) = add_f32(g, "merged_b", vec![n as i64], &bias) else { return false };
            NodeSpec::new(Op::Gemm, vec![Some(x), Some(wv), Some(bv)], vec![])
        } else if has_bias {
            // MatMul then the bias Add, written below.
            let Ok(mid) = g.add_value(g.fresh_name("merged_mm"), None) else { return false };
            let Ok(_) = g.add_node(NodeSpec::new(Op::MatMul, vec![Some(x), Some(wv)], vec![Some(mid)])) else {
                return false;
            };
            let Some(bv) = add_f32(g, "merged_b", vec![n as i64], &bias) else { return false };
            NodeSpec::new(Op::Add, vec![Some(mid), Some(bv)], vec![])
        } else {
            NodeSpec::new(Op::MatMul, vec![Some(x), Some(wv)], vec![])
        }
    };
    // The merged node takes over L2's output value.
    let l2 = c.l2;
    let nodes = [Some(c.l2), (c.act != c.l1).then_some(c.act), c.bias_add, Some(c.l1)];
    g.set_inputs(l2, vec![]);
    let spec = NodeSpec { outputs: vec![Some(out)], ..spec };
    for n in nodes.into_iter().flatten() {
        if g.contains_node(n) {
            g.remove_node(n);
        }
    }
    let spec = match name {
        Some(nm) => spec.named(nm),
        None => spec,
    };
    g.add_node(spec).is_ok()
}
