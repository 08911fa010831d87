//! `sink-bias`: moves the bias of a residual branch into the LayerNormalization that feeds the
//! residual, so one elementwise Add per sublayer disappears (post-norm transformers: BERT,
//! MiniLM, RoBERTa, ...).
//!
//! ```text
//! r = LayerNormalization(x, gamma, beta)        r' = LayerNormalization(x, gamma, beta + b)
//! y = (m + b) + r                        ->     y  = m + r'
//! z = r W + c   (every other reader of r)       z  = r' W + (c - b W)
//! ```
//! Every other reader of `r` must be linear with a constant bias to compensate: a `MatMul` by a
//! constant followed by a bias `Add` or `com.microsoft::BiasGelu`, or
//! `com.microsoft::Attention` (whose input projection carries its bias). The residual `Add`
//! stays, the bias `Add` goes. `(r + b) W - b W` differs from `r W` by float rounding only.

use super::{drop_dead_from, f32_const, per_axis};
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::infer::Facts;
use optc_ir::{AttrList, Graph, Model, NodeId, Op, Use, ValueId};

pub struct SinkBias;

impl Pass for SinkBias {
    fn name(&self) -> &str {
        "sink-bias"
    }
    fn description(&self) -> &str {
        "move a residual branch's bias Add into the LayerNormalization beta feeding the residual (compensated in its other readers' biases)"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Rounding { rtol: 1e-4, atol: 1e-5 }
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let rewrites = crate::util::for_each_graph(model, &mut |g, opset| run_graph(g, opset, cx));
        Ok(PassOutcome { rewrites })
    }
}

fn run_graph(g: &mut Graph, opset: i64, cx: &mut PassContext) -> usize {
    let Ok(order) = g.topo_order() else { return 0 };
    let facts = optc_ir::infer::infer(g, opset);
    let mut n = 0;
    for l in order {
        if g.contains_node(l) && g.node(l).op == Op::LayerNormalization && sink(g, l, &facts, cx) {
            n += 1;
        }
    }
    n
}

/// A reader of the norm's output that absorbs `- b W` in its bias: the bias value to replace,
/// the constant weights `W [H, N]`, and where the new bias goes.
struct Compensate {
    node: NodeId,
    slot: usize,
    bias: ValueId,
    weights: ValueId,
}

fn is_ms(g: &Graph, n: NodeId, op_type: &str) -> bool {
    let op = &g.node(n).op;
    op.is_opaque() && op.op_type() == op_type && op.domain() == "com.microsoft"
}

/// How the reader `(n, slot)` of the norm's output compensates, if it can.
fn compensation(g: &Graph, n: NodeId, slot: usize, h: usize) -> Option<Compensate> {
    let node = g.node(n);
    let weights_ok = |w: ValueId| g.const_tensor(w).is_some_and(|t| t.dims.len() == 2 && t.dims[0] as usize == h);
    if is_ms(g, n, "Attention") && slot == 0 {
        let (w, b) = (node.input(1)?, node.input(2)?);
        return (weights_ok(w) && g.const_tensor(b).is_some()).then_some(Compensate {
            node: n,
            slot: 2,
            bias: b,
            weights: w,
        });
    }
    if node.op != Op::MatMul || slot != 0 || node.inputs().len() != 2 {
        return None;
    }
    let w = node.input(1)?;
    if !weights_ok(w) {
        return None;
    }
    let out = node.output(0)?;
    let (c, cslot) = super::single_use(g, out)?;
    let cn = g.node(c);
    if cn.op == Op::Add && cn.inputs().len() == 2 {
        let b = cn.input(1 - cslot)?;
        return g.const_tensor(b).is_some().then_some(Compensate { node: c, slot: 1 - cslot, bias: b, weights: w });
    }
    if is_ms(g, c, "BiasGelu") && cslot == 0 {
        let b = cn.input(1)?;
        return g.const_tensor(b).is_some().then_some(Compensate { node: c, slot: 1, bias: b, weights: w });
    }
    None
}

