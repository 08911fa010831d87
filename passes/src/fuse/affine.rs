//! `fuse-bn`: folds per-channel affine ops into the weights of the layer before them.
//!
//! `Conv`, `Gemm` and `MatMul` with constant float32 weights, followed (as the only reader of
//! their output) by an inference `BatchNormalization` or by `Mul`/`Div`/`Add`/`Sub` with a
//! constant that varies only along the output channel, absorb that op:
//! `s * (W x + b) + t = (s W) x + (s b + t)`. Chains fold one op at a time, so the
//! `Sub/Mul/Add` form of batch norm that exporters produce folds as well. `MatMul` has no
//! bias: `Mul`/`Div` fold into its weights, and an `Add`/`Sub` turns a MatMul of a matrix into
//! a `Gemm` with that bias. The result differs from the original by float
//! rounding only.

use super::{add_f32, f32_const, per_axis, single_use};
use crate::util::{can_forward_output, forward_output};
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::{AttrList, AttrValue, Attribute, Graph, Model, NodeId, Op};

pub struct FuseAffine;

impl Pass for FuseAffine {
    fn name(&self) -> &str {
        "fuse-bn"
    }
    fn description(&self) -> &str {
        "fold BatchNormalization and per-channel Mul/Div/Add/Sub constants into the preceding Conv/Gemm/MatMul weights"
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
    for p in order {
        if !g.contains_node(p) || !matches!(g.node(p).op, Op::Conv | Op::Gemm | Op::MatMul) {
            continue;
        }
        // A MatMul whose left operand is a matrix may become a Gemm to absorb a bias.
        let a_is_matrix = g.node(p).input(0).and_then(|a| facts.shape(a)).is_some_and(|s| s.len() == 2);
        // The weights are decoded once per layer and written once after its whole chain folded.
        let mut weights: Option<(Vec<f32>, Vec<i64>)> = None;
        let mut folded = 0;
        while try_fold(g, p, a_is_matrix, &mut weights, cx) {
            folded += 1;
        }
        if folded > 0
            && let (Some((w, dims)), Some(wv)) = (weights, g.node(p).input(1))
        {
            let base = g.value(wv).name.clone();
            if let Some(new_w) = add_f32(g, &format!("{base}_fused"), dims, &w) {
                g.set_input(p, 1, Some(new_w));
            }
        }
        n += folded;
    }
    n
}

/// How the layer's output channels map to its weights.
enum Layer {
    /// Conv: weights [M, C/group, k...], channel axis 1 of an output of the weights' rank.
    Conv { rank: usize },
    /// Gemm: channels are the columns; `trans_b` says whether B is [N, K].
    Gemm { trans_b: bool, beta: f32 },
    /// MatMul with a 2-D constant B [K, N]: channels are the last axis; no bias.
    MatMul,
}

/// Folds the one consumer of layer `p`'s output into it. `weights` holds the layer's weights as
/// folded so far (decoded on the first call); the caller writes them back.
fn try_fold(
    g: &mut Graph,
    p: NodeId,
    a_is_matrix: bool,
    weights: &mut Option<(Vec<f32>, Vec<i64>)>,
    cx: &mut PassContext,
) -> bool {
    let pname = g.node(p).display_name();
    let op = g.node(p).op.clone();
    let Some(o) = g.node(p).output(0) else { return false };
    let Some((c, slot)) = single_use(g, o) else { return false };
    let cop = g.node(c).op.clone();
    if !matches!(cop, Op::BatchNormalization | Op::Mul | Op::Div | Op::Add | Op::Sub) {
        return false;
    }
    let cname = g.node(c).display_name();
    let why_not = |cx: &mut PassContext, why: &str| {
        cx.note(|| format!("{cop} '{cname}' stays after {op} '{pname}': {why}"));
        false
    };
    let Some(wv) = g.node(p).input(1) else { return false };
    if weights.is_none() {
        *weights = f32_const(g, wv);
    }
    let Some((_, wdims)) = weights.as_ref() else {
        return why_not(cx, "the weights are not a float32 constant");
    };
    let wdims = wdims.clone();
    let (mut layer, channels) = match op {
        Op::Conv if wdims.len() >= 3 => (Layer::Conv { rank: wdims.len() }, wdims[0] as usize),
        Op::Gemm if wdims.len() == 2 => {
            let trans_b = g.node(p).attrs.get_int("transB").unwrap_or(0) != 0;
            let beta = g.node(p).attrs.get_float("beta").unwrap_or(1.0);
            (Layer::Gemm { trans_b, beta }, if trans_b { wdims[0] } else { wdims[1] } as usize)
        }
        Op::MatMul if wdims.len() == 2 && g.node(p).inputs().len() == 2 => (Layer::MatMul, wdims[1] as usize),
        _ => return false,
    };
    // Per-channel scale and shift of the consumer.
    let (scale, shift): (Vec<f64>, Vec<f64>) = match cop {
        Op::BatchNormalization => {
            let node = g.node(c);
            if node.attrs.get_int("training_mode").unwrap_or(0) != 0
                || node.outputs().iter().skip(1).flatten().any(|&v| !g.is_unused(v))
            {
                return why_not(cx, "batch norm in training mode");
            }
            if matches!(layer, Layer::MatMul) {
                return false;
            }
            let eps = node.attrs.get_float("epsilon").unwrap_or(1e-5) as f64;
            let mut params = Vec::new();
            for i in 1..5 {
                let v = node.input(i).and_then(|v| f32_const(g, v));
                match v {
                    Some((d, _)) if d.len() == channels => params.push(d),
                    _ => {
                        return why_not(
                            cx,
                            "its scale, bias, mean and variance are not constants of one value per channel",
                        );
                    }
                }
            }
            let s: Vec<f64> = (0..channels).map(|m| params[0][m] as f64 / (params[3][m] as f64 + eps).sqrt()).collect();
            let t: Vec<f64> = (0..channels).map(|m| params[1][m] as f64 - params[2][m] as f64 * s[m]).collect();
            (s, t)
        }
        _ => {
            let Some(kv) = g.node(c).input(1 - slot.min(1)) else { return false };
            if g.node(c).inputs().len() != 2 {
                return false;
            }
            if matches!(cop, Op::Sub | Op::Div) && slot != 0 {
                return why_not(cx, "the layer output is the right-hand operand");
            }
            let Some((k, kdims)) = f32_const(g, kv) else {
                return why_not(cx, "the other operand is not a float32 constant");
            };
            let per = match layer {
                Layer::Conv { rank } => per_axis(&k, &kdims, rank, 1, channels),
                Layer::Gemm { .. } => per_axis(&k, &kdims, 2, 1, channels),
                Layer::MatMul => {
                    let r = kdims.len().max(1);
                    if r > 2 { None } else { per_axis(&k, &kdims, r, r - 1, channels) }
                }
            };
            let Some(k) = per else {
                return why_not(cx, "the constant does not vary along the output channel only");
            };
            let k: Vec<f64> = k.iter().map(|&x| x as f64).collect();
            match cop {
                Op::Mul => (k, vec![0.0; channels]),
                Op::Div => {
                    if k.contains(&0.0) {
                        return why_not(cx, "division by zero");
                    }
                    (k.iter().map(|&x| 1.0 / x).collect(), vec![0.0; channels])
                }
                Op::Add => (vec![1.0; channels], k),
                _ => (vec![1.0; channels], k.iter().map(|&x| -x).collect()),
            }
        }
    };
    let to_gemm = matches!(layer, Layer::MatMul) && shift.iter().any(|&x| x != 0.0);
    if to_gemm {
        if !a_is_matrix {
            return why_not(cx, "MatMul has no bias to absorb an addition and its input is not a matrix (no Gemm)");
        }
        layer = Layer::Gemm { trans_b: false, beta: 1.0 };
    }
    // The current bias (beta * C for Gemm), one value per channel.
    let bias_in = g.node(p).input(2);
    let bias: Vec<f64> = match bias_in {
        None => vec![0.0; channels],
        Some(bv) => {
            let Some((b, bdims)) = f32_const(g, bv) else {
                return why_not(cx, "the layer's bias is not a float32 constant");
            };
            let per = match layer {
                Layer::Conv { .. } => (b.len() == channels).then(|| b.clone()),
                _ => per_axis(&b, &bdims, 2, 1, channels),
            };
            let Some(b) = per else { return why_not(cx, "the layer's bias is not one value per channel") };
            let beta = if let Layer::Gemm { beta, .. } = layer { beta as f64 } else { 1.0 };
            b.iter().map(|&x| x as f64 * beta).collect()
        }
    };
    if !can_forward_output(g, c, o) {
        return why_not(cx, "its output names a graph output that cannot be renamed");
    }
    if !cx.rewrite() || !forward_output(g, c, o) {
        return false;
    }
    if to_gemm {
        g.node_mut(p).op = Op::Gemm;
    }
    // Scale the weights along the channel axis.
    let Some((w2, _)) = weights.as_mut() else { return false };
    match layer {
        Layer::Conv { .. } => {
            let per = w2.len() / channels.max(1);
            for (m, chunk) in w2.chunks_mut(per.max(1)).enumerate() {
                let s = scale[m.min(channels - 1)];
                chunk.iter_mut().for_each(|x| *x = (*x as f64 * s) as f32);
            }
        }
        Layer::Gemm { trans_b: true, .. } => {
            let k = wdims[1] as usize;
            for (j, row) in w2.chunks_mut(k.max(1)).enumerate() {
                row.iter_mut().for_each(|x| *x = (*x as f64 * scale[j]) as f32);
            }
        }
        Layer::Gemm { trans_b: false, .. } | Layer::MatMul => {
            for row in w2.chunks_mut(channels.max(1)) {
                row.iter_mut().zip(&scale).for_each(|(x, &s)| *x = (*x as f64 * s) as f32);
            }
        }
    }
    if !matches!(layer, Layer::MatMul) {
        let b2: Vec<f32> = (0..channels).map(|m| (bias[m] * scale[m] + shift[m]) as f32).collect();
        let bname = bias_in.map(|b| g.value(b).name.clone()).unwrap_or_else(|| format!("{pname}_bias"));
        let Some(new_b) = add_f32(g, &format!("{bname}_fused"), vec![channels as i64], &b2) else { return false };
        g.set_input(p, 2, Some(new_b));
        if let Layer::Gemm { .. } = layer {
            let attrs = &mut g.node_mut(p).attrs;
            match attrs.iter_mut().find(|a| a.name == "beta") {
                Some(a) => a.value = AttrValue::Float(1.0),
                None => attrs.push(Attribute::float("beta", 1.0)),
            }
        }
    }
    let into = if to_gemm { "MatMul (now Gemm)".to_string() } else { op.to_string() };
    cx.note(|| format!("folded {cop} '{cname}' into {into} '{pname}'"));
    true
}
