//! Runs every onnx backend node test (from the model cache) with optc's evaluator and writes
//! per-case results to `target/node-tests/optc.tsv` (case, status, detail). The pass rate
//! against the cases onnxruntime passes is judged by `tests/python/test_node_eval.py`.
//!
//! Inputs and outputs are read as the model declares them: a `TensorProto` for tensors, a
//! `SequenceProto` for sequences, an `OptionalProto` for optionals. A case passes only when
//! every output matches (sequences element by element, optionals by presence and content).
//!
//! `OPTC_NODE_FILTER=substring` runs only matching cases and prints each failure.

use optc_eval::{Evaluator, Tensor, Value};
use optc_ir::{Type, TypeKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn cache() -> PathBuf {
    std::env::var_os("OPTC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/optc/models"))
}

fn parse_tensor(bytes: &[u8]) -> Result<Tensor, String> {
    let t = optc_frontends::load_tensor(bytes.to_vec().into(), None).map_err(|e| e.to_string())?;
    Tensor::from_ir(&t).map_err(|e| e.to_string())
}

/// One protobuf field: its number and payload (only varints and length-delimited payloads
/// are kept; the messages read here have no fixed-width fields).
enum Wire<'a> {
    Varint,
    Bytes(&'a [u8]),
    Fixed,
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

fn wire_fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let number = key >> 3;
        let field = match key & 7 {
            0 => {
                read_varint(buf, &mut pos)?;
                Wire::Varint
            }
            1 | 5 => {
                pos += if key & 7 == 1 { 8 } else { 4 };
                if pos > buf.len() {
                    return Err("truncated fixed-width field".into());
                }
                Wire::Fixed
            }
            2 => {
                let n = usize::try_from(read_varint(buf, &mut pos)?).map_err(|e| e.to_string())?;
                let end = pos.checked_add(n).filter(|&e| e <= buf.len()).ok_or("truncated field")?;
                let b = &buf[pos..end];
                pos = end;
                Wire::Bytes(b)
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        out.push((number, field));
    }
    Ok(out)
}

/// `SequenceProto`: tensor_values = 3; other element kinds (4 sparse, 5 sequence, 6 map,
/// 7 optional) cannot be held by `Value::Sequence`.
fn parse_sequence(bytes: &[u8]) -> Result<Value, String> {
    let mut items = Vec::new();
    for (number, field) in wire_fields(bytes)? {
        match (number, field) {
            (3, Wire::Bytes(b)) => items.push(parse_tensor(b)?),
            (4..=7, _) => return Err(format!("sequence of non-tensor elements (field {number})")),
            _ => {}
        }
    }
    Ok(Value::Sequence(items))
}

/// `OptionalProto`: tensor_value = 3, sequence_value = 5, optional_value = 7; none = empty.
fn parse_optional(bytes: &[u8]) -> Result<Value, String> {
    let mut value = None;
    for (number, field) in wire_fields(bytes)? {
        match (number, field) {
            (3, Wire::Bytes(b)) => value = Some(Value::Tensor(parse_tensor(b)?)),
            (5, Wire::Bytes(b)) => value = Some(parse_sequence(b)?),
            (7, Wire::Bytes(b)) => value = Some(parse_optional(b)?),
            (4 | 6, _) => return Err(format!("optional of sparse tensor or map (field {number})")),
            _ => {}
        }
    }
    Ok(Value::Optional(value.map(Box::new)))
}

/// Reads a `.pb` file as the value kind the model declares (a tensor when undeclared).
fn read_value(p: &Path, ty: Option<&Type>) -> Result<Value, String> {
    let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
    match ty.map(|t| &t.kind) {
        Some(TypeKind::Sequence(_)) => parse_sequence(&bytes),
        Some(TypeKind::Optional(_)) => parse_optional(&bytes),
        _ => parse_tensor(&bytes).map(Value::Tensor),
    }
}

/// Compares like the onnx backend tests: rtol 1e-3, atol 1e-7, NaN equals NaN.
fn close(expected: &Tensor, got: &Tensor) -> Result<(), String> {
    if expected.shape() != got.shape() {
        return Err(format!("shape {:?}, expected {:?}", got.shape(), expected.shape()));
    }
    if expected.dtype() != got.dtype() {
        return Err(format!("dtype {}, expected {}", got.dtype(), expected.dtype()));
    }
    match (expected, got) {
        (Tensor::Str(a), Tensor::Str(b)) => {
            return if a == b { Ok(()) } else { Err(format!("strings differ: got {b:?}, expected {a:?}")) };
        }
        (Tensor::Packed { raw: a, .. }, Tensor::Packed { raw: b, .. }) => {
            return if a == b { Ok(()) } else { Err("packed data differs".into()) };
        }
        _ => {}
    }
    // Integers and bools compare exactly (f64 would blur large int64 values).
    if let (Some(a), Some(b)) = (expected.to_i64_vec(), got.to_i64_vec()) {
        return match a.iter().zip(&b).position(|(x, y)| x != y) {
            Some(i) => Err(format!("element {i}: got {}, expected {}", b[i], a[i])),
            None => Ok(()),
        };
    }
    let (Some(a), Some(b)) = (expected.to_f64_vec(), got.to_f64_vec()) else {
        return Err("values cannot be compared".into());
    };
    if a.len() != b.len() {
        return Err(format!("{} values, expected {}", b.len(), a.len()));
    }
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let ok = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= 1e-7 + 1e-3 * x.abs();
        if !ok {
            return Err(format!("element {i}: got {y}, expected {x}"));
        }
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Tensor(_) => "tensor",
        Value::Sequence(_) => "sequence",
        Value::Optional(_) => "optional",
    }
}

