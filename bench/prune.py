#!/usr/bin/env python3
"""Depth pruning (`prune-depth`) on real tasks: accuracy, LIFE-predicted and measured latency.

    python bench/prune.py --optc target/release/optc --models-dir ~/.cache/optc/models \
        --out-dir bench/out/prune [--seed 0] [--only cls,rec,headline]

1. Data: text lines rendered with Pillow (tests/python/ocr_data.py: DejaVu Sans / Serif / Mono,
   regular and bold, 18-40 px, small margins, light noise; words, digits, dates, prices,
   punctuation), seeded. The evaluation lines and the calibration lines come from different
   seeds. Preprocessing and CTC decoding are those of rapidocr-onnxruntime 1.4.4.
2. ch_ppocr_mobile_v2.0_cls_infer (text direction, "0" / "180"): accuracy on every line upright
   and rotated by 180 degrees, original versus `prune-depth(blocks=N)` for N = 1, 2, 3.
3. ch_PP-OCRv4_rec_infer (CTC recogniser): character accuracy (1 - summed edit distance /
   summed reference length) and line accuracy, for N = 1, 2, with and without `refit=true`.
   Calibration for both: a separate set of rendered lines preprocessed the same way, written as
   `--calib DIR/<run>/x.npy` (one run per rapidocr batch of 6).
4. Per model: `onnx.checker` (full check), node and Conv counts, LIFE-predicted latency
   (`optc cost --target cpu --json` on a shape-annotated copy at the timing input) and
   onnxruntime latency (CPUExecutionProvider, 1 intra-op / 1 inter-op thread, ORT_ENABLE_ALL;
   median over interleaved rounds of the original and its pruned variants; thread CPU time,
   wall time beside it).
5. Headline: `optc opt M -p "fuse,prune-depth(blocks=1),quant-w4" --target npu` on
   paraphrase-MiniLM-L3-v2 and on a generated LLaMA-shaped decoder with a KV cache; the
   outputs must pass the checker and load in onnxruntime; output cosine versus the original.

Writes OUT_DIR/prune.json (raw figures and "markdown": the lines of a docs/BENCH.md section),
the models under OUT_DIR/models and the --explain logs under OUT_DIR/logs. The last stdout
line is {"json": PATH}.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
import ocr_data as od  # noqa: E402  (shared with tests/python/test_prune_depth.py)
from life import Timer, annotate_shapes, machine_line, optc_cost  # noqa: E402  (benchmark D's helpers)

CLS = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
REC = "ch_PP-OCRv4_rec_infer.onnx"
MINILM = "paraphrase-MiniLM-L3-v2.onnx"
LLAMA_KV = "llama-kv:layers=4,hidden=256,heads=4,kv_heads=2,ffn=688,vocab=1000"
HEADLINE = "fuse,prune-depth(blocks=1),quant-w4"
# Beside the headline: pruning before the fusions, and the same pipeline without pruning (the error
# that quantisation alone causes).
HEADLINE_ALSO = ["prune-depth(blocks=1),fuse,quant-w4", "fuse,quant-w4"]


def log(msg: str) -> None:
    print(f"[prune] {msg}", file=sys.stderr, flush=True)


def run_cmd(cmd: list, timeout: float = 900) -> dict:
    t0 = time.perf_counter()
    try:
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                           errors="replace", stdin=subprocess.DEVNULL)
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired:
        rc, out, err = -1, "", f"timed out after {timeout:.0f} s"
    return {"cmd": " ".join(str(c) for c in cmd), "rc": rc, "stdout": out, "stderr": err,
            "s": time.perf_counter() - t0}


def file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def fresh_dir(d: str) -> str:
    """An empty directory (runs left by an earlier bench would be read as calibration data too)."""
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def short_err(r: dict) -> str:
    lines = [ln for ln in (r["stderr"] + "\n" + r["stdout"]).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else f"exit code {r['rc']}")[:300]


def ort_session(path: str):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def checker(path: str) -> str | None:
    import onnx
    try:
        onnx.checker.check_model(onnx.load(path), full_check=True)
        return None
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"


def op_counts(path: str) -> dict:
    import onnx
    c = collections.Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node)
    return {"nodes": sum(c.values()), "Conv": c.get("Conv", 0), "MatMul": c.get("MatMul", 0),
            "MatMulNBits": c.get("MatMulNBits", 0), "hist": dict(c)}


def explain_summary(text: str, limit: int = 30) -> list[str]:
    """The --explain lines of prune-depth that say what it removed or kept (clean-up notes left out)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("[prune-depth]")]
    lines = [ln for ln in lines if "unused" not in ln]
    decided = [ln for ln in lines if "step " not in ln]
    return (decided + [ln for ln in lines if "step " in ln])[:limit]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def life_ms(optc: str, path: str, feeds: dict, mdir: str, stem: str, target: str) -> dict:
    """LIFE's prediction on a copy of `path` with fixed input shapes and every value's shape."""
    import onnx
    ap = os.path.join(mdir, stem + ".static.onnx")
    info = annotate_shapes(onnx.load(path), feeds, ap)
    try:
        c = optc_cost(optc, ap, target, {})
        return {"ms": c["ms"], "nodes": c["nodes"], "annotate": info, "cmd": c["cmd"]}
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)[:300], "annotate": info}


