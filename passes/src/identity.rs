//! `identity`: removes nodes that pass their input through unchanged: Identity, Dropout in
//! inference, Cast/CastLike to the same type, identity Transpose, Reshape/Expand/Tile/Pad/Slice
//! that change nothing, single-input Concat and single-output Split. When the removed node wrote
//! a graph output, its input takes over the output's name (if nothing else needs that input's
//! name); otherwise the node stays and `--explain` says why.

use crate::util::{can_forward_output, const_ints, forward_output};
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::infer::{self, Facts};
use optc_ir::{AttrList, DimValue, Graph, Model, NodeId, Op, ValueId};

pub struct IdentityElim;

impl Pass for IdentityElim {
    fn name(&self) -> &str {
        "identity"
    }
    fn description(&self) -> &str {
        "remove no-op nodes: Identity, inference Dropout, same-type Cast, identity Transpose/Reshape/Expand/Slice/Pad/Tile, 1-input Concat"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let rewrites = crate::util::for_each_graph(model, &mut |g, opset| run_graph(g, opset, cx));
        Ok(PassOutcome { rewrites })
    }
}

fn run_graph(g: &mut Graph, opset: i64, cx: &mut PassContext) -> usize {
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(_) => return 0,
    };
    let facts = infer::infer(g, opset);
    let mut n_rewrites = 0;
    for n in order {
        if !g.contains_node(n) {
            continue;
        }
        let Some(src) = passthrough(g, n, opset, &facts) else {
            continue;
        };
        let out = match g.node(n).output(0) {
            Some(o) => o,
            None => continue,
        };
        // The replacement must have the same type where both are known.
        if let (Some(a), Some(b)) = (facts.elem(src), facts.elem(out))
            && a != b
        {
            continue;
        }
        let (op, name) = (g.node(n).op.clone(), g.node(n).display_name());
        if !can_forward_output(g, n, src) {
            cx.note(|| {
                format!("kept {op} '{name}': it names a graph output and its input is itself an input, initializer or output")
            });
            continue;
        }
        if !cx.rewrite() {
            break;
        }
        if forward_output(g, n, src) {
            cx.note(|| format!("removed {op} '{name}'"));
            n_rewrites += 1;
        } else {
            cx.note(|| {
                format!("kept {op} '{name}': it names a graph output and its input is itself an input, initializer or output")
            });
        }
    }
    n_rewrites
}

/// The input a node passes through unchanged, if it is a no-op.
fn passthrough(g: &Graph, n: NodeId, opset: i64, facts: &Facts) -> Option<ValueId> {
    let node = g.node(n);
    let x = node.input(0)?;
    // Other outputs must be absent or unused.
    if node.outputs().iter().skip(1).flatten().any(|&o| !g.is_unused(o)) {
        return None;
    }
    let shape = g.value(x).ty.as_ref().and_then(|t| t.shape()).or_else(|| facts.shape(x)).cloned();
    let rank = shape.as_ref().map(|s| s.len());
    let all = |v: &[i64], want: i64| v.iter().all(|&x| x == want);
    match &node.op {
        Op::Identity => Some(x),
        Op::Dropout => {
            let inference = if opset >= 12 {
                match node.input(2) {
                    None => true,
                    Some(t) => const_ints(g, t).is_some_and(|v| v.iter().all(|&b| b == 0)),
                }
            } else if opset >= 7 {
                true
            } else {
                node.attrs.get_int("is_test") == Some(1)
            };
            inference.then_some(x)
        }
        Op::Cast => {
            let to = node.attrs.get_int("to")?;
            (facts.elem(x)?.onnx_code() as i64 == to).then_some(x)
        }
        Op::CastLike => (facts.elem(x)? == facts.elem(node.input(1)?)?).then_some(x),
        Op::Transpose => {
            let perm = node.attrs.get_ints("perm");
            match perm {
                Some(p) => p.iter().enumerate().all(|(i, &d)| i as i64 == d).then_some(x),
                None => (rank? <= 1).then_some(x),
            }
        }
        Op::Concat | Op::Sum | Op::Max | Op::Min | Op::Mean => (node.inputs().len() == 1).then_some(x),
        Op::Split => {
            if node.outputs().len() != 1 {
                return None;
            }
            Some(x)
        }
        Op::Reshape => {
            let target = facts.values.get(&node.input(1)?)?.known()?;
            let dims = shape?;
            if dims.len() != target.len() {
                return None;
            }
            let allowzero = node.attrs.get_int("allowzero").unwrap_or(0) == 1;
            let mut free = 0;
            for (d, &t) in dims.iter().zip(&target) {
                match (t, &d.value) {
                    (0, _) if !allowzero => {}
                    (-1, _) => free += 1,
                    (t, DimValue::Known(k)) if t == *k => {}
                    _ => return None,
                }
            }
            (free <= 1).then_some(x)
        }
        Op::Expand => {
            let s = facts.values.get(&node.input(1)?)?.known()?;
            let dims = shape?;
            if s.len() > dims.len() {
                return None;
            }
            let offset = dims.len() - s.len();
            s.iter().enumerate().all(|(i, &e)| e == 1 || dims[offset + i].as_known() == Some(e)).then_some(x)
        }
        Op::Tile => all(&const_ints(g, node.input(1)?)?, 1).then_some(x),
        Op::Pad => {
            let pads = if opset >= 11 { const_ints(g, node.input(1)?)? } else { node.attrs.get_ints("pads")?.to_vec() };
            all(&pads, 0).then_some(x)
        }
        Op::Slice => {
            if opset < 10 {
                return None;
            }
            let starts = const_ints(g, node.input(1)?)?;
            let ends = const_ints(g, node.input(2)?)?;
            if let Some(steps) = node.input(4)
                && !all(&const_ints(g, steps)?, 1)
            {
                return None;
            }
            let axes: Vec<i64> = match node.input(3) {
                Some(a) => const_ints(g, a)?,
                None => (0..starts.len() as i64).collect(),
            };
            let ok = starts.iter().zip(&ends).zip(&axes).all(|((&s, &e), &a)| {
                let known = shape.as_ref().and_then(|dims| {
                    let r = dims.len() as i64;
                    let a = if a < 0 { a + r } else { a };
                    dims.get(a as usize).and_then(|d| d.as_known())
                });
                s == 0 && (e >= i32::MAX as i64 || known.is_some_and(|k| e >= k))
            });
            ok.then_some(x)
        }
        _ => None,
    }
}
