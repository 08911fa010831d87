//! Kernels: control flow. `If`, `Loop`, `Scan` (opset 8 with a batch axis and
//! `sequence_lens`; opset 9+ with per-input axes and directions) and `SequenceMap` run their
//! subgraphs through [`Ctx::run_subgraph`]; a subgraph reads this graph's values by name.

use super::Ctx;
use crate::error::Result;
use crate::map_array;
use crate::value::{Tensor, Value};
use ndarray::{ArrayD, Axis, IxDyn};
use optc_ir::{DType, Graph, Op};

pub fn run(cx: &Ctx, inputs: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
    Some(match cx.node.op {
        Op::If => run_if(cx, inputs),
        Op::Loop => run_loop(cx, inputs),
        Op::Scan if cx.opset < 9 => run_scan8(cx, inputs),
        Op::Scan => run_scan9(cx, inputs),
        Op::SequenceMap => run_sequence_map(cx, inputs),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// If

fn run_if(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let cond = scalar_bool(cx, cx.tensor(inputs, 0)?, "cond")?;
    let name = if cond { "then_branch" } else { "else_branch" };
    let branch = body(cx, name)?;
    if !branch.inputs.is_empty() {
        return Err(cx.err(format!("{name} declares {} inputs; If branches take none", branch.inputs.len())));
    }
    let outs = cx.run_subgraph(branch, Vec::new())?;
    let declared = cx.node.outputs().len();
    if outs.len() != declared {
        return Err(cx.err(format!("{name} has {} outputs, the node declares {declared}", outs.len())));
    }
    Ok(outs)
}

// ---------------------------------------------------------------------------------------------
// Loop

fn run_loop(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let body = body(cx, "body")?;
    let max_trip = match cx.opt_tensor(inputs, 0)? {
        Some(t) => Some(scalar_int(cx, t, "M (max trip count)")?),
        None => None,
    };
    let mut cond = match cx.opt_tensor(inputs, 1)? {
        Some(t) => scalar_bool(cx, t, "cond")?,
        None => true,
    };
    let mut carried: Vec<Option<Value>> = inputs.iter().skip(2).map(|v| v.cloned()).collect();
    let n = carried.len();
    if body.inputs.len() != n + 2 {
        return Err(cx.err(format!(
            "the body takes {} inputs; it must take 2 + {n} (iteration number, condition, loop-carried values)",
            body.inputs.len()
        )));
    }
    if body.outputs.len() < n + 1 {
        return Err(cx.err(format!(
            "the body returns {} outputs; it must return at least 1 + {n} (condition, loop-carried values)",
            body.outputs.len()
        )));
    }
    let k = body.outputs.len() - 1 - n;
    let mut scans: Vec<Vec<Tensor>> = vec![Vec::new(); k];
    let mut i: i64 = 0;
    // As onnxruntime and the onnx reference evaluator do, the body's condition output is
    // honoured even when the node's `cond` input is absent.
    while cond && max_trip.is_none_or(|m| i < m) {
        let mut args = Vec::with_capacity(n + 2);
        args.push(Some(Value::Tensor(Tensor::I64(ArrayD::from_elem(IxDyn(&[]), i)))));
        args.push(Some(Value::Tensor(Tensor::Bool(ArrayD::from_elem(IxDyn(&[]), cond)))));
        args.append(&mut carried);
        let mut outs = cx.run_subgraph(body, args)?;
        if outs.len() != body.outputs.len() {
            return Err(cx.err(format!("the body returned {} values, expected {}", outs.len(), body.outputs.len())));
        }
        let scan_outs = outs.split_off(1 + n);
        carried = outs.split_off(1).into_iter().map(Some).collect();
        cond = match &outs[0] {
            Value::Tensor(t) => scalar_bool(cx, t, "the body's condition output")?,
            _ => return Err(cx.err("the body's condition output must be a tensor")),
        };
        for (j, v) in scan_outs.into_iter().enumerate() {
            match v {
                Value::Tensor(t) => scans[j].push(t),
                _ => return Err(cx.err(format!("scan output {j} of the body must be a tensor"))),
            }
        }
        i = i.checked_add(1).ok_or_else(|| cx.err("the iteration count overflowed"))?;
    }
    let mut result = Vec::with_capacity(n + k);
    for (j, v) in carried.into_iter().enumerate() {
        result.push(v.ok_or_else(|| cx.err(format!("loop-carried value {j} has no value")))?);
    }
    for (j, ts) in scans.into_iter().enumerate() {
        let t = if ts.is_empty() {
            empty_from_type(body, 1 + n + j, 0)
        } else {
            stack(&ts, 0).map_err(|e| cx.err(format!("scan output {j}: {e}")))?
        };
        result.push(Value::Tensor(t));
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Scan

/// Scan 9+: `num_scan_inputs` trailing inputs are scanned along `scan_input_axes`; the body's
/// trailing outputs are stacked along `scan_output_axes`.
fn run_scan9(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let body = body(cx, "body")?;
    let m = usize::try_from(cx.attr_int("num_scan_inputs", -1))
        .map_err(|_| cx.err("the attribute num_scan_inputs is required and must be positive"))?;
    if m == 0 || m > inputs.len() {
        return Err(cx.err(format!("num_scan_inputs is {m}, the node has {} inputs", inputs.len())));
    }
    let n = inputs.len() - m;
    let mut states: Vec<Tensor> = (0..n).map(|i| cx.tensor(inputs, i).cloned()).collect::<Result<_>>()?;
    let scan_in: Vec<&Tensor> = (n..n + m).map(|i| cx.tensor(inputs, i)).collect::<Result<_>>()?;
    if body.inputs.len() != n + m {
        return Err(
            cx.err(format!("the body takes {} inputs, expected {n} states + {m} scan inputs", body.inputs.len()))
        );
    }
    if body.outputs.len() < n {
        return Err(cx.err(format!("the body returns {} outputs, expected at least {n} states", body.outputs.len())));
    }
    let k = body.outputs.len() - n;
    let in_axes = per_item(cx, "scan_input_axes", m, 0)?;
    let in_dirs = per_item(cx, "scan_input_directions", m, 0)?;
    let out_axes = per_item(cx, "scan_output_axes", k, 0)?;
    let out_dirs = per_item(cx, "scan_output_directions", k, 0)?;
    let mut axes = Vec::with_capacity(m);
    let mut seq_len: Option<usize> = None;
    for (j, t) in scan_in.iter().enumerate() {
        let shape = t.shape();
        let ax = norm_axis(in_axes[j], shape.len()).ok_or_else(|| {
            cx.err(format!("scan input {j}: axis {} is out of range for rank {}", in_axes[j], shape.len()))
        })?;
        match seq_len {
            None => seq_len = Some(shape[ax]),
            Some(s) if s != shape[ax] => {
                return Err(
                    cx.err(format!("scan input {j} has {} elements along its scan axis, the first has {s}", shape[ax]))
                );
            }
            _ => {}
        }
        axes.push(ax);
    }
    let seq_len = seq_len.unwrap_or(0);
    let mut scans: Vec<Vec<Tensor>> = vec![Vec::new(); k];
    for t in 0..seq_len {
        let mut args: Vec<Option<Value>> = states.drain(..).map(|s| Some(Value::Tensor(s))).collect();
        for (j, x) in scan_in.iter().enumerate() {
            let at = if in_dirs[j] == 1 { seq_len - 1 - t } else { t };
            let slice = index_axis(x, axes[j], at).map_err(|e| cx.err(format!("scan input {j}: {e}")))?;
            args.push(Some(Value::Tensor(slice)));
        }
        let outs = cx.run_subgraph(body, args)?;
        if outs.len() != n + k {
            return Err(cx.err(format!("the body returned {} values, expected {}", outs.len(), n + k)));
        }
        for (j, v) in outs.into_iter().enumerate() {
            let Value::Tensor(v) = v else { return Err(cx.err(format!("body output {j} must be a tensor"))) };
            if j < n {
                states.push(v);
            } else {
                scans[j - n].push(v);
            }
        }
    }
    let mut result: Vec<Value> = states.into_iter().map(Value::Tensor).collect();
    for (j, mut ts) in scans.into_iter().enumerate() {
        if out_dirs[j] == 1 {
            ts.reverse();
        }
        let t = match ts.first() {
            None => {
                let rank = type_rank(body, n + j).unwrap_or(0);
                let ax = norm_axis(out_axes[j], rank + 1).unwrap_or(0);
                empty_from_type(body, n + j, ax)
            }
            Some(first) => {
                let rank = first.shape().len();
                let ax = norm_axis(out_axes[j], rank + 1).ok_or_else(|| {
                    cx.err(format!("scan output {j}: axis {} is out of range for rank {}", out_axes[j], rank + 1))
                })?;
                stack(&ts, ax).map_err(|e| cx.err(format!("scan output {j}: {e}")))?
            }
        };
        result.push(Value::Tensor(t));
    }
    Ok(result)
}

/// Scan 8: input 0 is the optional `sequence_lens`; states and scan inputs carry a leading
/// batch axis, scan inputs are scanned along axis 1 (`directions` per scan input), scan outputs
/// are `[batch, max_seq, ...]`, zero-padded past each batch entry's length.
fn run_scan8(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let body = body(cx, "body")?;
    let m = usize::try_from(cx.attr_int("num_scan_inputs", -1))
        .map_err(|_| cx.err("the attribute num_scan_inputs is required and must be positive"))?;
    let rest = inputs.len().saturating_sub(1);
    if m == 0 || m > rest {
        return Err(cx.err(format!("num_scan_inputs is {m}, the node has {rest} inputs after sequence_lens")));
    }
    let n = rest - m;
    let states: Vec<&Tensor> = (1..1 + n).map(|i| cx.tensor(inputs, i)).collect::<Result<_>>()?;
    let scan_in: Vec<&Tensor> = (1 + n..1 + n + m).map(|i| cx.tensor(inputs, i)).collect::<Result<_>>()?;
    if body.inputs.len() != n + m {
        return Err(
            cx.err(format!("the body takes {} inputs, expected {n} states + {m} scan inputs", body.inputs.len()))
        );
    }
    if body.outputs.len() < n {
        return Err(cx.err(format!("the body returns {} outputs, expected at least {n} states", body.outputs.len())));
    }
    let k = body.outputs.len() - n;
    let dirs = per_item(cx, "directions", m, 0)?;
    let (batch, max_seq) = {
        let s = scan_in[0].shape();
        if s.len() < 2 {
            return Err(cx.err("scan inputs need a batch and a sequence axis (rank 2 or more)"));
        }
        (s[0], s[1])
    };
    for (j, t) in scan_in.iter().enumerate() {
        let s = t.shape();
        if s.len() < 2 || s[0] != batch || s[1] != max_seq {
            return Err(cx.err(format!("scan input {j} has shape {s:?}; all need [{batch}, {max_seq}, ...]")));
        }
    }
    for (j, t) in states.iter().enumerate() {
        if t.shape().first() != Some(&batch) {
            return Err(cx.err(format!("state {j} has shape {:?}; it needs batch size {batch} first", t.shape())));
        }
    }
    let lens: Vec<usize> = match cx.opt_tensor(inputs, 0)? {
        None => vec![max_seq; batch],
        Some(t) => {
            let v = t.to_i64_vec().ok_or_else(|| cx.err("sequence_lens must be an integer tensor"))?;
            if v.len() != batch {
                return Err(cx.err(format!("sequence_lens has {} entries, the batch is {batch}", v.len())));
            }
            v.into_iter()
                .map(|l| {
                    usize::try_from(l)
                        .ok()
                        .filter(|&l| l <= max_seq)
                        .ok_or_else(|| cx.err(format!("sequence length {l} is outside [0, {max_seq}]")))
                })
                .collect::<Result<_>>()?
        }
    };
    if batch == 0 {
        let mut result: Vec<Value> = states.iter().map(|t| Value::Tensor((*t).clone())).collect();
        for j in 0..k {
            let mut t = empty_from_type(body, n + j, 0);
            // [0, max_seq, ...]: the per-iteration shape behind a zero batch.
            if let Some(dims) = known_dims(body, n + j) {
                let mut shape = vec![0, max_seq];
                shape.extend(dims);
                t = empty_tensor(t.dtype(), &shape);
            }
            result.push(Value::Tensor(t));
        }
        return Ok(result);
    }
    let mut final_states: Vec<Vec<Tensor>> = vec![Vec::with_capacity(batch); n];
    let mut scan_outs: Vec<Vec<Tensor>> = vec![Vec::with_capacity(batch); k];
    for (b, &len) in lens.iter().enumerate() {
        let mut st: Vec<Tensor> = states
            .iter()
            .enumerate()
            .map(|(j, t)| index_axis(t, 0, b).map_err(|e| cx.err(format!("state {j}: {e}"))))
            .collect::<Result<_>>()?;
        let inb: Vec<Tensor> = scan_in
            .iter()
            .enumerate()
            .map(|(j, t)| index_axis(t, 0, b).map_err(|e| cx.err(format!("scan input {j}: {e}"))))
            .collect::<Result<_>>()?;
        let mut per: Vec<Vec<Tensor>> = vec![Vec::with_capacity(max_seq); k];
        for t in 0..len {
            let mut args: Vec<Option<Value>> = st.drain(..).map(|s| Some(Value::Tensor(s))).collect();
            for (j, x) in inb.iter().enumerate() {
                let at = if dirs[j] == 1 { len - 1 - t } else { t };
                let slice = index_axis(x, 0, at).map_err(|e| cx.err(format!("scan input {j}: {e}")))?;
                args.push(Some(Value::Tensor(slice)));
            }
            let outs = cx.run_subgraph(body, args)?;
            if outs.len() != n + k {
                return Err(cx.err(format!("the body returned {} values, expected {}", outs.len(), n + k)));
            }
            for (j, v) in outs.into_iter().enumerate() {
                let Value::Tensor(v) = v else { return Err(cx.err(format!("body output {j} must be a tensor"))) };
                if j < n {
                    st.push(v);
                } else {
                    per[j - n].push(v);
                }
            }
        }
        for (j, s) in st.into_iter().enumerate() {
            final_states[j].push(s);
        }
        for (j, mut ts) in per.into_iter().enumerate() {
            // Entries shorter than the longest sequence are padded with zeros.
            let t = match ts.first() {
                Some(first) => {
                    let pad = zeros_like(first);
                    ts.resize(max_seq, pad);
                    stack(&ts, 0).map_err(|e| cx.err(format!("scan output {j}: {e}")))?
                }
                None => match known_dims(body, n + j) {
                    Some(dims) => {
                        let mut shape = vec![max_seq];
                        shape.extend(dims);
                        zeros_tensor(type_dtype(body, n + j), &shape)
                    }
                    None if max_seq == 0 => empty_from_type(body, n + j, 0),
                    None => {
                        return Err(cx.err(format!(
                            "scan output {j}: batch entry {b} has length 0 and the body's output shape is unknown"
                        )));
                    }
                },
            };
            scan_outs[j].push(t);
        }
    }
    let mut result = Vec::with_capacity(n + k);
    for (j, ts) in final_states.into_iter().enumerate() {
        result.push(Value::Tensor(stack(&ts, 0).map_err(|e| cx.err(format!("state {j}: {e}")))?));
    }
    for (j, ts) in scan_outs.into_iter().enumerate() {
        result.push(Value::Tensor(stack(&ts, 0).map_err(|e| cx.err(format!("scan output {j}: {e}")))?));
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// SequenceMap

fn run_sequence_map(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let body = body(cx, "body")?;
    let len = match inputs.first().copied().flatten() {
        Some(Value::Sequence(s)) => s.len(),
        Some(_) => return Err(cx.err("input 0 must be a sequence")),
        None => return Err(cx.err("input 0 is required")),
    };
    for (i, v) in inputs.iter().enumerate().skip(1) {
        match v {
            Some(Value::Sequence(s)) if s.len() != len => {
                return Err(cx.err(format!("sequence input {i} has {} elements, input 0 has {len}", s.len())));
            }
            Some(Value::Sequence(_)) | Some(Value::Tensor(_)) => {}
            Some(Value::Optional(_)) => return Err(cx.err(format!("input {i} must be a sequence or a tensor"))),
            None => return Err(cx.err(format!("input {i} is missing"))),
        }
    }
    if body.inputs.len() != inputs.len() {
        return Err(cx.err(format!("the body takes {} inputs, the node has {}", body.inputs.len(), inputs.len())));
    }
    let k = body.outputs.len();
    let mut outs: Vec<Vec<Tensor>> = vec![Vec::with_capacity(len); k];
    for i in 0..len {
        let args: Vec<Option<Value>> = inputs
            .iter()
            .map(|v| match v {
                Some(Value::Sequence(s)) => s.get(i).cloned().map(Value::Tensor),
                Some(v) => Some((*v).clone()),
                None => None,
            })
            .collect();
        let res = cx.run_subgraph(body, args)?;
        if res.len() != k {
            return Err(cx.err(format!("the body returned {} values, expected {k}", res.len())));
        }
        for (j, v) in res.into_iter().enumerate() {
            match v {
                Value::Tensor(t) => outs[j].push(t),
                _ => return Err(cx.err(format!("body output {j} must be a tensor"))),
            }
        }
    }
    Ok(outs.into_iter().map(Value::Sequence).collect())
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn body<'a>(cx: &'a Ctx, name: &str) -> Result<&'a Graph> {
    cx.attr_graph(name).ok_or_else(|| cx.err(format!("the graph attribute '{name}' is missing")))
}

/// A one-element tensor read as a condition (bool, or nonzero for numbers).
fn scalar_bool(cx: &Ctx, t: &Tensor, what: &str) -> Result<bool> {
    if t.len() != 1 {
        return Err(cx.err(format!("{what} must hold exactly one element, it has shape {:?}", t.shape())));
    }
    match t {
        Tensor::Bool(a) => Ok(a.iter().next().copied().unwrap_or(false)),
        t => t
            .to_f64_vec()
            .and_then(|v| v.first().copied())
            .map(|x| x != 0.0)
            .ok_or_else(|| cx.err(format!("{what} must be a bool tensor, it is {}", t.dtype()))),
    }
}

fn scalar_int(cx: &Ctx, t: &Tensor, what: &str) -> Result<i64> {
    if t.len() != 1 {
        return Err(cx.err(format!("{what} must hold exactly one element, it has shape {:?}", t.shape())));
    }
    t.to_i64_vec()
        .and_then(|v| v.first().copied())
        .ok_or_else(|| cx.err(format!("{what} must be an integer tensor, it is {}", t.dtype())))
}

/// An ints attribute with one entry per item (default `default` for each when absent).
fn per_item(cx: &Ctx, name: &str, count: usize, default: i64) -> Result<Vec<i64>> {
    match cx.attr_ints(name) {
        None => Ok(vec![default; count]),
        Some(v) if v.len() == count => Ok(v),
        Some(v) => Err(cx.err(format!("attribute {name} has {} entries, expected {count}", v.len()))),
    }
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// The sub-tensor at index `i` along `axis` (rank one less).
fn index_axis(t: &Tensor, axis: usize, i: usize) -> std::result::Result<Tensor, String> {
    if let Tensor::Packed { dtype, .. } = t {
        return Err(format!("element type {dtype} cannot be sliced by the evaluator"));
    }
    let shape = t.shape();
    if axis >= shape.len() || i >= shape[axis] {
        return Err(format!("index {i} along axis {axis} is out of range for shape {shape:?}"));
    }
    Ok(map_array!(t, a => a.index_axis(Axis(axis), i).to_owned()))
}

/// Stacks tensors of one type and shape along a new axis `axis`.
pub(crate) fn stack(ts: &[Tensor], axis: usize) -> std::result::Result<Tensor, String> {
    let first = ts.first().ok_or("nothing to stack")?;
    let mismatch = |o: &Tensor| format!("cannot stack {} with {}", first.dtype(), o.dtype());
    macro_rules! go {
        ($($v:ident),*) => {
            match first {
                $(Tensor::$v(_) => {
                    let views = ts
                        .iter()
                        .map(|t| match t {
                            Tensor::$v(a) => Ok(a.view()),
                            o => Err(mismatch(o)),
                        })
                        .collect::<std::result::Result<Vec<_>, String>>()?;
                    if views.iter().any(|v| v.shape() != views[0].shape()) {
                        let shapes: Vec<_> = ts.iter().map(|t| t.shape()).collect();
                        return Err(format!("the values have different shapes {shapes:?}"));
                    }
                    Tensor::$v(ndarray::stack(Axis(axis), &views).map_err(|e| e.to_string())?)
                })*
                Tensor::Packed { dtype, shape, .. } => {
                    if axis != 0 {
                        return Err(format!("element type {dtype} can only be stacked along axis 0"));
                    }
                    let mut raw = Vec::new();
                    for t in ts {
                        match t {
                            Tensor::Packed { dtype: d, shape: s, raw: r } if d == dtype && s == shape => {
                                raw.extend_from_slice(r)
                            }
                            o => return Err(mismatch(o)),
                        }
                    }
                    let mut out_shape = vec![ts.len()];
                    out_shape.extend_from_slice(shape);
                    let total: usize = out_shape.iter().product();
                    if dtype.storage_bytes(total as u64) != Some(raw.len() as u64) {
                        return Err(format!("element type {dtype} does not pack into whole bytes per entry"));
                    }
                    Tensor::Packed { dtype: *dtype, shape: out_shape, raw }
                }
            }
        };
    }
    Ok(go!(F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool, Str))
}

/// A tensor of zeros (false, "") with the type and shape of `t`.
fn zeros_like(t: &Tensor) -> Tensor {
    match t {
        Tensor::Packed { dtype, shape, raw } => {
            Tensor::Packed { dtype: *dtype, shape: shape.clone(), raw: vec![0; raw.len()] }
        }
        t => map_array!(t, a => ArrayD::from_elem(a.raw_dim(), Default::default())),
    }
}

/// A tensor of zeros of a given element type and shape.
fn zeros_tensor(dtype: DType, shape: &[usize]) -> Tensor {
    let ix = IxDyn(shape);
    match dtype {
        DType::F32 => Tensor::F32(ArrayD::zeros(ix)),
        DType::F64 => Tensor::F64(ArrayD::zeros(ix)),
        DType::F16 => Tensor::F16(ArrayD::from_elem(ix, half::f16::ZERO)),
        DType::BF16 => Tensor::BF16(ArrayD::from_elem(ix, half::bf16::ZERO)),
        DType::I8 => Tensor::I8(ArrayD::zeros(ix)),
        DType::I16 => Tensor::I16(ArrayD::zeros(ix)),
        DType::I32 => Tensor::I32(ArrayD::zeros(ix)),
        DType::I64 => Tensor::I64(ArrayD::zeros(ix)),
        DType::U8 => Tensor::U8(ArrayD::zeros(ix)),
        DType::U16 => Tensor::U16(ArrayD::zeros(ix)),
        DType::U32 => Tensor::U32(ArrayD::zeros(ix)),
        DType::U64 => Tensor::U64(ArrayD::zeros(ix)),
        DType::Bool => Tensor::Bool(ArrayD::from_elem(ix, false)),
        DType::String => Tensor::Str(ArrayD::from_elem(ix, String::new())),
        other => {
            let n: usize = shape.iter().product();
            let bytes = other.storage_bytes(n as u64).unwrap_or(0) as usize;
            Tensor::Packed { dtype: other, shape: shape.to_vec(), raw: vec![0; bytes] }
        }
    }
}

fn empty_tensor(dtype: DType, shape: &[usize]) -> Tensor {
    zeros_tensor(dtype, shape)
}

fn type_dtype(body: &Graph, out: usize) -> DType {
    body.outputs.get(out).and_then(|d| body.value(d.value).ty.as_ref()).and_then(|t| t.elem()).unwrap_or(DType::F32)
}

fn type_rank(body: &Graph, out: usize) -> Option<usize> {
    body.outputs.get(out).and_then(|d| body.value(d.value).ty.as_ref()).and_then(|t| t.shape()).map(|s| s.len())
}

/// The declared per-iteration shape of a body output, symbolic dimensions read as 0.
fn known_dims(body: &Graph, out: usize) -> Option<Vec<usize>> {
    let ty = body.outputs.get(out).and_then(|d| body.value(d.value).ty.as_ref())?;
    Some(ty.shape()?.iter().map(|d| d.as_known().and_then(|n| usize::try_from(n).ok()).unwrap_or(0)).collect())
}

/// An empty scan output (no iterations ran): the body output's declared element type and
/// shape with a 0-sized axis inserted at `axis`.
fn empty_from_type(body: &Graph, out: usize, axis: usize) -> Tensor {
    let mut shape = known_dims(body, out).unwrap_or_default();
    shape.insert(axis.min(shape.len()), 0);
    empty_tensor(type_dtype(body, out), &shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::Scope;
    use optc_ir::{AttrValue, Attribute, Dim, NodeSpec, Type};
    use std::collections::HashMap;

    fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
    }

    /// Runs a single node of `op` with graph attributes in a scope holding `outer` values.
    fn run_node(
        op: Op,
        attrs: Vec<Attribute>,
        inputs: &[Option<Value>],
        outputs: usize,
        opset: i64,
        outer: &Graph,
        outer_env: &HashMap<optc_ir::ValueId, std::sync::Arc<Value>>,
    ) -> Result<Vec<Value>> {
        let mut g = Graph::new("host");
        let ins: Vec<Option<optc_ir::ValueId>> = inputs
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_ref().map(|_| g.add_value(format!("in{i}"), None).unwrap()))
            .collect();
        let outs: Vec<Option<optc_ir::ValueId>> =
            (0..outputs).map(|i| Some(g.add_value(format!("out{i}"), None).unwrap())).collect();
        let id = g.add_node(NodeSpec::new(op, ins, outs).attrs(attrs)).unwrap();
        let scope = Scope { graph: outer, env: outer_env, parent: None };
        let cx = Ctx { node: g.node(id), opset, scope: &scope };
        let refs: Vec<Option<&Value>> = inputs.iter().map(|v| v.as_ref()).collect();
        run(&cx, &refs).unwrap()
    }

    fn ty(dims: &[i64]) -> Option<Type> {
        Some(Type::tensor(DType::F32, dims.iter().map(|&d| Dim::known(d)).collect()))
    }

    /// body(s, x) = (x, s): the new state is the scanned slice, the scan output the old state.
    fn swap_body() -> Graph {
        let mut b = Graph::new("body");
        let s = b.add_value("s", ty(&[2])).unwrap();
        let x = b.add_value("x", ty(&[2])).unwrap();
        b.inputs.push(optc_ir::Decl::new(s));
        b.inputs.push(optc_ir::Decl::new(x));
        b.outputs.push(optc_ir::Decl::new(x));
        b.outputs.push(optc_ir::Decl::new(s));
        b
    }

    #[test]
    fn scan9_reverse_input_and_output_axes() {
        let outer = Graph::new("outer");
        let env = HashMap::new();
        // x: [2 (features), 3 (scan axis 1)]
        let x = f32s(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let init = f32s(&[2], &[0., 0.]);
        let attrs = vec![
            Attribute::new("body", AttrValue::Graph(Box::new(swap_body()))),
            Attribute::int("num_scan_inputs", 1),
            Attribute::ints("scan_input_axes", vec![-1]),
            Attribute::ints("scan_input_directions", vec![1]),
            Attribute::ints("scan_output_axes", vec![1]),
            Attribute::ints("scan_output_directions", vec![1]),
        ];
        let outs = run_node(Op::Scan, attrs, &[Some(init.into()), Some(x.into())], 2, 11, &outer, &env).unwrap();
        // Steps read columns 2, 1, 0: states become [3,6], [2,5], [1,4]; scan outputs are the
        // previous states [0,0], [3,6], [2,5], reversed and stacked along axis 1.
        assert_eq!(outs[0], Value::Tensor(f32s(&[2], &[1., 4.])));
        assert_eq!(outs[1], Value::Tensor(f32s(&[2, 3], &[2., 3., 0., 5., 6., 0.])));
    }

    #[test]
    fn scan8_sequence_lens_pad_with_zeros() {
        let outer = Graph::new("outer");
        let env = HashMap::new();
        // batch 2, seq 3, feature 2
        let x = f32s(&[2, 3, 2], &[1., 1., 2., 2., 3., 3., 4., 4., 5., 5., 6., 6.]);
        let init = f32s(&[2, 2], &[0., 0., 9., 9.]);
        let lens = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![3, 1]).unwrap());
        let attrs = vec![
            Attribute::new("body", AttrValue::Graph(Box::new(swap_body()))),
            Attribute::int("num_scan_inputs", 1),
            Attribute::ints("directions", vec![1]),
        ];
        let outs =
            run_node(Op::Scan, attrs, &[Some(lens.into()), Some(init.into()), Some(x.into())], 2, 8, &outer, &env)
                .unwrap();
        // Batch 0 reads rows 2, 1, 0 -> final state [1,1]; outputs [0,0],[3,3],[2,2].
        // Batch 1 reads row 0 only -> final state [4,4]; outputs [9,9], then zero padding.
        assert_eq!(outs[0], Value::Tensor(f32s(&[2, 2], &[1., 1., 4., 4.])));
        assert_eq!(outs[1], Value::Tensor(f32s(&[2, 3, 2], &[0., 0., 3., 3., 2., 2., 9., 9., 0., 0., 0., 0.])));
    }

    #[test]
    fn loop_reads_outer_values_and_handles_zero_trips() {
        // Body: (i, cond, v) -> (cond, outer_val, i): carries the outer value, scans the counter.
        let mut outer = Graph::new("outer");
        let ov = outer.add_value("outer_val", None).unwrap();
        let mut env = HashMap::new();
        env.insert(ov, std::sync::Arc::new(Value::Tensor(f32s(&[1], &[7.]))));
        let mut b = Graph::new("body");
        let i = b.add_value("i", Some(Type::tensor(DType::I64, vec![]))).unwrap();
        let c = b.add_value("c", None).unwrap();
        let v = b.add_value("v", None).unwrap();
        let o = b.add_value("outer_val", None).unwrap();
        b.value_mut(o).outer = true;
        for x in [i, c, v] {
            b.inputs.push(optc_ir::Decl::new(x));
        }
        for x in [c, o, i] {
            b.outputs.push(optc_ir::Decl::new(x));
        }
        let attrs = || vec![Attribute::new("body", AttrValue::Graph(Box::new(b.clone())))];
        let m = |n: i64| Some(Value::Tensor(Tensor::I64(ArrayD::from_elem(IxDyn(&[]), n))));
        let v0 = Some(Value::Tensor(f32s(&[1], &[0.])));
        let outs = run_node(Op::Loop, attrs(), &[m(3), None, v0.clone()], 2, 13, &outer, &env).unwrap();
        assert_eq!(outs[0], Value::Tensor(f32s(&[1], &[7.])));
        assert_eq!(outs[1], Value::Tensor(Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[3]), vec![0, 1, 2]).unwrap())));
        let outs = run_node(Op::Loop, attrs(), &[m(0), None, v0.clone()], 2, 13, &outer, &env).unwrap();
        assert_eq!(outs[0], Value::Tensor(f32s(&[1], &[0.])));
        assert_eq!(outs[1], Value::Tensor(Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[0]), vec![]).unwrap())));
        // cond false from the start: no iteration.
        let f = Some(Value::Tensor(Tensor::Bool(ArrayD::from_elem(IxDyn(&[]), false))));
        let outs = run_node(Op::Loop, attrs(), &[m(5), f, v0], 2, 13, &outer, &env).unwrap();
        assert_eq!(outs[0], Value::Tensor(f32s(&[1], &[0.])));
    }

    #[test]
    fn if_rejects_bad_conditions_without_panicking() {
        let outer = Graph::new("outer");
        let env = HashMap::new();
        let mut then_b = Graph::new("then");
        let t = then_b.add_value("t", None).unwrap();
        then_b.value_mut(t).outer = true;
        then_b.outputs.push(optc_ir::Decl::new(t));
        let attrs = vec![
            Attribute::new("then_branch", AttrValue::Graph(Box::new(then_b.clone()))),
            Attribute::new("else_branch", AttrValue::Graph(Box::new(then_b))),
        ];
        let two = Some(Value::Tensor(Tensor::Bool(ArrayD::from_elem(IxDyn(&[2]), true))));
        assert!(run_node(Op::If, attrs.clone(), &[two], 1, 13, &outer, &env).is_err());
        let one = Some(Value::Tensor(Tensor::Bool(ArrayD::from_elem(IxDyn(&[]), true))));
        // The branch returns an outer value nobody defined: an error, not a panic.
        assert!(run_node(Op::If, attrs, &[one], 1, 13, &outer, &env).is_err());
    }

    /// A branch graph returning the outer value `name`.
    fn passthrough(name: &str) -> Graph {
        let mut b = Graph::new("branch");
        let v = b.add_value(name, None).unwrap();
        b.value_mut(v).outer = true;
        b.outputs.push(optc_ir::Decl::new(v));
        b
    }

    fn if_node(g: &mut Graph, cond: optc_ir::ValueId, reads: &str, out: &str) -> optc_ir::ValueId {
        let o = g.add_value(out, None).unwrap();
        let attrs = vec![
            Attribute::new("then_branch", AttrValue::Graph(Box::new(passthrough(reads)))),
            Attribute::new("else_branch", AttrValue::Graph(Box::new(passthrough(reads)))),
        ];
        let id = g.add_node(NodeSpec::new(Op::If, vec![Some(cond)], vec![Some(o)]).attrs(attrs)).unwrap();
        let captured = g.find_value(reads).unwrap();
        g.set_captures(id, vec![captured]);
        o
    }

    #[test]
    fn values_read_only_by_a_later_subgraph_are_kept_alive() {
        // y = If(c){c}; z1 = If(y){c} (last direct read of y); z2 = If(c){y} reads y by name.
        let mut g = Graph::new("main");
        let c = g.add_value("c", Some(Type::tensor(DType::Bool, vec![]))).unwrap();
        g.inputs.push(optc_ir::Decl::new(c));
        let y = if_node(&mut g, c, "c", "y");
        let z1 = if_node(&mut g, y, "c", "z1");
        let z2 = if_node(&mut g, c, "y", "z2");
        g.outputs.push(optc_ir::Decl::new(z1));
        g.outputs.push(optc_ir::Decl::new(z2));
        let t = Value::Tensor(Tensor::Bool(ArrayD::from_elem(IxDyn(&[]), true)));
        let outs = crate::interp::run_graph(&g, 13, vec![Some(t.clone())], None, None, None).unwrap();
        assert_eq!(outs, vec![t.clone(), t]);
    }

    #[test]
    fn stack_checks_shapes() {
        let a = f32s(&[2], &[1., 2.]);
        let b = f32s(&[3], &[1., 2., 3.]);
        assert!(stack(&[a.clone(), b], 0).is_err());
        assert_eq!(stack(&[a.clone(), a.clone()], 1).unwrap().shape(), vec![2, 2]);
        assert!(stack(&[a.clone(), a], 2).is_err());
    }
}
