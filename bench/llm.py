#!/usr/bin/env python3
"""Benchmark E: an LLM from GGUF (SmolLM2-135M-Instruct Q4_1) through optc.

  bench/llm.py --optc target/release/optc --models-dir ~/.cache/optc/models --out-dir bench/out/llm

1. `optc import` of the GGUF: wall time and peak RSS (GNU time), output size.
2. `optc eval ppl` over lee_background.cor at ctx 512 (disjoint windows), with optc's evaluator;
   the same windows scored by onnxruntime (ORT_ENABLE_ALL, all threads) on the same model and
   token ids, as a cross-check and a speed reference.
3. `optc generate` (greedy) on two prompts, with tokens/s.

Prints one JSON line {"json": PATH} naming the results file; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = "lee_background.cor"
GNU_TIME = "/usr/bin/time"
PROMPTS = [
    ("plain", ["--prompt", "The history of the Roman Empire", "-n", "40"]),
    ("chat", ["--chat", "--prompt", "Write one sentence about the sea.", "-n", "48"]),
]


def log(msg: str) -> None:
    print(f"[llm] {msg}", file=sys.stderr, flush=True)


def timed(cmd: list[str], timeout: float) -> dict:
    """Runs cmd; wall seconds, peak RSS (kB, from GNU time when present), stdout, stderr."""
    full = [GNU_TIME, "-f", "%M"] + cmd if os.access(GNU_TIME, os.X_OK) else cmd
    t = time.perf_counter()
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    err = r.stderr
    rss = None
    if full[0] == GNU_TIME:
        lines = err.rstrip("\n").split("\n")
        try:
            rss = int(lines[-1])
            err = "\n".join(lines[:-1])
        except ValueError:
            pass
    return {"cmd": " ".join(cmd), "rc": r.returncode, "wall_s": wall, "maxrss_kb": rss, "stdout": r.stdout,
            "stderr": err}


def ort_ppl(model: str, ids: list[int], ctx: int) -> dict:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in s.get_inputs()}
    layers = sum(1 for n in ins if n.startswith("past_key_values.") and n.endswith(".key"))
    kvh, hd = ins["past_key_values.0.key"].shape[1], ins["past_key_values.0.key"].shape[3]
    total, count, windows = 0.0, 0, 0
    t = time.perf_counter()
    for b in range(0, len(ids), ctx):
        w = ids[b:b + ctx]
        if len(w) < 2:
            break
        f = {"input_ids": np.array([w], np.int64), "attention_mask": np.ones((1, len(w)), np.int64),
             "position_ids": np.arange(len(w), dtype=np.int64)[None]}
        for i in range(layers):
            for kv in ("key", "value"):
                f[f"past_key_values.{i}.{kv}"] = np.zeros((1, kvh, 0, hd), np.float32)
        logits = s.run(["logits"], f)[0][0, :-1].astype(np.float64)
        m = logits.max(axis=-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]
        tgt = np.array(w[1:])
        total += float((lse - logits[np.arange(len(tgt)), tgt]).sum())
        count += len(tgt)
        windows += 1
    secs = time.perf_counter() - t
    return {"ppl": math.exp(total / count), "scored": count, "windows": windows, "eval_s": secs,
            "tokens_per_s": count / secs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--optc", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=0, help="score only the first N tokens (0: all)")
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    gguf = os.path.join(a.models_dir, GGUF)
    text = os.path.join(a.models_dir, TEXT)
    res: dict = {"gguf": GGUF, "text": TEXT, "ctx": a.ctx}
    if not (os.path.exists(gguf) and os.path.exists(text)):
        res["error"] = f"{GGUF} or {TEXT} not in {a.models_dir} (run scripts/fetch_models.py)"
    else:
        model = os.path.join(a.out_dir, "smollm2", "model.onnx")
        os.makedirs(os.path.dirname(model), exist_ok=True)
        log("import")
        imp = timed([a.optc, "import", gguf, "-o", model], a.timeout)
        imp.update(gguf_bytes=os.path.getsize(gguf), onnx_bytes=os.path.getsize(model) if imp["rc"] == 0 else None)
        res["import"] = imp
        if imp["rc"] == 0:
            extra = ["--max-tokens", str(a.max_tokens)] if a.max_tokens else []
            log(f"optc eval ppl (ctx {a.ctx}; minutes)")
            p = timed([a.optc, "eval", "ppl", model, "--text", text, "--ctx", str(a.ctx), "--json", *extra],
                      a.timeout)
            if p["rc"] == 0:
                p["result"] = json.loads(p["stdout"])
            res["ppl"] = p
            tok = subprocess.run([a.optc, "tokenize", model, "--text", text, "--json"], capture_output=True,
                                 text=True, timeout=600)
            if tok.returncode == 0:
                ids = json.loads(tok.stdout)
                if a.max_tokens:
                    ids = ids[:a.max_tokens]
                log("onnxruntime ppl over the same windows")
                res["ort_ppl"] = ort_ppl(model, ids, a.ctx)
            res["generate"] = {}
            for name, args in PROMPTS:
                log(f"generate ({name})")
                g = timed([a.optc, "generate", model, *args], 600)
                res["generate"][name] = g
    out = os.path.join(a.out_dir, "llm.json")
    json.dump(res, open(out, "w"), indent=1)
    print(json.dumps({"json": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
