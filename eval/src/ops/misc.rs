//! Kernels: sequences, optionals, strings and Det.

use super::Ctx;
use super::shape::{Num, concat_tensors, norm_axis, numel, reshape_tensor, split_parts, typed};
use crate::error::Result;
use crate::value::{Tensor, Value};
use ndarray::{ArrayD, IxDyn};
use optc_ir::{AttrList, Op};

pub fn run(cx: &Ctx, inputs: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
    let one = |v: Result<Value>| v.map(|v| vec![v]);
    let tensor = |t: Result<Tensor>| t.map(|t| vec![Value::Tensor(t)]);
    Some(match cx.node.op {
        Op::SequenceConstruct => one(sequence_construct(cx, inputs)),
        Op::SequenceEmpty => Ok(vec![Value::Sequence(vec![])]),
        Op::SequenceAt => tensor(sequence_at(cx, inputs)),
        Op::SequenceInsert => one(sequence_insert(cx, inputs)),
        Op::SequenceErase => one(sequence_erase(cx, inputs)),
        Op::SequenceLength => tensor(sequence(cx, inputs, 0).map(|s| scalar_i64(s.len() as i64))),
        Op::SplitToSequence => one(split_to_sequence(cx, inputs)),
        Op::ConcatFromSequence => tensor(concat_from_sequence(cx, inputs)),
        Op::Optional => Ok(vec![Value::Optional(inputs.first().copied().flatten().map(|v| Box::new(v.clone())))]),
        Op::OptionalHasElement => {
            let has = match inputs.first().copied().flatten() {
                None | Some(Value::Optional(None)) => false,
                Some(_) => true,
            };
            Ok(vec![Value::Tensor(Tensor::Bool(ndarray::arr0(has).into_dyn()))])
        }
        Op::OptionalGetElement => match inputs.first().copied().flatten() {
            Some(Value::Optional(Some(v))) => Ok(vec![(**v).clone()]),
            Some(Value::Optional(None)) => Err(cx.err("the optional input is empty")),
            Some(v) => Ok(vec![v.clone()]),
            None => Err(cx.err("input 0 is required")),
        },
        Op::StringConcat => tensor(string_concat(cx, inputs)),
        Op::StringSplit => string_split(cx, inputs),
        Op::StringNormalizer => tensor(string_normalizer(cx, inputs)),
        Op::Det => tensor(det(cx, inputs)),
        Op::SequenceMap => sequence_map(cx, inputs),
        _ => return None,
    })
}

fn scalar_i64(v: i64) -> Tensor {
    Tensor::I64(ndarray::arr0(v).into_dyn())
}

/// Sequence input `i`.
fn sequence<'v>(cx: &Ctx, inputs: &[Option<&'v Value>], i: usize) -> Result<&'v Vec<Tensor>> {
    match inputs.get(i).copied().flatten() {
        Some(Value::Sequence(s)) => Ok(s),
        Some(_) => Err(cx.err(format!("input {i} must be a sequence"))),
        None => Err(cx.err(format!("input {i} is required"))),
    }
}

/// A position input (scalar integer), checked against `[-len, len)` (or `[-len, len]` when
/// `inclusive`) and made non-negative.
fn position(cx: &Ctx, inputs: &[Option<&Value>], i: usize, len: usize, inclusive: bool) -> Result<Option<usize>> {
    let Some(t) = cx.opt_tensor(inputs, i)? else { return Ok(None) };
    let v = t.to_i64_vec().ok_or_else(|| cx.err("position must be an integer"))?;
    let [p] = v[..] else { return Err(cx.err("position must be a scalar")) };
    let n = len as i64;
    let hi = if inclusive { n } else { n - 1 };
    if p < -n || p > hi {
        return Err(cx.err(format!("position {p} is out of range for a sequence of {len}")));
    }
    Ok(Some(if p < 0 { (p + n) as usize } else { p as usize }))
}

fn check_elem_type(cx: &Ctx, seq: &[Tensor], t: &Tensor) -> Result<()> {
    match seq.first() {
        Some(f) if f.dtype() != t.dtype() => {
            Err(cx.err(format!("a sequence of {} cannot hold a {} tensor", f.dtype(), t.dtype())))
        }
        _ => Ok(()),
    }
}

