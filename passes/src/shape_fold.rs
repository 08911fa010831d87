//! `shape-fold`: evaluates shape arithmetic whose result is known from inferred shapes
//! (Shape, Size, Gather, Concat, Unsqueeze, Squeeze, Slice, Cast, integer Add/Sub/Mul/Div,
//! Equal, Where, Reshape, ConstantOfShape...) and replaces it with initializers. Symbolic dims
//! stay symbolic: `Gather(Shape(x), 1)` folds when dim 1 of `x` is known, even if dim 0 is `batch`.
//!
//! Shape arithmetic whose value is symbolic but equals the shape of a value it was computed
//! from (or a run of its dims, from opset 15) becomes one `Shape` node:
//! `Where(Equal(Reshape(Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1))), [-1]), -1), 1, ...)`
//! is `Shape(x)` when `x` has rank 2, and `Unsqueeze(Gather(Shape(x), 1), 0)` is
//! `Shape(x, start=1, end=2)`. Exporters write such chains for every dynamic dim.

use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::infer::Facts;
use optc_ir::infer::{self, MAX_TRACKED};
use optc_ir::{AttrList, Attribute, DType, DimValue, Graph, Init, Model, NodeId, Op, ValueId};
use std::collections::HashSet;

pub struct ShapeFold;

impl Pass for ShapeFold {
    fn name(&self) -> &str {
        "shape-fold"
    }
    fn description(&self) -> &str {
        "fold Shape/Gather/Concat/Unsqueeze/Slice/... arithmetic whose values are known from inferred shapes; symbolic ones that equal a Shape become that Shape"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let rewrites = crate::util::for_each_graph(model, &mut |g, opset| fold_graph(g, opset, cx));
        Ok(PassOutcome { rewrites })
    }
}

/// Ops whose integer results are computed by inference and can become initializers.
fn foldable(op: &Op) -> bool {
    matches!(
        op,
        Op::Shape
            | Op::Size
            | Op::Gather
            | Op::Concat
            | Op::Unsqueeze
            | Op::Squeeze
            | Op::Slice
            | Op::Cast
            | Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Max
            | Op::Min
            | Op::Mod
            | Op::Neg
            | Op::Abs
            | Op::Equal
            | Op::Less
            | Op::Greater
            | Op::Where
            | Op::Reshape
            | Op::Identity
            | Op::ConstantOfShape
    )
}

fn fold_graph(g: &mut Graph, opset: i64, cx: &mut PassContext) -> usize {
    let facts = infer::infer(g, opset);
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(_) => return 0,
    };
    let mut folded = 0;
    for n in order {
        if g.node(n).op == Op::Reshape {
            if let Some(target) = reshape_target(g, n, &facts) {
                if !cx.rewrite() {
                    break;
                }
                let display = g.node(n).display_name();
                let Some(v) = crate::fuse::add_i64(g, &format!("{display}_shape"), &target) else {
                    continue;
                };
                cx.note(|| format!("Reshape '{display}': computed target shape replaced by constant {target:?}"));
                g.set_input(n, 1, Some(v));
                folded += 1;
            }
            continue;
        }
        let node = g.node(n);
        if !foldable(&node.op) || node.outputs().len() != 1 {
            continue;
        }
        let Some(out) = node.output(0) else { continue };
        // Values that are already plain constants are not worth a rewrite.
        if node.inputs().iter().flatten().all(|&i| g.const_tensor(i).is_some()) && node.op == Op::Identity {
            continue;
        }
        let Some(value) = facts.values.get(&out) else {
            continue;
        };
        if value.data.len() > MAX_TRACKED {
            continue;
        }
        let name = g.value(out).name.clone();
        let Some(tensor) = value.to_tensor(Some(name.clone())) else {
            if value.known().is_none() {
                cx.note(|| format!("{} '{}': value not fully known ({:?})", node.op, node.display_name(), value.data));
            }
            continue;
        };
        // The declared type must agree with the folded tensor.
        if let Some(ty) = &g.value(out).ty
            && ty.elem().is_some_and(|e| e != tensor.dtype)
        {
            continue;
        }
        if !cx.rewrite() {
            break;
        }
        let (op, display) = (node.op.clone(), node.display_name());
        cx.note(|| format!("folded {op} '{display}' into constant '{name}'"));
        g.remove_node(n);
        if !g.contains_value(out) {
            continue;
        }
        g.value_mut(out).init = Some(Init::Dense(tensor));
        g.initializers.push(out);
        folded += 1;
    }
    folded + rematerialise(g, opset, &facts, cx)
}

