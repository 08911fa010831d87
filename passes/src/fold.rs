//! `fold`: constant folding through optc's evaluator. A node whose inputs are all constants is
//! evaluated once and replaced by an initializer; `Constant` nodes become initializers. A size
//! cap keeps folding from growing the model: a result is kept only if it is at most `max_mb`
//! and no larger than the constants it consumes (or tiny).

use crate::{Exactness, OptionSpec, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_eval::{Tensor, Value};
use optc_ir::{Graph, Init, Model, NodeId, Op};

pub struct Fold;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec { name: "max_mb", default: "64", help: "largest folded result, in MB" },
    OptionSpec { name: "small_kb", default: "4", help: "results up to this size may grow the model" },
];

impl Pass for Fold {
    fn name(&self) -> &str {
        "fold"
    }
    fn description(&self) -> &str {
        "evaluate nodes whose inputs are all constants and store the results as initializers"
    }
    fn options(&self) -> &[OptionSpec] {
        OPTIONS
    }
    fn exactness(&self) -> Exactness {
        // Transcendental functions may round differently from the runtime's kernels.
        Exactness::Rounding { rtol: 1e-5, atol: 1e-6 }
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, opts: &PassOptions) -> Result<PassOutcome, PassError> {
        let max_bytes = (opts.f64("max_mb")? * 1e6) as u64;
        let small = (opts.f64("small_kb")? * 1e3) as u64;
        let rewrites = crate::util::for_each_graph(model, &mut |g, opset| fold_graph(g, opset, cx, max_bytes, small));
        Ok(PassOutcome { rewrites })
    }
}

/// Ops whose result is not a function of their inputs alone.
fn nondeterministic(op: &Op) -> bool {
    matches!(
        op,
        Op::RandomNormal
            | Op::RandomNormalLike
            | Op::RandomUniform
            | Op::RandomUniformLike
            | Op::Bernoulli
            | Op::Multinomial
    )
}

fn constant_value(g: &Graph, v: optc_ir::ValueId) -> Option<Value> {
    let t = g.const_tensor(v)?;
    Tensor::from_ir(t).ok().map(Value::Tensor)
}

fn fold_graph(g: &mut Graph, opset: i64, cx: &mut PassContext, max_bytes: u64, small: u64) -> usize {
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(_) => return 0,
    };
    // Inferred output sizes let oversized results be rejected before evaluating anything
    // (dequantising a large weight, say, on every fixpoint round).
    let facts = optc_ir::infer::infer(g, opset);
    let mut folded = 0;
    for n in order {
        if !g.contains_node(n) {
            continue;
        }
        let node = g.node(n);
        if node.op.is_opaque() || nondeterministic(&node.op) || node.subgraphs().next().is_some() {
            continue;
        }
        let outs: Vec<_> = node.outputs().to_vec();
        if outs.is_empty() || outs.iter().flatten().any(|&o| g.is_graph_output(o)) {
            continue;
        }
        let const_bytes: Option<u64> =
            node.inputs().iter().flatten().map(|&v| g.const_tensor(v).map(|t| t.byte_size())).sum();
        let Some(const_bytes) = const_bytes else { continue };
        let estimate: Option<u64> = outs
            .iter()
            .flatten()
            .map(|&o| {
                let ty = facts.ty(o)?;
                let count = ty.shape()?.iter().try_fold(1u64, |acc, d| {
                    d.as_known().and_then(|k| u64::try_from(k).ok()).and_then(|k| acc.checked_mul(k))
                })?;
                ty.elem()?.storage_bytes(count)
            })
            .sum();
        // A Constant's value is already in the model: lifting it to an initializer never grows it.
        let const_bytes = if node.op == Op::Constant { u64::MAX } else { const_bytes };
        if let Some(est) = estimate
            && (est > max_bytes || (est > small && est > const_bytes))
        {
            let (op, name) = (node.op.clone(), node.display_name());
            cx.note(|| {
                format!("{op} '{name}' not folded: result of {est} B would grow the model (inputs {const_bytes} B)")
            });
            continue;
        }
        let mut inputs = Vec::with_capacity(node.inputs().len());
        let mut in_bytes = 0u64;
        let mut all_const = true;
        for v in node.inputs() {
            match v {
                None => inputs.push(None),
                Some(v) => match constant_value(g, *v) {
                    Some(val) => {
                        in_bytes += g.value(*v).tensor().map(|t| t.byte_size()).unwrap_or(0);
                        inputs.push(Some(val));
                    }
                    None => {
                        all_const = false;
                        break;
                    }
                },
            }
        }
        if !all_const {
            continue;
        }
        let refs: Vec<Option<&Value>> = inputs.iter().map(Option::as_ref).collect();
        let results = match optc_eval::eval_node(g, n, opset, &refs) {
            Ok(r) => r,
            Err(e) => {
                cx.note(|| format!("not folded: {e}"));
                continue;
            }
        };
        let tensors: Option<Vec<Tensor>> = results.into_iter().map(Value::into_tensor).collect();
        let Some(tensors) = tensors else { continue };
        let out_bytes: u64 = tensors.iter().map(|t| t.to_le_bytes().len() as u64).sum();
        let in_bytes = if g.node(n).op == Op::Constant { u64::MAX } else { in_bytes };
        if out_bytes > max_bytes || (out_bytes > small && out_bytes > in_bytes) {
            let (op, name) = (g.node(n).op.clone(), g.node(n).display_name());
            cx.note(|| {
                format!("{op} '{name}' not folded: result {out_bytes} B would grow the model (inputs {in_bytes} B)")
            });
            continue;
        }
        if !cx.rewrite() {
            break;
        }
        replace_with_constants(g, n, &outs, tensors);
        folded += 1;
    }
    folded
}

fn replace_with_constants(g: &mut Graph, n: NodeId, outs: &[Option<optc_ir::ValueId>], tensors: Vec<Tensor>) {
    g.remove_node(n);
    for (o, t) in outs.iter().zip(tensors) {
        let Some(o) = *o else { continue };
        if !g.contains_value(o) {
            continue;
        }
        let name = g.value(o).name.clone();
        g.value_mut(o).init = Some(Init::Dense(t.to_ir(Some(name))));
        g.initializers.push(o);
    }
}