fn sequence_construct(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Value> {
    let mut seq = Vec::with_capacity(inputs.len());
    for i in 0..inputs.len() {
        let t = cx.tensor(inputs, i)?;
        check_elem_type(cx, &seq, t)?;
        seq.push(t.clone());
    }
    Ok(Value::Sequence(seq))
}

fn sequence_at(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let seq = sequence(cx, inputs, 0)?;
    let p = position(cx, inputs, 1, seq.len(), false)?.ok_or_else(|| cx.err("input 1 is required"))?;
    Ok(seq[p].clone())
}

fn sequence_insert(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Value> {
    let seq = sequence(cx, inputs, 0)?;
    let t = cx.tensor(inputs, 1)?;
    check_elem_type(cx, seq, t)?;
    let p = position(cx, inputs, 2, seq.len(), true)?.unwrap_or(seq.len());
    let mut out = seq.clone();
    out.insert(p, t.clone());
    Ok(Value::Sequence(out))
}

fn sequence_erase(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Value> {
    let seq = sequence(cx, inputs, 0)?;
    if seq.is_empty() {
        return Err(cx.err("cannot erase from an empty sequence"));
    }
    let p = position(cx, inputs, 1, seq.len(), false)?.unwrap_or(seq.len() - 1);
    let mut out = seq.clone();
    out.remove(p);
    Ok(Value::Sequence(out))
}

fn split_to_sequence(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Value> {
    let x = cx.tensor(inputs, 0)?;
    let shape = x.shape();
    let axis = norm_axis(cx, cx.attr_int("axis", 0), shape.len())?;
    let dim = shape[axis];
    let split = cx.opt_tensor(inputs, 1)?;
    let parts = match split {
        None => {
            let parts = split_parts(cx, x, axis, &vec![1; dim])?;
            if cx.attr_int("keepdims", 1) == 0 {
                let mut s = shape.clone();
                s.remove(axis);
                parts.iter().map(|p| reshape_tensor(cx, p, &s)).collect::<Result<_>>()?
            } else {
                parts
            }
        }
        Some(t) => {
            let v = t.to_i64_vec().ok_or_else(|| cx.err("split must be integers"))?;
            let sizes: Vec<usize> = if t.shape().is_empty() {
                let len = v.first().and_then(|&l| usize::try_from(l).ok()).filter(|&l| l > 0);
                let len = len.ok_or_else(|| cx.err("split must be positive"))?;
                (0..dim).step_by(len).map(|start| len.min(dim - start)).collect()
            } else {
                v.iter()
                    .map(|&s| usize::try_from(s).map_err(|_| cx.err(format!("negative split size {s}"))))
                    .collect::<Result<_>>()?
            };
            split_parts(cx, x, axis, &sizes)?
        }
    };
    Ok(Value::Sequence(parts))
}

fn concat_from_sequence(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let seq = sequence(cx, inputs, 0)?;
    let axis = cx.node.attrs.get_int("axis").ok_or_else(|| cx.err("missing attribute 'axis'"))?;
    let first = seq.first().ok_or_else(|| cx.err("cannot concatenate an empty sequence"))?;
    if cx.attr_int("new_axis", 0) == 0 {
        let ts: Vec<&Tensor> = seq.iter().collect();
        return concat_tensors(cx, &ts, axis);
    }
    // new_axis: stack along a new axis in [-rank-1, rank].
    let rank = first.shape().len();
    let a = norm_axis(cx, axis, rank + 1)?;
    let stacked: Vec<Tensor> = seq
        .iter()
        .map(|t| {
            let mut s = t.shape();
            if s.len() != rank {
                return Err(cx.err("sequence elements differ in rank"));
            }
            s.insert(a, 1);
            reshape_tensor(cx, t, &s)
        })
        .collect::<Result<_>>()?;
    let ts: Vec<&Tensor> = stacked.iter().collect();
    concat_tensors(cx, &ts, a as i64)
}

/// Runs the body once per element of the first input sequence; additional sequence inputs
/// are walked in step, tensors are passed whole. Output `j` collects the body's output `j`.
fn sequence_map(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let body = cx.attr_graph("body").ok_or_else(|| cx.err("missing attribute 'body'"))?;
    let n = sequence(cx, inputs, 0)?.len();
    for (i, v) in inputs.iter().enumerate().skip(1) {
        match v {
            Some(Value::Sequence(s)) if s.len() != n => {
                return Err(cx.err(format!("input {i} has {} elements, input 0 has {n}", s.len())));
            }
            Some(Value::Sequence(_) | Value::Tensor(_)) => {}
            Some(Value::Optional(_)) => return Err(cx.err(format!("input {i} must be a sequence or a tensor"))),
            None => return Err(cx.err(format!("input {i} is missing"))),
        }
    }
    let mut outs: Vec<Vec<Tensor>> = vec![Vec::with_capacity(n); body.outputs.len()];
    for k in 0..n {
        let args: Vec<Option<Value>> = inputs
            .iter()
            .map(|v| match v {
                Some(Value::Sequence(s)) => Some(Value::Tensor(s[k].clone())),
                other => other.cloned(),
            })
            .collect();
        let res = cx.run_subgraph(body, args)?;
        if res.len() != outs.len() {
            return Err(cx.err(format!("the body returned {} values, it declares {}", res.len(), outs.len())));
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
// Strings
// ---------------------------------------------------------------------------------------------

fn strings<'v>(cx: &Ctx, inputs: &[Option<&'v Value>], i: usize) -> Result<&'v ArrayD<String>> {
    match cx.tensor(inputs, i)? {
        Tensor::Str(a) => Ok(a),
        t => Err(cx.err(format!("input {i} must be a string tensor, not {}", t.dtype()))),
    }
}

/// Numpy-style broadcast of two shapes.
fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let x = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let y = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            if x == y || y == 1 {
                Some(x)
            } else if x == 1 {
                Some(y)
            } else {
                None
            }
        })
        .collect()
}

fn string_concat(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let (a, b) = (strings(cx, inputs, 0)?, strings(cx, inputs, 1)?);
    let shape = broadcast_shape(a.shape(), b.shape())
        .ok_or_else(|| cx.err(format!("shapes {:?} and {:?} do not broadcast", a.shape(), b.shape())))?;
    numel(cx, &shape)?;
    let bad = || cx.err("shapes do not broadcast");
    let (av, bv) = (a.broadcast(IxDyn(&shape)).ok_or_else(bad)?, b.broadcast(IxDyn(&shape)).ok_or_else(bad)?);
    let out = ndarray::Zip::from(&av).and(&bv).map_collect(|x, y| {
        let mut s = String::with_capacity(x.len() + y.len());
        s.push_str(x);
        s.push_str(y);
        s
    });
    Ok(Tensor::Str(out))
}

/// Python's `str.split(sep, maxsplit)`: `None` splits on runs of whitespace and drops empty
/// pieces; a separator keeps them. `maxsplit` limits the number of splits.
fn py_split(s: &str, sep: Option<&str>, maxsplit: Option<usize>) -> Vec<String> {
    match sep {
        Some(sep) => match maxsplit {
            Some(m) => s.splitn(m + 1, sep).map(str::to_string).collect(),
            None => s.split(sep).map(str::to_string).collect(),
        },
        None => {
            let mut out = Vec::new();
            let mut rest = s.trim_start();
            while !rest.is_empty() {
                if maxsplit.is_some_and(|m| out.len() >= m) {
                    out.push(rest.to_string());
                    break;
                }
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                out.push(rest[..end].to_string());
                rest = rest[end..].trim_start();
            }
            out
        }
    }
}

fn string_split(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = strings(cx, inputs, 0)?;
    let delim = cx.node.attrs.get_string("delimiter").filter(|d| !d.is_empty());
    let maxsplit = match cx.node.attrs.get_int("maxsplit") {
        Some(m) if m >= 0 => Some(m as usize),
        _ => None,
    };
    let pieces: Vec<Vec<String>> = x.iter().map(|s| py_split(s, delim, maxsplit)).collect();
    let width = pieces.iter().map(Vec::len).max().unwrap_or(0);
    let mut shape = x.shape().to_vec();
    let counts: Vec<i64> = pieces.iter().map(|p| p.len() as i64).collect();
    let zshape = shape.clone();
    shape.push(width);
    numel(cx, &shape)?;
    let mut y = Vec::with_capacity(pieces.len() * width);
    for mut p in pieces {
        p.resize(width, String::new());
        y.extend(p);
    }
    let y = ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|e| cx.err(e.to_string()))?;
    let z = ArrayD::from_shape_vec(IxDyn(&zshape), counts).map_err(|e| cx.err(e.to_string()))?;
    Ok(vec![Value::Tensor(Tensor::Str(y)), Value::Tensor(Tensor::I64(z))])
}