fn sink(g: &mut Graph, l: NodeId, facts: &Facts, cx: &mut PassContext) -> bool {
    let node = g.node(l);
    let lname = node.display_name();
    let (Some(x), Some(r)) = (node.input(0), node.output(0)) else { return false };
    if node.outputs().iter().skip(1).flatten().any(|&o| !g.is_unused(o)) || g.is_graph_output(r) {
        return false;
    }
    let Some(rank) = facts.shape(x).map(|s| s.len()) else { return false };
    let axis = node.attrs.get_int("axis").unwrap_or(-1);
    if axis != -1 && axis != rank as i64 - 1 {
        return false;
    }
    let Some(gamma) = node.input(1) else { return false };
    let Some((gdata, gdims)) = f32_const(g, gamma) else { return false };
    if gdims.len() != 1 {
        return false;
    }
    let h = gdata.len();
    let beta = node.input(2);
    let beta_data: Vec<f32> = match beta {
        None => vec![0.0; h],
        Some(bv) => match f32_const(g, bv) {
            Some((d, dims)) if dims.len() == 1 && d.len() == h => d,
            _ => return false,
        },
    };
    // The residual Add: (m + b) + r with b a constant over the last axis.
    let uses = g.uses(r);
    let mut residual = None;
    for (a, u) in &uses {
        let Use::Input(slot) = *u else { return false };
        let an = g.node(*a);
        if an.op != Op::Add || an.inputs().len() != 2 {
            continue;
        }
        let Some(t) = an.input(1 - slot) else { continue };
        let Some((bn, _)) = g.producer(t) else { continue };
        if g.node(bn).op != Op::Add || super::single_use(g, t).is_none() {
            continue;
        }
        let bnode = g.node(bn);
        for bslot in 0..2 {
            let (Some(bv), Some(m)) = (bnode.input(bslot), bnode.input(1 - bslot)) else { continue };
            let Some((bd, bdims)) = f32_const(g, bv) else { continue };
            if g.const_tensor(m).is_some() {
                continue;
            }
            let brank = bdims.len().max(1);
            let m_rank = facts.shape(m).map(|s| s.len());
            if brank > 1 && m_rank.is_none_or(|mr| mr < brank) {
                continue;
            }
            if let Some(b) = per_axis(&bd, &bdims, brank, brank - 1, h) {
                residual = Some((*a, slot, bn, m, b));
                break;
            }
        }
        if residual.is_some() {
            break;
        }
    }
    let Some((a, aslot, bn, m, b)) = residual else { return false };
    let bname = g.node(bn).display_name();
    let mut comps = Vec::new();
    for (n, u) in &uses {
        if *n == a {
            continue;
        }
        let Use::Input(slot) = *u else { return false };
        match compensation(g, *n, slot, h) {
            Some(c) => comps.push(c),
            None => {
                let reader = g.node(*n);
                cx.note(|| {
                    format!(
                        "bias Add '{bname}' stays: {} '{}' also reads LayerNormalization '{lname}' and has no bias to compensate",
                        reader.op,
                        reader.display_name()
                    )
                });
                return false;
            }
        }
    }
    // Each compensation: the new bias c - b W, checked before anything changes.
    let mut new_biases = Vec::with_capacity(comps.len());
    for c in &comps {
        let (Some((w, wdims)), Some((cb, cdims))) = (f32_const(g, c.weights), f32_const(g, c.bias)) else {
            return false;
        };
        let cols = wdims[1] as usize;
        let Some(cb) = per_axis(&cb, &cdims, cdims.len().max(1), cdims.len().max(1) - 1, cols) else { return false };
        if cdims.len() > 1 {
            return false;
        }
        let nb: Vec<f32> = (0..cols)
            .map(|j| {
                let bw: f64 = (0..h).map(|k| b[k] as f64 * w[k * cols + j] as f64).sum();
                (cb[j] as f64 - bw) as f32
            })
            .collect();
        new_biases.push((vec![cols as i64], nb));
    }
    if !cx.rewrite() {
        return false;
    }
    let new_beta: Vec<f32> = beta_data.iter().zip(&b).map(|(x, y)| x + y).collect();
    let base = beta.map(|v| g.value(v).name.clone()).unwrap_or_else(|| format!("{lname}_beta"));
    let Some(bv) = super::add_f32(g, &format!("{base}_sunk"), vec![h as i64], &new_beta) else { return false };
    let mut ins = g.node(l).inputs().to_vec();
    ins.resize(ins.len().max(3), None);
    ins[2] = Some(bv);
    g.set_inputs(l, ins);
    for (c, (dims, nb)) in comps.iter().zip(new_biases) {
        let base = g.value(c.bias).name.clone();
        let Some(v) = super::add_f32(g, &format!("{base}_comp"), dims, &nb) else { return false };
        g.set_input(c.node, c.slot, Some(v));
    }
    g.set_input(a, 1 - aslot, Some(m));
    if let Some(t) = g.node(bn).output(0) {
        drop_dead_from(g, t);
    }
    let n = comps.len();
    cx.note(|| {
        format!(
            "moved bias Add '{bname}' into the beta of LayerNormalization '{lname}' ({n} reader biases compensated)"
        )
    });
    true
}