/// How far back from a node `rematerialise` looks for the `Shape` nodes its value came from.
const CONE_LIMIT: usize = 64;

/// Replaces symbolic shape values computed by a chain of nodes with `Shape(x)` (or
/// `Shape(x, start, end)` from opset 15) of a value `x` whose shape the chain read. Visits the
/// nodes consumers first, so a chain is replaced at its end and the rest is left to `dce`.
fn rematerialise(g: &mut Graph, opset: i64, facts: &Facts, cx: &mut PassContext) -> usize {
    let Ok(order) = g.topo_order() else { return 0 };
    let mut n_rewrites = 0;
    for &n in order.iter().rev() {
        if !g.contains_node(n) {
            continue;
        }
        let node = g.node(n);
        if !foldable(&node.op) || node.op == Op::Shape || node.outputs().len() != 1 {
            continue;
        }
        let Some(out) = node.output(0) else { continue };
        if g.is_unused(out) || g.is_graph_output(out) {
            continue;
        }
        let Some(value) = facts.values.get(&out) else { continue };
        if value.dtype != DType::I64 || value.dims.len() != 1 || value.known().is_some() {
            continue;
        }
        if value.data.contains(&DimValue::Unknown) {
            continue;
        }
        let Some((x, range)) = shape_source(g, n, &value.data, opset, facts) else { continue };
        if !cx.rewrite() {
            break;
        }
        let (op, display) = (node.op.clone(), node.display_name());
        let xname = g.value(x).name.clone();
        let attrs = match range {
            Some((a, b)) => vec![Attribute::int("start", a as i64), Attribute::int("end", b as i64)],
            None => vec![],
        };
        let name = g.fresh_name(&format!("{xname}_shape"));
        let Some(v) = crate::fuse::add_op(g, Op::Shape, vec![Some(x)], attrs, &name, n) else { continue };
        g.replace_uses(out, v);
        let what = match range {
            Some((a, b)) => format!("Shape('{xname}', start={a}, end={b})"),
            None => format!("Shape('{xname}')"),
        };
        cx.note(|| format!("{op} '{display}' computes {what}: replaced by it"));
        n_rewrites += 1;
    }
    n_rewrites
}

/// A value `x` read by a `Shape` node in the backward cone of `n` (or a graph input) whose
/// shape is `want`, whole (`None`) or the run `start..end` of its dims (opset 15 and later).
fn shape_source(
    g: &Graph,
    n: NodeId,
    want: &[DimValue],
    opset: i64,
    facts: &Facts,
) -> Option<(ValueId, Option<(usize, usize)>)> {
    let mut candidates: Vec<ValueId> = Vec::new();
    let mut seen: HashSet<NodeId> = HashSet::new();
    let mut stack = vec![n];
    while let Some(m) = stack.pop() {
        if seen.len() >= CONE_LIMIT || !seen.insert(m) {
            continue;
        }
        let node = g.node(m);
        if node.op == Op::Shape {
            if let Some(x) = node.input(0) {
                candidates.push(x);
            }
            continue;
        }
        for &i in node.inputs().iter().flatten() {
            if let Some((p, _)) = g.producer(i) {
                stack.push(p);
            }
        }
    }
    candidates.extend(g.inputs.iter().map(|d| d.value));
    for x in candidates {
        let Some(shape) = facts.shape(x) else { continue };
        let dims: Vec<&DimValue> = shape.iter().map(|d| &d.value).collect();
        if dims.len() == want.len() && dims.iter().zip(want).all(|(a, b)| *a == b) {
            return Some((x, None));
        }
        if opset < 15 || want.is_empty() {
            continue;
        }
        for a in 0..dims.len().saturating_sub(want.len() - 1) {
            if dims[a..a + want.len()].iter().zip(want).all(|(d, w)| *d == w) {
                return Some((x, Some((a, a + want.len()))));
            }
        }
    }
    None
}

