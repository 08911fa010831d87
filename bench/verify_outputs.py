#!/usr/bin/env python3
"""Check that optimised models still compute what the original computes.

    python bench/verify_outputs.py ORIG.onnx LABEL=OUT.onnx [LABEL=OUT.onnx ...]

Runs ORIG and each OUT in onnxruntime (CPU, graph optimisations DISABLED so
the tool's output is what runs) on the same seeded random inputs, and prints
one JSON object {label: {"ok": bool, "max_abs_diff": float, "error": str}}.
Dynamic dimensions get per-model sizes from SHAPES below (else batch-like
first dim 1, others 16).  Integer inputs: name containing "mask" -> ones,
"sr" -> 16000, others uniform in [0, 100).  "ok" means every output has the
same shape and dtype and np.allclose(rtol=1e-3, atol=1e-4).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

# model file stem -> {input name: concrete shape}
SHAPES = {
    "paraphrase-MiniLM-L3-v2": {"input_ids": [1, 16], "attention_mask": [1, 16], "token_type_ids": [1, 16]},
    "open_nsfw": {"input_0": [1, 224, 224, 3]},
    "ch_ppocr_mobile_v2.0_cls_infer": {"x": [1, 3, 48, 192]},
    "ch_PP-OCRv4_det_infer": {"x": [1, 3, 96, 96]},
    "ch_PP-OCRv4_rec_infer": {"x": [1, 3, 48, 320]},
    "silero_vad": {"input": [1, 512], "state": [2, 1, 128]},
    "silero_vad_op18_ifless": {"input": [1, 512], "state": [2, 1, 128]},
    "magika_standard_v3_3": {"bytes": [1, 2048]},
}

RTOL, ATOL = 1e-3, 1e-4


def make_inputs(sess, stem: str) -> dict:
    rng = np.random.default_rng(0)
    shapes = SHAPES.get(stem, {})
    feeds = {}
    for i in sess.get_inputs():
        if i.name in shapes:
            shape = shapes[i.name]
        else:
            shape = [d if isinstance(d, int) and d > 0 else (1 if k == 0 else 16) for k, d in enumerate(i.shape)]
        t = i.type  # e.g. tensor(float)
        if "float16" in t:
            a = rng.standard_normal(shape).astype(np.float16)
        elif "float" in t or "double" in t:
            a = rng.standard_normal(shape).astype(np.float64 if "double" in t else np.float32)
            if i.name == "state":
                a = np.zeros(shape, a.dtype)
        elif "bool" in t:
            a = np.ones(shape, np.bool_)
        else:
            dt = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
                  "tensor(uint8)": np.uint8}.get(t, np.int64)
            if "mask" in i.name:
                a = np.ones(shape, dt)
            elif i.name == "sr":
                a = np.array(16000, dt).reshape(shape)
            else:
                a = rng.integers(0, 100, size=shape).astype(dt)
        feeds[i.name] = a
    return feeds


def session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    orig = sys.argv[1]
    stem = os.path.splitext(os.path.basename(orig))[0]
    res = {}
    try:
        s0 = session(orig)
        feeds = make_inputs(s0, stem)
        ref = s0.run(None, feeds)
        names = [o.name for o in s0.get_outputs()]
    except Exception as e:  # the reference itself does not run: nothing to compare
        for arg in sys.argv[2:]:
            res[arg.split("=", 1)[0]] = {"ok": None, "error": f"reference run failed: {str(e)[:200]}"}
        print(json.dumps(res))
        return 0
    for arg in sys.argv[2:]:
        label, path = arg.split("=", 1)
        r = {"ok": False, "max_abs_diff": None}
        try:
            s = session(path)
            got_names = [o.name for o in s.get_outputs()]
            in_names = {i.name for i in s.get_inputs()}
            out = s.run(None, {k: v for k, v in feeds.items() if k in in_names})
            got = dict(zip(got_names, out))
            mad, ok = 0.0, True
            for n, a in zip(names, ref):
                b = got.get(n)
                if b is None or b.shape != a.shape or b.dtype != a.dtype:
                    ok = False
                    r["error"] = f"output {n}: " + ("missing" if b is None else f"{b.dtype}{list(b.shape)} vs {a.dtype}{list(a.shape)}")
                    break
                if a.dtype.kind in "fc":
                    d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
                    ok = ok and bool(np.allclose(b, a, rtol=RTOL, atol=ATOL, equal_nan=True))
                else:
                    d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
                    ok = ok and d == 0.0
                mad = max(mad, d)
            r["ok"], r["max_abs_diff"] = ok, mad
        except Exception as e:
            r["error"] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        res[label] = r
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
