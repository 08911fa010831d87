#!/usr/bin/env python3
"""Benchmark B's per-model checks and latency: does each optimiser's output still compute what the
original computes, and how fast does it run in onnxruntime?

    python bench/opt_latency.py ORIG.onnx LABEL=OUT.onnx [LABEL=OUT.onnx ...] [--stem S] [--generated]
        [--seed 0] [--budget-s 1.0] [--rounds 3] [--time LABEL,LABEL,...] [--seq 128]

For the original and every output, in this one process:
  1. `onnx.checker.check_model(path)` (com.microsoft contrib ops are not checked by onnx: their
     domain has no registered schemas).
  2. onnxruntime CPU at ORT_DISABLE_ALL and at ORT_ENABLE_ALL on the same seeded inputs; every
     output of the original must exist in the tool's output with the same shape and dtype, and
     match the original's at the same level: allclose(rtol 1e-3, atol 1e-4) for floats, equal
     for integers and bools.  Reported: ok, max |diff|, max |diff| / max |ref|.
  3. Latency (the original and the labels in --time; all labels by default): sessions at
     ORT_ENABLE_ALL, intra_op = inter_op = 1 thread, ORT_SEQUENTIAL; one warm-up run, then
     --rounds rounds (the order rotates every round); in a round every variant runs for about
     --budget-s seconds (adaptive count, 3 to 5000 runs), in slices of about 50 ms taken in turn,
     so that a change in machine load hits every variant alike.  Per run the thread
     CPU time (time.thread_time: with one intra-op thread onnxruntime runs the graph on the
     calling thread, so this is not inflated by other processes taking the core) and the wall
     time are recorded.  Reported per variant: median CPU ms over all runs, per-round medians;
     per tool: speed-up = original median / tool median, the per-round speed-ups and
     noise = half their range (as a fraction).

Inputs: seeded (numpy.random.default_rng(seed)) through bench/ort_run.py's random_input, with the
shapes of ort_run.SHAPES for the cache models (the same inputs as benchmarks C and D).  With
--generated (models from `optc gen`): symbolic dims -> 1 for the first (batch) dim and --seq
(128) for the others; integer inputs named *mask* -> all ones, *token_type* -> zeros, others
uniform in [0, 100).

The last line printed on stdout is one JSON object {"variants": {label: {...}}, "inputs": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ort_run import SHAPES  # noqa: E402  (shared with benchmarks C and D)
from ort_run import make_feeds as ort_make_feeds  # noqa: E402

RTOL, ATOL = 1e-3, 1e-4
SLICE_S = 0.05  # seconds of runs per variant before the next variant's turn, within a round


def short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0][:200] if s else ''}"


def generated_spec(vi, seq: int) -> dict:
    """Input spec for a generated model: batch 1, sequence `seq`, token-model integer ranges."""
    tt = vi.type.tensor_type
    shape = []
    for k, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(int(d.dim_value))
        else:
            shape.append(1 if k == 0 else seq)
    spec: dict = {"shape": shape}
    low = vi.name.lower()
    if "mask" in low:
        spec["value"] = 1
    elif "token_type" in low or "segment" in low:
        spec["value"] = 0
    else:
        spec.update(low=0, high=100)
    return spec


def make_feeds(model, stem: str, seed: int, generated: bool, seq: int) -> dict:
    specs = SHAPES.get(stem, {})

    def spec_for(i, spec):
        return generated_spec(i, seq) if generated and i.name not in specs else spec

    feeds = ort_make_feeds(model, stem, seed, spec_for)
    if generated:
        for name, x in feeds.items():
            if x.dtype.kind == "f" and "mask" in name.lower():
                feeds[name] = np.ones_like(x)
    return feeds

def session(path: str, level: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def run(sess, feeds: dict) -> dict:
    names = [o.name for o in sess.get_outputs()]
    ins = {i.name for i in sess.get_inputs()}
    missing = ins - set(feeds)
    if missing:
        raise ValueError(f"inputs not in the original: {sorted(missing)}")
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in ins})))


def compare(ref: dict, got: dict) -> dict:
    r: dict = {"ok": True, "max_abs_diff": 0.0, "max_rel_diff": 0.0}
    for n, a in ref.items():
        a = np.asarray(a)
        b = got.get(n)
        if b is None:
            return {"ok": False, "max_abs_diff": None, "max_rel_diff": None, "error": f"output {n}: missing"}
        b = np.asarray(b)
        if b.shape != a.shape or b.dtype != a.dtype:
            return {"ok": False, "max_abs_diff": None, "max_rel_diff": None,
                    "error": f"output {n}: {b.dtype}{list(b.shape)} vs {a.dtype}{list(a.shape)}"}
        if a.size == 0:
            continue
        af, bf = a.astype(np.float64), b.astype(np.float64)
        fin = np.isfinite(af) & np.isfinite(bf)
        if not np.array_equal(af[~fin], bf[~fin], equal_nan=True):
            r["ok"] = False
            r["error"] = f"output {n}: non-finite values differ"
        d = float(np.max(np.abs(af[fin] - bf[fin]))) if fin.any() else 0.0
        scale = float(np.max(np.abs(af[fin]))) if fin.any() else 0.0
        r["max_abs_diff"] = max(r["max_abs_diff"], d)
        r["max_rel_diff"] = max(r["max_rel_diff"], d / scale if scale > 0 else d)
        if a.dtype.kind in "fc":
            ok = bool(np.allclose(b, a, rtol=RTOL, atol=ATOL, equal_nan=True))
        else:
            ok = d == 0.0
        if not ok and r["ok"]:
            r["error"] = f"output {n} differs (max |diff| {d:.2e})"
        r["ok"] = r["ok"] and ok
    return r


class Timer:
    def __init__(self, sess, feeds: dict):
        self.sess = sess
        self.names = [o.name for o in sess.get_outputs()]
        ins = {i.name for i in sess.get_inputs()}
        self.feeds = {k: v for k, v in feeds.items() if k in ins}
        w0 = time.perf_counter()
        sess.run(self.names, self.feeds)  # warm-up
        self.warm = time.perf_counter() - w0
        self.rounds: list[list[tuple[float, float]]] = []

    def start_round(self) -> None:
        self.rounds.append([])

    def est(self) -> float:
        done = [w for r in self.rounds for w, _ in r]
        return statistics.median(done[-50:]) if done else self.warm

    def slice(self, n: int) -> None:
        """n timed runs, appended to the current round."""
        cur = self.rounds[-1]
        for _ in range(n):
            w0, c0 = time.perf_counter(), time.thread_time()
            self.sess.run(self.names, self.feeds)
            cur.append((time.perf_counter() - w0, time.thread_time() - c0))

    def result(self) -> dict:
        allc = [c for r in self.rounds for _, c in r]
        allw = [w for r in self.rounds for w, _ in r]
        return {"runs": len(allc), "cpu_ms": statistics.median(allc) * 1e3, "wall_ms": statistics.median(allw) * 1e3,
                "cpu_min_ms": min(allc) * 1e3,
                "round_cpu_ms": [round(statistics.median([c for _, c in r]) * 1e3, 4) for r in self.rounds],
                "round_runs": [len(r) for r in self.rounds]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("orig")
    ap.add_argument("outs", nargs="*", help="LABEL=PATH")
    ap.add_argument("--stem", default=None)
    ap.add_argument("--generated", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--budget-s", type=float, default=1.0, help="seconds per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--time", default=None, help="comma-separated labels to time (default: all; 'none': none)")
    a = ap.parse_args()
    import onnx

    stem = a.stem or os.path.splitext(os.path.basename(a.orig))[0]
    variants = [("original", a.orig)] + [tuple(x.split("=", 1)) for x in a.outs]
    timed = None if a.time is None else {x for x in a.time.split(",") if x}
    res: dict = {"variants": {}, "inputs": {}, "rtol": RTOL, "atol": ATOL, "rounds": a.rounds,
                 "budget_s": a.budget_s}
    m0 = onnx.load(a.orig)
    feeds = make_feeds(m0, stem, a.seed, a.generated, a.seq)
    del m0
    res["inputs"] = {k: f"{v.dtype}{list(v.shape)}" for k, v in feeds.items()}
    refs: dict = {}
    timers: dict = {}
    for label, path in variants:
        v: dict = {}
        res["variants"][label] = v
        try:
            onnx.checker.check_model(path)
            v["checker"] = {"ok": True}
        except Exception as e:  # noqa: BLE001
            v["checker"] = {"ok": False, "error": short(e)}
        for level in ("disable", "all"):
            try:
                s = session(path, level)
                out = run(s, feeds)
            except Exception as e:  # noqa: BLE001
                v[level] = {"ok": False, "error": "run failed: " + short(e)}
                if label == "original":
                    refs[level] = None
                continue
            if label == "original":
                refs[level] = out
                v[level] = {"ok": True}
            elif refs.get(level) is None:
                v[level] = {"ok": None, "error": "the original does not run at this level"}
            else:
                try:
                    v[level] = compare(refs[level], out)
                except Exception as e:  # noqa: BLE001
                    v[level] = {"ok": False, "error": "compare failed: " + short(e)}
            if level == "all" and (timed is None or label in timed or label == "original"):
                try:
                    timers[label] = Timer(s, feeds)
                except Exception as e:  # noqa: BLE001
                    v["latency_error"] = short(e)
            del out
    if a.rounds > 0 and "original" in timers and len(timers) > 1:
        order = list(timers)
        t0 = time.perf_counter()
        for r in range(a.rounds):
            k = r % len(order)
            rot = order[k:] + order[:k]
            for label in rot:
                timers[label].start_round()
            # each round: every variant runs about budget_s, in slices of about SLICE_S taken in turn,
            # so that a change in machine load during the round hits every variant alike
            target = {label: min(5000, max(3, round(a.budget_s / max(timers[label].est(), 1e-6)))) for label in rot}
            while True:
                left = [lb for lb in rot if len(timers[lb].rounds[-1]) < target[lb]]
                if not left:
                    break
                for label in left:
                    tm = timers[label]
                    n = min(target[label] - len(tm.rounds[-1]), max(1, round(SLICE_S / max(tm.est(), 1e-6))))
                    try:
                        tm.slice(n)
                    except Exception as e:  # noqa: BLE001
                        res["variants"][label]["latency_error"] = short(e)
                        target[label] = len(tm.rounds[-1])
            print(f"[opt_latency] {stem}: round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
        res["timing_s"] = time.perf_counter() - t0
        base = timers["original"]
        if base.rounds and all(base.rounds):
            bres = base.result()
            res["variants"]["original"]["latency"] = bres
            for label, tm in timers.items():
                if label == "original" or not all(tm.rounds) or len(tm.rounds) != len(base.rounds):
                    continue
                tres = tm.result()
                sp = [b / t if t > 0 else None for b, t in zip(bres["round_cpu_ms"], tres["round_cpu_ms"])]
                sp = [x for x in sp if x is not None]
                tres["speedup"] = bres["cpu_ms"] / tres["cpu_ms"] if tres["cpu_ms"] > 0 else None
                tres["round_speedup"] = [round(x, 4) for x in sp]
                tres["noise"] = (max(sp) - min(sp)) / 2 if sp else None
                res["variants"][label]["latency"] = tres
    sys.stdout.flush()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
