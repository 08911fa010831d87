//! Prunable blocks: residual branches `y = x + f(x)` whose branch `f` can be bypassed.
//!
//! A block is found from its residual `Add`: one input (the *skip*, `x`) is an ancestor of the
//! other (the branch output `f(x)`). The branch is every node on a path from `x` to `f(x)`. It is
//! prunable when it is self-contained (nothing outside the branch reads a value it computes),
//! when it holds at least one weighted op (Conv, MatMul, Gemm and their quantised forms), and when
//! `x` and `y` have the same inferred shape and element type, so that `y := x` keeps the graph
//! well-typed. This covers ResNet and MobileNet inverted-residual blocks, ConvNeXt blocks and the
//! attention and MLP halves of pre-LN and post-LN transformer layers, whatever exported them:
//! detection needs only the graph's dataflow and inferred shapes, no op names or node names.

use crate::util;
use optc_ir::infer::{self, Facts};
use optc_ir::{AttrList, DimValue, Graph, Model, NodeId, Op, ValueId};
use std::collections::{HashMap, HashSet};

/// What a block's branch computes, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Convolutions (ResNet, MobileNet, ConvNeXt blocks).
    Conv,
    /// A Softmax or an attention op: the attention half of a transformer layer.
    Attention,
    /// Matrix products without attention: the MLP half of a transformer layer.
    Mlp,
}

impl BlockKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::Conv => "conv",
            BlockKind::Attention => "attention",
            BlockKind::Mlp => "mlp",
        }
    }
}

/// The node where a block's branch rejoins the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Join {
    /// `Add(x, f(x))`.
    Add,
    /// `com.microsoft::SkipLayerNormalization` / `SkipSimplifiedLayerNormalization`
    /// (`norm(input + skip + bias)`, output 3 the sum), as `fuse-norm` writes them: the branch
    /// output is input `branch_slot`, the stream the other of inputs 0 and 1.
    SkipNorm { branch_slot: usize, bias_slot: usize },
}

/// One prunable residual block of the main graph.
#[derive(Clone, Debug)]
pub struct Block {
    /// The residual Add's name (its output's name when the node has none).
    pub name: String,
    pub kind: BlockKind,
    /// The residual Add (or fused skip normalisation).
    pub add: NodeId,
    pub join: Join,
    /// The skip input `x`.
    pub skip: ValueId,
    /// The residual stream after the block, `y = x + f(x)`: the Add's output, or the sum
    /// output of a skip normalisation (its normalised output when the sum is not exposed).
    pub out: ValueId,
    /// The branch's nodes, in topological order.
    pub branch: Vec<NodeId>,
    /// Weights read only by the branch (elements).
    pub params: u64,
    /// Whether inference proved that `x` and `y` have the same shape; otherwise some dims are
    /// unknown and the shapes must be compared on real inputs before the block is bypassed.
    pub shape_proven: bool,
}

/// The blocks of a graph and, for `--explain`, the residual-looking Adds that are not blocks.
#[derive(Clone, Debug, Default)]
pub struct Detection {
    pub blocks: Vec<Block>,
    /// `(add name, why it is not prunable)`.
    pub rejected: Vec<(String, String)>,
}

fn is_weighted(op: &Op) -> bool {
    match op {
        Op::Conv
        | Op::ConvTranspose
        | Op::MatMul
        | Op::Gemm
        | Op::MatMulInteger
        | Op::QLinearConv
        | Op::QLinearMatMul
        | Op::ConvInteger => true,
        Op::Opaque { op_type, .. } => {
            matches!(op_type.as_str(), "MatMulNBits" | "Attention" | "MultiHeadAttention" | "GroupQueryAttention")
        }
        _ => false,
    }
}

fn is_attention(op: &Op) -> bool {
    match op {
        Op::Softmax | Op::Attention => true,
        Op::Opaque { op_type, .. } => {
            matches!(op_type.as_str(), "Attention" | "MultiHeadAttention" | "GroupQueryAttention")
        }
        _ => false,
    }
}

/// The name a report uses for node `n`.
pub fn node_label(g: &Graph, n: NodeId) -> String {
    let node = g.node(n);
    match node.name.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => s.to_string(),
        None => node.output(0).map(|v| g.value(v).name.clone()).unwrap_or_else(|| node.display_name()),
    }
}