#[cfg(test)]
mod tests {
    use crate::quant::Rng;
    use crate::test_support::f32_value;
    use crate::{PassContext, PassManager, PassRegistry};
    use optc_eval::Evaluator;
    use optc_ir::builder::GraphBuilder;
    use optc_ir::{Attribute, DType, Dim, Model, Op};

    const S: i64 = 3;
    const H: i64 = 8;
    const F: i64 = 16;

    /// A post-norm feed-forward sublayer: `r = LN(x)`, `y = LN((Relu(r W1 + b1) W2 + b2) + r)`;
    /// with `tap`, `r` is also a graph output (a reader that cannot compensate).
    fn sublayer(tap: bool) -> Model {
        let mut rng = Rng(11);
        let mut b = GraphBuilder::new("g");
        let mut c = |b: &mut GraphBuilder, name: &str, dims: &[i64], scale: f32| {
            let n: i64 = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.normal() * scale).collect();
            b.init_f32(name, dims, &v).unwrap()
        };
        let x = b.input("x", DType::F32, vec![Dim::known(S), Dim::known(H)]).unwrap();
        let (g1, be1, g2, be2) = (
            c(&mut b, "g1", &[H], 1.0),
            c(&mut b, "be1", &[H], 0.5),
            c(&mut b, "g2", &[H], 1.0),
            c(&mut b, "be2", &[H], 0.5),
        );
        let (w1, b1, w2, b2) = (
            c(&mut b, "w1", &[H, F], 0.5),
            c(&mut b, "b1", &[F], 0.5),
            c(&mut b, "w2", &[F, H], 0.5),
            c(&mut b, "b2", &[H], 2.0),
        );
        let ln = |b: &mut GraphBuilder, v, g, be| {
            b.op(Op::LayerNormalization, &[v, g, be], vec![Attribute::int("axis", -1)]).unwrap()
        };
        let r = ln(&mut b, x, g1, be1);
        let h = b.op(Op::MatMul, &[r, w1], vec![]).unwrap();
        let h = b.op(Op::Add, &[h, b1], vec![]).unwrap();
        let h = b.op(Op::Relu, &[h], vec![]).unwrap();
        let o = b.op(Op::MatMul, &[h, w2], vec![]).unwrap();
        let o = b.op(Op::Add, &[b2, o], vec![]).unwrap();
        let s = b.op(Op::Add, &[o, r], vec![]).unwrap();
        let y = ln(&mut b, s, g2, be2);
        b.output(y, "y", None).unwrap();
        if tap {
            let t = b.op(Op::Relu, &[r], vec![]).unwrap();
            b.output(t, "tap", None).unwrap();
        }
        Model::new(b.finish(), 17)
    }

    fn eval(model: &Model) -> Vec<f64> {
        let mut rng = Rng(2);
        let x: Vec<f32> = (0..S * H).map(|_| rng.normal() * 3.0).collect();
        let feeds = [("x".to_string(), f32_value(&[S, H], &x))].into_iter().collect();
        let out = Evaluator::new(model).unwrap().run(&feeds).unwrap();
        out[0].1.tensor().unwrap().to_f64_vec().unwrap()
    }

    fn run(model: &mut Model) -> Vec<String> {
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.explain = true;
        PassManager::new(PassRegistry::with_builtins()).run(model, "sink-bias,dce", &mut cx).unwrap();
        optc_ir::verify::verify_model(model).unwrap();
        cx.explanations().iter().map(|(_, n)| n.clone()).collect()
    }

    fn adds(model: &Model) -> usize {
        let g = &model.graph;
        g.nodes().filter(|&n| g.node(n).op == Op::Add).count()
    }

    #[test]
    fn the_residual_bias_moves_into_the_norm() {
        let mut model = sublayer(false);
        let want = eval(&model);
        let notes = run(&mut model);
        assert_eq!(adds(&model), 2, "{notes:?}");
        assert!(
            notes.iter().any(|n| n.contains("moved bias Add") && n.contains("1 reader biases compensated")),
            "{notes:?}"
        );
        let got = eval(&model);
        for (i, (a, b)) in want.iter().zip(&got).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "[{i}] {a} vs {b}");
        }
    }

    #[test]
    fn a_reader_without_a_bias_keeps_the_add() {
        let mut model = sublayer(true);
        let notes = run(&mut model);
        assert_eq!(adds(&model), 3);
        assert!(notes.iter().any(|n| n.contains("has no bias to compensate")), "{notes:?}");
    }
}