/// A constant target for a Reshape whose target is computed: known entries stay, entries equal
/// to the input's own (symbolic) dim at the same position become 0 ("copy"), and one remaining
/// symbolic entry becomes -1 (inferred from the element count, which the original target
/// preserved too). `None` when the target is already constant or cannot be expressed.
fn reshape_target(g: &Graph, n: NodeId, facts: &Facts) -> Option<Vec<i64>> {
    let node = g.node(n);
    let t = node.input(1)?;
    if g.const_tensor(t).is_some() || node.attrs.get_int("allowzero").unwrap_or(0) != 0 {
        return None;
    }
    let target = facts.values.get(&t)?;
    let input_shape = facts.shape(node.input(0)?);
    let mut out = Vec::with_capacity(target.data.len());
    let mut inferred = false;
    for (i, d) in target.data.iter().enumerate() {
        out.push(match d {
            // A computed 0 (copy) or -1 (infer) keeps its meaning in a constant target.
            DimValue::Known(k) if *k >= 0 => *k,
            DimValue::Known(-1) if !inferred => {
                inferred = true;
                -1
            }
            DimValue::Known(_) => return None,
            sym @ DimValue::Sym(_) => {
                let same = input_shape.and_then(|s| s.get(i)).is_some_and(|dim| &dim.value == sym);
                if same {
                    0
                } else if !inferred {
                    inferred = true;
                    -1
                } else {
                    return None;
                }
            }
            DimValue::Unknown => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use crate::{PassContext, PassManager, PassRegistry};
    use optc_ir::builder::GraphBuilder;
    use optc_ir::{AttrList, Attribute, DType, Dim, Model, Op};

    /// `x [batch, seq]`: `y = Expand(1.0, Concat(Unsqueeze(Gather(Shape(x), 0)),
    /// Unsqueeze(Gather(Shape(x), 1))))` and `z = Slice(table, 0, Unsqueeze(Gather(Shape(x), 1)))`.
    fn model(opset: i64) -> Model {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::I64, vec![Dim::sym("batch"), Dim::sym("seq")]).unwrap();
        let s = b.op(Op::Shape, &[x], vec![]).unwrap();
        let zero = b.init_i64("zero", &[], &[0]).unwrap();
        let one = b.init_i64("one", &[], &[1]).unwrap();
        let axes = b.init_i64("axes", &[1], &[0]).unwrap();
        let g0 = b.op(Op::Gather, &[s, zero], vec![]).unwrap();
        let g1 = b.op(Op::Gather, &[s, one], vec![]).unwrap();
        let u0 = b.op(Op::Unsqueeze, &[g0, axes], vec![]).unwrap();
        let u1 = b.op(Op::Unsqueeze, &[g1, axes], vec![]).unwrap();
        let c = b.op(Op::Concat, &[u0, u1], vec![Attribute::int("axis", 0)]).unwrap();
        let f = b.init_f32("f", &[], &[1.0]).unwrap();
        let y = b.op(Op::Expand, &[f, c], vec![]).unwrap();
        let table = b.init_f32("table", &[8], &[0.0; 8]).unwrap();
        let start = b.init_i64("start", &[1], &[0]).unwrap();
        let z = b.op(Op::Slice, &[table, start, u1], vec![]).unwrap();
        b.output(y, "y", None).unwrap();
        b.output(z, "z", None).unwrap();
        Model::new(b.finish(), opset)
    }

    fn run(model: &mut Model) {
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        PassManager::new(PassRegistry::with_builtins()).run(model, "shape-fold,dce", &mut cx).unwrap();
        optc_ir::verify::verify_model(model).unwrap();
    }

    /// The op and integer attributes of the node that computes input `slot` of the `op` node.
    fn producer_of(model: &Model, op: Op, slot: usize) -> (Op, Vec<(String, i64)>) {
        let g = &model.graph;
        let n = g.nodes().find(|&n| g.node(n).op == op).unwrap();
        let (p, _) = g.producer(g.node(n).input(slot).unwrap()).unwrap();
        let node = g.node(p);
        let attrs = node.attrs.iter().filter_map(|a| Some((a.name.clone(), node.attrs.get_int(&a.name)?))).collect();
        (node.op.clone(), attrs)
    }

    #[test]
    fn symbolic_shape_chains_become_shape_nodes() {
        let mut m = model(17);
        run(&mut m);
        assert_eq!(producer_of(&m, Op::Expand, 1), (Op::Shape, vec![]));
        let run_of_seq = vec![("start".to_string(), 1), ("end".to_string(), 2)];
        assert_eq!(producer_of(&m, Op::Slice, 2), (Op::Shape, run_of_seq));
        let g = &m.graph;
        let ops: Vec<Op> = g.nodes().map(|n| g.node(n).op.clone()).collect();
        assert!(!ops.iter().any(|o| matches!(o, Op::Concat | Op::Unsqueeze | Op::Gather)), "{ops:?}");
    }

    #[test]
    fn before_opset_15_only_whole_shapes_are_replaced() {
        let mut m = model(13);
        run(&mut m);
        assert_eq!(producer_of(&m, Op::Expand, 1), (Op::Shape, vec![]));
        assert_eq!(producer_of(&m, Op::Slice, 2).0, Op::Unsqueeze);
    }
}