/// StringNormalizer as onnxruntime runs it: drops elements equal to a stopword (compared
/// case-insensitively unless `is_case_sensitive`), then changes case. An input of shape `[C]`
/// or `[1, C]` keeps its rank; when everything is dropped the result is one empty string.
fn string_normalizer(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = strings(cx, inputs, 0)?;
    let shape = x.shape();
    let two_d = match shape {
        [_] => false,
        [1, _] => true,
        _ => return Err(cx.err(format!("input must have shape [C] or [1, C], not {shape:?}"))),
    };
    let action = cx.attr_string("case_change_action", "NONE");
    let case_sensitive = cx.attr_int("is_case_sensitive", 0) != 0;
    let stopwords: Vec<String> = match cx.node.attrs.attr("stopwords").map(|a| &a.value) {
        Some(optc_ir::AttrValue::Strings(v)) => v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect(),
        _ => vec![],
    };
    let fold = |s: &str| if case_sensitive { s.to_string() } else { s.to_lowercase() };
    let stops: std::collections::HashSet<String> = stopwords.iter().map(|s| fold(s)).collect();
    let change = |s: &str| -> Result<String> {
        Ok(match action.as_str() {
            "LOWER" => s.to_lowercase(),
            "UPPER" => s.to_uppercase(),
            "NONE" => s.to_string(),
            other => return Err(cx.err(format!("unknown case_change_action '{other}'"))),
        })
    };
    let mut out: Vec<String> =
        x.iter().filter(|s| !stops.contains(&fold(s))).map(|s| change(s)).collect::<Result<_>>()?;
    if out.is_empty() {
        out.push(String::new());
    }
    let n = out.len();
    let dims: Vec<usize> = if two_d { vec![1, n] } else { vec![n] };
    Ok(Tensor::Str(ArrayD::from_shape_vec(IxDyn(&dims), out).map_err(|e| cx.err(e.to_string()))?))
}