/// `Ok(true)` when the shapes of `a` and `b` are provably equal, `Ok(false)` when they may be
/// (unknown dims), `Err` when they differ or the types differ.
fn same_shape(facts: &Facts, a: ValueId, b: ValueId) -> Result<bool, String> {
    let (Some(sa), Some(sb)) = (facts.shape(a), facts.shape(b)) else {
        return Err("the shapes of its inputs are not known".into());
    };
    if sa.len() != sb.len() {
        return Err(format!("its skip input has rank {} but its output rank {}", sa.len(), sb.len()));
    }
    let mut proven = true;
    for (da, db) in sa.iter().zip(sb) {
        match (&da.value, &db.value) {
            (DimValue::Known(x), DimValue::Known(y)) if x == y && *x >= 0 => {}
            (DimValue::Sym(x), DimValue::Sym(y)) if x == y => {}
            (DimValue::Known(x), DimValue::Known(y)) if x == y => proven = false,
            // Different symbols (an exporter's names for the same dim) or unknown dims: checked
            // on real inputs.
            (DimValue::Unknown, _) | (_, DimValue::Unknown) | (DimValue::Sym(_), _) | (_, DimValue::Sym(_)) => {
                proven = false
            }
            _ => {
                let fmt = |s: &optc_ir::Shape| s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
                return Err(format!("its skip input is {} but its output {} (it broadcasts)", fmt(sa), fmt(sb)));
            }
        }
    }
    if facts.elem(a) != facts.elem(b) {
        return Err("its skip input and output differ in element type".into());
    }
    Ok(proven)
}

/// Finds the prunable blocks of `model`'s main graph.
pub fn find(model: &Model) -> Detection {
    let g = &model.graph;
    let opset = model.opset("").unwrap_or(1);
    let Ok(order) = g.topo_order() else { return Detection::default() };
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let facts = infer::infer(g, opset);
    let mut det = Detection::default();
    for &add in &order {
        let node = g.node(add);
        let skip_norm = match &node.op {
            Op::Add if node.inputs().len() == 2 => None,
            Op::Opaque { domain, op_type } if domain == "com.microsoft" && op_type == "SkipLayerNormalization" => {
                Some(4)
            }
            Op::Opaque { domain, op_type }
                if domain == "com.microsoft" && op_type == "SkipSimplifiedLayerNormalization" =>
            {
                Some(3)
            }
            _ => continue,
        };
        let (Some(a), Some(b), Some(out0)) = (node.input(0), node.input(1), node.output(0)) else { continue };
        let out = match skip_norm {
            Some(_) => node.output(3).filter(|&v| !g.is_unused(v)).unwrap_or(out0),
            None => out0,
        };
        if a == b || util::const_tensor(g, a).is_some() || util::const_tensor(g, b).is_some() {
            continue;
        }
        // Which input is the skip: the one the other one depends on.
        let anc_a = ancestors(g, a);
        let anc_b = ancestors(g, b);
        let (skip, fx, anc) = if reads_any(g, &anc_b, &roots(g, a)) {
            (a, b, anc_b)
        } else if reads_any(g, &anc_a, &roots(g, b)) {
            (b, a, anc_a)
        } else {
            continue;
        };
        let name = node_label(g, add);
        match branch_of(g, &order, &pos, &anc, &roots(g, skip), fx, add) {
            Err(why) => det.rejected.push((name, why)),
            Ok(branch) => {
                let join = match skip_norm {
                    None => Join::Add,
                    Some(bias_slot) => Join::SkipNorm { branch_slot: usize::from(fx == b), bias_slot },
                };
                let shape_proven = match same_shape(&facts, skip, out0) {
                    Ok(p) => p,
                    Err(why) => {
                        det.rejected.push((name, why));
                        continue;
                    }
                };
                let ops: Vec<&Op> = branch.iter().map(|&n| &g.node(n).op).collect();
                if !ops.iter().any(|o| is_weighted(o)) {
                    det.rejected.push((name, "its branch has no Conv, MatMul or Gemm".into()));
                    continue;
                }
                let kind = if ops.iter().any(|o| is_attention(o)) {
                    BlockKind::Attention
                } else if ops
                    .iter()
                    .any(|o| matches!(o, Op::Conv | Op::ConvTranspose | Op::QLinearConv | Op::ConvInteger))
                {
                    BlockKind::Conv
                } else {
                    BlockKind::Mlp
                };
                let params = branch_params(g, &branch);
                det.blocks.push(Block { name, kind, add, join, skip, out, branch, params, shape_proven });
            }
        }
    }
    det
}

/// Nodes `v` depends on (its producer included), within the main graph.
fn ancestors(g: &Graph, v: ValueId) -> HashSet<NodeId> {
    let mut seen = HashSet::new();
    let mut stack: Vec<ValueId> = vec![v];
    while let Some(x) = stack.pop() {
        if let Some((p, _)) = g.producer(x)
            && seen.insert(p)
        {
            let node = g.node(p);
            stack.extend(node.inputs().iter().flatten().copied());
            stack.extend(node.captures().iter().copied());
        }
    }
    seen
}

/// Whether a node of `set` reads one of `vs`.
fn reads_any(g: &Graph, set: &HashSet<NodeId>, vs: &[ValueId]) -> bool {
    set.iter().any(|&n| g.node(n).inputs().iter().flatten().chain(g.node(n).captures()).any(|x| vs.contains(x)))
}

