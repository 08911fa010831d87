//! Kernels for the `com.microsoft` ops that optc's fusion passes emit (onnxruntime's contrib
//! ops), so that optc runs and verifies its own output: `FusedConv`, `FusedGemm`,
//! `SkipLayerNormalization`, `SkipSimplifiedLayerNormalization`, `BiasGelu`, `FastGelu`,
//! `QuickGelu`.
//!
//! Each is the standard op it fuses followed or preceded by the ops it absorbs, computed with
//! the standard kernels, so they agree with the unfused graph up to float rounding.

use super::{Ctx, dispatch};
use crate::error::Result;
use crate::value::{Tensor, Value};
use ndarray::ArrayD;
use optc_ir::{Attribute, Op};

pub fn run(cx: &Ctx, inputs: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
    let Op::Opaque { domain, op_type } = &cx.node.op else { return None };
    if domain != "com.microsoft" {
        return None;
    }
    Some(match op_type.as_str() {
        "FusedConv" => fused(cx, inputs, Op::Conv),
        "FusedGemm" => fused(cx, inputs, Op::Gemm),
        "SkipLayerNormalization" => skip_norm(cx, inputs, false),
        "SkipSimplifiedLayerNormalization" => skip_norm(cx, inputs, true),
        "BiasGelu" => bias_gelu(cx, inputs, "none"),
        "FastGelu" => bias_gelu(cx, inputs, "tanh"),
        "QuickGelu" => quick_gelu(cx, inputs),
        _ => return None,
    })
}

/// Runs the standard `op` with `attrs` on `inputs`, as if it were this node.
fn run_as(cx: &Ctx, op: Op, attrs: Vec<Attribute>, opset: i64, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let mut node = cx.node.clone();
    node.op = op;
    node.domain_raw = None;
    node.attrs = attrs;
    dispatch(&Ctx { node: &node, opset, scope: cx.scope }, inputs)
}

fn first(cx: &Ctx, mut out: Vec<Value>) -> Result<Value> {
    if out.is_empty() {
        return Err(cx.err("the fused op produced no output"));
    }
    Ok(out.swap_remove(0))
}

/// `activation(op(inputs))` with the activation named by the `activation` attribute and its
/// parameters in `activation_params`, as onnxruntime's FusedConv/FusedGemm define them.
fn fused(cx: &Ctx, inputs: &[Option<&Value>], op: Op) -> Result<Vec<Value>> {
    let attrs: Vec<Attribute> =
        cx.node.attrs.iter().filter(|a| a.name != "activation" && a.name != "activation_params").cloned().collect();
    let y = first(cx, run_as(cx, op, attrs, cx.opset.max(13), inputs)?)?;
    let act = cx.attr_string("activation", "");
    let params = cx.attr_floats("activation_params").unwrap_or_default();
    let p = |i: usize, d: f32| params.get(i).copied().unwrap_or(d);
    let (act_op, act_attrs, extra): (Op, Vec<Attribute>, Vec<f32>) = match act.as_str() {
        "" => return Ok(vec![y]),
        "Relu" => (Op::Relu, vec![], vec![]),
        "Tanh" => (Op::Tanh, vec![], vec![]),
        "Sigmoid" => (Op::Sigmoid, vec![], vec![]),
        "LeakyRelu" => (Op::LeakyRelu, vec![Attribute::float("alpha", p(0, 0.01))], vec![]),
        "HardSigmoid" => {
            (Op::HardSigmoid, vec![Attribute::float("alpha", p(0, 0.2)), Attribute::float("beta", p(1, 0.5))], vec![])
        }
        "Clip" => (Op::Clip, vec![], vec![p(0, f32::MIN), p(1, f32::MAX)]),
        other => return Err(cx.err(format!("unsupported activation '{other}'"))),
    };
    let bounds: Vec<Value> = extra.iter().map(|&v| Value::Tensor(Tensor::F32(ArrayD::from_elem(vec![], v)))).collect();
    let mut act_in: Vec<Option<&Value>> = vec![Some(&y)];
    act_in.extend(bounds.iter().map(Some));
    let z = first(cx, run_as(cx, act_op, act_attrs, 13, &act_in)?)?;
    Ok(vec![z])
}

