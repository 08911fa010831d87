//! Runs every onnx backend node test (from the model cache) with optc's evaluator and writes
//! per-case results to `target/node-tests/optc.tsv` (case, status, detail). The pass rate
//! against the cases onnxruntime passes is judged by `tests/python/test_node_eval.py`.
//!
//! `OPTC_NODE_FILTER=substring` runs only matching cases and prints each failure.

use optc_eval::{Evaluator, Tensor, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn cache() -> PathBuf {
    std::env::var_os("OPTC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/optc/models"))
}

fn read_tensor(p: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
    let t = optc_frontends::load_tensor(bytes.into(), None).map_err(|e| e.to_string())?;
    Tensor::from_ir(&t).map_err(|e| e.to_string())
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
            return if a == b { Ok(()) } else { Err("strings differ".into()) };
        }
        (Tensor::Packed { raw: a, .. }, Tensor::Packed { raw: b, .. }) => {
            return if a == b { Ok(()) } else { Err("packed data differs".into()) };
        }
        _ => {}
    }
    let (a, b) = (expected.to_f64_vec().unwrap_or_default(), got.to_f64_vec().unwrap_or_default());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let ok = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= 1e-7 + 1e-3 * x.abs();
        if !ok {
            return Err(format!("element {i}: got {y}, expected {x}"));
        }
    }
    Ok(())
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
    let names = ev.input_names();
    let mut inputs = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let p = data.join(format!("input_{i}.pb"));
        if !p.exists() {
            continue;
        }
        match read_tensor(&p) {
            Ok(t) => {
                inputs.insert(name.clone(), Value::Tensor(t));
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
    for (i, (_, v)) in outs.iter().enumerate() {
        let p = data.join(format!("output_{i}.pb"));
        let expected = match read_tensor(&p) {
            Ok(t) => t,
            Err(e) => return ("skip-output".into(), format!("output {i}: {e}")),
        };
        let Some(got) = v.tensor() else { return ("mismatch".into(), format!("output {i} is not a tensor")) };
        if let Err(e) = close(&expected, got) {
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