/// Where a branch reading the residual stream `x` may start: `x` itself and, when `x` is the
/// sum output of a fused skip normalisation, that node's normalised output (the fused form of
/// a pre-norm block reading `norm(x)`).
fn roots(g: &Graph, x: ValueId) -> Vec<ValueId> {
    let mut out = vec![x];
    if let Some((p, 3)) = g.producer(x) {
        let node = g.node(p);
        if let Op::Opaque { domain, op_type } = &node.op
            && domain == "com.microsoft"
            && matches!(op_type.as_str(), "SkipLayerNormalization" | "SkipSimplifiedLayerNormalization")
            && let Some(y) = node.output(0)
        {
            out.push(y);
        }
    }
    out
}

/// The nodes on a path from `skip` to `fx` (all in `anc`, the ancestors of `fx`), topologically
/// ordered, if nothing outside them and the Add reads what they compute.
fn branch_of(
    g: &Graph,
    order: &[NodeId],
    pos: &HashMap<NodeId, usize>,
    anc: &HashSet<NodeId>,
    roots: &[ValueId],
    fx: ValueId,
    add: NodeId,
) -> Result<Vec<NodeId>, String> {
    let mut members: Vec<NodeId> = anc.iter().copied().collect();
    members.sort_by_key(|n| pos.get(n).copied().unwrap_or(usize::MAX));
    let mut inside: HashSet<ValueId> = roots.iter().copied().collect();
    let mut branch = Vec::new();
    for n in members {
        let node = g.node(n);
        if node.inputs().iter().flatten().chain(node.captures()).any(|v| inside.contains(v)) {
            branch.push(n);
            inside.extend(node.outputs().iter().flatten().copied());
        }
    }
    let _ = order;
    // Branch nodes that compute graph outputs (a decoder's present key/value cache), and what
    // they need, stay: the graph keeps its interface, the rest of the branch goes.
    let mut kept: HashSet<NodeId> = HashSet::new();
    for &n in branch.iter().rev() {
        let node = g.node(n);
        let needed = node
            .outputs()
            .iter()
            .flatten()
            .any(|&v| g.is_graph_output(v) || g.uses(v).iter().any(|(u, _)| kept.contains(u)));
        if needed {
            kept.insert(n);
        }
    }
    branch.retain(|n| !kept.contains(n));
    if branch.is_empty() {
        return Err("all of its branch computes graph outputs".into());
    }
    let set: HashSet<NodeId> = branch.iter().copied().collect();
    for &n in &branch {
        for &v in g.node(n).outputs().iter().flatten() {
            for (user, _) in g.uses(v) {
                if !(set.contains(&user) || user == add && v == fx) {
                    return Err(format!(
                        "'{}' computed in its branch is also read by {} '{}' outside it",
                        g.value(v).name,
                        g.node(user).op,
                        node_label(g, user)
                    ));
                }
            }
        }
    }
    Ok(branch)
}

/// Elements of the constant inputs that only `branch` reads.
fn branch_params(g: &Graph, branch: &[NodeId]) -> u64 {
    let set: HashSet<NodeId> = branch.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut total = 0u64;
    for &n in branch {
        for &v in g.node(n).inputs().iter().flatten() {
            if !seen.insert(v) {
                continue;
            }
            let Some(t) = util::const_tensor(g, v) else { continue };
            if t.dims.len() < 2 && t.numel().unwrap_or(0) < 2 {
                continue;
            }
            if g.uses(v).iter().all(|(u, _)| set.contains(u)) {
                total += t.numel().unwrap_or(0);
            }
        }
    }
    total
}

/// Bypasses `block` in `g`: the Add's readers read the skip input instead, and the branch and
/// the Add are removed. Returns false (changing nothing) when the Add's output is a graph output
/// that the skip value cannot take over.
pub fn bypass(g: &mut Graph, block: &Block) -> bool {
    match block.join {
        Join::Add => {
            if !util::can_forward_output(g, block.add, block.skip) || !util::forward_output(g, block.add, block.skip) {
                return false;
            }
        }
        Join::SkipNorm { branch_slot, bias_slot } => {
            // norm(x + 0) is computed as norm(x + x) with epsilon * 4: layer and RMS norms are
            // scale-invariant, so this is exact, and the node stays the op the target runs.
            let node = g.node(block.add);
            let sum = node.output(3).filter(|&v| !g.is_unused(v));
            if sum.is_some_and(|v| g.is_graph_output(v)) {
                return false;
            }
            let eps = node.attrs.get_float("epsilon").unwrap_or(1e-12);
            let mut ins: Vec<Option<ValueId>> = node.inputs().to_vec();
            ins[branch_slot] = Some(block.skip);
            if ins.len() > bias_slot {
                ins[bias_slot] = None;
            }
            while ins.last() == Some(&None) {
                ins.pop();
            }
            g.set_inputs(block.add, ins);
            let attrs = &mut g.node_mut(block.add).attrs;
            attrs.retain(|a| a.name != "epsilon");
            attrs.push(optc_ir::Attribute::float("epsilon", eps * 4.0));
            if let Some(v) = sum {
                g.replace_uses(v, block.skip);
            }
        }
    }
    for &n in block.branch.iter().rev() {
        if g.contains_node(n) {
            g.remove_node(n);
        }
    }
    true
}