def time_models(rows: list[dict], feeds: dict, rounds: int, budget_s: float) -> None:
    """Interleaved rounds over the rows' models (original first); fills row["ort"]."""
    timers = []
    for row in rows:
        if row.get("error") or not row.get("path"):
            continue
        try:
            timers.append((row, Timer(row["path"], feeds)))
        except Exception as e:  # noqa: BLE001
            row["ort_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    for _ in range(rounds):
        for _row, t in timers:
            t.round(budget_s / rounds, 3, 200)
    for row, t in timers:
        row["ort"] = t.result()


# --------------------------------------------------------------------------- OCR tasks

def prune(a, src: str, out: str, opts: str, calib: str, logname: str) -> dict:
    cmd = [a.optc, "opt", src, "-p", f"prune-depth({opts})", "--calib", calib, "--target", "cpu", "--explain",
           "-o", out]
    r = run_cmd(cmd)
    with open(os.path.join(a.out_dir, "logs", logname), "w") as f:
        f.write(f"$ {r['cmd']}\nexit code {r['rc']} ({r['s']:.1f} s)\n--- stdout ---\n{r['stdout']}\n"
                f"--- stderr ---\n{r['stderr']}")
    row = {"options": opts, "cmd": r["cmd"], "optc_s": r["s"], "explain": explain_summary(r["stdout"] + r["stderr"])}
    if r["rc"] != 0 or not os.path.isfile(out):
        row["error"] = f"optc exited {r['rc']}: {short_err(r)}"
        return row
    row["path"] = out
    row["checker"] = checker(out)
    row["ops"] = op_counts(out)
    return row


def run_cls(a, res: dict, mdir: str) -> None:
    src = os.path.join(a.models_dir, CLS)
    sec: dict = {"model": CLS, "rows": []}
    res["cls"] = sec
    if not os.path.isfile(src):
        sec["error"] = f"{CLS} is not in {a.models_dir}"
        return
    lines = od.render_lines(a.cls_lines, a.seed + 1000)
    calib_lines = od.render_lines(max(1, a.calib_n // 2), a.seed + 5000)  # each upright and rotated
    imgs = []
    for ln in calib_lines:
        bgr = od.to_bgr(ln.rgb)
        imgs += [bgr, od.rotate180(bgr)]  # the classifier sees both directions in use
    calib = fresh_dir(os.path.join(a.out_dir, "calib", "cls"))
    od.write_calib(calib, [od.cls_batch(imgs[i: i + 6]) for i in range(0, len(imgs), 6)])
    sec.update(eval_lines=len(lines), eval_images=2 * len(lines), calib_lines=len(calib_lines),
               calib_images=len(imgs), calib_dir=calib)
    base = od.cls_eval(ort_session(src), lines)
    orig = {"name": "original", "path": src, "checker": checker(src), "ops": op_counts(src),
            "acc": base["acc"], "acc_upright": base["acc_upright"], "acc_rotated": base["acc_rotated"]}
    sec["rows"].append(orig)
    for n in a.cls_blocks:
        out = os.path.join(mdir, f"cls_prune{n}.onnx")
        row = prune(a, src, out, f"blocks={n}", calib, f"cls_prune{n}.log")
        row["name"] = f"blocks={n}"
        row["blocks"] = n
        sec["rows"].append(row)
        if row.get("error"):
            log(f"cls blocks={n}: {row['error']}")
            continue
        try:
            r = od.cls_eval(ort_session(out), lines)
            row.update(acc=r["acc"], acc_upright=r["acc_upright"], acc_rotated=r["acc_rotated"],
                       agree=float(np.mean(np.array(r["preds"]) == np.array(base["preds"]))))
        except Exception as e:  # noqa: BLE001
            row["error"] = f"onnxruntime: {type(e).__name__}: {str(e)[:300]}"
        log(f"cls blocks={n}: acc {row.get('acc')}")
    feeds = {"x": od.cls_batch([od.to_bgr(ln.rgb) for ln in lines[:6]])}
    sec["timing_input"] = list(feeds["x"].shape)
    for row in sec["rows"]:
        if row.get("path") and not row.get("error"):
            row["life"] = life_ms(a.optc, row["path"], feeds, mdir, "cls_" + row["name"].replace("=", ""), "cpu")
    time_models(sec["rows"], feeds, a.rounds, a.budget_s)


def run_rec(a, res: dict, mdir: str) -> None:
    src = os.path.join(a.models_dir, REC)
    sec: dict = {"model": REC, "rows": []}
    res["rec"] = sec
    if not os.path.isfile(src):
        sec["error"] = f"{REC} is not in {a.models_dir}"
        return
    chars = od.rec_charset(src)
    charset = set(chars[1:])
    lines = od.render_lines(a.rec_lines, a.seed + 2000, charset)
    calib_lines = od.render_lines(a.calib_n, a.seed + 6000, charset)
    calib = fresh_dir(os.path.join(a.out_dir, "calib", "rec"))
    od.write_calib(calib, [x for _, x in od.rec_batches([od.to_bgr(ln.rgb) for ln in calib_lines])])
    sec.update(eval_lines=len(lines), eval_chars=sum(len(od.norm_text(ln.text)) for ln in lines),
               calib_lines=len(calib_lines), calib_dir=calib, charset_size=len(chars),
               charset_source="metadata_props['character'] (+ blank, + space), as rapidocr reads it")
    base = od.rec_eval(ort_session(src), lines, chars)
    sec["rows"].append({"name": "original", "path": src, "checker": checker(src), "ops": op_counts(src),
                        **{k: base[k] for k in ("char_acc", "line_acc", "char_acc_nospace", "line_acc_nospace")}})
    sec["examples"] = [{"ref": ln.text, "original": h} for ln, h in list(zip(lines, base["hyps"]))[:8]]
    for n in a.rec_blocks:
        for refit in (False, True):
            opts = f"blocks={n}" + (",refit=true" if refit else "")
            tag = f"rec_prune{n}{'_refit' if refit else ''}"
            out = os.path.join(mdir, tag + ".onnx")
            row = prune(a, src, out, opts, calib, tag + ".log")
            row.update(name=opts, blocks=n, refit=refit)
            sec["rows"].append(row)
            if row.get("error"):
                log(f"rec {opts}: {row['error']}")
                continue
            try:
                r = od.rec_eval(ort_session(out), lines, chars)
                row.update({k: r[k] for k in ("char_acc", "line_acc", "char_acc_nospace", "line_acc_nospace")})
                row["agree"] = float(np.mean([od.norm_text(x) == od.norm_text(y)
                                              for x, y in zip(r["hyps"], base["hyps"])]))
                for ex, h in zip(sec["examples"], r["hyps"]):
                    ex[opts] = h
            except Exception as e:  # noqa: BLE001
                row["error"] = f"onnxruntime: {type(e).__name__}: {str(e)[:300]}"
            log(f"rec {opts}: char acc {row.get('char_acc')}")
    # the first batch rapidocr makes of these lines: the 6 narrowest, padded to 320 x 48 or their widest
    feeds = {"x": od.rec_batches([od.to_bgr(ln.rgb) for ln in lines])[0][1]}
    sec["timing_input"] = list(feeds["x"].shape)
    for row in sec["rows"]:
        if row.get("path") and not row.get("error"):
            tag = "rec_" + row["name"].replace("=", "").replace(",", "_")
            row["life"] = life_ms(a.optc, row["path"], feeds, mdir, tag, "cpu")
    time_models(sec["rows"], feeds, a.rounds, a.budget_s)


# --------------------------------------------------------------------------- headline pipeline

def minilm_feeds(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 20000, size=(1, 16)).astype(np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones((1, 16), np.int64),
            "token_type_ids": np.zeros((1, 16), np.int64)}


def llama_feeds(path: str, seed: int, seq: int = 16) -> dict:
    import onnx
    m = onnx.load(path, load_external_data=False)
    rng = np.random.default_rng(seed)
    f = {"input_ids": rng.integers(0, 1000, size=(1, seq)).astype(np.int64),
         "attention_mask": np.ones((1, seq), np.int64),
         "position_ids": np.arange(seq, dtype=np.int64)[None, :]}
    for i in m.graph.input:
        if i.name.startswith("past_key_values."):
            d = i.type.tensor_type.shape.dim
            f[i.name] = np.zeros((1, d[1].dim_value, 0, d[3].dim_value), np.float32)
    return f


def run_headline(a, res: dict, mdir: str) -> None:
    sec: dict = {"pipeline": HEADLINE, "target": "npu", "rows": []}
    res["headline"] = sec
    models = []
    p = os.path.join(a.models_dir, MINILM)
    if os.path.isfile(p):
        models.append(("MiniLM", p, minilm_feeds))
    else:
        sec["rows"].append({"name": "MiniLM", "error": f"{MINILM} is not in {a.models_dir}"})
    llama = os.path.join(mdir, "llama_kv.onnx")
    r = run_cmd([a.optc, "gen", LLAMA_KV, "--seed", a.seed, "-o", llama])
    if r["rc"] == 0:
        models.append(("llama-kv", llama, lambda s: llama_feeds(llama, s)))
    else:
        sec["rows"].append({"name": "llama-kv", "error": f"optc gen exited {r['rc']}: {short_err(r)}"})
    for name, src, make in models:
        names = {i.name for i in ort_session(src).get_inputs()}
        calib = fresh_dir(os.path.join(a.out_dir, "calib", name))
        for i in range(8):
            sub = os.path.join(calib, f"{i:03d}")
            os.makedirs(sub, exist_ok=True)
            for k, v in make(100 + i).items():
                if k in names:
                    np.save(os.path.join(sub, k.replace("/", "_") + ".npy"), v)
        feeds = {k: v for k, v in make(10).items() if k in names}
        life0 = life_ms(a.optc, src, feeds, mdir, f"{name}_orig_npu", "npu")
        for j, pipeline in enumerate([HEADLINE] + HEADLINE_ALSO):
            row = headline_one(a, name, src, make, names, calib, pipeline, f"{name}_p{j}", mdir)
            row["life_npu_before"] = life0
            sec["rows"].append(row)


def headline_one(a, name: str, src: str, make, names: set, calib: str, pipeline: str, tag: str, mdir: str) -> dict:
    row: dict = {"name": name, "pipeline": pipeline, "source": src if name != "llama-kv" else f"optc gen {LLAMA_KV}",
                 "ops_before": op_counts(src)}
    out = os.path.join(mdir, tag + ".onnx")
    r = run_cmd([a.optc, "opt", src, "-p", pipeline, "--target", "npu", "--calib", calib, "--explain", "-o", out])
    with open(os.path.join(a.out_dir, "logs", tag + ".log"), "w") as f:
        f.write(f"$ {r['cmd']}\nexit code {r['rc']}\n--- stdout ---\n{r['stdout']}\n--- stderr ---\n{r['stderr']}")
    row.update(cmd=r["cmd"], optc_s=r["s"], explain=explain_summary(r["stdout"] + r["stderr"]))
    if r["rc"] != 0 or not os.path.isfile(out):
        row["error"] = f"optc exited {r['rc']}: {short_err(r)}"
        log(f"{name} {pipeline}: {row['error']}")
        return row
    row["checker"] = checker(out)
    row["ops_after"] = op_counts(out)
    row["bytes_before"], row["bytes_after"] = os.path.getsize(src), os.path.getsize(out)
    try:
        s0, s1 = ort_session(src), ort_session(out)
        cos_all = []
        outs = [o.name for o in s0.get_outputs() if o.type == "tensor(float)"]
        for seed in range(10, 14):  # inputs calibration did not see
            feeds = {k: v for k, v in make(seed).items() if k in names}
            o0, o1 = s0.run(outs, feeds), s1.run(outs, feeds)
            cos_all.append(min(cosine(x, y) for x, y in zip(o0, o1)))
        row.update(outputs=outs, cosine_mean=float(np.mean(cos_all)), cosine_min=min(cos_all), ort_loads=True)
        feeds = {k: v for k, v in make(10).items() if k in names}
        row["life_npu_after"] = life_ms(a.optc, out, feeds, mdir, tag + "_npu", "npu")
    except Exception as e:  # noqa: BLE001
        row["error"] = f"onnxruntime: {type(e).__name__}: {str(e)[:300]}"
        row["ort_loads"] = False
    log(f"{name} {pipeline}: cosine {row.get('cosine_mean')}")
    return row


# --------------------------------------------------------------------------- report

def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def ms(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def saving(before, after) -> str:
    """(before - after) / before: positive when the pruned model is faster."""
    if before is None or after is None or before <= 0:
        return "n/a"
    return f"{100 * (before - after) / before:.1f} %"


def latency_cells(row: dict, orig: dict) -> list[str]:
    lp = (row.get("life") or {}).get("ms")
    lp0 = (orig.get("life") or {}).get("ms")
    m = (row.get("ort") or {}).get("cpu_ms")
    m0 = (orig.get("ort") or {}).get("cpu_ms")
    w = (row.get("ort") or {}).get("wall_ms")
    return [ms(lp), saving(lp0, lp) if row is not orig else "", ms(m), saving(m0, m) if row is not orig else "",
            ms(w)]


def markdown(res: dict) -> list[str]:
    L = ["## F. Depth pruning (`prune-depth`) on real tasks", ""]
    L.append(f"`{res['command']}` ({res['elapsed_s']:.0f} s on {res['machine']}; onnxruntime {res['ort']}, "
             f"CPUExecutionProvider).")
    if res.get("optc_sha256_end") != res.get("optc_sha256"):
        L.append("")
        L.append("**The optc binary changed during this run: the rows below mix two builds.**")
    L.append("")
    L.append(f"Data: text lines rendered with Pillow {res['pillow']} in {res['fonts']}, 18-40 px, 2-8 px margins, "
             "grey levels, light Gaussian noise (sigma 2-7), words in three cases, digits, dates, prices and "
             "punctuation (tests/python/ocr_data.py, seeded). Preprocessing is rapidocr-onnxruntime 1.4.4's "
             "(BGR, OpenCV INTER_LINEAR resize to height 48, (x/255-0.5)/0.5, right zero padding; the recogniser's "
             "batches of 6 sorted by aspect ratio), CTC decoding too. Calibration (`--calib`): "
             f"{res['calib_n']} other images (other seeds; for the classifier {res['calib_n'] // 2} lines, upright and "
             "rotated), one run per batch of 6. Latency: LIFE = "
             "`optc cost --target cpu --json` on a shape-annotated copy at the timing input; measured = onnxruntime, "
             "1 thread, ORT_ENABLE_ALL, median thread CPU time over interleaved rounds of all variants (wall in the "
             "last column). Saving = (original - pruned) / original.")
    L.append("")
    cls = res.get("cls")
    if cls:
        L.append(f"### ch_ppocr_mobile_v2.0_cls (text direction), {cls.get('eval_lines', 0)} lines upright + rotated "
                 f"180 degrees = {cls.get('eval_images', 0)} images; timing input {cls.get('timing_input')}")
        L.append("")
        if cls.get("error"):
            L += [f"Not run: {cls['error']}", ""]
        else:
            L.append("| model | accuracy | upright | rotated | same as original | Conv | nodes | checker | LIFE ms | "
                     "LIFE saving | measured ms | measured saving | wall ms |")
            L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            orig = cls["rows"][0]
            for r in cls["rows"]:
                if r.get("error") and "acc" not in r:
                    L.append(f"| {r['name']} | failed: {r['error'][:160]} |" + " |" * 11)
                    continue
                o = r.get("ops", {})
                L.append(f"| {r['name']} | {pct(r.get('acc'))} | {pct(r.get('acc_upright'))} | "
                         f"{pct(r.get('acc_rotated'))} | {pct(r.get('agree')) if 'agree' in r else ''} | "
                         f"{o.get('Conv', '?')} | {o.get('nodes', '?')} | {'ok' if not r.get('checker') else 'FAIL'} | "
                         + " | ".join(latency_cells(r, orig)) + " |")
            L.append("")
    rec = res.get("rec")
    if rec:
        L.append(f"### ch_PP-OCRv4_rec (CTC recogniser), {rec.get('eval_lines', 0)} lines, "
                 f"{rec.get('eval_chars', 0)} characters; timing input {rec.get('timing_input')}")
        L.append("")
        if rec.get("error"):
            L += [f"Not run: {rec['error']}", ""]
        else:
            L.append("Character accuracy = 1 - summed edit distance / summed reference length; line accuracy = exact "
                     "match (surrounding spaces stripped, inner runs merged); 'no spaces' = the same with spaces "
                     "removed.")
            L.append("")
            L.append("| model | char acc | line acc | char acc (no spaces) | same text as original | Conv | MatMul | "
                     "nodes | checker | LIFE ms | LIFE saving | measured ms | measured saving | wall ms |")
            L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            orig = rec["rows"][0]
            for r in rec["rows"]:
                if r.get("error") and "char_acc" not in r:
                    L.append(f"| {r['name']} | failed: {r['error'][:160]} |" + " |" * 12)
                    continue
                o = r.get("ops", {})
                L.append(f"| {r['name']} | {pct(r.get('char_acc'))} | {pct(r.get('line_acc'))} | "
                         f"{pct(r.get('char_acc_nospace'))} | {pct(r.get('agree')) if 'agree' in r else ''} | "
                         f"{o.get('Conv', '?')} | {o.get('MatMul', '?')} | {o.get('nodes', '?')} | "
                         f"{'ok' if not r.get('checker') else 'FAIL'} | " + " | ".join(latency_cells(r, orig)) + " |")
            L.append("")
    for key, title in (("cls", "cls"), ("rec", "rec")):
        sec = res.get(key) or {}
        for r in sec.get("rows", [])[1:]:
            if r.get("explain") and not r.get("error"):
                said = [x.replace("[prune-depth] ", "") for x in r["explain"] if "step " not in x]
                L.append(f"- `--explain` ({title}, {r['name']}): " + " / ".join(said)[:500])
    L.append("")
    hl = res.get("headline")
    if hl:
        L.append(f"### Headline: `optc opt M -p \"{hl['pipeline']}\" --target {hl['target']}`")
        L.append("")
        L.append(f"Models: {MINILM} and `optc gen {LLAMA_KV}` (prefill, empty KV cache); 8 calibration inputs, "
                 "cosine: the smallest over the float outputs (MiniLM: token and sentence embeddings; the decoder: "
                 "logits and the present KV tensors), mean and min over 4 other inputs. "
                 "The other pipelines are for comparison: pruning before the fusions, and no pruning.")
        L.append("")
        L.append("| model | pipeline | result | nodes before -> after | MatMulNBits | size MB before -> after | checker | "
                 "loads in onnxruntime | output cosine vs original (mean / min) | LIFE npu ms before -> after |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in hl["rows"]:
            if r.get("error") and "cosine_mean" not in r:
                L.append(f"| {r['name']} | `{r.get('pipeline', '')}` | failed: {r['error'][:200]} | | | | | | | |")
                continue
            lb = (r.get("life_npu_before") or {}).get("ms")
            la = (r.get("life_npu_after") or {}).get("ms")
            L.append(f"| {r['name']} | `{r['pipeline']}` | ok | {r['ops_before']['nodes']} -> {r['ops_after']['nodes']} | "
                     f"{r['ops_after']['MatMulNBits']} | {r['bytes_before'] / 1e6:.1f} -> {r['bytes_after'] / 1e6:.1f} | "
                     f"{'ok' if not r.get('checker') else 'FAIL: ' + r['checker'][:80]} | "
                     f"{'yes' if r.get('ort_loads') else 'no'} | {r.get('cosine_mean', 0):.4f} / "
                     f"{r.get('cosine_min', 0):.4f} | {ms(lb)} -> {ms(la)} |")
        L.append("")
    return L


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optc", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="cls,rec,headline")
    ap.add_argument("--cls-lines", type=int, default=300)
    ap.add_argument("--rec-lines", type=int, default=200)
    ap.add_argument("--calib-n", type=int, default=12, help="calibration images (8-16)")
    ap.add_argument("--cls-blocks", default="1,2,3")
    ap.add_argument("--rec-blocks", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=2.0, help="timed seconds per model, over all rounds")
    a = ap.parse_args()
    a.optc = os.path.abspath(a.optc)
    a.cls_blocks = [int(x) for x in a.cls_blocks.split(",") if x]
    a.rec_blocks = [int(x) for x in a.rec_blocks.split(",") if x]
    only = set(a.only.split(","))
    import onnxruntime as ort
    import PIL

    os.makedirs(os.path.join(a.out_dir, "logs"), exist_ok=True)
    mdir = os.path.join(a.out_dir, "models")
    os.makedirs(mdir, exist_ok=True)
    t0 = time.perf_counter()
    res: dict = {"name": "prune", "seed": a.seed, "ort": ort.__version__, "pillow": PIL.__version__,
                 "python": platform.python_version(), "machine": machine_line(), "fonts": od.font_note(),
                 "calib_n": a.calib_n, "rounds": a.rounds, "budget_s": a.budget_s,
                 "command": "python bench/prune.py " + " ".join(sys.argv[1:]),
                 "loadavg_start": os.getloadavg()[0]}
    v = run_cmd([a.optc, "--version"])
    res["optc_version"] = v["stdout"].strip() or v["stderr"].strip()
    res["optc_sha256"] = file_sha(a.optc)
    if "cls" in only:
        run_cls(a, res, mdir)
    if "rec" in only:
        run_rec(a, res, mdir)
    if "headline" in only:
        run_headline(a, res, mdir)
    res["elapsed_s"] = time.perf_counter() - t0
    res["optc_sha256_end"] = file_sha(a.optc)
    if res["optc_sha256_end"] != res["optc_sha256"]:
        log("the optc binary changed during the run: the figures mix two builds")
    res["loadavg_end"] = os.getloadavg()[0]
    res["markdown"] = markdown(res)
    path = os.path.join(a.out_dir, "prune.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=str)
    print(json.dumps({"json": path}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