/// `SkipLayerNormalization(input, skip, gamma, beta?, bias?)` and
/// `SkipSimplifiedLayerNormalization(input, skip, gamma, bias?)`: normalise
/// `input + skip (+ bias)` over the last axis. Outputs: the result, the mean and inverse
/// standard deviation (as LayerNormalization gives them) and the sum.
fn skip_norm(cx: &Ctx, inputs: &[Option<&Value>], rms: bool) -> Result<Vec<Value>> {
    let at = |i: usize| inputs.get(i).copied().flatten();
    let (x, skip, gamma) = match (at(0), at(1), at(2)) {
        (Some(x), Some(s), Some(g)) => (x, s, g),
        _ => return Err(cx.err("input, skip and gamma are required")),
    };
    let (beta, bias) = if rms { (None, at(3)) } else { (at(3), at(4)) };
    let mut sum = first(cx, run_as(cx, Op::Add, vec![], 14, &[Some(x), Some(skip)])?)?;
    if let Some(b) = bias {
        sum = first(cx, run_as(cx, Op::Add, vec![], 14, &[Some(&sum), Some(b)])?)?;
    }
    let eps = Attribute::float("epsilon", cx.attr_float("epsilon", 1e-12));
    let attrs = vec![Attribute::int("axis", -1), eps];
    let mut out = if rms {
        run_as(cx, Op::RMSNormalization, attrs, 23, &[Some(&sum), Some(gamma)])?
    } else {
        run_as(cx, Op::LayerNormalization, attrs, 17, &[Some(&sum), Some(gamma), beta])?
    };
    let want = cx.node.outputs().len().max(1);
    out.truncate(3);
    while out.len() < 3 && out.len() < want {
        // RMSNormalization has no mean/inv-std outputs; the slots stay empty in practice.
        out.push(Value::Tensor(Tensor::F32(ArrayD::from_elem(vec![0], 0.0))));
    }
    if want > 3 {
        out.push(sum);
    }
    out.truncate(want);
    Ok(out)
}

/// `BiasGelu(x, bias)` = Gelu(x + bias); `FastGelu(x, bias?)` = the tanh approximation.
fn bias_gelu(cx: &Ctx, inputs: &[Option<&Value>], approximate: &str) -> Result<Vec<Value>> {
    let x = inputs.first().copied().flatten().ok_or_else(|| cx.err("input 0 is required"))?;
    let sum;
    let x = match inputs.get(1).copied().flatten() {
        Some(b) => {
            sum = first(cx, run_as(cx, Op::Add, vec![], 14, &[Some(x), Some(b)])?)?;
            &sum
        }
        None => x,
    };
    run_as(cx, Op::Gelu, vec![Attribute::string("approximate", approximate)], 20, &[Some(x)])
}

/// `QuickGelu(x)` = x * Sigmoid(alpha * x) (alpha 1.702 by default; 1 gives SiLU).
fn quick_gelu(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let alpha = cx.attr_float("alpha", 1.702);
    let t = cx.tensor(inputs, 0)?;
    match t {
        Tensor::F32(a) => Ok(vec![Value::Tensor(Tensor::F32(a.mapv(|v| v / (1.0 + (-alpha * v).exp()))))]),
        Tensor::F64(a) => {
            let al = alpha as f64;
            Ok(vec![Value::Tensor(Tensor::F64(a.mapv(|v| v / (1.0 + (-al * v).exp()))))])
        }
        other => Err(cx.err(format!("QuickGelu takes float32/float64, not {}", other.dtype()))),
    }
}