/// Compares values of any kind: sequences element-wise, optionals by presence then content.
fn compare(expected: &Value, got: &Value) -> Result<(), String> {
    match (expected, got) {
        (Value::Tensor(e), Value::Tensor(g)) => close(e, g),
        (Value::Sequence(e), Value::Sequence(g)) => {
            if e.len() != g.len() {
                return Err(format!("sequence of {} tensors, expected {}", g.len(), e.len()));
            }
            e.iter().zip(g).enumerate().try_for_each(|(i, (x, y))| close(x, y).map_err(|m| format!("element {i}: {m}")))
        }
        (Value::Optional(e), Value::Optional(g)) => match (e, g) {
            (None, None) => Ok(()),
            (Some(x), Some(y)) => compare(x, y),
            (None, Some(_)) => Err("optional holds a value, expected none".into()),
            (Some(_), None) => Err("optional is empty, expected a value".into()),
        },
        _ => Err(format!("got a {}, expected a {}", kind(got), kind(expected))),
    }
}

fn run_case(dir: &Path) -> (String, String) {
    let model = match optc_frontends::load(&dir.join("model.onnx"), &Default::default()) {
        Ok(m) => m,
        Err(e) => return ("load-error".into(), e.to_string()),
    };
    let data = dir.join("test_data_set_0");
    let ev = match Evaluator::new(&model) {
        Ok(e) => e,
        Err(e) => return ("error".into(), e.to_string()),
    };
    let g = &model.graph;
    let mut inputs = HashMap::new();
    for (i, decl) in g.inputs.iter().enumerate() {
        let p = data.join(format!("input_{i}.pb"));
        if !p.exists() {
            continue;
        }
        let v = g.value(decl.value);
        match read_value(&p, v.ty.as_ref()) {
            Ok(x) => {
                inputs.insert(v.name.clone(), x);
            }
            Err(e) => return ("skip-input".into(), format!("input {i}: {e}")),
        }
    }
    let outs = match ev.run(&inputs) {
        Ok(o) => o,
        Err(e) => {
            let msg = e.to_string();
            let status = if msg.contains("not supported") { "unsupported" } else { "error" };
            return (status.into(), msg);
        }
    };
    if outs.len() != g.outputs.len() {
        return ("mismatch".into(), format!("{} outputs, the model declares {}", outs.len(), g.outputs.len()));
    }
    for (i, ((_, got), decl)) in outs.iter().zip(&g.outputs).enumerate() {
        let p = data.join(format!("output_{i}.pb"));
        let expected = match read_value(&p, g.value(decl.value).ty.as_ref()) {
            Ok(v) => v,
            Err(e) => return ("skip-output".into(), format!("output {i}: {e}")),
        };
        if let Err(e) = compare(&expected, got) {
            return ("mismatch".into(), format!("output {i}: {e}"));
        }
    }
    ("pass".into(), String::new())
}

#[test]
fn onnx_backend_node_tests() {
    let root = cache().join("onnx-node");
    let Ok(entries) = std::fs::read_dir(&root) else {
        eprintln!("skipping: no node tests in {} (run scripts/fetch_models.py)", root.display());
        return;
    };
    let filter = std::env::var("OPTC_NODE_FILTER").ok();
    let mut cases: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.join("model.onnx").exists()).collect();
    cases.sort();
    if let Some(f) = &filter {
        cases.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(f.as_str())));
    }
    let mut rows = Vec::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for dir in &cases {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (status, detail) = match std::panic::catch_unwind(|| run_case(dir)) {
            Ok(r) => r,
            Err(_) => ("panic".into(), "the evaluator panicked".into()),
        };
        if filter.is_some() && status != "pass" {
            eprintln!("{name}: {status}: {detail}");
        }
        *counts.entry(status.clone()).or_default() += 1;
        rows.push(format!("{name}\t{status}\t{}", detail.replace(['\t', '\n'], " ")));
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/node-tests");
    std::fs::create_dir_all(&out).expect("create target/node-tests");
    if filter.is_none() {
        std::fs::write(out.join("optc.tsv"), rows.join("\n") + "\n").expect("write results");
    }
    let mut summary: Vec<_> = counts.into_iter().collect();
    summary.sort();
    eprintln!("node tests: {} cases: {summary:?}", cases.len());
    assert_eq!(
        summary.iter().find(|(s, _)| s == "panic").map(|x| x.1).unwrap_or(0),
        0,
        "the evaluator must never panic"
    );
}
