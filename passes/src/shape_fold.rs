//! `shape-fold`: evaluates shape arithmetic whose result is known from inferred shapes
//! (Shape, Size, Gather, Concat, Unsqueeze, Squeeze, Slice, Cast, integer Add/Sub/Mul/Div,
//! Equal, Where, Reshape, ConstantOfShape...) and replaces it with initializers. Symbolic dims
//! stay symbolic: `Gather(Shape(x), 1)` folds when dim 1 of `x` is known, even if dim 0 is `batch`.

use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::infer::Facts;
use optc_ir::infer::{self, MAX_TRACKED};
use optc_ir::{AttrList, DType, DimValue, Graph, Init, Model, NodeId, Op, Tensor};

pub struct ShapeFold;

impl Pass for ShapeFold {
    fn name(&self) -> &str {
        "shape-fold"
    }
    fn description(&self) -> &str {
        "fold Shape/Gather/Concat/Unsqueeze/Slice/... arithmetic whose values are known from inferred shapes"
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
                let name = g.fresh_name(&format!("{display}_shape"));
                let raw: Vec<u8> = target.iter().flat_map(|v| v.to_le_bytes()).collect();
                let t = Tensor::from_raw(Some(name.clone()), DType::I64, vec![target.len() as i64], raw.into());
                let Ok(v) = g.add_initializer(name, t) else {
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
    folded
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