// ---------------------------------------------------------------------------------------------
// Det
// ---------------------------------------------------------------------------------------------

/// Determinant of one row-major `n x n` matrix by LU decomposition with partial pivoting.
fn det_f64(m: &mut [f64], n: usize) -> f64 {
    let mut det = 1.0;
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| m[i * n + c].abs().total_cmp(&m[j * n + c].abs())).unwrap_or(c);
        if m[p * n + c] == 0.0 {
            return 0.0;
        }
        if p != c {
            for k in 0..n {
                m.swap(p * n + k, c * n + k);
            }
            det = -det;
        }
        let piv = m[c * n + c];
        det *= piv;
        for r in c + 1..n {
            let f = m[r * n + c] / piv;
            if f != 0.0 {
                for k in c..n {
                    m[r * n + k] -= f * m[c * n + k];
                }
            }
        }
    }
    det
}

fn det_arr<T: Num>(a: &ArrayD<T>, cx: &Ctx) -> Result<ArrayD<T>> {
    let shape = a.shape();
    let r = shape.len();
    if r < 2 || shape[r - 1] != shape[r - 2] {
        return Err(cx.err(format!("Det needs square matrices, got shape {shape:?}")));
    }
    let n = shape[r - 1];
    let vals: Vec<f64> = a.iter().map(|x| x.to_f64()).collect();
    let out: Vec<T> = if n == 0 {
        vec![T::one(); shape[..r - 2].iter().product()]
    } else {
        vals.chunks(n * n).map(|c| T::from_f64(det_f64(&mut c.to_vec(), n))).collect()
    };
    ArrayD::from_shape_vec(IxDyn(&shape[..r - 2]), out).map_err(|e| cx.err(e.to_string()))
}

fn det(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    Ok(typed!(cx, x, [F32, F64, F16, BF16], a => det_arr(a, cx)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_split() {
        let s = |x: &str, sep, m| py_split(x, sep, m);
        assert_eq!(s("a,,b", Some(","), None), vec!["a", "", "b"]);
        assert_eq!(s("", Some(","), None), vec![""]);
        assert_eq!(s("  a  b ", None, None), vec!["a", "b"]);
        assert_eq!(s("", None, None), Vec::<String>::new());
        assert_eq!(s("a b  c ", None, Some(1)), vec!["a", "b  c "]);
        assert_eq!(s("a-b-c", Some("-"), Some(1)), vec!["a", "b-c"]);
    }

    #[test]
    fn determinant() {
        let mut m = vec![1.0, 2.0, 3.0, 4.0];
        assert!((det_f64(&mut m, 2) + 2.0).abs() < 1e-12);
        let mut m = vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        assert!((det_f64(&mut m, 3) + 2.0).abs() < 1e-12);
    }
}
