#!/usr/bin/env python3
"""Run one Python peer tool on one model, the way its CLI would, in this process.

    python bench/peer.py TOOL IN OUT

TOOL is one of:
  ort-basic       onnxruntime offline optimisation, ORT_ENABLE_BASIC
  ort-extended    onnxruntime offline optimisation, ORT_ENABLE_EXTENDED
  onnxsim         onnxsim.simplify(model)
  onnxslim        onnxslim.slim(model)
  onnxoptimizer   onnxoptimizer.optimize(model)  (default fuse-and-elimination passes)
  onnx-roundtrip  onnx.load(IN) + onnx.save(..., save_as_external_data=True, location='model.onnx.data')

The last line printed on stdout is one JSON object with in-process timings
(seconds): import_s (importing the tool), load_s, opt_s (the optimisation call
itself), save_s, work_s (load + opt + save, i.e. everything but interpreter
start-up and imports).  For onnxruntime, loading, optimising and writing all
happen inside InferenceSession(); that whole call is reported as opt_s and
work_s, with load_s and save_s 0.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    tool, src, dst = sys.argv[1:]
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    r = {"tool": tool, "import_s": 0.0, "load_s": 0.0, "opt_s": 0.0, "save_s": 0.0}
    t0 = time.perf_counter()

    if tool in ("ort-basic", "ort-extended"):
        import onnxruntime as ort

        r["version"] = ort.__version__
        t1 = time.perf_counter()
        so = ort.SessionOptions()
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if tool == "ort-basic"
                                       else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        so.optimized_model_filepath = dst
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        t2 = time.perf_counter()
        r["import_s"] = t1 - t0
        r["opt_s"] = t2 - t1
    else:
        import onnx

        if tool == "onnxsim":
            import onnxsim

            r["version"] = onnxsim.__version__

            def opt(m):
                m2, ok = onnxsim.simplify(m)
                if not ok:
                    raise RuntimeError("onnxsim: simplified model failed its check")
                return m2
        elif tool == "onnxslim":
            import onnxslim

            r["version"] = onnxslim.__version__

            def opt(m):
                return onnxslim.slim(m)
        elif tool == "onnxoptimizer":
            import onnxoptimizer

            r["version"] = getattr(onnxoptimizer, "__version__", "?")

            def opt(m):
                return onnxoptimizer.optimize(m)
        elif tool == "onnx-roundtrip":
            r["version"] = onnx.__version__

            def opt(m):
                return m
        else:
            print(f"unknown tool {tool!r}", file=sys.stderr)
            return 2
        t1 = time.perf_counter()
        m = onnx.load(src)
        t2 = time.perf_counter()
        m = opt(m)
        t3 = time.perf_counter()
        if tool == "onnx-roundtrip":
            onnx.save(m, dst, save_as_external_data=True, location="model.onnx.data")
        else:
            onnx.save(m, dst)
        t4 = time.perf_counter()
        r.update(import_s=t1 - t0, load_s=t2 - t1, opt_s=t3 - t2, save_s=t4 - t3)

    r["work_s"] = r["load_s"] + r["opt_s"] + r["save_s"]
    for k in ("import_s", "load_s", "opt_s", "save_s", "work_s"):
        r[k] = round(r[k], 4)
    sys.stdout.flush()
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
