#!/usr/bin/env python3
"""Inference timing helpers for benchmark C (evaluator speed): inputs, onnxruntime runs, output checks.

    python bench/ort_run.py inputs MODEL DIR [--seed S]
    python bench/ort_run.py run MODEL DIR --level basic|all [--reps R] [--save-outputs OUTDIR]
    python bench/ort_run.py compare REF_DIR OTHER_DIR

inputs   writes one seeded random input per graph input to DIR/<name>.npy (shapes from
         SHAPES below, the table of tests/python/optc_helpers.py REAL_MODELS, with
         PP-OCRv4 det at its intended 640x640; inputs not listed take the model's
         shape, symbolic dims -> 1) and prints {"inputs": [{name, file, shape, dtype}]}.
run      onnxruntime inference on those inputs: CPUExecutionProvider,
         graph_optimization_level ORT_ENABLE_BASIC (basic) or ORT_ENABLE_ALL (all),
         intra_op_num_threads = inter_op_num_threads = 1, ORT_SEQUENTIAL.  One
         warm-up sess.run, then R timed sess.run calls; prints {"median_ms",
         "fastest_ms", "times_ms", "session_s", ...}.  --save-outputs writes the
         last run's outputs to OUTDIR/<name>.npy.
compare  for every REF_DIR/*.npy, the same file in OTHER_DIR: max |a - ref| / max |ref|
         per output; prints {"max_rel_diff", "outputs": {...}, "error"}.

File names: every character of a tensor name outside [A-Za-z0-9-_.] becomes '_'
(the same rule as `optc run -o DIR`).  The last line on stdout is the JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

import numpy as np

# model file stem -> input name -> spec (shape, and low/high for integers or a constant value).
# Copied from tests/python/optc_helpers.py REAL_MODELS, except PP-OCRv4 det at 640x640
# (its intended size; the tests use 320x320 to run faster).
SHAPES: dict[str, dict[str, dict]] = {
    "ch_ppocr_mobile_v2.0_cls_infer": {"x": {"shape": [1, 3, 48, 192]}},
    "ch_PP-OCRv4_det_infer": {"x": {"shape": [1, 3, 640, 640]}},
    "ch_PP-OCRv4_rec_infer": {"x": {"shape": [1, 3, 48, 320]}},
    "silero_vad": {"input": {"shape": [1, 512]}, "state": {"shape": [2, 1, 128]},
                   "sr": {"shape": [], "value": 16000}},
    "silero_vad_op18_ifless": {"input": {"shape": [1, 512]}, "state": {"shape": [2, 1, 128]},
                               "sr": {"shape": [], "value": 16000}},
    "paraphrase-MiniLM-L3-v2": {"input_ids": {"shape": [1, 16], "low": 0, "high": 1000},
                                "attention_mask": {"shape": [1, 16], "value": 1},
                                "token_type_ids": {"shape": [1, 16], "value": 0}},
    "open_nsfw": {"input_0": {"shape": [1, 224, 224, 3]}},
    "magika_standard_v3_3": {"bytes": {"shape": [1, 2048], "low": 0, "high": 256}},
    "smart-turn-v3.2-cpu": {"input_features": {"shape": [1, 80, 800]}},
}


def file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9\-_.]", "_", name)


def stem_of(model: str) -> str:
    b = os.path.basename(model)
    return b[:-5] if b.endswith(".onnx") else b


def random_input(rng, vi, spec: dict):
    """A seeded random value for graph input `vi` (a ValueInfoProto): shape from `spec` or the
    model (symbolic and unknown dims -> 1), `spec` "value" fills, "low"/"high" bound integers."""
    from onnx import helper

    tt = vi.type.tensor_type
    dt = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    if "shape" in spec:
        shape = list(spec["shape"])
    else:
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
    if "value" in spec:
        return np.full(shape, spec["value"], dtype=dt)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind in "iu":
        return rng.integers(spec.get("low", 0), spec.get("high", 10), size=shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise ValueError(f"input {vi.name}: cannot generate dtype {dt}")



def make_feeds(model, stem: str, seed: int, spec_for=None) -> dict:
    """Seeded inputs for every graph input of `model` (initializer-backed inputs skipped), from
    SHAPES[stem]; `spec_for(input, spec)` may replace an input's spec."""
    specs = SHAPES.get(stem, {})
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        spec = specs.get(i.name, {})
        feeds[i.name] = random_input(rng, i, spec_for(i, spec) if spec_for else spec)
    return feeds

