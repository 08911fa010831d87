#!/usr/bin/env python3
"""onnxruntime's transformers optimizer as a peer tool (benchmark B), in this process.

    python bench/peer_transformers.py IN OUT MODEL_TYPE [--opt-level 99|2|1|0]

Calls `onnxruntime.transformers.optimizer.optimize_model(IN, model_type=MODEL_TYPE, num_heads=0,
hidden_size=0, opt_level=L, use_gpu=False)` (num_heads / hidden_size 0: detected from the graph)
and saves the result to OUT.  The default tries opt_level 99 first (onnxruntime ORT_ENABLE_ALL
offline on the CPU provider, then the Python fusions: the strongest setting whose output still runs
on CPU), then 2, 1 and 0 if a level raises.

onnxruntime's `optimize_by_onnxruntime` imports `torch` only to read `torch.version.hip` when
use_gpu=True and no provider is given; with use_gpu=False it never uses it.  When torch is not
installed a stub module with `version.hip = None` stands in, so the CPU path runs without the
~700 MB torch wheel.

The last line printed on stdout is one JSON object like bench/peer.py's: import_s, load_s (0),
opt_s (the optimize_model call: onnxruntime's session + the Python fusions), save_s, work_s,
plus opt_level (the level that ran), tried (errors of the levels that raised) and fused
(optimize_model's fused-operator statistics, non-zero entries).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import types


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("model_type")
    ap.add_argument("--opt-level", type=int, default=None, choices=[0, 1, 2, 99])
    a = ap.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(a.dst)), exist_ok=True)
    t0 = time.perf_counter()
    stub = False
    if importlib.util.find_spec("torch") is None:
        t = types.ModuleType("torch")
        t.version = types.SimpleNamespace(hip=None, cuda=None)
        sys.modules["torch"] = t
        stub = True
    import logging

    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    t1 = time.perf_counter()
    r = {"tool": "ort-transformers", "version": ort.__version__, "model_type": a.model_type,
         "torch_stub": stub, "import_s": t1 - t0, "load_s": 0.0, "tried": {}}
    levels = [a.opt_level] if a.opt_level is not None else [99, 2, 1, 0]
    opt = None
    for lvl in levels:
        s = time.perf_counter()
        try:
            opt = optimize_model(a.src, model_type=a.model_type, num_heads=0, hidden_size=0, opt_level=lvl,
                                 use_gpu=False)
        except Exception as e:  # noqa: BLE001 - try the next level, report what happened
            r["tried"][str(lvl)] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            continue
        r["opt_s"] = time.perf_counter() - s
        r["opt_level"] = lvl
        break
    if opt is None:
        print(json.dumps(r["tried"]), file=sys.stderr)
        first = next(iter(r["tried"].values()), "?")
        print(f"error: optimize_model failed at opt_level {', '.join(r['tried'])}: {first}", file=sys.stderr)
        return 1
    try:
        r["fused"] = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    except Exception:  # noqa: BLE001
        r["fused"] = {}
    s = time.perf_counter()
    opt.save_model_to_file(a.dst)
    r["save_s"] = time.perf_counter() - s
    r["work_s"] = r["load_s"] + r["opt_s"] + r["save_s"]
    for k in ("import_s", "load_s", "opt_s", "save_s", "work_s"):
        r[k] = round(r[k], 4)
    sys.stdout.flush()
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
