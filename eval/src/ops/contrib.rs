//! Kernels for the `com.microsoft` ops that optc's fusion passes emit (onnxruntime's contrib
//! ops), so that optc runs and verifies its own output: `FusedConv`, `FusedGemm`,
//! `SkipLayerNormalization`, `SkipSimplifiedLayerNormalization`, `BiasGelu`, `FastGelu`,
//! `QuickGelu`, `Attention` (self-attention with packed Q/K/V weights and a 2-D mask).
//!
//! Each is the standard op it fuses followed or preceded by the ops it absorbs, computed with
//! the standard kernels, so they agree with the unfused graph up to float rounding.

use super::{Ctx, dispatch};
use crate::error::Result;
use crate::value::{Tensor, Value};
use ndarray::{ArrayD, Axis, Slice};
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
        "Attention" => ms_attention(cx, inputs),
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

/// `Attention(input [B, S, K], weights [K, 3N], bias [3N]?, mask_index [B, T]?)`: the packed
/// projection `input @ weights + bias` split into Q, K and V of width N, then the standard
/// Attention op with `num_heads` heads and `scale` (1/sqrt(N / num_heads) when absent or 0);
/// a 2-D mask adds `mask_filter_value` (-10000 by default) to the scores of keys where it is 0.
/// Past state, attention bias, `qkv_hidden_sizes`, `unidirectional` and rotary variants are
/// refused.
fn ms_attention(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let at = |i: usize| inputs.get(i).copied().flatten();
    if (4..inputs.len()).any(|i| at(i).is_some())
        || cx
            .node
            .attrs
            .iter()
            .any(|a| matches!(a.name.as_str(), "qkv_hidden_sizes" | "do_rotary" | "past_present_share_buffer"))
        || cx.attr_int("unidirectional", 0) != 0
    {
        return Err(
            cx.err("only self-attention without past state, attention bias or unidirectional masking is supported")
        );
    }
    let (x, w) = match (at(0), at(1)) {
        (Some(x), Some(w)) => (x, w),
        _ => return Err(cx.err("input and weights are required")),
    };
    let heads = cx.attr_int("num_heads", 0);
    let mut qkv = first(cx, run_as(cx, Op::MatMul, vec![], 13, &[Some(x), Some(w)])?)?;
    if let Some(b) = at(2) {
        qkv = first(cx, run_as(cx, Op::Add, vec![], 14, &[Some(&qkv), Some(b)])?)?;
    }
    let Value::Tensor(t) = &qkv else { return Err(cx.err("the projection is not a tensor")) };
    let shape = t.shape().to_vec();
    if shape.len() != 3 || shape[2] % 3 != 0 {
        return Err(cx.err(format!("input @ weights has shape {shape:?}, not [B, S, 3 * hidden]")));
    }
    let n = (shape[2] / 3) as i64;
    if heads <= 0 || n % heads != 0 {
        return Err(cx.err(format!("num_heads {heads} does not divide the hidden size {n}")));
    }
    let Tensor::F32(a) = t else { return Err(cx.err(format!("Attention takes float32, not {}", t.dtype()))) };
    let nu = n as usize;
    let parts: Vec<Value> = (0..3)
        .map(|i| Value::Tensor(Tensor::F32(a.slice_axis(Axis(2), Slice::from(i * nu..(i + 1) * nu)).to_owned())))
        .collect();
    let mut scale = cx.attr_float("scale", 0.0);
    if scale == 0.0 {
        scale = 1.0 / ((n / heads) as f32).sqrt();
    }
    let mask = match at(3) {
        None => None,
        Some(m) => {
            let Value::Tensor(m) = m else { return Err(cx.err("mask_index is not a tensor")) };
            let ms = m.shape().to_vec();
            if ms.len() != 2 || ms[0] != shape[0] {
                return Err(cx.err(format!(
                    "mask_index has shape {ms:?}; only a 2-D [batch, total sequence] mask is supported"
                )));
            }
            let filter = cx.attr_float("mask_filter_value", -10000.0);
            let v = m.to_f64_vec().ok_or_else(|| cx.err("mask_index must be an integer tensor"))?;
            let add: Vec<f32> = v.iter().map(|&x| if x > 0.0 { 0.0 } else { filter }).collect();
            let a = ArrayD::from_shape_vec(vec![ms[0], 1, 1, ms[1]], add).map_err(|e| cx.err(e.to_string()))?;
            Some(Value::Tensor(Tensor::F32(a)))
        }
    };
    let attrs = vec![
        Attribute::int("q_num_heads", heads),
        Attribute::int("kv_num_heads", heads),
        Attribute::float("scale", scale),
    ];
    let ins = [Some(&parts[0]), Some(&parts[1]), Some(&parts[2]), mask.as_ref()];
    let y = first(cx, run_as(cx, Op::Attention, attrs, 23, &ins)?)?;
    Ok(vec![y])
}