def cmd_inputs(a) -> dict:
    import onnx

    m = onnx.load(a.model, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    specs = SHAPES.get(stem_of(a.model), {})
    rng = np.random.default_rng(a.seed)
    os.makedirs(a.dir, exist_ok=True)
    out = []
    for i in m.graph.input:
        if i.name in inits:
            continue
        x = random_input(rng, i, specs.get(i.name, {}))
        f = os.path.join(a.dir, file_name(i.name) + ".npy")
        np.save(f, x)
        out.append({"name": i.name, "file": f, "shape": list(x.shape), "dtype": str(x.dtype)})
    return {"inputs": out}


def load_feeds(sess, d: str) -> dict:
    feeds = {}
    for i in sess.get_inputs():
        f = os.path.join(d, file_name(i.name) + ".npy")
        if not os.path.exists(f):
            raise FileNotFoundError(f"no input file {f} for input {i.name!r}")
        feeds[i.name] = np.load(f)
    return feeds


def cmd_run(a) -> dict:
    t0 = time.perf_counter()
    import onnxruntime as ort

    t1 = time.perf_counter()
    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[a.level]
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    t2 = time.perf_counter()
    feeds = load_feeds(sess, a.dir)
    names = [o.name for o in sess.get_outputs()]
    sess.run(names, feeds)  # warm-up
    times = []
    outs = None
    for _ in range(max(1, a.reps)):
        s = time.perf_counter()
        outs = sess.run(names, feeds)
        times.append((time.perf_counter() - s) * 1e3)
    if a.save_outputs:
        os.makedirs(a.save_outputs, exist_ok=True)
        for n, v in zip(names, outs):
            np.save(os.path.join(a.save_outputs, file_name(n) + ".npy"), np.asarray(v))
    return {"level": a.level, "version": ort.__version__, "import_s": round(t1 - t0, 4),
            "session_s": round(t2 - t1, 4), "reps": len(times), "median_ms": statistics.median(times),
            "fastest_ms": min(times), "times_ms": [round(t, 3) for t in times]}


def cmd_compare(a) -> dict:
    res: dict = {"outputs": {}, "max_rel_diff": None, "error": None}
    errs = []
    worst = 0.0
    refs = sorted(f for f in os.listdir(a.ref) if f.endswith(".npy"))
    if not refs:
        errs.append("no reference outputs")
    for f in refs:
        r = np.load(os.path.join(a.ref, f), allow_pickle=False)
        p = os.path.join(a.other, f)
        if not os.path.exists(p):
            errs.append(f"{f[:-4]}: missing")
            continue
        o = np.load(p, allow_pickle=False)
        if o.shape != r.shape:
            errs.append(f"{f[:-4]}: shape {list(o.shape)} vs {list(r.shape)}")
            continue
        rf = r.astype(np.float64)
        of = o.astype(np.float64)
        fin = np.isfinite(rf) & np.isfinite(of)
        if not np.array_equal(rf[~fin], of[~fin], equal_nan=True):
            errs.append(f"{f[:-4]}: non-finite values differ")
        scale = float(np.max(np.abs(rf[fin]))) if fin.any() else 0.0
        diff = float(np.max(np.abs(of[fin] - rf[fin]))) if fin.any() else 0.0
        rel = diff / scale if scale > 0 else diff
        res["outputs"][f[:-4]] = {"max_abs_diff": diff, "max_abs_ref": scale, "rel": rel,
                                  "dtype": str(o.dtype), "ref_dtype": str(r.dtype)}
        worst = max(worst, rel)
    if res["outputs"]:
        res["max_rel_diff"] = worst
    if errs:
        res["error"] = "; ".join(errs)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("inputs")
    p.add_argument("model")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("run")
    p.add_argument("model")
    p.add_argument("dir")
    p.add_argument("--level", choices=["basic", "all"], default="basic")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--save-outputs", default=None)
    p = sub.add_parser("compare")
    p.add_argument("ref")
    p.add_argument("other")
    a = ap.parse_args()
    r = {"inputs": cmd_inputs, "run": cmd_run, "compare": cmd_compare}[a.cmd](a)
    sys.stdout.flush()
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
